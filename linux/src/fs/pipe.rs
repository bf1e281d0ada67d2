//! Pipes between a container's processes, kept by the VMM (a socket
//! connection is two, `socket::SocketEnd`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

/// Bytes a pipe holds before writers wait (Linux's default).
pub const PIPE_CAPACITY: usize = 64 * 1024;
/// Writes up to this size are atomic (`PIPE_BUF`).
pub const PIPE_BUF: usize = 4096;
/// Bytes all of one VM's pipes and sockets may hold at once, in the
/// VMM's own memory: Linux's per-user soft limit (`pipe-user-pages-soft`,
/// 16384 pages). Past it writers wait, as on a full pipe, so a guest
/// cannot grow the host process by opening pipes in many processes.
pub const VM_PIPE_BYTES: usize = 64 << 20;

#[derive(Debug)]
pub struct Pipe {
    pub buf: VecDeque<u8>,
    pub readers: usize,
    pub writers: usize,
    /// Bumped by every write and read: edge-triggered epoll's edges.
    pub changes: u64,
    /// What every pipe of the VM holds, this one's bytes included.
    held: Rc<Cell<usize>>,
}

impl Pipe {
    /// A pipe counted in `held`, the VM's total.
    pub fn new(held: Rc<Cell<usize>>) -> Self {
        Self {
            buf: VecDeque::new(),
            readers: 1,
            writers: 1,
            changes: 0,
            held,
        }
    }

    /// Room for a write: this pipe's, within what the VM has left.
    pub fn space(&self) -> usize {
        let vm = VM_PIPE_BYTES.saturating_sub(self.held.get());
        (PIPE_CAPACITY - self.buf.len()).min(vm)
    }

    /// Appends what [`space`](Self::space) allowed.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend(data);
        self.held.set(self.held.get() + data.len());
        self.changes += 1;
    }

    /// Takes up to `n` bytes from the front.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.buf.len());
        self.held.set(self.held.get() - n);
        self.changes += 1;
        self.buf.drain(..n).collect()
    }
}

impl Pipe {
    /// A copy holding the same bytes and ends, counted in `held` (another
    /// VM's total; `kernel::copy`).
    pub fn copy_with(&self, held: Rc<Cell<usize>>) -> Self {
        held.set(held.get() + self.buf.len());
        Self {
            buf: self.buf.clone(),
            readers: self.readers,
            writers: self.writers,
            changes: self.changes,
            held,
        }
    }

    /// What changes when this pipe's readiness may have: its data and its
    /// two ends.
    pub fn token(&self) -> (u64, usize, usize) {
        (self.changes, self.readers, self.writers)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.held.set(self.held.get() - self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pipes share the VM's total: writes past it find no room, reads
    /// and closed pipes give their bytes back.
    #[test]
    fn the_vms_pipes_share_one_bound() {
        let held = Rc::new(Cell::new(0));
        let mut pipes: Vec<Pipe> = Vec::new();
        let chunk = vec![7u8; PIPE_CAPACITY];
        while held.get() < VM_PIPE_BYTES {
            let mut p = Pipe::new(held.clone());
            let n = p.space();
            p.push(&chunk[..n]);
            pipes.push(p);
        }
        assert_eq!(held.get(), VM_PIPE_BYTES);
        let mut fresh = Pipe::new(held.clone());
        assert_eq!(fresh.space(), 0);
        assert_eq!(pipes[0].take(100).len(), 100);
        assert_eq!(fresh.space(), 100);
        fresh.push(&chunk[..100]);
        pipes.truncate(1);
        assert_eq!(held.get(), pipes[0].buf.len() + 100);
        drop((pipes, fresh));
        assert_eq!(held.get(), 0);
    }
}
