//! The few instructions the guest needs beyond plain Rust. The guest runs at
//! CPL 3 with IOPL 3, so `out` reaches the VMM directly; there is no ring 0.

use core::arch::asm;

/// Writes one byte to an I/O port (a VM exit handled by the VMM).
pub fn outb(port: u16, value: u8) {
    // SAFETY: the VMM runs the guest with IOPL 3, so `out` is permitted at
    // CPL 3; it touches no guest memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// The guest's time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no memory effects; CR4.TSD is clear so it is
    // allowed at CPL 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// Stops the guest for good: the VMM never resumes after a panic-port write,
/// and if it did, the loop keeps the guest from running on.
pub fn halt(reason: u8) -> ! {
    loop {
        outb(flint_abi::layout::PANIC_PORT, reason);
        pause();
    }
}
