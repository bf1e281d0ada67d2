//! The shim's seccomp filter. A serving shim puts its main thread under
//! it before its async runtime starts, so every thread it makes after that
//! (ttrpc and tokio workers, the VMs' threads, whose own filters stack on
//! top) is under it too: the calls serving containerd needs, and never
//! `execve`, `fork`, a process `clone`, `ptrace`, `unshare`, `setns` or a
//! signal to another process (`flint_executor::seccomp::confine_from_here`).
//!
//! One thread stays outside ([`outside`]): the only one that keeps
//! CAP_SYS_ADMIN, it mounts and unmounts containers' root filesystems, and
//! it starts the `binary://` loggers containerd's users name (their
//! programs must not inherit the shim's filter) and stops them. It runs
//! only the jobs this crate's callers hand it.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

use flint_executor::seccomp::{confine_from_here, SERVICE_BASE, VCPU_BASE};

/// What a shim needs beyond a service process's calls (`SERVICE_BASE`), a
/// vCPU thread's and the Linux layer's file calls: containerd-shim's own
/// server and its events client (Unix sockets only), FIFOs and log files,
/// reaping children. Mounting is not among them.
pub const SHIM_CALLS: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_socketpair,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_pipe2,
    libc::SYS_dup2,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_chdir,
    libc::SYS_access,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_statfs,
    libc::SYS_umask,
    libc::SYS_capget,
];

/// What the filtered threads keep of the shim's capabilities: acting as
/// root on the files of a container's root for the Linux programs it runs
/// (a program's root may write a file it does not own, as in a container).
/// Mounting (SYS_ADMIN) and signalling loggers (KILL) are the outside
/// thread's; SYS_RESOURCE served `start`'s OOM score set-up, done before a
/// shim serves; nothing filtered chowns (CHOWN).
pub const CONFINED_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
];

type Job = Box<dyn FnOnce() + Send>;

static OUTSIDE: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the thread that stays outside the filter, then drops every
/// capability but [`CONFINED_CAPABILITIES`] from the calling thread and
/// puts it under the filter: every thread it makes from now on inherits
/// both.
pub fn confine() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("flint-outside".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    let _ = OUTSIDE.set(Mutex::new(tx));
    let keep: caps::CapsHashSet = CONFINED_CAPABILITIES.iter().copied().collect();
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        caps::set(None, set, &keep)?;
    }
    let calls: Vec<i64> = VCPU_BASE
        .iter()
        .chain(flint_linux::HOST_CALLS)
        .chain(SERVICE_BASE)
        .chain(SHIM_CALLS)
        .copied()
        .collect();
    Ok(confine_from_here(&calls)?)
}

/// Runs `f` on the thread outside the filter and returns what it returns
/// (on the calling thread when the shim is not confined).
pub fn outside<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let Some(tx) = OUTSIDE.get() else {
        return f();
    };
    let (back, result) = channel();
    let job: Job = Box::new(move || {
        let _ = back.send(f());
    });
    let sent = tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
    if let Err(e) = sent {
        // The thread is gone (it never exits): run the job here.
        (e.0)();
    }
    result
        .recv()
        .expect("every job sends its result before it is dropped")
}
