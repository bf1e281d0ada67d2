//! `spin`: prints a line, then loops forever (only a host timeout stops it).
fn main() {
    println!("spinning");
    let mut n: u64 = 0;
    loop {
        // SAFETY: a volatile write to a local keeps the loop from being optimised away.
        unsafe { std::ptr::write_volatile(&mut n, n.wrapping_add(1)) };
    }
}
