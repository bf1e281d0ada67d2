//! `entropy`: prints a random 64-bit number (from WASI `random_get`, via
//! std's randomly keyed hasher) and the current time in nanoseconds since
//! the Unix epoch (WASI `clock_time_get`).
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let random = RandomState::new().hash_one(0u64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    println!("random {random:016x}");
    println!("time {now}");
}
