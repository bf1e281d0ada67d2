//! A real containerd (Debian's) for the shim's tests, started on its own
//! socket and state directory under a temporary directory, with `ctr` to
//! drive it. Needs root and containerd (scripts/deps installs it).

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tests share /run/containerd/s and count shim processes: one at a time.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Containerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Child,
    namespace: &'static str,
}

impl Containerd {
    /// containerd without its CRI plugin, driven with `ctr`.
    pub fn start(name: &str) -> Self {
        Self::with_config(
            name,
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            "default",
        )
    }

    /// containerd with its CRI plugin: Flint as the runtime handler
    /// `flint` (configured by runtime-class/deploy/'s snippet), `sandbox_image` as
    /// the pods' sandbox image, no CNI (pods use the host's network).
    pub fn start_with_cri(name: &str, sandbox_image: &str) -> Self {
        let cri = format!(
            r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
{}"#,
            // The snippet runtime-class/deploy/ tells users to add.
            include_str!("../../deploy/containerd-1.6-1.7.toml")
        );
        Self::with_config(name, &cri, "k8s.io")
    }

    fn with_config(name: &str, extra: &str, namespace: &'static str) -> Self {
        assert!(
            Command::new("containerd").arg("--version").output().is_ok(),
            "containerd is not installed (scripts/deps installs it: apt-get install containerd)"
        );
        let dir = std::env::temp_dir().join(format!("flint-ctd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // containerd's shim socket directory, gone when no shim serves (it
        // is removed only when empty): each run is a fresh host's first
        // shim, which must make it itself.
        let _ = std::fs::remove_dir("/run/containerd/s");
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            sock.display()
        );
        // Top-level keys go before the first table.
        let config = if extra.starts_with('[') {
            format!("{config}{extra}")
        } else {
            format!("{extra}{config}")
        };
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let child = Self::spawn(&dir, &sock);
        Self {
            dir,
            sock,
            child,
            namespace,
        }
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
            // The shims it starts keep their snapshot cache here.
            .env("FLINT_SHIM_SNAPSHOTS", dir.join("shim-snapshots"))
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
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, &self.sock);
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn import(&self, modules: &[(&str, &[u8])], reference: &str) {
        self.import_archive(
            &format!("{}.tar", modules[0].0),
            flint_image::build_with(modules, reference).unwrap(),
        );
    }

    /// Imports an image layout archive (built by flint-image) as `name`.
    pub fn import_archive(&self, name: &str, archive: Vec<u8>) {
        let tar = self.dir.join(name);
        std::fs::write(&tar, archive).unwrap();
        let o = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(o.status.success(), "import: {}", text(&o.stderr));
    }

    /// Starts `ctr events`; the returned closure stops it and gives what it saw.
    pub fn events(&self) -> impl FnOnce() -> String {
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", self.namespace])
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
    pub fn task_status(&self, id: &str) -> Option<(String, String)> {
        let out = text(&self.ctr(&["task", "ls"]).stdout);
        out.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| (f[1].to_string(), f[2].to_string()))
        })
    }

    pub fn wait_status(&self, id: &str, want: Option<&str>) {
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

    /// `ctr run --rm` with Flint's runtime.
    pub fn run_rm(&self, image: &str, id: &str, args: &[&str]) -> Output {
        let mut a = vec!["run", "--rm", "--runtime", FLINT, image, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    pub fn run_detached(&self, image: &str, id: &str, args: &[&str]) {
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

    pub fn kill_and_remove(&self, id: &str, signal: &str) {
        let o = self.ctr(&["task", "kill", "-s", signal, id]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        self.wait_status(id, Some("STOPPED"));
        assert!(self.ctr(&["task", "rm", id]).status.success());
        assert!(self.ctr(&["container", "rm", id]).status.success());
    }

    /// Nothing of Flint is left: no task, no shim, no rootfs mount, no shim
    /// socket that was not there before.
    pub fn assert_nothing_left(&self, sockets_before: &[String]) {
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

pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Flint shims serving the containerd on `sock`.
/// The shim processes of this containerd and their privileged helpers
/// (forks of theirs, named `flint-helper`): both must be gone when
/// nothing is left.
pub fn shim_pids(sock: &Path) -> Vec<i32> {
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

/// The shim processes alone, without their helpers.
pub fn shims_only(sock: &Path) -> Vec<i32> {
    shim_pids(sock)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() != "flint-helper")
        })
        .collect()
}

pub fn shim_sockets() -> Vec<String> {
    std::fs::read_dir("/run/containerd/s")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn in_order(ev: &str, topics: &[&str]) -> bool {
    let mut at = 0;
    for t in topics {
        match ev[at..].find(t) {
            Some(p) => at += p + t.len(),
            None => return false,
        }
    }
    true
}

pub const FLINT: &str = "io.containerd.flint.v2";

pub fn tools_image(ctd: &Containerd) {
    ctd.import(
        &[
            ("spin.wasm", &flint_examples::bytes("spin")),
            ("hello.wasm", &flint_examples::bytes("hello")),
            ("fib.wasm", &flint_examples::bytes("fib")),
            ("echo.wasm", &flint_examples::bytes("echo")),
            ("counter.wasm", &flint_examples::bytes("counter")),
        ],
        "docker.io/library/tools:v1",
    );
}
