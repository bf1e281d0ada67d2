//! Guest-physical page frames: who owns which 4 KiB page of guest RAM.
//!
//! Frames are reference-counted (a shared mapping keeps one frame in
//! several address spaces); a frame whose count drops to zero is zeroed
//! lazily, when it is handed out again.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::FRAMES_START;

pub const PAGE: u64 = 4096;

#[derive(Debug)]
pub struct Frames {
    memory: GuestMemoryMmap,
    /// Reference count per frame, indexed by frame number.
    refs: Vec<u16>,
    free: Vec<u32>,
    /// Freed frames that KVM may still translate to (see `mm::space`):
    /// handed out again only after the VM's translations were reset.
    quarantine: Vec<u32>,
    /// Frames never handed out: `next..limit`.
    next: u64,
    limit: u64,
}

impl Frames {
    pub fn new(memory: GuestMemoryMmap, mem_size: u64) -> Self {
        Self {
            memory,
            refs: vec![0; (mem_size / PAGE) as usize],
            free: Vec::new(),
            quarantine: Vec::new(),
            next: FRAMES_START / PAGE,
            limit: mem_size / PAGE,
        }
    }

    /// This VM's frame accounting over `memory`, a copy of its memory
    /// (`kernel::freeze`): quarantined frames are free there, as the new
    /// VM has cached no translation.
    pub fn copy_for(&self, memory: GuestMemoryMmap) -> Self {
        let mut free = self.free.clone();
        free.extend_from_slice(&self.quarantine);
        Self {
            memory,
            refs: self.refs.clone(),
            free,
            quarantine: Vec::new(),
            next: self.next,
            limit: self.limit,
        }
    }

    /// The runs of frames in use (`(first, count)`, in frame numbers),
    /// the kernel's pages below `FRAMES_START` included.
    pub fn used_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = vec![(0, FRAMES_START / PAGE)];
        for (n, &r) in self.refs.iter().enumerate().take(self.next as usize) {
            let n = n as u64;
            if r == 0 || n < FRAMES_START / PAGE {
                continue;
            }
            match runs.last_mut() {
                Some((first, len)) if *first + *len == n => *len += 1,
                _ => runs.push((n, 1)),
            }
        }
        runs
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Frames in use now.
    pub fn used(&self) -> u64 {
        self.next - FRAMES_START / PAGE - self.free.len() as u64 - self.quarantine.len() as u64
    }

    /// Frames waiting for a translation reset.
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// The VM's translations were reset: quarantined frames are free.
    pub fn release_quarantine(&mut self) {
        self.free.append(&mut self.quarantine);
    }

    /// Bytes of guest RAM.
    pub fn bytes(&self) -> u64 {
        self.limit * PAGE
    }

    /// Frames there are in all.
    pub fn total(&self) -> u64 {
        self.limit - FRAMES_START / PAGE
    }

    /// A zeroed frame's guest-physical address, or `None` when RAM is full.
    pub fn alloc(&mut self) -> Option<u64> {
        let n = match self.free.pop() {
            Some(n) => {
                let addr = n as u64 * PAGE;
                self.zero(addr);
                n as u64
            }
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.refs[n as usize] = 1;
        Some(n * PAGE)
    }

    /// One more owner of `addr`.
    pub fn share(&mut self, addr: u64) {
        let r = &mut self.refs[(addr / PAGE) as usize];
        *r = r.saturating_add(1);
    }

    /// One owner fewer; the frame is free when none is left.
    pub fn release(&mut self, addr: u64) {
        let n = (addr / PAGE) as usize;
        match self.refs.get_mut(n) {
            Some(r) if *r > 1 => *r -= 1,
            Some(r) if *r == 1 => {
                *r = 0;
                self.quarantine.push(n as u32);
            }
            _ => tracing::error!("releasing frame {addr:#x} that is not in use"),
        }
    }

    fn zero(&self, addr: u64) {
        let zeros = [0u8; PAGE as usize];
        let _ = self.memory.write_slice(&zeros, GuestAddress(addr));
    }

    pub fn read_u64(&self, addr: u64) -> u64 {
        self.memory.read_obj(GuestAddress(addr)).unwrap_or(0)
    }

    pub fn write_u64(&self, addr: u64, v: u64) {
        let _ = self.memory.write_obj(v, GuestAddress(addr));
    }

    /// Copies `buf.len()` bytes out of frame memory at `addr` (within one
    /// frame).
    pub fn read(&self, addr: u64, buf: &mut [u8]) {
        let _ = self.memory.read_slice(buf, GuestAddress(addr));
    }

    pub fn write(&self, addr: u64, buf: &[u8]) {
        let _ = self.memory.write_slice(buf, GuestAddress(addr));
    }

    /// Copies a whole frame.
    pub fn copy(&self, from: u64, to: u64) {
        let mut page = [0u8; PAGE as usize];
        self.read(from, &mut page);
        self.write(to, &page);
    }
}
