//! `flint run` as a user runs it: the real binary, real VMs, exact output,
//! exit codes and messages (the codes are documented in the README).

mod common;

use common::{flint, text};

fn example(name: &str) -> String {
    flint_examples::path(name).display().to_string()
}

/// Writes `bytes` to a temporary file (`...-NAME`, removed when dropped)
/// and returns its path.
fn temp_module(name: &str, bytes: &[u8]) -> tempfile::TempPath {
    let f = tempfile::Builder::new()
        .prefix("flint-cli-")
        .suffix(&format!("-{name}"))
        .tempfile()
        .unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    f.into_temp_path()
}

#[test]
fn hello_world() {
    let o = flint(&["run", &example("hello"), "--", "world"], "", &[]);
    assert_eq!(text(&o.stdout), "hello, world\n");
    assert_eq!(text(&o.stderr), "");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn fib_json_from_the_issue() {
    let o = flint(
        &[
            "run",
            &example("fib"),
            "--env",
            "MODE=json",
            "--memory-mib",
            "64",
            "--timeout-ms",
            "2000",
        ],
        "{\"n\":5}\n",
        &[],
    );
    assert_eq!(text(&o.stdout), "{\"fib\":5,\"n\":5}\n");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn echo_stdin_and_env() {
    let o = flint(
        &["run", "-e", "X=1", "--env", "FROM_HOST", &example("echo")],
        "piped\n",
        &[("FROM_HOST", "yes")],
    );
    assert_eq!(text(&o.stdout), "piped\n");
    assert_eq!(text(&o.stderr), "FROM_HOST=yes\nX=1\n");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn argv0_is_the_module_path() {
    // hello joins argv[1..]; args after `--` go to the function verbatim.
    let o = flint(
        &["run", &example("hello"), "--", "--not-a-flag", "-x"],
        "",
        &[],
    );
    assert_eq!(text(&o.stdout), "hello, --not-a-flag -x\n");
}

#[test]
fn exit_status_of_the_function_passes_through() {
    let o = flint(&["run", &example("fib"), "--", "abc"], "", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o.stderr), "fib: N must be an integer from 0 to 90\n");
}

#[test]
fn trap_exits_122_and_names_the_trap() {
    let o = flint(&["run", &example("trap")], "", &[]);
    assert_eq!(o.status.code(), Some(122));
    assert_eq!(text(&o.stdout), "about to trap\n");
    assert_eq!(
        text(&o.stderr),
        "flint: the function trapped: wasm `unreachable` instruction executed\n"
    );
}

#[test]
fn timeout_exits_124() {
    let o = flint(&["run", "--timeout-ms", "300", &example("spin")], "", &[]);
    assert_eq!(o.status.code(), Some(124));
    assert_eq!(text(&o.stdout), "spinning\n");
    assert_eq!(
        text(&o.stderr),
        "flint: the function did not finish within 300 ms; its VM was stopped\n"
    );
}

#[test]
fn out_of_memory_exits_123() {
    let o = flint(
        &["run", "--memory-mib", "48", &example("alloc"), "--", "64"],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(123));
    let err = text(&o.stderr);
    assert!(
        err.contains("flint: the function needs more memory than the VM's 48 MiB"),
        "{err}"
    );
    assert!(err.trim_end().ends_with("raise --memory-mib"), "{err}");
}

#[test]
fn not_webassembly_exits_120() {
    let p = temp_module("notes.txt", b"just some text\n");
    let o = flint(&["run", p.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(120));
    assert_eq!(
        text(&o.stderr),
        "flint: the file is not a valid WebAssembly module: it does not start with the \\0asm magic number\n"
    );
    let p = temp_module("m.wat", b"(module)");
    let o = flint(&["run", p.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(120));
    assert!(text(&o.stderr).contains("WebAssembly text (.wat)"));
}

#[test]
fn corrupt_webassembly_exits_120_with_the_parser_message() {
    let p = temp_module("corrupt.wasm", b"\0asm\x01\0\0\0\x01\xff\xff\xff");
    let o = flint(&["run", p.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(120));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("flint: the file is not a valid WebAssembly module: "),
        "{err}"
    );
    let p = temp_module("truncated.wasm", &flint_examples::bytes("hello")[..1000]);
    let o = flint(&["run", p.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(120), "{}", text(&o.stderr));
}

#[test]
fn module_without_start_exits_120() {
    let p = temp_module("empty.wasm", b"\0asm\x01\0\0\0");
    let o = flint(&["run", p.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(120));
    assert!(
        text(&o.stderr).contains("not a WASI command"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn unknown_import_exits_121_and_names_it() {
    // (module (import "env" "foo" (func)))
    let module = b"\0asm\x01\0\0\0\x01\x04\x01\x60\x00\x00\x02\x0b\x01\x03env\x03foo\x00\x00";
    let p = temp_module("import.wasm", module);
    let o = flint(&["run", p.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(121));
    assert_eq!(
        text(&o.stderr),
        "flint: the module imports env::foo (function), which Flint does not provide\n"
    );
}

#[test]
fn wasi_import_with_the_wrong_signature_exits_121() {
    // (module (import "wasi_snapshot_preview1" "fd_write" (func)))
    let mut m = b"\0asm\x01\0\0\0\x01\x04\x01\x60\x00\x00\x02\x23\x01\x16".to_vec();
    m.extend(b"wasi_snapshot_preview1\x08fd_write\x00\x00");
    let p = temp_module("badsig.wasm", &m);
    let o = flint(&["run", p.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(121), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("fd_write"), "{}", text(&o.stderr));
}

#[test]
fn missing_kvm_exits_126_and_says_how_to_fix_it() {
    let o = flint(
        &["run", &example("hello")],
        "",
        &[("FLINT_KVM_DEVICE", "/nonexistent/kvm")],
    );
    assert_eq!(o.status.code(), Some(126));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("flint: /nonexistent/kvm does not exist"),
        "{err}"
    );
    assert!(err.contains("modprobe kvm_intel"), "{err}");
}

#[test]
fn unusable_kvm_device_exits_126() {
    let p = temp_module("not-kvm", b"");
    let o = flint(
        &["run", &example("hello")],
        "",
        &[("FLINT_KVM_DEVICE", p.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(126), "{}", text(&o.stderr));
}

#[test]
fn unreadable_module_exits_125() {
    let o = flint(&["run", "/nonexistent/fn.wasm"], "", &[]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).starts_with("flint: cannot read module /nonexistent/fn.wasm: "));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["run"],
        vec!["run", "x.wasm", "--memory-mib", "lots"],
        vec!["run", "x.wasm", "--env", "=v"],
        vec!["run", "x.wasm", "--env", "FLINT_SURELY_UNSET_VAR"],
        vec!["frobnicate"],
    ] {
        let o = flint(&args, "", &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    }
    let o = flint(&["run", "--memory-mib", "8", &example("hello")], "", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("memory must be between 32 and 3072 MiB"));
}
