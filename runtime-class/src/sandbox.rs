//! The shim's internal API. A shim holds one pod (or one lone container):
//! the pod's sandbox, and containers whose processes (the init process and
//! any execs) are each a WebAssembly module from the container's rootfs run
//! in its own Flint VM, one VM group per pod in the shim process. The ttrpc
//! task service (`service.rs`) only translates to and from these calls.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::io::ProcessIo;
use flint_executor::{GuestIo, Invocation, RunError, VmConfig, VmProbe};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    State(String),
    /// A host operation failed; `source` is kept for the error chain.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The shim's own machinery failed, with no underlying error.
    #[error("{0}")]
    Internal(String),
}

impl SandboxError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone)]
pub struct Exit {
    pub status: u32,
    /// Seconds and nanoseconds since the Unix epoch.
    pub at: (i64, i32),
    /// The process was stopped for running out of its VM's memory.
    pub oom: bool,
}

/// Where a process's stdio goes: containerd's FIFOs, files or nothing.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What creating a container needs.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub id: String,
    /// containerd's namespace (a `binary://` logger is told it).
    pub namespace: String,
    pub bundle: PathBuf,
    pub stdio: Stdio,
}

/// What a container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pod's sandbox (CRI's pause container): it holds the pod's VM group
    /// and runs no module; it lives until it is killed.
    PodSandbox,
    /// A WebAssembly function.
    Workload,
}

/// What a process runs.
#[derive(Debug)]
enum Code {
    /// A WebAssembly module (its bytes).
    Wasm(Arc<Vec<u8>>),
    /// A Linux program in the container's root filesystem (its guest
    /// path), with its working directory; the rootfs is the root.
    Linux {
        root: PathBuf,
        path: String,
        cwd: String,
    },
}

/// A program to run, with its arguments and environment.
#[derive(Debug)]
struct Program {
    code: Code,
    args: Vec<String>,
    env: Vec<(String, String)>,
    memory_mib: u64,
    /// For an exec of a Linux container: its init process, whose VM the
    /// exec joins while it runs.
    vm_of: Option<Arc<Process>>,
}

/// Memory and CPU a container's VMs use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Guest RAM resident in host memory, bytes.
    pub memory_bytes: u64,
    /// Guest RAM size (the limit), bytes.
    pub memory_limit_bytes: u64,
    /// CPU time of the VMs' vCPU threads, nanoseconds.
    pub cpu_ns: u64,
    /// VMs running now.
    pub vms: u64,
}

/// One process of a container: its init (exec id `""`) or an exec, each a
/// run of a module in its own Flint VM of the pod's group.
#[derive(Debug)]
pub struct Process {
    pub container_id: String,
    namespace: String,
    pub exec_id: String,
    pub stdio: Stdio,
    program: Option<Program>,
    status: Mutex<(Status, Option<Exit>)>,
    abort: Arc<AtomicBool>,
    stdin_closed: Arc<AtomicBool>,
    /// The signal Kill was given: the exit status is 128 + it.
    signal: AtomicU32,
    exited: watch::Sender<bool>,
    /// The running VM's memory and CPU, for stats; the CPU time it used
    /// once it has ended.
    probe: Mutex<Option<VmProbe>>,
    cpu_ns: AtomicU64,
    /// Signals for a Linux program's process 1 (bit `sig - 1`).
    signals: Arc<AtomicU64>,
    /// While a Linux program runs: its VM's door for execs and `ps`.
    linux_port: Mutex<Option<flint_linux::Port>>,
}

fn now() -> (i64, i32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn env_pairs(v: &serde_json::Value) -> Vec<(String, String)> {
    strings(v)
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The OCI bundle's `config.json`, reduced to what Flint uses.
struct Config {
    kind: Kind,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    root: PathBuf,
    memory_mib: u64,
}

/// The container type annotations of CRI (containerd) and CRI-O.
pub fn kind_of(annotations: &serde_json::Value) -> Option<&str> {
    annotations["io.kubernetes.cri.container-type"]
        .as_str()
        .or(annotations["io.kubernetes.cri-o.ContainerType"].as_str())
}

/// The pod a container belongs to, by CRI's and CRI-O's annotations.
pub fn sandbox_of(annotations: &serde_json::Value) -> Option<&str> {
    annotations["io.kubernetes.cri.sandbox-id"]
        .as_str()
        .or(annotations["io.kubernetes.cri-o.SandboxID"].as_str())
}

fn read_config(bundle: &Path) -> Result<Config, SandboxError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SandboxError::Invalid(format!("reading {}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| SandboxError::Invalid(format!("{} is not JSON: {e}", path.display())))?;
    let kind = match kind_of(&v["annotations"]) {
        Some("sandbox") => Kind::PodSandbox,
        _ => Kind::Workload,
    };
    let root = v["root"]["path"].as_str().unwrap_or("rootfs");
    let root = if Path::new(root).is_absolute() {
        PathBuf::from(root)
    } else {
        bundle.join(root)
    };
    let limit = v["linux"]["resources"]["memory"]["limit"]
        .as_u64()
        .unwrap_or(0);
    let memory_mib = if limit > 0 {
        (limit >> 20).clamp(32, 3072)
    } else {
        128
    };
    Ok(Config {
        kind,
        args: strings(&v["process"]["args"]),
        env: env_pairs(&v["process"]["env"]),
        cwd: v["process"]["cwd"].as_str().unwrap_or("/").to_string(),
        root,
        memory_mib,
    })
}

/// The module file named by `args[0]`, resolved inside the rootfs as the
/// container would resolve it (`..` and symlinks, absolute ones too, stay
/// inside it: `openat2(RESOLVE_IN_ROOT)`, so a swapped symlink cannot race
/// the check either), never outside it.
fn module_in_rootfs(root: &Path, arg0: &str) -> Result<Vec<u8>, SandboxError> {
    let mut f = flint_linux::open_in_root(root, arg0)
        .map_err(|e| SandboxError::Invalid(format!("{arg0} is not in the image: {e}")))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(SandboxError::Invalid(format!("{arg0} is not a file")));
    }
    let mut bytes = Vec::new();
    Read::by_ref(&mut f)
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .map_err(|e| SandboxError::io(arg0, e))?;
    if !bytes.starts_with(b"\0asm") {
        return Err(SandboxError::Unsupported(format!(
            "{arg0} is neither a WebAssembly module nor a Linux program (ELF or #! script)"
        )));
    }
    wasmparser::Validator::new()
        .validate_all(&bytes)
        .map_err(|e| {
            SandboxError::Invalid(format!("{arg0} is not a valid WebAssembly module: {e}"))
        })?;
    Ok(bytes)
}

/// What `args[0]` names: a Linux program (an ELF file or a `#!` script,
/// found on the process's PATH inside the rootfs as runc finds it), or a
/// WebAssembly module.
fn program(
    root: &Path,
    args: Vec<String>,
    env: Vec<(String, String)>,
    memory_mib: u64,
    cwd: &str,
) -> Result<Program, SandboxError> {
    let Some(arg0) = args.first() else {
        return Err(SandboxError::Invalid(
            "the process has no args: name the program or .wasm module to run".into(),
        ));
    };
    let path_env = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    if let Some(path) = flint_linux::find_program(root, arg0, path_env) {
        let head = flint_linux::read_head(root, &path, 4).unwrap_or_default();
        if flint_linux::is_elf(&head) || head.starts_with(b"#!") {
            return Ok(Program {
                code: Code::Linux {
                    root: root.to_path_buf(),
                    path,
                    cwd: cwd.to_string(),
                },
                args,
                env,
                memory_mib,
                vm_of: None,
            });
        }
    }
    let module = module_in_rootfs(root, arg0)?;
    Ok(Program {
        code: Code::Wasm(Arc::new(module)),
        args,
        env,
        memory_mib,
        vm_of: None,
    })
}

fn no_terminal(stdio: &Stdio) -> Result<(), SandboxError> {
    if stdio.terminal {
        return Err(SandboxError::Unsupported(
            "Flint has no terminal for a WebAssembly function: run without -t".into(),
        ));
    }
    Ok(())
}

impl Process {
    fn new(spec: &Spec, exec_id: &str, stdio: Stdio, program: Option<Program>) -> Self {
        let (exited, _) = watch::channel(false);
        Self {
            container_id: spec.id.clone(),
            namespace: spec.namespace.clone(),
            exec_id: exec_id.to_string(),
            stdio,
            program,
            status: Mutex::new((Status::Created, None)),
            abort: Arc::new(AtomicBool::new(false)),
            stdin_closed: Arc::new(AtomicBool::new(false)),
            signal: AtomicU32::new(libc::SIGKILL as u32),
            exited,
            probe: Mutex::new(None),
            cpu_ns: AtomicU64::new(0),
            signals: Arc::new(AtomicU64::new(0)),
            linux_port: Mutex::new(None),
        }
    }

    /// The name containerd knows this process by.
    pub fn name(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn status(&self) -> (Status, Option<Exit>) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn finish(&self, code: u32, oom: bool) -> Exit {
        let exit = Exit {
            status: code,
            at: now(),
            oom,
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) =
            (Status::Stopped, Some(exit.clone()));
        let _ = self.exited.send(true);
        exit
    }

    fn not_started(&self, status: Status) -> Result<(), SandboxError> {
        if status != Status::Created {
            return Err(SandboxError::State(format!(
                "process {} was already started",
                self.name()
            )));
        }
        Ok(())
    }

    /// Opens the process's stdio (this can block: call it off the async
    /// runtime). A pod sandbox has none.
    pub fn open_io(&self) -> Result<Option<ProcessIo>, SandboxError> {
        if self.program.is_none() {
            return Ok(None);
        }
        self.not_started(self.status().0)?;
        ProcessIo::open(
            &self.stdio,
            &self.namespace,
            &self.container_id,
            self.stdin_closed.clone(),
        )
        .map(Some)
    }

    /// Starts the process with its stdio from [`Self::open_io`] (none for a
    /// pod sandbox); `on_exit` runs when it ends. A module runs on its own
    /// thread; a pod sandbox just runs until it is killed.
    pub fn start(
        self: &Arc<Self>,
        io: Option<ProcessIo>,
        on_exit: impl FnOnce(Exit) + Send + 'static,
    ) -> Result<(), SandboxError> {
        {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            self.not_started(st.0)?;
            st.0 = Status::Running;
        }
        let p = self.clone();
        let Some(io) = io else {
            // Killing the sandbox ends it; report the exit like a process's.
            let mut rx = self.exited.subscribe();
            tokio::spawn(async move {
                let _ = rx.changed().await;
                if let (_, Some(exit)) = p.status() {
                    on_exit(exit);
                }
            });
            return Ok(());
        };
        std::thread::Builder::new()
            .name(format!("flint-vm-{}", self.name()))
            .spawn(move || {
                let (code, oom) = p.run(io);
                on_exit(p.finish(code, oom));
            })
            .map_err(|e| {
                self.status.lock().unwrap_or_else(|e| e.into_inner()).0 = Status::Created;
                SandboxError::io("starting the VM thread", e)
            })?;
        Ok(())
    }

    /// Boots the VM, runs the module, returns the exit status and whether
    /// it ran out of memory.
    fn run(&self, mut io: ProcessIo) -> (u32, bool) {
        let Some(program) = &self.program else {
            return (0, false);
        };
        if let Code::Linux { root, path, cwd } = &program.code {
            return self.run_linux(program, root, path, cwd, io);
        }
        let Code::Wasm(module) = &program.code else {
            return (0, false);
        };
        let config = VmConfig {
            memory_mib: program.memory_mib,
            timeout: None,
            ..VmConfig::default()
        };
        let invocation = Invocation {
            args: program.args.clone(),
            env: program.env.clone(),
        };
        let name = program.args.first().map(String::as_str).unwrap_or("module");
        let ready = crate::cache::ready_vm(&crate::cache::dir(), module, name, &config, &mut io);
        let result = ready.and_then(|mut had| {
            log::info!("{}: VM {:?}", self.name(), had.source);
            let probe = had.vm.probe();
            *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe.clone());
            let r = had
                .vm
                .invoke_in_place(&invocation, &mut io, None, Some(&self.abort));
            self.cpu_ns.store(probe.cpu_ns(), Ordering::SeqCst);
            self.probe.lock().unwrap_or_else(|e| e.into_inner()).take();
            // Reset and kept for the pod's next run of the module, if this
            // one ended cleanly.
            had.give_back();
            r
        });
        let outcome = match result {
            Ok(r) => (r.exit_code as u32 & 0xff, false),
            Err(RunError::Aborted) => (128 + self.signal.load(Ordering::SeqCst), false),
            Err(e) => {
                let _ = io.stderr(format!("flint: {e}\n").as_bytes());
                match e {
                    RunError::Trap(_) => (128 + libc::SIGABRT as u32, false),
                    RunError::OutOfMemory { .. } => (128 + libc::SIGKILL as u32, true),
                    _ => (1, false),
                }
            }
        };
        io.close();
        outcome
    }

    /// Runs a Linux program in a VM of its own; its exit status as runc
    /// reports one (128 + signal when a signal ended it).
    fn run_linux(
        &self,
        program: &Program,
        root: &Path,
        path: &str,
        cwd: &str,
        mut io: ProcessIo,
    ) -> (u32, bool) {
        let stdio = match io.linux_stdio() {
            Ok(s) => s,
            Err(e) => {
                let _ = io.stderr(format!("flint: {e}\n").as_bytes());
                io.close();
                return (1, false);
            }
        };
        let config = flint_linux::Config {
            memory_mib: program.memory_mib.max(64),
            timeout: None,
            signals: Some(self.signals.clone()),
            ..flint_linux::Config::default()
        };
        let prog = flint_linux::Program {
            path: path.to_string(),
            argv: program.args.clone(),
            env: program.env.clone(),
            workdir: cwd.to_string(),
        };
        // An exec joins its container's VM while that runs.
        let port = program.vm_of.as_ref().and_then(|init| {
            init.linux_port
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        let result = match port {
            Some(port) => port
                .exec_with(&prog, stdio, self.signals.clone())
                .wait()
                .map(|status| flint_linux::Outcome {
                    status,
                    oom: false,
                    elapsed: std::time::Duration::ZERO,
                    vmm_calls: 0,
                }),
            None => flint_linux::start(&config, root, &prog, Some(stdio)).and_then(|c| {
                *self.linux_port.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.port());
                let r = c.wait();
                self.linux_port
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                r
            }),
        };
        let outcome = match result {
            Ok(out) => (out.status.code() as u32, out.oom),
            Err(e) => {
                let msg = flint_executor::error_chain(&e);
                let _ = io.stderr(format!("flint: {msg}\n").as_bytes());
                match e {
                    flint_linux::LinuxError::Exec { source, .. }
                        if source.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        (127, false)
                    }
                    flint_linux::LinuxError::Exec { .. } => (126, false),
                    _ => (1, false),
                }
            }
        };
        io.close();
        outcome
    }

    /// Stops the process (any signal but 0 stops a VM).
    pub fn kill(&self, signal: u32) -> Result<(), SandboxError> {
        if signal == 0 {
            return Ok(());
        }
        if signal > 64 {
            return Err(SandboxError::Invalid(format!("{signal} is not a signal")));
        }
        let status = self.status().0;
        match status {
            Status::Running
                if matches!(
                    self.program,
                    Some(Program {
                        code: Code::Linux { .. },
                        ..
                    })
                ) =>
            {
                // To process 1 of the container, as the kernel delivers it
                // to a PID namespace's init.
                self.signals.fetch_or(1 << (signal - 1), Ordering::SeqCst);
                Ok(())
            }
            Status::Running if self.program.is_some() => {
                self.signal.store(signal, Ordering::SeqCst);
                self.abort.store(true, Ordering::SeqCst);
                Ok(())
            }
            Status::Running | Status::Created => {
                self.finish(128 + signal, false);
                Ok(())
            }
            Status::Stopped => Err(SandboxError::NotFound(format!(
                "process {} already finished",
                self.name()
            ))),
        }
    }

    /// Closes the process's stdin (CloseIO): its reads see end of file.
    pub fn close_stdin(&self) {
        self.stdin_closed.store(true, Ordering::SeqCst);
    }

    /// Stops the process if it still runs (its container went away).
    fn stop(&self) {
        if self.status().0 != Status::Stopped {
            let _ = self.kill(libc::SIGKILL as u32);
        }
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exited.subscribe();
        loop {
            if let (_, Some(exit)) = self.status() {
                return exit;
            }
            if rx.changed().await.is_err() {
                return Exit {
                    status: 255,
                    at: now(),
                    oom: false,
                };
            }
        }
    }

    fn usage(&self) -> Usage {
        let linux = self
            .linux_port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|p| p.probe());
        let probe = linux.or_else(|| self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone());
        match probe {
            Some(p) => Usage {
                memory_bytes: p.resident_bytes(),
                memory_limit_bytes: p.size_bytes(),
                cpu_ns: p.cpu_ns(),
                vms: 1,
            },
            None => Usage {
                cpu_ns: self.cpu_ns.load(Ordering::SeqCst),
                ..Usage::default()
            },
        }
    }
}

/// A container: its init process and its execs, all in the pod's shim.
#[derive(Debug)]
pub struct Container {
    pub spec: Spec,
    pub kind: Kind,
    pub rootfs_mounted: bool,
    root: PathBuf,
    memory_mib: u64,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    /// Reads the bundle: a pod sandbox, or a container whose `args[0]`
    /// names a WebAssembly module in its rootfs.
    pub fn create(spec: Spec, rootfs_mounted: bool) -> Result<Self, SandboxError> {
        no_terminal(&spec.stdio)?;
        let c = read_config(&spec.bundle)?;
        let program = match c.kind {
            Kind::PodSandbox => None,
            Kind::Workload => Some(program(&c.root, c.args, c.env, c.memory_mib, &c.cwd)?),
        };
        let init = Arc::new(Process::new(&spec, "", spec.stdio.clone(), program));
        Ok(Self {
            kind: c.kind,
            rootfs_mounted,
            root: c.root,
            memory_mib: c.memory_mib,
            init,
            execs: Mutex::new(HashMap::new()),
            spec,
        })
    }

    /// Adds an exec: another module (or the same one) from this
    /// container's rootfs, run in a new VM of the pod, given an OCI process
    /// spec (JSON).
    pub fn exec(
        &self,
        exec_id: &str,
        stdio: Stdio,
        process_json: &[u8],
    ) -> Result<Arc<Process>, SandboxError> {
        no_terminal(&stdio)?;
        if exec_id.is_empty() {
            return Err(SandboxError::Invalid("an exec needs an exec id".into()));
        }
        if self.kind == Kind::PodSandbox {
            return Err(SandboxError::Unsupported(
                "the pod sandbox runs no modules: exec in one of the pod's containers".into(),
            ));
        }
        if self.init.status().0 != Status::Running {
            return Err(SandboxError::State(format!(
                "container {} is not running",
                self.spec.id
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(process_json)
            .map_err(|e| SandboxError::Invalid(format!("the exec's process spec: {e}")))?;
        let mut program = program(
            &self.root,
            strings(&v["args"]),
            env_pairs(&v["env"]),
            self.memory_mib,
            v["cwd"].as_str().unwrap_or("/"),
        )?;
        if matches!(program.code, Code::Linux { .. }) {
            program.vm_of = Some(self.init.clone());
        }
        let p = Arc::new(Process::new(&self.spec, exec_id, stdio, Some(program)));
        let mut execs = self.execs.lock().unwrap_or_else(|e| e.into_inner());
        if execs.contains_key(exec_id) {
            return Err(SandboxError::Exists(format!(
                "exec {exec_id} already exists in {}",
                self.spec.id
            )));
        }
        execs.insert(exec_id.to_string(), p.clone());
        Ok(p)
    }

    /// The init process (`exec_id` empty) or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, SandboxError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                SandboxError::NotFound(format!("exec {exec_id} not found in {}", self.spec.id))
            })
    }

    /// Removes a finished exec.
    pub fn remove_exec(&self, exec_id: &str) -> Result<Arc<Process>, SandboxError> {
        let p = self.process(exec_id)?;
        if p.status().0 == Status::Running {
            return Err(SandboxError::State(format!(
                "exec {exec_id} is still running: kill it first"
            )));
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(exec_id);
        Ok(p)
    }

    fn all(&self) -> Vec<Arc<Process>> {
        let mut v = vec![self.init.clone()];
        v.extend(
            self.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned(),
        );
        v
    }

    /// Stops every exec (the init process has ended: as in a container
    /// whose pid 1 exits, nothing else of it keeps running).
    pub fn stop_execs(&self) {
        for p in self.all().iter().skip(1) {
            p.stop();
        }
    }

    /// The processes of a running Linux container, as its VM numbers
    /// them (pid, command line); `None` for a module's container.
    pub fn linux_processes(&self) -> Option<Vec<(i32, String)>> {
        let port = self
            .init
            .linux_port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        port.map(|p| p.processes())
    }

    /// Memory and CPU of the container's VMs.
    pub fn usage(&self) -> Usage {
        self.all()
            .iter()
            .map(|p| p.usage())
            .fold(Usage::default(), |a, u| Usage {
                memory_bytes: a.memory_bytes + u.memory_bytes,
                memory_limit_bytes: a.memory_limit_bytes + u.memory_limit_bytes,
                cpu_ns: a.cpu_ns + u.cpu_ns,
                vms: a.vms + u.vms,
            })
    }
}

/// Every container of this shim (all containers of one pod share a shim).
#[derive(Debug, Default)]
pub struct Sandbox {
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl Sandbox {
    pub fn insert(&self, c: Container) -> Result<Arc<Container>, SandboxError> {
        let mut map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&c.spec.id) {
            return Err(SandboxError::Exists(format!(
                "container {} already exists",
                c.spec.id
            )));
        }
        let c = Arc::new(c);
        map.insert(c.spec.id.clone(), c.clone());
        Ok(c)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>, SandboxError> {
        let map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(format!("container {id} not found")))
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    pub fn is_empty(&self) -> bool {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flint-rootfs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn modules_resolve_inside_the_rootfs_only() {
        let root = rootfs("resolve");
        std::fs::write(root.join("f.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(root.join("sh"), b"#!/bin/sh\n").unwrap();
        // A real module on the host, named by a symlink in the image and
        // through `..`: both resolve inside the rootfs, where it is not.
        let host = std::env::temp_dir().join(format!("flint-host-{}.wasm", std::process::id()));
        std::fs::write(&host, b"\0asm\x01\0\0\0").unwrap();
        std::os::unix::fs::symlink(&host, root.join("escape.wasm")).unwrap();
        // An absolute symlink to a module in the image works, as in it.
        std::os::unix::fs::symlink("/f.wasm", root.join("link.wasm")).unwrap();
        assert!(module_in_rootfs(&root, "/f.wasm").is_ok());
        assert!(module_in_rootfs(&root, "f.wasm").is_ok());
        assert!(module_in_rootfs(&root, "/link.wasm").is_ok());
        let dots = format!("/../../../../..{}", host.display());
        for outside in ["/escape.wasm", dots.as_str()] {
            assert!(
                matches!(
                    module_in_rootfs(&root, outside),
                    Err(SandboxError::Invalid(m)) if m.contains("not in the image")
                ),
                "{outside}"
            );
        }
        let _ = std::fs::remove_file(&host);
        assert!(matches!(
            module_in_rootfs(&root, "/"),
            Err(SandboxError::Invalid(m)) if m.contains("not a file")
        ));
        assert!(matches!(
            module_in_rootfs(&root, "/sh"),
            Err(SandboxError::Unsupported(m)) if m.contains("neither a WebAssembly module nor a Linux program")
        ));
        std::fs::write(root.join("broken.wasm"), b"\0asm\x01\0\0\0\x01\xff").unwrap();
        assert!(matches!(
            module_in_rootfs(&root, "/broken.wasm"),
            Err(SandboxError::Invalid(m)) if m.contains("not a valid WebAssembly module")
        ));
        assert!(matches!(
            module_in_rootfs(&root, "/none.wasm"),
            Err(SandboxError::Invalid(m)) if m.contains("not in the image")
        ));
        let _ = std::fs::remove_dir_all(&root);
    }

    fn bundle(name: &str, config: serde_json::Value) -> PathBuf {
        let b = rootfs(name);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::write(b.join("rootfs/f.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(b.join("config.json"), config.to_string()).unwrap();
        b
    }

    #[test]
    fn bundles_are_read_for_pods_and_workloads() {
        let b = bundle(
            "sandbox",
            serde_json::json!({
                "process": {"args": ["/pause"]},
                "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            }),
        );
        let spec = Spec {
            id: "p".into(),
            bundle: b.clone(),
            ..Spec::default()
        };
        let c = Container::create(spec.clone(), false).unwrap();
        assert_eq!(c.kind, Kind::PodSandbox, "a pod sandbox runs no module");
        assert!(matches!(
            c.exec("e", Stdio::default(), br#"{"args":["/f.wasm"]}"#),
            Err(SandboxError::Unsupported(_))
        ));

        let b = bundle(
            "workload",
            serde_json::json!({
                "process": {"args": ["/f.wasm", "x"], "env": ["A=1", "B=x=y", "junk"]},
                "linux": {"resources": {"memory": {"limit": 64u64 << 20}}},
                "annotations": {"io.kubernetes.cri-o.ContainerType": "container"},
            }),
        );
        let c = Container::create(
            Spec {
                bundle: b.clone(),
                ..spec.clone()
            },
            false,
        )
        .unwrap();
        assert_eq!(c.kind, Kind::Workload);
        assert_eq!(c.memory_mib, 64);
        let p = c.init.program.as_ref().unwrap();
        assert_eq!(p.args, ["/f.wasm", "x"]);
        assert_eq!(
            p.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        // Not running yet: no execs.
        assert!(matches!(
            c.exec("e", Stdio::default(), br#"{"args":["/f.wasm"]}"#),
            Err(SandboxError::State(_))
        ));

        let b = bundle("noargs", serde_json::json!({"process": {"args": []}}));
        assert!(matches!(
            Container::create(Spec { bundle: b, ..spec.clone() }, false),
            Err(SandboxError::Invalid(m)) if m.contains("no args")
        ));
        let b = bundle("tty", serde_json::json!({"process": {"args": ["/f.wasm"]}}));
        let mut tty = Spec { bundle: b, ..spec };
        tty.stdio.terminal = true;
        assert!(matches!(
            Container::create(tty, false),
            Err(SandboxError::Unsupported(m)) if m.contains("terminal")
        ));
        for name in ["sandbox", "workload", "noargs", "tty"] {
            let _ = std::fs::remove_dir_all(rootfs(name));
        }
    }
}
