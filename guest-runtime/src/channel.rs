//! Frames (flint_abi::frame) over the virtio-console port.

use crate::virtio::Console;
use alloc::vec::Vec;
use flint_abi::frame::{Header, Kind, HEADER_LEN};

#[derive(Debug)]
pub struct Channel {
    console: Console,
    /// Received bytes not yet cut into frames.
    pending: Vec<u8>,
}

impl Channel {
    pub fn new(console: Console) -> Self {
        Self {
            console,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, kind: Kind, payload: &[u8]) {
        let header = Header::new(kind, payload.len() as u32).encode();
        self.console.send(&[&header, payload]);
    }

    pub fn send_u32(&mut self, kind: Kind, v: u32) {
        self.send(kind, &v.to_le_bytes());
    }

    /// Sends a payload made of a `u32` and a string.
    pub fn send_u32_str(&mut self, kind: Kind, v: u32, s: &str) {
        let header = Header::new(kind, 4 + s.len() as u32).encode();
        self.console
            .send(&[&header, &v.to_le_bytes(), s.as_bytes()]);
    }

    /// Waits for the next frame from the host. A malformed frame from the
    /// host is a bug in the VMM, so it panics (the VMM then reports it).
    pub fn recv(&mut self) -> (Kind, Vec<u8>) {
        loop {
            if self.pending.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&self.pending[..HEADER_LEN]);
                let header = match Header::decode(&h) {
                    Ok(h) => h,
                    Err(e) => panic!("malformed frame from the host: {e}"),
                };
                let total = HEADER_LEN + header.len as usize;
                if self.pending.len() >= total {
                    let payload = self.pending[HEADER_LEN..total].to_vec();
                    self.pending.drain(..total);
                    return (header.kind, payload);
                }
            }
            if !self.console.poll_receive(&mut self.pending) {
                crate::arch::pause();
            }
        }
    }
}
