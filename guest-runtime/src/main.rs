//! Flint's guest runtime: the only program inside a Flint micro-VM.
//!
//! The VMM enters it in 64-bit mode at CPL 3 with paging on and IOPL 3; it
//! never runs at ring 0 and takes no interrupts. It reads `BootInfo`, sets
//! up its heap and the virtio-console data channel, then runs the
//! WebAssembly module the VMM placed in memory (see `runtime`).
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod channel;
mod clock;
mod heap;
mod runtime;
mod serial;
mod virtio;
mod wasi;

use core::fmt::Write;
use flint_abi::frame::Kind;
use flint_abi::layout::BOOT_INFO_ADDR;
use flint_abi::{BootInfo, FailureKind, Milestone, ABI_VERSION, BOOT_MAGIC};

/// Values written to the panic port: why the guest stopped.
const HALT_PANIC: u8 = 1;
const HALT_OUT_OF_MEMORY: u8 = 2;
const HALT_BAD_BOOT: u8 = 3;

core::arch::global_asm!(
    ".section .text._start,\"ax\"",
    ".globl _start",
    "_start:",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym guest_main,
);

extern "C" fn guest_main() -> ! {
    // SAFETY: the VMM writes BootInfo at this identity-mapped address before
    // the first instruction; any bit pattern is a valid BootInfo.
    let boot: BootInfo = unsafe { core::ptr::read_volatile(BOOT_INFO_ADDR as *const BootInfo) };
    if boot.magic != BOOT_MAGIC || boot.abi_version != ABI_VERSION {
        let _ = writeln!(
            serial::Serial,
            "flint-guest: bad boot info (magic {:#x}, abi {})",
            boot.magic,
            boot.abi_version
        );
        arch::halt(HALT_BAD_BOOT);
    }
    // SAFETY: the VMM reserves [heap_start, heap_end) for the heap: it is
    // mapped RAM that holds nothing else.
    if !unsafe { heap::HEAP.init(boot.heap_start, boot.heap_end) } {
        let _ = writeln!(serial::Serial, "flint-guest: heap range too small");
        arch::halt(HALT_BAD_BOOT);
    }
    let console = match virtio::Console::init(boot.mmio_base) {
        Ok(c) => c,
        Err(e) => panic!("data channel: {e:?}"),
    };
    let mut chan = channel::Channel::new(console);
    chan.send_u32(Kind::Milestone, Milestone::Entered as u32);

    // SAFETY: the VMM copied the module's bytes to this range of guest RAM
    // and nothing writes there (the heap starts above it).
    let module = unsafe {
        core::slice::from_raw_parts(boot.module_addr as *const u8, boot.module_len as usize)
    };
    let eager = boot.flags & flint_abi::BOOT_COMPILE_EAGERLY != 0;
    let (mut chan, outcome) = runtime::run(chan, module, eager);
    match outcome {
        runtime::Outcome::Exit(code) => chan.send(Kind::Exit, &code.to_le_bytes()),
        runtime::Outcome::Failure(kind, msg) => {
            let msg = truncate(&msg, 4096);
            chan.send_u32_str(Kind::Failure, kind as u32, msg);
        }
    }
    // The VMM stops the VM when it reads the frame above.
    arch::halt(0)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(serial::Serial, "flint-guest panicked: {info}");
    let reason = if heap::HEAP.exhausted() {
        HALT_OUT_OF_MEMORY
    } else {
        HALT_PANIC
    };
    arch::halt(reason)
}

#[allow(dead_code)]
const _: FailureKind = FailureKind::Internal;
