//! seccomp filters for the threads that handle guest input, built with
//! seccompiler (as Firecracker builds its own): each thread may make only
//! the system calls its work needs. A call outside the list fails with
//! EPERM, so the VM it serves ends with an error while the host process
//! and every other VM carry on (a kill action would take the thread down
//! without unwinding, leaving its VM's waiters hanging).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter failed")]
    Build(#[source] seccompiler::BackendError),
    #[error("compiling the seccomp filter failed")]
    Compile(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter failed")]
    Install(#[source] seccompiler::Error),
}

/// What every vCPU thread needs: KVM_RUN and the register ioctls, its
/// memory allocator, thread synchronisation, the kick signal's return,
/// time, writing its streams and logs, and ending (abort included).
pub const VCPU_BASE: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Installs a filter on the calling thread allowing `VCPU_BASE` and
/// `extra`. Threads it creates later inherit it.
pub fn confine_thread(extra: &[i64]) -> Result<(), SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = VCPU_BASE
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    let program: BpfProgram = filter.try_into().map_err(SeccompError::Compile)?;
    seccompiler::apply_filter(&program).map_err(SeccompError::Install)
}

/// The calling thread's seccomp mode (`Seccomp:` in /proc: 2 is filtered).
pub fn thread_mode(tid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filtered_thread_can_make_only_its_calls() {
        let r = std::thread::spawn(|| {
            confine_thread(&[]).unwrap();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            // SAFETY: socket with constant arguments; it must be refused.
            let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: as above.
            let f = unsafe { libc::fork() };
            let ferrno = std::io::Error::last_os_error().raw_os_error();
            (thread_mode(tid), s, errno, f, ferrno)
        })
        .join()
        .unwrap();
        assert_eq!(
            r.0, None,
            "the thread cannot read /proc (openat is not allowed)"
        );
        assert_eq!((r.1, r.2), (-1, Some(libc::EPERM)));
        assert_eq!((r.3, r.4), (-1, Some(libc::EPERM)));
    }
}
