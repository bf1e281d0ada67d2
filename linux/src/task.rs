//! Processes and threads of a container, as the VMM keeps them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use kvm_bindings::kvm_regs;

use crate::fs::file::FdTable;
use crate::mm::AddressSpace;
use crate::signal::{SigActions, SigSet};

pub type Pid = i32;

/// Why a thread is not running, and when it may go on.
#[derive(Debug, Clone)]
pub enum Wait {
    /// Until the pipe has data or no writer (`read`), or room or no reader.
    PipeRead,
    PipeWrite,
    /// Until a host fd (the container's stdin) is readable.
    HostRead(i32),
    /// Until a child changes state (`wait4`, `waitid`).
    Child,
    /// Until woken on this futex word (address space id, address), or the
    /// deadline (nanoseconds on the monotonic clock).
    Futex {
        mm: usize,
        addr: u64,
        bitset: u32,
        deadline: Option<u64>,
    },
    /// Until the deadline (`nanosleep`, `poll` with only a timeout).
    Sleep(u64),
    /// Until any of these becomes ready, or the deadline (`poll`, `select`).
    Poll {
        deadline: Option<u64>,
    },
    /// Until a signal arrives (`pause`, `rt_sigsuspend`).
    Signal,
    /// A vfork parent until its child execs or exits.
    Vfork(Pid),
}

/// A blocked system call, retried (or completed) when its wait ends.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub wait: Wait,
    pub nr: u64,
    pub args: [u64; 6],
    /// Set when the wait ended with a result (a futex wake): return it
    /// instead of retrying the call.
    pub result: Option<i64>,
}

#[derive(Debug)]
pub struct Thread {
    pub tid: Pid,
    pub pid: Pid,
    pub regs: kvm_regs,
    pub fs_base: u64,
    pub gs_base: u64,
    /// x87/SSE/AVX state while the thread is off the vCPU.
    pub fpu: Option<Box<kvm_bindings::kvm_xsave>>,
    pub sigmask: SigSet,
    pub pending: Vec<crate::signal::SigInfo>,
    pub altstack: (u64, u64, i32),
    pub clear_child_tid: u64,
    pub blocked: Option<Blocked>,
    /// Saved mask to restore after `rt_sigsuspend`'s handler returns.
    pub saved_mask: Option<SigSet>,
    /// CR2 at the last exit (the fault address of a page fault).
    pub last_cr2: u64,
    /// The call that was interrupted by a signal (restarted if the
    /// handler has SA_RESTART, else it returns EINTR).
    pub restart: Option<u64>,
    /// The exception behind a pending fault signal: vector, error, CR2.
    pub fault: Option<(u64, u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core: bool },
}

impl ExitStatus {
    /// The status word `wait4` reports.
    pub fn wait_status(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => (c & 0xff) << 8,
            ExitStatus::Signaled { signal, core } => signal | if core { 0x80 } else { 0 },
        }
    }

    /// SIGCHLD's and waitid's si_code and si_status for this status.
    pub fn child_code(self) -> (i32, i32) {
        match self {
            ExitStatus::Exited(c) => (crate::signal::CLD_EXITED, c),
            ExitStatus::Signaled { signal, core: true } => (crate::signal::CLD_DUMPED, signal),
            ExitStatus::Signaled {
                signal,
                core: false,
            } => (crate::signal::CLD_KILLED, signal),
        }
    }

    /// The exit code a shell (and `flint run`, and runc) reports.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c & 0xff,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }
}

#[derive(Debug)]
pub struct Process {
    pub pid: Pid,
    pub ppid: Pid,
    pub pgid: Pid,
    pub sid: Pid,
    pub mm: Rc<RefCell<AddressSpace>>,
    /// A number naming `mm` (futex keys).
    pub mm_id: usize,
    pub fds: Rc<RefCell<FdTable>>,
    pub actions: Rc<RefCell<SigActions>>,
    pub cwd: String,
    pub umask: u32,
    /// The program's path in the guest (`/proc/PID/exe`) and its argv.
    pub exe: String,
    pub cmdline: Vec<Vec<u8>>,
    pub environ: Vec<Vec<u8>>,
    pub threads: Vec<Pid>,
    pub exit: Option<ExitStatus>,
    /// The thread that called `exit_group`, or the last to exit.
    pub children: Vec<Pid>,
    /// Signal the parent gets when this process ends (SIGCHLD for fork).
    pub exit_signal: i32,
    /// Set when the exit status was already collected by `wait`.
    pub reaped: bool,
    pub vfork_parent: Option<Pid>,
    pub start_ns: u64,
    /// Interval timer (ITIMER_REAL): next expiry and interval, in ns.
    pub itimer: Option<(u64, u64)>,
    /// POSIX timers (`timer_create`), by id.
    pub timers: BTreeMap<i32, PosixTimer>,
    /// Told the exit status (a process started from outside the VM).
    pub notify: Option<std::sync::mpsc::Sender<Result<ExitStatus, crate::LinuxError>>>,
}

/// One POSIX timer (`syscalls/timer.rs`).
#[derive(Debug, Clone)]
pub struct PosixTimer {
    /// The clock it was created on (a realtime one converts absolute
    /// deadlines).
    pub clock: i32,
    pub signo: i32,
    /// `SIGEV_SIGNAL`, `SIGEV_NONE` or `SIGEV_THREAD_ID`.
    pub notify: i32,
    /// The thread `SIGEV_THREAD_ID` names.
    pub target: Option<Pid>,
    /// `sigev_value`, handed back in the signal's `si_value`.
    pub value: u64,
    /// Next expiry (monotonic ns) while armed, and the period.
    pub next: Option<u64>,
    pub interval: u64,
    /// Periods missed at the last expiry.
    pub overrun: i32,
}

/// Every process and thread of one VM.
#[derive(Debug, Default)]
pub struct Table {
    pub procs: BTreeMap<Pid, Process>,
    pub threads: BTreeMap<Pid, Thread>,
    pub next_pid: Pid,
}
