//! futex: wait, wake, bitsets and requeue, as libc and Go use them.

use libc::{EAGAIN, EINVAL, ENOSYS};

use super::{err, Stop, SysResult};
use crate::kernel::Kernel;
use crate::task::{Pid, Wait};

const FUTEX_WAIT: u64 = 0;
const FUTEX_WAKE: u64 = 1;
const FUTEX_REQUEUE: u64 = 3;
const FUTEX_CMP_REQUEUE: u64 = 4;
const FUTEX_WAKE_OP: u64 = 5;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_WAKE_BITSET: u64 = 10;
const FUTEX_CMD_MASK: u64 = 0x7f;
const FUTEX_CLOCK_REALTIME: u64 = 256;

/// Wakes up to `n` threads waiting on (`mm`, `addr`) whose bitset meets
/// `bitset`; how many woke.
pub fn wake(k: &mut Kernel, mm: usize, addr: u64, n: u64, bitset: u32) -> u64 {
    let mut woken = 0;
    for th in k.table.threads.values_mut() {
        if woken >= n {
            break;
        }
        let Some(b) = &mut th.blocked else { continue };
        if let Wait::Futex {
            mm: m,
            addr: a,
            bitset: bs,
            ..
        } = b.wait
        {
            if m == mm && a == addr && bs & bitset != 0 && b.result.is_none() {
                b.result = Some(0);
                woken += 1;
            }
        }
    }
    woken
}

/// Moves up to `n` waiters from `from` to `to`.
fn requeue(k: &mut Kernel, mm: usize, from: u64, to: u64, n: u64) -> u64 {
    let mut moved = 0;
    for th in k.table.threads.values_mut() {
        if moved >= n {
            break;
        }
        let Some(b) = &mut th.blocked else { continue };
        if let Wait::Futex { mm: m, addr, .. } = &mut b.wait {
            if *m == mm && *addr == from && b.result.is_none() {
                *addr = to;
                moved += 1;
            }
        }
    }
    moved
}

#[allow(clippy::too_many_arguments)]
pub fn futex(
    k: &mut Kernel,
    t: Pid,
    addr: u64,
    op: u64,
    val: u64,
    timeout: u64,
    addr2: u64,
    val3: u64,
) -> SysResult {
    if !addr.is_multiple_of(4) {
        return err(EINVAL);
    }
    let mm = k.proc_of(t).mm_id;
    let cmd = op & FUTEX_CMD_MASK;
    match cmd {
        FUTEX_WAIT | FUTEX_WAIT_BITSET => {
            let bitset = if cmd == FUTEX_WAIT {
                u32::MAX
            } else {
                val3 as u32
            };
            if bitset == 0 {
                return err(EINVAL);
            }
            let cur = k.read_u32(t, addr)?;
            if cur != val as u32 {
                return err(EAGAIN);
            }
            let deadline = if timeout != 0 {
                let d = super::time::read_timespec(k, t, timeout)?;
                Some(if cmd == FUTEX_WAIT {
                    k.mono_ns().saturating_add(d)
                } else if op & FUTEX_CLOCK_REALTIME != 0 {
                    k.mono_ns().saturating_add(d.saturating_sub(k.wall_ns()))
                } else {
                    d
                })
            } else {
                None
            };
            Err(Stop::Block(Wait::Futex {
                mm,
                addr,
                bitset,
                deadline,
            }))
        }
        FUTEX_WAKE | FUTEX_WAKE_BITSET => {
            let bitset = if cmd == FUTEX_WAKE {
                u32::MAX
            } else {
                val3 as u32
            };
            if bitset == 0 {
                return err(EINVAL);
            }
            Ok(wake(k, mm, addr, val, bitset))
        }
        FUTEX_REQUEUE | FUTEX_CMP_REQUEUE => {
            if cmd == FUTEX_CMP_REQUEUE && k.read_u32(t, addr)? != val3 as u32 {
                return err(EAGAIN);
            }
            let woken = wake(k, mm, addr, val, u32::MAX);
            let moved = requeue(k, mm, addr, addr2, timeout);
            Ok(woken + moved)
        }
        FUTEX_WAKE_OP => {
            // *addr2 = op(*addr2, oparg); wake addr; wake addr2 if cmp.
            let encoded = val3 as u32;
            let opn = (encoded >> 28) & 7;
            let shift = (encoded >> 28) & 8 != 0;
            let cmpn = (encoded >> 24) & 15;
            let mut oparg = (encoded >> 12) & 0xfff;
            let cmparg = encoded & 0xfff;
            if shift {
                oparg = 1u32.checked_shl(oparg).unwrap_or(0);
            }
            let old = k.read_u32(t, addr2)?;
            let new = match opn {
                0 => oparg,
                1 => old.wrapping_add(oparg),
                2 => old | oparg,
                3 => old & !oparg,
                4 => old ^ oparg,
                _ => return err(ENOSYS),
            };
            k.write_u32(t, addr2, new)?;
            let mut n = wake(k, mm, addr, val, u32::MAX);
            let (o, c) = (old as i32, cmparg as i32);
            let hit = match cmpn {
                0 => o == c,
                1 => o != c,
                2 => o < c,
                3 => o <= c,
                4 => o > c,
                5 => o >= c,
                _ => false,
            };
            if hit {
                n += wake(k, mm, addr2, timeout, u32::MAX);
            }
            Ok(n)
        }
        _ => err(ENOSYS),
    }
}
