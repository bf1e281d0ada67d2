//! `seccomp::confine_process`: one filter on every thread of a process,
//! those that exist when it is installed and those made later. Run in a
//! child process of its own (this test binary again, with one test
//! selected), since the filter cannot be taken off again.

use std::process::Command;

use flint_executor::seccomp::{confine_process, refused_calls, thread_mode, VCPU_BASE};

const CHILD: &str = "FLINT_CONFINE_PROCESS_CHILD";

/// What the child reports on stdout, one `key value` per line.
fn child() {
    let mut calls: Vec<i64> = VCPU_BASE.to_vec();
    calls.extend([
        libc::SYS_openat,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prctl,
        libc::SYS_sched_getaffinity,
        libc::SYS_rt_sigaction,
        // Listed, but only for Unix sockets.
        libc::SYS_socket,
        // Listed, but the process filter refuses them whatever the list.
        libc::SYS_fork,
        libc::SYS_vfork,
    ]);
    // A thread that exists before the filter is installed.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let before = std::thread::spawn(move || {
        go_rx.recv().unwrap();
        probe()
    });
    confine_process(&calls).expect("installing the process filter");
    go_tx.send(()).unwrap();
    let (mode, socket) = before.join().unwrap();
    println!("before-mode {mode}");
    println!("before-socket {socket}");
    // One made after it, and this thread itself.
    let (mode, socket) = std::thread::spawn(probe).join().unwrap();
    println!("after-mode {mode}");
    println!("after-socket {socket}");
    let (mode, _) = probe();
    println!("main-mode {mode}");
    // SAFETY: fork in a test child; a child would exit at once.
    let f = unsafe { libc::fork() };
    if f == 0 {
        // SAFETY: _exit in the (unexpected) child.
        unsafe { libc::_exit(0) };
    }
    println!("fork {}", errno_of(f as i64));
    // SAFETY: a process-creating clone with no new stack: refused.
    let c = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as u64,
            0u64,
            0u64,
            0u64,
            0u64,
        )
    };
    if c == 0 {
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    println!("clone-process {}", errno_of(c));
    // SAFETY: tgkill of pid 1's thread 1 with signal 0: refused.
    let k = unsafe { libc::syscall(libc::SYS_tgkill, 1u64, 1u64, 0u64) };
    println!("tgkill-other {}", errno_of(k));
    // SAFETY: execve with a valid path and empty argv/envp: refused.
    let e = unsafe {
        let argv: [*const libc::c_char; 1] = [std::ptr::null()];
        libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), argv.as_ptr())
    };
    println!("execve {}", errno_of(e as i64));
    // SAFETY: socket with constant arguments (the child exits soon after).
    let u = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
    println!("unix-socket {}", if u >= 0 { "ok" } else { "refused" });
    println!("refused {}", refused_calls());
}

/// This thread's seccomp mode and what an IPv4 `socket` (the list allows
/// Unix sockets only) gives.
fn probe() -> (u32, String) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let mode = thread_mode(tid).unwrap_or(99);
    // SAFETY: socket with constant arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    (mode, errno_of(s as i64))
}

fn errno_of(rc: i64) -> String {
    if rc >= 0 {
        return format!("ok({rc})");
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ENOSYS) => "ENOSYS".into(),
        Some(e) => format!("errno {e}"),
        None => "?".into(),
    }
}

#[test]
fn every_thread_of_a_confined_process_is_filtered() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "every_thread_of_a_confined_process_is_filtered",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    let get = |k: &str| {
        stdout
            .lines()
            // The harness prints "test NAME ... " before the first line.
            .find_map(|l| l.split_once(&format!("{k} ")).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("no {k} in\n{stdout}\n{stderr}"))
            .to_string()
    };
    for k in ["before-mode", "after-mode", "main-mode"] {
        assert_eq!(get(k), "2", "{k}: Seccomp: 2 in /proc");
    }
    assert_eq!(
        get("before-socket"),
        "EPERM",
        "a thread older than the filter"
    );
    assert_eq!(get("after-socket"), "EPERM", "a thread made after it");
    assert_eq!(get("fork"), "EPERM", "fork is never allowed");
    assert_eq!(get("clone-process"), "EPERM", "clone without CLONE_THREAD");
    assert_eq!(get("tgkill-other"), "EPERM", "signals to other processes");
    assert_eq!(get("execve"), "EPERM");
    assert_eq!(
        get("unix-socket"),
        "ok",
        "a listed socket call, for Unix sockets"
    );
    assert_eq!(get("refused"), "7", "each refusal counted");
    assert!(
        stderr.contains(&format!(
            "flint: seccomp refused system call {} on thread",
            libc::SYS_socket
        )),
        "each refusal logged:\n{stderr}"
    );
}
