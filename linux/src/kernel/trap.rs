//! Exceptions from user code, signal delivery, and how threads and
//! processes end.

use super::Kernel;
use crate::arch::{self, KERNEL_VA};
use crate::mm::Fault;
use crate::signal::{self, SigInfo, SIGBUS, SIGCHLD, SIGFPE, SIGILL, SIGKILL, SIGSEGV, SIGTRAP};
use crate::syscalls::{EINTR, ERESTARTSYS};
use crate::task::{ExitStatus, Pid, Wait};
use crate::LinuxError;

impl Kernel {
    /// Handles exception `vector` taken by `tid`; true when the thread
    /// can go on.
    pub(super) fn on_exception(&mut self, tid: Pid, vector: u8) -> Result<bool, LinuxError> {
        let r = self.thread(tid).regs;
        if r.rip != arch::stub_after_out(vector) {
            return Err(LinuxError::Crash(format!(
                "exception port {vector} written from {:#x}, not its stub",
                r.rip
            )));
        }
        // The frame on the kernel stack: [error code], rip, cs, rflags, rsp, ss.
        let sp = r.rsp;
        if !arch::kernel_stack(self.current_cpu()).contains(&sp) {
            return Err(LinuxError::Crash(format!(
                "exception with kernel stack at {sp:#x}"
            )));
        }
        let phys = sp - KERNEL_VA;
        let ec = arch::has_error_code(vector);
        let word = |i: u64| self.frames.read_u64(phys + i * 8);
        let base = if ec { 1 } else { 0 };
        let err = if ec { word(0) } else { 0 };
        let (rip, cs, rflags, rsp) = (word(base), word(base + 1), word(base + 2), word(base + 3));
        if cs & 3 != 3 {
            return Err(LinuxError::Crash(format!(
                "exception {vector} at CPL 0 (rip {rip:#x}, error {err:#x})"
            )));
        }
        let cr2 = self.thread(tid).last_cr2;
        {
            let t = self.thread_mut(tid);
            t.regs.rip = rip;
            t.regs.rsp = rsp;
            t.regs.rflags = (rflags & !0x3000) | 0x202;
        }
        let info = match vector {
            14 => {
                let write = err & 2 != 0;
                let exec = err & 16 != 0;
                let mm = self.mm_of(tid);
                if mm.borrow().is_stale(cr2) {
                    self.reset_translations();
                }
                let mut r = mm.borrow_mut().fault(&mut self.frames, cr2, write, exec);
                if r == Err(Fault::OutOfMemory) && self.frames.quarantined() > 0 {
                    self.reset_translations();
                    r = mm.borrow_mut().fault(&mut self.frames, cr2, write, exec);
                }
                match r {
                    Ok(true) => return Ok(true),
                    Ok(false) => {
                        // Present already: KVM translated from a stale entry.
                        self.reset_translations();
                        return Ok(true);
                    }
                    Err(Fault::OutOfMemory) => {
                        self.oom_kill(tid);
                        return Ok(false);
                    }
                    Err(Fault::Unmapped) => SigInfo::fault(SIGSEGV, signal::SEGV_MAPERR, cr2),
                    Err(Fault::Denied) => SigInfo::fault(SIGSEGV, signal::SEGV_ACCERR, cr2),
                }
            }
            0 => SigInfo::fault(SIGFPE, 1, rip),
            1 | 3 => SigInfo::fault(SIGTRAP, 1, rip),
            4 | 5 => SigInfo::fault(SIGSEGV, 0x80, 0),
            6 => SigInfo::fault(SIGILL, 2, rip),
            7 | 16 | 19 => SigInfo::fault(SIGFPE, 0, rip),
            17 => SigInfo::fault(SIGBUS, 1, rip),
            _ => SigInfo::fault(SIGSEGV, 0x80, 0),
        };
        if crate::entry::fixup_fault(arch::syscall_entry(), &mut self.thread_mut(tid).regs) {
            // The guest's own answer to a time call wrote through a bad
            // pointer: the call fails with EFAULT.
            return Ok(true);
        }
        tracing::debug!(
            "thread {tid}: exception {vector} at rip {rip:#x} (error {err:#x}, cr2 {cr2:#x}): signal {}",
            info.signo
        );
        {
            let t = self.thread_mut(tid);
            t.fault = Some((vector as u64, err, cr2));
        }
        self.force_signal(tid, info);
        Ok(false)
    }

    /// A synchronous signal (a fault): delivered even if blocked or
    /// ignored, in which case it kills, as Linux's `force_sig_fault`.
    pub fn force_signal(&mut self, tid: Pid, info: SigInfo) {
        let actions = self.proc_of(tid).actions.clone();
        let act = actions.borrow().get(info.signo);
        let blocked = self.thread(tid).sigmask & signal::bit(info.signo) != 0;
        if act.handler == signal::SIG_IGN || blocked {
            actions.borrow_mut().0[(info.signo - 1) as usize] = signal::SigAction::default();
            self.thread_mut(tid).sigmask &= !signal::bit(info.signo);
        }
        self.thread_mut(tid).pending.insert(0, info);
    }

    /// Queues `info` for the process `pid` (to a thread that does not
    /// block it, else the first).
    pub fn signal_process(&mut self, pid: Pid, info: SigInfo) {
        let Some(p) = self.table.procs.get(&pid) else {
            return;
        };
        if p.exit.is_some() {
            return;
        }
        let threads = p.threads.clone();
        let Some(&first) = threads.first() else {
            return;
        };
        let target = threads
            .iter()
            .copied()
            .find(|t| {
                self.table
                    .threads
                    .get(t)
                    .is_some_and(|th| th.sigmask & signal::bit(info.signo) == 0)
            })
            .unwrap_or(first);
        self.signal_thread(target, info);
    }

    pub fn signal_thread(&mut self, tid: Pid, info: SigInfo) {
        if info.signo == 0 {
            return;
        }
        if let Some(t) = self.table.threads.get_mut(&tid) {
            // Standard signals do not queue twice.
            if info.signo < 32 && t.pending.iter().any(|p| p.signo == info.signo) {
                return;
            }
            t.pending.push(info);
        }
    }

    /// True when `tid` has a pending signal it does not block whose action
    /// is not to ignore it.
    pub fn has_deliverable(&self, tid: Pid) -> bool {
        let Some(t) = self.table.threads.get(&tid) else {
            return false;
        };
        if t.pending.is_empty() {
            return false;
        }
        let actions = self.table.procs[&t.pid].actions.borrow();
        t.pending.iter().any(|i| {
            let unblocked = t.sigmask & signal::bit(i.signo) == 0
                || signal::bit(i.signo) & signal::UNBLOCKABLE != 0;
            let a = actions.get(i.signo);
            let ignored = a.handler == signal::SIG_IGN
                || (a.handler == signal::SIG_DFL
                    && matches!(
                        signal::default_action(i.signo),
                        signal::DefaultAction::Ignore
                            | signal::DefaultAction::Stop
                            | signal::DefaultAction::Continue
                    )
                    && i.signo != SIGKILL);
            unblocked && !ignored
        }) || t
            .pending
            .iter()
            .any(|i| t.sigmask & signal::bit(i.signo) == 0)
    }

    /// Delivers the first deliverable signal of `tid` (one per return to
    /// user code, as Linux), or acts on it by default.
    pub fn deliver_signals(&mut self, tid: Pid) {
        let Some(t) = self.table.threads.get(&tid) else {
            return;
        };
        if t.blocked.is_some() {
            return;
        }
        let restart = self.thread_mut(tid).restart.take();
        loop {
            let Some(t) = self.table.threads.get_mut(&tid) else {
                return;
            };
            let mask = t.sigmask;
            let Some(i) = t.pending.iter().position(|i| {
                mask & signal::bit(i.signo) == 0 || signal::bit(i.signo) & signal::UNBLOCKABLE != 0
            }) else {
                self.finish_restart(tid, restart, None);
                return;
            };
            let info = t.pending.remove(i);
            let actions = self.proc_of(tid).actions.clone();
            let act = actions.borrow().get(info.signo);
            if info.signo == SIGKILL || act.handler == signal::SIG_DFL {
                match signal::default_action(info.signo) {
                    signal::DefaultAction::Ignore
                    | signal::DefaultAction::Stop
                    | signal::DefaultAction::Continue
                        if info.signo != SIGKILL =>
                    {
                        continue
                    }
                    d => {
                        let pid = self.thread(tid).pid;
                        self.exit_process(
                            pid,
                            ExitStatus::Signaled {
                                signal: info.signo,
                                core: d == signal::DefaultAction::Core,
                            },
                        );
                        return;
                    }
                }
            }
            if act.handler == signal::SIG_IGN {
                continue;
            }
            self.finish_restart(tid, restart, Some(act.flags & signal::SA_RESTART != 0));
            let fx = self.fxsave_of(tid);
            let mm = self.mm_of(tid);
            let t = self.table.threads.get_mut(&tid).expect("live");
            let (trapno, err, cr2) = t.fault.take().unwrap_or((0, 0, 0));
            let old_mask = t.saved_mask.take().unwrap_or(t.sigmask);
            let mut regs = t.regs;
            let mut d = signal::Delivery {
                regs: &mut regs,
                fxsave: &fx,
                mask: old_mask,
                altstack: t.altstack,
                trapno,
                err,
                cr2,
            };
            let pushed =
                signal::push_frame(&mut mm.borrow_mut(), &mut self.frames, &mut d, &info, &act);
            match pushed {
                Ok(()) => {
                    let t = self.thread_mut(tid);
                    t.regs = regs;
                    let mut m = t.sigmask | act.mask;
                    if act.flags & signal::SA_NODEFER == 0 {
                        m |= signal::bit(info.signo);
                    }
                    t.sigmask = m & !signal::UNBLOCKABLE;
                    if act.flags & signal::SA_RESETHAND != 0 {
                        actions.borrow_mut().0[(info.signo - 1) as usize] =
                            signal::SigAction::default();
                    }
                }
                Err(_) => {
                    let pid = self.thread(tid).pid;
                    self.exit_process(
                        pid,
                        ExitStatus::Signaled {
                            signal: SIGSEGV,
                            core: true,
                        },
                    );
                }
            }
            return;
        }
    }

    /// An interrupted call (`-ERESTARTSYS`) is restarted when no handler
    /// runs, or when the handler has SA_RESTART and the call is one that
    /// SA_RESTART restarts; otherwise it returns EINTR.
    fn finish_restart(&mut self, tid: Pid, restart: Option<u64>, handler: Option<bool>) {
        let Some(nr) = restart else { return };
        let Some(t) = self.table.threads.get_mut(&tid) else {
            return;
        };
        if t.regs.rax as i64 != -(ERESTARTSYS as i64) {
            return;
        }
        let rewind = match handler {
            None => true,
            Some(sa_restart) => sa_restart && !crate::syscalls::interruptible_only(nr),
        };
        if rewind {
            t.regs.rax = nr;
            t.regs.rip -= 2;
        } else {
            t.regs.rax = (-(EINTR as i64)) as u64;
        }
    }

    /// Fires expired interval timers.
    pub(super) fn fire_timers(&mut self, now: u64) {
        self.fire_posix_timers(now);
        let due: Vec<Pid> = self
            .table
            .procs
            .values()
            .filter(|p| p.exit.is_none() && p.itimer.is_some_and(|(at, _)| now >= at))
            .map(|p| p.pid)
            .collect();
        for pid in due {
            let p = self.table.procs.get_mut(&pid).expect("listed");
            let (at, interval) = p.itimer.expect("armed");
            p.itimer =
                (interval > 0).then(|| (at.max(now.saturating_sub(interval)) + interval, interval));
            let mut info = SigInfo::user(signal::SIGALRM, 0);
            info.code = 0x80;
            self.signal_process(pid, info);
        }
    }

    /// Kills the process of `tid` for want of memory (status 137).
    pub fn oom_kill(&mut self, tid: Pid) {
        self.oom_killed = true;
        let pid = self.thread(tid).pid;
        tracing::info!("process {pid} ran out of guest memory");
        self.exit_process(
            pid,
            ExitStatus::Signaled {
                signal: SIGKILL,
                core: false,
            },
        );
    }

    /// Ends one thread (`exit`); the process ends with its last thread.
    pub fn exit_thread(&mut self, tid: Pid, code: i32) {
        let pid = self.thread(tid).pid;
        let last = self.table.procs[&pid].threads.len() == 1;
        if last {
            self.exit_process(pid, ExitStatus::Exited(code));
            return;
        }
        self.remove_thread(tid);
    }

    fn remove_thread(&mut self, tid: Pid) {
        let Some(t) = self.table.threads.remove(&tid) else {
            return;
        };
        self.unload(tid);
        if let Some(p) = self.table.procs.get_mut(&t.pid) {
            p.threads.retain(|&x| x != tid);
        }
        if t.clear_child_tid != 0 {
            if let Some(p) = self.table.procs.get(&t.pid) {
                if p.exit.is_none() {
                    let mm = p.mm.clone();
                    let _ = mm.borrow_mut().write(
                        &mut self.frames,
                        t.clear_child_tid,
                        &0u32.to_le_bytes(),
                    );
                    let mm_id = p.mm_id;
                    crate::syscalls::futex::wake(self, mm_id, t.clear_child_tid, 1, u32::MAX);
                }
            }
        }
    }

    /// Ends process `pid` with `status`: its threads, files and memory go,
    /// its children go to process 1, its parent is told.
    pub fn exit_process(&mut self, pid: Pid, status: ExitStatus) {
        let Some(p) = self.table.procs.get_mut(&pid) else {
            return;
        };
        if p.exit.is_some() {
            return;
        }
        p.exit = Some(status);
        p.itimer = None;
        if let Some(tx) = p.notify.take() {
            let _ = tx.send(Ok(status));
        }
        let threads = std::mem::take(&mut p.threads);
        let ppid = p.ppid;
        let exit_signal = p.exit_signal;
        let children = std::mem::take(&mut p.children);
        for tid in threads {
            if self.table.threads.remove(&tid).is_some() {
                self.unload(tid);
            }
        }
        // Drop files and memory now (a pipe's reader sees EOF at once).
        let p = self.table.procs.get_mut(&pid).expect("present");
        let fds = std::mem::take(&mut *p.fds.borrow_mut());
        drop(fds);
        let mm = p.mm.clone();
        let vfork_parent = p.vfork_parent.take();
        if !self.mm_shared_by_live(pid, &mm) {
            let mut released = crate::mm::space::Released::default();
            mm.borrow_mut().destroy(&mut self.frames, &mut released);
            self.release(released);
        }
        let _ = vfork_parent;
        if pid == 1 {
            self.init_exit = Some(status);
            return;
        }
        // Orphans go to process 1.
        for c in children {
            if let Some(cp) = self.table.procs.get_mut(&c) {
                cp.ppid = 1;
            }
            if let Some(init) = self.table.procs.get_mut(&1) {
                init.children.push(c);
            }
        }
        let ignores = self
            .table
            .procs
            .get(&ppid)
            .is_some_and(|pp| pp.actions.borrow().get(SIGCHLD).handler == signal::SIG_IGN);
        if ignores || !self.table.procs.contains_key(&ppid) {
            self.reap(pid);
        } else if (1..=signal::NSIG).contains(&exit_signal) {
            // Legacy clone takes any CSIGNAL byte; the kernel's
            // do_notify_parent sends only a valid one.
            let (code, st) = status.child_code();
            let info = SigInfo {
                signo: exit_signal,
                code,
                pid,
                uid: 0,
                status: st,
                addr: 0,
            };
            self.signal_process(ppid, info);
        }
        // Parents blocked in wait4 are retried by the scheduler.
        let _ = Wait::Child;
    }

    /// Whether a live process other than `pid` uses address space `mm`
    /// (a vfork child, a CLONE_VM process): zombies hold theirs but never
    /// use it again, so the last live user frees it.
    pub fn mm_shared_by_live(
        &self,
        pid: Pid,
        mm: &std::rc::Rc<std::cell::RefCell<crate::mm::AddressSpace>>,
    ) -> bool {
        self.table
            .procs
            .values()
            .any(|q| q.pid != pid && q.exit.is_none() && std::rc::Rc::ptr_eq(&q.mm, mm))
    }

    /// Removes a zombie from the table.
    pub fn reap(&mut self, pid: Pid) {
        if let Some(p) = self.table.procs.remove(&pid) {
            if let Some(pp) = self.table.procs.get_mut(&p.ppid) {
                pp.children.retain(|&c| c != pid);
            }
        }
    }
}
