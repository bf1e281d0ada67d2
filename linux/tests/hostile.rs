//! Programs that misbehave: faults become Linux signals, wild pointers
//! become errors, fork bombs and memory hogs hit limits, and the host is
//! never harmed; paths never leave the root.

mod common;

use std::time::Duration;

use common::*;
use flint_linux::{Config, ExitStatus, LinuxError};

fn fault(mode: &str, config: &Config) -> Ran {
    let (root, path) = program_root(&flint_examples::linux_path("rsfault"));
    run_with(
        config,
        root.path(),
        &path,
        &["rsfault", mode],
        &[],
        b"",
        "/",
    )
}

#[test]
fn faults_become_signals() {
    for mode in ["segv", "jump", "priv"] {
        let r = fault(mode, &config());
        assert_eq!(
            r.status(),
            ExitStatus::Signaled {
                signal: 11,
                core: true
            },
            "{mode}"
        );
    }
}

#[test]
fn wild_pointers_in_every_system_call_are_refused() {
    let r = fault("wild", &config());
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let n: u32 = r
        .stdout
        .trim()
        .strip_prefix("survived, ")
        .unwrap()
        .strip_suffix(" EFAULT")
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 100, "wild pointers should give EFAULT: {}", r.stdout);
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit() {
    let config = Config {
        max_processes: 40,
        ..config()
    };
    let r = fault("forks", &config);
    assert_eq!(r.stdout, "forked 39, then EAGAIN\n");
    let root = busybox_root();
    let cfg = Config {
        max_processes: 30,
        timeout: Some(Duration::from_secs(3)),
        ..config.clone()
    };
    let r = run_with(
        &cfg,
        root.path(),
        "/bin/sh",
        &["sh", "-c", "f() { f | f & }; f"],
        &[],
        b"",
        "/",
    );
    // The bomb never ends by itself: it is stopped by the timeout, cleanly.
    assert!(
        matches!(r.result, Err(LinuxError::Timeout) | Ok(_)),
        "{:?}",
        r.result
    );
}

#[test]
fn memory_exhaustion_kills_with_137() {
    let config = Config {
        memory_mib: 64,
        ..config()
    };
    let r = fault("oom", &config);
    let out = r.result.as_ref().unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Signaled {
            signal: 9,
            core: false
        }
    );
    assert_eq!(out.status.code(), 137);
    assert!(out.oom);
}

/// A reservation of terabytes (what Go's and the JVM's heaps do) costs
/// what is mapped in it, not its size: mapping, protecting and unmapping
/// 32 TiB twenty times ends well inside the timeout, as natively.
#[test]
fn huge_reservations_cost_what_is_touched() {
    let native = native_run(&flint_examples::linux_path("rsfault"), &["reserve"]);
    assert_eq!(native, "reserved 20 times\n");
    let r = fault("reserve", &config());
    assert_eq!(r.stdout, native, "{:?} {}", r.result, r.stderr);
    assert_eq!(r.code(), 0);
}

/// A process that exits while a zombie it vforked still names its address
/// space gives that memory back: thirty children of 8 MiB each fit in a
/// 64 MiB VM one after another (before, each one's memory leaked).
#[test]
fn memory_of_exited_processes_comes_back() {
    let native = native_run(&flint_examples::linux_path("rsfault"), &["orphans"]);
    let config = Config {
        memory_mib: 64,
        ..config()
    };
    let r = fault("orphans", &config);
    assert_eq!(r.stdout, native, "{:?} {}", r.result, r.stderr);
    assert_eq!(r.code(), 0);
}

/// What pipes hold is the VMM's own memory, so one VM's pipes and
/// sockets together hold at most 64 MiB (Linux's per-user soft limit):
/// four processes filling pipes (natively, as root, they hold gigabytes)
/// stop at it, and the program still ends cleanly.
/// Epoll sets in each other: a loop and chains past Linux's nesting
/// limit are refused with ELOOP, as natively (a loop was accepted, and a
/// wait on it never returned: the VM spun until its time limit), and the
/// sets that were made answer.
#[test]
fn epoll_loops_and_deep_chains_are_refused_as_natively() {
    let native = native_run(&flint_examples::linux_path("rsfault"), &["epolls"]);
    assert!(native.contains("b in a: 40"), "{native}");
    let r = fault("epolls", &config());
    assert_eq!(r.code(), 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, native);
}

#[test]
fn a_vms_pipes_hold_a_bounded_total() {
    let r = fault("pipes", &config());
    assert_eq!(r.code(), 0, "{}{}", r.stdout, r.stderr);
    let held: u64 = r
        .stdout
        .trim()
        .strip_prefix("pipes hold ")
        .and_then(|s| s.strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(held <= 64 << 20, "{held} bytes held");
    // Two children's descriptors hold almost all of it; the third takes
    // what is left.
    assert!(held > 60 << 20, "{held} bytes held");
}

#[test]
fn a_spinning_program_is_stopped_by_the_timeout() {
    let config = Config {
        timeout: Some(Duration::from_millis(500)),
        ..config()
    };
    let t0 = std::time::Instant::now();
    let r = fault("spin", &config);
    assert!(
        matches!(r.result, Err(LinuxError::Timeout)),
        "{:?}",
        r.result
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn paths_never_leave_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "host secret\n").unwrap();
    let root = busybox_root();
    let o = outside.path().display().to_string();
    std::os::unix::fs::symlink(&o, root.path().join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../", root.path().join("tmp/up")).unwrap();
    let script = format!(
        "cat {o}/secret; cat /abs/secret; cat /tmp/up{o}/secret; cat ../../../..{o}/secret; cd /tmp/up/../..; cat .{o}/secret; ln -s {o}/secret /tmp/l; cat /tmp/l; echo written > /abs/new; echo end"
    );
    let r = run_with(
        &config(),
        root.path(),
        "/bin/sh",
        &["sh", "-c", &script],
        &[],
        b"",
        "/work",
    );
    assert!(!r.stdout.contains("host secret"), "{}", r.stdout);
    assert!(r.stdout.ends_with("end\n"), "{} {}", r.stdout, r.stderr);
    assert!(!outside.path().join("new").exists());
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_walk_stays_inside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir(outside.path().join("d")).unwrap();
    std::fs::write(outside.path().join("d/f"), "host secret\n").unwrap();
    let root = busybox_root();
    std::fs::create_dir(root.path().join("work/d")).unwrap();
    std::fs::write(root.path().join("work/d/f"), "guest\n").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r2, s2, o) = (
        root.path().to_path_buf(),
        stop.clone(),
        outside.path().to_path_buf(),
    );
    // The host swaps /work/d for a symlink to the outside and back.
    let racer = std::thread::spawn(move || {
        let d = r2.join("work/d");
        let aside = r2.join("work/d.real");
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::rename(&d, &aside);
            let _ = std::os::unix::fs::symlink(o.join("d"), &d);
            let _ = std::fs::remove_file(&d);
            let _ = std::fs::rename(&aside, &d);
        }
    });
    let r = run_with(
        &config(),
        root.path(),
        "/bin/sh",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do cat d/f 2>/dev/null; i=$((i+1)); done; echo end",
        ],
        &[],
        b"",
        "/work",
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    racer.join().unwrap();
    assert!(!r.stdout.contains("host secret"), "escaped the root");
    assert!(r.stdout.contains("guest"), "{}", r.stdout);
    assert!(r.stdout.ends_with("end\n"));
}

/// The vCPU thread, which handles everything the guest asks, runs under
/// its seccomp filter (mode 2 in /proc).
#[test]
fn the_vcpu_thread_is_filtered() {
    let root = busybox_root();
    let program = flint_linux::Program {
        path: "/bin/sh".into(),
        argv: vec!["sh".into(), "-c".into(), "sleep 1".into()],
        env: vec![],
        workdir: "/".into(),
    };
    let c = flint_linux::start(&config(), root.path(), &program, None).unwrap();
    let mut mode = None;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        for t in std::fs::read_dir("/proc/self/task").unwrap() {
            let t = t.unwrap().path();
            let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
            if comm.trim() == "flint-linux-vcp" {
                let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
                mode = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Seccomp:"))
                    .map(|v| v.trim().to_string());
            }
        }
        if mode.as_deref() == Some("2") {
            break;
        }
    }
    assert_eq!(mode.as_deref(), Some("2"));
    assert_eq!(c.wait().unwrap().status.code(), 0);
}

/// Malformed programs: truncated, corrupted headers, wild segments, a
/// bad interpreter; each is a clear error (ENOEXEC and friends), never a
/// crash, and the next program runs.
#[test]
fn malformed_programs_are_refused() {
    let good = std::fs::read(flint_examples::linux_path("rshello")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("magic-only", b"\x7fELF".to_vec()),
        ("truncated-header", good[..40].to_vec()),
        ("truncated-body", good[..good.len() / 3].to_vec()),
        (
            "random",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
    ];
    let mut wrong_machine = good.clone();
    wrong_machine[18] = 0x28; // EM_ARM
    cases.push(("wrong-machine", wrong_machine));
    let mut class32 = good.clone();
    class32[4] = 1;
    cases.push(("32-bit", class32));
    let mut phnum = good.clone();
    phnum[56] = 0xff;
    phnum[57] = 0xff;
    cases.push(("huge-phnum", phnum));
    let mut phoff = good.clone();
    phoff[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("wild-phoff", phoff));
    // Every PT_LOAD's vaddr and size made wild.
    let mut wild = good.clone();
    let off = u64::from_le_bytes(wild[32..40].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes(wild[56..58].try_into().unwrap()) as usize;
    for i in 0..n {
        let ph = off + i * 56;
        if u32::from_le_bytes(wild[ph..ph + 4].try_into().unwrap()) == 1 {
            wild[ph + 16..ph + 24].copy_from_slice(&0xffff_ffff_ffff_0000u64.to_le_bytes());
            wild[ph + 40..ph + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        }
    }
    cases.push(("wild-segments", wild));
    // A PT_INTERP naming nothing.
    let mut interp = good.clone();
    if n > 0 {
        interp[off..off + 4].copy_from_slice(&3u32.to_le_bytes());
    }
    cases.push(("bad-interp", interp));
    for (name, bytes) in &cases {
        let p = root.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let r = run(root.path(), &format!("/{name}"), &[name]);
        match &r.result {
            Err(LinuxError::Exec { source, .. }) => {
                let e = source.raw_os_error().unwrap_or(0);
                assert!(
                    [
                        libc::ENOEXEC,
                        libc::EIO,
                        libc::ENOENT,
                        libc::ENOMEM,
                        libc::EACCES
                    ]
                    .contains(&e),
                    "{name}: {source}"
                );
            }
            // A corruption past the headers can still load, then fault.
            Ok(o) => assert_ne!(o.status.code(), 0, "{name} ran"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
    std::fs::write(root.path().join("ok"), &good).unwrap();
    std::fs::set_permissions(
        root.path().join("ok"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(run(root.path(), "/ok", &["ok", "x"]).stdout, "hello, x\n");
}
