//! Booting VMs back to back leaves nothing behind: no threads, no file
//! descriptors, no memory. (A test binary of its own: it counts the whole
//! process's threads and fds, so nothing else may run beside it.)

use flint_executor::{run, BufferIo, Invocation, VmConfig};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn twenty_vms_back_to_back_leave_nothing_behind() {
    let module = flint_examples::bytes("alloc");
    let inv = Invocation {
        args: vec!["alloc".into(), "8".into()],
        env: vec![],
    };
    let config = VmConfig {
        memory_mib: 64,
        ..VmConfig::default()
    };
    let once = || {
        let mut io = BufferIo::default();
        let r = run(&config, &module, &inv, &mut io).unwrap();
        assert_eq!(r.exit_code, 0);
        assert!(String::from_utf8_lossy(&io.stdout).starts_with("allocated 8 MiB"));
    };
    once(); // one-time set-up (the guest image's memfd, the signal handler)
    let (fds0, threads0, rss0) = (fds(), status("Threads:"), status("VmRSS:"));
    for _ in 0..20 {
        once();
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
    // Each VM touched at least 8 MiB of guest memory; 20 of them kept would be 160 MiB.
    assert!(
        rss < rss0 + 16 * 1024,
        "RSS grew from {rss0} kB to {rss} kB"
    );
}
