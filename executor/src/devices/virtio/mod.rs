//! virtio over MMIO: the transport (register file) and the console device
//! that carries the data channel.
//!
//! The guest is hostile: every register write, ring address, descriptor,
//! length and byte it hands over is checked, and any violation ends the VM
//! with [`DeviceError`], never a panic or a hang in the host.

pub mod console;
pub mod mmio;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the guest made a {0}-byte access to virtio register {1:#x}; registers take 4-byte accesses")]
    BadAccess(usize, u64),
    #[error("the guest set up virtqueue {0} with an invalid size or ring addresses")]
    InvalidQueue(u16),
    #[error("the guest notified virtqueue {0}, which is not ready")]
    QueueNotReady(u32),
    #[error("the guest's virtqueue {0} is malformed")]
    Queue(u16, #[source] virtio_queue::Error),
    #[error("a descriptor chain on virtqueue {0} is malformed or points outside guest memory")]
    Chain(u16, #[source] virtio_queue::Error),
    #[error("a transmit buffer of {0} bytes exceeds the {1}-byte limit")]
    TxTooLarge(usize, usize),
    #[error("a receive buffer has no device-writable space")]
    RxNotWritable,
    #[error("guest memory access failed")]
    Memory(#[source] std::io::Error),
}
