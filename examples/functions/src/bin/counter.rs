//! `counter`: increments a counter in linear memory and prints it. Every
//! invocation restored from one snapshot must print 1: one instance's
//! writes are never visible to another.
use std::sync::atomic::{AtomicU64, Ordering};

static COUNT: AtomicU64 = AtomicU64::new(0);

fn main() {
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    println!("count {n}");
}
