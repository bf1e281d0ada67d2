//! Sockets: connected `AF_UNIX` stream pairs (`socketpair`), kept by the
//! VMM as two pipes, one each way (`fs::pipe::SocketEnd`); with them
//! `send`/`recv` and their `msg` forms, `shutdown`, the socket options
//! and names programs ask of a pair. `socket` itself is EAFNOSUPPORT: no
//! socket has an address yet, so there is nothing to bind, listen on or
//! connect to (docs/linux.md).

use std::rc::Rc;

use libc::*;

use super::fd::{file, iovecs, pipe_read, pipe_write};
use super::{err, Stop, SysResult};
use crate::fs::file::{Kind, OpenFile};
use crate::fs::pipe::SocketEnd;
use crate::kernel::uaccess::MAX_IO;
use crate::kernel::Kernel;
use crate::task::Pid;

/// The buffer size a pair reports (`SO_SNDBUF`, `SO_RCVBUF`): Linux's
/// default, `net.core.wmem_default`.
const BUFFER: u32 = 212_992;

fn socket_of(f: &OpenFile) -> Result<&SocketEnd, Stop> {
    match &f.kind {
        Kind::Socket(s) => Ok(s),
        _ => err(ENOTSOCK),
    }
}

/// Reads from one end: buffered data first, then end of file once the
/// peer stopped writing or this end was shut for reading.
pub fn receive(s: &SocketEnd, len: usize, nonblock: bool, peek: bool) -> Result<Vec<u8>, Stop> {
    if s.shut_rd.get() && s.rx.borrow().buf.is_empty() {
        return Ok(Vec::new());
    }
    pipe_read(&s.rx, len, nonblock, peek)
}

/// Writes to one end: EPIPE (and SIGPIPE unless `sigpipe` is off) once
/// either side stopped that way.
pub fn send(
    k: &mut Kernel,
    t: Pid,
    s: &SocketEnd,
    data: &[u8],
    nonblock: bool,
    sigpipe: bool,
) -> Result<usize, Stop> {
    if s.shut_wr.get() {
        if sigpipe {
            let pid = k.thread(t).pid;
            k.signal_thread(t, crate::signal::SigInfo::user(crate::signal::SIGPIPE, pid));
        }
        return err(EPIPE);
    }
    pipe_write(k, t, &s.tx, data, nonblock, false, sigpipe)
}

pub fn socketpair(k: &mut Kernel, t: Pid, domain: u64, ty: u64, proto: u64, out: u64) -> SysResult {
    match domain as i32 {
        AF_UNIX => {}
        // Linux makes the socket, then its family has no pairs.
        AF_INET | AF_INET6 => return err(EOPNOTSUPP),
        _ => return err(EAFNOSUPPORT),
    }
    let flags = ty & (SOCK_NONBLOCK | SOCK_CLOEXEC) as u64;
    match ty & !flags {
        t if t == SOCK_STREAM as u64 => {}
        t if t == SOCK_DGRAM as u64 || t == SOCK_SEQPACKET as u64 => return err(EOPNOTSUPP),
        _ => return err(ESOCKTNOSUPPORT),
    }
    if proto != 0 && proto != PF_UNIX as u64 {
        return err(EPROTONOSUPPORT);
    }
    let id = k.next_pipe_id;
    k.next_pipe_id += 1;
    let (a, b) = SocketEnd::pair(id);
    let nb = if flags & SOCK_NONBLOCK as u64 != 0 {
        O_NONBLOCK
    } else {
        0
    };
    let cloexec = flags & SOCK_CLOEXEC as u64 != 0;
    let fds = k.fds_of(t);
    let (x, y) = {
        let mut fds = fds.borrow_mut();
        let x = fds
            .insert(OpenFile::new(Kind::Socket(a), O_RDWR | nb), cloexec)
            .ok_or(Stop::Errno(EMFILE))?;
        match fds.insert(OpenFile::new(Kind::Socket(b), O_RDWR | nb), cloexec) {
            Some(y) => (x, y),
            None => {
                fds.close(x as i64);
                return err(EMFILE);
            }
        }
    };
    let mut bytes = (x as u32).to_le_bytes().to_vec();
    bytes.extend((y as u32).to_le_bytes());
    if let Err(e) = k.write_user(t, out, &bytes) {
        let mut fds = fds.borrow_mut();
        fds.close(x as i64);
        fds.close(y as i64);
        return Err(e);
    }
    Ok(0)
}

/// Whether a call's `flags` make it non-blocking (`MSG_DONTWAIT`, or the
/// file's own `O_NONBLOCK`).
fn nonblocking(f: &OpenFile, flags: u64) -> bool {
    flags & MSG_DONTWAIT as u64 != 0 || f.flags.get() & O_NONBLOCK != 0
}

/// The flags a pair takes; `MSG_OOB` is EOPNOTSUPP on `AF_UNIX`.
fn check_flags(flags: u64) -> Result<(), Stop> {
    if flags & MSG_OOB as u64 != 0 {
        return err(EOPNOTSUPP);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn sendto(
    k: &mut Kernel,
    t: Pid,
    fd: u64,
    buf: u64,
    len: u64,
    flags: u64,
    addr: u64,
    addrlen: u64,
) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    check_flags(flags)?;
    if addr != 0 || addrlen != 0 {
        // A connected stream socket takes no address.
        return err(EISCONN);
    }
    let data = k.read_user(t, buf, (len as usize).min(MAX_IO))?;
    let sigpipe = flags & MSG_NOSIGNAL as u64 == 0;
    Ok(send(k, t, s, &data, nonblocking(&f, flags), sigpipe)? as u64)
}

#[allow(clippy::too_many_arguments)]
pub fn recvfrom(
    k: &mut Kernel,
    t: Pid,
    fd: u64,
    buf: u64,
    len: u64,
    flags: u64,
    addr: u64,
    addrlen: u64,
) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    check_flags(flags)?;
    let peek = flags & MSG_PEEK as u64 != 0;
    let data = receive(s, (len as usize).min(MAX_IO), nonblocking(&f, flags), peek)?;
    k.write_user(t, buf, &data)?;
    if addr != 0 && addrlen != 0 {
        // The peer of a pair has no name: an empty address.
        k.write_u32(t, addrlen, 0)?;
    }
    Ok(data.len() as u64)
}

/// `struct msghdr`'s fields: name, namelen, iov, iovlen, control,
/// controllen (flags at offset 48).
fn msghdr(k: &mut Kernel, t: Pid, msg: u64) -> Result<[u64; 6], Stop> {
    let raw = k.read_user(t, msg, 56)?;
    let word = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8"));
    let namelen = u32::from_le_bytes(raw[8..12].try_into().expect("4")) as u64;
    Ok([word(0), namelen, word(16), word(24), word(32), word(40)])
}

pub fn sendmsg(k: &mut Kernel, t: Pid, fd: u64, msg: u64, flags: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    check_flags(flags)?;
    let [name, namelen, iov, iovlen, _, controllen] = msghdr(k, t, msg)?;
    if name != 0 && namelen != 0 {
        return err(EISCONN);
    }
    if controllen != 0 {
        // Passing descriptors or credentials (SCM_RIGHTS, SCM_CREDENTIALS)
        // is not supported yet.
        return err(EOPNOTSUPP);
    }
    let mut data = Vec::new();
    for (base, len) in iovecs(k, t, iov, iovlen)? {
        if data.len().saturating_add(len as usize) > MAX_IO {
            return err(EINVAL);
        }
        data.extend(k.read_user(t, base, len as usize)?);
    }
    let sigpipe = flags & MSG_NOSIGNAL as u64 == 0;
    Ok(send(k, t, s, &data, nonblocking(&f, flags), sigpipe)? as u64)
}

pub fn recvmsg(k: &mut Kernel, t: Pid, fd: u64, msg: u64, flags: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    check_flags(flags)?;
    let [_, _, iov, iovlen, _, _] = msghdr(k, t, msg)?;
    let v = iovecs(k, t, iov, iovlen)?;
    let total = v.iter().fold(0u64, |a, (_, l)| a.saturating_add(*l));
    let peek = flags & MSG_PEEK as u64 != 0;
    let data = receive(
        s,
        total.min(MAX_IO as u64) as usize,
        nonblocking(&f, flags),
        peek,
    )?;
    let mut done = 0usize;
    for (base, len) in v {
        if done >= data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - done);
        k.write_user(t, base, &data[done..done + n])?;
        done += n;
    }
    // No name, no control messages, no flags (nothing was cut short).
    k.write_u32(t, msg + 8, 0)?;
    k.write_u64(t, msg + 40, 0)?;
    k.write_u32(t, msg + 48, 0)?;
    Ok(data.len() as u64)
}

pub fn shutdown(k: &mut Kernel, t: Pid, fd: u64, how: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    match how as i32 {
        SHUT_RD => s.shut_read(),
        SHUT_WR => s.shut_write(),
        SHUT_RDWR => {
            s.shut_read();
            s.shut_write();
        }
        _ => return err(EINVAL),
    }
    Ok(0)
}

pub fn getsockopt(
    k: &mut Kernel,
    t: Pid,
    fd: u64,
    level: u64,
    name: u64,
    val: u64,
    lenp: u64,
) -> SysResult {
    let f = file(k, t, fd)?;
    socket_of(&f)?;
    if level != SOL_SOCKET as u64 {
        return err(EOPNOTSUPP);
    }
    let v: u32 = match name as i32 {
        SO_TYPE => SOCK_STREAM as u32,
        SO_DOMAIN => AF_UNIX as u32,
        SO_PROTOCOL | SO_ERROR | SO_ACCEPTCONN | SO_KEEPALIVE | SO_PASSCRED => 0,
        SO_SNDBUF | SO_RCVBUF => BUFFER,
        _ => return err(ENOPROTOOPT),
    };
    let len = k.read_u32(t, lenp)? as i32;
    if len < 0 {
        return err(EINVAL);
    }
    let n = (len as usize).min(4);
    k.write_user(t, val, &v.to_le_bytes()[..n])?;
    k.write_u32(t, lenp, n as u32)?;
    Ok(0)
}

pub fn setsockopt(k: &mut Kernel, t: Pid, fd: u64, level: u64, name: u64) -> SysResult {
    let f = file(k, t, fd)?;
    socket_of(&f)?;
    if level != SOL_SOCKET as u64 {
        return err(EOPNOTSUPP);
    }
    match name as i32 {
        // Sizes and flags a pair takes without effect.
        SO_SNDBUF | SO_RCVBUF | SO_KEEPALIVE | SO_PASSCRED | SO_REUSEADDR => Ok(0),
        _ => err(ENOPROTOOPT),
    }
}

/// `getsockname`, `getpeername`: a pair's ends are unnamed, an address
/// of just its family (`sizeof(sa_family_t)`), as Linux gives.
pub fn name(k: &mut Kernel, t: Pid, fd: u64, addr: u64, lenp: u64) -> SysResult {
    let f = file(k, t, fd)?;
    socket_of(&f)?;
    let len = k.read_u32(t, lenp)? as i32;
    if len < 0 {
        return err(EINVAL);
    }
    let family = (AF_UNIX as u16).to_le_bytes();
    let n = (len as usize).min(family.len());
    k.write_user(t, addr, &family[..n])?;
    k.write_u32(t, lenp, family.len() as u32)?;
    Ok(0)
}

/// `bind`, `listen`, `accept`, `connect` on a descriptor: a pair is
/// already connected (EISCONN for connect, EINVAL for the rest), any
/// other file is not a socket.
pub fn on_connected(k: &mut Kernel, t: Pid, fd: u64, errno: i32) -> SysResult {
    let f: Rc<OpenFile> = file(k, t, fd)?;
    socket_of(&f)?;
    err(errno)
}
