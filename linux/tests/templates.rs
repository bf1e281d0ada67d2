//! Templates of running containers (`Port::freeze`, `thaw`): a Go
//! net/http server frozen once it serves, and VMs thawed from it that go
//! on from there, each on its own: memory, file offsets, timers, clock
//! and standard streams.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(5);

/// One request over a fresh connection from the host; the body of the
/// answer.
fn get(port: &flint_linux::Port, path: &str, body: &str) -> String {
    let mut c = port.connect(8080, WAIT).expect("connect");
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: vm\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer:?}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn number(s: &str) -> u64 {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// Standard streams whose output is read back from a file.
fn stdio() -> (flint_linux::Stdio, std::fs::File) {
    let out = tempfile::tempfile().unwrap();
    (
        flint_linux::Stdio {
            stdin: file_fd(&tempfile::tempfile().unwrap()),
            stdout: file_fd(&out),
            stderr: file_fd(&out),
        },
        out,
    )
}

fn output(mut f: &std::fs::File) -> String {
    use std::io::Seek;
    f.rewind().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

/// The counting server, started and answering.
fn gocount() -> (tempfile::TempDir, flint_linux::Container, std::fs::File) {
    let prog = go_program("gocount");
    let (root, path) = program_root(&prog);
    let lines: String = (1..=20).map(|i| format!("line-{i:02}\n")).collect();
    std::fs::write(root.path().join("lines.txt"), lines).unwrap();
    let (stdio, out) = stdio();
    let program = flint_linux::Program {
        path,
        argv: vec!["gocount".into()],
        env: vec![("PORT".into(), "8080".into())],
        workdir: "/".into(),
    };
    let container = flint_linux::start(&config(), root.path(), &program, Some(stdio)).unwrap();
    let port = container.port();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while port.connect(8080, WAIT).is_err() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    (root, container, out)
}

/// Freezes, retrying while the server still holds the host's last
/// connection (it closes it a moment after answering).
fn freeze(port: &flint_linux::Port) -> flint_linux::Template {
    for _ in 0..200 {
        match port.freeze(WAIT) {
            Ok(t) => return t,
            Err(flint_linux::LinuxError::FreezeBusy(_)) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("freeze: {e}"),
        }
    }
    panic!("the server never let go of its connections");
}

#[test]
fn thawed_servers_go_on_from_the_template_each_on_its_own() {
    let (_root, template_vm, template_out) = gocount();
    let tp = template_vm.port();
    assert_eq!(get(&tp, "/n", ""), "1");
    assert_eq!(get(&tp, "/line", ""), "line-01\n");
    let up_at_freeze = number(&get(&tp, "/uptime", ""));
    let ticks_at_freeze = number(&get(&tp, "/ticks", ""));
    let t = Arc::new(freeze(&tp));
    assert!(t.memory_bytes() > 1 << 20, "{t:?}");

    let (sa, out_a) = stdio();
    let (sb, out_b) = stdio();
    let a = flint_linux::thaw(&config(), &t, Some(sa)).unwrap();
    let b = flint_linux::thaw(&config(), &t, Some(sb)).unwrap();
    let (pa, pb) = (a.port(), b.port());
    // The clones listen already (their listener came with them).
    assert_eq!(pa.listened(), vec![8080]);
    // Memory: each goes on from the template's count, on its own.
    assert_eq!(get(&pa, "/n", ""), "2");
    assert_eq!(get(&pa, "/n", ""), "3");
    assert_eq!(get(&pb, "/n", ""), "2");
    assert_eq!(get(&tp, "/n", ""), "2");
    // An open file: its buffered line, then its own offset in the file.
    for p in [&pa, &pb] {
        assert_eq!(get(p, "/line", ""), "line-02\n");
        assert_eq!(get(p, "/line", ""), "line-03\n");
    }
    assert_eq!(get(&tp, "/line", ""), "line-02\n");
    // The clock goes on: never back, and the ticker goroutine fires.
    let up = number(&get(&pa, "/uptime", ""));
    assert!(up > up_at_freeze, "{up} <= {up_at_freeze}");
    let ticks = number(&get(&pb, "/ticks", ""));
    std::thread::sleep(Duration::from_millis(100));
    let later = number(&get(&pb, "/ticks", ""));
    assert!(
        ticks >= ticks_at_freeze && later > ticks,
        "{ticks_at_freeze} {ticks} {later}"
    );
    // Each writes to its own standard streams.
    get(&pa, "/say", "from-a");
    get(&pb, "/say", "from-b");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(output(&out_a).trim(), "from-a");
    assert_eq!(output(&out_b).trim(), "from-b");
    assert_eq!(output(&template_out).trim(), "listening on 8080");
    // One ends on its own; the others go on.
    get(&pa, "/quit", "");
    let o = a.wait().unwrap();
    assert_eq!(o.status.code(), 7);
    assert_eq!(get(&pb, "/n", ""), "3");
    assert_eq!(get(&tp, "/n", ""), "3");
    // A template thaws again after its clones are gone, and many times.
    get(&pb, "/quit", "");
    b.wait().unwrap();
    let (sc, _out_c) = stdio();
    let c = flint_linux::thaw(&config(), &t, Some(sc)).unwrap();
    assert_eq!(get(&c.port(), "/n", ""), "2");
    get(&c.port(), "/quit", "");
    c.wait().unwrap();
    get(&tp, "/quit", "");
    assert_eq!(template_vm.wait().unwrap().status.code(), 7);
}

/// State a copy cannot carry is refused with the reason, and the
/// container goes on: a connection from the host held open.
#[test]
fn a_held_host_connection_refuses_the_freeze() {
    let (_root, vm, _out) = gocount();
    let port = vm.port();
    let mut held = port.connect(8080, WAIT).unwrap();
    write!(held, "GET /n HTTP/1.1\r\nHost: vm\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    match port.freeze(WAIT) {
        Err(flint_linux::LinuxError::FreezeBusy(why)) => {
            assert!(why.contains("connection from or to the host"), "{why}")
        }
        other => panic!("froze with a host connection open: {other:?}"),
    }
    // The server still answers, the held connection included.
    write!(held, "\r\n").unwrap();
    let mut head = [0u8; 12];
    held.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(held);
    assert_eq!(get(&port, "/n", ""), "2");
    get(&port, "/quit", "");
    vm.wait().unwrap();
}

fn sh(script: &str) -> flint_linux::Program {
    flint_linux::Program {
        path: "/bin/sh".into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        workdir: "/".into(),
    }
}

/// A shell in the middle of a loop that makes no system call (its vCPU
/// is taken out of the guest for the freeze) and a child it waits for:
/// the clone finishes the same computation to the same result, as the
/// template does, each writing to its own stdout.
#[test]
fn a_computation_mid_flight_goes_on_in_the_clone() {
    let root = busybox_root();
    let (stdio_t, out_t) = stdio();
    let script =
        "sleep 0.3 & i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; wait; echo done $i";
    let vm = flint_linux::start(&config(), root.path(), &sh(script), Some(stdio_t)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Arc::new(vm.port().freeze(WAIT).expect("freeze mid-loop"));
    let (stdio_c, out_c) = stdio();
    let clone = flint_linux::thaw(&config(), &t, Some(stdio_c)).unwrap();
    assert_eq!(clone.wait().unwrap().status.code(), 0);
    assert_eq!(vm.wait().unwrap().status.code(), 0);
    assert_eq!(output(&out_c), "done 400000\n");
    assert_eq!(output(&out_t), "done 400000\n");
}

/// A process started from outside (`exec`, the shim's) cannot be
/// carried: the freeze is refused, and both processes go on.
#[test]
fn a_process_started_from_outside_refuses_the_freeze() {
    let root = busybox_root();
    let (stdio_1, _out) = stdio();
    let vm = flint_linux::start(&config(), root.path(), &sh("sleep 1"), Some(stdio_1)).unwrap();
    let (stdio_e, _out_e) = stdio();
    let e = vm.exec(&sh("sleep 0.3; exit 4"), stdio_e);
    std::thread::sleep(Duration::from_millis(100));
    match vm.port().freeze(WAIT) {
        Err(flint_linux::LinuxError::Unfreezable(why)) => {
            assert!(why.contains("exec"), "{why}")
        }
        other => panic!("froze with an exec running: {other:?}"),
    }
    assert_eq!(e.wait().unwrap().code(), 4);
    assert_eq!(vm.wait().unwrap().status.code(), 0);
}

/// The kernel keeps no hold on process 1's streams beyond the program's
/// own descriptors (a template needs to know which they are): a program
/// that closes its stdout gives its reader end of file while it runs on.
#[test]
fn closing_stdout_reaches_the_reader_while_the_program_runs() {
    let root = busybox_root();
    let (mut r, w) = std::io::pipe().unwrap();
    let stdio = flint_linux::Stdio {
        stdin: file_fd(&tempfile::tempfile().unwrap()),
        stdout: w.into(),
        stderr: file_fd(&tempfile::tempfile().unwrap()),
    };
    let vm = flint_linux::start(
        &config(),
        root.path(),
        &sh("echo before; exec 1>&-; sleep 1; echo after > /tmp/after"),
        Some(stdio),
    )
    .unwrap();
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "before\n");
    let after = root.path().join("tmp/after");
    assert!(
        !after.exists(),
        "end of file came only with the program's end"
    );
    assert_eq!(vm.wait().unwrap().status.code(), 0);
    assert!(after.exists());
}

/// A file the program opened and then removed is carried too (opened
/// again through the template's descriptor), at its own offset in each.
#[test]
fn an_open_file_removed_since_goes_on_in_the_clone_at_its_offset() {
    let root = busybox_root();
    std::fs::write(root.path().join("tmp/lines"), "one\ntwo\nthree\nfour\n").unwrap();
    let (stdio_t, out_t) = stdio();
    let script = "exec 3</tmp/lines; rm /tmp/lines; read a <&3; sleep 0.5; read b <&3; echo $a $b";
    let vm = flint_linux::start(&config(), root.path(), &sh(script), Some(stdio_t)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Arc::new(vm.port().freeze(WAIT).expect("freeze"));
    let (stdio_c, out_c) = stdio();
    let clone = flint_linux::thaw(&config(), &t, Some(stdio_c)).unwrap();
    assert_eq!(clone.wait().unwrap().status.code(), 0);
    assert_eq!(vm.wait().unwrap().status.code(), 0);
    assert!(!root.path().join("tmp/lines").exists());
    assert_eq!(output(&out_c), "one two\n");
    assert_eq!(output(&out_t), "one two\n");
}
