//! The shim's internal API: containers, each a WebAssembly module from the
//! bundle's rootfs run in its own Flint VM. The ttrpc task service
//! (`service.rs`) only translates to and from these calls.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flint_executor::{GuestIo, Invocation, ReadyVm, RunError, VmConfig};
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
    #[error("{0}")]
    Io(String),
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
}

/// What creating a container needs.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub id: String,
    pub bundle: PathBuf,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug)]
pub struct Container {
    pub spec: Spec,
    module: Vec<u8>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    memory_mib: u64,
    pub rootfs_mounted: bool,
    status: Mutex<(Status, Option<Exit>)>,
    abort: Arc<AtomicBool>,
    exited: watch::Sender<bool>,
}

fn now() -> (i64, i32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

/// The OCI bundle's `config.json`, reduced to what Flint uses.
struct Process {
    args: Vec<String>,
    env: Vec<(String, String)>,
    root: PathBuf,
    memory_mib: u64,
}

fn read_config(bundle: &Path) -> Result<Process, SandboxError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SandboxError::Invalid(format!("reading {}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| SandboxError::Invalid(format!("{} is not JSON: {e}", path.display())))?;
    let args: Vec<String> = v["process"]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if args.is_empty() {
        return Err(SandboxError::Invalid(
            "the container has no process.args: name the .wasm module to run".into(),
        ));
    }
    let env = v["process"]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str())
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
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
    Ok(Process {
        args,
        env,
        root,
        memory_mib,
    })
}

/// The module file named by `args[0]`, resolved inside the rootfs (never
/// outside it, whatever symlinks or `..` the image holds).
fn module_in_rootfs(root: &Path, arg0: &str) -> Result<(Vec<u8>, String), SandboxError> {
    let root = root
        .canonicalize()
        .map_err(|e| SandboxError::Invalid(format!("the rootfs {}: {e}", root.display())))?;
    let candidate = root.join(arg0.trim_start_matches('/'));
    let resolved = candidate
        .canonicalize()
        .map_err(|e| SandboxError::Invalid(format!("{arg0} is not in the image: {e}")))?;
    if !resolved.starts_with(&root) {
        return Err(SandboxError::Invalid(format!(
            "{arg0} points outside the image"
        )));
    }
    let mut f = File::open(&resolved).map_err(|e| SandboxError::Invalid(format!("{arg0}: {e}")))?;
    let mut bytes = Vec::new();
    Read::by_ref(&mut f)
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .map_err(|e| SandboxError::Io(format!("{arg0}: {e}")))?;
    if !bytes.starts_with(b"\0asm") {
        return Err(SandboxError::Unsupported(format!(
            "{arg0} is not a WebAssembly module: Flint runs WASI preview 1 modules (.wasm) in its VMs, not Linux executables"
        )));
    }
    Ok((bytes, arg0.to_string()))
}

impl Container {
    /// Reads the bundle and checks that it names a WebAssembly module.
    pub fn create(spec: Spec, rootfs_mounted: bool) -> Result<Self, SandboxError> {
        if spec.terminal {
            return Err(SandboxError::Unsupported(
                "Flint has no terminal for a WebAssembly function: run without -t".into(),
            ));
        }
        let p = read_config(&spec.bundle)?;
        let (module, arg0) = module_in_rootfs(&p.root, &p.args[0])?;
        let mut args = vec![arg0];
        args.extend(p.args[1..].iter().cloned());
        let (exited, _) = watch::channel(false);
        Ok(Self {
            spec,
            module,
            args,
            env: p.env,
            memory_mib: p.memory_mib,
            rootfs_mounted,
            status: Mutex::new((Status::Created, None)),
            abort: Arc::new(AtomicBool::new(false)),
            exited,
        })
    }

    pub fn status(&self) -> (Status, Option<Exit>) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn finish(&self, code: u32) -> Exit {
        let exit = Exit {
            status: code,
            at: now(),
        };
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) =
            (Status::Stopped, Some(exit.clone()));
        let _ = self.exited.send(true);
        exit
    }

    /// Starts the function on its own thread; `on_exit` runs when it ends.
    pub fn start(
        self: &Arc<Self>,
        on_exit: impl FnOnce(Exit) + Send + 'static,
    ) -> Result<(), SandboxError> {
        {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if st.0 != Status::Created {
                return Err(SandboxError::State(format!(
                    "container {} was already started",
                    self.spec.id
                )));
            }
            st.0 = Status::Running;
        }
        let c = self.clone();
        std::thread::Builder::new()
            .name(format!("flint-task-{}", self.spec.id))
            .spawn(move || {
                let code = c.run();
                on_exit(c.finish(code));
            })
            .map_err(|e| SandboxError::Io(format!("starting the task thread: {e}")))?;
        Ok(())
    }

    /// Boots the VM, runs the module, returns the exit status.
    fn run(&self) -> u32 {
        let mut io = FifoIo::open(&self.spec);
        let config = VmConfig {
            memory_mib: self.memory_mib,
            timeout: None,
            ..VmConfig::default()
        };
        let invocation = Invocation {
            args: self.args.clone(),
            env: self.env.clone(),
        };
        let result = ReadyVm::boot(&config, &self.module, &mut io)
            .and_then(|vm| vm.invoke_abortable(&invocation, &mut io, None, Some(&self.abort)));
        match result {
            Ok(r) => r.exit_code as u32 & 0xff,
            Err(RunError::Aborted) => 128 + libc::SIGKILL as u32,
            Err(e) => {
                let _ = io.stderr(format!("flint: {e}\n").as_bytes());
                match e {
                    RunError::Trap(_) => 128 + libc::SIGABRT as u32,
                    RunError::OutOfMemory { .. } => 128 + libc::SIGKILL as u32,
                    _ => 1,
                }
            }
        }
    }

    /// Stops the function (any signal but 0 stops a VM).
    pub fn kill(&self, signal: u32) -> Result<(), SandboxError> {
        if signal == 0 {
            return Ok(());
        }
        let status = self.status().0;
        match status {
            Status::Running => {
                self.abort.store(true, Ordering::SeqCst);
                Ok(())
            }
            Status::Created => {
                self.finish(128 + signal);
                Ok(())
            }
            Status::Stopped => Err(SandboxError::NotFound(format!(
                "process {} already finished",
                self.spec.id
            ))),
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
                };
            }
        }
    }
}

/// The container's stdio: containerd's FIFOs (or files). Stdout and stderr
/// that cannot be opened are dropped; stdin may be absent.
struct FifoIo {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
}

/// Opens without blocking (a FIFO's open waits for its other end), then
/// switches the descriptor back to blocking I/O.
fn open_nonblocking(path: &str, write: bool) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.strip_prefix("file://").unwrap_or(path);
    if path.is_empty() || path.starts_with("binary://") {
        return None;
    }
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .append(write && !Path::new(path).exists())
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK flag changes.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Some(f)
}

impl FifoIo {
    fn open(spec: &Spec) -> Self {
        Self {
            stdin: open_nonblocking(&spec.stdin, false),
            stdout: open_nonblocking(&spec.stdout, true),
            stderr: open_nonblocking(&spec.stderr, true),
        }
    }
}

/// Writes to an output stream; once its reader is gone (a detached `ctr
/// run` exits at once), further output is dropped: the function keeps
/// running, as a process that ignores SIGPIPE would.
fn write_or_drop(out: &mut Option<File>, data: &[u8]) -> std::io::Result<()> {
    if let Some(f) = out {
        if f.write_all(data).is_err() {
            *out = None;
        }
    }
    Ok(())
}

impl GuestIo for FifoIo {
    fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        write_or_drop(&mut self.stdout, data)
    }
    fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        write_or_drop(&mut self.stderr, data)
    }
    fn stdin(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.stdin {
            Some(f) => f.read(buf),
            None => Ok(0),
        }
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
