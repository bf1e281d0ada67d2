//! The shim's seccomp filter. A serving shim puts its main thread under
//! it before its async runtime starts, so every thread it makes after that
//! (ttrpc and tokio workers, the VMs' threads, whose own filters stack on
//! top) is under it too: the calls serving containerd needs, and never
//! `execve`, `fork`, a process `clone`, `ptrace`, `unshare`, `setns` or a
//! signal to another process (`flint_executor::seccomp::confine_from_here`).
//!
//! The same threads are in a Landlock domain ([`Reach`]): whatever their
//! uid and capabilities, they open files only beneath this namespace's
//! task directories (bundles and the root filesystems mounted in them),
//! the shim's snapshot cache, the few device nodes a VM uses, and `/proc`
//! and `/sys` for reading. A thread taken over through a VM cannot read
//! or write the host's other files, though the shim runs as root.
//!
//! No thread of the shim's process stays outside: mounting and unmounting
//! containers' root filesystems, opening the FIFOs and log files
//! containerd names (anywhere on the host) and starting the `binary://`
//! loggers containerd's users name (their programs must not inherit the
//! shim's filter) are the privileged helper's, a separate process started
//! before the shim confines itself (`crate::helper`), which alone keeps
//! CAP_SYS_ADMIN and checks every request.

use std::path::{Path, PathBuf};

use flint_executor::landlock::{Enforced, Reach, DEVICES};
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

/// What the shim's process keeps of its capabilities once it serves:
/// acting as root on the files of a container's root for the Linux
/// programs it runs (a program's root may write a file it does not own,
/// as in a container). Mounting (SYS_ADMIN) and signalling loggers (KILL)
/// are the helper's; SYS_RESOURCE served `start`'s OOM score set-up, done
/// before a shim serves; nothing in the shim chowns (CHOWN).
pub const CONFINED_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
];

/// A serving shim's reach, from its bundle (its working directory when
/// containerd starts it): the directory holding this namespace's
/// bundles, where every container of the pod gets its own (containerd
/// makes `STATE/NAMESPACE/ID`); the snapshot cache `cache`; the
/// directory of shim sockets (`sockets`), where the serving shim binds
/// its own; the [`DEVICES`]; `/proc` and `/sys` to read. A directory
/// that is not a bundle (no `config.json`) is the only one reached,
/// never its parent.
pub fn shim_reach(bundle: &Path, cache: &Path, sockets: Option<&Path>) -> Reach {
    let mut read_write = vec![tasks_of(bundle).to_path_buf(), cache.to_path_buf()];
    read_write.extend(
        sockets
            .filter(|s| s.parent().is_some())
            .map(Path::to_path_buf),
    );
    read_write.extend(DEVICES.iter().map(PathBuf::from));
    Reach {
        read_write,
        read_only: vec!["/proc".into(), "/sys".into()],
    }
}

/// The directory of this namespace's bundles, from the serving shim's
/// own (see [`shim_reach`]).
pub fn tasks_of(bundle: &Path) -> &Path {
    match bundle.parent() {
        Some(p) if bundle.join("config.json").is_file() && p.parent().is_some() => p,
        _ => bundle,
    }
}

/// Starts the shim's privileged helper for the bundles in `tasks`, then
/// drops every capability but [`CONFINED_CAPABILITIES`] from the calling
/// thread and puts it in the Landlock domain `reach` and under the
/// filter: every thread it makes from now on inherits all three. The
/// calling thread must be the process's only one, so that no thread
/// escapes any of them.
pub fn confine(
    tasks: &Path,
    reach: &Reach,
) -> Result<Enforced, Box<dyn std::error::Error + Send + Sync>> {
    crate::helper::start(tasks).map_err(|e| format!("starting the shim's helper: {e}"))?;
    let keep: caps::CapsHashSet = CONFINED_CAPABILITIES.iter().copied().collect();
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        caps::set(None, set, &keep)?;
    }
    let enforced = reach.enforce()?;
    let calls: Vec<i64> = VCPU_BASE
        .iter()
        .chain(flint_linux::HOST_CALLS)
        .chain(SERVICE_BASE)
        .chain(SHIM_CALLS)
        .copied()
        .collect();
    confine_from_here(&calls)?;
    Ok(enforced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_reaches_its_siblings_and_a_plain_directory_only_itself() {
        let tasks = tempfile::tempdir().unwrap();
        let bundle = tasks.path().join("pod-1");
        std::fs::create_dir(&bundle).unwrap();
        let cache = tasks.path().join("cache");
        // Not a bundle yet: only the directory itself.
        assert_eq!(shim_reach(&bundle, &cache, None).read_write[0], bundle);
        std::fs::write(bundle.join("config.json"), "{}").unwrap();
        let reach = shim_reach(&bundle, &cache, Some(Path::new("/")));
        assert_eq!(reach.read_write[..2], [tasks.path().to_path_buf(), cache]);
        // `/` is never a socket directory reached.
        assert!(!reach.read_write.contains(&PathBuf::from("/")));
        assert!(reach.read_write.contains(&PathBuf::from("/dev/kvm")));
        assert_eq!(
            reach.read_only,
            [PathBuf::from("/proc"), PathBuf::from("/sys")]
        );
    }

    /// The shim's own domain, enforced on a thread (the mechanism has its
    /// test in `flint_executor::landlock`): another pod's bundle in the
    /// namespace opens, a file beside the namespace's directory does not.
    #[test]
    fn the_shim_reaches_its_namespaces_bundles_only() {
        let top = tempfile::tempdir().unwrap();
        let tasks = top.path().join("k8s.io");
        for d in ["pod-1", "pod-2/rootfs/etc"] {
            std::fs::create_dir_all(tasks.join(d)).unwrap();
        }
        let bundle = tasks.join("pod-1");
        std::fs::write(bundle.join("config.json"), "{}").unwrap();
        std::fs::write(tasks.join("pod-2/rootfs/etc/passwd"), "root:x:0:0\n").unwrap();
        std::fs::write(top.path().join("other-namespace"), "no").unwrap();
        let reach = shim_reach(&bundle, &top.path().join("cache"), None);
        let top_dir = top.path().to_path_buf();
        std::thread::spawn(move || {
            assert_eq!(reach.enforce().unwrap(), Enforced::Fully);
            let own = std::fs::read_to_string(tasks.join("pod-2/rootfs/etc/passwd"));
            assert_eq!(own.unwrap(), "root:x:0:0\n");
            std::fs::write(tasks.join("pod-2/new"), "made").unwrap();
            let e = std::fs::read(top_dir.join("other-namespace")).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        })
        .join()
        .unwrap();
    }
}
