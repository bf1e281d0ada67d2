//! `linux`: Linux programs under Flint against the same programs as plain
//! host processes: `flint run` of busybox `echo` and of a static Rust
//! (musl) hello to exit, a Go and a Python start-up to first output, and
//! the per-call cost of system calls (`rsbench`, measured inside).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{median, ms, p90};

fn time(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let o = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("spawning")?;
    let d = ms(t.elapsed());
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(d)
}

fn series(n: usize, mut f: impl FnMut() -> Result<f64>) -> Result<(f64, f64)> {
    f()?;
    let v: Vec<f64> = (0..n).map(|_| f()).collect::<Result<_>>()?;
    Ok((median(v.clone()), p90(v)))
}

/// A root with busybox; one with a Python copied from Debian's package.
fn roots(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let bb = dir.join("bb");
    std::fs::create_dir_all(bb.join("bin"))?;
    std::fs::copy("/bin/busybox", bb.join("bin/busybox"))
        .context("/bin/busybox (busybox-static)")?;
    for a in ["sh", "echo"] {
        let _ = std::os::unix::fs::symlink("busybox", bb.join("bin").join(a));
    }
    let py = dir.join("py");
    std::fs::create_dir_all(py.join("usr/bin"))?;
    std::fs::create_dir_all(py.join("usr/lib"))?;
    std::fs::copy("/usr/bin/python3.11", py.join("usr/bin/python3"))?;
    let ldd = Command::new("ldd").arg("/usr/bin/python3.11").output()?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let dest = py.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::copy(lib, &dest)?;
    }
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/python3.11"])
        .arg(py.join("usr/lib/"))
        .status()?;
    if !st.success() {
        bail!("copying the Python standard library failed");
    }
    Ok((bb, py))
}

fn go_hello(dir: &Path) -> Result<Option<PathBuf>> {
    let go = ["/usr/lib/go-1.19/bin/go", "/usr/bin/go"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(go) = go else { return Ok(None) };
    let src = dir.join("go");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("go.mod"), "module hello\n\ngo 1.19\n")?;
    std::fs::write(
        src.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello\") }\n",
    )?;
    let out = dir.join("gohello");
    let st = Command::new(go)
        .current_dir(&src)
        .args(["build", "-o"])
        .arg(&out)
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .status()?;
    Ok(st.success().then_some(out))
}

pub fn main(n: usize) -> Result<()> {
    let flint =
        PathBuf::from(std::env::var("FLINT").unwrap_or_else(|_| "target/release/flint".into()));
    let dir = std::env::temp_dir().join(format!("flint-bench-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (bb, py) = roots(&dir)?;
    let bbs = bb.display().to_string();
    let pys = py.display().to_string();
    let musl = flint_examples::linux_path("rshello");
    println!("### Linux programs: Flint vs. the same program as a host process, {n} runs (ms)\n");
    println!(
        "| program, to exit | Flint: median (p90) | host process: median (p90) | Flint / host |"
    );
    println!("|---|---|---|---|");
    let row = |name: &str, f: (f64, f64), h: (f64, f64)| {
        println!(
            "| {name} | {:.1} ({:.1}) | {:.2} ({:.2}) | {:.1}x |",
            f.0,
            f.1,
            h.0,
            h.1,
            f.0 / h.0
        );
    };
    let f = series(n, || {
        time(Command::new(&flint).args(["run", "--rootfs", &bbs, "/bin/echo", "--", "hello"]))
    })?;
    let h = series(n, || time(Command::new(bb.join("bin/echo")).arg("hello")))?;
    row("busybox `echo hello`", f, h);
    let f = series(n, || {
        time(
            Command::new(&flint)
                .arg("run")
                .arg(&musl)
                .args(["--", "world"]),
        )
    })?;
    let h = series(n, || time(Command::new(&musl).arg("world")))?;
    row("Rust (musl, static) hello", f, h);
    if let Some(go) = go_hello(&dir)? {
        let f = series(n, || time(Command::new(&flint).arg("run").arg(&go)))?;
        let h = series(n, || time(&mut Command::new(&go)))?;
        row("Go 1.19 (static) hello", f, h);
    }
    let nn = n.min(20);
    let f = series(nn, || {
        time(Command::new(&flint).args([
            "run",
            "--rootfs",
            &pys,
            "-e",
            "PYTHONDONTWRITEBYTECODE=1",
            "/usr/bin/python3",
            "--",
            "-c",
            "print('hi')",
        ]))
    })?;
    let h = series(nn, || {
        time(
            Command::new("/usr/bin/python3.11")
                .args(["-S", "-c", "print('hi')"])
                .env("PYTHONDONTWRITEBYTECODE", "1"),
        )
    })?;
    row("CPython 3.11 `print('hi')`", f, h);

    println!("\n### System calls: cost per call, measured inside the program (us)\n");
    println!("| call | Flint | host process | Flint / host |");
    println!("|---|---|---|---|");
    let bench = flint_examples::linux_path("rsbench");
    let parse = |o: std::process::Output| -> Vec<(String, f64)> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    };
    let inside = parse(
        Command::new(&flint)
            .arg("run")
            .arg(&bench)
            .args(["--", "5000"])
            .output()?,
    );
    let host = parse(Command::new(&bench).arg("5000").output()?);
    for ((k, f), (_, h)) in inside.iter().zip(host.iter()) {
        println!("| {k} | {f:.3} | {h:.3} | {:.1}x |", f / h);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
