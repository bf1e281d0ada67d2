//! What the Linux tests share: root filesystems built from Debian's
//! packages (busybox-static, python3.11, golang-go), and a runner that
//! captures a program's output.

#![allow(dead_code)]

use std::io::{Read, Seek};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flint_linux::{Config, ExitStatus, LinuxError, Program, Stdio};

/// The busybox the tests use (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's {package} (scripts/deps does)"
    );
}

/// A fresh root filesystem holding busybox and its applet links.
pub fn busybox_root() -> tempfile::TempDir {
    need(BUSYBOX, "busybox-static");
    let dir = tempfile::Builder::new()
        .prefix("flint-bb-")
        .tempdir()
        .unwrap();
    for d in ["bin", "tmp", "etc", "work"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, dir.path().join("bin/busybox")).unwrap();
    for a in [
        "sh",
        "echo",
        "ls",
        "cat",
        "cp",
        "mv",
        "rm",
        "mkdir",
        "find",
        "grep",
        "sed",
        "awk",
        "sort",
        "wc",
        "sha256sum",
        "tar",
        "sleep",
        "date",
        "env",
        "ps",
        "tr",
        "head",
        "tail",
        "uniq",
        "cut",
        "xargs",
        "seq",
        "expr",
        "test",
        "true",
        "false",
        "printf",
        "touch",
        "ln",
        "readlink",
        "basename",
        "dirname",
        "chmod",
        "stat",
        "kill",
        "id",
        "uname",
        "du",
        "md5sum",
        "yes",
        "rmdir",
        "pwd",
    ] {
        std::os::unix::fs::symlink("busybox", dir.path().join("bin").join(a)).unwrap();
    }
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .unwrap();
    dir
}

static BUILD: Mutex<()> = Mutex::new(());

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/flint-test-roots")
}

/// A root filesystem with Debian's CPython 3.11 (the interpreter, the
/// libraries `ldd` names, the standard library), copied from the host's
/// packaged files once and reused.
pub fn python_root() -> PathBuf {
    need("/usr/bin/python3.11", "python3.11");
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = target_dir().join("python");
    if root.join(".complete").exists() {
        return root;
    }
    let _ = std::fs::remove_dir_all(&root);
    for d in ["usr/bin", "tmp", "etc", "usr/lib"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/python3.11", root.join("usr/bin/python3.11")).unwrap();
    std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3")).unwrap();
    let ldd = std::process::Command::new("ldd")
        .arg("/usr/bin/python3.11")
        .output()
        .unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, &dest).unwrap();
    }
    let st = std::process::Command::new("cp")
        .args(["-a", "/usr/lib/python3.11"])
        .arg(root.join("usr/lib/"))
        .status()
        .unwrap();
    assert!(st.success());
    let _ = std::fs::remove_dir_all(root.join("usr/lib/python3.11/test"));
    std::fs::write(root.join(".complete"), b"").unwrap();
    root
}

/// A static Go program built from `tests/go/NAME` with Debian's golang-go
/// (`CGO_ENABLED=0`), built once.
pub fn go_program(name: &str) -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let out = target_dir().join(format!("go-{name}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go");
    let go = ["/usr/lib/go-1.19/bin/go", "/usr/bin/go"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("go is missing: install Debian's golang-go (scripts/deps does)");
    std::fs::create_dir_all(target_dir()).unwrap();
    let st = std::process::Command::new(go)
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(&out)
        .arg(format!("./{name}"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", target_dir().join("gocache"))
        .env("GOPATH", target_dir().join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .status()
        .unwrap();
    assert!(st.success(), "go build {name} failed");
    out
}

/// What a run gave.
#[derive(Debug)]
pub struct Ran {
    pub result: Result<flint_linux::Outcome, LinuxError>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn status(&self) -> ExitStatus {
        match &self.result {
            Ok(o) => o.status,
            Err(e) => panic!("the run failed: {e} (stderr: {})", self.stderr),
        }
    }

    pub fn code(&self) -> i32 {
        self.status().code()
    }
}

pub fn file_fd(f: &std::fs::File) -> OwnedFd {
    f.try_clone().unwrap().into()
}

/// Runs `path` (inside `root`) with `argv` and `env`, stdin from `stdin`.
pub fn run_with(
    config: &Config,
    root: &Path,
    path: &str,
    argv: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
    workdir: &str,
) -> Ran {
    let mut input = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut input, stdin).unwrap();
    input.rewind().unwrap();
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let stdio = Stdio {
        stdin: file_fd(&input),
        stdout: file_fd(&out),
        stderr: file_fd(&err),
    };
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/bin:/usr/bin".into()));
    }
    let program = Program {
        path: path.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env,
        workdir: workdir.into(),
    };
    let result = flint_linux::run(config, root, &program, Some(stdio));
    let (mut o, mut e) = (String::new(), String::new());
    out.rewind().unwrap();
    out.read_to_string(&mut o).unwrap();
    err.rewind().unwrap();
    err.read_to_string(&mut e).unwrap();
    Ran {
        result,
        stdout: o,
        stderr: e,
    }
}

pub fn config() -> Config {
    Config {
        timeout: Some(std::time::Duration::from_secs(60)),
        ..Config::default()
    }
}

pub fn run(root: &Path, path: &str, argv: &[&str]) -> Ran {
    run_with(&config(), root, path, argv, &[], b"", "/")
}

/// A root holding one static program at `/NAME`.
pub fn program_root(program: &Path) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("flint-prog-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::copy(program, dir.path().join(&name)).unwrap();
    (dir, format!("/{name}"))
}

/// What `program ARGS` prints when run natively (it must succeed).
pub fn native_run(program: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "natively: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}
