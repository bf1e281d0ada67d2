//! `/proc` and `/dev` as Flint provides them: generated from the VMM's
//! own tables, never the host's.

use std::rc::Rc;

use crate::fs::file::{Kind, OpenFile};
use crate::kernel::Kernel;
use crate::task::Pid;

/// What a path under `/proc` or `/dev` names.
#[derive(Debug)]
pub enum Node {
    File(Vec<u8>),
    Dir(Vec<(String, u64, u8)>),
    Link(String),
    /// An open file reached through a link (`/proc/self/fd/N`, `/dev/stdin`).
    Open(Rc<OpenFile>),
    Device(Kind),
}

const DT_DIR: u8 = 4;
const DT_REG: u8 = 8;
const DT_LNK: u8 = 10;
const DT_CHR: u8 = 2;

/// True when Flint answers for `path` (normalized) itself.
pub fn is_synthetic(path: &str) -> bool {
    path == "/proc" || path.starts_with("/proc/") || path == "/dev" || path.starts_with("/dev/")
}

fn ticks(ns: u64) -> u64 {
    ns / 10_000_000
}

fn proc_dir_entries(k: &Kernel, pid: Pid) -> Vec<(String, u64, u8)> {
    let base = pid as u64 * 100;
    let mut v: Vec<(String, u64, u8)> = [
        ("stat", DT_REG),
        ("status", DT_REG),
        ("cmdline", DT_REG),
        ("comm", DT_REG),
        ("environ", DT_REG),
        ("maps", DT_REG),
        ("exe", DT_LNK),
        ("cwd", DT_LNK),
        ("fd", DT_DIR),
        ("task", DT_DIR),
    ]
    .iter()
    .enumerate()
    .map(|(i, (n, t))| (n.to_string(), base + i as u64, *t))
    .collect();
    let _ = k;
    v.insert(0, ("..".into(), 1, DT_DIR));
    v.insert(0, (".".into(), base, DT_DIR));
    v
}

fn comm(exe: &str) -> String {
    exe.rsplit('/')
        .next()
        .unwrap_or("")
        .chars()
        .take(15)
        .collect()
}

fn stat_line(k: &Kernel, pid: Pid) -> Option<String> {
    let p = k.table.procs.get(&pid)?;
    let state = if p.exit.is_some() {
        'Z'
    } else if p.threads.iter().all(|t| {
        k.table
            .threads
            .get(t)
            .is_some_and(|th| th.blocked.is_some())
    }) {
        'S'
    } else {
        'R'
    };
    let mm = p.mm.borrow();
    let vsize: u64 = mm.vmas.iter().map(|(s, v)| v.end - s).sum();
    let rss = k.frames.used();
    Some(format!(
        "{pid} ({}) {state} {} {} {} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 {} 0 {} {vsize} {rss} 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        comm(&p.exe),
        p.ppid,
        p.pgid,
        p.sid,
        p.threads.len().max(1),
        ticks(p.start_ns),
    ))
}

fn status(k: &Kernel, pid: Pid) -> Option<String> {
    let p = k.table.procs.get(&pid)?;
    let state = if p.exit.is_some() {
        "Z (zombie)"
    } else {
        "S (sleeping)"
    };
    let rss_kb = k.frames.used() * 4;
    Some(format!(
        "Name:\t{}\nUmask:\t{:04o}\nState:\t{state}\nTgid:\t{pid}\nNgid:\t0\nPid:\t{pid}\nPPid:\t{}\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t\nVmRSS:\t{rss_kb} kB\nThreads:\t{}\nSigQ:\t0/31\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nCapEff:\t0000000000000000\nSeccomp:\t0\nCpus_allowed_list:\t0\n",
        comm(&p.exe),
        p.umask,
        p.ppid,
        p.threads.len(),
    ))
}

fn maps(k: &Kernel, pid: Pid) -> Option<String> {
    let p = k.table.procs.get(&pid)?;
    let mm = p.mm.borrow();
    let mut s = String::new();
    for (start, v) in &mm.vmas {
        let r = |b: u32, c: char| if v.prot & b != 0 { c } else { '-' };
        let off = match &v.backing {
            crate::mm::Backing::File { offset, .. } => *offset,
            _ => 0,
        };
        s.push_str(&format!(
            "{start:08x}-{:08x} {}{}{}{} {off:08x} 00:00 0 {}\n",
            v.end,
            r(1, 'r'),
            r(2, 'w'),
            r(4, 'x'),
            if v.shared { 's' } else { 'p' },
            v.name
        ));
    }
    Some(s)
}

fn nul_joined(v: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in v {
        out.extend_from_slice(a);
        out.push(0);
    }
    out
}

fn meminfo(k: &Kernel) -> String {
    let total = k.frames.total() * 4;
    let free = total - k.frames.used() * 4;
    format!(
        "MemTotal:       {total} kB\nMemFree:        {free} kB\nMemAvailable:   {free} kB\nBuffers:               0 kB\nCached:                0 kB\nSwapCached:            0 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n"
    )
}

/// One entry per vCPU.
fn cpuinfo(cpus: usize) -> String {
    (0..cpus)
        .map(|i| format!("processor\t: {i}\nvendor_id\t: Flint\ncpu family\t: 6\nmodel name\t: Flint virtual CPU\nflags\t\t: fpu tsc cx8 cmov mmx fxsr sse sse2 syscall nx lm pni ssse3 sse4_1 sse4_2 popcnt avx\n\n"))
        .collect()
}

/// A directory listing of fixed entries (with `.` and `..`).
fn dir_of(entries: &[(&str, u8)]) -> Node {
    let mut v: Vec<(String, u64, u8)> = vec![(".".into(), 700, DT_DIR), ("..".into(), 701, DT_DIR)];
    for (i, (n, t)) in entries.iter().enumerate() {
        v.push((n.to_string(), 702 + i as u64, *t));
    }
    Node::Dir(v)
}

/// Looks `path` (normalized, under /proc or /dev) up for thread `t`.
pub fn lookup(k: &Kernel, t: Pid, path: &str) -> Result<Node, i32> {
    let me = k.thread(t).pid;
    if let Some(dev) = path.strip_prefix("/dev") {
        return dev_lookup(k, t, dev);
    }
    let rest = path.strip_prefix("/proc").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let fixed = |s: String| Ok(Node::File(s.into_bytes()));
    match parts.as_slice() {
        [] => {
            let mut v: Vec<(String, u64, u8)> = vec![(".".into(), 1, DT_DIR), ("..".into(), 2, DT_DIR)];
            for (&pid, p) in &k.table.procs {
                if p.exit.is_none() {
                    v.push((pid.to_string(), pid as u64 * 100, DT_DIR));
                }
            }
            for (n, ty) in [("self", DT_LNK), ("meminfo", DT_REG), ("cpuinfo", DT_REG), ("uptime", DT_REG), ("stat", DT_REG), ("loadavg", DT_REG), ("version", DT_REG), ("mounts", DT_REG), ("sys", DT_DIR)] {
                v.push((n.into(), 3 + v.len() as u64, ty));
            }
            Ok(Node::Dir(v))
        }
        ["self"] => Ok(Node::Link(me.to_string())),
        ["thread-self"] => Ok(Node::Link(format!("{me}/task/{t}"))),
        ["meminfo"] => fixed(meminfo(k)),
        ["cpuinfo"] => fixed(cpuinfo(k.cpu_count())),
        ["uptime"] => {
            let up = k.mono_ns() as f64 / 1e9;
            fixed(format!("{up:.2} {up:.2}\n"))
        }
        ["loadavg"] => fixed(format!("0.00 0.00 0.00 1/{} {}\n", k.table.threads.len(), k.table.next_pid - 1)),
        ["stat"] => fixed(format!(
            "cpu  0 0 0 0 0 0 0 0 0 0\n{}btime {}\nprocesses {}\nprocs_running 1\nprocs_blocked 0\n",
            (0..k.cpu_count())
                .map(|i| format!("cpu{i} 0 0 0 0 0 0 0 0 0 0\n"))
                .collect::<String>(),
            k.clock.wall_base() / 1_000_000_000,
            k.table.next_pid - 1
        )),
        ["version"] => fixed("Linux version 6.1.0-flint (flint) #1 SMP\n".into()),
        ["mounts"] | ["self", "mounts"] => fixed("rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n".into()),
        ["filesystems"] => fixed("nodev\tproc\n\text4\n".into()),
        ["sys"] => Ok(dir_of(&[("kernel", DT_DIR), ("net", DT_DIR), ("vm", DT_DIR)])),
        ["sys", "kernel"] => Ok(dir_of(&[
            ("hostname", DT_REG),
            ("ostype", DT_REG),
            ("osrelease", DT_REG),
            ("pid_max", DT_REG),
            ("ngroups_max", DT_REG),
        ])),
        ["sys", "net"] => Ok(dir_of(&[("core", DT_DIR)])),
        ["sys", "net", "core"] => Ok(dir_of(&[("somaxconn", DT_REG)])),
        ["sys", "vm"] => Ok(dir_of(&[("overcommit_memory", DT_REG)])),
        ["sys", "kernel", "hostname"] => fixed(format!("{}\n", k.hostname)),
        ["sys", "kernel", "ostype"] => fixed("Linux\n".into()),
        ["sys", "kernel", "osrelease"] => fixed("6.1.0-flint\n".into()),
        ["sys", "kernel", "pid_max"] => fixed("4194304\n".into()),
        ["sys", "kernel", "ngroups_max"] => fixed("65536\n".into()),
        ["sys", "net", "core", "somaxconn"] => fixed("4096\n".into()),
        ["sys", "vm", "overcommit_memory"] => fixed("0\n".into()),
        [pid, tail @ ..] => {
            let pid: Pid = if *pid == "self" { me } else { pid.parse().map_err(|_| libc::ENOENT)? };
            let p = k.table.procs.get(&pid).filter(|p| p.exit.is_none()).ok_or(libc::ENOENT)?;
            match tail {
                [] => Ok(Node::Dir(proc_dir_entries(k, pid))),
                ["stat"] => stat_line(k, pid).map(|s| Node::File(s.into_bytes())).ok_or(libc::ENOENT),
                ["status"] => status(k, pid).map(|s| Node::File(s.into_bytes())).ok_or(libc::ENOENT),
                ["cmdline"] => Ok(Node::File(nul_joined(&p.cmdline))),
                ["environ"] => Ok(Node::File(nul_joined(&p.environ))),
                ["comm"] => fixed(format!("{}\n", comm(&p.exe))),
                ["maps"] => maps(k, pid).map(|s| Node::File(s.into_bytes())).ok_or(libc::ENOENT),
                ["exe"] => Ok(Node::Link(p.exe.clone())),
                ["cwd"] => Ok(Node::Link(p.cwd.clone())),
                ["root"] => Ok(Node::Link("/".into())),
                ["fd"] => {
                    let mut v: Vec<(String, u64, u8)> = vec![(".".into(), 1, DT_DIR), ("..".into(), 2, DT_DIR)];
                    for fd in p.fds.borrow().open_fds() {
                        v.push((fd.to_string(), 1000 + fd as u64, DT_LNK));
                    }
                    Ok(Node::Dir(v))
                }
                ["fd", n] => {
                    let fd: i64 = n.parse().map_err(|_| libc::ENOENT)?;
                    let f = p.fds.borrow().get(fd).ok_or(libc::ENOENT)?;
                    Ok(Node::Open(f))
                }
                ["task"] => {
                    let mut v: Vec<(String, u64, u8)> = vec![(".".into(), 1, DT_DIR), ("..".into(), 2, DT_DIR)];
                    for tid in &p.threads {
                        v.push((tid.to_string(), *tid as u64 * 100, DT_DIR));
                    }
                    Ok(Node::Dir(v))
                }
                ["task", tid, rest @ ..] => {
                    let tid: Pid = tid.parse().map_err(|_| libc::ENOENT)?;
                    if !p.threads.contains(&tid) {
                        return Err(libc::ENOENT);
                    }
                    let sub = format!("/proc/{pid}/{}", rest.join("/"));
                    lookup(k, t, &sub)
                }
                _ => Err(libc::ENOENT),
            }
        }
    }
}

fn dev_lookup(k: &Kernel, t: Pid, dev: &str) -> Result<Node, i32> {
    let fd = |n: i64| -> Result<Node, i32> {
        k.fds_of(t)
            .borrow()
            .get(n)
            .map(Node::Open)
            .ok_or(libc::ENOENT)
    };
    match dev {
        "" | "/" => Ok(Node::Dir(
            [
                ".", "..", "null", "zero", "full", "random", "urandom", "stdin", "stdout",
                "stderr", "fd", "shm",
            ]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.to_string(),
                    500 + i as u64,
                    if i < 2 || *n == "shm" { DT_DIR } else { DT_CHR },
                )
            })
            .collect(),
        )),
        "/null" => Ok(Node::Device(Kind::Null)),
        "/zero" => Ok(Node::Device(Kind::Zero)),
        "/full" => Ok(Node::Device(Kind::Full)),
        "/random" | "/urandom" => Ok(Node::Device(Kind::Random)),
        "/stdin" => fd(0),
        "/stdout" => fd(1),
        "/stderr" => fd(2),
        "/fd" => Ok(Node::Link("/proc/self/fd".into())),
        "/shm" => Ok(Node::Dir(vec![
            (".".into(), 600, DT_DIR),
            ("..".into(), 500, DT_DIR),
        ])),
        d if d.starts_with("/fd/") => d[4..].parse().map_err(|_| libc::ENOENT).and_then(fd),
        "/tty" | "/console" => Err(libc::ENXIO),
        _ => Err(libc::ENOENT),
    }
}

/// Follows links under /proc to their final node (at most 8 links).
pub fn resolve(k: &Kernel, t: Pid, path: &str) -> Result<(String, Node), i32> {
    let mut p = path.to_string();
    for _ in 0..8 {
        // Resolve a link in the middle (/proc/self/...).
        let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        let mut rebuilt = None;
        for i in 1..parts.len() {
            let prefix = format!("/{}", parts[..i].join("/"));
            if let Ok(Node::Link(target)) = lookup(k, t, &prefix) {
                if target.starts_with('/') && !is_synthetic(&target) {
                    break;
                }
                let base = if target.starts_with('/') {
                    target
                } else {
                    format!("/proc/{target}")
                };
                rebuilt = Some(format!("{base}/{}", parts[i..].join("/")));
                break;
            }
        }
        if let Some(r) = rebuilt {
            p = r;
            continue;
        }
        return match lookup(k, t, &p)? {
            Node::Link(target) if !target.starts_with('/') => {
                p = format!("/proc/{target}");
                continue;
            }
            n => Ok((p, n)),
        };
    }
    Err(libc::ELOOP)
}
