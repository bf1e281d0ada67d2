//! Open files and file descriptor tables.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use super::pipe::Pipe;
use super::socket::Socket;

/// What an open file description refers to.
#[derive(Debug)]
pub enum Kind {
    /// A file or directory of the root filesystem (a host fd opened inside
    /// it); reads, writes and offsets are the host's.
    Host {
        fd: OwnedFd,
        path: String,
        dir: bool,
    },
    /// One of the container's standard streams (a host pipe, FIFO, file
    /// or terminal the VMM was given). Never a terminal to the program.
    Stream {
        fd: Rc<OwnedFd>,
        readable: bool,
    },
    PipeRead(Rc<RefCell<Pipe>>, usize),
    PipeWrite(Rc<RefCell<Pipe>>, usize),
    /// A stream socket (`fs::socket`).
    Socket(Socket),
    Null,
    Zero,
    Full,
    Random,
    /// A file Flint generates (`/proc/...`), made when it is opened.
    Synthetic {
        data: Vec<u8>,
        path: String,
    },
    /// A directory Flint generates: its entries (name, inode, type).
    SynthDir {
        entries: Vec<(String, u64, u8)>,
        path: String,
    },
    /// An epoll instance: its interest list.
    Epoll(RefCell<Vec<EpollEntry>>),
    /// An eventfd counter (and whether it is a semaphore).
    EventFd(Cell<u64>, bool),
}

/// One fd an epoll instance watches.
#[derive(Debug, Clone)]
pub struct EpollEntry {
    pub fd: i64,
    pub file: std::rc::Weak<OpenFile>,
    pub events: u32,
    pub data: u64,
    /// With EPOLLET: the file's state when last reported (see
    /// `poll::activity`).
    pub seen: Option<u64>,
}

#[derive(Debug)]
pub struct OpenFile {
    pub kind: Kind,
    /// Status flags (`O_APPEND`, `O_NONBLOCK`, the access mode).
    pub flags: Cell<i32>,
    /// Offset of synthetic files and directory listings.
    pub offset: Cell<u64>,
}

impl OpenFile {
    pub fn new(kind: Kind, flags: i32) -> Rc<Self> {
        Rc::new(Self {
            kind,
            flags: Cell::new(flags),
            offset: Cell::new(0),
        })
    }

    pub fn readable(&self) -> bool {
        self.flags.get() & libc::O_ACCMODE != libc::O_WRONLY
    }

    pub fn writable(&self) -> bool {
        self.flags.get() & libc::O_ACCMODE != libc::O_RDONLY
    }

    /// The path `/proc/PID/fd/N` shows.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Host { path, .. }
            | Kind::Synthetic { path, .. }
            | Kind::SynthDir { path, .. } => path.clone(),
            Kind::Stream { .. } => "pipe:[1]".into(),
            Kind::PipeRead(_, id) | Kind::PipeWrite(_, id) => format!("pipe:[{}]", id + 1000),
            Kind::Socket(s) => format!("socket:[{}]", s.id + 1000),
            Kind::Null => "/dev/null".into(),
            Kind::Zero => "/dev/zero".into(),
            Kind::Full => "/dev/full".into(),
            Kind::Random => "/dev/urandom".into(),
            Kind::Epoll(_) => "anon_inode:[eventpoll]".into(),
            Kind::EventFd(..) => "anon_inode:[eventfd]".into(),
        }
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        match &self.kind {
            Kind::PipeRead(p, _) => p.borrow_mut().readers -= 1,
            Kind::PipeWrite(p, _) => p.borrow_mut().writers -= 1,
            _ => {}
        }
    }
}

/// Most descriptors a process may have open (`RLIMIT_NOFILE`).
pub const MAX_FDS: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct FdTable {
    /// Slot per fd: the file and its close-on-exec flag.
    pub fds: Vec<Option<(Rc<OpenFile>, bool)>>,
}

impl FdTable {
    pub fn get(&self, fd: i64) -> Option<Rc<OpenFile>> {
        let i = usize::try_from(fd).ok()?;
        self.fds.get(i)?.as_ref().map(|(f, _)| f.clone())
    }

    /// The lowest free descriptor at or above `min`.
    pub fn insert_from(&mut self, min: usize, file: Rc<OpenFile>, cloexec: bool) -> Option<usize> {
        let i = (min..MAX_FDS).find(|&i| self.fds.get(i).is_none_or(|s| s.is_none()))?;
        if self.fds.len() <= i {
            self.fds.resize(i + 1, None);
        }
        self.fds[i] = Some((file, cloexec));
        Some(i)
    }

    pub fn insert(&mut self, file: Rc<OpenFile>, cloexec: bool) -> Option<usize> {
        self.insert_from(0, file, cloexec)
    }

    /// Puts `file` at `fd`, closing what was there.
    pub fn set(&mut self, fd: usize, file: Rc<OpenFile>, cloexec: bool) {
        if self.fds.len() <= fd {
            self.fds.resize(fd + 1, None);
        }
        self.fds[fd] = Some((file, cloexec));
    }

    pub fn close(&mut self, fd: i64) -> bool {
        match usize::try_from(fd).ok().and_then(|i| self.fds.get_mut(i)) {
            Some(slot @ Some(_)) => {
                *slot = None;
                true
            }
            _ => false,
        }
    }

    pub fn cloexec(&self, fd: i64) -> Option<bool> {
        let i = usize::try_from(fd).ok()?;
        self.fds.get(i)?.as_ref().map(|(_, c)| *c)
    }

    pub fn set_cloexec(&mut self, fd: i64, on: bool) -> bool {
        match usize::try_from(fd).ok().and_then(|i| self.fds.get_mut(i)) {
            Some(Some((_, c))) => {
                *c = on;
                true
            }
            _ => false,
        }
    }

    /// Closes the close-on-exec descriptors (`execve`).
    pub fn exec(&mut self) {
        for slot in &mut self.fds {
            if matches!(slot, Some((_, true))) {
                *slot = None;
            }
        }
    }

    pub fn open_fds(&self) -> Vec<usize> {
        self.fds
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i)
            .collect()
    }
}
