//! The VM's vCPUs and the scheduler loop each runs on its own host thread.
//!
//! All vCPUs share the [`Kernel`] behind one lock (a big kernel lock): a
//! vCPU thread holds it while it picks a thread and while it answers a
//! trap, and lets go of it only for `KVM_RUN`, so guest code runs on every
//! vCPU at once while the VMM's answers are serialized. The loop: wake
//! threads whose wait has ended, pick the next runnable thread no other
//! vCPU runs, load its registers (page tables, thread pointer, FPU state)
//! into this vCPU, run until the guest traps, answer the trap (a system
//! call, `syscalls/`; a page fault or another exception, `trap.rs`). A
//! thread keeps its vCPU across system calls until it blocks, exits, or
//! its time slice ends (the supervising thread kicks every vCPU each
//! [`super::TICK`]). With nothing to run, a vCPU sleeps until the nearest
//! deadline, a host fd it waits on, or another vCPU's wake-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flint_executor::vstate::vcpu::{self, Vcpu, VcpuEvent};

use super::{copy_xsave, sanitize_flags, Kernel, Trap, HOST_CALLS};
use crate::arch::{self, EXCEPTION_PORT_BASE, SYSCALL_PORT};
use crate::entry;
use crate::signal::SigInfo;
use crate::task::{ExitStatus, Pid, Wait};
use crate::LinuxError;

/// One vCPU and what the scheduler knows of it.
#[derive(Debug)]
pub struct Cpu {
    /// Away (with its host thread) while the guest runs on it.
    pub(super) vcpu: Option<Vcpu>,
    /// The thread whose registers and FPU state are on this vCPU.
    loaded: Option<Pid>,
    /// The thread this vCPU runs now (from pick to leaving the guest).
    running: Option<Pid>,
    /// The loaded thread's CR3 or FS base must be written at entry.
    sregs_dirty: bool,
    /// The sync-regs area holds the registers (after the first exit).
    sync_valid: bool,
    /// LSTAR points at the entry's fast path (`syscall` stays at CPL 3).
    pub(super) fast_entry: bool,
    /// The host thread, for kicks.
    host: Option<libc::pthread_t>,
    /// True from just before `KVM_RUN` until it returns (set under the
    /// lock, cleared without it).
    in_guest: Arc<AtomicBool>,
}

impl Cpu {
    pub(super) fn new(vcpu: Vcpu) -> Self {
        Self {
            vcpu: Some(vcpu),
            loaded: None,
            running: None,
            sregs_dirty: true,
            sync_valid: false,
            fast_entry: false,
            host: None,
            in_guest: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// The kernel behind its lock, shared by the vCPU threads.
struct Shared(Mutex<Kernel>);

// SAFETY: the kernel's `Rc` and `RefCell` values (address spaces, fd
// tables, signal actions shared between threads of a process) are reached
// only through this mutex, and none leaves a critical section: every clone
// made while answering a trap is dropped before the guard is. Their
// non-atomic counts are so only ever touched by one thread at a time, in
// the order the lock gives.
unsafe impl Sync for Shared {}
// SAFETY: as above; the kernel moves between threads only as a whole.
unsafe impl Send for Shared {}

type Guard<'a> = MutexGuard<'a, Kernel>;

impl Shared {
    /// The kernel, for vCPU `i`.
    fn lock(&self, i: usize) -> Guard<'_> {
        let mut k = self.0.lock().unwrap_or_else(|e| e.into_inner());
        k.current = i;
        k
    }
}

/// Runs the kernel's vCPUs, one host thread each (this one is vCPU 0),
/// until process 1 exits; its status is the container's. Each thread is
/// confined first: the calls of `VCPU_BASE` and of the file operations the
/// system-call layer makes inside the root.
pub fn run_cpus(k: Kernel) -> Result<(ExitStatus, Kernel), LinuxError> {
    let n = k.cpus.len();
    let shared = Shared(Mutex::new(k));
    let result = std::thread::scope(|s| {
        let others: Vec<_> = (1..n)
            .map(|i| {
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("flint-linux-vcpu{i}"))
                    .spawn_scoped(s, move || {
                        let r = run_cpu(shared, i);
                        shared.lock(i).stop_all();
                        r
                    })
            })
            .collect();
        let mut r = run_cpu(&shared, 0);
        shared.lock(0).stop_all();
        for t in others {
            let other = match t {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(LinuxError::Crash("a vCPU thread panicked".into()))),
                Err(e) => Err(LinuxError::Thread(e)),
            };
            if let (Ok(_), Err(e)) = (&r, other) {
                if !matches!(e, LinuxError::Timeout) {
                    r = Err(e);
                }
            }
        }
        r
    });
    let k = shared.0.into_inner().unwrap_or_else(|e| e.into_inner());
    result.map(|st| (st, k))
}

/// The scheduler loop of vCPU `i`.
fn run_cpu(shared: &Shared, i: usize) -> Result<ExitStatus, LinuxError> {
    let host = vcpu::current_thread();
    {
        let mut k = shared.lock(i);
        k.cpus[i].host = Some(host);
        k.control
            .vcpu_threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(host);
        if i == 0 {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            *k.control.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(
                flint_executor::VmProbe::for_thread(k.vm.memory().clone(), tid),
            );
        }
    }
    if let Err(e) = flint_executor::seccomp::confine_thread(HOST_CALLS) {
        tracing::warn!("vCPU thread {i} runs without its seccomp filter: {e}");
    }
    let mut k = shared.lock(i);
    let mut last = 0;
    loop {
        if let Some(st) = k.init_exit {
            return Ok(st);
        }
        if k.control.stop.load(Ordering::SeqCst) {
            return Err(LinuxError::Timeout);
        }
        if k.control.freezing.load(Ordering::SeqCst) {
            k = freeze_point(shared, k, i);
            continue;
        }
        k.outside_signals();
        k.spawn_requested();
        k.connect_requested();
        crate::syscalls::socket::dials_done(&mut k);
        k.publish_processes();
        k.wake_ready();
        if let Some(st) = k.init_exit {
            return Ok(st);
        }
        let Some(tid) = k.pick(last) else {
            k = idle(shared, k, i);
            continue;
        };
        last = tid;
        k.switch_to(tid)?;
        k.deliver_signals(tid);
        if !k.runnable(tid) {
            continue;
        }
        k = enter(shared, k, i, tid)?;
    }
}

/// Runs `tid` on vCPU `i` until it stops being the one to run there.
fn enter<'a>(
    shared: &'a Shared,
    mut k: Guard<'a>,
    i: usize,
    tid: Pid,
) -> Result<Guard<'a>, LinuxError> {
    k.cpus[i].running = Some(tid);
    let r = loop {
        if let Err(e) = k.load_regs(tid) {
            break Err(e);
        }
        let mut vcpu = k.cpus[i].vcpu.take().expect("the vCPU is home");
        let in_guest = k.cpus[i].in_guest.clone();
        in_guest.store(true, Ordering::SeqCst);
        drop(k);
        let trap = match vcpu.run() {
            Ok(VcpuEvent::IoOut(port, _)) | Ok(VcpuEvent::IoIn(port, _)) => Ok(Trap::Port(port)),
            Ok(VcpuEvent::Interrupted) => Ok(Trap::Interrupted),
            Ok(VcpuEvent::Shutdown) => Ok(Trap::Crash("the vCPU triple-faulted".into())),
            Ok(VcpuEvent::MmioRead(a, _)) | Ok(VcpuEvent::MmioWrite(a, _)) => Ok(Trap::Crash(
                format!("access to guest-physical {a:#x}, which is not RAM"),
            )),
            Ok(VcpuEvent::Fault(why)) => Ok(Trap::Crash(why)),
            Err(e) => Err(LinuxError::Vcpu(e)),
        };
        in_guest.store(false, Ordering::SeqCst);
        k = shared.lock(i);
        k.cpus[i].vcpu = Some(vcpu);
        let trap = match trap {
            Ok(t) => t,
            Err(e) => break Err(e),
        };
        if !k.table.threads.contains_key(&tid) {
            // Another vCPU ended the thread (exit_group, exec, SIGKILL)
            // while it ran here: whatever it trapped for is moot.
            break Ok(());
        }
        k.save_regs(tid);
        let go_on = match trap {
            Trap::Port(SYSCALL_PORT) => k.on_syscall(tid),
            Trap::Port(p) if (EXCEPTION_PORT_BASE..EXCEPTION_PORT_BASE + 32).contains(&p) => {
                match k.on_exception(tid, (p - EXCEPTION_PORT_BASE) as u8) {
                    Ok(go) => go,
                    Err(e) => break Err(e),
                }
            }
            Trap::Port(p) => {
                tracing::debug!("thread {tid} wrote port {p:#x} itself");
                k.force_signal(tid, SigInfo::fault(crate::signal::SIGSEGV, 0x80, 0));
                false
            }
            // A time-slice tick, a kick from another vCPU or the stop:
            // back to the scheduler, which sees which.
            Trap::Interrupted => false,
            Trap::Crash(why) => break Err(LinuxError::Crash(why)),
        };
        k.after_trap();
        if let Err(e) = flint_executor::seccomp::check() {
            // The VMM itself made a call its filter refuses while
            // answering this VM: the VM ends, the host process does not.
            break Err(LinuxError::Crash(e.to_string()));
        }
        if !go_on
            || !k.runnable(tid)
            || k.has_deliverable(tid)
            || k.init_exit.is_some()
            || k.control.stop.load(Ordering::SeqCst)
            || k.control.freezing.load(Ordering::SeqCst)
        {
            break Ok(());
        }
    };
    k.cpus[i].running = None;
    r.map(|()| k)
}

/// A freeze is asked for: once no other vCPU runs a thread (each leaves
/// the guest at its next trap or kick and comes back to its loop), this
/// one copies the container into a template (`freeze.rs`) and sends it.
fn freeze_point<'a>(shared: &'a Shared, k: Guard<'a>, i: usize) -> Guard<'a> {
    let busy: Vec<libc::pthread_t> = k
        .cpus
        .iter()
        .enumerate()
        .filter(|(j, c)| *j != i && c.running.is_some())
        .filter_map(|(_, c)| c.host)
        .collect();
    if busy.is_empty() {
        let mut k = k;
        let asker = k
            .control
            .freeze
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        k.control.freezing.store(false, Ordering::SeqCst);
        if let Some(r) = asker {
            let _ = r.done.send(k.capture(r.memory));
        }
        return k;
    }
    for h in busy {
        vcpu::kick(h);
    }
    drop(k);
    std::thread::sleep(Duration::from_micros(50));
    shared.lock(i)
}

/// Nothing can run on vCPU `i`: sleeps, without the lock, until the
/// nearest deadline, a host fd waited on, or a wake-up from another vCPU.
fn idle<'a>(shared: &'a Shared, mut k: Guard<'a>, i: usize) -> Guard<'a> {
    let (mut fds, wait_ns) = k.idle_plan();
    let wake = std::os::fd::AsRawFd::as_raw_fd(&k.wake);
    fds.push(libc::pollfd {
        fd: wake,
        events: libc::POLLIN,
        revents: 0,
    });
    k.idle_cpus += 1;
    drop(k);
    let ts = libc::timespec {
        tv_sec: (wait_ns / 1_000_000_000) as i64,
        tv_nsec: (wait_ns % 1_000_000_000) as i64,
    };
    // SAFETY: `fds` is a valid array of pollfd of the given length and
    // `ts` a valid timespec; no signal mask is passed.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    let mut word = 0u64;
    // SAFETY: reads at most 8 bytes into `word` from the non-blocking
    // eventfd (nothing to read is EAGAIN).
    unsafe { libc::read(wake, (&mut word as *mut u64).cast(), 8) };
    let mut k = shared.lock(i);
    k.idle_cpus -= 1;
    if k.table.threads.is_empty() && k.init_exit.is_none() {
        k.init_exit = Some(ExitStatus::Exited(0));
    }
    k
}

impl Kernel {
    /// The vCPU of the current system call.
    pub fn vcpu(&mut self) -> &mut Vcpu {
        self.cpus[self.current]
            .vcpu
            .as_mut()
            .expect("the current vCPU is home while it traps")
    }

    /// True when another vCPU runs `tid` now.
    pub(super) fn running_elsewhere(&self, tid: Pid) -> bool {
        self.cpus
            .iter()
            .enumerate()
            .any(|(j, c)| j != self.current && c.running == Some(tid))
    }

    /// The vCPU `tid`'s registers and FPU state are on, if any.
    fn home_of(&self, tid: Pid) -> Option<usize> {
        self.cpus.iter().position(|c| c.loaded == Some(tid))
    }

    /// Forgets that `tid` is on any vCPU (it ended).
    pub fn unload(&mut self, tid: Pid) {
        for c in &mut self.cpus {
            if c.loaded == Some(tid) {
                c.loaded = None;
            }
        }
    }

    /// Saves this vCPU's thread (if another) and loads `tid`, fetching
    /// its FPU state from the vCPU it last ran on.
    pub(super) fn switch_to(&mut self, tid: Pid) -> Result<(), LinuxError> {
        let cur = self.current;
        if self.cpus[cur].loaded == Some(tid) {
            return Ok(());
        }
        if let Some(old) = self.cpus[cur].loaded.take() {
            if self.table.threads.contains_key(&old) {
                let fpu = self.vcpu().xsave().map_err(LinuxError::Vcpu)?;
                self.thread_mut(old).fpu = Some(fpu);
            }
        }
        if let Some(j) = self.home_of(tid) {
            // Its state is on an idle vCPU (one running it would have it
            // in `running`, and pick skips those).
            if let Some(v) = self.cpus[j].vcpu.as_ref() {
                let fpu = v.xsave().map_err(LinuxError::Vcpu)?;
                self.thread_mut(tid).fpu = Some(fpu);
            }
            self.cpus[j].loaded = None;
        }
        let fpu = self.thread_mut(tid).fpu.take();
        let fpu = fpu.unwrap_or_else(|| copy_xsave(&self.clean_fpu));
        self.vcpu().set_xsave(&fpu).map_err(LinuxError::Vcpu)?;
        self.cpus[cur].loaded = Some(tid);
        self.cpus[cur].sregs_dirty = true;
        Ok(())
    }

    /// Marks `tid`'s special registers as changed (a new CR3 after exec,
    /// a new FS base).
    pub fn sregs_changed(&mut self, tid: Pid) {
        if let Some(j) = self.home_of(tid) {
            self.cpus[j].sregs_dirty = true;
        }
    }

    pub fn clean_fpu_copy(&self) -> Box<kvm_bindings::kvm_xsave> {
        copy_xsave(&self.clean_fpu)
    }

    /// The FPU state of `tid`: from its vCPU if it is loaded on one.
    pub(super) fn fpu_of(&mut self, tid: Pid) -> Box<kvm_bindings::kvm_xsave> {
        let on_cpu = self
            .home_of(tid)
            .and_then(|j| self.cpus[j].vcpu.as_ref())
            .and_then(|v| v.xsave().ok());
        on_cpu
            .or_else(|| self.thread(tid).fpu.as_deref().map(copy_xsave))
            .unwrap_or_else(|| copy_xsave(&self.clean_fpu))
    }

    /// Puts `area` as `tid`'s FPU state.
    fn set_fpu(&mut self, tid: Pid, area: Box<kvm_bindings::kvm_xsave>) {
        match self.home_of(tid) {
            Some(j) if self.cpus[j].vcpu.is_some() => {
                let v = self.cpus[j].vcpu.as_ref().expect("checked");
                let _ = v.set_xsave(&area);
            }
            home => {
                if let Some(j) = home {
                    self.cpus[j].loaded = None;
                }
                self.thread_mut(tid).fpu = Some(area);
            }
        }
    }

    /// Gives `tid` a fresh FPU state (after exec).
    pub fn reset_fpu(&mut self, tid: Pid) {
        let clean = copy_xsave(&self.clean_fpu);
        self.set_fpu(tid, clean);
    }

    /// `tid`'s FPU state as an FXSAVE image (signal frames).
    pub fn fxsave_of(&mut self, tid: Pid) -> Vec<u8> {
        self.fpu_of(tid).region[..128]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// Puts an FXSAVE image back (rt_sigreturn).
    pub fn set_fxsave(&mut self, tid: Pid, image: &[u8]) {
        let mut area = self.fpu_of(tid);
        for (i, w) in image.chunks_exact(4).take(128).enumerate() {
            area.region[i] = u32::from_le_bytes(w.try_into().expect("4 bytes"));
        }
        // MXCSR reserved bits would make XRSTOR fault: keep them clear.
        area.region[6] &= 0xffff;
        self.set_fpu(tid, area);
    }

    /// Writes the thread's registers into the sync-regs area (by ioctl
    /// before the first exit, when the area holds nothing yet).
    fn load_regs(&mut self, tid: Pid) -> Result<(), LinuxError> {
        let cur = self.current;
        let t = &self.table.threads[&tid];
        let (regs, fs, gs) = (t.regs, t.fs_base, t.gs_base);
        let cr3 = self.table.procs[&t.pid].mm.borrow().pml4;
        if !self.cpus[cur].sync_valid {
            let vcpu = self.vcpu();
            let mut s = vcpu.sregs().map_err(LinuxError::Vcpu)?;
            arch::set_user_segments(&mut s);
            s.cr3 = cr3;
            s.fs.base = fs;
            s.gs.base = gs;
            vcpu.set_sregs(&s).map_err(LinuxError::Vcpu)?;
            vcpu.set_regs(&regs).map_err(LinuxError::Vcpu)?;
            self.cpus[cur].sregs_dirty = false;
            self.cpus[cur].sync_valid = true;
            return Ok(());
        }
        let dirty = self.cpus[cur].sregs_dirty;
        let vcpu = self.vcpu();
        let sync = vcpu.sync_regs_mut();
        sync.regs = regs;
        let mut sregs_dirty = dirty;
        if !arch::at_user_segments(&sync.sregs) {
            arch::set_user_segments(&mut sync.sregs);
            sregs_dirty = true;
        }
        if sync.sregs.cr3 != cr3 || sync.sregs.fs.base != fs || sync.sregs.gs.base != gs {
            sregs_dirty = true;
        }
        if sregs_dirty {
            sync.sregs.cr3 = cr3;
            sync.sregs.fs.base = fs;
            sync.sregs.gs.base = gs;
        }
        vcpu.mark_sync_dirty(true, sregs_dirty);
        self.cpus[cur].sregs_dirty = false;
        Ok(())
    }

    /// Copies the registers after an exit back into the thread.
    fn save_regs(&mut self, tid: Pid) {
        let sync = self.vcpu().sync_regs_mut();
        let regs = sync.regs;
        let cr2 = sync.sregs.cr2;
        let t = self.thread_mut(tid);
        t.regs = regs;
        t.last_cr2 = cr2;
    }

    /// Points this vCPU's LSTAR at the entry's fast path once a `syscall`
    /// is seen to have stayed at CPL 3 (PVM): there the guest answers the
    /// time calls itself. On real KVM the `syscall` arrives at CPL 0 and
    /// every call keeps coming to the VMM.
    pub(super) fn enable_fast_entry(&mut self) {
        if !self.clock.guest_readable()
            || !arch::at_user_segments(&self.vcpu().sync_regs_mut().sregs)
        {
            return;
        }
        let lstar = arch::syscall_entry() + entry::fast_offset();
        match self.vcpu().set_msrs(&[(arch::MSR_LSTAR, lstar)]) {
            Ok(()) => self.cpus[self.current].fast_entry = true,
            Err(e) => tracing::warn!("the time calls stay with the VMM: setting LSTAR failed: {e}"),
        }
    }

    /// RFLAGS for the return from a system call: with the fast entry on,
    /// R11 may hold RDX (and under PVM never held the flags: it reads
    /// 0x202).
    pub(super) fn syscall_flags(&self, r11: u64) -> u64 {
        if self.cpus[self.current].fast_entry {
            0x202
        } else {
            sanitize_flags(r11)
        }
    }

    /// Takes every other vCPU out of the guest and keeps it out until
    /// the lock is let go (a vCPU re-enters only with the lock).
    pub(super) fn stop_others(&self) {
        for (j, c) in self.cpus.iter().enumerate() {
            if j == self.current {
                continue;
            }
            while c.in_guest.load(Ordering::SeqCst) {
                // A kick that lands just before KVM_RUN is lost: repeat.
                if let Some(h) = c.host {
                    vcpu::kick(h);
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// The container is over: every vCPU leaves the guest and its loop.
    fn stop_all(&self) {
        self.control.stop.store(true, Ordering::SeqCst);
        for c in &self.cpus {
            if let Some(h) = c.host {
                vcpu::kick(h);
            }
        }
        self.wake_idle();
    }

    /// Wakes the idle vCPUs.
    fn wake_idle(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to the eventfd.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&self.wake),
                (&one as *const u64).cast(),
                8,
            )
        };
    }

    /// After a trap: vCPUs running threads that ended or have a signal
    /// to take are kicked back to the scheduler, and idle ones are woken
    /// if there may be work for them.
    fn after_trap(&mut self) {
        for (j, c) in self.cpus.iter().enumerate() {
            let Some(t) = c.running else { continue };
            if j == self.current {
                continue;
            }
            let stale = !self.table.threads.contains_key(&t) || self.has_deliverable(t);
            if stale {
                if let Some(h) = c.host {
                    vcpu::kick(h);
                }
            }
        }
        if self.idle_cpus == 0 {
            return;
        }
        let work = self.table.threads.values().any(|t| {
            !self.cpus.iter().any(|c| c.running == Some(t.tid))
                && match &t.blocked {
                    None => true,
                    Some(b) => {
                        b.result.is_some()
                            || !matches!(b.wait, Wait::Sleep(_) | Wait::Futex { .. } | Wait::Signal)
                    }
                }
        });
        if work {
            self.wake_idle();
        }
    }

    /// What an idle vCPU waits for: the host fds threads wait on, and
    /// how long until the nearest deadline (at most a tick, to see the
    /// stop flag).
    fn idle_plan(&self) -> (Vec<libc::pollfd>, u64) {
        let now = self.mono_ns();
        let mut deadline: Option<u64> = None;
        let mut fds: Vec<libc::pollfd> = Vec::new();
        for t in self.table.threads.values() {
            let Some(b) = &t.blocked else { continue };
            let d = match &b.wait {
                Wait::Sleep(d) => Some(*d),
                Wait::Futex { deadline, .. } | Wait::Poll { deadline } => *deadline,
                _ => None,
            };
            if let Some(d) = d {
                deadline = Some(deadline.map_or(d, |x: u64| x.min(d)));
            }
            match &b.wait {
                Wait::HostRead(fd) => fds.push(libc::pollfd {
                    fd: *fd,
                    events: libc::POLLIN,
                    revents: 0,
                }),
                Wait::Poll { .. } => {
                    for fd in crate::syscalls::poll::host_fds_of(self, t.tid) {
                        fds.push(libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        });
                    }
                }
                _ => {}
            }
        }
        // Only host fds that are not ready yet can wake anyone: one ready
        // now that its waiter still blocks on is not what it waits for
        // (poll and epoll sets are not told apart here; a program's stdin
        // at end of file would otherwise wake this vCPU at once, again and
        // again, and an idle multi-threaded server spun both vCPUs).
        if !fds.is_empty() {
            // SAFETY: `fds` is a valid array of pollfd of its length; a
            // zero timeout only reports.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            fds.retain(|p| p.revents == 0);
        }
        let timers = self
            .table
            .procs
            .values()
            .filter_map(|p| p.itimer.map(|(at, _)| at));
        for at in timers.chain(self.next_posix_timer()) {
            deadline = Some(deadline.map_or(at, |x: u64| x.min(at)));
        }
        let tick = super::TICK.as_nanos() as u64;
        let wait_ns = deadline
            .map_or(tick, |d| d.saturating_sub(now))
            .clamp(20_000, tick);
        (fds, wait_ns)
    }
}
