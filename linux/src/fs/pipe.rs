//! Pipes and socket pairs between a container's processes, kept by the
//! VMM.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// Bytes a pipe holds before writers wait (Linux's default).
pub const PIPE_CAPACITY: usize = 64 * 1024;
/// Writes up to this size are atomic (`PIPE_BUF`).
pub const PIPE_BUF: usize = 4096;

#[derive(Debug, Default)]
pub struct Pipe {
    pub buf: VecDeque<u8>,
    pub readers: usize,
    pub writers: usize,
}

impl Pipe {
    pub fn new() -> Self {
        Self {
            buf: VecDeque::new(),
            readers: 1,
            writers: 1,
        }
    }

    pub fn space(&self) -> usize {
        PIPE_CAPACITY - self.buf.len()
    }
}

/// One end of a connected `AF_UNIX` stream socket pair (`socketpair`):
/// it reads what the other end writes (`rx`, the other end's `tx`) and
/// writes what the other end reads, each way a pipe. `shutdown` closes
/// one way early; closing the socket closes what is still open.
#[derive(Debug)]
pub struct SocketEnd {
    pub rx: Rc<RefCell<Pipe>>,
    pub tx: Rc<RefCell<Pipe>>,
    pub id: usize,
    /// Shut for reading (its reader count is given back).
    pub shut_rd: Cell<bool>,
    /// Shut for writing (its writer count is given back).
    pub shut_wr: Cell<bool>,
}

impl SocketEnd {
    /// The two connected ends.
    pub fn pair(id: usize) -> (Self, Self) {
        let (a, b) = (
            Rc::new(RefCell::new(Pipe::new())),
            Rc::new(RefCell::new(Pipe::new())),
        );
        let end = |rx: &Rc<RefCell<Pipe>>, tx: &Rc<RefCell<Pipe>>| Self {
            rx: rx.clone(),
            tx: tx.clone(),
            id,
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
