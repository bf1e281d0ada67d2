//! The gateway's seccomp filter: once `flint serve` has opened what it
//! needs and dropped its privileges, every thread it has and will have (the
//! async workers that read clients' requests and functions' responses, the
//! blocking pool that applies manifests and runs VMs) may make only the
//! calls serving needs. No thread can start a program, make a process,
//! open a socket or connect anywhere, or signal another process
//! (`flint_executor::seccomp::confine_process`); the vCPU threads' own,
//! narrower filters stack on top.

use flint_executor::seccomp::{confine_process, SeccompError, SERVICE_BASE, VCPU_BASE};

/// What applying manifests and running Linux functions need beyond a service process's calls
/// (`SERVICE_BASE`), a vCPU thread's and the Linux layer's file calls
/// (those run on the gateway's own VM threads too): snapshots and unpacked
/// images written in the state directory, images read from the image root.
pub const APPLY_CALLS: &[i64] = &[
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_symlink,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_access,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_umask,
    // A Linux function's stdout and stderr pipes.
    libc::SYS_pipe2,
    // A connection to a Linux server in a VM: the VM gets one end of a
    // Unix socket pair, the gateway keeps the other (no address, no
    // network: `socket` and `connect` stay refused).
    libc::SYS_socketpair,
];

/// Puts every thread of this process under the gateway's filter.
pub fn confine() -> Result<(), SeccompError> {
    let calls: Vec<i64> = VCPU_BASE
        .iter()
        .chain(flint_linux::HOST_CALLS)
        .chain(SERVICE_BASE)
        .chain(APPLY_CALLS)
        .copied()
        .collect();
    confine_process(&calls)
}
