//! 50 restores of one snapshot, 8 at a time, with both backends, leave no
//! threads, fds or memory behind. (Its own test binary: it counts the whole
//! process's threads and fds.)

use flint_executor::{BufferIo, Invocation, VmConfig};
use flint_snapshotter::{create, Backend, InvokeOptions, Snapshot};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn fifty_restores_leave_nothing_behind() {
    let dir = std::env::temp_dir().join(format!("flint-snap-leaks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    create(
        &flint_examples::bytes("alloc"),
        "alloc.wasm",
        &dir,
        &VmConfig::default(),
        &mut BufferIo::default(),
    )
    .unwrap();
    let snap = Snapshot::open(&dir).unwrap();
    let inv = Invocation {
        args: vec!["alloc".into(), "8".into()],
        env: vec![],
    };
    let one = |i: usize| {
        let backend = if i.is_multiple_of(2) {
            Backend::Uffd
        } else {
            Backend::File
        };
        let opts = InvokeOptions {
            backend,
            ..InvokeOptions::default()
        };
        let mut io = BufferIo::default();
        let r = snap.invoke(&inv, &mut io, &opts).unwrap();
        assert_eq!(r.run.exit_code, 0);
        assert!(String::from_utf8_lossy(&io.stdout).starts_with("allocated 8 MiB"));
    };
    one(0);
    one(1);
    let (fds0, threads0, rss0) = (fds(), status("Threads:"), status("VmRSS:"));
    let mut done = 0;
    while done < 50 {
        let n = (50 - done).min(8);
        std::thread::scope(|s| {
            for i in 0..n {
                s.spawn(move || one(done + i));
            }
        });
        done += n;
    }
    assert_eq!(fds(), fds0, "file descriptors leaked");
    // A joined thread can still be counted for a moment: the kernel wakes
    // its joiner before it removes the thread from the process.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while status("Threads:") != threads0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(status("Threads:"), threads0, "threads leaked");
    let rss = status("VmRSS:");
    assert!(
        rss < rss0 + 32 * 1024,
        "RSS grew from {rss0} kB to {rss} kB"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
