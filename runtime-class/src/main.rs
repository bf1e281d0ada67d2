//! `containerd-shim-flint-v2`: containerd's shim v2 for Flint. containerd
//! starts it for a task (or a pod) whose runtime is `io.containerd.flint.v2`;
//! each container's WebAssembly module runs in its own Flint VM.

mod cache;
mod confine;
mod helper;
mod io;
mod sandbox;
mod service;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::{api, Config, Error, Flags, StartOpts};

use crate::sandbox::Sandbox;
use crate::service::Service;

#[derive(Clone)]
struct FlintShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    bundle: String,
}

#[async_trait]
impl Shim for FlintShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // All containers of one pod share one shim (grouped by sandbox id).
        let grouping =
            std::fs::read_to_string(std::path::Path::new(&self.bundle).join("config.json"))
                .ok()
                .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
                .and_then(|v| {
                    let a = &v["annotations"];
                    (sandbox::kind_of(a) == Some("container"))
                        .then(|| sandbox::sandbox_of(a).map(String::from))
                        .flatten()
                })
                .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // containerd reconnects to a running shim after a restart by the
        // bundle's address file (start runs in the bundle directory).
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        // The shim died or containerd cleans up: unmount what a container
        // of this bundle may have left mounted.
        let bundle = std::path::Path::new(&self.bundle);
        service::unmount(&bundle.join("rootfs"));
        // A shim that was killed leaves its socket; one that still serves
        // the pod's other containers keeps it.
        if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
            let path = address.trim().trim_start_matches("unix://");
            if !path.is_empty() && std::os::unix::net::UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
        let mut r = api::DeleteResponse::new();
        r.exit_status = 128 + libc::SIGKILL as u32;
        if let Ok(now) = containerd_shim::util::timestamp() {
            r.exited_at = Some(now).into();
        }
        Ok(r)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service {
            sandbox: Arc::new(Sandbox::default()),
            exit: self.exit.clone(),
            publisher: Some(Arc::new(publisher)),
            namespace: self.namespace.clone(),
        }
    }
}

const RUNTIME: &str = "io.containerd.flint.v2";

fn main() {
    // containerd-shim's own bootstrap parses -v but does not act on it.
    if std::env::args()
        .skip(1)
        .any(|a| matches!(a.as_str(), "-v" | "-version" | "--version"))
    {
        println!("containerd-shim-flint-v2:");
        println!("  Runtime: {RUNTIME}");
        println!("  Version: {}", env!("CARGO_PKG_VERSION"));
        println!("  Runs: WebAssembly (WASI preview 1) modules, one Flint KVM micro-VM each");
        return;
    }
    if std::env::var_os("TTRPC_ADDRESS").is_none() {
        eprintln!(
            "containerd-shim-flint-v2 is started by containerd (runtime {RUNTIME}), not by hand: \
             see runtime-class/deploy/ to configure containerd"
        );
        std::process::exit(2);
    }
    if let Err(e) = drop_capabilities() {
        eprintln!("containerd-shim-flint-v2: warning: keeping every capability: {e}");
    }
    // Serving (no start or delete action): under the shim's filter from
    // here, before the runtime makes its threads.
    let args: Vec<_> = std::env::args_os().collect();
    let flags = containerd_shim::parse(&args[1..]).ok();
    if let Some(flags) = flags.filter(|f| f.action.is_empty()) {
        // The cache must exist for the Landlock domain to reach it.
        let cache = cache::dir();
        let _ = cache::create_dir(&cache);
        let bundle = std::env::current_dir().unwrap_or_else(|_| ".".into());
        // The serving shim binds its own socket (containerd-shim's
        // `-socket`, in containerd's socket directory) once it serves.
        let socket = flags.socket.trim_start_matches("unix://");
        let sockets = std::path::Path::new(socket).parent();
        // On a fresh host the first shim makes the directory (as
        // containerd-shim's listener would): it must exist before the
        // Landlock domain can name it.
        if let Some(dir) = sockets.filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let reach = confine::shim_reach(&bundle, &cache, sockets);
        match confine::confine(confine::tasks_of(&bundle), &reach) {
            Ok(flint_executor::landlock::Enforced::Fully) => {}
            Ok(how) => eprintln!(
                "containerd-shim-flint-v2: warning: this kernel enforces the shim's Landlock \
                 file sandbox {}: its filtered threads reach more host files than they should",
                if how == flint_executor::landlock::Enforced::Partly {
                    "in part (an ABI before 7)"
                } else {
                    "not at all"
                }
            ),
            Err(e) => {
                eprintln!("containerd-shim-flint-v2: cannot confine the shim: {e}");
                std::process::exit(1);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("containerd-shim-flint-v2: starting the async runtime failed: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(run::<FlintShim>(RUNTIME, None));
}

/// The capabilities the shim keeps: mounting and unmounting container
/// roots (SYS_ADMIN), acting as root on the files of a container's root
/// for the Linux programs it runs (CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH,
/// FOWNER, FSETID), containerd-shim's OOM score set-up (SYS_RESOURCE), and
/// signalling its own children (KILL). Everything else (NET_ADMIN,
/// NET_RAW, SYS_MODULE, SYS_RAWIO, SYS_PTRACE, SYS_BOOT, MKNOD, SETUID,
/// BPF, ...) goes from every set, the bounding set included, so the
/// daemon the shim re-executes cannot regain it either. A serving shim
/// then leaves SYS_ADMIN, KILL, CHOWN and SYS_RESOURCE to its privileged
/// helper process, which mounts and starts loggers (`confine::confine`).
pub const KEPT_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_SYS_RESOURCE,
    caps::Capability::CAP_KILL,
];

fn drop_capabilities() -> Result<(), caps::errors::CapsError> {
    let keep: caps::CapsHashSet = KEPT_CAPABILITIES.iter().copied().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes with the rest below.
    for cap in caps::read(None, caps::CapSet::Bounding)? {
        if !keep.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap)?;
        }
    }
    for set in [
        caps::CapSet::Inheritable,
        caps::CapSet::Ambient,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        let now = caps::read(None, set)?;
        caps::set(None, set, &now.intersection(&keep).copied().collect())?;
    }
    Ok(())
}
