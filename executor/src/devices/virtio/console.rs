//! The virtio-console device (one port, no multiport) that carries the data
//! channel: queue 0 receives (host to guest), queue 1 transmits.
//!
//! The guest driver has no interrupts: the VMM processes a queue during the
//! notify exit itself, so completions are in the used ring by the time the
//! guest resumes.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::mmio::{MmioTransport, TransportState};
use super::DeviceError;
use crate::persist::{InvalidState, Persist};

pub const DEVICE_ID_CONSOLE: u32 = 3;
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const QUEUE_MAX_SIZE: u16 = 32;
/// Most bytes accepted in one transmit chain (a frame header plus the
/// largest payload, with room to spare).
pub const MAX_TX_CHAIN: usize = flint_abi::frame::MAX_PAYLOAD as usize + 4096;

/// The saved console. Bytes in flight are not kept: restoring empties the
/// channel, so nothing crosses from the saved run into the next.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleState {
    pub transport: TransportState,
}

#[derive(Debug)]
pub struct Console {
    transport: MmioTransport,
    /// Bytes waiting for the guest to post receive buffers.
    to_guest: VecDeque<u8>,
}

/// The console's state is its transport's; the bytes in flight are not
/// kept (see [`ConsoleState`]).
impl Persist for Console {
    type State = ConsoleState;
    type Args<'a> = &'a GuestMemoryMmap;
    type Error = InvalidState;

    fn save(&mut self) -> Result<ConsoleState, InvalidState> {
        Ok(ConsoleState {
            transport: self.transport.save()?,
        })
    }

    fn restore(mem: &GuestMemoryMmap, state: &ConsoleState) -> Result<Self, InvalidState> {
        let fresh = Self::new();
        Ok(Self {
            transport: MmioTransport::restore((fresh.transport, mem), &state.transport)?,
            to_guest: VecDeque::new(),
        })
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks that the guest has not published more buffers than the ring holds.
fn check_avail(q: &Queue, index: u16, mem: &GuestMemoryMmap) -> Result<(), DeviceError> {
    let avail = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| DeviceError::Queue(index, e))?;
    if (avail - Wrapping(q.next_avail())).0 > q.size() {
        return Err(DeviceError::Queue(
            index,
            virtio_queue::Error::InvalidAvailRingIndex,
        ));
    }
    Ok(())
}

impl Console {
    pub fn new() -> Self {
        Self {
            transport: MmioTransport::new(DEVICE_ID_CONSOLE, 0, &[QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]),
            to_guest: VecDeque::new(),
        }
    }

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.transport.read(offset, data)
    }

    /// Handles a register write; returns the queue notified, if any.
    pub fn mmio_write(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<u16>, DeviceError> {
        self.transport.write(mem, offset, data)
    }

    /// Takes every buffer the guest queued for transmission and returns
    /// their bytes in order.
    pub fn take_tx(&mut self, mem: &GuestMemoryMmap) -> Result<Vec<u8>, DeviceError> {
        let q = &mut self.transport.queues[TX_QUEUE as usize];
        check_avail(q, TX_QUEUE, mem)?;
        let mut out = Vec::new();
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut reader = chain
                .reader(mem)
                .map_err(|e| DeviceError::Chain(TX_QUEUE, e))?;
            let n = reader.available_bytes();
            if n > MAX_TX_CHAIN {
                return Err(DeviceError::TxTooLarge(n, MAX_TX_CHAIN));
            }
            let start = out.len();
            out.resize(start + n, 0);
            reader
                .read_exact(&mut out[start..])
                .map_err(DeviceError::Memory)?;
            q.add_used(mem, head, 0)
                .map_err(|e| DeviceError::Queue(TX_QUEUE, e))?;
        }
        Ok(out)
    }

    /// Queues bytes for the guest; they move when [`Self::fill_rx`] runs.
    pub fn send(&mut self, bytes: &[u8]) {
        self.to_guest.extend(bytes);
    }

    /// Bytes still waiting for receive buffers.
    pub fn pending(&self) -> usize {
        self.to_guest.len()
    }

    /// Drops anything queued for the guest.
    pub fn clear(&mut self) {
        self.to_guest.clear();
    }

    /// Copies waiting bytes into the receive buffers the guest has posted.
    pub fn fill_rx(&mut self, mem: &GuestMemoryMmap) -> Result<(), DeviceError> {
        let q = &mut self.transport.queues[RX_QUEUE as usize];
        if self.to_guest.is_empty() || !q.ready() {
            return Ok(());
        }
        check_avail(q, RX_QUEUE, mem)?;
        while !self.to_guest.is_empty() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let mut writer = chain
                .writer(mem)
                .map_err(|e| DeviceError::Chain(RX_QUEUE, e))?;
            let room = writer.available_bytes();
            if room == 0 {
                return Err(DeviceError::RxNotWritable);
            }
            let n = room.min(self.to_guest.len());
            let (a, b) = self.to_guest.as_slices();
            let first = n.min(a.len());
            writer.write_all(&a[..first]).map_err(DeviceError::Memory)?;
            writer
                .write_all(&b[..n - first])
                .map_err(DeviceError::Memory)?;
            self.to_guest.drain(..n);
            q.add_used(mem, head, n as u32)
                .map_err(|e| DeviceError::Queue(RX_QUEUE, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_WRITE: u16 = 2;

    /// A console whose queue `index` is the mock queue's, ready to use.
    fn console_with(
        mem: &GuestMemoryMmap,
        mock: &MockSplitQueue<'_, GuestMemoryMmap>,
        index: u16,
    ) -> Console {
        let mut c = Console::new();
        let q: Queue = mock.create_queue().unwrap();
        c.transport.queues[index as usize] = q;
        let _ = mem;
        c
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// The transport's queues come back as saved, checked against guest
    /// memory; bytes that were waiting for the guest do not.
    #[test]
    fn state_round_trips_and_nothing_in_flight_crosses() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, QUEUE_MAX_SIZE);
        let mut c = console_with(&m, &mock, RX_QUEUE);
        c.to_guest.extend(b"from the last run");
        let saved = c.save().unwrap();
        assert!(saved.transport.queues[RX_QUEUE as usize].ready);
        let mut back = Console::restore(&m, &saved).unwrap();
        assert_eq!(back.save().unwrap(), saved);
        assert!(back.to_guest.is_empty());
        // Rings outside guest memory are refused.
        let mut bad = saved;
        bad.transport.queues[RX_QUEUE as usize].desc_table = 0xfff_0000;
        let e = Console::restore(&m, &bad).expect_err("refused");
        assert!(e.0.contains("outside guest memory"), "{e}");
    }

    fn add_chain(mock: &MockSplitQueue<'_, GuestMemoryMmap>, descs: &[SplitDescriptor]) {
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        mock.build_desc_chain(&raw).unwrap();
    }

    #[test]
    fn tx_gathers_bytes_across_descriptors() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        m.write_slice(b"hello ", GuestAddress(0x8000)).unwrap();
        m.write_slice(b"world", GuestAddress(0x9000)).unwrap();
        add_chain(
            &mock,
            &[
                SplitDescriptor::new(0x8000, 6, 0, 0),
                SplitDescriptor::new(0x9000, 5, 0, 0),
            ],
        );
        let mut c = console_with(&m, &mock, TX_QUEUE);
        assert_eq!(c.take_tx(&m).unwrap(), b"hello world");
        assert_eq!(c.take_tx(&m).unwrap(), b"", "a chain is consumed once");
    }

    #[test]
    fn tx_descriptor_outside_memory_is_an_error() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        add_chain(&mock, &[SplitDescriptor::new(0xff_0000, 100, 0, 0)]);
        let mut c = console_with(&m, &mock, TX_QUEUE);
        assert!(matches!(
            c.take_tx(&m),
            Err(DeviceError::Chain(TX_QUEUE, _))
        ));
    }

    #[test]
    fn tx_descriptor_wrapping_the_address_space_is_an_error() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        add_chain(&mock, &[SplitDescriptor::new(u64::MAX - 10, 100, 0, 0)]);
        let mut c = console_with(&m, &mock, TX_QUEUE);
        let e = c.take_tx(&m).unwrap_err().to_string();
        assert!(e.contains("outside guest memory"), "{e}");
    }

    #[test]
    fn tx_oversized_chain_is_refused() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mock = MockSplitQueue::new(&m, 16);
        add_chain(
            &mock,
            &[SplitDescriptor::new(
                0x10_0000,
                (MAX_TX_CHAIN + 1) as u32,
                0,
                0,
            )],
        );
        let mut c = console_with(&m, &mock, TX_QUEUE);
        assert!(matches!(c.take_tx(&m), Err(DeviceError::TxTooLarge(_, _))));
    }

    #[test]
    fn avail_index_running_ahead_of_the_ring_is_an_error() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        add_chain(&mock, &[SplitDescriptor::new(0x8000, 4, 0, 0)]);
        mock.avail().idx().store(u16::to_le(500));
        let mut c = console_with(&m, &mock, TX_QUEUE);
        assert!(matches!(
            c.take_tx(&m),
            Err(DeviceError::Queue(TX_QUEUE, _))
        ));
    }

    #[test]
    fn rx_splits_bytes_over_posted_buffers_and_keeps_the_rest() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        // Two one-descriptor chains.
        let descs = [
            SplitDescriptor::new(0x8000, 4, F_WRITE, 0),
            SplitDescriptor::new(0x9000, 4, F_WRITE, 0),
        ];
        mock.add_desc_chains(&descs.map(RawDescriptor::from), 0)
            .unwrap();
        let mut c = console_with(&m, &mock, RX_QUEUE);
        c.send(b"0123456789");
        c.fill_rx(&m).unwrap();
        let mut a = [0u8; 4];
        m.read_slice(&mut a, GuestAddress(0x8000)).unwrap();
        assert_eq!(&a, b"0123");
        m.read_slice(&mut a, GuestAddress(0x9000)).unwrap();
        assert_eq!(&a, b"4567");
        assert_eq!(c.pending(), 2);
    }

    #[test]
    fn rx_read_only_buffer_is_an_error() {
        let m = mem();
        let mock = MockSplitQueue::new(&m, 16);
        add_chain(&mock, &[SplitDescriptor::new(0x8000, 4, 0, 0)]);
        let mut c = console_with(&m, &mock, RX_QUEUE);
        c.send(b"x");
        assert!(matches!(c.fill_rx(&m), Err(DeviceError::RxNotWritable)));
    }
}
