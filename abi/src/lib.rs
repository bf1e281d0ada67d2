//! The contract between Flint's VMM (`flint-executor`) and the guest it runs
//! (`flint-guest-runtime`), written down once and compiled into both.
//!
//! * [`layout`]: the guest-physical memory map (identity-mapped, so guest
//!   virtual addresses equal guest physical ones) and the I/O ports.
//! * [`BootInfo`], [`ClockPage`], [`SeedPage`]: pages the VMM fills in before
//!   the guest runs (and again on restore).
//! * [`frame`]: the framed message protocol carried by the virtio-console
//!   data channel in both directions.
//!
//! Everything here is `#[repr(C)]` plain data with explicit little-endian
//! encodings; the host treats every byte that comes back from the guest as
//! hostile and decodes it only through the checked functions in [`frame`].
#![no_std]

pub mod frame;
pub mod layout;

/// Bumped whenever anything in this crate changes shape.
pub const ABI_VERSION: u32 = 2;

/// `"FLINTBT\0"` as a little-endian u64: marks a valid [`BootInfo`].
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"FLINTBT\0");

/// Written by the VMM at [`layout::BOOT_INFO_ADDR`] before the first
/// instruction; read once by the guest at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] of the VMM that wrote this page.
    pub abi_version: u32,
    /// Index of the virtio-mmio window the data channel lives in (always 0 now).
    pub channel_index: u32,
    /// Bytes of guest RAM, starting at guest-physical 0.
    pub mem_size: u64,
    /// Where the WebAssembly module's bytes were placed, and their length.
    pub module_addr: u64,
    pub module_len: u64,
    /// The range the guest's allocator may use, `[heap_start, heap_end)`.
    pub heap_start: u64,
    pub heap_end: u64,
    /// Initial stack pointer region top (the VMM also loads RSP from it).
    pub stack_top: u64,
    /// Base of the data channel's virtio-mmio register window.
    pub mmio_base: u64,
    /// [`BOOT_COMPILE_EAGERLY`] or 0.
    pub flags: u64,
}

/// [`BootInfo::flags`]: translate every function of the module before the
/// ready point, not each on its first call. A VM that is snapshotted at its
/// ready point (or kept and reset there) then starts every invocation with
/// the module's code translated; a VM booted for one run translates only
/// what that run calls.
pub const BOOT_COMPILE_EAGERLY: u64 = 1;

/// The guest's clock source. The VMM writes it at boot and on every restore,
/// so a restored guest reads the time of its restore, not its snapshot.
///
/// `now_ns = wall_ns + (rdtsc() - tsc_base) * 1_000_000 / tsc_khz`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockPage {
    /// Incremented on every write by the VMM; the guest re-derives its
    /// monotonic origin when it changes.
    pub generation: u64,
    /// Nanoseconds since the Unix epoch when the guest's TSC read `tsc_base`.
    pub wall_ns: u64,
    /// The guest's TSC value at `wall_ns`.
    pub tsc_base: u64,
    /// Guest TSC frequency in kHz (never 0 on a valid page).
    pub tsc_khz: u64,
}

/// A fresh random seed, written by the VMM at boot and on every restore so
/// that no two instances share random numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedPage {
    /// Incremented on every write; the guest reseeds when it changes.
    pub generation: u64,
    pub seed: [u8; 32],
}

/// Why the guest gave up on a module; sent in a [`frame::Kind::Failure`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The bytes are not a valid WebAssembly module.
    InvalidModule = 1,
    /// The module imports something the runtime does not provide.
    MissingImport = 2,
    /// The module trapped.
    Trap = 3,
    /// The module needed more memory than the VM has.
    OutOfMemory = 4,
    /// The module has no `_start` export (not a WASI command).
    NotACommand = 5,
    /// Anything else that went wrong inside the guest runtime.
    Internal = 6,
}

impl FailureKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::InvalidModule,
            2 => Self::MissingImport,
            3 => Self::Trap,
            4 => Self::OutOfMemory,
            5 => Self::NotACommand,
            6 => Self::Internal,
            _ => return None,
        })
    }
}

/// Progress points the guest reports, so the host can time each phase.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    /// The guest reached its entry point and set up its heap and channel.
    Entered = 1,
    /// The module was parsed, validated and compiled.
    Compiled = 2,
    /// The module was instantiated (and `_initialize` run, if any); the guest
    /// now waits for a `Start` frame. This is the snapshot point.
    Ready = 3,
}

impl Milestone {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Entered,
            2 => Self::Compiled,
            3 => Self::Ready,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn boot_info_layout_is_stable() {
        assert_eq!(size_of::<BootInfo>(), 80);
        assert_eq!(align_of::<BootInfo>(), 8);
        assert_eq!(offset_of!(BootInfo, abi_version), 8);
        assert_eq!(offset_of!(BootInfo, mem_size), 16);
        assert_eq!(offset_of!(BootInfo, module_addr), 24);
        assert_eq!(offset_of!(BootInfo, heap_start), 40);
        assert_eq!(offset_of!(BootInfo, stack_top), 56);
        assert_eq!(offset_of!(BootInfo, mmio_base), 64);
        assert_eq!(offset_of!(BootInfo, flags), 72);
    }

    #[test]
    fn shared_pages_layout_is_stable() {
        assert_eq!(size_of::<ClockPage>(), 32);
        assert_eq!(offset_of!(ClockPage, tsc_khz), 24);
        assert_eq!(size_of::<SeedPage>(), 40);
        assert_eq!(offset_of!(SeedPage, seed), 8);
    }

    #[test]
    fn enums_round_trip() {
        for v in 0..10 {
            if let Some(k) = FailureKind::from_u32(v) {
                assert_eq!(k as u32, v);
            }
            if let Some(m) = Milestone::from_u32(v) {
                assert_eq!(m as u32, v);
            }
        }
        assert!(FailureKind::from_u32(0).is_none());
        assert!(Milestone::from_u32(99).is_none());
    }
}
