//! A minimal virtio-mmio (version 2) driver for the one virtio-console port
//! that carries the data channel.
//!
//! The guest runs without interrupts. Every queue notification is an MMIO
//! store that exits to the VMM, which handles the queue before resuming the
//! guest, so after a notify the guest finds its buffers in the used ring
//! without waiting; it polls the used ring only to be robust.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{fence, Ordering};
use flint_abi::layout::QUEUE_AREA;

// virtio-mmio register offsets (virtio 1.2, 4.2.2).
const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_AVAIL_LOW: u64 = 0x090;
const QUEUE_AVAIL_HIGH: u64 = 0x094;
const QUEUE_USED_LOW: u64 = 0x0a0;
const QUEUE_USED_HIGH: u64 = 0x0a4;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const DEVICE_ID_CONSOLE: u32 = 3;
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
/// VIRTIO_F_VERSION_1 is feature bit 32: bit 0 of the second feature word.
const F_VERSION_1_HIGH: u32 = 1;

const DESC_F_WRITE: u16 = 2;

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 16;
/// Bytes in each receive buffer.
pub const RX_BUF_SIZE: u32 = 4096;
/// Bytes in the transmit bounce buffer.
pub const TX_BUF_SIZE: u32 = 128 * 1024;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

// Where the rings and buffers live inside the shared queue area.
const RX_RING: u64 = QUEUE_AREA;
const TX_RING: u64 = QUEUE_AREA + 0x2000;
const RX_BUFS: u64 = QUEUE_AREA + 0x1_0000;
const TX_BUF: u64 = QUEUE_AREA + 0x3_0000;
const _: () = assert!(TX_BUF + TX_BUF_SIZE as u64 <= flint_abi::layout::QUEUE_AREA_END);
const _: () = assert!(RX_BUFS + QUEUE_SIZE as u64 * RX_BUF_SIZE as u64 <= TX_BUF);

#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// One split virtqueue at a fixed place: descriptor table at `base`, avail
/// ring at `base + 0x400`, used ring at `base + 0x1000`.
#[derive(Debug)]
struct SplitQueue {
    base: u64,
    avail_idx: u16,
    last_used: u16,
}

impl SplitQueue {
    const fn new(base: u64) -> Self {
        Self {
            base,
            avail_idx: 0,
            last_used: 0,
        }
    }
    fn desc_addr(&self) -> u64 {
        self.base
    }
    fn avail_addr(&self) -> u64 {
        self.base + 0x400
    }
    fn used_addr(&self) -> u64 {
        self.base + 0x1000
    }

    fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16) {
        let d = (self.desc_addr() + 16 * i as u64) as *mut Desc;
        // SAFETY: the queue area is identity-mapped guest RAM reserved for
        // these rings (flint_abi::layout); `i < QUEUE_SIZE`.
        unsafe {
            write_volatile(
                d,
                Desc {
                    addr,
                    len,
                    flags,
                    next: 0,
                },
            )
        };
    }

    /// Makes descriptor `i` available to the device.
    fn push_avail(&mut self, i: u16) {
        let ring = (self.avail_addr() + 4) as *mut u16;
        let slot = (self.avail_idx % QUEUE_SIZE) as usize;
        // SAFETY: avail ring inside the reserved queue area; slot < QUEUE_SIZE.
        unsafe { write_volatile(ring.add(slot), i) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        // SAFETY: the avail ring's idx field.
        unsafe { write_volatile((self.avail_addr() + 2) as *mut u16, self.avail_idx) };
        fence(Ordering::SeqCst);
    }

    /// Takes the next used element, if the device has returned one.
    fn pop_used(&mut self) -> Option<(u32, u32)> {
        fence(Ordering::SeqCst);
        // SAFETY: the used ring's idx field, inside the reserved queue area.
        let used_idx = unsafe { read_volatile((self.used_addr() + 2) as *const u16) };
        if used_idx == self.last_used {
            return None;
        }
        fence(Ordering::SeqCst);
        let slot = (self.last_used % QUEUE_SIZE) as u64;
        let elem = self.used_addr() + 4 + 8 * slot;
        // SAFETY: used ring element `slot < QUEUE_SIZE`.
        let (id, len) = unsafe {
            (
                read_volatile(elem as *const u32),
                read_volatile((elem + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }
}

/// The virtio-console port: one receive queue, one transmit queue.
#[derive(Debug)]
pub struct Console {
    mmio: u64,
    rx: SplitQueue,
    tx: SplitQueue,
}

/// Why the device could not be brought up (printed with `{:?}` in the
/// guest's panic message, which is how the fields are read).
#[derive(Debug)]
#[allow(dead_code)]
pub enum InitError {
    NotVirtio(u32),
    NotConsole(u32),
    NoVersion1,
    QueueTooSmall(u16),
    FeaturesRefused,
}

impl Console {
    fn read(&self, off: u64) -> u32 {
        // SAFETY: an MMIO register of the device window the VMM named in
        // BootInfo; the access exits to the VMM and touches no RAM.
        unsafe { read_volatile((self.mmio + off) as *const u32) }
    }
    fn write(&self, off: u64, v: u32) {
        // SAFETY: as in `read`.
        unsafe { write_volatile((self.mmio + off) as *mut u32, v) }
    }

    /// Negotiates with the device and sets up both queues.
    pub fn init(mmio: u64) -> Result<Self, InitError> {
        let mut c = Self {
            mmio,
            rx: SplitQueue::new(RX_RING),
            tx: SplitQueue::new(TX_RING),
        };
        let magic = c.read(MAGIC);
        if magic != MMIO_MAGIC || c.read(VERSION) != 2 {
            return Err(InitError::NotVirtio(magic));
        }
        let id = c.read(DEVICE_ID);
        if id != DEVICE_ID_CONSOLE {
            return Err(InitError::NotConsole(id));
        }
        c.write(STATUS, 0);
        c.write(STATUS, STATUS_ACKNOWLEDGE);
        c.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        c.write(DEVICE_FEATURES_SEL, 1);
        if c.read(DEVICE_FEATURES) & F_VERSION_1_HIGH == 0 {
            return Err(InitError::NoVersion1);
        }
        c.write(DRIVER_FEATURES_SEL, 0);
        c.write(DRIVER_FEATURES, 0);
        c.write(DRIVER_FEATURES_SEL, 1);
        c.write(DRIVER_FEATURES, F_VERSION_1_HIGH);
        c.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        if c.read(STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(InitError::FeaturesRefused);
        }
        for (index, q) in [(RX_QUEUE, &c.rx), (TX_QUEUE, &c.tx)] {
            c.write(QUEUE_SEL, index as u32);
            let max = c.read(QUEUE_NUM_MAX) as u16;
            if max < QUEUE_SIZE {
                return Err(InitError::QueueTooSmall(max));
            }
            c.write(QUEUE_NUM, QUEUE_SIZE as u32);
            let (d, a, u) = (q.desc_addr(), q.avail_addr(), q.used_addr());
            c.write(QUEUE_DESC_LOW, d as u32);
            c.write(QUEUE_DESC_HIGH, (d >> 32) as u32);
            c.write(QUEUE_AVAIL_LOW, a as u32);
            c.write(QUEUE_AVAIL_HIGH, (a >> 32) as u32);
            c.write(QUEUE_USED_LOW, u as u32);
            c.write(QUEUE_USED_HIGH, (u >> 32) as u32);
            c.write(QUEUE_READY, 1);
        }
        c.write(
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        for i in 0..QUEUE_SIZE {
            c.rx.set_desc(
                i,
                RX_BUFS + i as u64 * RX_BUF_SIZE as u64,
                RX_BUF_SIZE,
                DESC_F_WRITE,
            );
            c.rx.push_avail(i);
        }
        c.write(QUEUE_NOTIFY, RX_QUEUE as u32);
        Ok(c)
    }

    /// Sends `parts` back to back as one buffer; returns when the device has
    /// consumed it. The parts together must fit in [`TX_BUF_SIZE`].
    pub fn send(&mut self, parts: &[&[u8]]) {
        let mut len = 0usize;
        for p in parts {
            assert!(len + p.len() <= TX_BUF_SIZE as usize, "tx frame too large");
            // SAFETY: the bounce buffer is reserved guest RAM of TX_BUF_SIZE
            // bytes and the bound is checked above.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    p.as_ptr(),
                    (TX_BUF + len as u64) as *mut u8,
                    p.len(),
                )
            };
            len += p.len();
        }
        self.tx.set_desc(0, TX_BUF, len as u32, 0);
        self.tx.push_avail(0);
        self.write(QUEUE_NOTIFY, TX_QUEUE as u32);
        while self.tx.pop_used().is_none() {
            crate::arch::pause();
        }
    }

    /// Moves whatever the device has placed in receive buffers into `out`,
    /// and gives the buffers back. Returns whether anything arrived.
    pub fn poll_receive(&mut self, out: &mut alloc::vec::Vec<u8>) -> bool {
        let mut got = false;
        while let Some((id, len)) = self.rx.pop_used() {
            let id = (id as u16) % QUEUE_SIZE;
            let len = len.min(RX_BUF_SIZE) as usize;
            let buf = RX_BUFS + id as u64 * RX_BUF_SIZE as u64;
            // SAFETY: receive buffer `id` is reserved guest RAM of RX_BUF_SIZE
            // bytes, and `len` is clamped to that.
            out.extend_from_slice(unsafe { core::slice::from_raw_parts(buf as *const u8, len) });
            self.rx.push_avail(id);
            got = true;
        }
        // Tell the device there are (again) buffers to fill; it answers by
        // filling them with anything it has queued for us.
        self.write(QUEUE_NOTIFY, RX_QUEUE as u32);
        got
    }
}
