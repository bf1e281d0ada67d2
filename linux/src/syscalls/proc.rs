//! Processes and threads: clone, fork, vfork, execve, exit, wait, ids.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use libc::*;

use super::file::{target_of, Target};
use super::{err, host_err, Stop, SysResult};
use crate::kernel::Kernel;
use crate::loader::{self, LoadError, OpenInterp};
use crate::mm::space::Released;
use crate::mm::{AddressSpace, Fault, USER_END};
use crate::task::{ExitStatus, Pid, Process, Thread, Wait};

const CSIGNAL: u64 = 0xff;

#[allow(clippy::too_many_arguments)]
pub fn clone(
    k: &mut Kernel,
    t: Pid,
    flags: u64,
    stack: u64,
    ptid: u64,
    ctid: u64,
    tls: u64,
) -> SysResult {
    let f = flags as i32;
    let ns = CLONE_NEWNS
        | CLONE_NEWUTS
        | CLONE_NEWIPC
        | CLONE_NEWUSER
        | CLONE_NEWPID
        | CLONE_NEWNET
        | CLONE_NEWCGROUP;
    if f & ns != 0 {
        return err(EPERM);
    }
    if f & CLONE_THREAD != 0 && f & (CLONE_VM | CLONE_SIGHAND) != (CLONE_VM | CLONE_SIGHAND) {
        return err(EINVAL);
    }
    let live = k.table.procs.values().filter(|p| !p.reaped).count();
    if f & CLONE_THREAD == 0 && live >= k.limits.max_processes {
        return err(EAGAIN);
    }
    let tid = k.table.next_pid;
    let parent = k.thread(t);
    let parent_pid = parent.pid;
    let mut child = Thread::new(tid, parent_pid);
    child.regs = parent.regs;
    child.regs.rax = 0;
    if stack != 0 {
        child.regs.rsp = stack;
    }
    child.fs_base = if f & CLONE_SETTLS != 0 {
        tls
    } else {
        parent.fs_base
    };
    child.gs_base = parent.gs_base;
    child.sigmask = parent.sigmask;
    child.altstack = if f & CLONE_VM != 0 && f & CLONE_VFORK == 0 {
        (0, 0, crate::signal::SS_DISABLE)
    } else {
        parent.altstack
    };
    let fx = k.fxsave_of(t);
    if f & CLONE_THREAD != 0 {
        child.pid = parent_pid;
        k.proc_of_mut(t).threads.push(tid);
    } else {
        child.pid = tid;
        let p = k.proc_of(t);
        let mm = if f & CLONE_VM != 0 {
            p.mm.clone()
        } else {
            let pm = p.mm.clone();
            let forked = pm.borrow().fork(&mut k.frames);
            let forked = match forked {
                Err(Fault::OutOfMemory) if k.frames.quarantined() > 0 => {
                    k.reset_translations();
                    let r = pm.borrow().fork(&mut k.frames);
                    r
                }
                r => r,
            };
            Rc::new(RefCell::new(forked.map_err(|_| Stop::Errno(ENOMEM))?))
        };
        let p = k.proc_of(t);
        let mm_id = if f & CLONE_VM != 0 {
            p.mm_id
        } else {
            k.next_mm_id
        };
        let fds = if f & CLONE_FILES != 0 {
            p.fds.clone()
        } else {
            Rc::new(RefCell::new(p.fds.borrow().clone()))
        };
        let actions = if f & CLONE_SIGHAND != 0 {
            p.actions.clone()
        } else {
            Rc::new(RefCell::new(p.actions.borrow().clone()))
        };
        let proc = Process {
            pid: tid,
            ppid: if f & CLONE_PARENT != 0 {
                p.ppid
            } else {
                parent_pid
            },
            pgid: p.pgid,
            sid: p.sid,
            mm,
            mm_id,
            fds,
            actions,
            cwd: p.cwd.clone(),
            umask: p.umask,
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            environ: p.environ.clone(),
            threads: vec![tid],
            exit: None,
            children: Vec::new(),
            exit_signal: (flags & CSIGNAL) as i32,
            reaped: false,
            vfork_parent: (f & CLONE_VFORK != 0).then_some(parent_pid),
            start_ns: k.mono_ns(),
            itimer: None,
            timers: Default::default(),
            notify: None,
        };
        if f & CLONE_VM == 0 {
            k.next_mm_id += 1;
        }
        let pp = proc.ppid;
        k.table.procs.insert(tid, proc);
        if let Some(pp) = k.table.procs.get_mut(&pp) {
            pp.children.push(tid);
        }
    }
    if f & CLONE_CHILD_CLEARTID != 0 {
        child.clear_child_tid = ctid;
    }
    let mut fpu = k.clean_fpu_copy();
    for (i, w) in fx.chunks_exact(4).take(128).enumerate() {
        fpu.region[i] = u32::from_le_bytes(w.try_into().expect("4"));
    }
    child.fpu = Some(fpu);
    k.table.next_pid += 1;
    k.table.threads.insert(tid, child);
    if f & CLONE_PARENT_SETTID != 0 {
        let _ = k.write_u32(t, ptid, tid as u32);
    }
    if f & CLONE_CHILD_SETTID != 0 {
        let _ = k.write_u32(tid, ctid, tid as u32);
    }
    if f & CLONE_VFORK != 0 {
        return Err(Stop::Block(Wait::Vfork(tid)));
    }
    Ok(tid as u64)
}

pub fn clone3(k: &mut Kernel, t: Pid, args: u64, size: u64) -> SysResult {
    if size < 64 {
        return err(EINVAL);
    }
    let b = k.read_user(t, args, 64)?;
    let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"));
    let (flags, _pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls) =
        (w(0), w(1), w(2), w(3), w(4), w(5), w(6), w(7));
    if flags & CSIGNAL != 0 || exit_signal > 64 {
        return err(EINVAL);
    }
    let sp = if stack != 0 {
        stack.wrapping_add(stack_size)
    } else {
        0
    };
    clone(k, t, flags | exit_signal, sp, parent_tid, child_tid, tls)
}

struct RootInterp<'a> {
    root: &'a crate::fs::root::Root,
}

impl OpenInterp for RootInterp<'_> {
    fn open_interp(&mut self, path: &[u8]) -> std::io::Result<OwnedFd> {
        self.root.open_at(path, O_RDONLY, 0)
    }
}

fn load_errno(e: &LoadError) -> i32 {
    match e {
        LoadError::NotElf | LoadError::WrongKind(_) | LoadError::Malformed(_) => ENOEXEC,
        LoadError::Io(e) => e.raw_os_error().unwrap_or(EIO),
        LoadError::NoMemory => ENOMEM,
        LoadError::Interpreter(_, e) => e.raw_os_error().unwrap_or(ENOENT),
    }
}

/// Replaces the program of `t`'s process (`execve`).
pub fn exec(
    k: &mut Kernel,
    t: Pid,
    path: &[u8],
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
) -> SysResult {
    exec_depth(k, t, path, argv, envp, 0)
}

fn exec_depth(
    k: &mut Kernel,
    t: Pid,
    path: &[u8],
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
    depth: u32,
) -> SysResult {
    let tg = target_of(k, t, AT_FDCWD as u64, path)?;
    let Target::Host(hpath) = tg else {
        return err(EACCES);
    };
    let fd = k.root.open_at(&hpath, O_RDONLY, 0).map_err(host_err)?;
    // SAFETY: zeroed stat filled by fstat.
    let mut st: stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    unsafe { fstat(fd.as_raw_fd(), &mut st) };
    if st.st_mode & S_IFMT != S_IFREG {
        return err(EACCES);
    }
    if st.st_mode & 0o111 == 0 {
        return err(EACCES);
    }
    let mut head = [0u8; 256];
    // SAFETY: reads into a local buffer.
    let n =
        unsafe { pread(fd.as_raw_fd(), head.as_mut_ptr().cast(), head.len(), 0) }.max(0) as usize;
    // /proc/PID/exe names the file itself, symlinks resolved (as Linux).
    let guest_path = k
        .root
        .guest_path_of(&fd)
        .unwrap_or_else(|| crate::fs::root::normalize(&hpath));
    if head[..n].starts_with(b"#!") {
        if depth >= 4 {
            return err(ELOOP);
        }
        let line = head[2..n].split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line).trim().to_string();
        let mut parts = line.splitn(2, [' ', '\t']);
        let interp = parts.next().unwrap_or("").to_string();
        if interp.is_empty() {
            return err(ENOEXEC);
        }
        let mut nargv = vec![interp.clone().into_bytes()];
        if let Some(a) = parts.next().map(str::trim).filter(|a| !a.is_empty()) {
            nargv.push(a.as_bytes().to_vec());
        }
        nargv.push(path.to_vec());
        nargv.extend(argv.into_iter().skip(1));
        return exec_depth(k, t, interp.as_bytes(), nargv, envp, depth + 1);
    }
    if !loader::is_elf(&head[..n]) {
        return err(ENOEXEC);
    }
    // Build the new address space; the old one stays until this works.
    let mut mm = match AddressSpace::new(&mut k.frames) {
        Ok(m) => m,
        Err(_) => return err(ENOMEM),
    };
    let mut random = [0u8; 16];
    super::info::host_random(&mut random);
    let exe_name = guest_path.clone();
    let r = {
        let mut interp = RootInterp { root: &k.root };
        loader::load(
            &mut mm,
            &mut k.frames,
            fd,
            &exe_name,
            &argv,
            &envp,
            random,
            &k.vdso,
            &mut interp,
        )
    };
    let start = match r {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("exec of {guest_path} failed: {e}");
            let mut released = Released::default();
            mm.destroy(&mut k.frames, &mut released);
            k.release(released);
            return err(load_errno(&e));
        }
    };
    // The point of no return: other threads go, the old memory goes.
    let pid = k.thread(t).pid;
    let others: Vec<Pid> = k
        .proc_of(t)
        .threads
        .iter()
        .copied()
        .filter(|&x| x != t)
        .collect();
    for o in others {
        k.table.threads.remove(&o);
    }
    let p = k.table.procs.get_mut(&pid).expect("live");
    p.threads = vec![t];
    let old = std::mem::replace(&mut p.mm, Rc::new(RefCell::new(mm)));
    let shared_mm = k.mm_shared_by_live(pid, &old);
    if !shared_mm {
        let mut released = Released::default();
        old.borrow_mut().destroy(&mut k.frames, &mut released);
        k.release(released);
    }
    let p = k.table.procs.get_mut(&pid).expect("live");
    if shared_mm {
        p.mm_id = k.next_mm_id;
        k.next_mm_id += 1;
    }
    p.vfork_parent = None;
    let fds = p.fds.borrow().clone();
    p.fds = Rc::new(RefCell::new(fds));
    p.fds.borrow_mut().exec();
    let mut actions = p.actions.borrow().clone();
    actions.reset_for_exec();
    p.actions = Rc::new(RefCell::new(actions));
    p.exe = guest_path;
    // POSIX timers do not survive exec (interval timers do).
    p.timers.clear();
    p.cmdline = argv;
    p.environ = envp;
    let th = k.thread_mut(t);
    th.regs = kvm_bindings::kvm_regs {
        rip: start.entry,
        rsp: start.stack,
        rflags: 0x202,
        ..Default::default()
    };
    th.fs_base = 0;
    th.gs_base = 0;
    th.fpu = None;
    th.altstack = (0, 0, crate::signal::SS_DISABLE);
    th.clear_child_tid = 0;
    th.pending.retain(|_| true);
    k.sregs_changed(t);
    k.reset_fpu(t);
    Err(Stop::NoResult)
}

pub fn execve(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, argv: u64, envp: u64) -> SysResult {
    let p = k.read_cstr(t, path)?;
    let argv = k.read_str_array(t, argv)?;
    let envp = k.read_str_array(t, envp)?;
    let p = if p.first() != Some(&b'/') && dirfd as i32 != AT_FDCWD {
        let f = super::fd::file(k, t, dirfd)?;
        match &f.kind {
            crate::fs::file::Kind::Host { path: d, .. } => crate::fs::root::join(d, &p),
            _ => return err(ENOTDIR),
        }
    } else {
        p
    };
    exec(k, t, &p, argv, envp)
}

pub fn exit(k: &mut Kernel, t: Pid, code: u64) -> SysResult {
    k.exit_thread(t, (code & 0xff) as i32);
    Err(Stop::Gone)
}

pub fn exit_group(k: &mut Kernel, t: Pid, code: u64) -> SysResult {
    let pid = k.thread(t).pid;
    k.exit_process(pid, ExitStatus::Exited((code & 0xff) as i32));
    Err(Stop::Gone)
}

/// The children of `t`'s process that `pid` (wait4's argument) selects.
fn matching(k: &Kernel, t: Pid, pid: i32) -> Vec<Pid> {
    let me = k.proc_of(t);
    me.children
        .iter()
        .copied()
        .filter(|c| {
            let Some(cp) = k.table.procs.get(c) else {
                return false;
            };
            match pid {
                -1 => true,
                0 => cp.pgid == me.pgid,
                p if p > 0 => *c == p,
                p => cp.pgid == -p,
            }
        })
        .collect()
}

/// A child `pid` selects (as wait4's argument) that has ended, with its
/// status; ECHILD when `pid` selects no child at all.
fn zombie_child(k: &Kernel, t: Pid, pid: i32) -> Result<Option<(Pid, ExitStatus)>, Stop> {
    let kids = matching(k, t, pid);
    if kids.is_empty() {
        return err(ECHILD);
    }
    Ok(kids
        .iter()
        .find_map(|c| k.table.procs.get(c).and_then(|p| p.exit).map(|st| (*c, st))))
}

pub fn wait4(
    k: &mut Kernel,
    t: Pid,
    pid: i32,
    status: u64,
    options: u64,
    rusage: u64,
) -> SysResult {
    if let Some((c, st)) = zombie_child(k, t, pid)? {
        if status != 0 {
            k.write_u32(t, status, st.wait_status() as u32)?;
        }
        if rusage != 0 {
            k.write_user(t, rusage, &[0u8; 144])?;
        }
        k.reap(c);
        return Ok(c as u64);
    }
    if options & WNOHANG as u64 != 0 {
        return Ok(0);
    }
    Err(Stop::Block(Wait::Child))
}

pub fn waitid(k: &mut Kernel, t: Pid, idtype: u64, id: i32, infop: u64, options: u64) -> SysResult {
    let pid = match idtype as u32 {
        P_ALL => -1,
        P_PID => id,
        P_PGID => -id,
        _ => return err(EINVAL),
    };
    if let Some((c, st)) = zombie_child(k, t, pid)? {
        let (code, status) = st.child_code();
        if infop != 0 {
            let info = crate::signal::SigInfo {
                signo: crate::signal::SIGCHLD,
                code,
                pid: c,
                uid: 0,
                status,
                addr: 0,
            };
            k.write_user(t, infop, &info.encode())?;
        }
        if options & WNOWAIT as u64 == 0 {
            k.reap(c);
        }
        return Ok(0);
    }
    if options & WNOHANG as u64 != 0 {
        if infop != 0 {
            k.write_user(t, infop, &[0u8; 128])?;
        }
        return Ok(0);
    }
    Err(Stop::Block(Wait::Child))
}

pub fn getpgid(k: &mut Kernel, t: Pid, pid: i32) -> SysResult {
    if pid == 0 {
        return Ok(k.proc_of(t).pgid as u64);
    }
    k.table
        .procs
        .get(&pid)
        .map(|p| p.pgid as u64)
        .ok_or(Stop::Errno(ESRCH))
}

pub fn setpgid(k: &mut Kernel, t: Pid, pid: i32, pgid: i32) -> SysResult {
    let pid = if pid == 0 { k.thread(t).pid } else { pid };
    let pgid = if pgid == 0 { pid } else { pgid };
    if pgid < 0 {
        return err(EINVAL);
    }
    let p = k.table.procs.get_mut(&pid).ok_or(Stop::Errno(ESRCH))?;
    p.pgid = pgid;
    Ok(0)
}

pub fn setsid(k: &mut Kernel, t: Pid) -> SysResult {
    let p = k.proc_of_mut(t);
    if p.pgid == p.pid && p.pid != 1 && p.sid == p.pid {
        return err(EPERM);
    }
    p.sid = p.pid;
    p.pgid = p.pid;
    Ok(p.pid as u64)
}

pub fn set_tid_address(k: &mut Kernel, t: Pid, addr: u64) -> SysResult {
    k.thread_mut(t).clear_child_tid = addr;
    Ok(t as u64)
}

pub fn arch_prctl(k: &mut Kernel, t: Pid, code: u64, addr: u64) -> SysResult {
    const ARCH_SET_GS: u64 = 0x1001;
    const ARCH_SET_FS: u64 = 0x1002;
    const ARCH_GET_FS: u64 = 0x1003;
    const ARCH_GET_GS: u64 = 0x1004;
    match code {
        ARCH_SET_FS | ARCH_SET_GS => {
            if addr >= USER_END + 0x1000 {
                return err(EPERM);
            }
            let th = k.thread_mut(t);
            if code == ARCH_SET_FS {
                th.fs_base = addr;
            } else {
                th.gs_base = addr;
            }
            k.sregs_changed(t);
            Ok(0)
        }
        ARCH_GET_FS => {
            let v = k.thread(t).fs_base;
            k.write_u64(t, addr, v)?;
            Ok(0)
        }
        ARCH_GET_GS => {
            let v = k.thread(t).gs_base;
            k.write_u64(t, addr, v)?;
            Ok(0)
        }
        _ => err(EINVAL),
    }
}

pub fn prctl(k: &mut Kernel, t: Pid, option: u64, arg: u64) -> SysResult {
    match option as i32 {
        PR_SET_NAME => {
            let name = k.read_user(t, arg, 16)?;
            let name: Vec<u8> = name.into_iter().take_while(|&b| b != 0).collect();
            let _ = name;
            Ok(0)
        }
        PR_GET_NAME => {
            let exe = k.proc_of(t).exe.clone();
            let mut n: Vec<u8> = exe
                .rsplit('/')
                .next()
                .unwrap_or("")
                .bytes()
                .take(15)
                .collect();
            n.resize(16, 0);
            k.write_user(t, arg, &n)?;
            Ok(0)
        }
        PR_SET_PDEATHSIG
        | PR_SET_NO_NEW_PRIVS
        | PR_SET_DUMPABLE
        | PR_SET_KEEPCAPS
        | PR_SET_CHILD_SUBREAPER => Ok(0),
        PR_GET_DUMPABLE => Ok(1),
        PR_GET_NO_NEW_PRIVS | PR_CAPBSET_READ | PR_GET_KEEPCAPS => Ok(0),
        _ => err(EINVAL),
    }
}

/// Every vCPU (the mask is in 8-byte words, as Linux's `cpumask`).
pub fn sched_getaffinity(k: &mut Kernel, t: Pid, len: u64, mask: u64) -> SysResult {
    if len < 8 || !len.is_multiple_of(8) {
        return err(EINVAL);
    }
    let bits = (1u64 << k.cpu_count()) - 1;
    k.write_u64(t, mask, bits)?;
    Ok(8)
}

/// `getcpu(cpu, node, cache)`: the vCPU the call came from, node 0.
pub fn getcpu(k: &mut Kernel, t: Pid, cpu: u64, node: u64) -> SysResult {
    if cpu != 0 {
        k.write_u32(t, cpu, k.current_cpu() as u32)?;
    }
    if node != 0 {
        k.write_u32(t, node, 0)?;
    }
    Ok(0)
}

pub fn getresid(k: &mut Kernel, t: Pid, a: u64, b: u64, c: u64) -> SysResult {
    for p in [a, b, c] {
        k.write_u32(t, p, 0)?;
    }
    Ok(0)
}

pub fn capget(k: &mut Kernel, t: Pid, data: u64) -> SysResult {
    if data != 0 {
        k.write_user(t, data, &[0u8; 24])?;
    }
    Ok(0)
}
