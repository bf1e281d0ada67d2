//! The shim with a real containerd (Debian's, started here on its own
//! socket and state directory): import an image built by flint-image, run
//! it with `ctr`, and check output, exit codes, events, kill, delete, and
//! that nothing is left behind. Needs root and containerd (scripts/deps
//! installs it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Containerd {
    dir: PathBuf,
    sock: PathBuf,
    child: Child,
}

impl Containerd {
    fn start() -> Self {
        assert!(
            Command::new("containerd").arg("--version").output().is_ok(),
            "containerd is not installed (scripts/deps installs it: apt-get install containerd)"
        );
        let dir = std::env::temp_dir().join(format!("flint-ctd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            sock.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-flint-v2"));
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Self { dir, sock, child }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn import(&self, module: &[u8], name: &str, reference: &str) {
        let tar = self.dir.join(format!("{name}.tar"));
        std::fs::write(&tar, flint_image::build(module, name, reference).unwrap()).unwrap();
        let o = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for m in mounts_under(&self.dir) {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path under our own temp dir.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn shims_running() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .map(|c| c.trim() == "containerd-shim")
                .unwrap_or(false)
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("containerd-shim-flint-v2"))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn ctr_runs_wasm_images_in_flint_vms() {
    let ctd = Containerd::start();
    ctd.import(
        &flint_examples::bytes("hello"),
        "hello.wasm",
        "docker.io/library/hello:v1",
    );
    ctd.import(
        &flint_examples::bytes("fib"),
        "fib.wasm",
        "docker.io/library/fib:v1",
    );
    ctd.import(
        &flint_examples::bytes("spin"),
        "spin.wasm",
        "docker.io/library/spin:v1",
    );
    ctd.import(
        b"#!/bin/sh\necho hi\n",
        "sh",
        "docker.io/library/notwasm:v1",
    );

    // Events, in order, while a task runs.
    let mut events = Command::new("ctr")
        .arg("-a")
        .arg(&ctd.sock)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.flint.v2",
        "docker.io/library/hello:v1",
        "t1",
        "/hello.wasm",
        "world",
    ]);
    assert_eq!(
        text(&o.stdout),
        "hello, world\n",
        "stderr: {}",
        text(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&ctd.ctr(&["task", "ls", "-q"]).stdout).trim(),
        "",
        "no task left"
    );

    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let mut ev = String::new();
    events
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut ev)
        .unwrap();
    let _ = events.wait();
    let order: Vec<&str> = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ]
    .into_iter()
    .filter_map(|t| ev.find(t).map(|_| t))
    .collect();
    assert_eq!(
        order,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "events:\n{ev}"
    );
    let pos = |t: &str| ev.find(t).unwrap();
    assert!(
        pos("/tasks/create") < pos("/tasks/start")
            && pos("/tasks/start") < pos("/tasks/exit")
            && pos("/tasks/exit") < pos("/tasks/delete"),
        "{ev}"
    );

    // The function's exit status is the task's.
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.flint.v2",
        "docker.io/library/fib:v1",
        "t2",
        "/fib.wasm",
        "abc",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("N must be an integer"),
        "{}",
        text(&o.stderr)
    );

    // A task that never exits is stopped by kill.
    let o = ctd.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.flint.v2",
        "docker.io/library/spin:v1",
        "t3",
        "/spin.wasm",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::thread::sleep(Duration::from_millis(500));
    assert!(text(&ctd.ctr(&["task", "ls"]).stdout).contains("RUNNING"));
    let o = ctd.ctr(&["task", "kill", "-s", "SIGKILL", "t3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&ctd.ctr(&["task", "ls"]).stdout).contains("STOPPED") {
        assert!(Instant::now() < deadline, "kill did not stop the task");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ctd.ctr(&["task", "rm", "t3"]).status.success());
    assert!(ctd.ctr(&["container", "rm", "t3"]).status.success());

    // A Linux image is refused with a message that says what Flint runs.
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.flint.v2",
        "docker.io/library/notwasm:v1",
        "t4",
        "/sh",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not a WebAssembly module"),
        "{}",
        text(&o.stderr)
    );
    let _ = ctd.ctr(&["container", "rm", "t4"]);

    // Nothing left behind: no task, no shim, no rootfs mount.
    assert_eq!(text(&ctd.ctr(&["task", "ls", "-q"]).stdout).trim(), "");
    let deadline = Instant::now() + Duration::from_secs(10);
    while shims_running() > 0 {
        assert!(Instant::now() < deadline, "a shim process was left running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<String> = mounts_under(&ctd.dir)
        .into_iter()
        .filter(|m| m.contains("rootfs"))
        .collect();
    assert!(left.is_empty(), "rootfs mounts left: {left:?}");
}
