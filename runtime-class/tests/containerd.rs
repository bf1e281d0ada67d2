//! The shim with a real containerd (Debian's, started here on its own
//! socket and state directory): import an image built by flint-image, run
//! it with `ctr`, and check output, exit codes, events, kill, delete, and
//! that nothing is left behind. Needs root and containerd (scripts/deps
//! installs it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tests share /run/containerd/s and count shim processes: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Containerd {
    dir: PathBuf,
    sock: PathBuf,
    child: Child,
}

impl Containerd {
    fn start(name: &str) -> Self {
        assert!(
            Command::new("containerd").arg("--version").output().is_ok(),
            "containerd is not installed (scripts/deps installs it: apt-get install containerd)"
        );
        let dir = std::env::temp_dir().join(format!("flint-ctd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            sock.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let child = Self::spawn(&dir, &sock);
        Self { dir, sock, child }
    }

    fn spawn(dir: &Path, sock: &Path) -> Child {
        let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-flint-v2"));
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        let _ = std::fs::remove_file(sock);
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
        child
    }

    /// containerd dies (SIGKILL) and comes back on the same state.
    fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, &self.sock);
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

    fn import(&self, modules: &[(&str, &[u8])], reference: &str) {
        let tar = self.dir.join(format!("{}.tar", modules[0].0));
        std::fs::write(&tar, flint_image::build_with(modules, reference).unwrap()).unwrap();
        let o = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(o.status.success(), "import: {}", text(&o.stderr));
    }

    /// Starts `ctr events`; the returned closure stops it and gives what it saw.
    fn events(&self) -> impl FnOnce() -> String {
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        move || {
            std::thread::sleep(Duration::from_millis(500));
            let _ = child.kill();
            let mut ev = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut ev)
                .unwrap();
            let _ = child.wait();
            ev
        }
    }

    /// The status `ctr task ls` shows for a task, if it lists it.
    fn task_status(&self, id: &str) -> Option<(String, String)> {
        let out = text(&self.ctr(&["task", "ls"]).stdout);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| (f[1].to_string(), f[2].to_string()))
        })
    }

    fn wait_status(&self, id: &str, want: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = self.task_status(id);
            if st.as_ref().map(|s| s.1.as_str()) == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id}: {st:?}, waiting for {want:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run_detached(&self, image: &str, id: &str, args: &[&str]) {
        let mut a = vec![
            "run",
            "-d",
            "--runtime",
            "io.containerd.flint.v2",
            image,
            id,
        ];
        a.extend_from_slice(args);
        let o = self.ctr(&a);
        assert!(o.status.success(), "{}", text(&o.stderr));
        self.wait_status(id, Some("RUNNING"));
    }

    fn kill_and_remove(&self, id: &str) {
        let o = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        self.wait_status(id, Some("STOPPED"));
        assert!(self.ctr(&["task", "rm", id]).status.success());
        assert!(self.ctr(&["container", "rm", id]).status.success());
    }

    /// Nothing of Flint is left: no task, no shim, no rootfs mount, no shim
    /// socket that was not there before.
    fn assert_nothing_left(&self, sockets_before: &[String]) {
        assert_eq!(text(&self.ctr(&["task", "ls", "-q"]).stdout).trim(), "");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !shim_pids(&self.sock).is_empty() {
            assert!(Instant::now() < deadline, "a shim process was left running");
            std::thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<String> = mounts_under(&self.dir)
            .into_iter()
            .filter(|m| m.contains("rootfs"))
            .collect();
        assert!(left.is_empty(), "rootfs mounts left: {left:?}");
        let new: Vec<String> = shim_sockets()
            .into_iter()
            .filter(|s| !sockets_before.contains(s))
            .collect();
        assert!(
            new.is_empty(),
            "shim sockets left in /run/containerd/s: {new:?}"
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test may leave shims of this containerd behind.
        for pid in shim_pids(&self.sock) {
            // SAFETY: kill(2) on a shim process of this test's containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for m in mounts_under(&self.dir) {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path under our own temp dir.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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

/// Flint shims serving the containerd on `sock`.
fn shim_pids(sock: &Path) -> Vec<i32> {
    let sock = sock.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&cmdline);
            (c.contains("containerd-shim-flint-v2") && c.contains(&sock)).then_some(pid)
        })
        .collect()
}

fn shim_sockets() -> Vec<String> {
    std::fs::read_dir("/run/containerd/s")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn in_order(ev: &str, topics: &[&str]) -> bool {
    let mut at = 0;
    for t in topics {
        match ev[at..].find(t) {
            Some(p) => at += p + t.len(),
            None => return false,
        }
    }
    true
}

const FLINT: &str = "io.containerd.flint.v2";

fn tools_image(ctd: &Containerd) {
    ctd.import(
        &[
            ("spin.wasm", &flint_examples::bytes("spin")),
            ("hello.wasm", &flint_examples::bytes("hello")),
            ("fib.wasm", &flint_examples::bytes("fib")),
        ],
        "docker.io/library/tools:v1",
    );
}

#[test]
fn ctr_runs_wasm_images_in_flint_vms() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sockets = shim_sockets();
    let ctd = Containerd::start("run");
    ctd.import(
        &[("hello.wasm", &flint_examples::bytes("hello"))],
        "docker.io/library/hello:v1",
    );
    ctd.import(
        &[("fib.wasm", &flint_examples::bytes("fib"))],
        "docker.io/library/fib:v1",
    );
    tools_image(&ctd);
    ctd.import(
        &[("sh", b"#!/bin/sh\necho hi\n")],
        "docker.io/library/notwasm:v1",
    );

    // Events, in order, while a task runs.
    let events = ctd.events();
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        FLINT,
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
    let ev = events();
    assert!(
        in_order(
            &ev,
            &[
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ]
        ),
        "events:\n{ev}"
    );

    // The function's exit status is the task's.
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        FLINT,
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

    // A task that never exits; execs run other modules of its image in
    // the pod, with their own output, exit status and events.
    let events = ctd.events();
    ctd.run_detached("docker.io/library/tools:v1", "t3", &["/spin.wasm"]);
    let o = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t3",
        "/hello.wasm",
        "exec",
    ]);
    assert_eq!(text(&o.stdout), "hello, exec\n", "{}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));
    let o = ctd.ctr(&["task", "exec", "--exec-id", "e2", "t3", "/fib.wasm", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = ctd.ctr(&["task", "exec", "--exec-id", "e3", "t3", "/nothing.wasm"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not in the image"),
        "{}",
        text(&o.stderr)
    );
    let o = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e4",
        "t3",
        "../../../../../../bin/sh",
    ]);
    assert!(!o.status.success(), "an exec cannot leave the rootfs");

    // Stats: the VM's memory and CPU, as containerd reads runc's.
    let o = ctd.ctr(&["task", "metrics", "--format", "json", "t3"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    let usage = m["memory"]["usage"]["usage"].as_u64().unwrap_or(0);
    let limit = m["memory"]["usage"]["limit"].as_u64().unwrap_or(0);
    assert!(usage > 0 && usage <= limit, "{m}");
    assert_eq!(limit, 128 << 20, "{m}");
    let cpu1 = m["cpu"]["usage"]["total"].as_u64().unwrap_or(0);
    assert!(cpu1 > 0, "{m}");
    std::thread::sleep(Duration::from_millis(200));
    let m: serde_json::Value = serde_json::from_slice(
        &ctd.ctr(&["task", "metrics", "--format", "json", "t3"])
            .stdout,
    )
    .unwrap();
    let cpu2 = m["cpu"]["usage"]["total"].as_u64().unwrap_or(0);
    assert!(cpu2 > cpu1, "a spinning VM uses CPU: {cpu1} then {cpu2}");

    ctd.kill_and_remove("t3");
    let ev = events();
    assert!(
        in_order(
            &ev,
            &[
                "/tasks/create",
                "/tasks/start",
                "/tasks/exec-added",
                "/tasks/exec-started",
                "/tasks/exit",
                "/tasks/exit",
                "/tasks/delete"
            ]
        ),
        "events:\n{ev}"
    );
    assert!(ev.contains("\"e1\""), "the exec's exit names it:\n{ev}");

    // A Linux image is refused with a message that says what Flint runs.
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        FLINT,
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

    ctd.assert_nothing_left(&sockets);
}

#[test]
fn tasks_survive_containerd_restarts_and_killed_shims_are_cleaned_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sockets = shim_sockets();
    let mut ctd = Containerd::start("faults");
    tools_image(&ctd);

    // containerd dies and comes back: the shim kept the task running and
    // containerd reconnects to it by the bundle's address file.
    ctd.run_detached("docker.io/library/tools:v1", "r1", &["/spin.wasm"]);
    let before = ctd.task_status("r1").unwrap();
    ctd.crash_and_restart();
    assert_eq!(ctd.task_status("r1"), Some(before), "the task survives");
    let o = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x",
        "r1",
        "/hello.wasm",
        "again",
    ]);
    assert_eq!(text(&o.stdout), "hello, again\n", "{}", text(&o.stderr));
    ctd.kill_and_remove("r1");

    // The shim is killed: containerd notices, the shim's `delete` action
    // cleans up (rootfs mount, socket), and the container can be removed.
    ctd.run_detached("docker.io/library/tools:v1", "r2", &["/spin.wasm"]);
    let (pid, _) = ctd.task_status("r2").unwrap();
    let pid: i32 = pid.parse().unwrap();
    // SAFETY: kill(2) on the shim process containerd reported.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ctd.task_status("r2").is_some_and(|s| s.1 == "RUNNING") {
        assert!(
            Instant::now() < deadline,
            "containerd did not notice the shim's death"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ctd.ctr(&["task", "rm", "-f", "r2"]);
    let o = ctd.ctr(&["container", "rm", "r2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // A new task runs normally afterwards.
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        FLINT,
        "docker.io/library/tools:v1",
        "r3",
        "/hello.wasm",
        "after",
    ]);
    assert_eq!(text(&o.stdout), "hello, after\n", "{}", text(&o.stderr));

    ctd.assert_nothing_left(&sockets);
}
