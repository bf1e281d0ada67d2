//! seccomp filters for the threads that handle guest input, built with
//! seccompiler (as Firecracker builds its own): each thread may make only
//! the system calls its work needs. A call outside the list traps
//! (`SIGSYS`): the handler makes it fail with EPERM and records it for the
//! thread, and the thread's loop ends the VM it serves with an error
//! ([`check`]) while the host process and every other VM carry on. (A kill
//! action would take the thread down without unwinding, holding its VM's
//! locks and leaving its waiters hanging.)
//!
//! A process that serves many VMs (the gateway, the shim) also puts all of
//! its threads under one filter of its own once its setup is done
//! ([`confine_process`]): the async workers that parse clients' requests
//! and functions' responses may make only the calls serving needs. A
//! refused call there fails with EPERM, is logged (from the signal handler,
//! with the call's number and the thread) and counted ([`refused_calls`]).
//! The vCPU threads' own filters stack on top of it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("system call {0} is outside this thread's seccomp filter")]
    Violation(i64),
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

/// What a process serving many VMs (the gateway, the shim) needs beyond
/// `VCPU_BASE`, for [`confine_process`]: accepting and answering
/// connections, tokio's reactor and wakers, threads (clone narrowed to
/// threads), VM memory, and reading its limits, usage and identity.
pub const SERVICE_BASE: &[i64] = &[
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
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
];

thread_local! {
    /// The last call this thread's filter refused (0: none).
    static VIOLATION: Cell<i64> = const { Cell::new(0) };
}

/// Calls refused by any filter of this process, tolerated ones aside.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// How many system calls the process's filters have refused so far.
pub fn refused_calls() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Writes "flint: seccomp refused system call N on thread T" to stderr
/// with only async-signal-safe calls (no allocation, no locks).
fn log_refused(nr: i64) {
    fn put(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
        let n = bytes.len().min(buf.len() - *at);
        buf[*at..*at + n].copy_from_slice(&bytes[..n]);
        *at += n;
    }
    fn put_num(buf: &mut [u8], at: &mut usize, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(buf, at, &digits[i..]);
    }
    let mut buf = [0u8; 96];
    let mut at = 0;
    put(&mut buf, &mut at, b"flint: seccomp refused system call ");
    put_num(&mut buf, &mut at, nr as u64);
    put(&mut buf, &mut at, b" on thread ");
    // SAFETY: gettid has no preconditions and is async-signal-safe.
    put_num(&mut buf, &mut at, unsafe { libc::gettid() } as u64);
    put(&mut buf, &mut at, b"\n");
    // SAFETY: write(2) of a stack buffer to stderr, async-signal-safe.
    unsafe { libc::write(2, buf.as_ptr().cast(), at) };
}

/// Refused (EPERM) without ending the VM: glibc's allocator opens
/// `/proc/sys/vm/overcommit_memory` on its own the first time it trims a
/// thread's heap, on whatever thread that is.
const TOLERATED: &[i64] = &[libc::SYS_openat, libc::SYS_open];

/// `SIGSYS` from the filter: the call fails with EPERM and is recorded.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler; for SIGSYS the siginfo's `_sigsys` member holds
    // the call number at byte 24 (after si_signo, si_errno, si_code and
    // the call address).
    unsafe {
        let nr = *(info as *const u8).add(24).cast::<i32>() as i64;
        if !TOLERATED.contains(&nr) {
            VIOLATION.with(|v| v.set(nr));
            REFUSED.fetch_add(1, Ordering::Relaxed);
            log_refused(nr);
        }
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        uc.uc_mcontext.gregs[libc::REG_RAX as usize] = -(libc::EPERM as i64);
    }
}

fn init_sigsys() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that touches only a const-initialised
        // thread-local and the interrupted context.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigsys as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
        }
    });
}

/// Fails if the calling thread's filter refused a call since the last
/// check: its VM must end.
pub fn check() -> Result<(), SeccompError> {
    match VIOLATION.with(|v| v.replace(0)) {
        0 => Ok(()),
        nr => Err(SeccompError::Violation(nr)),
    }
}

/// Installs a filter on the calling thread allowing `VCPU_BASE` and
/// `extra`; any other call fails with EPERM and is reported by [`check`].
/// Asynchronous signals but the kick are blocked on the thread first.
/// Threads it creates later inherit both.
pub fn confine_thread(extra: &[i64]) -> Result<(), SeccompError> {
    init_sigsys();
    // Other threads' signal handlers must not run here.
    crate::vstate::vcpu::block_signals_but_kick();
    let program = compile(VCPU_BASE.iter().chain(extra))?;
    seccompiler::apply_filter(&program).map_err(SeccompError::Install)
}

/// A filter allowing `calls` (any arguments), trapping everything else.
fn compile<'a>(calls: impl Iterator<Item = &'a i64>) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        calls.map(|&nr| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Compile)
}

/// Installs a filter allowing `calls` on every thread of the process at
/// once (`SECCOMP_FILTER_FLAG_TSYNC`) and, through inheritance, on every
/// thread made later; any other call fails with EPERM, logged and counted.
/// Whatever `calls` says, the process cannot make another: `clone` is
/// allowed only for threads (`CLONE_THREAD`), `clone3` (whose flags a
/// filter cannot read) answers ENOSYS so that the C library falls back to
/// `clone`, `tgkill` reaches only this process's own threads, and `socket`
/// makes only Unix sockets.
/// Threads that have filters of their own already must not exist (the
/// kernel refuses to synchronise them): call it before any VM runs.
pub fn confine_process(calls: &[i64]) -> Result<(), SeccompError> {
    init_sigsys();
    for program in process_filters(calls)? {
        seccompiler::apply_filter_all_threads(&program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

/// As [`confine_process`], but for the calling thread and the threads it
/// (and they) create from now on only: threads that exist already stay
/// as they are (a process keeps one thread outside on purpose).
pub fn confine_from_here(calls: &[i64]) -> Result<(), SeccompError> {
    init_sigsys();
    for program in process_filters(calls)? {
        seccompiler::apply_filter(&program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

/// The two filters of a confined process: ENOSYS for `clone3`, then the
/// allow list with its argument rules.
fn process_filters(calls: &[i64]) -> Result<[BpfProgram; 2], SeccompError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let rule = |arg, op, value| -> Result<Vec<SeccompRule>, SeccompError> {
        let c = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
            .map_err(SeccompError::Build)?;
        Ok(vec![SeccompRule::new(vec![c]).map_err(SeccompError::Build)?])
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let thread = libc::CLONE_THREAD as u64;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        calls.iter().map(|&nr| (nr, Vec::new())).collect();
    rules.insert(
        libc::SYS_clone,
        rule(0, SeccompCmpOp::MaskedEq(thread), thread)?,
    );
    rules.insert(libc::SYS_tgkill, rule(0, SeccompCmpOp::Eq, pid)?);
    if let Some(socket) = rules.get_mut(&libc::SYS_socket) {
        *socket = rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?;
    }
    // Allowed here so that the second filter's ENOSYS is what it gets
    // (the strictest action of all filters wins, and a trap while the C
    // library blocks signals around clone would kill the process).
    rules.insert(libc::SYS_clone3, Vec::new());
    rules.remove(&libc::SYS_fork);
    rules.remove(&libc::SYS_vfork);
    let allow: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?
    .try_into()
    .map_err(SeccompError::Compile)?;
    let no_clone3: BpfProgram = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?
    .try_into()
    .map_err(SeccompError::Compile)?;
    Ok([no_clone3, allow])
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

    #[test]
    fn a_refused_call_is_reported_to_its_thread_alone() {
        let (before, after, again) = std::thread::spawn(|| {
            confine_thread(&[]).unwrap();
            let before = check().is_ok();
            // SAFETY: socket with constant arguments; it must be refused.
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            let after = check();
            (before, after, check().is_ok())
        })
        .join()
        .unwrap();
        assert!(before);
        assert!(
            matches!(after, Err(SeccompError::Violation(n)) if n == libc::SYS_socket),
            "{after:?}"
        );
        assert!(again, "a check clears the record");
        let blocked = std::thread::spawn(|| {
            confine_thread(&[]).unwrap();
            // SAFETY: reads this thread's signal mask into a local set.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                [libc::SIGCHLD, libc::SIGTERM, libc::SIGSYS, libc::SIGSEGV]
                    .map(|s| libc::sigismember(&set, s) == 1)
            }
        })
        .join()
        .unwrap();
        assert_eq!(
            blocked,
            [true, true, false, false],
            "process signals are blocked on a filtered thread, SIGSYS and faults are not"
        );
        assert!(check().is_ok(), "other threads are not affected");
    }
}
