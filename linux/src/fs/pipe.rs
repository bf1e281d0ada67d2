//! Pipes between a container's processes, kept by the VMM (a socket
//! connection is two, `socket::SocketEnd`).

use std::collections::VecDeque;

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
