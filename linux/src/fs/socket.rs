//! Stream sockets inside one VM, kept by the VMM: `AF_UNIX` (abstract and
//! path names, and `socketpair`'s unnamed pairs) and `AF_INET`/`AF_INET6`
//! on the VM's loopback. A connection is two pipes, one each way
//! ([`SocketEnd`]); a listening socket holds the connections waiting for
//! `accept`; [`Names`] maps bound names to their sockets. A connection
//! from the host into a listening socket ([`Conn::Host`]) is the one end
//! of a host socket pair the VMM holds; a connection out of the VM
//! (`Config::egress`) is a host socket the embedder's dialer connected,
//! held the same way.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

use super::file::OpenFile;
use super::pipe::Pipe;

/// One end of a connection: it reads what the other end writes (`rx`,
/// the other end's `tx`) and writes what the other end reads.
/// `shutdown` closes one way early; dropping the end closes what is still
/// open.
#[derive(Debug)]
pub struct SocketEnd {
    pub rx: Rc<RefCell<Pipe>>,
    pub tx: Rc<RefCell<Pipe>>,
    /// Shut for reading (its reader count is given back).
    pub shut_rd: Cell<bool>,
    /// Shut for writing (its writer count is given back).
    pub shut_wr: Cell<bool>,
}

impl SocketEnd {
    /// The two connected ends, their pipes counted in `held` (the VM's
    /// total, `pipe::VM_PIPE_BYTES`).
    pub fn pair(held: &Rc<Cell<usize>>) -> (Self, Self) {
        let (a, b) = (
            Rc::new(RefCell::new(Pipe::new(held.clone()))),
            Rc::new(RefCell::new(Pipe::new(held.clone()))),
        );
        let end = |rx: &Rc<RefCell<Pipe>>, tx: &Rc<RefCell<Pipe>>| Self {
            rx: rx.clone(),
            tx: tx.clone(),
            shut_rd: Cell::new(false),
            shut_wr: Cell::new(false),
        };
        (end(&a, &b), end(&b, &a))
    }

    /// `shutdown(SHUT_RD)`: reads see end of file, the peer's writes EPIPE.
    pub fn shut_read(&self) {
        if !self.shut_rd.replace(true) {
            self.rx.borrow_mut().readers -= 1;
        }
    }

    /// `shutdown(SHUT_WR)`: the peer reads end of file, writes here EPIPE.
    pub fn shut_write(&self) {
        if !self.shut_wr.replace(true) {
            self.tx.borrow_mut().writers -= 1;
        }
    }
}

impl Drop for SocketEnd {
    fn drop(&mut self) {
        self.shut_read();
        self.shut_write();
    }
}

/// A connection from the host (`Port::connect`): the VM's end of a host
/// `AF_UNIX` socket pair (non-blocking), with counts of what went
/// through it for edge-triggered epoll.
#[derive(Debug)]
pub struct HostConn {
    pub fd: std::os::fd::OwnedFd,
    pub reads: Cell<u64>,
    pub writes: Cell<u64>,
}

/// A connected socket's end: in the VM, or from the host.
#[derive(Debug)]
pub enum Conn {
    Local(SocketEnd),
    Host(HostConn),
}

/// A socket's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SockAddr {
    /// An unbound `AF_UNIX` socket (`socketpair`'s, a client's).
    Unnamed,
    /// An `AF_UNIX` name: a path, or abstract (starting with a NUL).
    Unix(Vec<u8>),
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

/// What a name is registered under: an `AF_UNIX` name, or a port (the
/// VM has one loopback, shared by both IP families).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Unix(Vec<u8>),
    Port(u16),
}

impl SockAddr {
    /// Reads a `sockaddr` of `family` (EINVAL if malformed, EAFNOSUPPORT
    /// for another family).
    pub fn parse(family: i32, raw: &[u8]) -> Result<Self, i32> {
        if raw.len() < 2 {
            return Err(libc::EINVAL);
        }
        let got = u16::from_le_bytes([raw[0], raw[1]]) as i32;
        if got != family {
            return Err(if family == libc::AF_UNIX {
                libc::EINVAL
            } else {
                libc::EAFNOSUPPORT
            });
        }
        let port = |r: &[u8]| u16::from_be_bytes([r[2], r[3]]);
        match family {
            libc::AF_UNIX => {
                let path = &raw[2..];
                if path.is_empty() {
                    return Ok(SockAddr::Unnamed);
                }
                if path[0] == 0 {
                    return Ok(SockAddr::Unix(path.to_vec()));
                }
                // A path ends at its first NUL.
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                Ok(SockAddr::Unix(path[..end].to_vec()))
            }
            libc::AF_INET if raw.len() >= 16 => {
                Ok(SockAddr::V4(raw[4..8].try_into().expect("4"), port(raw)))
            }
            libc::AF_INET6 if raw.len() >= 24 => {
                Ok(SockAddr::V6(raw[8..24].try_into().expect("16"), port(raw)))
            }
            _ => Err(libc::EINVAL),
        }
    }

    /// The `sockaddr` bytes (for `getsockname`, `accept`, ...).
    pub fn encode(&self, family: i32) -> Vec<u8> {
        let mut out = (family as u16).to_le_bytes().to_vec();
        match self {
            SockAddr::Unnamed => {}
            SockAddr::Unix(name) => {
                out.extend(name);
                if name.first() != Some(&0) {
                    out.push(0);
                }
            }
            SockAddr::V4(ip, port) => {
                out.extend(port.to_be_bytes());
                out.extend(ip);
                out.extend([0; 8]);
            }
            SockAddr::V6(ip, port) => {
                out.extend(port.to_be_bytes());
                out.extend([0; 4]);
                out.extend(ip);
                out.extend([0; 4]);
            }
        }
        out
    }

    pub fn port(&self) -> Option<u16> {
        match self {
            SockAddr::V4(_, p) | SockAddr::V6(_, p) => Some(*p),
            _ => None,
        }
    }

    pub fn with_port(&self, port: u16) -> Self {
        match self {
            SockAddr::V4(ip, _) => SockAddr::V4(*ip, port),
            SockAddr::V6(ip, _) => SockAddr::V6(*ip, port),
            other => other.clone(),
        }
    }

    /// On this VM: the loopback or the any address (anything else has no
    /// route from inside the VM).
    pub fn is_local(&self) -> bool {
        match self {
            SockAddr::V4(ip, _) => ip[0] == 127 || *ip == [0; 4],
            SockAddr::V6(ip, _) => {
                let loopback = ip[..15].iter().all(|&b| b == 0) && ip[15] <= 1;
                let mapped = ip[..10].iter().all(|&b| b == 0)
                    && ip[10..12] == [0xff, 0xff]
                    && (ip[12] == 127 || ip[12..] == [0; 4]);
                loopback || mapped
            }
            _ => true,
        }
    }

    /// This address as a socket of `family` names it (an IPv4 peer of an
    /// IPv6 socket is v4-mapped).
    pub fn as_family(&self, family: i32) -> Self {
        match (self, family) {
            (SockAddr::V4(ip, port), libc::AF_INET6) => {
                let mut v6 = [0u8; 16];
                v6[10] = 0xff;
                v6[11] = 0xff;
                v6[12..].copy_from_slice(ip);
                SockAddr::V6(v6, *port)
            }
            _ => self.clone(),
        }
    }
}

/// Where a socket is in its life.
#[derive(Debug)]
pub enum SockState {
    /// Made by `socket`, perhaps bound.
    Fresh { bound: Option<SockAddr> },
    /// Listening: the connections waiting for `accept`, each with the
    /// local and peer names its accepted socket gets.
    Listening {
        addr: SockAddr,
        queue: VecDeque<(Conn, SockAddr, SockAddr)>,
        backlog: usize,
        /// Connections queued so far (edge-triggered epoll's edges).
        arrivals: u64,
    },
    Connected {
        end: Conn,
        local: SockAddr,
        peer: SockAddr,
    },
}

/// A connection out of the VM being made for a fresh socket
/// (`Config::egress`): under way, or failed with an errno that
/// `SO_ERROR` (or the blocked `connect`) reports once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Dial {
    #[default]
    None,
    Pending,
    Failed(i32),
}

/// A stream socket (`SOCK_STREAM` of `family`).
#[derive(Debug)]
pub struct Socket {
    pub family: i32,
    pub id: usize,
    pub state: RefCell<SockState>,
    pub dial: Cell<Dial>,
}

impl Socket {
    pub fn new(family: i32, id: usize, state: SockState) -> Self {
        Self {
            family,
            id,
            state: RefCell::new(state),
            dial: Cell::new(Dial::None),
        }
    }

    /// The connection, or `None`.
    pub fn conn(&self) -> Option<std::cell::Ref<'_, Conn>> {
        std::cell::Ref::filter_map(self.state.borrow(), |s| match s {
            SockState::Connected { end, .. } => Some(end),
            _ => None,
        })
        .ok()
    }
}

/// The bound names of one VM's sockets, and its next ephemeral port.
#[derive(Debug)]
pub struct Names {
    bound: HashMap<Key, Weak<OpenFile>>,
    next_port: u16,
}

/// The ephemeral port range (Linux's `ip_local_port_range`).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

impl Default for Names {
    fn default() -> Self {
        Self {
            bound: HashMap::new(),
            next_port: *EPHEMERAL.start(),
        }
    }
}

impl Names {
    /// The live socket a name is bound to.
    pub fn get(&self, key: &Key) -> Option<Rc<OpenFile>> {
        self.bound.get(key)?.upgrade()
    }

    /// Binds `key` to `file`; false if a live socket has it.
    pub fn bind(&mut self, key: Key, file: &Rc<OpenFile>) -> bool {
        if self.get(&key).is_some() {
            return false;
        }
        self.bound.retain(|_, w| w.strong_count() > 0);
        self.bound.insert(key, Rc::downgrade(file));
        true
    }

    /// A copy whose names lead to what `file` makes of each socket
    /// (`kernel::copy`).
    pub fn copy_with<E>(
        &self,
        mut file: impl FnMut(&Weak<OpenFile>) -> Result<Weak<OpenFile>, E>,
    ) -> Result<Self, E> {
        let mut bound = HashMap::new();
        for (k, w) in &self.bound {
            bound.insert(k.clone(), file(w)?);
        }
        Ok(Self {
            bound,
            next_port: self.next_port,
        })
    }

    /// A free ephemeral port.
    pub fn ephemeral(&mut self) -> Option<u16> {
        let span = EPHEMERAL.end() - EPHEMERAL.start() + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if self.get(&Key::Port(p)).is_none() {
                return Some(p);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_and_write_as_linux_lays_them_out() {
        let v4 = [2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let a = SockAddr::parse(libc::AF_INET, &v4).unwrap();
        assert_eq!(a, SockAddr::V4([127, 0, 0, 1], 8080));
        assert_eq!(a.encode(libc::AF_INET), v4);
        assert!(a.is_local());
        assert!(!SockAddr::V4([10, 0, 0, 1], 80).is_local());
        let mapped = a.as_family(libc::AF_INET6);
        assert!(mapped.is_local());
        assert_eq!(mapped.encode(libc::AF_INET6).len(), 28);
        let un = SockAddr::parse(libc::AF_UNIX, b"\x01\x00/tmp/s\x00junk").unwrap();
        assert_eq!(un, SockAddr::Unix(b"/tmp/s".to_vec()));
        assert_eq!(un.encode(libc::AF_UNIX), b"\x01\x00/tmp/s\x00");
        let abs = SockAddr::parse(libc::AF_UNIX, b"\x01\x00\x00name").unwrap();
        assert_eq!(abs.encode(libc::AF_UNIX), b"\x01\x00\x00name");
        assert_eq!(SockAddr::parse(libc::AF_INET, &v4[..8]), Err(libc::EINVAL));
        assert_eq!(
            SockAddr::parse(libc::AF_INET6, &v4),
            Err(libc::EAFNOSUPPORT)
        );
    }
}
