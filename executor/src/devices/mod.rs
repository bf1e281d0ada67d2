//! The devices of a Flint VM: a 16550 serial port for the guest's log and a
//! virtio-console over MMIO for the data channel.

pub mod serial;
pub mod virtio;
