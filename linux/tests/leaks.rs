//! Runs leave nothing behind in the host process: no fd, no thread. In
//! a test binary of its own, so no other test opens fds meanwhile.

mod common;

use std::time::Duration;

use common::*;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn nothing_is_left_behind() {
    let root = busybox_root();
    // Warm up (one-time process state: the signal handler, CPUID cache).
    run(root.path(), "/bin/sh", &["sh", "-c", "echo hi | cat"]);
    let fds = count("/proc/self/fd");
    for _ in 0..10 {
        let r = run(
            root.path(),
            "/bin/sh",
            &["sh", "-c", "sleep 10 & echo hi | cat; (sleep 10) &"],
        );
        assert_eq!(r.stdout, "hi\n");
    }
    // Joined threads can take a moment to leave /proc.
    let mut threads = count("/proc/self/task");
    for _ in 0..50 {
        if threads <= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        threads = count("/proc/self/task");
    }
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert!(threads <= 4, "{threads} threads left");
}
