//! One function run in one micro-VM, from `KVM_CREATE_VM` to teardown.
//!
//! Threads: the caller's thread builds the VM, then waits; one vCPU thread
//! runs the guest and handles every exit itself (device emulation and the
//! data channel, synchronously). On timeout the waiting thread sets a stop
//! flag and kicks the vCPU thread with a signal until it returns. Nothing
//! outlives `run`: the vCPU thread is joined and the VM's fds and memory
//! are dropped before it returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use flint_abi::layout::{self, MMIO_BASE, MMIO_WINDOW, PANIC_PORT, SERIAL_PORT};
use flint_abi::FailureKind;
use vm_memory::GuestMemoryMmap;

use crate::devices::serial::SerialConsole;
use crate::devices::virtio::console::{Console, TX_QUEUE};
use crate::error::{RunError, SetupError};
use crate::io::GuestIo;
use crate::loader;
use crate::session::{start_frame, GuestEnd, Session, SessionError};
use crate::vstate::vcpu::{self, Vcpu, VcpuEvent};
use crate::vstate::vm::Vm;

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
    /// Guest RAM resident in host memory at the end of the run.
    pub guest_resident_bytes: u64,
}

/// How the vCPU loop ended.
enum Stop {
    Guest(GuestEnd),
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

/// Boots a fresh micro-VM, runs `module` as a WASI command with
/// `invocation`, streams its output through `io`, and tears the VM down.
pub fn run(
    config: &VmConfig,
    module: &[u8],
    invocation: &Invocation,
    io: &mut dyn GuestIo,
) -> Result<RunReport, RunError> {
    let mem_size = precheck(config, module)?;
    vcpu::init_kick_signal();
    let mut phases = Phases::default();

    let t0 = Instant::now();
    let vm = Vm::new(mem_size as usize)?;
    let mut vcpu = vm.create_vcpu(0)?;
    let t1 = Instant::now();
    phases.vm_create = t1 - t0;

    let guest = loader::load_guest(vm.memory(), config.guest_elf.as_deref())?;
    let placement = layout::place(mem_size, guest.end, module.len() as u64).ok_or_else(|| {
        RunError::OutOfMemory {
            memory_mib: config.memory_mib,
            detail: format!(
                "a {}-byte module does not fit in guest memory beside the runtime",
                module.len()
            ),
        }
    })?;
    loader::load_module(vm.memory(), mem_size, &placement, module)?;
    loader::write_seed(vm.memory(), 1)?;
    // Back the start of the heap and the top of the stack with host pages in
    // one call: faulting them in one by one while the guest runs costs an
    // exit each (about 36 µs here, against about 3 µs now).
    let heap_len = config.prefault_mib << 20;
    vm.prefault(
        placement.heap_start,
        heap_len.min(placement.heap_end - placement.heap_start),
    );
    vm.prefault(mem_size - PREFAULT_STACK, PREFAULT_STACK);
    vcpu.setup_long_mode(guest.entry, placement.stack_top)?;
    let tsc_khz = vcpu
        .tsc_khz()
        .map(u64::from)
        .unwrap_or_else(loader::host_tsc_khz);
    loader::write_clock(vm.memory(), 1, vcpu.guest_tsc()?, tsc_khz)?;
    let boot = Instant::now();
    phases.guest_load = boot - t1;

    let mut session = Session::new(io, start_frame(&invocation.args, &invocation.env));
    let mut bus = Bus {
        serial: SerialConsole::new(),
        console: Console::new(),
    };
    let stop = AtomicBool::new(false);
    let mem = vm.memory();

    let outcome = std::thread::scope(|scope| {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let (vcpu, bus, session, stop) = (&mut vcpu, &mut bus, &mut session, &stop);
        let handle = std::thread::Builder::new()
            .name("flint-vcpu0".into())
            .spawn_scoped(scope, move || {
                let _done = done_tx; // dropped when this thread ends, however it ends
                let _ = tid_tx.send(vcpu::current_thread());
                run_vcpu(vcpu, mem, bus, session, stop)
            })
            .map_err(|e| RunError::Setup(SetupError::Thread(e)))?;
        let tid = tid_rx.recv().ok();
        let finished = match config.timeout {
            Some(limit) => !matches!(
                done_rx.recv_timeout(limit),
                Err(mpsc::RecvTimeoutError::Timeout)
            ),
            None => {
                let _ = done_rx.recv();
                true
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
    let marks = session.marks;
    let guest_log = bus.serial.log();
    let guest_resident_bytes = vm.resident_bytes();
    drop(session);

    let t_end = Instant::now();
    drop(bus);
    drop(vcpu);
    drop(vm);
    phases.teardown = t_end.elapsed();
    let since = |a: Option<Instant>, b: Instant| {
        a.map(|a| a.saturating_duration_since(b))
            .unwrap_or_default()
    };
    phases.guest_entry = since(marks.entered, boot);
    phases.compile = marks
        .compiled
        .zip(marks.entered)
        .map(|(c, e)| c - e)
        .unwrap_or_default();
    phases.instantiate = marks
        .ready
        .zip(marks.compiled)
        .map(|(r, c)| r - c)
        .unwrap_or_default();
    phases.run = marks
        .ended
        .zip(marks.ready)
        .map(|(e, r)| e - r)
        .unwrap_or_default();

    match outcome {
        Ok(Stop::Guest(GuestEnd::Exited(code))) => Ok(RunReport {
            exit_code: code,
            phases,
            guest_resident_bytes,
        }),
        Ok(Stop::Guest(GuestEnd::Failed(kind, msg))) => Err(match kind {
            FailureKind::InvalidModule => RunError::InvalidModule(msg),
            FailureKind::MissingImport => RunError::MissingImport(msg),
            FailureKind::Trap => RunError::Trap(msg),
            FailureKind::OutOfMemory => RunError::OutOfMemory {
                memory_mib: config.memory_mib,
                detail: msg,
            },
            FailureKind::NotACommand => RunError::NotACommand(msg),
            FailureKind::Internal => RunError::GuestInternal(msg),
        }),
        Ok(Stop::Kicked) => Err(RunError::Timeout(config.timeout.unwrap_or_default())),
        Err(RunError::GuestCrash(why)) if !guest_log.is_empty() => Err(RunError::GuestCrash(
            format!("{why}; guest log: {guest_log}"),
        )),
        Err(RunError::GuestCrash(why)) if why == "out of memory" => Err(RunError::OutOfMemory {
            memory_mib: config.memory_mib,
            detail: "the guest runtime's heap is exhausted".into(),
        }),
        Err(e) => Err(e),
    }
}

/// The vCPU thread: run the guest, handle each exit, until the guest ends,
/// fails, or the stop flag is raised.
fn run_vcpu(
    vcpu: &mut Vcpu,
    mem: &GuestMemoryMmap,
    bus: &mut Bus,
    session: &mut Session<'_>,
    stop: &AtomicBool,
) -> Result<Stop, RunError> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(Stop::Kicked);
        }
        match vcpu.run()? {
            VcpuEvent::IoOut(port, data) if (SERIAL_PORT..SERIAL_PORT + 8).contains(&port) => {
                bus.serial.write((port - SERIAL_PORT) as u8, data[0]);
            }
            VcpuEvent::IoOut(PANIC_PORT, data) => {
                let log = bus.serial.log();
                return Err(match data[0] {
                    HALT_OUT_OF_MEMORY if log.is_empty() => {
                        RunError::GuestCrash("out of memory".into())
                    }
                    HALT_OUT_OF_MEMORY => RunError::OutOfMemory {
                        memory_mib: mem_mib(mem),
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

fn mem_mib(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::GuestMemoryBackend;
    mem.iter()
        .map(vm_memory::GuestMemoryRegion::len)
        .sum::<u64>()
        >> 20
}
