//! Guest-physical memory map and I/O ports.
//!
//! ```text
//! 0x0000_0000  VMM-private: page tables (never mapped for the guest, so a
//!              null pointer dereference faults)
//! 0x0020_0000  shared pages: BootInfo, ClockPage, SeedPage, then the
//!              virtqueues and their buffers
//! 0x0040_0000  the guest runtime's ELF image (at most GUEST_IMAGE_MAX)
//! image end    the WebAssembly module's bytes (page-aligned), then the heap
//! mem - 4 MiB  guard (unmapped)
//! mem - 2 MiB  stack, growing down from mem - 16
//! 0xD000_0000  virtio-mmio windows (not RAM: every access exits to the VMM)
//! ```
//! Guest RAM is identity-mapped with 2 MiB pages at CPL 3.

/// Size of the pages the VMM maps the guest with.
pub const HUGE_PAGE: u64 = 2 << 20;
/// Size of a small page.
pub const PAGE_SIZE: u64 = 4096;

/// The page-map level-4 table; the PDPT follows, then one page directory per GiB.
pub const PML4_ADDR: u64 = 0x1000;
pub const PDPT_ADDR: u64 = 0x2000;
pub const PD_ADDR: u64 = 0x3000;
/// Page directories cover 4 GiB of guest-physical space (RAM and MMIO).
pub const PD_COUNT: u64 = 4;

/// First byte the guest may address.
pub const SHARED_BASE: u64 = 0x20_0000;
pub const BOOT_INFO_ADDR: u64 = 0x20_0000;
pub const CLOCK_PAGE_ADDR: u64 = 0x20_1000;
pub const SEED_PAGE_ADDR: u64 = 0x20_2000;
/// Virtqueue rings and bounce buffers live in `[QUEUE_AREA, QUEUE_AREA_END)`.
pub const QUEUE_AREA: u64 = 0x21_0000;
pub const QUEUE_AREA_END: u64 = 0x40_0000;

/// Where the guest runtime is linked and loaded.
pub const GUEST_LOAD_ADDR: u64 = 0x40_0000;
/// Largest guest runtime image the VMM accepts.
pub const GUEST_IMAGE_MAX: u64 = 0xC0_0000;

/// Stack at the top of RAM, with an unmapped guard region below it.
pub const STACK_SIZE: u64 = HUGE_PAGE;
pub const STACK_GUARD: u64 = HUGE_PAGE;

/// Base of the virtio-mmio device windows and the size of one window.
pub const MMIO_BASE: u64 = 0xD000_0000;
pub const MMIO_WINDOW: u64 = 0x1000;

/// Guest RAM bounds, in MiB. The upper bound keeps RAM below [`MMIO_BASE`].
pub const MIN_MEMORY_MIB: u64 = 32;
pub const MAX_MEMORY_MIB: u64 = 3072;

/// 16550 UART (COM1) for the guest's log and panic messages.
pub const SERIAL_PORT: u16 = 0x3f8;
/// A write of any byte here means the guest runtime panicked or aborted; the
/// reason is on the serial port.
pub const PANIC_PORT: u16 = 0x501;

/// Rounds `v` up to a multiple of `align` (a power of two), or `None` on overflow.
pub const fn align_up(v: u64, align: u64) -> Option<u64> {
    match v.checked_add(align - 1) {
        Some(x) => Some(x & !(align - 1)),
        None => None,
    }
}

/// Where things go in a VM with `mem_size` bytes of RAM, a guest image
/// ending at `image_end` and a module of `module_len` bytes, or `None` if
/// they do not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub module_addr: u64,
    pub heap_start: u64,
    pub heap_end: u64,
    pub stack_top: u64,
}

pub const fn place(mem_size: u64, image_end: u64, module_len: u64) -> Option<Placement> {
    let module_addr = match align_up(image_end, PAGE_SIZE) {
        Some(a) => a,
        None => return None,
    };
    let module_end = match module_addr.checked_add(module_len) {
        Some(e) => e,
        None => return None,
    };
    let heap_start = match align_up(module_end, PAGE_SIZE) {
        Some(h) => h,
        None => return None,
    };
    if !mem_size.is_multiple_of(HUGE_PAGE) || mem_size < STACK_SIZE + STACK_GUARD {
        return None;
    }
    let heap_end = mem_size - STACK_SIZE - STACK_GUARD;
    if heap_end <= heap_start {
        return None;
    }
    Some(Placement {
        module_addr,
        heap_start,
        heap_end,
        stack_top: mem_size - 16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The regions do not overlap (checked at compile time).
    const _: () = {
        assert!(PD_ADDR + PD_COUNT * PAGE_SIZE <= SHARED_BASE);
        assert!(BOOT_INFO_ADDR < CLOCK_PAGE_ADDR && CLOCK_PAGE_ADDR < SEED_PAGE_ADDR);
        assert!(SEED_PAGE_ADDR + PAGE_SIZE <= QUEUE_AREA);
        assert!(QUEUE_AREA_END <= GUEST_LOAD_ADDR);
        assert!(MAX_MEMORY_MIB << 20 <= MMIO_BASE);
        assert!(MMIO_BASE + MMIO_WINDOW <= PD_COUNT << 30);
    };

    #[test]
    fn placement_of_a_small_module() {
        let p = place(64 << 20, 0x51_0123, 1000).unwrap();
        assert_eq!(p.module_addr, 0x51_1000);
        assert_eq!(p.heap_start, 0x51_2000);
        assert_eq!(p.heap_end, (64 << 20) - 4 * (1 << 20));
        assert_eq!(p.stack_top, (64 << 20) - 16);
    }

    #[test]
    fn placement_refuses_what_does_not_fit() {
        let image_end = GUEST_LOAD_ADDR + 0x10_0000;
        assert_eq!(place(32 << 20, image_end, 64 << 20), None);
        assert_eq!(place(64 << 20, image_end, u64::MAX - 10), None);
        assert_eq!(place(64 << 20, u64::MAX - 10, 1), None);
        assert_eq!(place((64 << 20) + 4096, image_end, 0), None);
        assert_eq!(place(0, image_end, 0), None);
    }
}
