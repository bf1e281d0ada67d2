//! `bigheap`: a function with a large initialised heap. Its `_initialize`
//! (run once, before a snapshot) builds a 32 MiB table; `_start` (every
//! invocation) reads a few entries. Built as a WASI reactor (cdylib) that
//! also exports `_start`, so Flint runs it as a command.

use std::sync::OnceLock;

const ENTRIES: usize = 4 << 20; // 4 Mi u64 = 32 MiB

static TABLE: OnceLock<Vec<u64>> = OnceLock::new();

fn build() -> Vec<u64> {
    let mut t = Vec::with_capacity(ENTRIES);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..ENTRIES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        t.push(x);
    }
    t
}

extern "C" {
    /// The linker-generated constructor runner (wasi-libc's reactor entry).
    fn __wasm_call_ctors();
}

/// The reactor's initialiser: runs once, before any `_start`.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: called once, first, as the reactor ABI requires.
    unsafe { __wasm_call_ctors() };
    TABLE.get_or_init(build);
}

#[no_mangle]
pub extern "C" fn _start() {
    let table = TABLE.get_or_init(build);
    let picks: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let picks = if picks.is_empty() {
        vec![0, ENTRIES / 2, ENTRIES - 1]
    } else {
        picks
    };
    let sum = picks
        .iter()
        .fold(0u64, |acc, &i| acc.wrapping_add(table[i % ENTRIES]));
    println!(
        "bigheap: {} MiB table, checksum {sum:016x}",
        (table.len() * 8) >> 20
    );
}
