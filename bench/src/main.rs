//! Benchmarks, each printing a Markdown table the README quotes:
//! `cold` (`flint run`: a fresh micro-VM per run, phase by phase, beside the
//! same module under wasmtime, in-process, no VM), `snapshot` (restore vs.
//! cold boot), `all` (both), `linux` (Linux programs under Flint vs. as
//! host processes) and `containerd` (Flint's shim vs. runc).
//!
//! Run with `bench/run.sh` and `bench/containerd.sh` (they build release
//! binaries and install what the peers need), or
//! `cargo run --release -p flint-bench -- WHAT [ITERATIONS]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flint_executor::{run, BufferIo, Invocation, Phases, VmConfig};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn p90(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `flint run` as a child process; returns wall time and peak RSS (KiB).
fn flint_process(flint: &Path, module: &Path) -> Result<(f64, u64)> {
    let t = Instant::now();
    let child = Command::new(flint)
        .args([
            "run".as_ref(),
            module.as_os_str(),
            "--".as_ref(),
            "world".as_ref(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("spawning flint")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child we just spawned; pointers are to locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = ms(t.elapsed());
    if pid < 0 || status != 0 {
        bail!("flint run failed (status {status})");
    }
    Ok((wall, usage.ru_maxrss as u64))
}

mod linux;
mod pods;
mod reset;
mod snapshot;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "all".into());
    let iterations: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50);
    match what.as_str() {
        "cold" => cold(iterations),
        "snapshot" => snapshot::main(iterations),
        "containerd" => pods::main(iterations),
        "linux" => linux::main(iterations),
        "reset" => reset::main(iterations),
        "all" => {
            cold(iterations)?;
            println!();
            snapshot::main(iterations)
        }
        other => bail!(
            "unknown benchmark {other:?}: use cold, snapshot, reset, linux, containerd or all"
        ),
    }
}

fn cold(iterations: usize) -> Result<()> {
    let name = "hello";
    let module_path = flint_examples::path(name);
    let module = flint_examples::bytes(name);
    let inv = Invocation {
        args: vec![format!("{name}.wasm"), "world".into()],
        env: vec![],
    };
    let config = VmConfig::default();

    // 1. In-process: one VM per run, phase by phase.
    let mut runs: Vec<(Phases, u64)> = Vec::new();
    for i in 0..iterations + 1 {
        let mut io = BufferIo::default();
        let r = run(&config, &module, &inv, &mut io)?;
        if io.stdout != b"hello, world\n" {
            bail!(
                "unexpected output {:?}",
                String::from_utf8_lossy(&io.stdout)
            );
        }
        if i > 0 {
            runs.push((r.phases, r.guest_resident_bytes.unwrap_or_default()));
        }
    }
    let phase = |f: fn(&Phases) -> Duration| median(runs.iter().map(|(p, _)| ms(f(p))).collect());
    let totals: Vec<f64> = runs.iter().map(|(p, _)| ms(p.total())).collect();
    let guest_kib = runs[0].1 / 1024;

    // 2. The `flint` binary as a process: wall time and peak RSS.
    let exe = std::env::current_exe()?;
    let flint = exe.with_file_name("flint");
    let mut walls = Vec::new();
    let mut rss = Vec::new();
    if flint.exists() {
        for _ in 0..iterations {
            let (w, r) = flint_process(&flint, &module_path)?;
            walls.push(w);
            rss.push(r as f64);
        }
    }

    // 3. The peer: wasmtime in-process (PyPI package), no VM.
    let peer_script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wasmtime_peer.py");
    let peer = Command::new("python3")
        .arg(&peer_script)
        .arg(&module_path)
        .arg(iterations.to_string())
        .arg("world")
        .output();
    let peer: Option<serde_json_lite::Peer> = match peer {
        Ok(o) if o.status.success() => serde_json_lite::parse(&String::from_utf8_lossy(&o.stdout)),
        _ => None,
    };

    println!("## flint run {name}.wasm: cold start, {iterations} runs (medians, ms)\n");
    println!("| phase | Flint (KVM micro-VM) |");
    println!("| --- | --- |");
    println!("| VM + vCPU creation | {:.2} |", phase(|p| p.vm_create));
    println!(
        "| guest load (page tables, runtime ELF, module) | {:.2} |",
        phase(|p| p.guest_load)
    );
    println!(
        "| guest entry to runtime up | {:.2} |",
        phase(|p| p.guest_entry)
    );
    println!(
        "| module compile (wasmi, in the guest) | {:.2} |",
        phase(|p| p.compile)
    );
    println!("| instantiate | {:.2} |", phase(|p| p.instantiate));
    println!("| run `_start` to exit | {:.2} |", phase(|p| p.run));
    println!("| teardown | {:.2} |", phase(|p| p.teardown));
    println!(
        "| **total, in-process** | **{:.2}** (p90 {:.2}) |",
        median(totals.clone()),
        p90(totals.clone())
    );
    if !walls.is_empty() {
        let rss_kib = median(rss);
        println!(
            "| `flint run` process, wall | {:.2} (p90 {:.2}) |",
            median(walls.clone()),
            p90(walls)
        );
        println!("\nPeak RSS of the `flint run` process: {:.1} MiB, of which guest memory {:.1} MiB; host overhead {:.1} MiB.",
            rss_kib / 1024.0, guest_kib as f64 / 1024.0, (rss_kib - guest_kib as f64) / 1024.0);
    }
    match peer {
        Some(p) => {
            println!("\n| same module, in-process | Flint | wasmtime (no VM) |");
            println!("| --- | --- | --- |");
            println!(
                "| compile | {:.2} | {:.2} |",
                phase(|p| p.compile),
                p.compile_ms
            );
            println!(
                "| instantiate | {:.2} | {:.2} |",
                phase(|p| p.instantiate),
                p.instantiate_ms
            );
            println!("| run | {:.2} | {:.2} |", phase(|p| p.run), p.run_ms);
            println!(
                "| total | {:.2} | {:.2} |",
                median(totals.clone()),
                p.total_ms
            );
            println!(
                "\nFlint / wasmtime total: {:.2}x",
                median(totals) / p.total_ms
            );
        }
        None => println!("\nwasmtime peer skipped: `pip install wasmtime` (bench/run.sh does)."),
    }
    Ok(())
}

/// Just enough JSON reading for the peer's one flat object of numbers.
mod serde_json_lite {
    #[derive(Debug)]
    pub struct Peer {
        pub compile_ms: f64,
        pub instantiate_ms: f64,
        pub run_ms: f64,
        pub total_ms: f64,
    }

    fn field(s: &str, name: &str) -> Option<f64> {
        let at = s.find(&format!("\"{name}\":"))? + name.len() + 3;
        let rest = s[at..].trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].trim().parse().ok()
    }

    pub fn parse(s: &str) -> Option<Peer> {
        Some(Peer {
            compile_ms: field(s, "compile_ms")?,
            instantiate_ms: field(s, "instantiate_ms")?,
            run_ms: field(s, "run_ms")?,
            total_ms: field(s, "total_ms")?,
        })
    }
}
