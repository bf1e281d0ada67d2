//! Flint's Linux system-call layer: unmodified x86-64 Linux programs (ELF,
//! static or dynamically linked) from a container's root filesystem, run
//! at CPL 3 in a Flint VM with no guest kernel. The VMM answers their
//! system calls, as gVisor's Sentry does for its programs (see
//! docs/design.md, "Linux programs", and docs/linux.md for the table).
//!
//! ```no_run
//! use flint_linux::{run, Config, Program};
//! let program = Program {
//!     path: "/bin/busybox".into(),
//!     argv: vec!["echo".into(), "hi".into()],
//!     env: vec![],
//!     workdir: "/".into(),
//! };
//! let out = run(&Config::default(), std::path::Path::new("/srv/rootfs"), &program, None).unwrap();
//! assert_eq!(out.status.code(), 0);
//! ```

pub mod arch;
mod entry;
mod fs;
mod kernel;
pub mod loader;
mod mm;
mod signal;
mod syscalls;
mod task;
mod vdso;

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use flint_executor::vstate::vcpu;

#[cfg(feature = "fuzzing")]
pub use kernel::fuzz;
pub use kernel::{Program, Stdio, Template, HOST_CALLS};
pub use task::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("the root filesystem {path} cannot be opened")]
    Root {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {path}")]
    Exec {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the VM failed")]
    Vm(#[source] flint_executor::VmError),
    #[error("the vCPU failed")]
    Vcpu(#[source] flint_executor::vstate::vcpu::VcpuError),
    #[error("the guest RAM is too small to start the program")]
    NoMemory,
    #[error("the program ran past its time limit and was stopped")]
    Timeout,
    #[error("the guest crashed: {0}")]
    Crash(String),
    #[error("the standard streams could not be set up")]
    Stdio(#[source] std::io::Error),
    #[error("the vCPU thread could not be started")]
    Thread(#[source] std::io::Error),
    #[error("the container cannot be frozen: {0}")]
    Unfreezable(String),
    #[error("the container cannot be frozen now: {0}")]
    FreezeBusy(String),
    #[error("the template cannot be thawed: {0}")]
    Thaw(String),
}

/// Limits of one Linux VM.
#[derive(Debug, Clone)]
pub struct Config {
    /// Guest RAM in MiB: all of the container's processes share it.
    pub memory_mib: u64,
    /// vCPUs: the container's threads run on this many host threads at
    /// once (default: the host's cores, at most 2).
    pub vcpus: usize,
    /// Wall-clock limit for the whole container.
    pub timeout: Option<Duration>,
    /// Most processes alive (or not yet reaped) at once: a fork past it
    /// fails with EAGAIN.
    pub max_processes: usize,
    /// Signals for process 1 from outside (the shim's Kill), one bit per
    /// signal (`1 << (sig - 1)`). SIGKILL ends the container; another
    /// signal reaches process 1 only if it handles it, as for the init of
    /// a PID namespace.
    pub signals: Option<Arc<AtomicU64>>,
    /// Makes the TCP connections the container's programs open to
    /// addresses off the VM's loopback; none (the default): those are
    /// unreachable (ENETUNREACH).
    pub egress: Option<Arc<dyn Dialer>>,
}

/// Connects a VM's programs to the world outside it: asked for each
/// `connect` to an address off the VM's loopback, on a thread of its own
/// (outside the vCPU threads' filter), it returns the connected host
/// stream, or the error the program's `connect` gets (its errno). What
/// it may reach is its own policy.
pub trait Dialer: Send + Sync + std::fmt::Debug {
    fn dial(&self, to: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream>;
}

/// A [`Dialer`] that connects to the address asked for, within `timeout`
/// (the host's routes and firewall are the policy).
#[derive(Debug, Clone)]
pub struct Direct {
    pub timeout: Duration,
}

impl Dialer for Direct {
    fn dial(&self, to: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
        std::net::TcpStream::connect_timeout(&to, self.timeout)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            vcpus: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(2),
            timeout: Some(Duration::from_secs(60)),
            max_processes: 256,
            signals: None,
            egress: None,
        }
    }
}

/// How a container ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Process 1's status.
    pub status: ExitStatus,
    /// A process was killed because guest memory ran out.
    pub oom: bool,
    pub elapsed: Duration,
    /// System calls that left the VM for the VMM (the ones the vDSO or
    /// the fast entry answered inside it are not counted).
    pub vmm_calls: u64,
}

fn dup(fd: impl AsFd) -> Result<OwnedFd, LinuxError> {
    fd.as_fd().try_clone_to_owned().map_err(LinuxError::Stdio)
}

/// `stdio`, or copies of this process's own streams.
fn stdio_or_own(stdio: Option<Stdio>) -> Result<Stdio, LinuxError> {
    match stdio {
        Some(s) => Ok(s),
        None => Ok(Stdio {
            stdin: dup(std::io::stdin())?,
            stdout: dup(std::io::stdout())?,
            stderr: dup(std::io::stderr())?,
        }),
    }
}

/// Runs `program` from the root filesystem `root` in a new VM until its
/// first process exits. `stdio` defaults to this process's own streams.
pub fn run(
    config: &Config,
    root: &Path,
    program: &Program,
    stdio: Option<Stdio>,
) -> Result<Outcome, LinuxError> {
    start(config, root, program, stdio)?.wait()
}

/// A running container: one VM, its process 1 and whatever it started.
#[derive(Debug)]
pub struct Container {
    control: Arc<kernel::Control>,
    supervisor: std::thread::JoinHandle<Result<Outcome, LinuxError>>,
}

/// A process started in a running container by [`Container::exec`].
#[derive(Debug)]
pub struct Exec {
    done: mpsc::Receiver<Result<ExitStatus, LinuxError>>,
    signals: Arc<AtomicU64>,
}

impl Exec {
    /// Waits for the process; a container that ended first took it with
    /// it (SIGKILL).
    pub fn wait(self) -> Result<ExitStatus, LinuxError> {
        self.done.recv().unwrap_or(Ok(ExitStatus::Signaled {
            signal: 9,
            core: false,
        }))
    }

    /// Signals the process (SIGKILL always ends it; others reach it if
    /// it handles them).
    pub fn signal(&self, sig: i32) {
        if (1..=64).contains(&sig) {
            self.signals.fetch_or(1 << (sig - 1), Ordering::SeqCst);
        }
    }
}

impl Container {
    /// Waits for process 1; its status is the container's.
    pub fn wait(self) -> Result<Outcome, LinuxError> {
        self.supervisor
            .join()
            .map_err(|_| LinuxError::Crash("the VM's supervisor panicked".into()))?
    }

    /// A handle for starting processes in this container and listing
    /// them, usable from other threads while one waits.
    pub fn port(&self) -> Port {
        Port {
            control: self.control.clone(),
        }
    }

    /// Starts `program` as another process of this container (see
    /// [`Port::exec`]).
    pub fn exec(&self, program: &Program, stdio: Stdio) -> Exec {
        self.port().exec(program, stdio)
    }

    /// The container's processes now (see [`Port::processes`]).
    pub fn processes(&self) -> Vec<(i32, String)> {
        self.port().processes()
    }

    /// True once process 1 has ended.
    pub fn finished(&self) -> bool {
        self.supervisor.is_finished()
    }
}

/// Starts processes in a running container and lists them.
#[derive(Debug, Clone)]
pub struct Port {
    control: Arc<kernel::Control>,
}

impl Port {
    /// Starts `program` as another process of this container (in the
    /// same VM, beside process 1), with its own standard streams.
    pub fn exec(&self, program: &Program, stdio: Stdio) -> Exec {
        self.exec_with(program, stdio, Arc::new(AtomicU64::new(0)))
    }

    /// As [`Port::exec`], with the caller's signal mask for the process
    /// (bit `sig - 1`; see [`Exec::signal`]).
    pub fn exec_with(&self, program: &Program, stdio: Stdio, signals: Arc<AtomicU64>) -> Exec {
        let (tx, rx) = mpsc::channel();
        self.control
            .spawns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(kernel::SpawnRequest {
                program: program.clone(),
                stdio,
                signals: signals.clone(),
                done: tx,
            });
        Exec { done: rx, signals }
    }

    /// Connects to the socket listening on TCP `port` inside the VM (on
    /// its loopback or any address, IPv4 or IPv6), as a client on the VM's
    /// loopback would: the host's end of the connection, a Unix stream
    /// whose bytes are the connection's. `ConnectionRefused` if nothing
    /// listens there (or its backlog is full), `TimedOut` if the VM does
    /// not answer within `wait` (it has ended, say).
    pub fn connect(
        &self,
        port: u16,
        wait: std::time::Duration,
    ) -> std::io::Result<std::os::unix::net::UnixStream> {
        let (host, vm) = std::os::unix::net::UnixStream::pair()?;
        vm.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        self.control
            .connects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(kernel::ConnectRequest {
                port,
                fd: vm.into(),
                done: tx,
            });
        self.control.wake();
        match rx.recv_timeout(wait) {
            Ok(Ok(())) => Ok(host),
            Ok(Err(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the VM did not take a connection to port {port}"),
            )),
        }
    }

    /// Stops the container at its vCPUs' next scheduling point and copies
    /// it, processes, memory and open files, into a [`Template`] that
    /// [`thaw`] starts new VMs from; the container then goes on. Refused
    /// with the reason: `FreezeBusy` while a connection from the host is
    /// open (try again once it is closed), `Unfreezable` for state a copy
    /// cannot carry (a process started by [`Port::exec`], process 1 ended)
    /// or a VM that does not stop within `wait`.
    pub fn freeze(&self, wait: Duration) -> Result<Template, LinuxError> {
        let memory = memfd("flint-linux-template").map_err(LinuxError::Stdio)?;
        let (tx, rx) = mpsc::channel();
        *self
            .control
            .freeze
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(kernel::FreezeRequest { memory, done: tx });
        self.control.freezing.store(true, Ordering::SeqCst);
        self.control.wake();
        self.control.kick_all();
        match rx.recv_timeout(wait) {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(why)) if why == kernel::HOST_CONNECTION => Err(LinuxError::FreezeBusy(why)),
            Ok(Err(why)) => Err(LinuxError::Unfreezable(why)),
            Err(_) => {
                self.control.freezing.store(false, Ordering::SeqCst);
                self.control
                    .freeze
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                Err(LinuxError::Unfreezable(
                    "the VM did not stop in time (has it ended?)".into(),
                ))
            }
        }
    }

    /// The TCP ports the container's programs have listened on so far, in
    /// the order they first did.
    pub fn listened(&self) -> Vec<u16> {
        self.control
            .listened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The container's processes now: (pid, command line).
    pub fn processes(&self) -> Vec<(i32, String)> {
        self.control
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The VM's resident memory and vCPU time (once it runs).
    pub fn probe(&self) -> Option<flint_executor::VmProbe> {
        self.control
            .probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Starts `program` in a new VM and returns at once.
pub fn start(
    config: &Config,
    root: &Path,
    program: &Program,
    stdio: Option<Stdio>,
) -> Result<Container, LinuxError> {
    let stdio = stdio_or_own(stdio)?;
    let root = fs::root::Root::open(root).map_err(|e| LinuxError::Root {
        path: root.display().to_string(),
        source: e,
    })?;
    let program = program.clone();
    launch(config, Arc::default(), move |config, limits, control| {
        let mut k = kernel::Kernel::new(config.memory_mib, config.vcpus, root, limits, control)?;
        k.spawn_init(&program, stdio)?;
        Ok(k)
    })
}

/// Starts a new VM from `template` (see [`Port::freeze`]) and returns at
/// once: its processes go on from where the template's were, with
/// `stdio` (default: this process's streams) as process 1's standard
/// streams. The template's memory size is the VM's; `config` gives the
/// rest.
pub fn thaw(
    config: &Config,
    template: &Arc<Template>,
    stdio: Option<Stdio>,
) -> Result<Container, LinuxError> {
    let stdio = stdio_or_own(stdio)?;
    // The template's listeners are listening already.
    let control = Arc::new(kernel::Control::default());
    *control.listened.lock().unwrap_or_else(|e| e.into_inner()) = template.listened();
    let template = template.clone();
    launch(config, control, move |config, limits, control| {
        kernel::Kernel::thaw(&template, config.vcpus, limits, control, stdio)
    })
}

/// Runs the kernel `make` builds on a vCPU thread, with the supervisor
/// that ticks and times it.
fn launch(
    config: &Config,
    control: Arc<kernel::Control>,
    make: impl FnOnce(&Config, kernel::Limits, Arc<kernel::Control>) -> Result<kernel::Kernel, LinuxError>
        + Send
        + 'static,
) -> Result<Container, LinuxError> {
    vcpu::init_kick_signal();
    if let Some(d) = &config.egress {
        start_dialer(d.clone(), &control)?;
    }
    let started = Instant::now();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let c2 = control.clone();
    let config2 = config.clone();
    let handle = std::thread::Builder::new()
        .name("flint-linux-vcpu0".into())
        .spawn(move || {
            let _done = done_tx;
            let limits = kernel::Limits {
                max_processes: config2.max_processes,
                signals: config2.signals.clone(),
            };
            let k = make(&config2, limits, c2)?;
            let (status, k) = kernel::run_cpus(k)?;
            Ok::<_, LinuxError>((status, k.oom_killed, k.vmm_calls))
        })
        .map_err(LinuxError::Thread)?;
    let timeout = config.timeout;
    let c3 = control.clone();
    let supervisor = std::thread::Builder::new()
        .name("flint-linux-supervisor".into())
        .spawn(move || {
            let control = c3;
            // It only waits, kicks and joins: the vCPU threads' filter.
            if let Err(e) = flint_executor::seccomp::confine_thread(&[]) {
                tracing::warn!("the supervisor runs without its seccomp filter: {e}");
            }
            let deadline = timeout.map(|t| started + t);
            // Each tick ends the running threads' time slices; past the
            // deadline the stop flag ends the container.
            while let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(kernel::TICK) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    control.stop.store(true, Ordering::SeqCst);
                }
                control.kick_all();
            }
            let r = handle
                .join()
                .map_err(|_| LinuxError::Crash("the vCPU thread panicked".into()));
            // The VM is gone: so is its dialer thread.
            control
                .dialer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let (status, oom, vmm_calls) = r??;
            Ok(Outcome {
                status,
                oom,
                elapsed: started.elapsed(),
                vmm_calls,
            })
        })
        .map_err(LinuxError::Thread)?;
    Ok(Container {
        control,
        supervisor,
    })
}

/// The thread that takes a VM's connections out (`Config::egress`) to
/// `dialer`, each on a thread of its own, and hands them back through
/// `control` (waking an idle vCPU). It ends once the VM has.
fn start_dialer(dialer: Arc<dyn Dialer>, control: &Arc<kernel::Control>) -> Result<(), LinuxError> {
    let (tx, rx) = mpsc::channel::<(usize, std::net::SocketAddr)>();
    *control.dialer.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let control = Arc::downgrade(control);
    std::thread::Builder::new()
        .name("flint-linux-dialer".into())
        .spawn(move || {
            for (id, to) in rx {
                let (dialer, answer) = (dialer.clone(), control.clone());
                let dial = move || {
                    let r = dialer
                        .dial(to)
                        .and_then(|s| {
                            s.set_nonblocking(true)?;
                            Ok(OwnedFd::from(s))
                        })
                        .map_err(|e| e.raw_os_error().unwrap_or(libc::ECONNREFUSED));
                    if let Some(c) = answer.upgrade() {
                        c.dial_answer(id, r);
                    }
                };
                let spawned = std::thread::Builder::new()
                    .name("flint-linux-dial".into())
                    .spawn(dial);
                if let (Err(_), Some(c)) = (spawned, control.upgrade()) {
                    c.dial_answer(id, Err(libc::EAGAIN));
                }
            }
        })
        .map_err(LinuxError::Thread)?;
    Ok(())
}

/// A new memfd that can be sealed.
fn memfd(name: &str) -> std::io::Result<std::fs::File> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create with a NUL-terminated name; the fd is ours.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nobody else owns it.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// True when `head` (a file's first bytes) is an ELF program.
pub fn is_elf(head: &[u8]) -> bool {
    loader::is_elf(head)
}

/// Finds `name` as a shell would: itself if it has a `/`, else in each
/// directory of `path` (a `PATH` value), inside the root filesystem `root`
/// (resolved there, never outside). Returns the guest path of the first
/// regular, executable file.
pub fn find_program(root: &Path, name: &str, path: &str) -> Option<String> {
    let root = fs::root::Root::open(root).ok()?;
    let candidates: Vec<String> = if name.contains('/') {
        vec![if name.starts_with('/') {
            name.to_string()
        } else {
            format!("/{name}")
        }]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{}/{name}", d.trim_end_matches('/')))
            .collect()
    };
    candidates.into_iter().find(|c| {
        root.open_at(c.as_bytes(), libc::O_PATH, 0)
            .ok()
            .is_some_and(|fd| {
                std::fs::metadata(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&fd)
                ))
                .is_ok_and(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
            })
    })
}

/// Opens the file at guest path `path` inside `root` for reading, resolved
/// as a program in the container would resolve it: `..`, absolute and
/// relative symlinks all stay inside the root (`openat2` with
/// `RESOLVE_IN_ROOT`), so nothing outside it is ever opened.
pub fn open_in_root(root: &Path, path: &str) -> std::io::Result<std::fs::File> {
    let root = fs::root::Root::open(root)?;
    Ok(std::fs::File::from(root.open_at(
        path.as_bytes(),
        libc::O_RDONLY,
        0,
    )?))
}

/// The first bytes of the file at guest path `path` inside `root`.
pub fn read_head(root: &Path, path: &str, n: usize) -> std::io::Result<Vec<u8>> {
    let mut f = open_in_root(root, path)?;
    let mut buf = vec![0u8; n];
    let got = std::io::Read::read(&mut f, &mut buf)?;
    buf.truncate(got);
    Ok(buf)
}
