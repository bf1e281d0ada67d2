//! The guest's log: bytes written to COM1, collected by the VMM's 16550
//! model. Slow (one VM exit a byte), so used only for panics and diagnostics.

use crate::arch::outb;
use flint_abi::layout::SERIAL_PORT;

#[derive(Debug)]
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            outb(SERIAL_PORT, b);
        }
        Ok(())
    }
}
