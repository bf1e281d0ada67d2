#![allow(non_upper_case_globals)]
//! The system-call table: every call Flint answers, by family, as gVisor's
//! `pkg/sentry/syscalls/linux` lays them out. Anything not listed returns
//! `ENOSYS` (logged once per number). docs/linux.md lists them.

pub mod fd;
pub mod file;
pub mod futex;
pub mod info;
pub mod mem;
pub mod poll;
pub mod proc;
pub mod signal;
pub mod socket;
pub mod time;
pub mod timer;

use libc::*;

use crate::kernel::Kernel;
use crate::mm::Fault;
use crate::task::{Pid, Wait};

/// Why a call did not return a value now.
#[derive(Debug)]
pub enum Stop {
    /// Fail with this errno.
    Errno(i32),
    /// Wait; the call is retried (or completed) when the wait ends.
    Block(Wait),
    /// Interrupted by a signal (`-ERESTARTSYS`).
    Restart,
    /// The thread is gone (exit, exit_group, a fatal signal).
    Gone,
    /// The thread gives up the vCPU, its result already set.
    Yield,
    /// The registers were set by the call (execve, rt_sigreturn).
    NoResult,
}

pub type SysResult = Result<u64, Stop>;

impl From<Fault> for Stop {
    fn from(f: Fault) -> Self {
        match f {
            Fault::OutOfMemory => Stop::Errno(ENOMEM),
            _ => Stop::Errno(EFAULT),
        }
    }
}

pub fn err<T>(e: i32) -> Result<T, Stop> {
    Err(Stop::Errno(e))
}

/// Maps a host I/O error to the errno to return.
pub fn host_err(e: std::io::Error) -> Stop {
    Stop::Errno(e.raw_os_error().unwrap_or(EIO))
}

pub use libc::{E2BIG, EFAULT, EINTR, ENAMETOOLONG, ENOMEM, ETIMEDOUT};
/// The kernel-internal "restart this call" code.
pub const ERESTARTSYS: i32 = 512;

/// Calls that a signal handler always interrupts with EINTR, whatever
/// SA_RESTART says (signal(7)).
pub fn interruptible_only(nr: u64) -> bool {
    matches!(
        nr as i64,
        SYS_poll
            | SYS_ppoll
            | SYS_select
            | SYS_pselect6
            | SYS_epoll_wait
            | SYS_epoll_pwait
            | SYS_nanosleep
            | SYS_clock_nanosleep
            | SYS_rt_sigsuspend
            | SYS_pause
            | SYS_rt_sigtimedwait
    )
}

/// Runs system call `nr` for thread `t`.
pub fn dispatch(k: &mut Kernel, t: Pid, nr: u64, a: [u64; 6]) -> SysResult {
    match nr as i64 {
        // Files and descriptors (file.rs, fd.rs).
        SYS_read => fd::read(k, t, a[0], a[1], a[2]),
        SYS_write => fd::write(k, t, a[0], a[1], a[2]),
        SYS_pread64 => fd::pread(k, t, a[0], a[1], a[2], a[3]),
        SYS_pwrite64 => fd::pwrite(k, t, a[0], a[1], a[2], a[3]),
        SYS_readv => fd::readv(k, t, a[0], a[1], a[2]),
        SYS_writev => fd::writev(k, t, a[0], a[1], a[2]),
        SYS_sendfile => fd::sendfile(k, t, a[0], a[1], a[2], a[3]),
        SYS_lseek => fd::lseek(k, t, a[0], a[1] as i64, a[2]),
        SYS_close => fd::close(k, t, a[0]),
        SYS_close_range => fd::close_range(k, t, a[0], a[1], a[2]),
        SYS_dup => fd::dup(k, t, a[0]),
        SYS_dup2 => fd::dup3(k, t, a[0], a[1], 0, true),
        SYS_dup3 => fd::dup3(k, t, a[0], a[1], a[2], false),
        SYS_fcntl => fd::fcntl(k, t, a[0], a[1], a[2]),
        SYS_ioctl => fd::ioctl(k, t, a[0], a[1], a[2]),
        SYS_pipe => fd::pipe2(k, t, a[0], 0),
        SYS_pipe2 => fd::pipe2(k, t, a[0], a[1]),
        SYS_open => file::openat(k, t, AT_FDCWD as u64, a[0], a[1], a[2]),
        SYS_openat => file::openat(k, t, a[0], a[1], a[2], a[3]),
        SYS_creat => file::openat(
            k,
            t,
            AT_FDCWD as u64,
            a[0],
            (O_CREAT | O_WRONLY | O_TRUNC) as u64,
            a[1],
        ),
        SYS_stat => file::fstatat(k, t, AT_FDCWD as u64, a[0], a[1], 0),
        SYS_lstat => file::fstatat(
            k,
            t,
            AT_FDCWD as u64,
            a[0],
            a[1],
            AT_SYMLINK_NOFOLLOW as u64,
        ),
        SYS_fstat => file::fstat(k, t, a[0], a[1]),
        SYS_newfstatat => file::fstatat(k, t, a[0], a[1], a[2], a[3]),
        SYS_statx => file::statx(k, t, a[0], a[1], a[2], a[3], a[4]),
        SYS_statfs | SYS_fstatfs => file::statfs(k, t, a[1]),
        SYS_access => file::faccessat(k, t, AT_FDCWD as u64, a[0], a[1]),
        SYS_faccessat | SYS_faccessat2 => file::faccessat(k, t, a[0], a[1], a[2]),
        SYS_getdents64 => file::getdents64(k, t, a[0], a[1], a[2]),
        SYS_getcwd => file::getcwd(k, t, a[0], a[1]),
        SYS_chdir => file::chdir(k, t, a[0]),
        SYS_fchdir => file::fchdir(k, t, a[0]),
        SYS_mkdir => file::mkdirat(k, t, AT_FDCWD as u64, a[0], a[1]),
        SYS_mkdirat => file::mkdirat(k, t, a[0], a[1], a[2]),
        SYS_rmdir => file::unlinkat(k, t, AT_FDCWD as u64, a[0], AT_REMOVEDIR as u64),
        SYS_unlink => file::unlinkat(k, t, AT_FDCWD as u64, a[0], 0),
        SYS_unlinkat => file::unlinkat(k, t, a[0], a[1], a[2]),
        SYS_rename => file::renameat(k, t, AT_FDCWD as u64, a[0], AT_FDCWD as u64, a[1], 0),
        SYS_renameat => file::renameat(k, t, a[0], a[1], a[2], a[3], 0),
        SYS_renameat2 => file::renameat(k, t, a[0], a[1], a[2], a[3], a[4]),
        SYS_link => file::linkat(k, t, AT_FDCWD as u64, a[0], AT_FDCWD as u64, a[1]),
        SYS_linkat => file::linkat(k, t, a[0], a[1], a[2], a[3]),
        SYS_symlink => file::symlinkat(k, t, a[0], AT_FDCWD as u64, a[1]),
        SYS_symlinkat => file::symlinkat(k, t, a[0], a[1], a[2]),
        SYS_readlink => file::readlinkat(k, t, AT_FDCWD as u64, a[0], a[1], a[2]),
        SYS_readlinkat => file::readlinkat(k, t, a[0], a[1], a[2], a[3]),
        SYS_chmod => file::fchmodat(k, t, AT_FDCWD as u64, a[0], a[1]),
        SYS_fchmodat => file::fchmodat(k, t, a[0], a[1], a[2]),
        SYS_fchmod => file::fchmod(k, t, a[0], a[1]),
        SYS_chown | SYS_lchown | SYS_fchown | SYS_fchownat => Ok(0),
        SYS_truncate => file::truncate(k, t, a[0], a[1]),
        SYS_ftruncate => file::ftruncate(k, t, a[0], a[1]),
        SYS_utimensat => file::utimensat(k, t, a[0], a[1], a[2], a[3]),
        SYS_fsync | SYS_fdatasync | SYS_sync | SYS_syncfs | SYS_flock | SYS_fadvise64 => Ok(0),
        SYS_umask => file::umask(k, t, a[0]),
        // Polling (poll.rs).
        SYS_poll => poll::poll(k, t, a[0], a[1], a[2] as i32 as i64),
        SYS_ppoll => poll::ppoll(k, t, a[0], a[1], a[2]),
        SYS_select => poll::select(k, t, a[0], a[1], a[2], a[3], a[4], false),
        SYS_pselect6 => poll::select(k, t, a[0], a[1], a[2], a[3], a[4], true),
        SYS_epoll_create => poll::epoll_create(k, t, 0),
        SYS_epoll_create1 => poll::epoll_create(k, t, a[0]),
        SYS_epoll_ctl => poll::epoll_ctl(k, t, a[0], a[1], a[2], a[3]),
        SYS_epoll_wait | SYS_epoll_pwait => {
            poll::epoll_wait(k, t, a[0], a[1], a[2], a[3] as i32 as i64)
        }
        SYS_eventfd => poll::eventfd(k, t, a[0], 0),
        SYS_eventfd2 => poll::eventfd(k, t, a[0], a[1]),
        // Memory (mem.rs).
        SYS_brk => mem::brk(k, t, a[0]),
        SYS_mmap => mem::mmap(k, t, a[0], a[1], a[2], a[3], a[4], a[5]),
        SYS_munmap => mem::munmap(k, t, a[0], a[1]),
        SYS_mprotect => mem::mprotect(k, t, a[0], a[1], a[2]),
        SYS_mremap => mem::mremap(k, t, a[0], a[1], a[2], a[3], a[4]),
        SYS_madvise => mem::madvise(k, t, a[0], a[1], a[2]),
        SYS_mlock | SYS_munlock | SYS_mlockall | SYS_munlockall | SYS_msync | SYS_mincore => Ok(0),
        // Processes and threads (proc.rs).
        SYS_clone => proc::clone(k, t, a[0], a[1], a[2], a[3], a[4]),
        SYS_clone3 => proc::clone3(k, t, a[0], a[1]),
        SYS_fork => proc::clone(k, t, SIGCHLD as u64, 0, 0, 0, 0),
        SYS_vfork => proc::clone(k, t, (CLONE_VM | CLONE_VFORK | SIGCHLD) as u64, 0, 0, 0, 0),
        SYS_execve => proc::execve(k, t, AT_FDCWD as u64, a[0], a[1], a[2]),
        SYS_execveat => proc::execve(k, t, a[0], a[1], a[2], a[3]),
        SYS_exit => proc::exit(k, t, a[0]),
        SYS_exit_group => proc::exit_group(k, t, a[0]),
        SYS_wait4 => proc::wait4(k, t, a[0] as i32, a[1], a[2], a[3]),
        SYS_waitid => proc::waitid(k, t, a[0], a[1] as i32, a[2], a[3]),
        SYS_getpid => Ok(k.thread(t).pid as u64),
        SYS_gettid => Ok(t as u64),
        SYS_getppid => Ok(k.proc_of(t).ppid as u64),
        SYS_getpgid => proc::getpgid(k, t, a[0] as i32),
        SYS_getpgrp => proc::getpgid(k, t, 0),
        SYS_setpgid => proc::setpgid(k, t, a[0] as i32, a[1] as i32),
        SYS_getsid => Ok(k.proc_of(t).sid as u64),
        SYS_setsid => proc::setsid(k, t),
        SYS_set_tid_address => proc::set_tid_address(k, t, a[0]),
        SYS_arch_prctl => proc::arch_prctl(k, t, a[0], a[1]),
        SYS_prctl => proc::prctl(k, t, a[0], a[1]),
        SYS_set_robust_list | SYS_get_robust_list => Ok(0),
        SYS_rseq => err(ENOSYS),
        SYS_sched_yield => Err(Stop::Yield),
        SYS_sched_getaffinity => proc::sched_getaffinity(k, t, a[1], a[2]),
        SYS_getcpu => proc::getcpu(k, t, a[0], a[1]),
        SYS_sched_setaffinity | SYS_sched_setscheduler | SYS_sched_setparam | SYS_setpriority => {
            Ok(0)
        }
        SYS_sched_getscheduler | SYS_sched_getparam | SYS_getpriority => Ok(0),
        SYS_getuid | SYS_geteuid | SYS_getgid | SYS_getegid => Ok(0),
        SYS_setuid | SYS_setgid | SYS_setreuid | SYS_setregid | SYS_setresuid | SYS_setresgid
        | SYS_setgroups | SYS_setfsuid | SYS_setfsgid => Ok(0),
        SYS_getresuid | SYS_getresgid => proc::getresid(k, t, a[0], a[1], a[2]),
        SYS_getgroups => Ok(0),
        SYS_capget => proc::capget(k, t, a[1]),
        // Signals (signal.rs).
        SYS_rt_sigaction => signal::rt_sigaction(k, t, a[0] as i32, a[1], a[2], a[3]),
        SYS_rt_sigprocmask => signal::rt_sigprocmask(k, t, a[0] as i32, a[1], a[2], a[3]),
        SYS_rt_sigreturn => signal::rt_sigreturn(k, t),
        SYS_rt_sigsuspend => signal::rt_sigsuspend(k, t, a[0], a[1]),
        SYS_rt_sigpending => signal::rt_sigpending(k, t, a[0]),
        SYS_pause => Err(Stop::Block(Wait::Signal)),
        SYS_sigaltstack => signal::sigaltstack(k, t, a[0], a[1]),
        SYS_kill => signal::kill(k, t, a[0] as i32, a[1] as i32),
        SYS_tgkill => signal::tgkill(k, t, a[0] as i32, a[1] as i32, a[2] as i32),
        SYS_tkill => signal::tgkill(k, t, -1, a[0] as i32, a[1] as i32),
        SYS_futex => futex::futex(k, t, a[0], a[1], a[2], a[3], a[4], a[5]),
        // Time (time.rs).
        SYS_clock_gettime => time::clock_gettime(k, t, a[0], a[1]),
        SYS_clock_getres => time::clock_getres(k, t, a[1]),
        SYS_gettimeofday => time::gettimeofday(k, t, a[0], a[1]),
        SYS_time => time::time(k, t, a[0]),
        SYS_nanosleep => time::nanosleep(k, t, a[0]),
        SYS_clock_nanosleep => time::clock_nanosleep(k, t, a[0], a[1], a[2]),
        SYS_setitimer => time::setitimer(k, t, a[0], a[1], a[2]),
        SYS_getitimer => time::getitimer(k, t, a[1]),
        SYS_alarm => time::alarm(k, t, a[0]),
        SYS_timer_create => timer::timer_create(k, t, a[0], a[1], a[2]),
        SYS_timer_settime => timer::timer_settime(k, t, a[0], a[1], a[2], a[3]),
        SYS_timer_gettime => timer::timer_gettime(k, t, a[0], a[1]),
        SYS_timer_getoverrun => timer::timer_getoverrun(k, t, a[0]),
        SYS_timer_delete => timer::timer_delete(k, t, a[0]),
        SYS_times => time::times(k, t, a[0]),
        SYS_getrusage => time::getrusage(k, t, a[1]),
        // The system (info.rs).
        SYS_uname => info::uname(k, t, a[0]),
        SYS_sysinfo => info::sysinfo(k, t, a[0]),
        SYS_getrandom => info::getrandom(k, t, a[0], a[1]),
        SYS_prlimit64 => info::prlimit(k, t, a[1], a[2], a[3]),
        SYS_getrlimit => info::prlimit(k, t, a[0], 0, a[1]),
        SYS_setrlimit => Ok(0),
        SYS_sethostname => info::sethostname(k, t, a[0], a[1]),
        // Sockets inside the VM (socket.rs).
        SYS_socket => socket::socket(k, t, a[0], a[1], a[2]),
        SYS_socketpair => socket::socketpair(k, t, a[0], a[1], a[2], a[3]),
        SYS_bind => socket::bind(k, t, a[0], a[1], a[2]),
        SYS_listen => socket::listen(k, t, a[0], a[1]),
        SYS_accept => socket::accept(k, t, a[0], a[1], a[2], 0),
        SYS_accept4 => socket::accept(k, t, a[0], a[1], a[2], a[3]),
        SYS_connect => socket::connect(k, t, a[0], a[1], a[2]),
        SYS_sendto => socket::sendto(k, t, a[0], a[1], a[2], a[3], a[4], a[5]),
        SYS_recvfrom => socket::recvfrom(k, t, a[0], a[1], a[2], a[3], a[4], a[5]),
        SYS_sendmsg => socket::sendmsg(k, t, a[0], a[1], a[2]),
        SYS_recvmsg => socket::recvmsg(k, t, a[0], a[1], a[2]),
        SYS_shutdown => socket::shutdown(k, t, a[0], a[1]),
        SYS_getsockopt => socket::getsockopt(k, t, a[0], a[1], a[2], a[3], a[4]),
        SYS_setsockopt => socket::setsockopt(k, t, a[0], a[1], a[2]),
        SYS_getsockname => socket::name(k, t, a[0], a[1], a[2], false),
        SYS_getpeername => socket::name(k, t, a[0], a[1], a[2], true),
        _ => {
            if k.warned.insert(nr) {
                // At info level: a program's stderr under `flint run` is
                // the terminal's, and most programs carry on without it.
                tracing::info!("unimplemented system call {nr}: returning ENOSYS");
            }
            err(ENOSYS)
        }
    }
}
