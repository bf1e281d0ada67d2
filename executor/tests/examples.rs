//! Every example function, booted in a real micro-VM through the library API.

use std::time::Duration;

use flint_executor::{run, BufferIo, Invocation, RunError, RunReport, VmConfig};

fn invoke(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    config: &VmConfig,
) -> (Result<RunReport, RunError>, BufferIo) {
    let module = flint_examples::bytes(name);
    let mut argv = vec![format!("{name}.wasm")];
    argv.extend(args.iter().map(|a| a.to_string()));
    let inv = Invocation {
        args: argv,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let mut io = BufferIo::with_stdin(stdin);
    let r = run(config, &module, &inv, &mut io);
    (r, io)
}

fn ok(name: &str, args: &[&str], env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let (r, io) = invoke(name, args, env, stdin, &VmConfig::default());
    let report = r.unwrap_or_else(|e| panic!("{name}: {e}"));
    (
        report.exit_code,
        String::from_utf8(io.stdout).unwrap(),
        String::from_utf8(io.stderr).unwrap(),
    )
}

#[test]
fn hello_greets_its_arguments() {
    assert_eq!(
        ok("hello", &["world"], &[], ""),
        (0, "hello, world\n".into(), String::new())
    );
    assert_eq!(
        ok("hello", &["big", "wide", "world"], &[], "").1,
        "hello, big wide world\n"
    );
    assert_eq!(ok("hello", &[], &[], "").1, "hello, world\n");
}

#[test]
fn echo_copies_stdin_and_sees_its_environment() {
    let input = "line one\nline two\n\u{1F600} unicode\n";
    let (code, out, err) = ok("echo", &[], &[("B", "2"), ("A", "1=one")], input);
    assert_eq!(code, 0);
    assert_eq!(out, input);
    assert_eq!(err, "A=1=one\nB=2\n");
}

#[test]
fn echo_streams_large_stdin() {
    // Larger than one channel chunk and one receive buffer, many times over.
    let input: String = (0..40_000).map(|i| format!("{i}\n")).collect();
    let (code, out, _) = ok("echo", &[], &[], &input);
    assert_eq!(code, 0);
    assert_eq!(out.len(), input.len());
    assert_eq!(out, input);
}

#[test]
fn echo_with_empty_stdin() {
    assert_eq!(ok("echo", &[], &[], ""), (0, String::new(), String::new()));
}

#[test]
fn fib_computes() {
    assert_eq!(ok("fib", &["20"], &[], "").1, "fib(20) = 6765\n");
    let (code, out, _) = ok("fib", &[], &[("MODE", "json")], "{\"n\":5}");
    assert_eq!(code, 0);
    assert_eq!(out, "{\"fib\":5,\"n\":5}\n");
}

#[test]
fn the_functions_exit_status_is_passed_through() {
    let (code, out, err) = ok("fib", &["not-a-number"], &[], "");
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(err, "fib: N must be an integer from 0 to 90\n");
    let (code, _, err) = ok("fib", &[], &[("MODE", "json")], "{oops");
    assert_eq!(code, 2);
    assert!(err.starts_with("fib: invalid JSON input"), "{err}");
}

#[test]
fn alloc_grows_memory_within_the_limit() {
    let (code, out, _) = ok("alloc", &["24"], &[], "");
    assert_eq!(code, 0);
    assert!(out.starts_with("allocated 24 MiB"), "{out}");
}

#[test]
fn alloc_beyond_the_vm_memory_is_out_of_memory() {
    let config = VmConfig {
        memory_mib: 64,
        ..VmConfig::default()
    };
    let (r, io) = invoke("alloc", &["100"], &[], "", &config);
    match r {
        Err(RunError::OutOfMemory {
            memory_mib: 64,
            detail,
        }) => assert!(detail.contains("linear memory"), "{detail}"),
        other => panic!("expected out of memory, got {other:?}"),
    }
    let err = String::from_utf8_lossy(&io.stderr);
    assert!(
        err.contains("memory allocation of"),
        "the function's own message is kept: {err}"
    );
}

#[test]
fn trap_is_reported_with_its_name() {
    let (r, io) = invoke("trap", &[], &[], "", &VmConfig::default());
    match r {
        Err(RunError::Trap(msg)) => assert_eq!(msg, "wasm `unreachable` instruction executed"),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(
        io.stdout, b"about to trap\n",
        "output before the trap is delivered"
    );
}

#[test]
fn spin_is_stopped_by_the_host() {
    let config = VmConfig {
        timeout: Some(Duration::from_millis(300)),
        ..VmConfig::default()
    };
    let start = std::time::Instant::now();
    let (r, io) = invoke("spin", &[], &[], "", &config);
    assert!(
        matches!(r, Err(RunError::Timeout(d)) if d == Duration::from_millis(300)),
        "{r:?}"
    );
    assert_eq!(io.stdout, b"spinning\n");
    // The guest spins forever, so returning at all means the host stopped
    // it; not before its time is up.
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "stopped after {:?}, before the 300 ms timeout",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the VM was not stopped promptly"
    );
}

#[test]
fn memory_outside_the_supported_range_is_refused() {
    for memory_mib in [0, 16, 100_000] {
        let config = VmConfig {
            memory_mib,
            ..VmConfig::default()
        };
        let (r, _) = invoke("hello", &[], &[], "", &config);
        assert!(
            matches!(r, Err(RunError::Config(ref m)) if m.contains("memory must be between")),
            "{r:?}"
        );
    }
}

#[test]
fn random_and_clock_work_inside_the_vm() {
    // `echo` uses neither; `hello`'s std runtime touches neither. A module
    // that prints random bytes and the time is built from the WASI calls
    // directly below, in WebAssembly text compiled by hand.
    let module = clock_and_random_module();
    let mut a = BufferIo::default();
    let mut b = BufferIo::default();
    run(
        &VmConfig::default(),
        &module,
        &Invocation::default(),
        &mut a,
    )
    .unwrap();
    run(
        &VmConfig::default(),
        &module,
        &Invocation::default(),
        &mut b,
    )
    .unwrap();
    assert_eq!(a.stdout.len(), 16);
    assert_ne!(
        a.stdout[..8],
        b.stdout[..8],
        "two VMs drew the same random numbers"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let t = u64::from_le_bytes(a.stdout[8..16].try_into().unwrap());
    assert!(
        t <= now && now - t < 60_000_000_000,
        "guest clock {t} vs host {now}"
    );
}

/// A command module that writes 8 random bytes and the 8-byte realtime
/// clock to stdout. Encoded by hand (no wat compiler needed at test time).
fn clock_and_random_module() -> Vec<u8> {
    fn leb(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: Vec<u8>, out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u32, out);
        out.extend(body);
    }
    fn name(s: &str, out: &mut Vec<u8>) {
        leb(s.len() as u32, out);
        out.extend(s.as_bytes());
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // types: 0 (i32,i32)->i32, 1 (i32,i64,i32)->i32, 2 (i32,i32,i32,i32)->i32, 3 ()->()
    section(
        1,
        vec![
            4, 0x60, 2, 0x7f, 0x7f, 1, 0x7f, 0x60, 3, 0x7f, 0x7e, 0x7f, 1, 0x7f, 0x60, 4, 0x7f,
            0x7f, 0x7f, 0x7f, 1, 0x7f, 0x60, 0, 0,
        ],
        &mut m,
    );
    let mut imports = vec![3];
    for (n, ty) in [("random_get", 0u8), ("clock_time_get", 1), ("fd_write", 2)] {
        name("wasi_snapshot_preview1", &mut imports);
        name(n, &mut imports);
        imports.extend([0, ty]);
    }
    section(2, imports, &mut m);
    section(3, vec![1, 3], &mut m); // one function of type 3
    section(5, vec![1, 0, 1], &mut m); // memory, min 1 page
    let mut exports = vec![2];
    name("memory", &mut exports);
    exports.extend([2, 0]);
    name("_start", &mut exports);
    exports.extend([0, 3]);
    section(7, exports, &mut m);
    // random_get(16, 8); clock_time_get(0, 1, 24); iovec at 0 = {16, 16}; fd_write(1, 0, 1, 40)
    let code = vec![
        0x41, 16, 0x41, 8, 0x10, 0, 0x1a, // random_get(16, 8); drop
        0x41, 0, 0x42, 1, 0x41, 24, 0x10, 1, 0x1a, // clock_time_get(0, 1, 24); drop
        0x41, 0, 0x41, 16, 0x36, 2, 0, // i32.store [0] = 16
        0x41, 4, 0x41, 16, 0x36, 2, 0, // i32.store [4] = 16
        0x41, 1, 0x41, 0, 0x41, 1, 0x41, 40, 0x10, 2, 0x1a, // fd_write(1, 0, 1, 40); drop
        0x0b,
    ];
    let mut body = vec![0]; // no locals
    body.extend(code);
    let mut func = Vec::new();
    leb(body.len() as u32, &mut func);
    func.extend(body);
    let mut code_section = vec![1];
    code_section.extend(func);
    section(10, code_section, &mut m);
    m
}
