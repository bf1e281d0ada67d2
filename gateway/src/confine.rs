//! The gateway's seccomp filter: once `flint serve` has opened what it
//! needs and dropped its privileges, every thread it has and will have (the
//! async workers that read clients' requests and functions' responses, the
//! blocking pool that applies manifests and runs VMs) may make only the
//! calls serving needs. No thread can start a program, make a process,
//! open a socket or connect anywhere, or signal another process
//! (`flint_executor::seccomp::confine_process`); the vCPU threads' own,
//! narrower filters stack on top.

use flint_executor::seccomp::{confine_process, SeccompError, VCPU_BASE};

/// What serving needs beyond a vCPU thread's calls and the Linux layer's
/// file calls (those run on the gateway's own VM threads too).
pub const SERVE_CALLS: &[i64] = &[
    // Connections: accept, read, write, close; tokio's reactor and wakers.
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_dup3,
    // Threads (clone is narrowed to threads), their stacks and names.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_restart_syscall,
    libc::SYS_seccomp,
    libc::SYS_mincore,
    libc::SYS_memfd_create,
    // Applying manifests: snapshots and unpacked images in the state
    // directory, read from the image root.
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
    // Limits, usage and identity (read only, or bounded by the uid).
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
];

/// Puts every thread of this process under the gateway's filter.
pub fn confine() -> Result<(), SeccompError> {
    let calls: Vec<i64> = VCPU_BASE
        .iter()
        .chain(flint_linux::HOST_CALLS)
        .chain(SERVE_CALLS)
        .copied()
        .collect();
    confine_process(&calls)
}
