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

#[test]
fn image_build_packs_a_root_filesystem_with_its_config() {
    let root = busybox_root();
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("bb.tar");
    let o = flint(
        &[
            "image",
            "build",
            "--rootfs",
            root.path().to_str().unwrap(),
            "--entrypoint",
            "/bin/sh",
            "--cmd",
            "-c",
            "--cmd",
            "echo hi",
            "--env",
            "A=1",
            "--workdir",
            "/etc",
            "-t",
            "docker.io/library/bb:v1",
            "-o",
            tar.to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let unpacked = out.path().join("root");
    let config = flint_image::unpack_rootfs(&tar, &unpacked).unwrap();
    assert_eq!(config.entrypoint, ["/bin/sh"]);
    assert_eq!(config.cmd, ["-c", "echo hi"]);
    assert!(
        config.env.contains(&("A".to_string(), "1".to_string())),
        "{:?}",
        config.env
    );
    assert_eq!(config.working_dir, "/etc");
    assert_eq!(
        std::fs::read_link(unpacked.join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    assert_eq!(std::fs::read(unpacked.join("etc/motd")).unwrap(), b"hi\n");
    // And the unpacked image runs.
    let o = flint(
        &[
            "run",
            "--rootfs",
            unpacked.to_str().unwrap(),
            "/bin/sh",
            "--",
            "-c",
            "cat /etc/motd",
        ],
        "",
        &[],
    );
    assert_eq!(text(&o.stdout), "hi\n");
}
