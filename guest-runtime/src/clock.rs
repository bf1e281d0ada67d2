//! Time and randomness from the pages the VMM writes (flint_abi::ClockPage
//! and SeedPage). Both are read again whenever their generation changes, so
//! a restored VM sees the time of its restore and a fresh seed.

use crate::arch::rdtsc;
use flint_abi::layout::{CLOCK_PAGE_ADDR, SEED_PAGE_ADDR};
use flint_abi::{ClockPage, SeedPage};
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn clock_page() -> ClockPage {
    // SAFETY: the clock page is identity-mapped guest RAM the VMM fills in
    // before running the guest; any bit pattern is a valid ClockPage.
    unsafe { core::ptr::read_volatile(CLOCK_PAGE_ADDR as *const ClockPage) }
}

fn seed_page() -> SeedPage {
    // SAFETY: as for the clock page.
    unsafe { core::ptr::read_volatile(SEED_PAGE_ADDR as *const SeedPage) }
}

/// Nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    let p = clock_page();
    let khz = p.tsc_khz.max(1);
    let ticks = rdtsc().saturating_sub(p.tsc_base);
    let ns = (ticks as u128 * 1_000_000 / khz as u128) as u64;
    p.wall_ns.saturating_add(ns)
}

/// A monotonic clock; its origin is arbitrary, as WASI allows.
pub fn monotonic_ns() -> u64 {
    realtime_ns()
}

#[derive(Debug)]
pub struct Random {
    generation: u64,
    rng: Option<ChaCha20Rng>,
}

impl Random {
    pub const fn new() -> Self {
        Self {
            generation: 0,
            rng: None,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let page = seed_page();
        if self.rng.is_none() || page.generation != self.generation {
            self.generation = page.generation;
            self.rng = Some(ChaCha20Rng::from_seed(page.seed));
        }
        if let Some(rng) = self.rng.as_mut() {
            rng.fill_bytes(buf);
        }
    }
}
