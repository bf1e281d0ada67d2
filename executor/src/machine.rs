//! One function run in one micro-VM, from `KVM_CREATE_VM` to teardown.
//!
//! Threads: the caller's thread builds the VM, then waits; one vCPU thread
//! runs the guest and handles every exit itself (device emulation and the
//! data channel, synchronously). On timeout the waiting thread sets a stop
//! flag and kicks the vCPU thread with a signal until it returns. Nothing
//! outlives `run`: the vCPU thread is joined and the VM's fds and memory
//! are dropped before it returns.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use flint_abi::layout::{self, MMIO_BASE, MMIO_WINDOW, PANIC_PORT, SERIAL_PORT};
use flint_abi::FailureKind;
use vm_memory::GuestMemoryMmap;

use crate::devices::serial::SerialConsole;
use crate::devices::serial::SerialState;
use crate::devices::virtio::console::ConsoleState;
use crate::devices::virtio::console::{Console, TX_QUEUE};
use crate::error::{ProtocolViolation, RunError, SetupError};
use crate::io::GuestIo;
use crate::loader;
use crate::persist::Persist;
use crate::session::{start_frame, GuestEnd, Marks, Session, SessionError};
use crate::vstate::vcpu::{self, Vcpu, VcpuEvent, VcpuState};
use crate::vstate::vm::Vm;

/// How often a waiting run checks its abort flag.
const ABORT_POLL: Duration = Duration::from_millis(10);

/// Bytes at the top of the stack backed before the guest runs.
const PREFAULT_STACK: u64 = 256 << 10;

/// Panic-port values (see the guest runtime).
const HALT_OUT_OF_MEMORY: u8 = 2;
const HALT_BAD_BOOT: u8 = 3;

/// Limits of one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest RAM in MiB (rounded up to 2 MiB).
    pub memory_mib: u64,
    /// Wall-clock limit for the whole run; `None` for no limit.
    pub timeout: Option<Duration>,
    /// MiB at the start of the guest heap backed with host memory before
    /// the guest runs (where the module's linear memory goes). Trades a
    /// little memory for far fewer page faults during instantiation.
    pub prefault_mib: u64,
    /// An ELF image to boot instead of the built-in guest runtime. Only for
    /// testing the VMM against misbehaving guests.
    pub guest_elf: Option<Arc<[u8]>>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            memory_mib: 128,
            timeout: Some(Duration::from_secs(60)),
            prefault_mib: 4,
            guest_elf: None,
        }
    }
}

/// What the function is invoked with.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `argv`, including `argv[0]` (the program name).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Time spent in each phase of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// `KVM_CREATE_VM`, guest memory, memory slot and vCPU.
    pub vm_create: Duration,
    /// Page tables, guest runtime ELF, module, BootInfo and registers.
    pub guest_load: Duration,
    /// First guest instruction to the guest runtime reporting it is up.
    pub guest_entry: Duration,
    /// Parsing, validating and compiling the module (in the guest).
    pub compile: Duration,
    /// Instantiation (and `_initialize`), up to the ready point.
    pub instantiate: Duration,
    /// `_start` until the guest reports the end.
    pub run: Duration,
    /// Joining the vCPU thread and freeing the VM.
    pub teardown: Duration,
    /// From starting the vCPU thread to the guest's first exit (after a
    /// restore: resuming to the first guest instructions). Part of `run`
    /// or `guest_entry`, not added to the total.
    pub first_exit: Duration,
}

impl Phases {
    pub fn total(&self) -> Duration {
        self.vm_create
            + self.guest_load
            + self.guest_entry
            + self.compile
            + self.instantiate
            + self.run
            + self.teardown
    }
}

/// A completed run: the module's exit status and where the time went.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub exit_code: i32,
    pub phases: Phases,
    /// Guest RAM resident in host memory at the end of the run, for a VM
    /// torn down after it (a boot's `run`, a restore's `invoke`). A VM kept
    /// after its run (`ReadyVm::invoke_in_place`) leaves it out: counting
    /// costs a walk of the whole of guest memory, and
    /// `ReadyVm::resident_bytes` answers when asked.
    pub guest_resident_bytes: Option<u64>,
}

/// How the vCPU loop ended.
enum Stop {
    Guest(GuestEnd),
    /// The guest reached its ready point and waits for an invocation.
    Ready,
    Kicked,
}

struct Bus {
    serial: SerialConsole,
    console: Console,
}

/// Refuses obviously wrong input before any VM exists.
fn precheck(config: &VmConfig, module: &[u8]) -> Result<u64, RunError> {
    if !(layout::MIN_MEMORY_MIB..=layout::MAX_MEMORY_MIB).contains(&config.memory_mib) {
        return Err(RunError::Config(format!(
            "memory must be between {} and {} MiB, not {}",
            layout::MIN_MEMORY_MIB,
            layout::MAX_MEMORY_MIB,
            config.memory_mib
        )));
    }
    if !module.starts_with(b"\0asm") {
        let hint = if module.trim_ascii_start().starts_with(b"(module") {
            "this is WebAssembly text (.wat); compile it to a binary module first"
        } else if module.is_empty() {
            "the file is empty"
        } else {
            "it does not start with the \\0asm magic number"
        };
        return Err(RunError::InvalidModule(hint.into()));
    }
    Ok(layout::align_up(config.memory_mib << 20, layout::HUGE_PAGE).unwrap_or(u64::MAX))
}

/// A VM with its devices, created but not running.
struct Machine {
    vm: Vm,
    vcpu: Vcpu,
    bus: Bus,
    memory_mib: u64,
    /// Generation last written to the clock and seed pages.
    generation: u64,
    phases: Phases,
    /// When the guest was last set running (boot or restore).
    started: Instant,
    /// CPU time of this VM's vCPU threads, for [`VmProbe`].
    cpu: Arc<VcpuTime>,
}

/// CPU time of a VM's vCPU threads: the finished ones' total, and the
/// running one's thread id.
#[derive(Debug, Default)]
struct VcpuTime {
    finished_ns: AtomicU64,
    running_tid: AtomicI32,
}

/// CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Machine {
    /// Creates a VM and loads the guest runtime and `module` into it; with
    /// `to_keep`, the guest translates the whole module before its ready
    /// point (the VM is snapshotted or kept there, so every later
    /// invocation finds the code translated), else each function on its
    /// first call (one run pays only for what it calls).
    fn boot(config: &VmConfig, module: &[u8], to_keep: bool) -> Result<Self, RunError> {
        let mem_size = precheck(config, module)?;
        vcpu::init_kick_signal();
        let mut phases = Phases::default();
        let t0 = Instant::now();
        let vm = Vm::new(mem_size as usize)?;
        let vcpu = vm.create_vcpu(0)?;
        let t1 = Instant::now();
        phases.vm_create = t1 - t0;

        let guest = loader::load_guest(vm.memory(), config.guest_elf.as_deref())?;
        let placement =
            layout::place(mem_size, guest.end, module.len() as u64).ok_or_else(|| {
                RunError::OutOfMemory {
                    memory_mib: config.memory_mib,
                    detail: format!(
                        "a {}-byte module does not fit in guest memory beside the runtime",
                        module.len()
                    ),
                }
            })?;
        let flags = if to_keep {
            flint_abi::BOOT_COMPILE_EAGERLY
        } else {
            0
        };
        loader::load_module(vm.memory(), mem_size, &placement, module, flags)?;
        // Back the start of the heap and the top of the stack with host pages
        // in one call: faulting them in one by one while the guest runs costs
        // an exit each (about 36 µs here, against about 3 µs now).
        let heap_len = config.prefault_mib << 20;
        vm.prefault(
            placement.heap_start,
            heap_len.min(placement.heap_end - placement.heap_start),
        );
        vm.prefault(mem_size - PREFAULT_STACK, PREFAULT_STACK);
        vcpu.setup_long_mode(guest.entry, placement.stack_top)?;
        let mut m = Self {
            vm,
            vcpu,
            bus: Bus {
                serial: SerialConsole::new(),
                console: Console::new(),
            },
            memory_mib: config.memory_mib,
            generation: 0,
            phases,
            started: t1,
            cpu: Arc::default(),
        };
        m.refresh_entropy_and_time()?;
        m.phases.guest_load = t1.elapsed();
        m.started = Instant::now();
        Ok(m)
    }

    /// Writes a fresh clock page and random seed under a new generation.
    fn refresh_entropy_and_time(&mut self) -> Result<(), RunError> {
        // Read back from guest memory on restore: the guest controls it.
        self.generation = self.generation.wrapping_add(1);
        let mem = self.vm.memory();
        loader::write_seed(mem, self.generation)?;
        let tsc_khz = self
            .vcpu
            .tsc_khz()
            .map(u64::from)
            .unwrap_or_else(loader::host_tsc_khz);
        loader::write_clock(mem, self.generation, self.vcpu.guest_tsc()?, tsc_khz)?;
        Ok(())
    }

    /// Runs the vCPU on its own thread until the guest ends, fails, reaches
    /// its ready point (when the session pauses there) or `timeout` passes.
    fn drive(
        &mut self,
        session: &mut Session<'_>,
        timeout: Option<Duration>,
        abort: Option<&AtomicBool>,
    ) -> Result<Stop, RunError> {
        let stop = AtomicBool::new(false);
        let mut aborted = false;
        let mem = self.vm.memory();
        let t0 = Instant::now();
        let mut first = None;
        let first_exit = &mut first;
        let (vcpu, bus, stop_ref) = (&mut self.vcpu, &mut self.bus, &stop);
        let cpu = &*self.cpu;
        let outcome = std::thread::scope(|scope| {
            let (tid_tx, tid_rx) = mpsc::channel();
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let handle = std::thread::Builder::new()
                .name("flint-vcpu0".into())
                .spawn_scoped(scope, move || {
                    let _done = done_tx; // dropped when this thread ends, however it ends
                    let _ = tid_tx.send(vcpu::current_thread());
                    // SAFETY: gettid has no preconditions.
                    cpu.running_tid
                        .store(unsafe { libc::gettid() }, Ordering::SeqCst);
                    // From here the thread handles guest input: only the
                    // calls it needs (see seccomp.rs).
                    if let Err(e) = crate::seccomp::confine_thread(&[]) {
                        tracing::warn!("the vCPU thread runs without its seccomp filter: {e}");
                    }
                    let r = run_vcpu(vcpu, mem, bus, session, stop_ref, first_exit);
                    cpu.finished_ns.fetch_add(thread_cpu_ns(), Ordering::SeqCst);
                    cpu.running_tid.store(0, Ordering::SeqCst);
                    r
                })
                .map_err(|e| RunError::Setup(SetupError::Thread(e)))?;
            let tid = tid_rx.recv().ok();
            let deadline = timeout.map(|t| Instant::now() + t);
            // Wait for the vCPU thread, in slices so that an abort request
            // (a failing memory backend) is seen promptly.
            let finished = loop {
                let slice = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()).min(ABORT_POLL),
                    None => ABORT_POLL,
                };
                match done_rx.recv_timeout(slice) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break true,
                }
                if abort.is_some_and(|a| a.load(Ordering::SeqCst)) {
                    aborted = true;
                    break false;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break false;
                }
            };
            if !finished {
                stop.store(true, Ordering::SeqCst);
                if let Some(tid) = tid {
                    loop {
                        vcpu::kick(tid);
                        if !matches!(
                            done_rx.recv_timeout(Duration::from_millis(5)),
                            Err(mpsc::RecvTimeoutError::Timeout)
                        ) {
                            break;
                        }
                    }
                }
            }
            handle
                .join()
                .map_err(|_| RunError::Setup(SetupError::VcpuPanic))?
        });
        self.phases.first_exit = first.map(|t: Instant| t - t0).unwrap_or_default();
        if aborted {
            return Err(RunError::Aborted);
        }
        match outcome {
            Err(RunError::GuestCrash(why)) => {
                let log = self.bus.serial.log();
                Err(if log.is_empty() {
                    RunError::GuestCrash(why)
                } else {
                    RunError::GuestCrash(format!("{why}; guest log: {log}"))
                })
            }
            other => other,
        }
    }

    /// Turns the end of a run into its report or error, and tears the VM down.
    /// Starts `invocation` in a VM at its ready point and runs it until it
    /// stops.
    fn resume(
        &mut self,
        invocation: &Invocation,
        io: &mut dyn GuestIo,
        timeout: Option<Duration>,
        abort: Option<&AtomicBool>,
    ) -> Result<(Result<Stop, RunError>, Marks), RunError> {
        self.bus.console.clear();
        self.bus
            .console
            .send(&start_frame(&invocation.args, &invocation.env));
        self.bus.console.fill_rx(self.vm.memory())?;
        let mut session = Session::resumed(io);
        self.started = Instant::now();
        let stop = self.drive(&mut session, timeout, abort);
        Ok((stop, session.marks))
    }

    /// How the run ended; the VM is torn down.
    fn conclude(
        mut self,
        stop: Result<Stop, RunError>,
        marks: Marks,
        timeout: Option<Duration>,
    ) -> Result<RunReport, RunError> {
        let t_end = Instant::now();
        let resident = self.vm.resident_bytes();
        let r = self.outcome(stop, marks, timeout);
        drop(self);
        r.map(|mut report| {
            report.guest_resident_bytes = Some(resident);
            report.phases.teardown = t_end.elapsed();
            report
        })
    }

    /// How the run ended, the VM kept.
    fn outcome(
        &mut self,
        stop: Result<Stop, RunError>,
        marks: Marks,
        timeout: Option<Duration>,
    ) -> Result<RunReport, RunError> {
        let memory_mib = self.memory_mib;
        let mut phases = self.phases;
        phases.run = marks
            .ended
            .map(|e| e.saturating_duration_since(marks.ready.unwrap_or(self.started)))
            .unwrap_or_default();
        self.phases = Phases::default();
        match stop? {
            Stop::Guest(GuestEnd::Exited(code)) => Ok(RunReport {
                exit_code: code,
                phases,
                guest_resident_bytes: None,
            }),
            Stop::Guest(GuestEnd::Failed(kind, msg)) => Err(match kind {
                FailureKind::InvalidModule => RunError::InvalidModule(msg),
                FailureKind::MissingImport => RunError::MissingImport(msg),
                FailureKind::Trap => RunError::Trap(msg),
                FailureKind::OutOfMemory => RunError::OutOfMemory {
                    memory_mib,
                    detail: msg,
                },
                FailureKind::NotACommand => RunError::NotACommand(msg),
                FailureKind::Internal => RunError::GuestInternal(msg),
            }),
            Stop::Kicked => Err(RunError::Timeout(timeout.unwrap_or_default())),
            Stop::Ready => Err(RunError::GuestProtocol(ProtocolViolation::Session(
                SessionError::Protocol("a second Ready milestone".into()),
            ))),
        }
    }

    /// Records the boot phases the guest reported up to its ready point.
    fn note_boot_phases(&mut self, marks: &Marks) {
        let since = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => a.saturating_duration_since(b),
            _ => Duration::ZERO,
        };
        self.phases.guest_entry = since(marks.entered, Some(self.started));
        self.phases.compile = since(marks.compiled, marks.entered);
        self.phases.instantiate = since(marks.ready, marks.compiled);
    }
}

/// Boots a fresh micro-VM, runs `module` as a WASI command with
/// `invocation`, streams its output through `io`, and tears the VM down.
pub fn run(
    config: &VmConfig,
    module: &[u8],
    invocation: &Invocation,
    io: &mut dyn GuestIo,
) -> Result<RunReport, RunError> {
    let mut machine = Machine::boot(config, module, false)?;
    let mut session = Session::new(io, Some(start_frame(&invocation.args, &invocation.env)));
    let stop = machine.drive(&mut session, config.timeout, None);
    let marks = session.marks;
    machine.note_boot_phases(&marks);
    machine.conclude(stop, marks, config.timeout)
}

/// A VM stopped at its ready point: the module is compiled and
/// instantiated (and `_initialize` has run), and no invocation has started.
/// It can be saved (see [`ReadyVm::save`]), invoked once, or dropped.
pub struct ReadyVm {
    machine: Machine,
    /// The last run in place ended cleanly, so [`ReadyVm::reset`] may
    /// return the VM to its snapshot (a VM whose run trapped, timed out,
    /// broke the protocol or ran out of memory is dropped instead).
    resettable: bool,
}

impl std::fmt::Debug for ReadyVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyVm")
            .field("memory_mib", &self.machine.memory_mib)
            .finish_non_exhaustive()
    }
}

/// A ready VM's state is its vCPU's and its devices'; guest memory is
/// saved and given back separately (the snapshotter's memory file).
impl Persist for ReadyVm {
    type State = VmState;
    /// The guest memory, already holding the saved RAM (or backed lazily
    /// by the caller).
    type Args<'a> = GuestMemoryMmap;
    type Error = RunError;

    /// Captures the vCPU and device state (guest memory is read separately
    /// through [`Self::memory`]).
    fn save(&mut self) -> Result<VmState, RunError> {
        let m = &mut self.machine;
        Ok(VmState {
            memory_mib: m.memory_mib,
            vcpu: m.vcpu.save()?,
            console: m
                .bus
                .console
                .save()
                .map_err(invalid("the data channel's state"))?,
            serial: m.bus.serial.save().map_err(invalid("the UART's state"))?,
        })
    }

    /// Rebuilds a ready VM from saved state over `memory` (already holding
    /// the saved RAM, or backed lazily by the caller). Everything in `state`
    /// is validated; then the clock page and the random seed are renewed and
    /// the data channel is emptied, so nothing crosses from the run that was
    /// saved into this one.
    fn restore(memory: GuestMemoryMmap, state: &VmState) -> Result<Self, RunError> {
        let t0 = Instant::now();
        let expected = state.memory_mib << 20;
        let actual = mem_bytes(&memory);
        if !(layout::MIN_MEMORY_MIB..=layout::MAX_MEMORY_MIB).contains(&state.memory_mib)
            || expected != actual
        {
            return Err(RunError::InvalidState(format!(
                "the state is for {} MiB of memory but {} bytes were given",
                state.memory_mib, actual
            )));
        }
        vcpu::init_kick_signal();
        let vm = Vm::with_memory(memory)?;
        let vcpu = vm.create_vcpu(0)?;
        let mut phases = Phases {
            vm_create: t0.elapsed(),
            ..Phases::default()
        };
        let t1 = Instant::now();
        let vcpu = Vcpu::restore(vcpu, &state.vcpu).map_err(invalid("the vCPU state"))?;
        let console = Console::restore(vm.memory(), &state.console)
            .map_err(invalid("the data channel's state"))?;
        let serial =
            SerialConsole::restore((), &state.serial).map_err(invalid("the UART's state"))?;
        let mut machine = Machine {
            vm,
            vcpu,
            bus: Bus { serial, console },
            memory_mib: state.memory_mib,
            generation: 0,
            phases: Phases::default(),
            started: t1,
            cpu: Arc::default(),
        };
        machine.generation = loader::read_generation(machine.vm.memory());
        machine.refresh_entropy_and_time()?;
        phases.guest_load = t1.elapsed();
        machine.phases = phases;
        machine.started = Instant::now();
        Ok(Self {
            machine,
            resettable: false,
        })
    }
}

/// A component's state refused on restore, as a run error naming it.
fn invalid<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> RunError {
    move |e| RunError::InvalidState(format!("{what} was refused: {e}"))
}

impl ReadyVm {
    /// Boots a VM for `module` and runs it to its ready point. Output the
    /// module writes while initialising goes to `io`.
    pub fn boot(config: &VmConfig, module: &[u8], io: &mut dyn GuestIo) -> Result<Self, RunError> {
        let mut machine = Machine::boot(config, module, true)?;
        let mut session = Session::new(io, None);
        let stop = machine.drive(&mut session, config.timeout, None);
        let marks = session.marks;
        machine.note_boot_phases(&marks);
        match stop {
            Ok(Stop::Ready) => Ok(Self {
                machine,
                resettable: false,
            }),
            other => match machine.conclude(other, marks, config.timeout) {
                Err(e) => Err(e),
                Ok(report) => Err(RunError::GuestProtocol(ProtocolViolation::Session(
                    SessionError::Protocol(format!(
                        "an exit ({}) before its ready point",
                        report.exit_code
                    )),
                ))),
            },
        }
    }

    /// The guest's RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.machine.vm.memory()
    }

    /// The guest's RAM size in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.machine.memory_mib
    }

    /// Time spent so far, by phase (boot phases, or zero after a restore).
    pub fn phases(&self) -> Phases {
        self.machine.phases
    }

    /// Bytes of guest RAM resident in host memory now.
    pub fn resident_bytes(&self) -> u64 {
        self.machine.vm.resident_bytes()
    }

    /// A handle that reports this VM's memory and CPU use from another
    /// thread while the VM runs. It keeps the guest RAM mapped: drop it
    /// with the VM.
    pub fn probe(&self) -> VmProbe {
        VmProbe {
            memory: self.machine.vm.memory().clone(),
            cpu: self.machine.cpu.clone(),
        }
    }

    /// Starts the invocation and runs it to the end; the VM is torn down.
    pub fn invoke(
        self,
        invocation: &Invocation,
        io: &mut dyn GuestIo,
        timeout: Option<Duration>,
    ) -> Result<RunReport, RunError> {
        self.invoke_abortable(invocation, io, timeout, None)
    }

    /// [`Self::invoke`], also stopping the VM with [`RunError::Aborted`] as
    /// soon as `abort` becomes true (set by a failing memory backend).
    pub fn invoke_abortable(
        mut self,
        invocation: &Invocation,
        io: &mut dyn GuestIo,
        timeout: Option<Duration>,
        abort: Option<&AtomicBool>,
    ) -> Result<RunReport, RunError> {
        let (stop, marks) = self.machine.resume(invocation, io, timeout, abort)?;
        self.machine.conclude(stop, marks, timeout)
    }
}

impl ReadyVm {
    /// [`Self::invoke_abortable`], keeping the VM: after a clean end,
    /// [`Self::reset`] returns it to its snapshot for the next invocation.
    pub fn invoke_in_place(
        &mut self,
        invocation: &Invocation,
        io: &mut dyn GuestIo,
        timeout: Option<Duration>,
        abort: Option<&AtomicBool>,
    ) -> Result<RunReport, RunError> {
        self.resettable = false;
        let (stop, marks) = self.machine.resume(invocation, io, timeout, abort)?;
        let r = self.machine.outcome(stop, marks, timeout);
        self.resettable = r.as_ref().is_ok_and(|rep| rep.exit_code == 0);
        r
    }

    /// Returns this VM, restored from `state`'s snapshot and run in place,
    /// to the snapshot: every page the guest or the VMM wrote takes the
    /// snapshot's bytes again (`Vm::restore_written_pages`: the memory is a
    /// private mapping of the snapshot), the vCPU and the devices take the saved
    /// state again, and the clock and random seed are new, as on a
    /// restore. Returns how many pages were written. Refused after a run
    /// that did not end cleanly.
    pub fn reset(&mut self, state: &VmState) -> Result<u64, RunError> {
        if !std::mem::take(&mut self.resettable) {
            return Err(RunError::InvalidState(
                "only a VM whose last run ended cleanly is reset; this one is dropped".into(),
            ));
        }
        let m = &mut self.machine;
        let pages = m.vm.restore_written_pages().map_err(|e| {
            RunError::InvalidState(format!("returning guest memory to the snapshot: {e}"))
        })?;
        m.vcpu
            .load(&state.vcpu)
            .map_err(invalid("the vCPU state"))?;
        m.bus.console = Console::restore(m.vm.memory(), &state.console)
            .map_err(invalid("the data channel's state"))?;
        m.bus.serial =
            SerialConsole::restore((), &state.serial).map_err(invalid("the UART's state"))?;
        m.generation = loader::read_generation(m.vm.memory());
        m.refresh_entropy_and_time()?;
        Ok(pages)
    }

    /// Reads guest memory from guest-physical `addr` (for checks of a
    /// reset).
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), RunError> {
        use vm_memory::Bytes;
        self.machine
            .vm
            .memory()
            .read_slice(buf, vm_memory::GuestAddress(addr))
            .map_err(|e| RunError::InvalidState(format!("reading guest memory: {e}")))
    }

    /// The vCPU's general registers now (for checks of a reset).
    pub fn registers(&self) -> Result<kvm_bindings::kvm_regs, RunError> {
        Ok(self.machine.vcpu.regs()?)
    }
}

/// Reports a running VM's memory and CPU use (see [`ReadyVm::probe`]).
#[derive(Clone)]
pub struct VmProbe {
    memory: GuestMemoryMmap,
    cpu: Arc<VcpuTime>,
}

impl VmProbe {
    /// A probe of a VM run by another VMM (the Linux layer): its guest
    /// memory, and the vCPU thread `tid` (of this process) running it.
    pub fn for_thread(memory: GuestMemoryMmap, tid: i32) -> Self {
        let cpu = VcpuTime::default();
        cpu.running_tid.store(tid, Ordering::SeqCst);
        Self {
            memory,
            cpu: Arc::new(cpu),
        }
    }

    /// CPU time the VM's vCPU threads have used so far (boot included),
    /// in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        let finished = self.cpu.finished_ns.load(Ordering::SeqCst);
        let tid = self.cpu.running_tid.load(Ordering::SeqCst);
        let running = if tid == 0 {
            0
        } else {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        finished + running
    }

    /// Bytes of guest RAM resident in host memory now.
    pub fn resident_bytes(&self) -> u64 {
        crate::vstate::vm::resident_bytes(&self.memory)
    }

    /// The guest's RAM size in bytes.
    pub fn size_bytes(&self) -> u64 {
        mem_bytes(&self.memory)
    }
}

impl std::fmt::Debug for VmProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmProbe")
            .field("size_bytes", &self.size_bytes())
            .finish()
    }
}

/// Everything of a ready VM but its RAM, for snapshots.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    pub memory_mib: u64,
    pub vcpu: VcpuState,
    pub console: ConsoleState,
    pub serial: SerialState,
}

/// The vCPU thread: run the guest, handle each exit, until the guest ends,
/// fails, or the stop flag is raised.
fn run_vcpu(
    vcpu: &mut Vcpu,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    session: &mut Session<'_>,
    stop: &AtomicBool,
    first_exit: &mut Option<Instant>,
) -> Result<Stop, RunError> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Stop::Kicked);
        }
        if let Err(e) = crate::seccomp::check() {
            return Err(RunError::GuestCrash(format!(
                "the VMM stopped this VM: {e} (answering the guest's last exit)"
            )));
        }
        let event = vcpu.run()?;
        first_exit.get_or_insert_with(Instant::now);
        match event {
            VcpuEvent::IoOut(port, data) if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) => {
                bus.serial.write((port - SERIAL_PORT) as u8, data[0]);
            }
            VcpuEvent::IoOut(PANIC_PORT, data) => {
                let log = bus.serial.log();
                return Err(match data[0] {
                    HALT_OUT_OF_MEMORY if log.is_empty() => RunError::OutOfMemory {
                        memory_mib: mem_bytes(mem) >> 20,
                        detail: "the guest runtime's heap is exhausted".into(),
                    },
                    HALT_OUT_OF_MEMORY => RunError::OutOfMemory {
                        memory_mib: mem_bytes(mem) >> 20,
                        detail: format!("the guest runtime's heap is exhausted: {log}"),
                    },
                    HALT_BAD_BOOT => RunError::GuestCrash(
                        "the guest runtime refused its boot information".into(),
                    ),
                    _ if session.end.is_some() => {
                        return Ok(Stop::Guest(
                            session.end.take().unwrap_or(GuestEnd::Exited(0)),
                        ))
                    }
                    _ => RunError::GuestCrash("the guest runtime panicked".into()),
                });
            }
            VcpuEvent::IoOut(..) => {} // no device there: ignored
            VcpuEvent::IoIn(port, data) => {
                if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) {
                    data[0] = bus.serial.read((port - SERIAL_PORT) as u8);
                } else {
                    data.fill(0xff);
                }
            }
            VcpuEvent::MmioRead(addr, data) => {
                match addr.checked_sub(MMIO_BASE).filter(|o| *o < MMIO_WINDOW) {
                    Some(off) => bus.console.mmio_read(off, data)?,
                    None => data.fill(0xff),
                }
            }
            VcpuEvent::MmioWrite(addr, data) => {
                let Some(off) = addr.checked_sub(MMIO_BASE).filter(|o| *o < MMIO_WINDOW) else {
                    continue;
                };
                // A receive notify needs nothing more than the fill below.
                if bus.console.mmio_write(mem, off, data)? == Some(TX_QUEUE) {
                    let bytes = bus.console.take_tx(mem)?;
                    serve(session, &mut bus.console, stop, |s, c| s.feed(&bytes, c))?;
                }
                bus.console.fill_rx(mem)?;
                if let Some(end) = session.end.take() {
                    return Ok(Stop::Guest(end));
                }
                if session.paused {
                    return Ok(Stop::Ready);
                }
            }
            VcpuEvent::Interrupted => {}
            VcpuEvent::Shutdown => {
                return Err(RunError::GuestCrash(format!(
                    "the guest took an exception it could not handle (triple fault at {})",
                    vcpu.describe()
                )))
            }
            VcpuEvent::Fault(why) => {
                return Err(RunError::GuestCrash(format!(
                    "{why} at {}",
                    vcpu.describe()
                )))
            }
        }
    }
}

/// Runs a session step, retrying after interrupted stdin reads unless the
/// VM is being stopped.
fn serve(
    session: &mut Session<'_>,
    console: &mut Console,
    stop: &AtomicBool,
    step: impl FnOnce(&mut Session<'_>, &mut Console) -> Result<(), SessionError>,
) -> Result<(), RunError> {
    let mut result = step(session, console);
    while matches!(result, Err(SessionError::Interrupted)) {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        result = session.pump(console);
    }
    Ok(result?)
}

/// Bytes of guest RAM in `mem`.
fn mem_bytes(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::GuestMemoryBackend;
    mem.iter().map(vm_memory::GuestMemoryRegion::len).sum()
}
