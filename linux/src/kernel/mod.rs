//! The VMM side of a Linux VM: one vCPU that the VMM time-shares between
//! the container's threads, as a kernel's scheduler would.
//!
//! The loop: wake threads whose wait has ended, pick the next runnable
//! one, load its registers (and page tables, thread pointer, FPU state)
//! into the vCPU, run until the guest traps, and handle the trap: a system
//! call (`syscalls/`), a page fault or another exception (`trap.rs`). A
//! thread keeps the vCPU across system calls until it blocks, exits, or
//! its time slice ends (the supervising thread kicks the vCPU every
//! [`TICK`]).

mod trap;
pub mod uaccess;

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flint_executor::vstate::vcpu::{Vcpu, VcpuEvent};
use flint_executor::vstate::vm::Vm;
use kvm_bindings::kvm_regs;

use crate::arch::{self, EXCEPTION_PORT_BASE, SYSCALL_PORT};
use crate::entry::{self, Clock};
use crate::fs::file::{FdTable, Kind, OpenFile};
use crate::fs::root::Root;
use crate::mm::{AddressSpace, Frames};
use crate::signal::{SigActions, SigInfo};
use crate::syscalls::{self, Stop};
use crate::task::{Blocked, ExitStatus, Pid, Process, Table, Thread, Wait};
use crate::LinuxError;

/// The host calls the Linux layer makes on the vCPU thread beyond every
/// vCPU thread's (`flint_executor::seccomp::VCPU_BASE`): files inside the
/// root (always through `openat2(RESOLVE_IN_ROOT)` or an fd from it),
/// the reset of the VM's translations, and its sleeps. No `execve`,
/// `socket`, `clone`, `ptrace`, `mount` or `kill`.
pub const HOST_CALLS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open,
    libc::SYS_pwrite64,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_fchmod,
    libc::SYS_chmod,
    libc::SYS_fchmodat,
    libc::SYS_ftruncate,
    libc::SYS_utimensat,
    libc::SYS_fstatfs,
];

/// Time slice: the supervisor kicks the vCPU this often, so that a thread
/// that never makes a system call cannot keep the others from running.
pub const TICK: Duration = Duration::from_millis(10);

/// Flags the supervising thread sets for the vCPU thread, and what other
/// threads ask of the container or read about it.
#[derive(Debug, Default)]
pub struct Control {
    pub stop: AtomicBool,
    pub tick: AtomicBool,
    /// Processes to start beside process 1 (`Container::exec`).
    pub spawns: std::sync::Mutex<Vec<SpawnRequest>>,
    /// The container's processes (pid, command line), kept current.
    pub processes: std::sync::Mutex<Vec<(Pid, String)>>,
    /// The VM's memory and vCPU thread, for stats.
    pub probe: std::sync::Mutex<Option<flint_executor::VmProbe>>,
}

/// A process to start in a running container.
#[derive(Debug)]
pub struct SpawnRequest {
    pub program: Program,
    pub stdio: Stdio,
    pub signals: Arc<std::sync::atomic::AtomicU64>,
    pub done: std::sync::mpsc::Sender<Result<ExitStatus, LinuxError>>,
}

/// Limits of one container.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_processes: usize,
    /// Signals for process 1 from outside the VM.
    pub signals: Option<Arc<std::sync::atomic::AtomicU64>>,
}

pub struct Kernel {
    pub vm: Vm,
    pub vcpu: Vcpu,
    pub frames: Frames,
    pub root: Root,
    pub table: Table,
    pub limits: Limits,
    pub control: Arc<Control>,
    /// The thread whose registers are on the vCPU.
    loaded: Option<Pid>,
    /// Set when the loaded thread's special registers (CR3, FS base) must
    /// be written at the next entry.
    sregs_dirty: bool,
    /// The sync-regs area holds the vCPU's registers (after the first exit).
    sync_valid: bool,
    /// FPU state of a fresh process.
    clean_fpu: Box<kvm_bindings::kvm_xsave>,
    /// The guest's clocks (also read by the guest itself, `entry`).
    pub clock: Clock,
    /// System calls answered by the VMM so far.
    pub vmm_calls: u64,
    /// The vDSO image every program gets (`crate::vdso`).
    pub vdso: Vec<u8>,
    /// LSTAR points at the entry's fast path (`syscall` was seen to stay
    /// at CPL 3).
    fast_entry: bool,
    pub next_mm_id: usize,
    pub next_pipe_id: usize,
    pub init_exit: Option<ExitStatus>,
    /// A process was killed for want of guest memory.
    pub oom_killed: bool,
    /// System calls already reported as unimplemented.
    pub warned: std::collections::BTreeSet<u64>,
    /// Set while a blocked call is retried: the wait it was in.
    pub retrying: Option<Wait>,
    pub hostname: String,
    /// Processes started from outside, with their signal masks.
    outside: Vec<(Pid, Arc<std::sync::atomic::AtomicU64>)>,
}

fn self_has(t: &Table, pid: Pid) -> bool {
    t.procs.get(&pid).is_some_and(|p| p.exit.is_none())
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

/// What the program is started with.
#[derive(Debug, Clone)]
pub struct Program {
    /// The program's path inside the root.
    pub path: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
}

/// The container's standard streams (host fds).
#[derive(Debug)]
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Kernel {
    /// Creates the VM, its vCPU and the kernel area.
    pub fn new(
        memory_mib: u64,
        root: Root,
        limits: Limits,
        control: Arc<Control>,
    ) -> Result<Self, LinuxError> {
        let mem_size = memory_mib << 20;
        let vm = Vm::new(mem_size as usize).map_err(LinuxError::Vm)?;
        let frames = Frames::new(vm.memory().clone(), mem_size);
        let mut vcpu = vm.create_vcpu(0).map_err(LinuxError::Vm)?;
        let clock = Clock::new(|| vcpu.guest_tsc().ok(), vcpu.tsc_khz());
        for (addr, bytes) in arch::kernel_pages(entry::block(&clock)) {
            frames.write(addr, &bytes);
        }
        let cpuid = vm.supported_cpuid().map_err(LinuxError::Vm)?;
        vcpu.set_cpuid(&cpuid).map_err(LinuxError::Vcpu)?;
        let sregs = vcpu.sregs().map_err(LinuxError::Vcpu)?;
        vcpu.set_sregs(&arch::user_sregs(sregs, 0))
            .map_err(LinuxError::Vcpu)?;
        vcpu.set_msrs(&arch::syscall_msrs())
            .map_err(LinuxError::Vcpu)?;
        // x87, SSE and AVX state (the guest sees the host's CPUID, so
        // programs check XCR0 before using more).
        let _ = vcpu.set_xcr0(0x7).or_else(|_| vcpu.set_xcr0(0x3));
        vcpu.enable_sync_regs();
        let clean_fpu = vcpu.xsave().map_err(LinuxError::Vcpu)?;
        Ok(Self {
            vm,
            vcpu,
            frames,
            root,
            table: Table {
                next_pid: 1,
                ..Table::default()
            },
            limits,
            control,
            loaded: None,
            sregs_dirty: true,
            sync_valid: false,
            clean_fpu,
            vmm_calls: 0,
            vdso: if clock.guest_readable() {
                crate::vdso::image(&clock)
            } else {
                Vec::new()
            },
            clock,
            fast_entry: false,
            next_mm_id: 1,
            next_pipe_id: 1,
            init_exit: None,
            oom_killed: false,
            warned: Default::default(),
            retrying: None,
            hostname: "flint".into(),
            outside: Vec::new(),
        })
    }

    /// Nanoseconds on the guest's monotonic clock.
    pub fn mono_ns(&self) -> u64 {
        self.clock.mono_ns()
    }

    pub fn wall_ns(&self) -> u64 {
        self.clock.wall_ns()
    }

    pub fn thread(&self, tid: Pid) -> &Thread {
        &self.table.threads[&tid]
    }

    pub fn thread_mut(&mut self, tid: Pid) -> &mut Thread {
        self.table.threads.get_mut(&tid).expect("live thread")
    }

    pub fn proc_of(&self, tid: Pid) -> &Process {
        &self.table.procs[&self.table.threads[&tid].pid]
    }

    pub fn proc_of_mut(&mut self, tid: Pid) -> &mut Process {
        let pid = self.table.threads[&tid].pid;
        self.table.procs.get_mut(&pid).expect("live process")
    }

    pub fn mm_of(&self, tid: Pid) -> Rc<RefCell<AddressSpace>> {
        self.proc_of(tid).mm.clone()
    }

    pub fn fds_of(&self, tid: Pid) -> Rc<RefCell<FdTable>> {
        self.proc_of(tid).fds.clone()
    }

    /// Makes KVM drop translations it may have cached for entries the VMM
    /// changed, then frees quarantined frames.
    pub fn reset_translations(&mut self) {
        if let Err(e) = self.vm.reset_translations() {
            tracing::error!("resetting guest translations failed: {e}");
            return;
        }
        self.frames.release_quarantine();
        for p in self.table.procs.values() {
            p.mm.borrow_mut().translations_reset();
        }
    }

    /// Gives frames an address space let go of back (through quarantine).
    pub fn release(&mut self, released: crate::mm::space::Released) {
        for f in released.frames {
            self.frames.release(f);
        }
    }

    /// Creates process 1 from `program`.
    pub fn spawn_init(&mut self, program: &Program, stdio: Stdio) -> Result<(), LinuxError> {
        self.spawn(1, 0, program, stdio)
    }

    /// Starts the processes asked for from outside (`Container::exec`):
    /// each beside process 1, with no parent in the VM; its status goes to
    /// the asker when it ends.
    fn spawn_requested(&mut self) {
        let reqs: Vec<SpawnRequest> = std::mem::take(
            &mut *self
                .control
                .spawns
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for r in reqs {
            let live = self.table.procs.values().filter(|p| !p.reaped).count();
            if live >= self.limits.max_processes {
                let _ = r.done.send(Err(LinuxError::Exec {
                    path: r.program.path.clone(),
                    source: std::io::Error::from_raw_os_error(libc::EAGAIN),
                }));
                continue;
            }
            let pid = self.table.next_pid;
            self.table.next_pid += 1;
            match self.spawn(pid, 0, &r.program, r.stdio) {
                Ok(()) => {
                    let p = self.table.procs.get_mut(&pid).expect("spawned");
                    p.notify = Some(r.done);
                    self.outside.push((pid, r.signals));
                }
                Err(e) => {
                    self.table.procs.remove(&pid);
                    self.table.threads.remove(&pid);
                    let _ = r.done.send(Err(e));
                }
            }
        }
    }

    /// Publishes the process list (for `ctr task ps`).
    fn publish_processes(&self) {
        let list: Vec<(Pid, String)> = self
            .table
            .procs
            .values()
            .filter(|p| p.exit.is_none())
            .map(|p| {
                let cmd: Vec<String> = p
                    .cmdline
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                (p.pid, cmd.join(" "))
            })
            .collect();
        *self
            .control
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = list;
    }

    /// Creates process `pid` (parent `ppid`) running `program`.
    fn spawn(
        &mut self,
        pid: Pid,
        ppid: Pid,
        program: &Program,
        stdio: Stdio,
    ) -> Result<(), LinuxError> {
        let mut fds = FdTable::default();
        let stream = |fd: OwnedFd, readable: bool| {
            OpenFile::new(
                Kind::Stream {
                    fd: Rc::new(fd),
                    readable,
                },
                if readable {
                    libc::O_RDONLY
                } else {
                    libc::O_WRONLY
                },
            )
        };
        fds.set(0, stream(stdio.stdin, true), false);
        fds.set(1, stream(stdio.stdout, false), false);
        fds.set(2, stream(stdio.stderr, false), false);
        let mm = AddressSpace::new(&mut self.frames).map_err(|_| LinuxError::NoMemory)?;
        if pid == 1 {
            self.table.next_pid = 2;
        }
        let mm_id = self.next_mm_id;
        self.next_mm_id += 1;
        self.table.procs.insert(
            pid,
            Process {
                pid,
                ppid,
                pgid: pid,
                sid: pid,
                mm: Rc::new(RefCell::new(mm)),
                mm_id,
                fds: Rc::new(RefCell::new(fds)),
                actions: Rc::new(RefCell::new(SigActions::default())),
                cwd: "/".into(),
                umask: 0o022,
                exe: String::new(),
                cmdline: Vec::new(),
                environ: Vec::new(),
                threads: vec![pid],
                exit: None,
                children: Vec::new(),
                exit_signal: 0,
                reaped: false,
                vfork_parent: None,
                start_ns: self.mono_ns(),
                itimer: None,
                notify: None,
            },
        );
        self.table.threads.insert(pid, Thread::new(pid, pid));
        self.proc_of_mut(pid).cwd = program.workdir.clone();
        let argv: Vec<Vec<u8>> = program.argv.iter().map(|a| a.as_bytes().to_vec()).collect();
        let envp: Vec<Vec<u8>> = program
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect();
        match syscalls::proc::exec(self, pid, program.path.as_bytes(), argv, envp) {
            Ok(_) | Err(Stop::NoResult) => Ok(()),
            Err(Stop::Errno(n)) => Err(LinuxError::Exec {
                path: program.path.clone(),
                source: std::io::Error::from_raw_os_error(n),
            }),
            Err(_) => Err(LinuxError::Exec {
                path: program.path.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOEXEC),
            }),
        }
    }

    /// Runs until process 1 exits; its status is the container's. The
    /// thread is confined first: the calls of `VCPU_BASE` and of the file
    /// operations the system-call layer makes inside the root.
    pub fn run(&mut self) -> Result<ExitStatus, LinuxError> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        *self.control.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(
            flint_executor::VmProbe::for_thread(self.vm.memory().clone(), tid),
        );
        if let Err(e) = flint_executor::seccomp::confine_thread(HOST_CALLS) {
            tracing::warn!("the vCPU thread runs without its seccomp filter: {e}");
        }
        let mut last = 0;
        loop {
            if let Some(st) = self.init_exit {
                return Ok(st);
            }
            if self.control.stop.load(Ordering::SeqCst) {
                return Err(LinuxError::Timeout);
            }
            self.outside_signals();
            self.spawn_requested();
            self.publish_processes();
            self.wake_ready();
            if let Some(st) = self.init_exit {
                return Ok(st);
            }
            let Some(tid) = self.pick(last) else {
                self.idle();
                continue;
            };
            last = tid;
            self.switch_to(tid)?;
            self.deliver_signals(tid);
            if !self.runnable(tid) {
                continue;
            }
            self.enter(tid)?;
        }
    }

    /// Delivers signals sent from outside (the shim's Kill) to process 1
    /// and to processes started by `exec`: SIGKILL always ends them; other
    /// signals reach them only if they handle them (a PID namespace's init
    /// is protected so; an exec'd process is treated alike).
    fn outside_signals(&mut self) {
        let mut targets: Vec<(Pid, u64)> = Vec::new();
        if let Some(sigs) = &self.limits.signals {
            targets.push((1, sigs.swap(0, Ordering::SeqCst)));
        }
        self.outside.retain(|(pid, _)| self_has(&self.table, *pid));
        for (pid, sigs) in &self.outside {
            targets.push((*pid, sigs.swap(0, Ordering::SeqCst)));
        }
        for (pid, mut mask) in targets {
            while mask != 0 {
                let sig = mask.trailing_zeros() as i32 + 1;
                mask &= mask - 1;
                if sig == crate::signal::SIGKILL {
                    self.exit_process(
                        pid,
                        ExitStatus::Signaled {
                            signal: sig,
                            core: false,
                        },
                    );
                    break;
                }
                let handled = self.table.procs.get(&pid).is_some_and(|p| {
                    let h = p.actions.borrow().get(sig).handler;
                    h != crate::signal::SIG_DFL && h != crate::signal::SIG_IGN
                });
                if handled {
                    self.signal_process(pid, SigInfo::user(sig, 0));
                }
            }
        }
    }

    fn runnable(&self, tid: Pid) -> bool {
        self.table
            .threads
            .get(&tid)
            .is_some_and(|t| t.blocked.is_none())
    }

    /// The next runnable thread after `last`, round robin.
    fn pick(&self, last: Pid) -> Option<Pid> {
        let after = self
            .table
            .threads
            .range(last + 1..)
            .find(|(_, t)| t.blocked.is_none())
            .map(|(&t, _)| t);
        after.or_else(|| {
            self.table
                .threads
                .range(..=last)
                .find(|(_, t)| t.blocked.is_none())
                .map(|(&t, _)| t)
        })
    }

    /// Saves the loaded thread (if another) and loads `tid`.
    fn switch_to(&mut self, tid: Pid) -> Result<(), LinuxError> {
        if self.loaded == Some(tid) {
            return Ok(());
        }
        if let Some(old) = self.loaded.take() {
            if self.table.threads.contains_key(&old) {
                let fpu = self.vcpu.xsave().map_err(LinuxError::Vcpu)?;
                self.thread_mut(old).fpu = Some(fpu);
            }
        }
        let fpu = self.thread_mut(tid).fpu.take();
        let fpu = fpu.as_deref().unwrap_or(&self.clean_fpu);
        self.vcpu.set_xsave(fpu).map_err(LinuxError::Vcpu)?;
        self.loaded = Some(tid);
        self.sregs_dirty = true;
        Ok(())
    }

    /// Marks the loaded thread's special registers as changed (a new CR3
    /// after exec, a new FS base).
    pub fn sregs_changed(&mut self, tid: Pid) {
        if self.loaded == Some(tid) {
            self.sregs_dirty = true;
        }
    }

    pub fn clean_fpu_copy(&self) -> Box<kvm_bindings::kvm_xsave> {
        copy_xsave(&self.clean_fpu)
    }

    /// Gives `tid` a fresh FPU state (after exec).
    pub fn reset_fpu(&mut self, tid: Pid) {
        if self.loaded == Some(tid) {
            let _ = self.vcpu.set_xsave(&self.clean_fpu);
        } else {
            self.thread_mut(tid).fpu = None;
        }
    }

    /// The loaded thread's FPU state as an FXSAVE image (signal frames).
    pub fn fxsave_of(&mut self, tid: Pid) -> Vec<u8> {
        let area = if self.loaded == Some(tid) {
            self.vcpu.xsave().ok()
        } else {
            self.thread(tid).fpu.as_deref().map(copy_xsave)
        };
        let area = area.unwrap_or_else(|| copy_xsave(&self.clean_fpu));
        area.region[..128]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    /// Puts an FXSAVE image back (rt_sigreturn).
    pub fn set_fxsave(&mut self, tid: Pid, image: &[u8]) {
        let mut area = if self.loaded == Some(tid) {
            self.vcpu
                .xsave()
                .unwrap_or_else(|_| copy_xsave(&self.clean_fpu))
        } else {
            self.thread(tid)
                .fpu
                .as_deref()
                .map(copy_xsave)
                .unwrap_or_else(|| copy_xsave(&self.clean_fpu))
        };
        for (i, w) in image.chunks_exact(4).take(128).enumerate() {
            area.region[i] = u32::from_le_bytes(w.try_into().expect("4 bytes"));
        }
        // MXCSR reserved bits would make XRSTOR fault: keep them clear.
        area.region[6] &= 0xffff;
        if self.loaded == Some(tid) {
            let _ = self.vcpu.set_xsave(&area);
        } else {
            self.thread_mut(tid).fpu = Some(area);
        }
    }

    /// Runs `tid` on the vCPU until it stops being the one to run.
    fn enter(&mut self, tid: Pid) -> Result<(), LinuxError> {
        loop {
            self.load_regs(tid)?;
            let trap = match self.vcpu.run().map_err(LinuxError::Vcpu)? {
                VcpuEvent::IoOut(port, _) => Trap::Port(port),
                VcpuEvent::IoIn(port, _) => Trap::Port(port),
                VcpuEvent::Interrupted => Trap::Interrupted,
                VcpuEvent::Shutdown => Trap::Crash("the vCPU triple-faulted".into()),
                VcpuEvent::MmioRead(a, _) | VcpuEvent::MmioWrite(a, _) => {
                    Trap::Crash(format!("access to guest-physical {a:#x}, which is not RAM"))
                }
                VcpuEvent::Fault(why) => Trap::Crash(why),
            };
            self.save_regs(tid);
            let go_on = match trap {
                Trap::Port(SYSCALL_PORT) => self.on_syscall(tid),
                Trap::Port(p) if (EXCEPTION_PORT_BASE..EXCEPTION_PORT_BASE + 32).contains(&p) => {
                    self.on_exception(tid, (p - EXCEPTION_PORT_BASE) as u8)?
                }
                Trap::Port(p) => {
                    tracing::debug!("thread {tid} wrote port {p:#x} itself");
                    self.force_signal(tid, SigInfo::fault(crate::signal::SIGSEGV, 0x80, 0));
                    false
                }
                Trap::Interrupted => {
                    if self.control.tick.swap(false, Ordering::SeqCst) {
                        false
                    } else {
                        !self.control.stop.load(Ordering::SeqCst)
                    }
                }
                Trap::Crash(why) => return Err(LinuxError::Crash(why)),
            };
            if !go_on
                || !self.runnable(tid)
                || self.has_deliverable(tid)
                || self.init_exit.is_some()
            {
                return Ok(());
            }
            if self.control.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }

    /// Writes the thread's registers into the sync-regs area (by ioctl
    /// before the first exit, when the area holds nothing yet).
    fn load_regs(&mut self, tid: Pid) -> Result<(), LinuxError> {
        let t = &self.table.threads[&tid];
        let (regs, fs, gs) = (t.regs, t.fs_base, t.gs_base);
        let cr3 = self.table.procs[&t.pid].mm.borrow().pml4;
        if !self.sync_valid {
            let mut s = self.vcpu.sregs().map_err(LinuxError::Vcpu)?;
            arch::set_user_segments(&mut s);
            s.cr3 = cr3;
            s.fs.base = fs;
            s.gs.base = gs;
            self.vcpu.set_sregs(&s).map_err(LinuxError::Vcpu)?;
            self.vcpu.set_regs(&regs).map_err(LinuxError::Vcpu)?;
            self.sregs_dirty = false;
            self.sync_valid = true;
            return Ok(());
        }
        let dirty = self.sregs_dirty;
        let sync = self.vcpu.sync_regs_mut();
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
            tracing::trace!(
                "sregs reload: cs {:#x} cr3 {:#x}/{cr3:#x} fs {:#x}/{fs:#x} gs {:#x}/{gs:#x}",
                sync.sregs.cs.selector,
                sync.sregs.cr3,
                sync.sregs.fs.base,
                sync.sregs.gs.base
            );
            sync.sregs.cr3 = cr3;
            sync.sregs.fs.base = fs;
            sync.sregs.gs.base = gs;
        }
        self.vcpu.mark_sync_dirty(true, sregs_dirty);
        self.sregs_dirty = false;
        Ok(())
    }

    /// Copies the registers after an exit back into the thread.
    fn save_regs(&mut self, tid: Pid) {
        let sync = self.vcpu.sync_regs_mut();
        let regs = sync.regs;
        let cr2 = sync.sregs.cr2;
        let t = self.thread_mut(tid);
        t.regs = regs;
        t.last_cr2 = cr2;
    }

    fn on_syscall(&mut self, tid: Pid) -> bool {
        let r = self.thread(tid).regs;
        if r.rip != arch::syscall_entry() + entry::SLOW_EXIT_OFFSET {
            self.force_signal(tid, SigInfo::fault(crate::signal::SIGSEGV, 0x80, 0));
            return false;
        }
        if !self.fast_entry {
            self.enable_fast_entry();
        }
        self.vmm_calls += 1;
        let nr = r.rax;
        let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
        // With the fast entry on, R11 may hold RDX (and under PVM never
        // held the flags: it reads 0x202).
        let flags = if self.fast_entry {
            0x202
        } else {
            sanitize_flags(r.r11)
        };
        {
            let t = self.thread_mut(tid);
            t.regs.rip = r.rcx;
            t.regs.rflags = flags;
        }
        let ret = r.rcx;
        let r = syscalls::dispatch(self, tid, nr, args);
        tracing::trace!(
            "[{tid}] syscall {nr}({:#x}, {:#x}, {:#x}, {:#x}) = {r:?} from {:#x} cr3 {:#x}",
            args[0],
            args[1],
            args[2],
            args[3],
            ret,
            self.vcpu.sync_regs_mut().sregs.cr3
        );
        self.complete(tid, nr, args, r)
    }

    /// Points LSTAR at the entry's fast path once a `syscall` is seen to
    /// have stayed at CPL 3 (PVM): there the guest answers the time calls
    /// itself. On real KVM the `syscall` arrives at CPL 0 and every call
    /// keeps coming to the VMM.
    fn enable_fast_entry(&mut self) {
        if !self.clock.guest_readable() || !arch::at_user_segments(&self.vcpu.sync_regs_mut().sregs)
        {
            return;
        }
        let lstar = arch::syscall_entry() + entry::fast_offset();
        match self.vcpu.set_msrs(&[(arch::MSR_LSTAR, lstar)]) {
            Ok(()) => self.fast_entry = true,
            Err(e) => tracing::warn!("the time calls stay with the VMM: setting LSTAR failed: {e}"),
        }
    }

    /// Applies a system call's outcome; false when the thread must leave
    /// the vCPU.
    fn complete(&mut self, tid: Pid, nr: u64, args: [u64; 6], r: Result<u64, Stop>) -> bool {
        let Some(t) = self.table.threads.get_mut(&tid) else {
            return false;
        };
        match r {
            Ok(v) => {
                t.regs.rax = v;
                true
            }
            Err(Stop::Errno(e)) => {
                t.regs.rax = (-(e as i64)) as u64;
                true
            }
            Err(Stop::Block(wait)) => {
                t.blocked = Some(Blocked {
                    wait,
                    nr,
                    args,
                    result: None,
                });
                false
            }
            Err(Stop::Restart) => {
                t.regs.rax = (-(syscalls::ERESTARTSYS as i64)) as u64;
                t.restart = Some(nr);
                true
            }
            Err(Stop::Gone) => false,
            Err(Stop::Yield) => false,
            Err(Stop::NoResult) => true,
        }
    }

    /// Ends the waits that are over: completes or retries their calls.
    fn wake_ready(&mut self) {
        let now = self.mono_ns();
        self.fire_timers(now);
        let blocked: Vec<Pid> = self
            .table
            .threads
            .iter()
            .filter(|(_, t)| t.blocked.is_some())
            .map(|(&t, _)| t)
            .collect();
        for tid in blocked {
            let Some(b) = self.table.threads.get(&tid).and_then(|t| t.blocked.clone()) else {
                continue;
            };
            if let Some(res) = b.result {
                self.finish_blocked(tid, Ok(res as u64));
                continue;
            }
            if self.has_deliverable(tid) && !matches!(b.wait, Wait::Vfork(_)) {
                self.finish_blocked(tid, Err(Stop::Restart));
                continue;
            }
            let expired = |d: Option<u64>| d.is_some_and(|d| now >= d);
            match b.wait {
                Wait::Sleep(d) if now >= d => self.finish_blocked(tid, Ok(0)),
                Wait::Futex { deadline, .. } if expired(deadline) => {
                    self.finish_blocked(tid, Err(Stop::Errno(syscalls::ETIMEDOUT)))
                }
                Wait::Sleep(_) | Wait::Futex { .. } | Wait::Signal => {}
                Wait::Vfork(child) => {
                    let done = self
                        .table
                        .procs
                        .get(&child)
                        .is_none_or(|p| p.exit.is_some() || p.vfork_parent.is_none());
                    if done {
                        self.finish_blocked(tid, Ok(child as u64));
                    }
                }
                _ => {
                    // Pipes, host fds, children, polls: ask the call again.
                    self.retrying = Some(b.wait.clone());
                    let r = syscalls::dispatch(self, tid, b.nr, b.args);
                    self.retrying = None;
                    match r {
                        Err(Stop::Block(w)) => {
                            if let Some(t) = self.table.threads.get_mut(&tid) {
                                if let Some(bl) = &mut t.blocked {
                                    bl.wait = w;
                                }
                            }
                        }
                        r => self.finish_blocked(tid, r),
                    }
                }
            }
        }
    }

    fn finish_blocked(&mut self, tid: Pid, r: Result<u64, Stop>) {
        let Some(t) = self.table.threads.get_mut(&tid) else {
            return;
        };
        let Some(b) = t.blocked.take() else {
            return;
        };
        self.complete(tid, b.nr, b.args, r);
    }

    /// Nothing can run: sleep until the nearest deadline or a host fd.
    fn idle(&mut self) {
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
                    for fd in syscalls::poll::host_fds_of(self, t.tid) {
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
        for p in self.table.procs.values() {
            if let Some((at, _)) = p.itimer {
                deadline = Some(deadline.map_or(at, |x: u64| x.min(at)));
            }
        }
        // Wake at least every tick to see the stop flag.
        let wait_ns = deadline
            .map_or(TICK.as_nanos() as u64, |d| d.saturating_sub(now))
            .min(TICK.as_nanos() as u64);
        let ms = wait_ns.div_ceil(1_000_000) as i32;
        if fds.is_empty() {
            std::thread::sleep(Duration::from_nanos(wait_ns.max(50_000)));
        } else {
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        }
        if self.table.threads.is_empty() && self.init_exit.is_none() {
            self.init_exit = Some(ExitStatus::Exited(0));
        }
    }
}

/// A copy of an XSAVE area (`kvm_xsave` is not `Clone`).
pub fn copy_xsave(a: &kvm_bindings::kvm_xsave) -> Box<kvm_bindings::kvm_xsave> {
    let mut b = Box::new(kvm_bindings::kvm_xsave::default());
    b.region = a.region;
    b
}

enum Trap {
    Port(u16),
    Interrupted,
    Crash(String),
}

/// RFLAGS for the return to user code: the arithmetic and direction
/// flags the program had (from R11 where the CPU saved them), interrupts
/// on, IOPL 0 and nothing the VMM owns.
fn sanitize_flags(r11: u64) -> u64 {
    const KEEP: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800 | 0x4_0000 | 0x20_0000;
    (r11 & KEEP) | 0x202
}

impl Thread {
    pub fn new(tid: Pid, pid: Pid) -> Self {
        Self {
            tid,
            pid,
            regs: kvm_regs::default(),
            fs_base: 0,
            gs_base: 0,
            fpu: None,
            sigmask: 0,
            pending: Vec::new(),
            altstack: (0, 0, crate::signal::SS_DISABLE),
            clear_child_tid: 0,
            blocked: None,
            saved_mask: None,
            last_cr2: 0,
            restart: None,
            fault: None,
        }
    }
}
