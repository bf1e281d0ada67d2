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

/// `--publish` forwards a host port to a port a program listens on in its
/// VM: busybox `httpd` answers through it (each connection its own, a
/// refused one closed while the server starts), and the VM's port is
/// reached nowhere else. A module has no ports to publish.
#[test]
fn publish_forwards_a_host_port_to_a_server_in_the_vm() {
    use std::io::{Read, Write};
    let root = busybox_root();
    std::os::unix::fs::symlink("busybox", root.path().join("bin/httpd")).unwrap();
    std::fs::create_dir(root.path().join("www")).unwrap();
    std::fs::write(root.path().join("www/index.html"), "from the VM\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["run", "--rootfs"])
        .arg(root.path())
        .args(["--timeout-ms", "60000", "-p", &format!("{port}:8080")])
        .args(["/bin/httpd", "--", "-f", "-p", "8080", "-h", "/www"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        (!out.is_empty()).then_some(out)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let page = loop {
        if let Some(p) = get("/index.html") {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "httpd never answered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        page.starts_with("HTTP/1.") && page.contains(" 200 "),
        "{page}"
    );
    assert!(page.ends_with("\r\n\r\nfrom the VM\n"), "{page}");
    let missing = get("/nothing").unwrap();
    assert!(missing.contains(" 404 "), "{missing}");
    child.kill().unwrap();
    child.wait().unwrap();
    let o = flint(
        &[
            "run",
            "-p",
            "8080",
            flint_examples::path("hello").to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--publish"), "{}", text(&o.stderr));
}

/// `--egress`: a program's connection to an address off its VM's
/// loopback is made from the host, to that address (here this host's own
/// non-loopback address, where a test server listens); without it the
/// address is unreachable.
#[test]
fn egress_lets_a_program_connect_out_of_its_vm() {
    use std::io::{Read, Write};
    // This host's address on its default route (no packet is sent).
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .connect("203.0.113.1:9")
        .expect("the test needs a non-loopback address with a route");
    let ip = probe.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "{ip}");
    let server = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in server.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nfrom out",
            );
        }
    });
    let root = busybox_root();
    let r = root.path().display().to_string();
    let url = format!("http://{addr}/x");
    let wget = |egress: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(egress);
        args.extend([
            "--rootfs",
            &r,
            "/bin/busybox",
            "--",
            "wget",
            "-q",
            "-O",
            "-",
            &url,
        ]);
        flint(&args, "", &[])
    };
    let o = wget(&["--egress"]);
    assert_eq!(text(&o.stdout), "from out", "{}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));
    let o = wget(&[]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("unreachable"),
        "{}",
        text(&o.stderr)
    );
}
