//! The system as a program sees it: uname, sysinfo, limits, randomness.

use libc::{EFAULT, EINVAL, RLIM_INFINITY};

use super::{err, Stop, SysResult};
use crate::kernel::Kernel;
use crate::task::Pid;

/// Fills `buf` from the host's random source.
pub fn host_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most the given length into `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
}

pub fn uname(k: &mut Kernel, t: Pid, buf: u64) -> SysResult {
    let mut b = vec![0u8; 65 * 6];
    let host = k.hostname.clone();
    for (i, f) in [
        "Linux",
        host.as_str(),
        "6.1.0-flint",
        "#1 SMP",
        "x86_64",
        "(none)",
    ]
    .iter()
    .enumerate()
    {
        let bytes = f.as_bytes();
        let n = bytes.len().min(64);
        b[i * 65..i * 65 + n].copy_from_slice(&bytes[..n]);
    }
    k.write_user(t, buf, &b)?;
    Ok(0)
}

pub fn sethostname(k: &mut Kernel, t: Pid, name: u64, len: u64) -> SysResult {
    if len > 64 {
        return err(EINVAL);
    }
    let n = k.read_user(t, name, len as usize)?;
    k.hostname = String::from_utf8_lossy(&n).into_owned();
    Ok(0)
}

pub fn sysinfo(k: &mut Kernel, t: Pid, buf: u64) -> SysResult {
    let mut b = vec![0u8; 112];
    let up = k.mono_ns() / 1_000_000_000;
    let total = k.frames.total() * 4096;
    let free = total - k.frames.used() * 4096;
    b[0..8].copy_from_slice(&up.to_le_bytes());
    b[32..40].copy_from_slice(&total.to_le_bytes());
    b[40..48].copy_from_slice(&free.to_le_bytes());
    b[80..82].copy_from_slice(&(k.table.procs.len() as u16).to_le_bytes());
    b[104..108].copy_from_slice(&1u32.to_le_bytes());
    k.write_user(t, buf, &b)?;
    Ok(0)
}

pub fn getrandom(k: &mut Kernel, t: Pid, buf: u64, len: u64) -> SysResult {
    let len = (len as usize).min(1 << 20);
    let mut b = vec![0u8; len];
    host_random(&mut b);
    k.write_user(t, buf, &b)?;
    Ok(len as u64)
}

pub fn prlimit(k: &mut Kernel, t: Pid, resource: u64, _new: u64, old: u64) -> SysResult {
    let (cur, max) = match resource as u32 {
        libc::RLIMIT_NOFILE => (
            crate::fs::file::MAX_FDS as u64,
            crate::fs::file::MAX_FDS as u64,
        ),
        libc::RLIMIT_STACK => (crate::loader::STACK_SIZE, RLIM_INFINITY),
        libc::RLIMIT_NPROC => (k.limits.max_processes as u64, k.limits.max_processes as u64),
        libc::RLIMIT_AS | libc::RLIMIT_DATA => (RLIM_INFINITY, RLIM_INFINITY),
        r if r < 16 => (RLIM_INFINITY, RLIM_INFINITY),
        _ => return err(EINVAL),
    };
    if old != 0 {
        let mut b = cur.to_le_bytes().to_vec();
        b.extend(max.to_le_bytes());
        k.write_user(t, old, &b).map_err(|_| Stop::Errno(EFAULT))?;
    }
    Ok(0)
}
