//! Memory of Linux programs: guest-physical frames, and one address space
//! (page tables plus the list of mappings) per process.

pub mod frames;
pub mod space;

pub use frames::{Frames, PAGE};
pub use space::{AddressSpace, Backing, Fault, Vma};

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;

/// Highest user address + 1 (47-bit canonical lower half).
pub const USER_END: u64 = 0x7fff_ffff_f000;
/// Lowest address `mmap` hands out (Linux's `mmap_min_addr`).
pub const MMAP_MIN: u64 = 0x10000;

pub fn page_down(a: u64) -> u64 {
    a & !(PAGE - 1)
}

pub fn page_up(a: u64) -> Option<u64> {
    a.checked_add(PAGE - 1).map(|x| x & !(PAGE - 1))
}
