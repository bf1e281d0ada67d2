//! `flint-bench reset N`: one invocation in a VM restored fresh from a
//! snapshot, against the same invocation in one VM kept and reset in place
//! after each run (`ReadyVm::invoke_in_place` + `Snapshot::reset`), for the
//! hello and counter examples. Medians of N runs, in ms.

use std::time::Instant;

use anyhow::Result;
use flint_executor::{BufferIo, Invocation, VmConfig};
use flint_snapshotter::{create, Snapshot};

use crate::{median, ms, p90};

pub fn main(iterations: usize) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("flint-bench-reset-{}", std::process::id()));
    println!("## Reset in place vs. a fresh restore, {iterations} runs each (ms)\n");
    println!("| example | fresh restore + run: median (p90) | run + reset in place: median (p90) | of which reset | pages copied back per reset | fresh / reset |");
    println!("|---|---|---|---|---|---|");
    for name in ["hello", "counter"] {
        let module = flint_examples::bytes(name);
        let inv = Invocation {
            args: vec![format!("{name}.wasm"), "world".into()],
            env: vec![],
        };
        let dir = tmp.join(name);
        create(
            &module,
            name,
            &dir,
            &VmConfig::default(),
            &mut BufferIo::default(),
        )?;
        let snap = Snapshot::open_sealed(&dir)?;
        let timeout = Some(std::time::Duration::from_secs(30));
        let mut fresh = Vec::new();
        for _ in 0..iterations {
            let t = Instant::now();
            snap.restore()?
                .invoke(&inv, &mut BufferIo::default(), timeout)?;
            fresh.push(ms(t.elapsed()));
        }
        let mut vm = snap.restore()?;
        let (mut kept, mut resets, mut pages) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let t = Instant::now();
            vm.invoke_in_place(&inv, &mut BufferIo::default(), timeout, None)?;
            let r = Instant::now();
            pages.push(snap.reset(&mut vm)? as f64);
            resets.push(ms(r.elapsed()));
            kept.push(ms(t.elapsed()));
        }
        let (f, k) = (median(fresh.clone()), median(kept.clone()));
        println!(
            "| {name} | {f:.2} ({:.2}) | {k:.2} ({:.2}) | {:.3} | {:.0} | {:.1}x |",
            p90(fresh),
            p90(kept),
            median(resets),
            median(pages),
            f / k
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
