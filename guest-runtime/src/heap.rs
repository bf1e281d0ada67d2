//! The guest heap: talc over the range the VMM gives in `BootInfo`, with a
//! record of whether an allocation ever failed (to tell out-of-memory apart
//! from other panics).

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, Ordering};
use spinning_top::RawSpinlock;
use talc::{source::Claim, TalcLock};

#[allow(missing_debug_implementations)]
pub struct GuestHeap {
    talc: TalcLock<RawSpinlock, Claim>,
    exhausted: AtomicBool,
}

#[global_allocator]
pub static HEAP: GuestHeap = GuestHeap {
    talc: TalcLock::new(Claim::standby()),
    exhausted: AtomicBool::new(false),
};

impl GuestHeap {
    /// Hands `[start, end)` to the allocator.
    ///
    /// # Safety
    /// The range must be unused, writable guest RAM for the rest of the run.
    pub unsafe fn init(&self, start: u64, end: u64) -> bool {
        // SAFETY: the caller guarantees the range is free RAM we own.
        unsafe {
            self.talc
                .lock()
                .claim(start as *mut u8, (end - start) as usize)
                .is_some()
        }
    }

    /// Bytes not yet handed out.
    pub fn free_bytes(&self) -> usize {
        self.talc.lock().counters().available_bytes
    }

    /// Whether any allocation has failed.
    pub fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    fn note(&self, p: *mut u8) -> *mut u8 {
        if p.is_null() {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        p
    }
}

// SAFETY: every method forwards to talc's GlobalAlloc, which upholds the
// contract; `note` only records failures.
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        self.note(unsafe { self.talc.alloc(layout) })
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        self.note(unsafe { self.talc.alloc_zeroed(layout) })
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.talc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        self.note(unsafe { self.talc.realloc(ptr, layout, new_size) })
    }
}
