//! Signal system calls.

use libc::{EFAULT, EINVAL, EPERM, ESRCH};

use super::{err, Stop, SysResult};
use crate::kernel::Kernel;
use crate::signal::{self, SigAction, SigInfo, NSIG, SIGKILL, SIGSTOP, UNBLOCKABLE};
use crate::task::{Pid, Wait};

pub fn rt_sigaction(k: &mut Kernel, t: Pid, sig: i32, act: u64, old: u64, size: u64) -> SysResult {
    if !(1..=NSIG).contains(&sig) || size != 8 {
        return err(EINVAL);
    }
    let actions = k.proc_of(t).actions.clone();
    let cur = actions.borrow().get(sig);
    if old != 0 {
        let mut b = Vec::with_capacity(32);
        for w in [cur.handler, cur.flags, cur.restorer, cur.mask] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        k.write_user(t, old, &b)?;
    }
    if act != 0 {
        if sig == SIGKILL || sig == SIGSTOP {
            return err(EINVAL);
        }
        let b = k.read_user(t, act, 32)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"));
        actions.borrow_mut().0[(sig - 1) as usize] = SigAction {
            handler: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3) & !UNBLOCKABLE,
        };
        // Ignoring a pending signal discards it.
        if w(0) == signal::SIG_IGN {
            for th in k.table.threads.values_mut() {
                th.pending.retain(|i| i.signo != sig);
            }
        }
    }
    Ok(0)
}

pub fn rt_sigprocmask(
    k: &mut Kernel,
    t: Pid,
    how: i32,
    set: u64,
    old: u64,
    size: u64,
) -> SysResult {
    if size != 8 {
        return err(EINVAL);
    }
    let cur = k.thread(t).sigmask;
    if old != 0 {
        k.write_u64(t, old, cur)?;
    }
    if set != 0 {
        let s = k.read_u64(t, set)?;
        let new = match how {
            libc::SIG_BLOCK => cur | s,
            libc::SIG_UNBLOCK => cur & !s,
            libc::SIG_SETMASK => s,
            _ => return err(EINVAL),
        };
        k.thread_mut(t).sigmask = new & !UNBLOCKABLE;
    }
    Ok(0)
}

pub fn rt_sigreturn(k: &mut Kernel, t: Pid) -> SysResult {
    let mm = k.mm_of(t);
    let mut regs = k.thread(t).regs;
    let r = signal::sigreturn(&mut mm.borrow_mut(), &mut k.frames, &mut regs);
    match r {
        Ok(restored) => {
            let th = k.thread_mut(t);
            th.regs = regs;
            th.sigmask = restored.mask;
            if let Some(fx) = restored.fxsave {
                k.set_fxsave(t, &fx);
            }
            Err(Stop::NoResult)
        }
        Err(_) => {
            let pid = k.thread(t).pid;
            k.exit_process(
                pid,
                crate::task::ExitStatus::Signaled {
                    signal: signal::SIGSEGV,
                    core: true,
                },
            );
            Err(Stop::Gone)
        }
    }
}

pub fn rt_sigsuspend(k: &mut Kernel, t: Pid, mask: u64, size: u64) -> SysResult {
    if size != 8 {
        return err(EINVAL);
    }
    if k.retrying.is_none() {
        let m = k.read_u64(t, mask)?;
        let th = k.thread_mut(t);
        th.saved_mask = Some(th.sigmask);
        th.sigmask = m & !UNBLOCKABLE;
    }
    Err(Stop::Block(Wait::Signal))
}

pub fn rt_sigpending(k: &mut Kernel, t: Pid, set: u64) -> SysResult {
    let th = k.thread(t);
    let mut s = 0u64;
    for i in &th.pending {
        s |= signal::bit(i.signo);
    }
    k.write_u64(t, set, s & th.sigmask)?;
    Ok(0)
}

pub fn sigaltstack(k: &mut Kernel, t: Pid, new: u64, old: u64) -> SysResult {
    let (sp, size, flags) = k.thread(t).altstack;
    if old != 0 {
        let mut b = sp.to_le_bytes().to_vec();
        b.extend(flags.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(size.to_le_bytes());
        k.write_user(t, old, &b)?;
    }
    if new != 0 {
        let b = k.read_user(t, new, 24)?;
        let sp = u64::from_le_bytes(b[0..8].try_into().expect("8"));
        let flags = i32::from_le_bytes(b[8..12].try_into().expect("4"));
        let size = u64::from_le_bytes(b[16..24].try_into().expect("8"));
        if flags & !signal::SS_DISABLE != 0 && flags != 0 {
            return err(EINVAL);
        }
        if flags & signal::SS_DISABLE == 0 && size < 2048 {
            return err(libc::ENOMEM);
        }
        k.thread_mut(t).altstack = if flags & signal::SS_DISABLE != 0 {
            (0, 0, signal::SS_DISABLE)
        } else {
            (sp, size, 0)
        };
    }
    Ok(0)
}

pub fn kill(k: &mut Kernel, t: Pid, pid: i32, sig: i32) -> SysResult {
    if !(0..=NSIG).contains(&sig) {
        return err(EINVAL);
    }
    let me = k.thread(t).pid;
    let targets: Vec<Pid> = match pid {
        p if p > 0 => vec![p],
        0 => {
            let g = k.proc_of(t).pgid;
            k.table
                .procs
                .values()
                .filter(|p| p.pgid == g && p.exit.is_none())
                .map(|p| p.pid)
                .collect()
        }
        -1 => k
            .table
            .procs
            .values()
            .filter(|p| p.pid != 1 && p.exit.is_none() && p.pid != me)
            .map(|p| p.pid)
            .collect(),
        p => k
            .table
            .procs
            .values()
            .filter(|x| x.pgid == -p && x.exit.is_none())
            .map(|x| x.pid)
            .collect(),
    };
    let live: Vec<Pid> = targets
        .into_iter()
        .filter(|p| k.table.procs.get(p).is_some_and(|x| x.exit.is_none()))
        .collect();
    if live.is_empty() {
        return err(ESRCH);
    }
    if sig == 0 {
        return Ok(0);
    }
    for p in live {
        k.signal_process(p, SigInfo::user(sig, me));
    }
    Ok(0)
}

pub fn tgkill(k: &mut Kernel, t: Pid, tgid: i32, tid: i32, sig: i32) -> SysResult {
    if !(0..=NSIG).contains(&sig) || tid <= 0 {
        return err(EINVAL);
    }
    let Some(th) = k.table.threads.get(&tid) else {
        return err(ESRCH);
    };
    if tgid != -1 && th.pid != tgid {
        return err(ESRCH);
    }
    if sig == 0 {
        return Ok(0);
    }
    let me = k.thread(t).pid;
    let mut info = SigInfo::user(sig, me);
    info.code = signal::SI_TKILL;
    k.signal_thread(tid, info);
    let _ = (EFAULT, EPERM);
    Ok(0)
}
