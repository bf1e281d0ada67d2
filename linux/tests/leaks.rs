//! Runs leave nothing behind in the host process: no fd, no thread. In
//! a test binary of its own, its tests one at a time, so that no other
//! test opens fds meanwhile.

mod common;

use std::time::Duration;

use common::*;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn nothing_is_left_behind() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

/// Templates and their clones leave nothing behind either: once the
/// clones have ended and the template is dropped, the fds (its memory,
/// its stand-in streams, its root, the files it reopened) are gone.
#[test]
fn templates_and_clones_leave_nothing_behind() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = busybox_root();
    std::fs::write(root.path().join("tmp/data"), "x\n").unwrap();
    let program = |script: &str| flint_linux::Program {
        path: "/bin/sh".into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        workdir: "/".into(),
    };
    let quiet = || flint_linux::Stdio {
        stdin: file_fd(&tempfile::tempfile().unwrap()),
        stdout: file_fd(&tempfile::tempfile().unwrap()),
        stderr: file_fd(&tempfile::tempfile().unwrap()),
    };
    run(root.path(), "/bin/sh", &["sh", "-c", "echo hi | cat"]);
    let fds = count("/proc/self/fd");
    let script = "exec 3</tmp/data; sleep 0.2 | cat; exit 3";
    let vm = flint_linux::start(&config(), root.path(), &program(script), Some(quiet())).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = std::sync::Arc::new(vm.port().freeze(Duration::from_secs(5)).unwrap());
    for _ in 0..3 {
        let c = flint_linux::thaw(&config(), &t, Some(quiet())).unwrap();
        assert_eq!(c.wait().unwrap().status.code(), 3);
    }
    assert_eq!(vm.wait().unwrap().status.code(), 3);
    drop(t);
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
}
