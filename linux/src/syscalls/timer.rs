//! POSIX per-process timers: `timer_create`, `timer_settime`,
//! `timer_gettime`, `timer_getoverrun`, `timer_delete`, as Linux's
//! `kernel/time/posix-timers.c` defines them: `SIGEV_SIGNAL` to the
//! process, `SIGEV_THREAD_ID` to one of its threads, `SIGEV_NONE`; the
//! signal carries `SI_TIMER`, the timer id, the overrun and the caller's
//! `sigev_value`. A timer does not survive exec and is not inherited by
//! fork. Expiries are kept on the VM's monotonic clock (a realtime
//! `TIMER_ABSTIME` deadline is converted when it is set).

use libc::{
    CLOCK_BOOTTIME, CLOCK_MONOTONIC, CLOCK_MONOTONIC_COARSE, CLOCK_MONOTONIC_RAW,
    CLOCK_PROCESS_CPUTIME_ID, CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_THREAD_CPUTIME_ID,
    EAGAIN, EINVAL, SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD_ID, TIMER_ABSTIME,
};

use super::{err, SysResult};
use crate::kernel::Kernel;
use crate::signal::{SigInfo, SIGALRM};
use crate::task::{Pid, PosixTimer};

const NS: u64 = 1_000_000_000;
/// Most timers a process may hold (Linux's limit is RLIMIT_SIGPENDING).
const MAX_TIMERS: usize = 256;
/// `si_code` of a timer's signal.
pub const SI_TIMER: i32 = -2;

fn realtime(clock: i32) -> bool {
    clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE
}

pub fn timer_create(k: &mut Kernel, t: Pid, clock: u64, sevp: u64, out: u64) -> SysResult {
    let clock = clock as i32;
    if ![
        CLOCK_REALTIME,
        CLOCK_MONOTONIC,
        CLOCK_PROCESS_CPUTIME_ID,
        CLOCK_THREAD_CPUTIME_ID,
        CLOCK_MONOTONIC_RAW,
        CLOCK_REALTIME_COARSE,
        CLOCK_MONOTONIC_COARSE,
        CLOCK_BOOTTIME,
    ]
    .contains(&clock)
    {
        return err(EINVAL);
    }
    let pid = k.thread(t).pid;
    let next_id = k.proc_of(t).timers.keys().next_back().map_or(0, |i| i + 1);
    // struct sigevent: sigev_value, sigev_signo, sigev_notify, then the
    // thread id for SIGEV_THREAD_ID.
    let (value, signo, notify, target) = if sevp == 0 {
        (next_id as u64, SIGALRM, SIGEV_SIGNAL, None)
    } else {
        let b = k.read_user(t, sevp, 20)?;
        let word = |i: usize| i32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let value = u64::from_le_bytes(b[..8].try_into().expect("8"));
        let (signo, notify) = (word(8), word(12));
        let target = match notify {
            SIGEV_NONE | SIGEV_SIGNAL => None,
            SIGEV_THREAD_ID => {
                let tid = word(16);
                // The thread must be one of the caller's process.
                if k.table.threads.get(&tid).is_none_or(|th| th.pid != pid) {
                    return err(EINVAL);
                }
                Some(tid)
            }
            _ => return err(EINVAL),
        };
        if notify != SIGEV_NONE && !(1..=64).contains(&signo) {
            return err(EINVAL);
        }
        (value, signo, notify, target)
    };
    if k.proc_of(t).timers.len() >= MAX_TIMERS {
        return err(EAGAIN);
    }
    k.write_u32(t, out, next_id as u32)?;
    k.proc_of_mut(t).timers.insert(
        next_id,
        PosixTimer {
            clock,
            signo,
            notify,
            target,
            value,
            next: None,
            interval: 0,
            overrun: 0,
        },
    );
    Ok(0)
}

/// Reads a `struct itimerspec` (interval, value) in nanoseconds.
fn read_itimerspec(k: &mut Kernel, t: Pid, addr: u64) -> Result<(u64, u64), super::Stop> {
    let v = super::time::read_times(k, t, addr, 2, 1)?;
    Ok((v[0], v[1]))
}

fn itimerspec(interval: u64, value: u64) -> Vec<u8> {
    [interval / NS, interval % NS, value / NS, value % NS]
        .iter()
        .flat_map(|w| (*w as i64).to_le_bytes())
        .collect()
}

fn current(k: &Kernel, timer: &PosixTimer) -> Vec<u8> {
    let left = timer
        .next
        .map_or(0, |at| at.saturating_sub(k.mono_ns()).max(1));
    itimerspec(timer.interval, left)
}

fn timer_of(k: &Kernel, t: Pid, id: u64) -> Result<PosixTimer, super::Stop> {
    match k.proc_of(t).timers.get(&(id as i32)) {
        Some(timer) if id <= i32::MAX as u64 => Ok(timer.clone()),
        _ => err(EINVAL),
    }
}

pub fn timer_settime(k: &mut Kernel, t: Pid, id: u64, flags: u64, new: u64, old: u64) -> SysResult {
    let timer = timer_of(k, t, id)?;
    let (interval, value) = read_itimerspec(k, t, new)?;
    if old != 0 {
        let b = current(k, &timer);
        k.write_user(t, old, &b)?;
    }
    let now = k.mono_ns();
    let next = if value == 0 {
        None
    } else if flags & TIMER_ABSTIME as u64 != 0 {
        let base = if realtime(timer.clock) {
            k.wall_ns()
        } else {
            now
        };
        // A deadline already past fires at once.
        Some(now.saturating_add(value.saturating_sub(base)))
    } else {
        Some(now.saturating_add(value))
    };
    let timer = k
        .proc_of_mut(t)
        .timers
        .get_mut(&(id as i32))
        .expect("looked up");
    timer.next = next;
    timer.interval = interval;
    timer.overrun = 0;
    Ok(0)
}

pub fn timer_gettime(k: &mut Kernel, t: Pid, id: u64, out: u64) -> SysResult {
    let timer = timer_of(k, t, id)?;
    let b = current(k, &timer);
    k.write_user(t, out, &b)?;
    Ok(0)
}

pub fn timer_getoverrun(k: &mut Kernel, t: Pid, id: u64) -> SysResult {
    Ok(timer_of(k, t, id)?.overrun as u64)
}

pub fn timer_delete(k: &mut Kernel, t: Pid, id: u64) -> SysResult {
    timer_of(k, t, id)?;
    k.proc_of_mut(t).timers.remove(&(id as i32));
    Ok(0)
}

impl Kernel {
    /// Fires the POSIX timers due at `now`: each signals once however
    /// many periods passed, and counts the rest as its overrun.
    pub fn fire_posix_timers(&mut self, now: u64) {
        let mut due: Vec<(Pid, i32)> = Vec::new();
        for p in self.table.procs.values() {
            if p.exit.is_some() {
                continue;
            }
            for (&id, timer) in &p.timers {
                if timer.next.is_some_and(|at| now >= at) {
                    due.push((p.pid, id));
                }
            }
        }
        for (pid, id) in due {
            let p = self.table.procs.get_mut(&pid).expect("listed");
            let timer = p.timers.get_mut(&id).expect("listed");
            let at = timer.next.expect("armed");
            match (now - at).checked_div(timer.interval) {
                Some(missed) => {
                    timer.overrun = missed.min(i32::MAX as u64) as i32;
                    timer.next =
                        Some(at.saturating_add((missed + 1).saturating_mul(timer.interval)));
                }
                None => {
                    timer.overrun = 0;
                    timer.next = None;
                }
            }
            let timer = timer.clone();
            if timer.notify == SIGEV_NONE {
                continue;
            }
            let info = SigInfo {
                signo: timer.signo,
                code: SI_TIMER,
                pid: id,
                uid: 0,
                status: timer.overrun,
                addr: timer.value,
            };
            match timer.target {
                Some(tid) if self.table.threads.get(&tid).is_some_and(|th| th.pid == pid) => {
                    self.signal_thread(tid, info)
                }
                _ => self.signal_process(pid, info),
            }
        }
    }

    /// The earliest armed POSIX timer of any process.
    pub fn next_posix_timer(&self) -> Option<u64> {
        self.table
            .procs
            .values()
            .flat_map(|p| p.timers.values().filter_map(|t| t.next))
            .min()
    }
}
