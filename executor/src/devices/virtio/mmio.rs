//! The virtio-mmio (version 2) register file of one device.
//!
//! Only the transport lives here: feature negotiation, device status and
//! queue configuration. Queue notifications are handed back to the device.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::DeviceError;
use crate::persist::{InvalidState, Persist};

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VENDOR_ID: u32 = 0x544e_4c46; // "FLNT"
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;

/// Register offsets (virtio 1.2, 4.2.2).
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// The saved form of a virtqueue (virtio-queue's `QueueState`, with serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnap {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub next_avail: u16,
    pub next_used: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// The saved form of the transport.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_features_sel: u32,
    pub driver_features: u64,
    pub driver_features_sel: u32,
    pub status: u32,
    pub queue_sel: u32,
    pub queues: Vec<QueueSnap>,
}

#[derive(Debug)]
pub struct MmioTransport {
    device_id: u32,
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    status: u32,
    queue_sel: u32,
    pub queues: Vec<Queue>,
}

impl MmioTransport {
    pub fn new(device_id: u32, device_features: u64, queue_max_sizes: &[u16]) -> Self {
        let queues = queue_max_sizes
            .iter()
            .map(|&m| Queue::new(m).expect("queue size is a power of two"))
            .collect();
        Self {
            device_id,
            device_features: device_features | F_VERSION_1,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            status: 0,
            queue_sel: 0,
            queues,
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }
}

impl Persist for MmioTransport {
    type State = TransportState;
    type Args<'a> = (MmioTransport, &'a GuestMemoryMmap);
    type Error = InvalidState;

    fn save(&mut self) -> Result<TransportState, InvalidState> {
        Ok(TransportState {
            device_features_sel: self.device_features_sel,
            driver_features: self.driver_features,
            driver_features_sel: self.driver_features_sel,
            status: self.status,
            queue_sel: self.queue_sel,
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let st = q.state();
                    QueueSnap {
                        max_size: st.max_size,
                        size: st.size,
                        ready: st.ready,
                        next_avail: st.next_avail,
                        next_used: st.next_used,
                        desc_table: st.desc_table,
                        avail_ring: st.avail_ring,
                        used_ring: st.used_ring,
                    }
                })
                .collect(),
        })
    }

    /// Applies saved state to `fresh`, a new transport of the same device,
    /// checking it against what this device offers and against guest
    /// memory.
    fn restore(
        (mut fresh, mem): (MmioTransport, &GuestMemoryMmap),
        state: &TransportState,
    ) -> Result<Self, InvalidState> {
        fresh.load(state, mem).map_err(InvalidState)?;
        Ok(fresh)
    }
}

impl MmioTransport {
    fn load(&mut self, state: &TransportState, mem: &GuestMemoryMmap) -> Result<(), String> {
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "{} queues saved, the device has {}",
                state.queues.len(),
                self.queues.len()
            ));
        }
        if state.driver_features & !self.device_features != 0 {
            return Err(format!(
                "driver features {:#x} were never offered",
                state.driver_features
            ));
        }
        for (i, (q, snap)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            if snap.max_size != q.max_size() {
                return Err(format!(
                    "queue {i} has maximum size {}, not {}",
                    snap.max_size,
                    q.max_size()
                ));
            }
            let st = virtio_queue::QueueState {
                max_size: snap.max_size,
                next_avail: snap.next_avail,
                next_used: snap.next_used,
                event_idx_enabled: false,
                size: snap.size,
                ready: snap.ready,
                desc_table: snap.desc_table,
                avail_ring: snap.avail_ring,
                used_ring: snap.used_ring,
            };
            let restored = Queue::try_from(st).map_err(|e| format!("queue {i}: {e}"))?;
            if restored.ready() && !restored.is_valid(mem) {
                return Err(format!("queue {i}'s rings lie outside guest memory"));
            }
            *q = restored;
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features = state.driver_features;
        self.driver_features_sel = state.driver_features_sel;
        self.status = state.status;
        self.queue_sel = state.queue_sel;
        Ok(())
    }

    /// Whether the driver has finished negotiating.
    pub fn features_ok(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        if offset >= reg::CONFIG {
            // The console advertises no config-space features: all zero.
            data.fill(0);
            return Ok(());
        }
        if data.len() != 4 {
            return Err(DeviceError::BadAccess(data.len(), offset));
        }
        let v: u32 = match offset {
            reg::MAGIC => MAGIC_VALUE,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map_or(0, |q| q.max_size() as u32),
            reg::QUEUE_READY => self.selected().map_or(0, |q| q.ready() as u32),
            reg::INTERRUPT_STATUS => 0,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    /// Applies a register write. Returns the index of the queue the guest
    /// notified, if this write was a notification.
    pub fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<u16>, DeviceError> {
        if offset >= reg::CONFIG {
            return Ok(None); // read-only config space
        }
        let v = match <[u8; 4]>::try_from(data) {
            Ok(b) => u32::from_le_bytes(b),
            Err(_) => return Err(DeviceError::BadAccess(data.len(), offset)),
        };
        let set_low = |old: u64| (old & !0xffff_ffff) | v as u64;
        let set_high = |old: u64| (old & 0xffff_ffff) | ((v as u64) << 32);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if !self.features_ok() => match self.driver_features_sel {
                0 => self.driver_features = set_low(self.driver_features),
                1 => self.driver_features = set_high(self.driver_features),
                _ => {}
            },
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => {
                let index = self.queue_sel as u16;
                if let Some(q) = self.selected().filter(|q| !q.ready()) {
                    // virtio-queue ignores sizes that are not a power of two
                    // within the maximum; the guest must know.
                    q.set_size(v as u16);
                    if q.size() as u32 != v {
                        return Err(DeviceError::InvalidQueue(index));
                    }
                }
            }
            reg::QUEUE_READY => {
                let index = self.queue_sel as u16;
                if let Some(q) = self.selected() {
                    if v == 1 && !q.ready() {
                        q.set_ready(true);
                        if !q.is_valid(mem) {
                            q.set_ready(false);
                            self.status |= STATUS_FAILED;
                            return Err(DeviceError::InvalidQueue(index));
                        }
                    } else if v == 0 {
                        q.set_ready(false);
                    }
                }
            }
            reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_AVAIL_LOW
            | reg::QUEUE_AVAIL_HIGH
            | reg::QUEUE_USED_LOW
            | reg::QUEUE_USED_HIGH => {
                if let Some(q) = self.selected().filter(|q| !q.ready()) {
                    match offset {
                        reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
                        reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
                        reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
                        reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
                        reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
                        _ => q.set_used_ring_address(None, Some(v)),
                    }
                }
            }
            reg::QUEUE_NOTIFY => {
                let ready = self.queues.get(v as usize).is_some_and(|q| q.ready());
                if !ready || self.status & STATUS_FEATURES_OK == 0 {
                    return Err(DeviceError::QueueNotReady(v));
                }
                return Ok(Some(v as u16));
            }
            reg::INTERRUPT_ACK => {}
            reg::STATUS => {
                if v == 0 {
                    self.reset();
                } else if v & STATUS_FEATURES_OK != 0 && !self.features_ok() {
                    // Accept the features only if they are a subset of ours.
                    let ok = self.driver_features & !self.device_features == 0
                        && self.driver_features & F_VERSION_1 != 0;
                    self.status = if ok { v } else { v & !STATUS_FEATURES_OK };
                } else {
                    self.status = v | (self.status & STATUS_FEATURES_OK);
                }
            }
            _ => {} // writes to read-only or unknown registers are ignored
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn w(
        t: &mut MmioTransport,
        m: &GuestMemoryMmap,
        off: u64,
        v: u32,
    ) -> Result<Option<u16>, DeviceError> {
        t.write(m, off, &v.to_le_bytes())
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    /// Drives a transport the way the guest driver does.
    fn negotiated(m: &GuestMemoryMmap) -> MmioTransport {
        let mut t = MmioTransport::new(3, 0, &[16, 16]);
        for (off, v) in [
            (reg::STATUS, 1),
            (reg::STATUS, 3),
            (reg::DRIVER_FEATURES_SEL, 1),
            (reg::DRIVER_FEATURES, 1),
        ] {
            w(&mut t, m, off, v).unwrap();
        }
        w(&mut t, m, reg::STATUS, 0xb).unwrap();
        for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            w(&mut t, m, reg::QUEUE_SEL, q).unwrap();
            w(&mut t, m, reg::QUEUE_NUM, 16).unwrap();
            w(&mut t, m, reg::QUEUE_DESC_LOW, base).unwrap();
            w(&mut t, m, reg::QUEUE_AVAIL_LOW, base + 0x400).unwrap();
            w(&mut t, m, reg::QUEUE_USED_LOW, base + 0x1000).unwrap();
            w(&mut t, m, reg::QUEUE_READY, 1).unwrap();
        }
        w(&mut t, m, reg::STATUS, 0xf).unwrap();
        t
    }

    #[test]
    fn state_round_trips() {
        let m = mem();
        let mut t = negotiated(&m);
        let saved = t.save().unwrap();
        let mut back =
            MmioTransport::restore((MmioTransport::new(3, 0, &[16, 16]), &m), &saved).unwrap();
        assert_eq!(back.save().unwrap(), saved);
        assert!(back.features_ok());
        assert_eq!(w(&mut back, &m, reg::QUEUE_NOTIFY, 1).unwrap(), Some(1));
    }

    #[test]
    fn restore_refuses_bad_state() {
        let m = mem();
        let good = negotiated(&m).save().unwrap();
        let fresh = || MmioTransport::new(3, 0, &[16, 16]);
        let mut s = good.clone();
        s.queues.pop();
        assert!(MmioTransport::restore((fresh(), &m), &s)
            .unwrap_err()
            .0
            .contains("queues saved"));
        let mut s = good.clone();
        s.driver_features |= 1 << 7;
        assert!(MmioTransport::restore((fresh(), &m), &s)
            .unwrap_err()
            .0
            .contains("never offered"));
        let mut s = good.clone();
        s.queues[0].size = 3;
        let e = MmioTransport::restore((fresh(), &m), &s).unwrap_err().0;
        assert!(e.contains("queue 0: invalid queue size"), "{e}");
        let mut s = good.clone();
        s.queues[1].desc_table = 0xfff_0000;
        assert!(MmioTransport::restore((fresh(), &m), &s)
            .unwrap_err()
            .0
            .contains("outside guest memory"));
        let mut s = good;
        s.queues[0].max_size = 1024;
        assert!(MmioTransport::restore((fresh(), &m), &s)
            .unwrap_err()
            .0
            .contains("maximum size"));
    }

    #[test]
    fn identifies_as_virtio_mmio_v2() {
        let mut t = MmioTransport::new(3, 0, &[16, 16]);
        assert_eq!(r(&mut t, reg::MAGIC), MAGIC_VALUE);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 3);
        w(&mut t, &mem(), reg::DEVICE_FEATURES_SEL, 1).unwrap();
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1, "VERSION_1 offered");
    }

    #[test]
    fn refuses_features_it_does_not_offer() {
        let m = mem();
        let mut t = MmioTransport::new(3, 0, &[16]);
        w(&mut t, &m, reg::DRIVER_FEATURES_SEL, 0).unwrap();
        w(&mut t, &m, reg::DRIVER_FEATURES, 1 << 5).unwrap();
        w(&mut t, &m, reg::STATUS, 1 | 2 | STATUS_FEATURES_OK).unwrap();
        assert_eq!(r(&mut t, reg::STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn bad_access_sizes_and_unready_notifies_are_errors() {
        let m = mem();
        let mut t = MmioTransport::new(3, 0, &[16]);
        let mut b = [0u8; 2];
        assert!(matches!(
            t.read(reg::MAGIC, &mut b),
            Err(DeviceError::BadAccess(2, 0))
        ));
        assert!(matches!(
            t.write(&m, reg::STATUS, &[1]),
            Err(DeviceError::BadAccess(1, _))
        ));
        assert!(matches!(
            w(&mut t, &m, reg::QUEUE_NOTIFY, 0),
            Err(DeviceError::QueueNotReady(0))
        ));
        assert!(matches!(
            w(&mut t, &m, reg::QUEUE_NOTIFY, 7),
            Err(DeviceError::QueueNotReady(7))
        ));
    }

    #[test]
    fn rings_outside_memory_are_refused() {
        let m = mem();
        let mut t = MmioTransport::new(3, 0, &[16]);
        w(&mut t, &m, reg::QUEUE_SEL, 0).unwrap();
        w(&mut t, &m, reg::QUEUE_NUM, 16).unwrap();
        w(&mut t, &m, reg::QUEUE_DESC_LOW, 0xfff_0000).unwrap();
        assert!(matches!(
            w(&mut t, &m, reg::QUEUE_READY, 1),
            Err(DeviceError::InvalidQueue(0))
        ));
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn queue_size_must_be_a_power_of_two_within_max() {
        let m = mem();
        let mut t = MmioTransport::new(3, 0, &[16]);
        assert!(matches!(
            w(&mut t, &m, reg::QUEUE_NUM, 3),
            Err(DeviceError::InvalidQueue(0))
        ));
        assert!(matches!(
            w(&mut t, &m, reg::QUEUE_NUM, 64),
            Err(DeviceError::InvalidQueue(0))
        ));
        assert!(w(&mut t, &m, reg::QUEUE_NUM, 8).unwrap().is_none());
    }
}
