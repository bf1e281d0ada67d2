//! Flint's WASI preview 1 layer (the guest runtime's, inside the VM)
//! compared with wasmtime's, the reference implementation: the same
//! module (`wasi-probe`, which calls WASI functions directly and through
//! Rust's std) with the same arguments, environment and stdin must print
//! the same stdout and stderr and exit with the same status under
//! `flint run` and under wasmtime (its Python package, installed by
//! scripts/deps).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn reference(module: &str, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/wasi_reference.py"
    );
    let probe = Command::new("python3")
        .args(["-c", "import wasmtime"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "the wasmtime Python package is missing (scripts/deps installs it: python3 -m pip install wasmtime): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(module);
    for (k, v) in env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    cmd.arg("--").args(args);
    run(cmd, stdin)
}

fn flint(module: &str, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.arg("run").arg(module);
    for (k, v) in env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg("--").args(args);
    run(cmd, stdin)
}

fn probe() -> String {
    flint_examples::path("wasi-probe").display().to_string()
}

/// Arguments, environment, stdin.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [u8]);

#[test]
fn wasi_calls_answer_as_wasmtime_answers_them() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let cases: &[Case] = &[
        (&[], &[], b""),
        (&["x", "y z"], &[("A", "1"), ("B", "two")], b"stdin data\n"),
        (
            &["--flag", "\u{fc}n\u{ef}code", ""],
            &[("EMPTY", ""), ("EQ", "a=b")],
            &big,
        ),
    ];
    let module = probe();
    for (args, env, stdin) in cases {
        let want = reference(&module, args, env, stdin);
        let got = flint(&module, args, env, stdin);
        assert_eq!(
            want.status.code(),
            Some(3),
            "wasmtime: {}",
            String::from_utf8_lossy(&want.stderr)
        );
        assert_eq!(
            (
                got.status.code(),
                String::from_utf8_lossy(&got.stdout),
                String::from_utf8_lossy(&got.stderr)
            ),
            (
                want.status.code(),
                String::from_utf8_lossy(&want.stdout),
                String::from_utf8_lossy(&want.stderr)
            ),
            "args {args:?} env {env:?}"
        );
    }
}

/// Arguments outside their types: wasmtime traps on them, Flint answers
/// with the errno WASI defines (EFAULT 21 for memory outside the module's,
/// EINVAL 28 for a clock that does not exist) and the module goes on.
#[test]
fn invalid_arguments_get_their_errno_and_the_module_goes_on() {
    let out = flint(&probe(), &["--invalid"], &[], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let errno = |call: &str| -> Option<String> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{call} ")))
            .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
    };
    for call in [
        "fd_write(wild iovs)",
        "fd_write(wild buffer)",
        "fd_write(wild nwritten)",
        "fd_fdstat_get(wild)",
        "clock_time_get(wild)",
        "random_get(wild)",
        "fd_read(wild iovs)",
    ] {
        assert_eq!(errno(call).as_deref(), Some("21"), "{call}: {stdout}");
    }
    for call in ["clock_time_get(bad id)", "clock_res_get(bad id)"] {
        assert_eq!(errno(call).as_deref(), Some("28"), "{call}: {stdout}");
    }
}
