//! `flint snapshot`, `flint invoke` and `flint snapshot inspect` as a user
//! runs them.

mod common;

fn flint(args: &[&str], stdin: &str) -> std::process::Output {
    common::flint(args, stdin, &[])
}

use common::text;

/// A directory for one snapshot, removed when dropped.
fn dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("flint-cli-snap-{tag}-"))
        .tempdir()
        .unwrap()
}

#[test]
fn snapshot_invoke_inspect() {
    let d_tmp = dir("hello");
    let d = d_tmp.path();
    let ds = d.to_str().unwrap();
    let hello = flint_examples::path("hello");
    let o = flint(&["snapshot", hello.to_str().unwrap(), "-o", ds], "");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for backend in ["uffd", "file"] {
        for prefetch in ["on", "off"] {
            let o = flint(
                &[
                    "invoke",
                    ds,
                    "--memory-backend",
                    backend,
                    "--prefetch",
                    prefetch,
                    "--",
                    "world",
                ],
                "",
            );
            assert_eq!(
                text(&o.stdout),
                "hello, world\n",
                "{backend} {prefetch}: {}",
                text(&o.stderr)
            );
            assert_eq!(o.status.code(), Some(0));
        }
    }
    let o = flint(&["snapshot", "inspect", ds], "");
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    for want in [
        "format version:  2",
        "architecture:    x86_64",
        "checksum:",
        "memory:          128 MiB",
        "working set:     ",
        "memory checksums: every page verified",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(
        out.contains(" pages ("),
        "the working set was recorded by the first uffd invoke:\n{out}"
    );
}

#[test]
fn invoke_passes_stdin_env_and_exit_codes() {
    let d_tmp = dir("echo");
    let d = d_tmp.path();
    let ds = d.to_str().unwrap();
    let o = flint(
        &[
            "snapshot",
            flint_examples::path("echo").to_str().unwrap(),
            "-o",
            ds,
            "--memory-mib",
            "64",
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = flint(&["invoke", ds, "-e", "A=1"], "piped\n");
    assert_eq!(text(&o.stdout), "piped\n");
    assert_eq!(text(&o.stderr), "A=1\n");

    let d_tmp = dir("trap");

    let d = d_tmp.path();
    let ds = d.to_str().unwrap();
    flint(
        &[
            "snapshot",
            flint_examples::path("trap").to_str().unwrap(),
            "-o",
            ds,
        ],
        "",
    );
    let o = flint(&["invoke", ds], "");
    assert_eq!(o.status.code(), Some(122));
    assert_eq!(
        text(&o.stderr),
        "flint: the function trapped: wasm `unreachable` instruction executed\n"
    );
}

#[test]
fn bad_snapshots_exit_119_with_the_reason() {
    let d_tmp = dir("bad");
    let d = d_tmp.path();
    let ds = d.to_str().unwrap();
    let o = flint(&["invoke", ds], "");
    assert_eq!(o.status.code(), Some(119));
    assert!(text(&o.stderr).contains("state.bin"), "{}", text(&o.stderr));

    flint(
        &[
            "snapshot",
            flint_examples::path("hello").to_str().unwrap(),
            "-o",
            ds,
        ],
        "",
    );
    let state = d.join("state.bin");
    let mut b = std::fs::read(&state).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&state, b).unwrap();
    for args in [vec!["invoke", ds], vec!["snapshot", "inspect", ds]] {
        let o = flint(&args, "");
        assert_eq!(o.status.code(), Some(119));
        assert!(
            text(&o.stderr).contains("checksum does not match"),
            "{}",
            text(&o.stderr)
        );
    }
}

/// A byte changed in every data page of `memory.bin` (the state file
/// untouched): every way of invoking, and inspect, refuse it with 119 and
/// print nothing the function would have printed.
#[test]
fn a_corrupted_memory_file_exits_119() {
    let d_tmp = dir("badmem");
    let d = d_tmp.path();
    let ds = d.to_str().unwrap();
    let hello = flint_examples::path("hello");
    let o = flint(&["snapshot", hello.to_str().unwrap(), "-o", ds], "");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mem = d.join("memory.bin");
    let mut b = std::fs::read(&mem).unwrap();
    for page in b.chunks_mut(4096) {
        if let Some(i) = page.iter().position(|x| *x != 0) {
            page[i] ^= 0x80;
        }
    }
    std::fs::write(&mem, b).unwrap();
    for args in [
        vec!["invoke", ds, "--memory-backend", "uffd", "--", "x"],
        vec!["invoke", ds, "--memory-backend", "file", "--", "x"],
        vec!["invoke", ds, "--repeat", "2", "--", "x"],
        vec!["snapshot", "inspect", ds],
    ] {
        let o = flint(&args, "");
        assert_eq!(o.status.code(), Some(119), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("memory.bin is corrupted"),
            "{args:?}: {}",
            text(&o.stderr)
        );
        assert!(!text(&o.stdout).contains("hello"), "{args:?}");
    }
}

#[test]
fn snapshotting_a_bad_module_fails_like_run() {
    let d_tmp = dir("notwasm");
    let d = d_tmp.path();
    let p = d.join("module.txt");
    std::fs::write(&p, "text").unwrap();
    let o = flint(
        &["snapshot", p.to_str().unwrap(), "-o", d.to_str().unwrap()],
        "",
    );
    assert_eq!(o.status.code(), Some(120));
    assert!(!d.join("state.bin").exists());
    let o = flint(&["snapshot", "only-a-module.wasm"], "");
    assert_eq!(o.status.code(), Some(2));
}

/// `flint invoke --repeat N`: N invocations in one VM, reset in place
/// between them: each sees the snapshot again (the counter prints 1 every
/// time), `--timings` reports each reset, and a failing invocation ends
/// the series with its own exit code.
#[test]
fn invoke_repeat_resets_between_invocations() {
    let d_tmp = dir("repeat");
    let ds = d_tmp.path().to_str().unwrap();
    let counter = flint_examples::path("counter");
    let o = flint(&["snapshot", counter.to_str().unwrap(), "-o", ds], "");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = flint(&["invoke", ds, "--repeat", "4", "--timings"], "");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "count 1\n".repeat(4));
    let err = text(&o.stderr);
    assert_eq!(err.matches(" reset ").count(), 3, "{err}");
    assert_eq!(err.matches("flint: invocation ").count(), 4, "{err}");

    let t_tmp = dir("repeat-trap");
    let ts = t_tmp.path().to_str().unwrap();
    let trap = flint_examples::path("trap");
    let o = flint(&["snapshot", trap.to_str().unwrap(), "-o", ts], "");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = flint(&["invoke", ts, "--repeat", "3", "--timings"], "");
    assert_eq!(o.status.code(), Some(122), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr).matches(" reset ").count(), 0);

    let o = flint(&["invoke", ds, "--repeat", "0"], "");
    assert_eq!(o.status.code(), Some(2));
}

/// Run as an unprivileged user that may use KVM (nobody, with /dev/kvm's
/// group): where userfaultfd is refused to it, `flint invoke` without
/// `--memory-backend` says so and restores with the file backend; an
/// explicit `--memory-backend uffd` fails with the reason.
#[test]
fn invoke_falls_back_to_the_file_backend_without_userfaultfd() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // /dev/kvm must let its group in (0660, as scripts/setup makes it).
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test runs as root");
    let kvm = std::fs::metadata("/dev/kvm").unwrap();
    let d_tmp = dir("nobody");
    let d = d_tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ds = d.to_str().unwrap();
    let hello = flint_examples::path("hello");
    let o = flint(&["snapshot", hello.to_str().unwrap(), "-o", ds], "");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for f in std::fs::read_dir(d).unwrap() {
        let p = f.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // A KVM device node nobody may open, whatever /dev/kvm's mode here.
    let node = d.join("kvm");
    let path = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: mknod of a NUL-terminated path with /dev/kvm's device number.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, kvm.rdev()) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o666)).unwrap();
    // On a nodev filesystem the node does not open: /dev/kvm with its
    // group, then (it must let its group in).
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&node)
        .is_ok();
    let (device, gid) = if usable {
        (node.clone(), 65534)
    } else {
        assert!(kvm.mode() & 0o060 == 0o060 || kvm.mode() & 0o006 == 0o006);
        ("/dev/kvm".into(), kvm.gid())
    };
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flint"));
        cmd.args(args).env("FLINT_KVM_DEVICE", &device);
        // SAFETY: between fork and exec only the credential calls.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(1, &gid) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    let refused = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
        .map(|v| v.trim() == "0")
        .unwrap_or(true);
    let o = as_nobody(&["invoke", ds, "--", "nobody"]);
    assert_eq!(text(&o.stdout), "hello, nobody\n", "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr).contains("using --memory-backend file"),
        refused,
        "{}",
        text(&o.stderr)
    );
    if refused {
        let o = as_nobody(&["invoke", ds, "--memory-backend", "uffd", "--", "x"]);
        assert_ne!(o.status.code(), Some(0));
        assert!(
            text(&o.stderr).contains("vm.unprivileged_userfaultfd"),
            "{}",
            text(&o.stderr)
        );
    }
}
