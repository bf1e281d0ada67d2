//! `flint run` of Linux programs as a user runs it: the commands of the
//! README, exact output and exit codes.

mod common;

use common::{flint, text};

fn busybox_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for d in ["bin", "etc", "tmp"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.path().join("bin/busybox"))
        .expect("/bin/busybox: install busybox-static");
    for a in ["sh", "echo", "tr", "ls", "cat", "pwd"] {
        std::os::unix::fs::symlink("busybox", dir.path().join("bin").join(a)).unwrap();
    }
    std::fs::write(dir.path().join("etc/motd"), "hi\n").unwrap();
    dir
}

#[test]
fn a_shell_with_a_pipe_in_a_busybox_root() {
    let root = busybox_root();
    let r = root.path().display().to_string();
    let o = flint(
        &[
            "run",
            "--rootfs",
            &r,
            "/bin/sh",
            "--",
            "-c",
            "echo hi | tr a-z A-Z; ls /etc",
        ],
        "",
        &[],
    );
    assert_eq!(text(&o.stdout), "HI\nmotd\n", "{}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));
    let o = flint(
        &[
            "run",
            "--rootfs",
            &r,
            "--workdir",
            "/tmp",
            "-e",
            "X=1",
            "/bin/sh",
            "--",
            "-c",
            "pwd; echo $X; cat",
        ],
        "in\n",
        &[],
    );
    assert_eq!(text(&o.stdout), "/tmp\n1\nin\n");
}

#[test]
fn a_static_program_with_an_empty_root() {
    let prog = flint_examples::linux_path("rshello").display().to_string();
    let o = flint(&["run", &prog, "--", "world"], "", &[]);
    assert_eq!(text(&o.stdout), "hello, world\n", "{}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn statuses_follow_linux() {
    let root = busybox_root();
    let r = root.path().display().to_string();
    let o = flint(
        &["run", "--rootfs", &r, "/bin/sh", "--", "-c", "exit 9"],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(9));
    let fault = flint_examples::linux_path("rsfault").display().to_string();
    let o = flint(&["run", &fault, "--", "segv"], "", &[]);
    assert_eq!(o.status.code(), Some(139), "killed by SIGSEGV");
    let o = flint(
        &["run", "--timeout-ms", "300", &fault, "--", "spin"],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(124));
    let o = flint(&["run", "--rootfs", &r, "/bin/nothing"], "", &[]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        text(&o.stderr).contains("No such file or directory"),
        "{}",
        text(&o.stderr)
    );
}
