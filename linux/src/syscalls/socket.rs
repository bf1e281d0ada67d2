//! Sockets: stream sockets inside one VM (`fs::socket`): `AF_UNIX` with
//! abstract or path names and `socketpair`'s pairs, `AF_INET` and
//! `AF_INET6` on the VM's own loopback; `bind`, `listen`, `accept`,
//! `connect`, the `send`/`recv` family, `shutdown`, options and names.
//! An address off the loopback is unreachable unless the VM has a dialer
//! (`Config::egress`): then `connect` asks it for a host connection,
//! made on a thread outside the vCPU's filter, and the socket holds it as
//! a host connection once it is made. Datagram and raw sockets are not
//! supported (docs/linux.md).

use std::rc::Rc;

use libc::*;

use std::cell::Cell;
use std::os::fd::AsRawFd;

use super::fd::{
    file, gather, host_events, host_read, host_ready, host_write, install_pair, iov_total, iovecs,
    pipe_read, pipe_write, scatter,
};
use super::{err, Stop, SysResult};
use crate::fs::file::{Kind, OpenFile};
use crate::fs::socket::{Conn, Dial, HostConn, Key, SockAddr, SockState, Socket, SocketEnd};
use crate::kernel::uaccess::MAX_IO;
use crate::kernel::Kernel;
use crate::signal::{SigInfo, SIGPIPE};
use crate::task::{Pid, Wait};

/// The buffer size a socket reports (`SO_SNDBUF`, `SO_RCVBUF`): Linux's
/// default, `net.core.wmem_default`.
const BUFFER: u32 = 212_992;

/// The longest `sockaddr` a call may pass (`sockaddr_storage`).
const MAX_ADDR: u64 = 128;

fn socket_of(f: &OpenFile) -> Result<&Socket, Stop> {
    match &f.kind {
        Kind::Socket(s) => Ok(s),
        _ => err(ENOTSOCK),
    }
}

/// Reads from a connected socket: buffered data first, then end of file
/// once the peer stopped writing or this end was shut for reading.
pub fn receive(s: &Socket, len: usize, nonblock: bool, peek: bool) -> Result<Vec<u8>, Stop> {
    let Some(conn) = s.conn() else {
        return err(ENOTCONN);
    };
    match &*conn {
        Conn::Local(end) => {
            if end.shut_rd.get() && end.rx.borrow().buf.is_empty() {
                return Ok(Vec::new());
            }
            pipe_read(&end.rx, len, nonblock, peek)
        }
        Conn::Host(h) => {
            let raw = h.fd.as_raw_fd();
            if len > 0 && !host_ready(raw, POLLIN) {
                return if nonblock {
                    err(EAGAIN)
                } else {
                    Err(Stop::Block(Wait::HostRead(raw)))
                };
            }
            let data = if peek {
                let mut buf = vec![0u8; len];
                // SAFETY: `buf` has `len` bytes; the fd is ours.
                let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), len, MSG_PEEK) };
                if n < 0 {
                    return Err(super::host_err(std::io::Error::last_os_error()));
                }
                buf.truncate(n as usize);
                buf
            } else {
                host_read(raw, len, None)?
            };
            h.reads.set(h.reads.get() + 1);
            Ok(data)
        }
    }
}

/// Writes to a connected socket: EPIPE (and SIGPIPE unless `sigpipe` is
/// off) once either side stopped that way.
pub fn send(
    k: &mut Kernel,
    t: Pid,
    s: &Socket,
    data: &[u8],
    nonblock: bool,
    sigpipe: bool,
) -> Result<usize, Stop> {
    let Some(conn) = s.conn() else {
        return err(ENOTCONN);
    };
    let epipe = |k: &mut Kernel| {
        if sigpipe {
            let pid = k.thread(t).pid;
            k.signal_thread(t, SigInfo::user(SIGPIPE, pid));
        }
        err(EPIPE)
    };
    match &*conn {
        Conn::Local(end) if end.shut_wr.get() => epipe(k),
        Conn::Local(end) => pipe_write(k, t, &end.tx, data, nonblock, false, sigpipe),
        Conn::Host(h) => match host_write(h.fd.as_raw_fd(), data, None) {
            Ok(n) => {
                h.writes.set(h.writes.get() + 1);
                Ok(n)
            }
            Err(Stop::Errno(EPIPE)) => epipe(k),
            // The host's reader is behind: try again shortly.
            Err(Stop::Errno(EAGAIN)) if !nonblock => Err(Stop::Block(Wait::Poll {
                deadline: Some(k.mono_ns() + 1_000_000),
            })),
            Err(e) => Err(e),
        },
    }
}

/// What changes when a socket's readiness may have (for edge-triggered
/// epoll): its connection's two pipes and shutdowns (a host connection's
/// reads, writes and readiness), a listener's arrivals and accepts.
pub fn token(s: &Socket) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match &*s.state.borrow() {
        SockState::Connected {
            end: Conn::Local(end),
            ..
        } => {
            end.rx.borrow().token().hash(&mut h);
            end.tx.borrow().token().hash(&mut h);
            (end.shut_rd.get(), end.shut_wr.get()).hash(&mut h);
        }
        SockState::Connected {
            end: Conn::Host(c), ..
        } => (c.reads.get(), c.writes.get(), conn_events(c)).hash(&mut h),
        SockState::Listening {
            queue, arrivals, ..
        } => (1u8, *arrivals, queue.len()).hash(&mut h),
        SockState::Fresh { .. } => (2u8, s.dial.get()).hash(&mut h),
    }
    h.finish()
}

/// A host connection's poll events now.
fn conn_events(c: &HostConn) -> i16 {
    host_events(c.fd.as_raw_fd(), POLLIN | POLLOUT)
}

/// The poll events a socket has now.
pub fn ready(s: &Socket) -> i16 {
    match &*s.state.borrow() {
        SockState::Connected {
            end: Conn::Local(end),
            ..
        } => {
            let (rx, tx) = (end.rx.borrow(), end.tx.borrow());
            let (read_shut, write_shut) = (
                rx.writers == 0 || end.shut_rd.get(),
                tx.readers == 0 || end.shut_wr.get(),
            );
            let mut r = 0;
            // Readable with data or at end of file; writable with room, or
            // when a write would fail at once (EPIPE); hung up both ways.
            if !rx.buf.is_empty() || read_shut {
                r |= POLLIN;
            }
            if tx.space() > 0 || write_shut {
                r |= POLLOUT;
            }
            if read_shut && write_shut {
                r |= POLLHUP;
            }
            r
        }
        SockState::Connected {
            end: Conn::Host(c), ..
        } => conn_events(c),
        SockState::Listening { queue, .. } if !queue.is_empty() => POLLIN,
        SockState::Listening { .. } => 0,
        // Connecting out of the VM: nothing yet; failed: as Linux reports
        // a refused connect.
        SockState::Fresh { .. } => match s.dial.get() {
            Dial::Pending => 0,
            Dial::Failed(_) => POLLOUT | POLLERR | POLLHUP,
            Dial::None => POLLOUT | POLLHUP,
        },
    }
}

/// The host fd of a socket's host connection, for the idle vCPU's poll.
pub fn host_fd(s: &Socket) -> Option<i32> {
    match s.conn().as_deref() {
        Some(Conn::Host(c)) => Some(c.fd.as_raw_fd()),
        _ => None,
    }
}

/// Queues a connection from the host on the listener bound to `port`:
/// ECONNREFUSED if there is none or its backlog is full.
pub fn connect_from_host(k: &mut Kernel, port: u16, fd: std::os::fd::OwnedFd) -> Result<(), i32> {
    let lf = k.sockets.get(&Key::Port(port)).ok_or(ECONNREFUSED)?;
    let Kind::Socket(listener) = &lf.kind else {
        return Err(ECONNREFUSED);
    };
    let peer_port = k.sockets.ephemeral().unwrap_or(0);
    let family = listener.family;
    let mut state = listener.state.borrow_mut();
    match &mut *state {
        SockState::Listening {
            queue,
            backlog,
            arrivals,
            ..
        } if queue.len() < *backlog => {
            *arrivals += 1;
            // The host reaches the listener as a client on the VM's
            // loopback would: at the loopback address, from an ephemeral
            // port.
            let local = loopback(family, port);
            let conn = Conn::Host(HostConn {
                fd,
                reads: Cell::new(0),
                writes: Cell::new(0),
            });
            queue.push_back((conn, local, loopback(AF_INET, peer_port).as_family(family)));
            Ok(())
        }
        _ => Err(ECONNREFUSED),
    }
}

fn new_socket(k: &mut Kernel, family: i32, state: SockState, flags: u64) -> Rc<OpenFile> {
    let id = k.next_pipe_id;
    k.next_pipe_id += 1;
    let nb = if flags & SOCK_NONBLOCK as u64 != 0 {
        O_NONBLOCK
    } else {
        0
    };
    OpenFile::new(Kind::Socket(Socket::new(family, id, state)), O_RDWR | nb)
}

/// `type`'s flags, or EINVAL for unknown ones.
fn type_flags(ty: u64) -> (u64, u64) {
    let flags = ty & (SOCK_NONBLOCK | SOCK_CLOEXEC) as u64;
    (ty & !flags, flags)
}

pub fn socket(k: &mut Kernel, t: Pid, domain: u64, ty: u64, proto: u64) -> SysResult {
    let family = domain as i32;
    if !matches!(family, AF_UNIX | AF_INET | AF_INET6) {
        return err(EAFNOSUPPORT);
    }
    let (kind, flags) = type_flags(ty);
    if kind != SOCK_STREAM as u64 {
        // Datagram, sequenced-packet and raw sockets are not supported.
        return err(ESOCKTNOSUPPORT);
    }
    let ok_proto = match family {
        AF_UNIX => proto == 0 || proto == PF_UNIX as u64,
        _ => proto == 0 || proto == IPPROTO_TCP as u64,
    };
    if !ok_proto {
        return err(EPROTONOSUPPORT);
    }
    let f = new_socket(k, family, SockState::Fresh { bound: None }, flags);
    let cloexec = flags & SOCK_CLOEXEC as u64 != 0;
    let fd = k
        .fds_of(t)
        .borrow_mut()
        .insert(f, cloexec)
        .ok_or(Stop::Errno(EMFILE))?;
    Ok(fd as u64)
}

pub fn socketpair(k: &mut Kernel, t: Pid, domain: u64, ty: u64, proto: u64, out: u64) -> SysResult {
    match domain as i32 {
        AF_UNIX => {}
        // Linux makes the socket, then its family has no pairs.
        AF_INET | AF_INET6 => return err(EOPNOTSUPP),
        _ => return err(EAFNOSUPPORT),
    }
    let (kind, flags) = type_flags(ty);
    match kind {
        t if t == SOCK_STREAM as u64 => {}
        t if t == SOCK_DGRAM as u64 || t == SOCK_SEQPACKET as u64 => return err(EOPNOTSUPP),
        _ => return err(ESOCKTNOSUPPORT),
    }
    if proto != 0 && proto != PF_UNIX as u64 {
        return err(EPROTONOSUPPORT);
    }
    let (a, b) = SocketEnd::pair(&k.pipe_bytes);
    let connected = |end| SockState::Connected {
        end: Conn::Local(end),
        local: SockAddr::Unnamed,
        peer: SockAddr::Unnamed,
    };
    let (fa, fb) = (
        new_socket(k, AF_UNIX, connected(a), flags),
        new_socket(k, AF_UNIX, connected(b), flags),
    );
    install_pair(k, t, [fa, fb], flags & SOCK_CLOEXEC as u64 != 0, out)
}

/// The `sockaddr` a call passes, read as `family`'s.
fn read_addr(k: &mut Kernel, t: Pid, family: i32, addr: u64, len: u64) -> Result<SockAddr, Stop> {
    if len > MAX_ADDR {
        return err(EINVAL);
    }
    let raw = k.read_user(t, addr, len as usize)?;
    SockAddr::parse(family, &raw).map_err(Stop::Errno)
}

/// Writes a name to `addr` (cut to the caller's buffer) and its full
/// length to `lenp`, as `getsockname` and `accept` do.
fn write_addr(k: &mut Kernel, t: Pid, name: &[u8], addr: u64, lenp: u64) -> Result<(), Stop> {
    let len = k.read_u32(t, lenp)? as i32;
    if len < 0 {
        return err(EINVAL);
    }
    let n = (len as usize).min(name.len());
    k.write_user(t, addr, &name[..n])?;
    k.write_u32(t, lenp, name.len() as u32)
}

/// The registry key of an `AF_UNIX` name: abstract names as they are, a
/// relative path against the caller's working directory.
fn unix_key(k: &Kernel, t: Pid, name: &[u8]) -> Key {
    if name.first() == Some(&0) || name.first() == Some(&b'/') {
        return Key::Unix(name.to_vec());
    }
    let cwd = &k.proc_of(t).cwd;
    let mut path = cwd.trim_end_matches('/').as_bytes().to_vec();
    path.push(b'/');
    path.extend(name);
    Key::Unix(path)
}

pub fn bind(k: &mut Kernel, t: Pid, fd: u64, addr: u64, len: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    let mut name = read_addr(k, t, s.family, addr, len)?;
    if !matches!(&*s.state.borrow(), SockState::Fresh { bound: None }) {
        return err(EINVAL);
    }
    let key = match &name {
        // Autobind: an abstract name of the kernel's choosing.
        SockAddr::Unnamed => {
            name = SockAddr::Unix(format!("\0{:05x}", s.id).into_bytes());
            let SockAddr::Unix(n) = &name else {
                unreachable!()
            };
            Key::Unix(n.clone())
        }
        SockAddr::Unix(n) => unix_key(k, t, n),
        ip if !ip.is_local() => return err(EADDRNOTAVAIL),
        ip => {
            let port = match ip.port() {
                Some(0) => k.sockets.ephemeral().ok_or(Stop::Errno(EADDRINUSE))?,
                Some(p) => p,
                None => unreachable!("an IP address has a port"),
            };
            name = ip.with_port(port);
            Key::Port(port)
        }
    };
    if !k.sockets.bind(key, &f) {
        return err(EADDRINUSE);
    }
    *s.state.borrow_mut() = SockState::Fresh { bound: Some(name) };
    Ok(0)
}

/// The any address of an IP family, on `port`.
fn any(family: i32, port: u16) -> SockAddr {
    if family == AF_INET6 {
        SockAddr::V6([0; 16], port)
    } else {
        SockAddr::V4([0; 4], port)
    }
}

/// The loopback address of an IP family, on `port`.
fn loopback(family: i32, port: u16) -> SockAddr {
    if family == AF_INET6 {
        let mut ip = [0; 16];
        ip[15] = 1;
        SockAddr::V6(ip, port)
    } else {
        SockAddr::V4([127, 0, 0, 1], port)
    }
}

pub fn listen(k: &mut Kernel, t: Pid, fd: u64, backlog: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    let backlog = (backlog as i32).clamp(1, 4096) as usize;
    let bound = match &mut *s.state.borrow_mut() {
        SockState::Listening { backlog: b, .. } => {
            *b = backlog;
            return Ok(0);
        }
        SockState::Connected { .. } => return err(EINVAL),
        SockState::Fresh { bound } => bound.clone(),
    };
    let addr = match bound {
        Some(a) => a,
        None if s.family == AF_UNIX => return err(EINVAL),
        // An unbound IP socket listens on an ephemeral port.
        None => {
            let port = k.sockets.ephemeral().ok_or(Stop::Errno(EADDRINUSE))?;
            if !k.sockets.bind(Key::Port(port), &f) {
                return err(EADDRINUSE);
            }
            any(s.family, port)
        }
    };
    if let Some(port) = addr.port() {
        let mut seen = k.control.listened.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&port) {
            seen.push(port);
        }
    }
    *s.state.borrow_mut() = SockState::Listening {
        addr,
        queue: Default::default(),
        backlog,
        arrivals: 0,
    };
    Ok(0)
}

pub fn accept(k: &mut Kernel, t: Pid, fd: u64, addr: u64, lenp: u64, flags: u64) -> SysResult {
    if flags & !((SOCK_NONBLOCK | SOCK_CLOEXEC) as u64) != 0 {
        return err(EINVAL);
    }
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    let next = match &mut *s.state.borrow_mut() {
        SockState::Listening { queue, .. } => queue.pop_front(),
        _ => return err(EINVAL),
    };
    let Some((end, local, peer)) = next else {
        return if f.flags.get() & O_NONBLOCK != 0 {
            err(EAGAIN)
        } else {
            Err(Stop::Block(Wait::PipeRead))
        };
    };
    let name = peer.encode(s.family);
    let state = SockState::Connected { end, local, peer };
    let conn = new_socket(k, s.family, state, flags);
    let cloexec = flags & SOCK_CLOEXEC as u64 != 0;
    let fds = k.fds_of(t);
    let new = fds
        .borrow_mut()
        .insert(conn, cloexec)
        .ok_or(Stop::Errno(EMFILE))?;
    if addr != 0 {
        if let Err(e) = write_addr(k, t, &name, addr, lenp) {
            fds.borrow_mut().close(new as i64);
            return Err(e);
        }
    }
    Ok(new as u64)
}

pub fn connect(k: &mut Kernel, t: Pid, fd: u64, addr: u64, len: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    let dest = read_addr(k, t, s.family, addr, len)?;
    let bound = match &*s.state.borrow() {
        // A blocked connect out of the VM, retried once it is made.
        SockState::Connected { .. } if k.retrying.is_some() => return Ok(0),
        SockState::Connected { .. } => return err(EISCONN),
        SockState::Listening { .. } => return err(EINVAL),
        SockState::Fresh { bound } => bound.clone(),
    };
    let (key, peer) = match &dest {
        SockAddr::Unnamed => return err(EINVAL),
        SockAddr::Unix(n) => (unix_key(k, t, n), dest.clone()),
        ip if !ip.is_local() => return dial_out(k, &f, ip),
        ip => match ip.port() {
            Some(0) | None => return err(ECONNREFUSED),
            // The any address means this host: its loopback.
            Some(p) if ip == &any(s.family, p) => (Key::Port(p), loopback(s.family, p)),
            Some(p) => (Key::Port(p), ip.clone()),
        },
    };
    let Some(lf) = k.sockets.get(&key) else {
        let path = matches!(&key, Key::Unix(n) if n.first() != Some(&0));
        return err(if path { ENOENT } else { ECONNREFUSED });
    };
    let Kind::Socket(listener) = &lf.kind else {
        return err(ECONNREFUSED);
    };
    match &*listener.state.borrow() {
        SockState::Listening { queue, backlog, .. } if queue.len() >= *backlog => {
            return if f.flags.get() & O_NONBLOCK != 0 {
                err(EAGAIN)
            } else {
                Err(Stop::Block(Wait::PipeWrite))
            };
        }
        SockState::Listening { .. } => {}
        _ => return err(ECONNREFUSED),
    }
    let local = match bound {
        Some(a) => a,
        None if s.family == AF_UNIX => SockAddr::Unnamed,
        None => {
            let port = k.sockets.ephemeral().ok_or(Stop::Errno(EADDRNOTAVAIL))?;
            k.sockets.bind(Key::Port(port), &f);
            loopback(s.family, port)
        }
    };
    let (ours, theirs) = SocketEnd::pair(&k.pipe_bytes);
    if let SockState::Listening {
        queue, arrivals, ..
    } = &mut *listener.state.borrow_mut()
    {
        *arrivals += 1;
        // The accepted socket is named by the address connected to, and
        // its peer by ours, each in the listener's family.
        queue.push_back((
            Conn::Local(theirs),
            peer.as_family(listener.family),
            local.as_family(listener.family),
        ));
    }
    *s.state.borrow_mut() = SockState::Connected {
        end: Conn::Local(ours),
        local,
        peer,
    };
    Ok(0)
}

/// A socket's connection out of the VM being made (`Kernel::dials`).
#[derive(Debug)]
pub struct PendingDial {
    pub id: usize,
    pub file: std::rc::Weak<OpenFile>,
    pub local: SockAddr,
    pub peer: SockAddr,
}

/// Most dials one VM has under way at once (each a host thread).
const MAX_DIALS: usize = 64;

/// `connect` to `peer`, off the VM's loopback: asks the VM's dialer for a
/// host connection (ENETUNREACH without one). Non-blocking, it is
/// EINPROGRESS and the socket becomes writable (or reports the error in
/// `SO_ERROR`) once it is made; blocking, the call waits for it. A
/// second call while it is under way is EALREADY.
fn dial_out(k: &mut Kernel, f: &Rc<OpenFile>, peer: &SockAddr) -> SysResult {
    let s = socket_of(f)?;
    let nonblock = f.flags.get() & O_NONBLOCK != 0;
    match s.dial.get() {
        Dial::Pending if nonblock && k.retrying.is_none() => return err(EALREADY),
        Dial::Pending => return Err(Stop::Block(Wait::Poll { deadline: None })),
        Dial::Failed(e) => {
            s.dial.set(Dial::None);
            return err(e);
        }
        Dial::None => {}
    }
    let to = match peer {
        SockAddr::V4(ip, port) => std::net::SocketAddr::from((*ip, *port)),
        SockAddr::V6(ip, port) => std::net::SocketAddr::from((*ip, *port)),
        _ => return err(EINVAL),
    };
    if to.port() == 0 {
        return err(ECONNREFUSED);
    }
    let control = k.control.clone();
    let sent = {
        let dialer = control.dialer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = dialer.as_ref() else {
            return err(ENETUNREACH);
        };
        if control.dialing.load(std::sync::atomic::Ordering::SeqCst) >= MAX_DIALS {
            return err(EAGAIN);
        }
        control
            .dialing
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tx.send((s.id, to)).is_ok()
    };
    if !sent {
        control
            .dialing
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        return err(ENETUNREACH);
    }
    let port = k.sockets.ephemeral().ok_or(Stop::Errno(EADDRNOTAVAIL))?;
    s.dial.set(Dial::Pending);
    k.dials.push(PendingDial {
        id: s.id,
        file: Rc::downgrade(f),
        local: loopback(s.family, port),
        peer: peer.clone(),
    });
    if nonblock {
        err(EINPROGRESS)
    } else {
        Err(Stop::Block(Wait::Poll { deadline: None }))
    }
}

/// Hands the dialer's answers to their sockets: connected (a host
/// connection), or failed with an errno for `SO_ERROR` or the blocked
/// `connect`. A socket closed meanwhile drops its connection.
pub fn dials_done(k: &mut Kernel) {
    let done: Vec<(usize, Result<std::os::fd::OwnedFd, i32>)> =
        std::mem::take(&mut *k.control.dialed.lock().unwrap_or_else(|e| e.into_inner()));
    for (id, r) in done {
        let Some(at) = k.dials.iter().position(|d| d.id == id) else {
            continue;
        };
        let d = k.dials.remove(at);
        let Some(f) = d.file.upgrade() else { continue };
        let Kind::Socket(s) = &f.kind else { continue };
        match r {
            Ok(fd) => {
                *s.state.borrow_mut() = SockState::Connected {
                    end: Conn::Host(HostConn {
                        fd,
                        reads: Cell::new(0),
                        writes: Cell::new(0),
                    }),
                    local: d.local,
                    peer: d.peer,
                };
                s.dial.set(Dial::None);
            }
            Err(e) => s.dial.set(Dial::Failed(e)),
        }
    }
}

/// Whether a call's `flags` make it non-blocking (`MSG_DONTWAIT`, or the
/// file's own `O_NONBLOCK`).
fn nonblocking(f: &OpenFile, flags: u64) -> bool {
    flags & MSG_DONTWAIT as u64 != 0 || f.flags.get() & O_NONBLOCK != 0
}

/// `MSG_OOB` is EOPNOTSUPP here (no urgent data on these sockets).
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
    if addr != 0 && addrlen != 0 {
        // A stream socket takes no address per message.
        return err(if s.conn().is_some() {
            EISCONN
        } else {
            ENOTCONN
        });
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
        // A stream socket's messages carry no address.
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
        return err(if s.conn().is_some() {
            EISCONN
        } else {
            ENOTCONN
        });
    }
    if controllen != 0 {
        // Passing descriptors or credentials (SCM_RIGHTS, SCM_CREDENTIALS)
        // is not supported yet.
        return err(EOPNOTSUPP);
    }
    let v = iovecs(k, t, iov, iovlen)?;
    let data = gather(k, t, &v)?;
    let sigpipe = flags & MSG_NOSIGNAL as u64 == 0;
    Ok(send(k, t, s, &data, nonblocking(&f, flags), sigpipe)? as u64)
}

pub fn recvmsg(k: &mut Kernel, t: Pid, fd: u64, msg: u64, flags: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    check_flags(flags)?;
    let [_, _, iov, iovlen, _, _] = msghdr(k, t, msg)?;
    let v = iovecs(k, t, iov, iovlen)?;
    let peek = flags & MSG_PEEK as u64 != 0;
    let len = iov_total(&v).min(MAX_IO as u64) as usize;
    let data = receive(s, len, nonblocking(&f, flags), peek)?;
    scatter(k, t, &v, &data)?;
    // No name, no control messages, no flags (nothing was cut short).
    k.write_u32(t, msg + 8, 0)?;
    k.write_u64(t, msg + 40, 0)?;
    k.write_u32(t, msg + 48, 0)?;
    Ok(data.len() as u64)
}

pub fn shutdown(k: &mut Kernel, t: Pid, fd: u64, how: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    if !matches!(how as i32, SHUT_RD | SHUT_WR | SHUT_RDWR) {
        return err(EINVAL);
    }
    let Some(conn) = s.conn() else {
        return err(ENOTCONN);
    };
    match &*conn {
        Conn::Local(end) => {
            if how as i32 != SHUT_WR {
                end.shut_read();
            }
            if how as i32 != SHUT_RD {
                end.shut_write();
            }
        }
        Conn::Host(c) => {
            // SAFETY: shutdown on the host socket this connection owns.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), how as i32) };
            c.writes.set(c.writes.get() + 1);
        }
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
    let s = socket_of(&f)?;
    let listening = matches!(&*s.state.borrow(), SockState::Listening { .. });
    let v: u32 = match (level as i32, name as i32) {
        (SOL_SOCKET, SO_TYPE) => SOCK_STREAM as u32,
        (SOL_SOCKET, SO_DOMAIN) => s.family as u32,
        (SOL_SOCKET, SO_PROTOCOL) if s.family != AF_UNIX => IPPROTO_TCP as u32,
        (SOL_SOCKET, SO_ACCEPTCONN) => listening as u32,
        (SOL_SOCKET, SO_SNDBUF | SO_RCVBUF) => BUFFER,
        // A failed connect out of the VM's errno, reported once.
        (SOL_SOCKET, SO_ERROR) => match s.dial.get() {
            Dial::Failed(e) => {
                s.dial.set(Dial::None);
                e as u32
            }
            _ => 0,
        },
        (SOL_SOCKET, SO_PROTOCOL | SO_KEEPALIVE | SO_PASSCRED | SO_REUSEADDR) => 0,
        (SOL_SOCKET, _) => return err(ENOPROTOOPT),
        // IP and TCP options read as off on an IP socket.
        (IPPROTO_TCP | IPPROTO_IP | IPPROTO_IPV6, _) if s.family != AF_UNIX => 0,
        _ => return err(EOPNOTSUPP),
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
    let s = socket_of(&f)?;
    match (level as i32, name as i32) {
        // Sizes and flags taken without effect (there is no network).
        (
            SOL_SOCKET,
            SO_SNDBUF | SO_RCVBUF | SO_KEEPALIVE | SO_PASSCRED | SO_REUSEADDR | SO_REUSEPORT
            | SO_LINGER | SO_RCVTIMEO | SO_SNDTIMEO | SO_BROADCAST,
        ) => Ok(0),
        (SOL_SOCKET, _) => err(ENOPROTOOPT),
        (IPPROTO_TCP | IPPROTO_IP | IPPROTO_IPV6, _) if s.family != AF_UNIX => Ok(0),
        _ => err(EOPNOTSUPP),
    }
}

/// `getsockname` (`peer` false) and `getpeername`.
pub fn name(k: &mut Kernel, t: Pid, fd: u64, addr: u64, lenp: u64, peer: bool) -> SysResult {
    let f = file(k, t, fd)?;
    let s = socket_of(&f)?;
    let name = match (&*s.state.borrow(), peer) {
        (SockState::Connected { peer, .. }, true) => peer.clone(),
        (_, true) => return err(ENOTCONN),
        (SockState::Connected { local, .. }, false) => local.clone(),
        (SockState::Listening { addr, .. }, false) => addr.clone(),
        (SockState::Fresh { bound: Some(a) }, false) => a.clone(),
        (SockState::Fresh { bound: None }, false) if s.family == AF_UNIX => SockAddr::Unnamed,
        (SockState::Fresh { bound: None }, false) => any(s.family, 0),
    };
    write_addr(k, t, &name.encode(s.family), addr, lenp)?;
    Ok(0)
}
