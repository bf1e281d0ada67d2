//! Restore from a snapshot against a cold boot, in one run: per function
//! (hello, and bigheap with its 32 MiB table built in `_initialize`), per
//! memory backend, with and without prefetch; restore split into phases;
//! pages faulted; memory per instance with 100 restored instances alive.

use std::time::Instant;

use anyhow::Result;
use flint_executor::{run, BufferIo, Invocation, VmConfig};
use flint_snapshotter::{create, Backend, InvokeOptions, InvokeReport, Snapshot};

use crate::{median, ms, p90};

struct Row {
    label: String,
    reports: Vec<(InvokeReport, f64)>,
}

fn med(rows: &[(InvokeReport, f64)], f: impl Fn(&InvokeReport, f64) -> f64) -> f64 {
    median(rows.iter().map(|(r, w)| f(r, *w)).collect())
}

fn pss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn main(iterations: usize) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("flint-bench-{}", std::process::id()));
    println!("## Snapshots: restore vs. cold boot, {iterations} runs each (medians, ms)\n");
    for name in ["hello", "bigheap"] {
        let module = flint_examples::bytes(name);
        let inv = Invocation {
            args: vec![format!("{name}.wasm"), "world".into()],
            env: vec![],
        };
        let config = VmConfig::default();
        let mut cold = Vec::new();
        for _ in 0..iterations.min(if name == "bigheap" { 10 } else { iterations }) {
            let t = Instant::now();
            run(&config, &module, &inv, &mut BufferIo::default())?;
            cold.push(ms(t.elapsed()));
        }
        let dir = tmp.join(name);
        create(&module, name, &dir, &config, &mut BufferIo::default())?;
        let mut rows = Vec::new();
        for (label, backend, prefetch) in [
            ("file (MAP_PRIVATE)", Backend::File, false),
            ("uffd, no prefetch", Backend::Uffd, false),
            ("uffd + prefetch", Backend::Uffd, true),
        ] {
            let opts = InvokeOptions {
                backend,
                prefetch,
                ..InvokeOptions::default()
            };
            // One run first: records the working set (uffd), warms the page cache.
            Snapshot::open(&dir)?.invoke(&inv, &mut BufferIo::default(), &opts)?;
            let mut reports = Vec::new();
            for _ in 0..iterations {
                let t = Instant::now();
                let snap = Snapshot::open(&dir)?;
                let mut r = snap.invoke(&inv, &mut BufferIo::default(), &opts)?;
                // Count opening and checking the files as loading them.
                r.load = t.elapsed().saturating_sub(
                    r.memory_setup + r.restore + r.run.phases.run + r.run.phases.teardown,
                );
                reports.push((r, ms(t.elapsed())));
            }
            rows.push(Row {
                label: label.into(),
                reports,
            });
        }
        let cold_ms = median(cold.clone());
        println!(
            "### {name} (cold boot `flint run`: {cold_ms:.2} ms, p90 {:.2})\n",
            p90(cold)
        );
        println!(
            "| phase | {} |",
            rows.iter()
                .map(|r| r.label.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---|".repeat(rows.len()));
        let line = |what: &str, f: &dyn Fn(&InvokeReport, f64) -> f64| {
            let cells: Vec<String> = rows
                .iter()
                .map(|r| format!("{:.2}", med(&r.reports, f)))
                .collect();
            println!("| {what} | {} |", cells.join(" | "));
        };
        line(
            "open + check snapshot files (and other overhead)",
            &|r, _| ms(r.load),
        );
        line("memory map / register (+ prefetch)", &|r, _| {
            ms(r.memory_setup)
        });
        line("VM create", &|r, _| ms(r.run.phases.vm_create));
        line("state load (vCPU, devices, clock, seed)", &|r, _| {
            ms(r.run.phases.guest_load)
        });
        line("resume to first guest exit", &|r, _| {
            ms(r.run.phases.first_exit)
        });
        line("run to exit (incl. page faults)", &|r, _| {
            ms(r.run.phases.run)
        });
        line("  of which serving page faults", &|r, _| ms(r.fault_time));
        line("teardown", &|r, _| ms(r.run.phases.teardown));
        line("**total, restore + run**", &|_, w| w);
        line("restore to first guest instruction", &|r, _| {
            ms(r.memory_setup
                + r.run.phases.vm_create
                + r.run.phases.guest_load
                + r.run.phases.first_exit)
        });
        line("pages prefetched", &|r, _| r.prefetched_pages as f64);
        line("pages faulted one by one", &|r, _| r.faulted_pages as f64);
        let speedups: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1}x", cold_ms / med(&r.reports, |_, w| w)))
            .collect();
        println!("| speed-up over cold boot | {} |\n", speedups.join(" | "));
    }

    // Memory per instance: 100 restored VMs alive at once (file backend,
    // so unmodified pages are shared through the page cache).
    let dir = tmp.join("hello");
    let snap = Snapshot::open(&dir)?;
    let before = pss_kib();
    let mut alive = Vec::new();
    for _ in 0..100 {
        alive.push(snap.restore()?);
    }
    let after = pss_kib();
    println!(
        "100 restored hello instances alive (file backend, not yet invoked): {:.0} KiB PSS each ({:.1} MiB in all).",
        (after.saturating_sub(before)) as f64 / 100.0,
        (after.saturating_sub(before)) as f64 / 1024.0
    );
    drop(alive);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
