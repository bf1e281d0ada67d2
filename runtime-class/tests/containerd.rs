//! The shim with a real containerd: import an image built by flint-image,
//! run it with `ctr`, and check output, exit codes, events, exec, stats,
//! kill, delete, faults (containerd restarting, the shim killed), and that
//! nothing is left behind.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn ctr_runs_wasm_images_in_flint_vms() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sockets = shim_sockets();
    let ctd = Containerd::start("run");
    ctd.import(
        &[("hello.wasm", &flint_examples::bytes("hello"))],
        "docker.io/library/hello:v1",
    );
    ctd.import(
        &[("fib.wasm", &flint_examples::bytes("fib"))],
        "docker.io/library/fib:v1",
    );
    tools_image(&ctd);
    ctd.import(
        &[("sh", b"#!/bin/sh\necho hi\n")],
        "docker.io/library/notwasm:v1",
    );

    // Events, in order, while a task runs.
    let events = ctd.events();
    let o = ctd.run_rm(
        "docker.io/library/hello:v1",
        "t1",
        &["/hello.wasm", "world"],
    );
    assert_eq!(
        text(&o.stdout),
        "hello, world\n",
        "stderr: {}",
        text(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&ctd.ctr(&["task", "ls", "-q"]).stdout).trim(),
        "",
        "no task left"
    );
    let ev = events();
    assert!(
        in_order(
            &ev,
            &[
                "/tasks/create",
                "/tasks/start",
                "/tasks/exit",
                "/tasks/delete"
            ]
        ),
        "events:\n{ev}"
    );

    // Without a command, the image's entrypoint (the module) runs.
    let o = ctd.run_rm("docker.io/library/hello:v1", "t0", &[]);
    assert_eq!(text(&o.stdout), "hello, world\n", "{}", text(&o.stderr));

    // The function's exit status is the task's.
    let o = ctd.run_rm("docker.io/library/fib:v1", "t2", &["/fib.wasm", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("N must be an integer"),
        "{}",
        text(&o.stderr)
    );

    // A task that never exits; execs run other modules of its image in
    // the pod, with their own output, exit status and events.
    let events = ctd.events();
    ctd.run_detached("docker.io/library/tools:v1", "t3", &["/spin.wasm"]);
    let o = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t3",
        "/hello.wasm",
        "exec",
    ]);
    assert_eq!(text(&o.stdout), "hello, exec\n", "{}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(0));
    // Execs of one module in a pod reuse a VM, reset in place between
    // them: each sees the snapshot's memory, never the last one's writes
    // (the counter counts from the snapshot's zero every time).
    for i in 0..3 {
        let id = format!("c{i}");
        let o = ctd.ctr(&["task", "exec", "--exec-id", &id, "t3", "/counter.wasm"]);
        assert_eq!(text(&o.stdout), "count 1\n", "{}", text(&o.stderr));
    }
    let log = std::fs::read_to_string(ctd.dir.join("containerd.log")).unwrap();
    assert_eq!(
        log.matches("c2: VM Reused").count() + log.matches("c1: VM Reused").count(),
        2,
        "the second and third exec reuse the first's VM: {log}"
    );
    let o = ctd.ctr(&["task", "exec", "--exec-id", "e2", "t3", "/fib.wasm", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = ctd.ctr(&["task", "exec", "--exec-id", "e3", "t3", "/nothing.wasm"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not in the image"),
        "{}",
        text(&o.stderr)
    );
    // A real module outside the rootfs, named through `..`: it would run
    // if the path left the rootfs; resolved inside it, it is not there.
    let outside = std::env::temp_dir().join(format!("flint-escape-{}.wasm", std::process::id()));
    std::fs::write(&outside, flint_examples::bytes("hello")).unwrap();
    let escape = format!("../../../../../../../../..{}", outside.display());
    let o = ctd.ctr(&["task", "exec", "--exec-id", "e4", "t3", &escape, "escaped"]);
    let _ = std::fs::remove_file(&outside);
    assert!(!o.status.success(), "an exec cannot leave the rootfs");
    assert!(
        !text(&o.stdout).contains("escaped") && text(&o.stderr).contains("not in the image"),
        "{} {}",
        text(&o.stdout),
        text(&o.stderr)
    );

    // Stats: the VM's memory and CPU, as containerd reads runc's, once
    // its VM runs (the first container of a module also snapshots it).
    let deadline = Instant::now() + Duration::from_secs(30);
    let m: serde_json::Value = loop {
        let o = ctd.ctr(&["task", "metrics", "--format", "json", "t3"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let m: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
        if m["memory"]["usage"]["limit"].as_u64().is_some() || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let usage = m["memory"]["usage"]["usage"].as_u64().unwrap_or(0);
    let limit = m["memory"]["usage"]["limit"].as_u64().unwrap_or(0);
    assert!(usage > 0 && usage <= limit, "{m}");
    assert_eq!(limit, 128 << 20, "{m}");
    let cpu1 = m["cpu"]["usage"]["total"].as_u64().unwrap_or(0);
    assert!(cpu1 > 0, "{m}");
    std::thread::sleep(Duration::from_millis(500));
    let m: serde_json::Value = serde_json::from_slice(
        &ctd.ctr(&["task", "metrics", "--format", "json", "t3"])
            .stdout,
    )
    .unwrap();
    let cpu2 = m["cpu"]["usage"]["total"].as_u64().unwrap_or(0);
    // The vCPU spins: it uses far more than the 10 ms of CPU (2%) counted
    // here, which a wrong thread (the waiting one) would never reach.
    assert!(
        cpu2 > cpu1 + 10_000_000,
        "a spinning VM uses CPU: {cpu1} then {cpu2} ns"
    );

    ctd.kill_and_remove("t3", "SIGTERM");
    let ev = events();
    assert!(
        in_order(
            &ev,
            &[
                "/tasks/create",
                "/tasks/start",
                "/tasks/exec-added",
                "/tasks/exec-started",
                "/tasks/exit",
                "/tasks/exit",
                "/tasks/delete"
            ]
        ),
        "events:\n{ev}"
    );
    assert!(ev.contains("\"e1\""), "the exec's exit names it:\n{ev}");
    assert!(
        ev.contains("\"exit_status\":143"),
        "SIGTERM ends the task with 128 + 15:\n{ev}"
    );

    // Stdin comes from containerd's FIFO (ctr attaches its own), env from
    // the spec.
    let mut child = std::process::Command::new("ctr")
        .arg("-a")
        .arg(&ctd.sock)
        .args([
            "run",
            "--rm",
            "--env",
            "GREETING=hi",
            "--runtime",
            FLINT,
            "docker.io/library/tools:v1",
            "t8",
            "/echo.wasm",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"from stdin\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(text(&o.stdout), "from stdin\n", "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("GREETING=hi"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0));

    // Output to a file:// URI (appended), or to a binary:// logger.
    let log = ctd.dir.join("logs/t6.log");
    let uri = format!("file://{}", log.display());
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(&log, "before\n").unwrap();
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        FLINT,
        "docker.io/library/fib:v1",
        "t6",
        "/fib.wasm",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.starts_with("before\n") && logged.contains("N must be an integer"),
        "{logged}"
    );
    let logger = ctd.dir.join("logger.sh");
    std::fs::write(
        &logger,
        "#!/bin/sh\n# containerd's binary logger protocol: stdout on fd 3, stderr on fd 4, ready by closing fd 5.\nexec 5>&-\ncat <&3 > \"$2/out\" &\ncat <&4 > \"$2/err\"\nwait\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$2/who\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?dir={}", logger.display(), ctd.dir.display());
    let o = ctd.ctr(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        FLINT,
        "docker.io/library/hello:v1",
        "t7",
        "/hello.wasm",
        "logger",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctd.dir.join("who").exists() {
        assert!(Instant::now() < deadline, "the logger did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(ctd.dir.join("out")).unwrap(),
        "hello, logger\n"
    );
    assert_eq!(
        std::fs::read_to_string(ctd.dir.join("who")).unwrap().trim(),
        "default/t7"
    );

    // `ctr run -t` (under a pseudo-terminal, as a user types it) fails with
    // a message that says why.
    let cmd = format!(
        "ctr -a {} run -t --rm --runtime {FLINT} docker.io/library/hello:v1 t5 /hello.wasm",
        ctd.sock.display()
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stdout).contains("no terminal"),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let _ = ctd.ctr(&["container", "rm", "t5"]);

    // A broken module is refused at create, with the parser's reason.
    ctd.import(
        &[("broken.wasm", b"\0asm\x01\0\0\0\x0a\x05garbage")],
        "docker.io/library/broken:v1",
    );
    let o = ctd.run_rm("docker.io/library/broken:v1", "t9", &[]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("not a valid WebAssembly module"),
        "{}",
        text(&o.stderr)
    );
    let _ = ctd.ctr(&["container", "rm", "t9"]);

    // A Linux image whose script names an interpreter it does not hold:
    // exit 127 with the reason, as under runc.
    let o = ctd.run_rm("docker.io/library/notwasm:v1", "t4", &["/sh"]);
    assert_eq!(o.status.code(), Some(127), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("No such file or directory"),
        "{}",
        text(&o.stderr)
    );
    let _ = ctd.ctr(&["container", "rm", "t4"]);

    ctd.assert_nothing_left(&sockets);
}

/// A task's `/proc/PID/status` (a thread's or a process's): its name,
/// CapEff, CapPrm, whether it is under a seccomp filter, its parent;
/// checking that it holds none of the capabilities no shim needs:
/// NET_ADMIN (12), NET_RAW (13), SYS_MODULE (16), SYS_RAWIO (17),
/// SYS_PTRACE (19), SYS_BOOT (22), MKNOD (27), SETUID (7), SETPCAP (8),
/// not even in the bounding set.
fn status_of(task: &std::path::Path) -> Option<Task> {
    let status = std::fs::read_to_string(task.join("status")).ok()?;
    let get = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mask = |k: &str| u64::from_str_radix(&get(k), 16).unwrap();
    let name = get("Name:");
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        for cap in [12, 13, 16, 17, 19, 22, 27, 7, 8] {
            assert_eq!(
                mask(field) >> cap & 1,
                0,
                "{name}: {field} has capability {cap}"
            );
        }
    }
    Some(Task {
        effective: mask("CapEff:"),
        permitted: mask("CapPrm:"),
        filtered: get("Seccomp:") == "2",
        parent: get("PPid:"),
        name,
    })
}

struct Task {
    name: String,
    effective: u64,
    permitted: u64,
    filtered: bool,
    parent: String,
}

/// The shim's helper processes, by pid.
fn helpers_of(shim: &str) -> Vec<(u32, Task)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|p| {
            let p = p.ok()?;
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(p.path().join("comm")).ok()?;
            if comm.trim() != "flint-helper" {
                return None;
            }
            let task = status_of(&p.path())?;
            (task.parent == shim).then_some((pid, task))
        })
        .collect()
}

#[test]
fn tasks_survive_containerd_restarts_and_killed_shims_are_cleaned_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sockets = shim_sockets();
    let mut ctd = Containerd::start("faults");
    tools_image(&ctd);

    // containerd dies and comes back: the shim kept the task running and
    // containerd reconnects to it by the bundle's address file.
    ctd.run_detached("docker.io/library/tools:v1", "r1", &["/spin.wasm"]);
    let before = ctd.task_status("r1").unwrap();
    // The shim holding the task kept only the capabilities it needs: not
    // NET_ADMIN (12), NET_RAW (13), SYS_MODULE (16), SYS_RAWIO (17),
    // SYS_PTRACE (19), SYS_BOOT (22), MKNOD (27), SETUID (7), SETPCAP (8),
    // on any thread, not even in the bounding set. No thread of the
    // shim's process holds SYS_ADMIN (21) or is outside the seccomp
    // filter: mounting and starting loggers are its helper's, a child
    // process that holds SYS_ADMIN and is not filtered.
    let mut threads = 0;
    for t in std::fs::read_dir(format!("/proc/{}/task", before.0)).unwrap() {
        let t = status_of(&t.unwrap().path()).unwrap();
        threads += 1;
        // DAC_OVERRIDE (1), DAC_READ_SEARCH (2), FOWNER (3), FSETID (4):
        // acting as root on a container's files, nothing more (not KILL,
        // SYS_RESOURCE, CHOWN, SYS_ADMIN).
        let name = &t.name;
        assert_eq!(
            (t.effective, t.permitted),
            (0x1e, 0x1e),
            "{name}: CapEff, CapPrm"
        );
        assert!(t.filtered, "{name} is not under the filter");
    }
    assert!(threads > 2, "{threads} threads");
    let helpers = helpers_of(&before.0);
    assert_eq!(helpers.len(), 1, "one helper process for the shim");
    let helper = &helpers[0].1;
    assert!(
        helper.effective >> 21 & 1 == 1 && !helper.filtered,
        "the helper: {:x}",
        helper.effective
    );
    ctd.crash_and_restart();
    assert_eq!(ctd.task_status("r1"), Some(before), "the task survives");
    let o = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x",
        "r1",
        "/hello.wasm",
        "again",
    ]);
    assert_eq!(text(&o.stdout), "hello, again\n", "{}", text(&o.stderr));
    ctd.kill_and_remove("r1", "SIGKILL");

    // The shim is killed: containerd notices, the shim's `delete` action
    // cleans up (rootfs mount, socket), and the container can be removed.
    ctd.run_detached("docker.io/library/tools:v1", "r2", &["/spin.wasm"]);
    let (pid, _) = ctd.task_status("r2").unwrap();
    let helpers = helpers_of(&pid);
    let pid: i32 = pid.parse().unwrap();
    // SAFETY: kill(2) on the shim process containerd reported.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ctd.task_status("r2").is_some_and(|s| s.1 == "RUNNING") {
        assert!(
            Instant::now() < deadline,
            "containerd did not notice the shim's death"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ctd.ctr(&["task", "rm", "-f", "r2"]);
    let o = ctd.ctr(&["container", "rm", "r2"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Its helper died with it (gone, or a zombie nobody reaped yet).
    assert_eq!(helpers.len(), 1);
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(helpers[0].0) {
        assert!(Instant::now() < deadline, "the helper outlived its shim");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A new task runs normally afterwards.
    let o = ctd.run_rm(
        "docker.io/library/tools:v1",
        "r3",
        &["/hello.wasm", "after"],
    );
    assert_eq!(text(&o.stdout), "hello, after\n", "{}", text(&o.stderr));

    ctd.assert_nothing_left(&sockets);
}

#[test]
fn the_shim_says_what_it_is() {
    let shim = env!("CARGO_BIN_EXE_containerd-shim-flint-v2");
    let o = std::process::Command::new(shim).arg("-v").output().unwrap();
    assert!(o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.contains("io.containerd.flint.v2") && out.contains(env!("CARGO_PKG_VERSION")),
        "{out}"
    );
    // Started by hand, without containerd: a clear error, not a panic.
    let o = std::process::Command::new(shim)
        .env_remove("TTRPC_ADDRESS")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("started by containerd"),
        "{}",
        text(&o.stderr)
    );
}

/// A busybox root filesystem packed as a Linux image (what `flint image
/// build --rootfs` makes), imported into containerd.
fn busybox_image(ctd: &Containerd, reference: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for d in ["bin", "tmp", "etc", "srv"] {
        std::fs::create_dir(root.path().join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox"))
        .expect("/bin/busybox: install Debian's busybox-static");
    for a in [
        "sh", "echo", "cat", "ls", "sleep", "tr", "pwd", "env", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(a)).unwrap();
    }
    std::fs::write(root.path().join("srv/data"), "from the image\n").unwrap();
    let config = serde_json::json!({
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo default cmd in $(pwd) with $GREETING"],
        "Env": ["PATH=/bin", "GREETING=hello"],
        "WorkingDir": "/srv",
    });
    ctd.import_archive(
        "bb.tar",
        flint_image::build_dir(root.path(), config, reference).unwrap(),
    );
    root
}

#[test]
fn ctr_runs_linux_images_in_flint_vms() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sockets = shim_sockets();
    let ctd = Containerd::start("linux");
    let image = "docker.io/library/bb:v1";
    let _root = busybox_image(&ctd, image);

    // The image's entrypoint, cmd, env and working directory.
    let o = ctd.run_rm(image, "l1", &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "default cmd in /srv with hello\n");

    // A command: pipes, a file from the image, a bare name found on PATH.
    let o = ctd.run_rm(image, "l2", &["sh", "-c", "echo hi | tr a-z A-Z; cat data"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "HI\nfrom the image\n");

    // Exit statuses and signals as runc reports them.
    let o = ctd.run_rm(image, "l3", &["sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    let o = ctd.run_rm(image, "l4", &["sh", "-c", "kill -SEGV $$"]);
    assert_eq!(o.status.code(), Some(139));

    // Kill: SIGKILL ends a running container (137); an exec runs beside it.
    ctd.run_detached(image, "l5", &["sleep", "100"]);
    let o = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        "l5",
        "sh",
        "-c",
        "echo from exec; cat /srv/data; ps | grep -c 'sleep 100$'; exit 4",
    ]);
    // The exec runs in the container's VM: it sees process 1.
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "from exec\nfrom the image\n1\n");
    // ctr task ps lists the container's processes as its VM numbers them.
    let o = ctd.ctr(&["task", "ps", "l5"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let pids: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids, ["1"], "{out}");
    // Stats: the Linux container's VM memory, against its RAM size.
    let o = ctd.ctr(&["task", "metrics", "--format", "json", "l5"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o.stdout)));
    let usage = m["memory"]["usage"]["usage"].as_u64().unwrap_or(0);
    let limit = m["memory"]["usage"]["limit"].as_u64().unwrap_or(0);
    assert!(usage > 0 && usage <= limit, "{m}");
    // SIGTERM reaches process 1 only if it handles it (a PID namespace's
    // init): `sleep` does not, and goes on running.
    let o = ctd.ctr(&["task", "kill", "-s", "SIGTERM", "l5"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ctd.task_status("l5").map(|s| s.1), Some("RUNNING".into()));
    let o = ctd.ctr(&["task", "kill", "-s", "SIGKILL", "l5"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    ctd.wait_status("l5", Some("STOPPED"));
    let o = ctd.ctr(&["task", "ls"]);
    assert!(text(&o.stdout).contains("l5"), "{}", text(&o.stdout));
    assert!(ctd.ctr(&["task", "rm", "l5"]).status.success());
    assert!(ctd.ctr(&["container", "rm", "l5"]).status.success());

    ctd.assert_nothing_left(&sockets);
}

/// The cache's entries (snapshot directories) under `ctd`'s directory.
fn cache_entries(ctd: &Containerd) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(ctd.dir.join("shim-snapshots"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The first container of a module boots it and snapshots it at its ready
/// point (one entry per module and memory size, root's alone); later ones
/// restore from the snapshot and behave the same. A corrupted entry (a
/// byte changed in every memory page) or a stale one (a snapshot of
/// another module under this one's name) is never run: it is made again.
#[test]
fn containers_restore_from_cached_snapshots_and_bad_entries_are_rebuilt() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ctd = Containerd::start("cache");
    tools_image(&ctd);
    let hello = |id: &str, arg: &str| {
        let o = ctd.run_rm("docker.io/library/tools:v1", id, &["/hello.wasm", arg]);
        assert_eq!(
            text(&o.stdout),
            format!("hello, {arg}\n"),
            "{}",
            text(&o.stderr)
        );
    };
    hello("c1", "one");
    let entries = cache_entries(&ctd);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = entries[0].clone();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(ctd.dir.join("shim-snapshots"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the cache is root's alone");
    let made = std::fs::metadata(entry.join("state.bin"))
        .unwrap()
        .modified()
        .unwrap();
    hello("c2", "two");
    assert_eq!(cache_entries(&ctd), entries, "the same entry serves");
    assert_eq!(
        std::fs::metadata(entry.join("state.bin"))
            .unwrap()
            .modified()
            .unwrap(),
        made,
        "restored from it, not made again"
    );
    // Another module: an entry of its own.
    let o = ctd.run_rm("docker.io/library/tools:v1", "c3", &["/fib.wasm", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(cache_entries(&ctd).len(), 2);

    // Corrupted: a byte changed in every data page of memory.bin.
    let mem = entry.join("memory.bin");
    let mut b = std::fs::read(&mem).unwrap();
    for page in b.chunks_mut(4096) {
        if let Some(i) = page.iter().position(|x| *x != 0) {
            page[i] ^= 0x5a;
        }
    }
    std::fs::write(&mem, &b).unwrap();
    assert!(flint_snapshotter::Snapshot::open(&entry)
        .unwrap()
        .verify_memory()
        .is_err());
    hello("c4", "four");
    flint_snapshotter::Snapshot::open(&entry)
        .unwrap()
        .verify_memory()
        .expect("the entry was made again");

    // Stale: a snapshot of fib where hello's should be.
    let fib = cache_entries(&ctd)
        .into_iter()
        .find(|e| *e != entry)
        .unwrap();
    for f in ["state.bin", "memory.bin"] {
        std::fs::copy(fib.join(f), entry.join(f)).unwrap();
    }
    let _ = std::fs::remove_file(entry.join("working-set.bin"));
    hello("c5", "five");
    let snap = flint_snapshotter::Snapshot::open(&entry).unwrap();
    assert!(
        snap.made_from(&flint_examples::bytes("hello")),
        "made again from hello"
    );
}
