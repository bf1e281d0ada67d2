//! Clocks, sleeps and timers.

use libc::{
    CLOCK_BOOTTIME, CLOCK_MONOTONIC, CLOCK_MONOTONIC_COARSE, CLOCK_MONOTONIC_RAW,
    CLOCK_PROCESS_CPUTIME_ID, CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_THREAD_CPUTIME_ID,
    EINVAL, TIMER_ABSTIME,
};

use super::{err, Stop, SysResult};
use crate::kernel::Kernel;
use crate::task::{Pid, Wait};

const NS: u64 = 1_000_000_000;

fn now(k: &Kernel, clock: u64) -> Result<u64, Stop> {
    match clock as i32 {
        CLOCK_REALTIME | CLOCK_REALTIME_COARSE => Ok(k.wall_ns()),
        CLOCK_MONOTONIC | CLOCK_MONOTONIC_RAW | CLOCK_MONOTONIC_COARSE | CLOCK_BOOTTIME => {
            Ok(k.mono_ns())
        }
        CLOCK_PROCESS_CPUTIME_ID | CLOCK_THREAD_CPUTIME_ID => Ok(k.mono_ns()),
        _ => err(EINVAL),
    }
}

fn timespec(ns: u64) -> Vec<u8> {
    let mut b = ((ns / NS) as i64).to_le_bytes().to_vec();
    b.extend(((ns % NS) as i64).to_le_bytes());
    b
}

/// Reads `count` consecutive `(seconds, fraction)` pairs of 64-bit words
/// (`struct timespec` when `frac_ns` is 1, `struct timeval` when it is
/// 1000; `itimerspec`/`itimerval` are two) as nanoseconds, saturating.
/// A negative value or a fraction out of range is `EINVAL`, as the
/// kernel's `timespec64_valid` and `timeval_valid` have it.
pub fn read_times(
    k: &mut Kernel,
    t: Pid,
    addr: u64,
    count: usize,
    frac_ns: u64,
) -> Result<Vec<u64>, Stop> {
    let b = k.read_user(t, addr, 16 * count)?;
    b.chunks_exact(16)
        .map(|c| {
            let s = i64::from_le_bytes(c[..8].try_into().expect("8"));
            let f = i64::from_le_bytes(c[8..].try_into().expect("8"));
            if s < 0 || !(0..(NS / frac_ns) as i64).contains(&f) {
                return err(EINVAL);
            }
            Ok((s as u64)
                .saturating_mul(NS)
                .saturating_add(f as u64 * frac_ns))
        })
        .collect()
}

/// A `struct timespec` as nanoseconds (see [`read_times`]).
pub fn read_timespec(k: &mut Kernel, t: Pid, addr: u64) -> Result<u64, Stop> {
    Ok(read_times(k, t, addr, 1, 1)?[0])
}

pub fn clock_gettime(k: &mut Kernel, t: Pid, clock: u64, out: u64) -> SysResult {
    let n = now(k, clock)?;
    k.write_user(t, out, &timespec(n))?;
    Ok(0)
}

pub fn clock_getres(k: &mut Kernel, t: Pid, out: u64) -> SysResult {
    if out != 0 {
        k.write_user(t, out, &timespec(1))?;
    }
    Ok(0)
}

/// `gettimeofday(tv, tz)`: the time zone is always UTC (minutes west 0,
/// no DST), as in a container without one.
pub fn gettimeofday(k: &mut Kernel, t: Pid, tv: u64, tz: u64) -> SysResult {
    if tv != 0 {
        let n = k.wall_ns();
        let mut b = ((n / NS) as i64).to_le_bytes().to_vec();
        b.extend((((n % NS) / 1000) as i64).to_le_bytes());
        k.write_user(t, tv, &b)?;
    }
    if tz != 0 {
        k.write_user(t, tz, &[0; 8])?;
    }
    Ok(0)
}

pub fn time(k: &mut Kernel, t: Pid, out: u64) -> SysResult {
    let s = k.wall_ns() / NS;
    if out != 0 {
        k.write_u64(t, out, s)?;
    }
    Ok(s)
}

/// Sleeps until `deadline` (monotonic ns); a retried call finds it passed.
fn sleep_until(k: &mut Kernel, deadline: u64) -> SysResult {
    if k.mono_ns() >= deadline {
        return Ok(0);
    }
    Err(Stop::Block(Wait::Sleep(deadline)))
}

/// A relative sleep cut short by a signal tells how much was left (the
/// `rem` argument of nanosleep and of clock_nanosleep without
/// TIMER_ABSTIME), as Linux does when the call returns EINTR.
pub fn write_remaining(k: &mut Kernel, t: Pid, nr: u64, args: [u64; 6], deadline: u64) {
    let rem = match nr as i64 {
        libc::SYS_nanosleep => args[1],
        libc::SYS_clock_nanosleep if args[1] as i32 & TIMER_ABSTIME == 0 => args[3],
        _ => 0,
    };
    if rem != 0 {
        let left = deadline.saturating_sub(k.mono_ns());
        let _ = k.write_user(t, rem, &timespec(left));
    }
}

pub fn nanosleep(k: &mut Kernel, t: Pid, req: u64) -> SysResult {
    let d = read_timespec(k, t, req)?;
    let deadline = k.mono_ns().saturating_add(d);
    sleep_until(k, deadline)
}

pub fn clock_nanosleep(k: &mut Kernel, t: Pid, clock: u64, flags: u64, req: u64) -> SysResult {
    let d = read_timespec(k, t, req)?;
    let base = now(k, clock)?;
    let deadline = if flags as i32 & TIMER_ABSTIME != 0 {
        k.mono_ns().saturating_add(d.saturating_sub(base))
    } else {
        k.mono_ns().saturating_add(d)
    };
    sleep_until(k, deadline)
}

fn timeval(ns: u64) -> Vec<u8> {
    let mut b = ((ns / NS) as i64).to_le_bytes().to_vec();
    b.extend((((ns % NS) / 1000) as i64).to_le_bytes());
    b
}

fn itimerval(k: &Kernel, t: Pid) -> Vec<u8> {
    let now = k.mono_ns();
    let (value, interval) = k
        .proc_of(t)
        .itimer
        .map_or((0, 0), |(at, iv)| (at.saturating_sub(now), iv));
    let mut b = timeval(interval);
    b.extend(timeval(value));
    b
}

pub fn setitimer(k: &mut Kernel, t: Pid, which: u64, new: u64, old: u64) -> SysResult {
    if which != 0 {
        // Only ITIMER_REAL: CPU-time timers are not kept.
        return err(EINVAL);
    }
    if old != 0 {
        let b = itimerval(k, t);
        k.write_user(t, old, &b)?;
    }
    if new != 0 {
        let v = read_times(k, t, new, 2, 1000)?;
        let (interval, value) = (v[0], v[1]);
        let now = k.mono_ns();
        k.proc_of_mut(t).itimer = (value > 0).then_some((now.saturating_add(value), interval));
    }
    Ok(0)
}

pub fn getitimer(k: &mut Kernel, t: Pid, out: u64) -> SysResult {
    let b = itimerval(k, t);
    k.write_user(t, out, &b)?;
    Ok(0)
}

pub fn alarm(k: &mut Kernel, t: Pid, secs: u64) -> SysResult {
    // alarm(2) takes an unsigned int.
    let secs = u64::from(secs as u32);
    let now = k.mono_ns();
    let old = k
        .proc_of(t)
        .itimer
        .map_or(0, |(at, _)| at.saturating_sub(now).div_ceil(NS));
    k.proc_of_mut(t).itimer = (secs > 0).then_some((now.saturating_add(secs * NS), 0));
    Ok(old)
}

pub fn times(k: &mut Kernel, t: Pid, buf: u64) -> SysResult {
    let ticks = k.mono_ns() / 10_000_000;
    if buf != 0 {
        k.write_user(t, buf, &[0u8; 32])?;
    }
    Ok(ticks)
}

pub fn getrusage(k: &mut Kernel, t: Pid, buf: u64) -> SysResult {
    k.write_user(t, buf, &[0u8; 144])?;
    Ok(0)
}
