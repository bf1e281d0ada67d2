//! Reading, writing and managing file descriptors.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use libc::*;

use super::{err, host_err, Stop, SysResult};
use crate::fs::file::{Kind, OpenFile, MAX_FDS};
use crate::fs::pipe::{Pipe, PIPE_BUF};
use crate::kernel::uaccess::MAX_IO;
use crate::kernel::Kernel;
use crate::signal::{SigInfo, SIGPIPE};
use crate::task::{Pid, Wait};

pub fn file(k: &Kernel, t: Pid, fd: u64) -> Result<Rc<OpenFile>, Stop> {
    k.fds_of(t)
        .borrow()
        .get(fd as i64)
        .ok_or(Stop::Errno(EBADF))
}

/// The poll events a host fd has now, of `events` (and POLLHUP, POLLERR).
pub fn host_events(fd: i32, events: i16) -> i16 {
    let mut p = pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents
}

pub fn host_ready(fd: i32, events: i16) -> bool {
    host_events(fd, events) != 0
}

pub fn host_read(fd: i32, len: usize, off: Option<u64>) -> Result<Vec<u8>, Stop> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has `len` bytes.
    let n = unsafe {
        match off {
            None => libc::read(fd, buf.as_mut_ptr().cast(), len),
            Some(o) => libc::pread(fd, buf.as_mut_ptr().cast(), len, o as i64),
        }
    };
    if n < 0 {
        return Err(host_err(std::io::Error::last_os_error()));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn host_write(fd: i32, data: &[u8], off: Option<u64>) -> Result<usize, Stop> {
    // SAFETY: `data` is a valid buffer of its length.
    let n = unsafe {
        match off {
            None => libc::write(fd, data.as_ptr().cast(), data.len()),
            Some(o) => libc::pwrite(fd, data.as_ptr().cast(), data.len(), o as i64),
        }
    };
    if n < 0 {
        return Err(host_err(std::io::Error::last_os_error()));
    }
    Ok(n as usize)
}

/// Reads up to `len` bytes from a pipe (or one way of a socket pair);
/// with `peek` they stay in it.
pub fn pipe_read(
    p: &RefCell<Pipe>,
    len: usize,
    nonblock: bool,
    peek: bool,
) -> Result<Vec<u8>, Stop> {
    let mut p = p.borrow_mut();
    if p.buf.is_empty() {
        if p.writers == 0 || len == 0 {
            return Ok(Vec::new());
        }
        return if nonblock {
            err(EAGAIN)
        } else {
            Err(Stop::Block(Wait::PipeRead))
        };
    }
    let n = len.min(p.buf.len());
    if peek {
        return Ok(p.buf.range(..n).copied().collect());
    }
    Ok(p.take(n))
}

/// Writes to a pipe (or one way of a socket pair): with no reader, EPIPE
/// and (if `sigpipe`) SIGPIPE to the writer; `atomic` keeps writes up to
/// `PIPE_BUF` whole, as a pipe's are.
pub fn pipe_write(
    k: &mut Kernel,
    t: Pid,
    p: &RefCell<Pipe>,
    data: &[u8],
    nonblock: bool,
    atomic: bool,
    sigpipe: bool,
) -> Result<usize, Stop> {
    let mut p = p.borrow_mut();
    if p.readers == 0 {
        drop(p);
        if sigpipe {
            let pid = k.thread(t).pid;
            k.signal_thread(t, SigInfo::user(SIGPIPE, pid));
        }
        return err(EPIPE);
    }
    let space = p.space();
    if data.is_empty() {
        return Ok(0);
    }
    if space == 0 || (atomic && data.len() <= PIPE_BUF && space < data.len()) {
        return if nonblock {
            err(EAGAIN)
        } else {
            Err(Stop::Block(Wait::PipeWrite))
        };
    }
    let n = space.min(data.len());
    p.push(&data[..n]);
    Ok(n)
}

/// Reads up to `len` bytes from `f` (the common part of read and readv).
pub fn read_file(k: &mut Kernel, t: Pid, f: &OpenFile, len: usize) -> Result<Vec<u8>, Stop> {
    if !f.readable() {
        return err(EBADF);
    }
    let len = len.min(MAX_IO);
    let nonblock = f.flags.get() & O_NONBLOCK != 0;
    match &f.kind {
        Kind::Host { dir: true, .. } | Kind::SynthDir { .. } => err(EISDIR),
        Kind::Host { fd, .. } => host_read(fd.as_raw_fd(), len, None),
        Kind::Stream { fd, .. } => {
            let raw = fd.as_raw_fd();
            if len > 0 && !host_ready(raw, POLLIN) {
                return if nonblock {
                    err(EAGAIN)
                } else {
                    Err(Stop::Block(Wait::HostRead(raw)))
                };
            }
            host_read(raw, len, None)
        }
        Kind::PipeRead(p, _) => pipe_read(p, len, nonblock, false),
        Kind::Socket(s) => super::socket::receive(s, len, nonblock, false),
        Kind::PipeWrite(..) => err(EBADF),
        Kind::Null => Ok(Vec::new()),
        Kind::Zero | Kind::Full => Ok(vec![0; len]),
        Kind::Random => {
            let mut b = vec![0u8; len];
            super::info::host_random(&mut b);
            Ok(b)
        }
        Kind::Epoll(_) => err(EINVAL),
        Kind::EventFd(v, sem) => {
            if len < 8 {
                return err(EINVAL);
            }
            if v.get() == 0 {
                return if nonblock {
                    err(EAGAIN)
                } else {
                    Err(Stop::Block(Wait::Poll { deadline: None }))
                };
            }
            let out = if *sem { 1 } else { v.get() };
            v.set(v.get() - out);
            Ok(out.to_le_bytes().to_vec())
        }
        Kind::Synthetic { data, .. } => {
            let off = (f.offset.get() as usize).min(data.len());
            let n = len.min(data.len() - off);
            f.offset.set((off + n) as u64);
            let _ = (k, t);
            Ok(data[off..off + n].to_vec())
        }
    }
}

/// Writes `data` to `f`; the count written.
pub fn write_file(k: &mut Kernel, t: Pid, f: &OpenFile, data: &[u8]) -> Result<usize, Stop> {
    if !f.writable() {
        return err(EBADF);
    }
    let nonblock = f.flags.get() & O_NONBLOCK != 0;
    match &f.kind {
        Kind::Host { dir: true, .. } | Kind::SynthDir { .. } => err(EISDIR),
        Kind::Host { fd, .. } => host_write(fd.as_raw_fd(), data, None),
        Kind::Stream { fd, .. } => match host_write(fd.as_raw_fd(), data, None) {
            Err(Stop::Errno(EPIPE)) => {
                let pid = k.thread(t).pid;
                k.signal_process(pid, SigInfo::user(SIGPIPE, pid));
                err(EPIPE)
            }
            r => r,
        },
        Kind::PipeWrite(p, _) => pipe_write(k, t, p, data, nonblock, true, true),
        Kind::Socket(s) => super::socket::send(k, t, s, data, nonblock, true),
        Kind::PipeRead(..) => err(EBADF),
        Kind::Epoll(_) => err(EINVAL),
        Kind::EventFd(v, _) => {
            if data.len() < 8 {
                return err(EINVAL);
            }
            let add = u64::from_le_bytes(data[..8].try_into().expect("8"));
            if add == u64::MAX {
                return err(EINVAL);
            }
            match v.get().checked_add(add).filter(|&n| n < u64::MAX) {
                Some(n) => v.set(n),
                None => {
                    return if nonblock {
                        err(EAGAIN)
                    } else {
                        Err(Stop::Block(Wait::Poll { deadline: None }))
                    }
                }
            }
            Ok(8)
        }
        Kind::Full => err(ENOSPC),
        Kind::Null | Kind::Zero | Kind::Random | Kind::Synthetic { .. } => Ok(data.len()),
    }
}

pub fn read(k: &mut Kernel, t: Pid, fd: u64, buf: u64, len: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let data = read_file(k, t, &f, len as usize)?;
    k.write_user(t, buf, &data)?;
    Ok(data.len() as u64)
}

pub fn write(k: &mut Kernel, t: Pid, fd: u64, buf: u64, len: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let data = k.read_user(t, buf, (len as usize).min(MAX_IO))?;
    Ok(write_file(k, t, &f, &data)? as u64)
}

fn positional(f: &OpenFile) -> Result<i32, Stop> {
    match &f.kind {
        Kind::Host { fd, dir: false, .. } => Ok(fd.as_raw_fd()),
        Kind::Host { dir: true, .. } => err(EISDIR),
        _ => err(ESPIPE),
    }
}

pub fn pread(k: &mut Kernel, t: Pid, fd: u64, buf: u64, len: u64, off: u64) -> SysResult {
    let f = file(k, t, fd)?;
    if (off as i64) < 0 {
        return err(EINVAL);
    }
    if let Kind::Synthetic { data, .. } = &f.kind {
        let o = (off as usize).min(data.len());
        let n = (len as usize).min(data.len() - o);
        k.write_user(t, buf, &data[o..o + n])?;
        return Ok(n as u64);
    }
    let data = host_read(positional(&f)?, (len as usize).min(MAX_IO), Some(off))?;
    k.write_user(t, buf, &data)?;
    Ok(data.len() as u64)
}

pub fn pwrite(k: &mut Kernel, t: Pid, fd: u64, buf: u64, len: u64, off: u64) -> SysResult {
    let f = file(k, t, fd)?;
    if (off as i64) < 0 {
        return err(EINVAL);
    }
    let raw = positional(&f)?;
    let data = k.read_user(t, buf, (len as usize).min(MAX_IO))?;
    Ok(host_write(raw, &data, Some(off))? as u64)
}

pub fn iovecs(k: &mut Kernel, t: Pid, iov: u64, cnt: u64) -> Result<Vec<(u64, u64)>, Stop> {
    if cnt > 1024 {
        return err(EINVAL);
    }
    let raw = k.read_user(t, iov, cnt as usize * 16)?;
    Ok(raw
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8")),
                u64::from_le_bytes(c[8..].try_into().expect("8")),
            )
        })
        .collect())
}

/// The bytes an iovec array asks for in all (saturating).
pub fn iov_total(v: &[(u64, u64)]) -> u64 {
    v.iter().fold(0u64, |a, (_, l)| a.saturating_add(*l))
}

/// Copies `data` into the program's buffers `v`, in order.
pub fn scatter(k: &mut Kernel, t: Pid, v: &[(u64, u64)], data: &[u8]) -> Result<(), Stop> {
    let mut done = 0usize;
    for &(base, len) in v {
        if done >= data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - done);
        k.write_user(t, base, &data[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Reads the program's buffers `v` into one, up to `MAX_IO` bytes in
/// all (EINVAL beyond).
pub fn gather(k: &mut Kernel, t: Pid, v: &[(u64, u64)]) -> Result<Vec<u8>, Stop> {
    let mut data = Vec::new();
    for &(base, len) in v {
        if data.len().saturating_add(len as usize) > MAX_IO {
            return err(EINVAL);
        }
        data.extend(k.read_user(t, base, len as usize)?);
    }
    Ok(data)
}

pub fn readv(k: &mut Kernel, t: Pid, fd: u64, iov: u64, cnt: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let v = iovecs(k, t, iov, cnt)?;
    let data = read_file(k, t, &f, iov_total(&v).min(MAX_IO as u64) as usize)?;
    scatter(k, t, &v, &data)?;
    Ok(data.len() as u64)
}

pub fn writev(k: &mut Kernel, t: Pid, fd: u64, iov: u64, cnt: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let v = iovecs(k, t, iov, cnt)?;
    let data = gather(k, t, &v)?;
    Ok(write_file(k, t, &f, &data)? as u64)
}

pub fn sendfile(k: &mut Kernel, t: Pid, out: u64, inp: u64, offp: u64, count: u64) -> SysResult {
    let fin = file(k, t, inp)?;
    let fout = file(k, t, out)?;
    let len = (count as usize).min(1 << 20);
    let data = if offp != 0 {
        let off = k.read_u64(t, offp)?;
        let d = host_read(positional(&fin)?, len, Some(off))?;
        k.write_u64(t, offp, off + d.len() as u64)?;
        d
    } else {
        read_file(k, t, &fin, len)?
    };
    Ok(write_file(k, t, &fout, &data)? as u64)
}

pub fn lseek(k: &mut Kernel, t: Pid, fd: u64, off: i64, whence: u64) -> SysResult {
    let f = file(k, t, fd)?;
    match &f.kind {
        Kind::Host { fd, .. } => {
            // SAFETY: lseek on an fd we own.
            let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence as i32) };
            if r < 0 {
                Err(host_err(std::io::Error::last_os_error()))
            } else {
                Ok(r as u64)
            }
        }
        Kind::Synthetic { data, .. } => {
            let base = match whence as i32 {
                SEEK_SET => 0,
                SEEK_CUR => f.offset.get() as i64,
                SEEK_END => data.len() as i64,
                _ => return err(EINVAL),
            };
            let n = base
                .checked_add(off)
                .filter(|&n| n >= 0)
                .ok_or(Stop::Errno(EINVAL))?;
            f.offset.set(n as u64);
            Ok(n as u64)
        }
        Kind::SynthDir { .. } if off == 0 && whence as i32 == SEEK_SET => {
            f.offset.set(0);
            Ok(0)
        }
        Kind::Null | Kind::Zero | Kind::Full | Kind::Random => Ok(0),
        _ => err(ESPIPE),
    }
}

pub fn close(k: &mut Kernel, t: Pid, fd: u64) -> SysResult {
    if k.fds_of(t).borrow_mut().close(fd as i64) {
        Ok(0)
    } else {
        err(EBADF)
    }
}

pub fn close_range(k: &mut Kernel, t: Pid, first: u64, last: u64, flags: u64) -> SysResult {
    const CLOSE_RANGE_UNSHARE: u64 = 2;
    const CLOSE_RANGE_CLOEXEC: u64 = 4;
    if flags & !(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC) != 0 || first > last {
        return err(EINVAL);
    }
    let fds = k.fds_of(t);
    let mut fds = fds.borrow_mut();
    for fd in fds.open_fds() {
        let fd = fd as u64;
        if fd >= first && fd <= last {
            if flags & CLOSE_RANGE_CLOEXEC != 0 {
                fds.set_cloexec(fd as i64, true);
            } else {
                fds.close(fd as i64);
            }
        }
    }
    Ok(0)
}

pub fn dup(k: &mut Kernel, t: Pid, fd: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let fds = k.fds_of(t);
    let n = fds
        .borrow_mut()
        .insert(f, false)
        .ok_or(Stop::Errno(EMFILE))?;
    Ok(n as u64)
}

pub fn dup3(k: &mut Kernel, t: Pid, old: u64, new: u64, flags: u64, dup2: bool) -> SysResult {
    let f = file(k, t, old)?;
    if new as usize >= MAX_FDS {
        return err(EBADF);
    }
    if old == new {
        return if dup2 { Ok(new) } else { err(EINVAL) };
    }
    if flags & !(O_CLOEXEC as u64) != 0 {
        return err(EINVAL);
    }
    k.fds_of(t).borrow_mut().set(new as usize, f, flags != 0);
    Ok(new)
}

pub fn fcntl(k: &mut Kernel, t: Pid, fd: u64, cmd: u64, arg: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let fds = k.fds_of(t);
    match cmd as i32 {
        F_DUPFD | F_DUPFD_CLOEXEC => {
            if arg as usize >= MAX_FDS {
                return err(EINVAL);
            }
            let n = fds
                .borrow_mut()
                .insert_from(arg as usize, f, cmd as i32 == F_DUPFD_CLOEXEC)
                .ok_or(Stop::Errno(EMFILE))?;
            Ok(n as u64)
        }
        F_GETFD => Ok(fds.borrow().cloexec(fd as i64).map_or(0, |c| c as u64)),
        F_SETFD => {
            fds.borrow_mut()
                .set_cloexec(fd as i64, arg & FD_CLOEXEC as u64 != 0);
            Ok(0)
        }
        F_GETFL => Ok(f.flags.get() as u64),
        F_SETFL => {
            let keep = f.flags.get() & !(O_APPEND | O_NONBLOCK);
            let set = arg as i32 & (O_APPEND | O_NONBLOCK);
            f.flags.set(keep | set);
            if let Kind::Host { fd, .. } = &f.kind {
                // SAFETY: F_SETFL on an fd we own.
                unsafe { libc::fcntl(fd.as_raw_fd(), F_SETFL, set & O_APPEND) };
            }
            Ok(0)
        }
        F_GETLK | F_SETLK | F_SETLKW | F_OFD_GETLK | F_OFD_SETLK | F_OFD_SETLKW => Ok(0),
        F_GETPIPE_SZ | F_SETPIPE_SZ => Ok(crate::fs::pipe::PIPE_CAPACITY as u64),
        F_SETOWN | F_GETOWN | 10 | 11 => Ok(0),
        _ => err(EINVAL),
    }
}

pub fn ioctl(k: &mut Kernel, t: Pid, fd: u64, req: u64, arg: u64) -> SysResult {
    let f = file(k, t, fd)?;
    const FIONREAD: u64 = 0x541b;
    const FIONBIO: u64 = 0x5421;
    const FIOCLEX: u64 = 0x5451;
    const FIONCLEX: u64 = 0x5450;
    match req {
        FIONREAD => {
            let n = match &f.kind {
                Kind::PipeRead(p, _) => p.borrow().buf.len() as u32,
                Kind::Socket(s) => match s.conn().as_deref() {
                    Some(crate::fs::socket::Conn::Local(e)) => e.rx.borrow().buf.len() as u32,
                    _ => 0,
                },
                Kind::Synthetic { data, .. } => {
                    data.len().saturating_sub(f.offset.get() as usize) as u32
                }
                _ => 0,
            };
            k.write_u32(t, arg, n)?;
            Ok(0)
        }
        FIONBIO => {
            let on = k.read_u32(t, arg)? != 0;
            let fl = f.flags.get();
            f.flags.set(if on {
                fl | O_NONBLOCK
            } else {
                fl & !O_NONBLOCK
            });
            Ok(0)
        }
        FIOCLEX | FIONCLEX => {
            k.fds_of(t)
                .borrow_mut()
                .set_cloexec(fd as i64, req == FIOCLEX);
            Ok(0)
        }
        // No terminals: every tty request (TCGETS, TIOCGWINSZ, ...).
        _ => err(ENOTTY),
    }
}

pub fn pipe2(k: &mut Kernel, t: Pid, out: u64, flags: u64) -> SysResult {
    if flags & !((O_CLOEXEC | O_NONBLOCK | O_DIRECT) as u64) != 0 {
        return err(EINVAL);
    }
    let id = k.next_pipe_id;
    k.next_pipe_id += 1;
    let p = Rc::new(RefCell::new(Pipe::new(k.pipe_bytes.clone())));
    let nb = flags as i32 & O_NONBLOCK;
    let r = OpenFile::new(Kind::PipeRead(p.clone(), id), O_RDONLY | nb);
    let w = OpenFile::new(Kind::PipeWrite(p, id), O_WRONLY | nb);
    install_pair(k, t, [r, w], flags & O_CLOEXEC as u64 != 0, out)
}

/// Puts two new files in the caller's table and their descriptors at
/// `out` (as `int[2]`), as pipe2 and socketpair do; neither stays open if
/// either step fails.
pub fn install_pair(
    k: &mut Kernel,
    t: Pid,
    files: [Rc<OpenFile>; 2],
    cloexec: bool,
    out: u64,
) -> SysResult {
    let [first, second] = files;
    let fds = k.fds_of(t);
    let (a, b) = {
        let mut fds = fds.borrow_mut();
        let a = fds.insert(first, cloexec).ok_or(Stop::Errno(EMFILE))?;
        match fds.insert(second, cloexec) {
            Some(b) => (a, b),
            None => {
                fds.close(a as i64);
                return err(EMFILE);
            }
        }
    };
    let mut bytes = (a as u32).to_le_bytes().to_vec();
    bytes.extend((b as u32).to_le_bytes());
    if let Err(e) = k.write_user(t, out, &bytes) {
        let mut fds = fds.borrow_mut();
        fds.close(a as i64);
        fds.close(b as i64);
        return Err(e);
    }
    Ok(0)
}
