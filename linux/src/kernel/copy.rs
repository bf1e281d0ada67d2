//! A deep copy of a container's state (processes, address spaces, open
//! files, pipes, sockets), for a template and for each VM thawed from it
//! (`freeze.rs`). The state is a graph of `Rc`s (an open file shared by
//! two descriptor tables, a pipe by its two ends, an epoll instance's
//! weak references to the files it watches); the copy keeps every sharing
//! the original has and shares nothing with it, so that the two can live
//! on different threads. Host descriptors are never shared either: a file
//! of the root is opened again at the same offset, a mapped file's
//! descriptor duplicated (it is only ever read with `pread`), and the
//! standard streams are the target's own. What the copy cannot carry
//! (a connection from the host, a process started from outside) makes it
//! fail with the reason.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};

use crate::fs::file::{EpollEntry, FdTable, Kind, OpenFile};
use crate::fs::pipe::Pipe;
use crate::fs::root::Root;
use crate::fs::socket::{Conn, SockState, Socket, SocketEnd};
use crate::mm::{AddressSpace, Backing, Vma};
use crate::signal::SigActions;
use crate::task::{Process, Table, Thread, Wait};

use super::copy_xsave;

/// Why a state cannot be copied.
pub type Refusal = String;

/// The refusal that passes once the connections with the host are
/// closed.
pub const HOST_CONNECTION: &str = "a connection from or to the host is open";

/// Copies one state graph into another, remembering what it made for each
/// shared object of the source.
pub struct Copier<'a> {
    /// The source's standard streams and the target's, by index.
    from_stdio: &'a [Weak<OwnedFd>; 3],
    to_stdio: &'a [Rc<OwnedFd>; 3],
    root: &'a Root,
    /// The target's count of bytes its pipes hold.
    pub held: Rc<Cell<usize>>,
    files: HashMap<*const OpenFile, Rc<OpenFile>>,
    /// Files being copied now (an epoll set that reaches itself).
    busy: Vec<*const OpenFile>,
    pipes: HashMap<*const RefCell<Pipe>, Rc<RefCell<Pipe>>>,
    spaces: HashMap<*const RefCell<AddressSpace>, Rc<RefCell<AddressSpace>>>,
    tables: HashMap<*const RefCell<FdTable>, Rc<RefCell<FdTable>>>,
    actions: HashMap<*const RefCell<SigActions>, Rc<RefCell<SigActions>>>,
    mapped: HashMap<*const OwnedFd, Rc<OwnedFd>>,
    /// Host descriptor numbers of the source and the target's for them
    /// (a thread blocked reading one names it).
    raw: HashMap<RawFd, RawFd>,
}

/// A copy of a host descriptor (the same open file description).
pub fn dup(fd: &OwnedFd) -> Result<OwnedFd, Refusal> {
    fd.try_clone()
        .map_err(|e| format!("duplicating a host descriptor failed: {e}"))
}

impl<'a> Copier<'a> {
    pub fn new(
        from_stdio: &'a [Weak<OwnedFd>; 3],
        to_stdio: &'a [Rc<OwnedFd>; 3],
        root: &'a Root,
    ) -> Self {
        let raw = from_stdio
            .iter()
            .zip(to_stdio.iter())
            .filter_map(|(a, b)| Some((a.upgrade()?.as_raw_fd(), b.as_raw_fd())))
            .collect();
        Self {
            from_stdio,
            to_stdio,
            root,
            held: Rc::default(),
            files: HashMap::new(),
            busy: Vec::new(),
            pipes: HashMap::new(),
            spaces: HashMap::new(),
            tables: HashMap::new(),
            actions: HashMap::new(),
            mapped: HashMap::new(),
            raw,
        }
    }

    /// The process and thread table, with everything it reaches.
    pub fn table(&mut self, t: &Table) -> Result<Table, Refusal> {
        let mut procs = std::collections::BTreeMap::new();
        for (&pid, p) in &t.procs {
            procs.insert(pid, self.process(p)?);
        }
        let mut threads = std::collections::BTreeMap::new();
        for (&tid, th) in &t.threads {
            threads.insert(tid, self.thread(th)?);
        }
        Ok(Table {
            procs,
            threads,
            next_pid: t.next_pid,
        })
    }

    fn process(&mut self, p: &Process) -> Result<Process, Refusal> {
        if p.notify.is_some() {
            return Err(format!(
                "process {} was started from outside the VM (exec)",
                p.pid
            ));
        }
        Ok(Process {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            mm: self.space(&p.mm)?,
            mm_id: p.mm_id,
            fds: self.fd_table(&p.fds)?,
            actions: self.actions(&p.actions),
            cwd: p.cwd.clone(),
            umask: p.umask,
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            environ: p.environ.clone(),
            threads: p.threads.clone(),
            exit: p.exit,
            children: p.children.clone(),
            exit_signal: p.exit_signal,
            reaped: p.reaped,
            vfork_parent: p.vfork_parent,
            start_ns: p.start_ns,
            itimer: p.itimer,
            timers: p.timers.clone(),
            notify: None,
        })
    }

    fn thread(&mut self, t: &Thread) -> Result<Thread, Refusal> {
        let mut blocked = t.blocked.clone();
        if let Some(b) = &mut blocked {
            if let Wait::HostRead(fd) = &mut b.wait {
                *fd = *self
                    .raw
                    .get(fd)
                    .ok_or_else(|| format!("thread {} waits on an unknown host fd", t.tid))?;
            }
        }
        Ok(Thread {
            tid: t.tid,
            pid: t.pid,
            regs: t.regs,
            fs_base: t.fs_base,
            gs_base: t.gs_base,
            fpu: t.fpu.as_deref().map(copy_xsave),
            sigmask: t.sigmask,
            pending: t.pending.clone(),
            altstack: t.altstack,
            clear_child_tid: t.clear_child_tid,
            blocked,
            saved_mask: t.saved_mask,
            last_cr2: t.last_cr2,
            restart: t.restart,
            fault: t.fault,
        })
    }

    fn actions(&mut self, a: &Rc<RefCell<SigActions>>) -> Rc<RefCell<SigActions>> {
        self.actions
            .entry(Rc::as_ptr(a))
            .or_insert_with(|| Rc::new(RefCell::new(a.borrow().clone())))
            .clone()
    }

    fn space(
        &mut self,
        mm: &Rc<RefCell<AddressSpace>>,
    ) -> Result<Rc<RefCell<AddressSpace>>, Refusal> {
        if let Some(c) = self.spaces.get(&Rc::as_ptr(mm)) {
            return Ok(c.clone());
        }
        let src = mm.borrow();
        let mut vmas = std::collections::BTreeMap::new();
        for (&start, v) in &src.vmas {
            let backing = match &v.backing {
                Backing::Anon => Backing::Anon,
                Backing::File {
                    fd,
                    offset,
                    file_len,
                } => Backing::File {
                    fd: self.mapped_fd(fd)?,
                    offset: *offset,
                    file_len: *file_len,
                },
            };
            vmas.insert(
                start,
                Vma {
                    end: v.end,
                    prot: v.prot,
                    shared: v.shared,
                    backing,
                    name: Rc::from(&*v.name),
                },
            );
        }
        let copy = Rc::new(RefCell::new(src.copy_with(vmas)));
        self.spaces.insert(Rc::as_ptr(mm), copy.clone());
        Ok(copy)
    }

    fn mapped_fd(&mut self, fd: &Rc<OwnedFd>) -> Result<Rc<OwnedFd>, Refusal> {
        if let Some(c) = self.mapped.get(&Rc::as_ptr(fd)) {
            return Ok(c.clone());
        }
        let c = Rc::new(dup(fd)?);
        self.mapped.insert(Rc::as_ptr(fd), c.clone());
        Ok(c)
    }

    fn fd_table(&mut self, t: &Rc<RefCell<FdTable>>) -> Result<Rc<RefCell<FdTable>>, Refusal> {
        if let Some(c) = self.tables.get(&Rc::as_ptr(t)) {
            return Ok(c.clone());
        }
        let mut fds = Vec::with_capacity(t.borrow().fds.len());
        for slot in &t.borrow().fds {
            fds.push(match slot {
                Some((f, cloexec)) => Some((self.file(f)?, *cloexec)),
                None => None,
            });
        }
        let c = Rc::new(RefCell::new(FdTable { fds }));
        self.tables.insert(Rc::as_ptr(t), c.clone());
        Ok(c)
    }

    /// The target's open file for `f` (one per open file description).
    pub fn file(&mut self, f: &Rc<OpenFile>) -> Result<Rc<OpenFile>, Refusal> {
        let key = Rc::as_ptr(f);
        if let Some(c) = self.files.get(&key) {
            return Ok(c.clone());
        }
        if self.busy.contains(&key) {
            return Err("an epoll set watches itself".into());
        }
        self.busy.push(key);
        let kind = self.kind(&f.kind);
        self.busy.retain(|&k| k != key);
        let c = Rc::new(OpenFile {
            kind: kind?,
            flags: Cell::new(f.flags.get()),
            offset: Cell::new(f.offset.get()),
        });
        self.files.insert(key, c.clone());
        Ok(c)
    }

    /// A weak reference's target in the copy (dead if it was).
    pub fn weak_file(&mut self, w: &Weak<OpenFile>) -> Result<Weak<OpenFile>, Refusal> {
        match w.upgrade() {
            Some(f) => Ok(Rc::downgrade(&self.file(&f)?)),
            None => Ok(Weak::new()),
        }
    }

    fn pipe(&mut self, p: &Rc<RefCell<Pipe>>) -> Rc<RefCell<Pipe>> {
        let held = self.held.clone();
        self.pipes
            .entry(Rc::as_ptr(p))
            .or_insert_with(|| Rc::new(RefCell::new(p.borrow().copy_with(held))))
            .clone()
    }

    fn kind(&mut self, k: &Kind) -> Result<Kind, Refusal> {
        Ok(match k {
            Kind::Host { fd, path, dir } => Kind::Host {
                fd: self.reopen(fd, path, *dir)?,
                path: path.clone(),
                dir: *dir,
            },
            Kind::Stream { fd, readable } => {
                let i = self
                    .from_stdio
                    .iter()
                    .position(|s| std::ptr::eq(s.as_ptr(), Rc::as_ptr(fd)))
                    .ok_or("a process holds standard streams given from outside (exec)")?;
                Kind::Stream {
                    fd: self.to_stdio[i].clone(),
                    readable: *readable,
                }
            }
            Kind::PipeRead(p, id) => Kind::PipeRead(self.pipe(p), *id),
            Kind::PipeWrite(p, id) => Kind::PipeWrite(self.pipe(p), *id),
            Kind::Socket(s) => Kind::Socket(self.socket(s)?),
            Kind::Null => Kind::Null,
            Kind::Zero => Kind::Zero,
            Kind::Full => Kind::Full,
            Kind::Random => Kind::Random,
            Kind::Synthetic { data, path } => Kind::Synthetic {
                data: data.clone(),
                path: path.clone(),
            },
            Kind::SynthDir { entries, path } => Kind::SynthDir {
                entries: entries.clone(),
                path: path.clone(),
            },
            Kind::Epoll(entries) => {
                let mut out = Vec::new();
                for e in entries.borrow().iter() {
                    out.push(EpollEntry {
                        fd: e.fd,
                        file: self.weak_file(&e.file)?,
                        events: e.events,
                        data: e.data,
                        seen: e.seen,
                    });
                }
                Kind::Epoll(RefCell::new(out))
            }
            Kind::EventFd(v, sem) => Kind::EventFd(Cell::new(v.get()), *sem),
        })
    }

    /// A file of the root opened again, at the same offset (a duplicate
    /// would share the offset with the source): through the source's
    /// descriptor (`/proc/self/fd`, which reaches a file unlinked since),
    /// else by its guest path inside the root.
    fn reopen(&mut self, fd: &OwnedFd, path: &str, dir: bool) -> Result<OwnedFd, Refusal> {
        // SAFETY: fcntl and lseek on a descriptor we own; no memory.
        let (flags, at) = unsafe {
            (
                libc::fcntl(fd.as_raw_fd(), libc::F_GETFL),
                libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR),
            )
        };
        if flags < 0 {
            return Err(format!("the open file {path} cannot be read back"));
        }
        let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECTORY;
        let flags = (flags & keep) | libc::O_CLOEXEC | if dir { libc::O_DIRECTORY } else { 0 };
        let own = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
        // SAFETY: a NUL-terminated path; the descriptor returned is ours.
        let again = unsafe { libc::open(own.as_ptr().cast(), flags) };
        let new = if again >= 0 {
            // SAFETY: a fresh descriptor nobody else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(again) }
        } else {
            self.root
                .open_at(path.as_bytes(), flags, 0)
                .map_err(|e| format!("the open file {path} cannot be opened again: {e}"))?
        };
        if at > 0 {
            // SAFETY: as above.
            let got = unsafe { libc::lseek(new.as_raw_fd(), at, libc::SEEK_SET) };
            if got != at {
                return Err(format!("the open file {path} cannot be put at its offset"));
            }
        }
        self.raw.insert(fd.as_raw_fd(), new.as_raw_fd());
        Ok(new)
    }

    fn conn(&mut self, c: &Conn) -> Result<Conn, Refusal> {
        match c {
            Conn::Local(e) => Ok(Conn::Local(SocketEnd {
                rx: self.pipe(&e.rx),
                tx: self.pipe(&e.tx),
                shut_rd: Cell::new(e.shut_rd.get()),
                shut_wr: Cell::new(e.shut_wr.get()),
            })),
            Conn::Host(_) => Err(HOST_CONNECTION.into()),
        }
    }

    fn socket(&mut self, s: &Socket) -> Result<Socket, Refusal> {
        if s.dial.get() == crate::fs::socket::Dial::Pending {
            return Err(HOST_CONNECTION.into());
        }
        let state = match &*s.state.borrow() {
            SockState::Fresh { bound } => SockState::Fresh {
                bound: bound.clone(),
            },
            SockState::Listening {
                addr,
                queue,
                backlog,
                arrivals,
            } => {
                let mut q = std::collections::VecDeque::new();
                for (c, local, peer) in queue {
                    q.push_back((self.conn(c)?, local.clone(), peer.clone()));
                }
                SockState::Listening {
                    addr: addr.clone(),
                    queue: q,
                    backlog: *backlog,
                    arrivals: *arrivals,
                }
            }
            SockState::Connected { end, local, peer } => SockState::Connected {
                end: self.conn(end)?,
                local: local.clone(),
                peer: peer.clone(),
            },
        };
        let copy = Socket::new(s.family, s.id, state);
        copy.dial.set(s.dial.get());
        Ok(copy)
    }
}
