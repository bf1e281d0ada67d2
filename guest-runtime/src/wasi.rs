//! WASI preview 1 (`wasi_snapshot_preview1`) for one command module.
//!
//! What a function can use: args, environ, stdin/stdout/stderr (over the data
//! channel), clocks (from the clock page), random (ChaCha20 from the seed
//! page), `proc_exit`, `sched_yield`, `poll_oneoff` on clocks. Every other
//! preview 1 function is defined with its exact signature and answers
//! `EBADF` (it names a file descriptor that does not exist: there are no
//! preopened directories or sockets) or `ENOSYS`.

use crate::channel::Channel;
use crate::clock::{self, Random};
use alloc::vec::Vec;
use flint_abi::frame::{Kind, MAX_OUTPUT_CHUNK};
use wasmi::{Caller, Error, Extern, FuncType, Linker, Memory, Val, ValType};

pub const MODULE: &str = "wasi_snapshot_preview1";

// errno values (preview 1).
pub const SUCCESS: i32 = 0;
pub const EBADF: i32 = 8;
pub const EFAULT: i32 = 21;
pub const EINVAL: i32 = 28;
pub const ENOSYS: i32 = 52;
pub const ENOTSUP: i32 = 58;
pub const ESPIPE: i32 = 70;

const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const RIGHT_FD_READ: u64 = 1 << 1;
const RIGHT_FD_WRITE: u64 = 1 << 6;

/// Everything a running module's host functions can reach.
#[derive(Debug)]
pub struct Ctx {
    pub chan: Channel,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub limiter: crate::runtime::Limiter,
    pub random: Random,
    pub stdin_eof: bool,
}

type C<'a> = Caller<'a, Ctx>;

fn memory(caller: &C<'_>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// Bounds-checked view of `len` bytes at `ptr` in linear memory.
fn slice(mem: &mut [u8], ptr: u32, len: u32) -> Result<&mut [u8], i32> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize).ok_or(EFAULT)?;
    mem.get_mut(start..end).ok_or(EFAULT)
}

fn put_u32(mem: &mut [u8], ptr: u32, v: u32) -> Result<(), i32> {
    slice(mem, ptr, 4)?.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn put_u64(mem: &mut [u8], ptr: u32, v: u64) -> Result<(), i32> {
    slice(mem, ptr, 8)?.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn get_u32(mem: &mut [u8], ptr: u32) -> Result<u32, i32> {
    let b = slice(mem, ptr, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Runs `f` with linear memory and the context, turning a missing memory
/// export or an out-of-bounds pointer into an errno.
fn with_mem(caller: &mut C<'_>, f: impl FnOnce(&mut [u8], &mut Ctx) -> Result<(), i32>) -> i32 {
    let Some(m) = memory(caller) else {
        return EFAULT;
    };
    let (mem, ctx) = m.data_and_store_mut(caller);
    match f(mem, ctx) {
        Ok(()) => SUCCESS,
        Err(e) => e,
    }
}

/// `*_sizes_get`: count and total size of NUL-terminated strings.
fn sizes(
    caller: &mut C<'_>,
    which: fn(&Ctx) -> &Vec<Vec<u8>>,
    count_ptr: u32,
    size_ptr: u32,
) -> i32 {
    with_mem(caller, |mem, ctx| {
        let list = which(ctx);
        let total: usize = list.iter().map(|s| s.len() + 1).sum();
        put_u32(mem, count_ptr, list.len() as u32)?;
        put_u32(mem, size_ptr, total as u32)
    })
}

/// `args_get` / `environ_get`: pointer array plus NUL-terminated strings.
fn strings(caller: &mut C<'_>, which: fn(&Ctx) -> &Vec<Vec<u8>>, ptrs: u32, buf: u32) -> i32 {
    with_mem(caller, |mem, ctx| {
        let mut at = buf;
        for (i, s) in which(ctx).iter().enumerate() {
            put_u32(mem, ptrs.checked_add(4 * i as u32).ok_or(EFAULT)?, at)?;
            let dst = slice(mem, at, s.len() as u32 + 1)?;
            dst[..s.len()].copy_from_slice(s);
            dst[s.len()] = 0;
            at = at.checked_add(s.len() as u32 + 1).ok_or(EFAULT)?;
        }
        Ok(())
    })
}

/// Reads the iovec array at `iovs` into (ptr, len) pairs.
fn iovecs(mem: &mut [u8], iovs: u32, count: u32) -> Result<Vec<(u32, u32)>, i32> {
    if count > 1024 {
        return Err(EINVAL);
    }
    let mut v = Vec::with_capacity(count as usize);
    for i in 0..count {
        let at = iovs.checked_add(8 * i).ok_or(EFAULT)?;
        let ptr = get_u32(mem, at)?;
        let len = get_u32(mem, at.checked_add(4).ok_or(EFAULT)?)?;
        slice(mem, ptr, len)?;
        v.push((ptr, len));
    }
    Ok(v)
}

fn fd_write(mut caller: C<'_>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> i32 {
    let kind = match fd {
        1 => Kind::Stdout,
        2 => Kind::Stderr,
        _ => return EBADF,
    };
    with_mem(&mut caller, |mem, ctx| {
        let mut total = 0u32;
        for (ptr, len) in iovecs(mem, iovs as u32, iovs_len as u32)? {
            let data = slice(mem, ptr, len)?;
            for chunk in data.chunks(MAX_OUTPUT_CHUNK as usize) {
                ctx.chan.send(kind, chunk);
            }
            total = total.saturating_add(len);
        }
        put_u32(mem, nwritten as u32, total)
    })
}

fn fd_read(mut caller: C<'_>, fd: i32, iovs: i32, iovs_len: i32, nread: i32) -> i32 {
    if fd != 0 {
        return EBADF;
    }
    with_mem(&mut caller, |mem, ctx| {
        let mut total = 0u32;
        for (ptr, len) in iovecs(mem, iovs as u32, iovs_len as u32)? {
            if len == 0 {
                continue;
            }
            if ctx.stdin_eof {
                break;
            }
            let want = len.min(MAX_OUTPUT_CHUNK);
            ctx.chan.send_u32(Kind::StdinRequest, want);
            let data = loop {
                match ctx.chan.recv() {
                    (Kind::StdinData, data) => break data,
                    _ => continue,
                }
            };
            if data.is_empty() {
                ctx.stdin_eof = true;
                break;
            }
            // The host never sends more than asked; clamp anyway.
            let n = data.len().min(want as usize);
            slice(mem, ptr, n as u32)?.copy_from_slice(&data[..n]);
            total += n as u32;
            if (n as u32) < len {
                break;
            }
        }
        put_u32(mem, nread as u32, total)
    })
}

fn fd_fdstat_get(mut caller: C<'_>, fd: i32, buf: i32) -> i32 {
    let rights = match fd {
        0 => RIGHT_FD_READ,
        1 | 2 => RIGHT_FD_WRITE,
        _ => return EBADF,
    };
    with_mem(&mut caller, |mem, _| {
        let b = slice(mem, buf as u32, 24)?;
        b.fill(0);
        b[0] = FILETYPE_CHARACTER_DEVICE;
        b[8..16].copy_from_slice(&rights.to_le_bytes());
        Ok(())
    })
}

fn fd_filestat_get(mut caller: C<'_>, fd: i32, buf: i32) -> i32 {
    if !(0..=2).contains(&fd) {
        return EBADF;
    }
    with_mem(&mut caller, |mem, _| {
        let b = slice(mem, buf as u32, 64)?;
        b.fill(0);
        b[16] = FILETYPE_CHARACTER_DEVICE;
        Ok(())
    })
}

fn clock_time_get(mut caller: C<'_>, id: i32, _precision: i64, out: i32) -> i32 {
    let now = match id {
        0 => clock::realtime_ns(),
        1..=3 => clock::monotonic_ns(),
        _ => return EINVAL,
    };
    with_mem(&mut caller, |mem, _| put_u64(mem, out as u32, now))
}

fn clock_res_get(mut caller: C<'_>, id: i32, out: i32) -> i32 {
    if !(0..=3).contains(&id) {
        return EINVAL;
    }
    with_mem(&mut caller, |mem, _| put_u64(mem, out as u32, 1))
}

fn random_get(mut caller: C<'_>, buf: i32, len: i32) -> i32 {
    with_mem(&mut caller, |mem, ctx| {
        ctx.random.fill(slice(mem, buf as u32, len as u32)?);
        Ok(())
    })
}

/// `poll_oneoff`: clock subscriptions wait (the guest has nothing else to
/// do, and the host's timeout still bounds the wait); fd subscriptions on
/// stdio report ready at once.
fn poll_oneoff(mut caller: C<'_>, input: i32, out: i32, nsubs: i32, nevents: i32) -> i32 {
    if nsubs <= 0 || nsubs > 1024 {
        return EINVAL;
    }
    let mut deadline: Option<u64> = None;
    let code = with_mem(&mut caller, |mem, _| {
        let mut events = 0u32;
        let now = clock::monotonic_ns();
        for i in 0..nsubs as u32 {
            let sub = slice(mem, (input as u32).checked_add(48 * i).ok_or(EFAULT)?, 48)?;
            let mut s = [0u8; 48];
            s.copy_from_slice(sub);
            let userdata = &s[0..8];
            let tag = s[8];
            let mut errno = 0u16;
            if tag == 0 {
                let timeout = u64::from_le_bytes(s[24..32].try_into().unwrap_or_default());
                let flags = u16::from_le_bytes([s[40], s[41]]);
                let abs = if flags & 1 == 1 {
                    timeout
                } else {
                    now.saturating_add(timeout)
                };
                deadline = Some(deadline.map_or(abs, |d| d.min(abs)));
            } else if tag > 2 {
                errno = EINVAL as u16;
            } else {
                let fd = u32::from_le_bytes(s[16..20].try_into().unwrap_or_default());
                if fd > 2 {
                    errno = EBADF as u16;
                }
            }
            let ev = slice(
                mem,
                (out as u32).checked_add(32 * events).ok_or(EFAULT)?,
                32,
            )?;
            ev.fill(0);
            ev[0..8].copy_from_slice(userdata);
            ev[8..10].copy_from_slice(&errno.to_le_bytes());
            ev[10] = tag;
            events += 1;
        }
        put_u32(mem, nevents as u32, events)
    });
    if code == SUCCESS {
        if let Some(d) = deadline {
            while clock::monotonic_ns() < d {
                crate::arch::pause();
            }
        }
    }
    code
}

fn proc_exit(_caller: C<'_>, code: i32) -> Result<(), Error> {
    Err(Error::i32_exit(code))
}

use ValType::{I32, I64};

/// Preview 1 functions Flint answers with an errno, with their signatures.
/// `true` means the first parameter is a file descriptor.
const UNSUPPORTED: &[(&str, &[ValType], bool)] = &[
    ("fd_advise", &[I32, I64, I64, I32], true),
    ("fd_allocate", &[I32, I64, I64], true),
    ("fd_close", &[I32], true),
    ("fd_datasync", &[I32], true),
    ("fd_fdstat_set_flags", &[I32, I32], true),
    ("fd_fdstat_set_rights", &[I32, I64, I64], true),
    ("fd_filestat_set_size", &[I32, I64], true),
    ("fd_filestat_set_times", &[I32, I64, I64, I32], true),
    ("fd_pread", &[I32, I32, I32, I64, I32], true),
    ("fd_prestat_get", &[I32, I32], true),
    ("fd_prestat_dir_name", &[I32, I32, I32], true),
    ("fd_pwrite", &[I32, I32, I32, I64, I32], true),
    ("fd_readdir", &[I32, I32, I32, I64, I32], true),
    ("fd_renumber", &[I32, I32], true),
    ("fd_seek", &[I32, I64, I32, I32], true),
    ("fd_sync", &[I32], true),
    ("fd_tell", &[I32, I32], true),
    ("path_create_directory", &[I32, I32, I32], true),
    ("path_filestat_get", &[I32, I32, I32, I32, I32], true),
    (
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
        true,
    ),
    ("path_link", &[I32, I32, I32, I32, I32, I32, I32], true),
    (
        "path_open",
        &[I32, I32, I32, I32, I32, I64, I64, I32, I32],
        true,
    ),
    ("path_readlink", &[I32, I32, I32, I32, I32, I32], true),
    ("path_remove_directory", &[I32, I32, I32], true),
    ("path_rename", &[I32, I32, I32, I32, I32, I32], true),
    ("path_symlink", &[I32, I32, I32, I32, I32], false),
    ("path_unlink_file", &[I32, I32, I32], true),
    ("proc_raise", &[I32], false),
    ("sock_accept", &[I32, I32, I32], true),
    ("sock_recv", &[I32, I32, I32, I32, I32, I32], true),
    ("sock_send", &[I32, I32, I32, I32, I32], true),
    ("sock_shutdown", &[I32, I32], true),
];

/// Names of every function this module provides.
pub fn provides(name: &str) -> bool {
    const IMPLEMENTED: &[&str] = &[
        "args_get",
        "args_sizes_get",
        "environ_get",
        "environ_sizes_get",
        "clock_res_get",
        "clock_time_get",
        "fd_write",
        "fd_read",
        "fd_fdstat_get",
        "fd_filestat_get",
        "poll_oneoff",
        "proc_exit",
        "random_get",
        "sched_yield",
    ];
    IMPLEMENTED.contains(&name) || UNSUPPORTED.iter().any(|(n, _, _)| *n == name)
}

/// The errno an unsupported call on `fd` answers: stdio exists but cannot
/// seek or be changed; any other descriptor does not exist.
fn unsupported_errno(name: &str, fd: Option<i32>) -> i32 {
    match fd {
        Some(0..=2) if name == "fd_seek" || name == "fd_tell" => ESPIPE,
        Some(0..=2) if name == "fd_close" || name.starts_with("fd_") => ENOTSUP,
        Some(_) => EBADF,
        None => ENOSYS,
    }
}

pub fn add_to_linker(linker: &mut Linker<Ctx>) -> Result<(), wasmi::errors::LinkerError> {
    fn args(c: &Ctx) -> &Vec<Vec<u8>> {
        &c.args
    }
    fn env(c: &Ctx) -> &Vec<Vec<u8>> {
        &c.env
    }
    linker.func_wrap(MODULE, "args_sizes_get", |mut c: C<'_>, a: i32, b: i32| {
        sizes(&mut c, args, a as u32, b as u32)
    })?;
    linker.func_wrap(MODULE, "args_get", |mut c: C<'_>, a: i32, b: i32| {
        strings(&mut c, args, a as u32, b as u32)
    })?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut c: C<'_>, a: i32, b: i32| sizes(&mut c, env, a as u32, b as u32),
    )?;
    linker.func_wrap(MODULE, "environ_get", |mut c: C<'_>, a: i32, b: i32| {
        strings(&mut c, env, a as u32, b as u32)
    })?;
    linker.func_wrap(MODULE, "clock_res_get", clock_res_get)?;
    linker.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "fd_read", fd_read)?;
    linker.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(MODULE, "fd_filestat_get", fd_filestat_get)?;
    linker.func_wrap(MODULE, "poll_oneoff", poll_oneoff)?;
    linker.func_wrap(MODULE, "proc_exit", proc_exit)?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(MODULE, "sched_yield", |_: C<'_>| SUCCESS)?;
    for &(name, params, takes_fd) in UNSUPPORTED {
        let ty = FuncType::new(params.iter().copied(), [I32]);
        linker.func_new(
            MODULE,
            name,
            ty,
            move |_, args: &[Val], results: &mut [Val]| {
                let fd = match (takes_fd, args.first()) {
                    (true, Some(Val::I32(fd))) => Some(*fd),
                    _ => None,
                };
                results[0] = Val::I32(unsupported_errno(name, fd));
                Ok(())
            },
        )?;
    }
    Ok(())
}
