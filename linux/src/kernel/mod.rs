//! The VMM side of a Linux VM: the container's state (processes,
//! threads, memory, files) and what its system calls and traps do to it.
//! Its vCPUs (`cpu.rs`) share it behind one lock, each running the
//! scheduler loop on its own host thread. A running container can be
//! frozen into a template and new VMs thawed from it (`freeze.rs`, over
//! the deep copy of `copy.rs`).

mod copy;
mod cpu;
mod freeze;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod trap;
pub mod uaccess;

pub use copy::HOST_CONNECTION;
pub use cpu::{run_cpus, Cpu};
pub use freeze::Template;

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flint_executor::vstate::vm::Vm;
use kvm_bindings::kvm_regs;

use crate::arch;
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
    // Connections from the host (`Port::connect`): a host socket's
    // shutdown and MSG_PEEK.
    libc::SYS_shutdown,
    libc::SYS_recvfrom,
];

/// Time slice: the supervisor kicks every vCPU this often, so that a thread
/// that never makes a system call cannot keep the others from running.
pub const TICK: Duration = Duration::from_millis(10);

/// Flags the supervising thread sets for the vCPU thread, and what other
/// threads ask of the container or read about it.
#[derive(Debug, Default)]
pub struct Control {
    pub stop: AtomicBool,
    /// The vCPU threads, for the supervisor's kicks.
    pub vcpu_threads: std::sync::Mutex<Vec<libc::pthread_t>>,
    /// Processes to start beside process 1 (`Container::exec`).
    pub spawns: std::sync::Mutex<Vec<SpawnRequest>>,
    /// The container's processes (pid, command line), kept current.
    pub processes: std::sync::Mutex<Vec<(Pid, String)>>,
    /// The VM's memory and vCPU thread, for stats.
    pub probe: std::sync::Mutex<Option<flint_executor::VmProbe>>,
    /// Connections from the host to a listening port (`Port::connect`).
    pub connects: std::sync::Mutex<Vec<ConnectRequest>>,
    /// TCP ports a program of the container has listened on, in order.
    pub listened: std::sync::Mutex<Vec<u16>>,
    /// A copy of the eventfd idle vCPUs sleep on, for waking them from
    /// outside.
    pub wake: std::sync::Mutex<Option<OwnedFd>>,
    /// A freeze asked for (`Port::freeze`): set until a vCPU has made the
    /// template (or failed to) and sent it to the asker.
    pub freezing: AtomicBool,
    pub freeze: std::sync::Mutex<Option<FreezeRequest>>,
    /// Where connections out of the VM are asked for (`Config::egress`;
    /// none: such addresses are unreachable), and the dialer's answers:
    /// the socket's id and a connected non-blocking host socket or an
    /// errno.
    pub dialer: std::sync::Mutex<Option<std::sync::mpsc::Sender<(usize, std::net::SocketAddr)>>>,
    pub dialed: std::sync::Mutex<Vec<(usize, Result<OwnedFd, i32>)>>,
    /// Dials under way.
    pub dialing: std::sync::atomic::AtomicUsize,
}

/// A freeze asked for: the memfd the guest memory goes to (made by the
/// asker: the vCPU threads' filter has no `memfd_create`) and where the
/// template goes.
#[derive(Debug)]
pub struct FreezeRequest {
    pub memory: std::fs::File,
    pub done: std::sync::mpsc::Sender<Result<Template, String>>,
}

/// A connection from the host: the VM's end of a host socket pair, for
/// the listener on `port`; the answer is 0 or an errno.
#[derive(Debug)]
pub struct ConnectRequest {
    pub port: u16,
    pub fd: OwnedFd,
    pub done: std::sync::mpsc::Sender<Result<(), i32>>,
}

impl Control {
    /// Takes every vCPU running guest code back to its scheduler.
    pub fn kick_all(&self) {
        let threads = self
            .vcpu_threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for t in threads {
            flint_executor::vstate::vcpu::kick(t);
        }
    }

    /// Hands the dialer's answer for socket `id` to the VM (a connected
    /// host socket or an errno) and wakes an idle vCPU to take it.
    pub fn dial_answer(&self, id: usize, r: Result<OwnedFd, i32>) {
        self.dialed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, r));
        self.dialing
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.wake();
    }

    /// Wakes an idle vCPU to look at what was asked of it.
    pub fn wake(&self) {
        if let Some(fd) = &*self.wake.lock().unwrap_or_else(|e| e.into_inner()) {
            let one = 1u64;
            // SAFETY: writes 8 bytes we own to an eventfd.
            unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    (&one as *const u64).cast(),
                    8,
                )
            };
        }
    }
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
    /// The VM's vCPUs; `current` is the one whose host thread holds the
    /// kernel now (the one a system call came from).
    cpus: Vec<Cpu>,
    current: usize,
    /// vCPUs sleeping for want of a runnable thread, and the eventfd that
    /// wakes them.
    idle_cpus: usize,
    wake: OwnedFd,
    pub frames: Frames,
    pub root: Root,
    pub table: Table,
    pub limits: Limits,
    pub control: Arc<Control>,
    /// FPU state of a fresh process.
    clean_fpu: Box<kvm_bindings::kvm_xsave>,
    /// The guest's clocks (also read by the guest itself, `entry`).
    pub clock: Clock,
    /// System calls answered by the VMM so far.
    pub vmm_calls: u64,
    /// The vDSO image every program gets (`crate::vdso`).
    pub vdso: Vec<u8>,
    pub next_mm_id: usize,
    pub next_pipe_id: usize,
    /// What the VM's pipes and sockets hold, together
    /// (`fs::pipe::VM_PIPE_BYTES` at most).
    pub pipe_bytes: Rc<std::cell::Cell<usize>>,
    /// The names the VM's sockets are bound to.
    pub sockets: crate::fs::socket::Names,
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
    /// Process 1's standard streams (stdin, stdout, stderr), while any
    /// process holds them (a weak reference: closing them closes them).
    stdio: Option<[std::rc::Weak<OwnedFd>; 3]>,
    /// Sockets whose connection out of the VM is being made, by id, with
    /// the names they get once connected (local, peer).
    pub dials: Vec<crate::syscalls::socket::PendingDial>,
}

/// What a container is beside its VM: the part of a [`Kernel`] a
/// template keeps and a thawed VM starts from (`freeze.rs`).
struct Parts {
    frames: Frames,
    root: Root,
    table: Table,
    clean_fpu: Box<kvm_bindings::kvm_xsave>,
    clock: Clock,
    vdso: Vec<u8>,
    next_mm_id: usize,
    next_pipe_id: usize,
    pipe_bytes: Rc<std::cell::Cell<usize>>,
    sockets: crate::fs::socket::Names,
    warned: std::collections::BTreeSet<u64>,
    hostname: String,
    stdio: Option<[std::rc::Weak<OwnedFd>; 3]>,
}

/// The vCPUs of a Linux VM: user-mode segments, the system-call MSRs,
/// the host's CPUID, sync regs.
fn make_cpus(vm: &Vm, vcpus: usize) -> Result<Vec<Cpu>, LinuxError> {
    let cpuid = vm.supported_cpuid().map_err(LinuxError::Vm)?;
    let mut cpus = Vec::new();
    for i in 0..vcpus.clamp(1, arch::MAX_VCPUS) {
        let mut vcpu = vm.create_vcpu(i as u64).map_err(LinuxError::Vm)?;
        vcpu.set_cpuid(&cpuid).map_err(LinuxError::Vcpu)?;
        let sregs = vcpu.sregs().map_err(LinuxError::Vcpu)?;
        vcpu.set_sregs(&arch::user_sregs(sregs, 0, i))
            .map_err(LinuxError::Vcpu)?;
        vcpu.set_msrs(&arch::syscall_msrs())
            .map_err(LinuxError::Vcpu)?;
        // x87, SSE and AVX state (the guest sees the host's CPUID, so
        // programs check XCR0 before using more).
        let _ = vcpu.set_xcr0(0x7).or_else(|_| vcpu.set_xcr0(0x3));
        vcpu.enable_sync_regs();
        cpus.push(Cpu::new(vcpu));
    }
    Ok(cpus)
}

fn self_has(t: &Table, pid: Pid) -> bool {
    t.procs.get(&pid).is_some_and(|p| p.exit.is_none())
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("current", &self.current)
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
    /// Creates the VM, its `vcpus` vCPUs and the kernel area.
    pub fn new(
        memory_mib: u64,
        vcpus: usize,
        root: Root,
        limits: Limits,
        control: Arc<Control>,
    ) -> Result<Self, LinuxError> {
        let mem_size = memory_mib << 20;
        let vm = Vm::new(mem_size as usize).map_err(LinuxError::Vm)?;
        let frames = Frames::new(vm.memory().clone(), mem_size);
        let cpus = make_cpus(&vm, vcpus)?;
        let first = cpus[0].vcpu.as_ref().expect("just made");
        let clean_fpu = first.xsave().map_err(LinuxError::Vcpu)?;
        let clock = Clock::new(|| first.guest_tsc().ok(), first.tsc_khz());
        for (addr, bytes) in arch::kernel_pages(entry::block(&clock)) {
            frames.write(addr, &bytes);
        }
        let vdso = if clock.guest_readable() {
            crate::vdso::image(&clock)
        } else {
            Vec::new()
        };
        Self::assemble(
            vm,
            cpus,
            control,
            limits,
            Parts {
                frames,
                root,
                table: Table {
                    next_pid: 1,
                    ..Table::default()
                },
                clean_fpu,
                clock,
                vdso,
                next_mm_id: 1,
                next_pipe_id: 1,
                pipe_bytes: Default::default(),
                sockets: Default::default(),
                warned: Default::default(),
                hostname: "flint".into(),
                stdio: None,
            },
        )
    }

    /// A kernel of `vm` and its vCPUs over the container state `parts`.
    fn assemble(
        vm: Vm,
        cpus: Vec<Cpu>,
        control: Arc<Control>,
        limits: Limits,
        p: Parts,
    ) -> Result<Self, LinuxError> {
        // SAFETY: eventfd has no memory preconditions; the fd is ours.
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(LinuxError::Thread(std::io::Error::last_os_error()));
        }
        // SAFETY: `wake` is a fresh fd nobody else owns.
        let wake = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(wake) };
        if let Ok(copy) = wake.try_clone() {
            *control.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(copy);
        }
        Ok(Self {
            vm,
            cpus,
            current: 0,
            idle_cpus: 0,
            wake,
            frames: p.frames,
            root: p.root,
            table: p.table,
            limits,
            control,
            clean_fpu: p.clean_fpu,
            vmm_calls: 0,
            vdso: p.vdso,
            clock: p.clock,
            next_mm_id: p.next_mm_id,
            next_pipe_id: p.next_pipe_id,
            pipe_bytes: p.pipe_bytes,
            sockets: p.sockets,
            init_exit: None,
            oom_killed: false,
            warned: p.warned,
            retrying: None,
            hostname: p.hostname,
            outside: Vec::new(),
            stdio: p.stdio,
            dials: Vec::new(),
        })
    }

    /// How many vCPUs the VM has.
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// The vCPU the current system call came from.
    pub fn current_cpu(&self) -> usize {
        self.current
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
        // No other vCPU may be in the guest while its memory slot is
        // away, nor keep a translation to a frame about to be reused.
        self.stop_others();
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

    /// Queues the host's connections on their listeners
    /// (`Port::connect`).
    fn connect_requested(&mut self) {
        let reqs: Vec<ConnectRequest> = std::mem::take(
            &mut *self
                .control
                .connects
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for r in reqs {
            let _ = r
                .done
                .send(syscalls::socket::connect_from_host(self, r.port, r.fd));
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
        let streams = [stdio.stdin, stdio.stdout, stdio.stderr].map(Rc::new);
        if pid == 1 {
            self.stdio = Some(streams.each_ref().map(Rc::downgrade));
        }
        let [stdin, stdout, stderr] = streams;
        let stream = |fd: Rc<OwnedFd>, readable: bool| {
            OpenFile::new(
                Kind::Stream { fd, readable },
                if readable {
                    libc::O_RDONLY
                } else {
                    libc::O_WRONLY
                },
            )
        };
        fds.set(0, stream(stdin, true), false);
        fds.set(1, stream(stdout, false), false);
        fds.set(2, stream(stderr, false), false);
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
                timers: Default::default(),
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

    /// The next runnable thread after `last` that no other vCPU runs,
    /// round robin.
    fn pick(&self, last: Pid) -> Option<Pid> {
        let free = |t: &Thread| t.blocked.is_none() && !self.running_elsewhere(t.tid);
        let after = self
            .table
            .threads
            .range(last + 1..)
            .find(|(_, t)| free(t))
            .map(|(&t, _)| t);
        after.or_else(|| {
            self.table
                .threads
                .range(..=last)
                .find(|(_, t)| free(t))
                .map(|(&t, _)| t)
        })
    }

    fn on_syscall(&mut self, tid: Pid) -> bool {
        let r = self.thread(tid).regs;
        if r.rip != arch::syscall_entry() + entry::SLOW_EXIT_OFFSET {
            self.force_signal(tid, SigInfo::fault(crate::signal::SIGSEGV, 0x80, 0));
            return false;
        }
        if !self.cpus[self.current].fast_entry {
            self.enable_fast_entry();
        }
        self.vmm_calls += 1;
        let nr = r.rax;
        let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
        let flags = self.syscall_flags(r.r11);
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
            self.vcpu().sync_regs_mut().sregs.cr3
        );
        self.complete(tid, nr, args, r)
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
                if let Wait::Sleep(deadline) = b.wait {
                    syscalls::time::write_remaining(self, tid, b.nr, b.args, deadline);
                }
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
