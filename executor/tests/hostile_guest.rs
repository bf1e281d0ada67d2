//! The VMM against guests that misbehave on purpose: tiny hand-assembled
//! ELF images booted in real VMs in place of the guest runtime. Each must
//! end with a clear error, and the host must carry on.

use std::sync::Arc;
use std::time::Duration;

use flint_abi::layout::{GUEST_LOAD_ADDR, MMIO_BASE, PANIC_PORT, QUEUE_AREA, SERIAL_PORT};
use flint_executor::{run, BufferIo, Invocation, RunError, VmConfig};

/// A minimal x86-64 assembler for the few instructions these guests need.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    /// mov rax, addr; mov dword [rax], value
    fn store32(&mut self, addr: u64, value: u32) -> &mut Self {
        self.0.extend([0x48, 0xb8]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend([0xc7, 0x00]);
        self.0.extend(value.to_le_bytes());
        self
    }
    fn mmio(&mut self, reg: u64, value: u32) -> &mut Self {
        self.store32(MMIO_BASE + reg, value)
    }
    /// mov dx, port; mov al, value; out dx, al
    fn out8(&mut self, port: u16, value: u8) -> &mut Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(port.to_le_bytes());
        self.0.extend([0xb0, value, 0xee]);
        self
    }
    fn ud2(&mut self) -> &mut Self {
        self.0.extend([0x0f, 0x0b]);
        self
    }
    /// jmp $ (spin forever)
    fn spin(&mut self) -> &mut Self {
        self.0.extend([0xeb, 0xfe]);
        self
    }
    /// Brings the console's transmit queue (1) up with its rings in the
    /// queue area, the way a driver would.
    fn console_tx_ready(&mut self, desc: u64, avail: u64, used: u64) -> &mut Self {
        self.mmio(0x70, 1).mmio(0x70, 3);
        self.mmio(0x24, 1).mmio(0x20, 1).mmio(0x70, 0xb);
        self.mmio(0x30, 1).mmio(0x38, 16);
        self.mmio(0x80, desc as u32)
            .mmio(0x90, avail as u32)
            .mmio(0xa0, used as u32);
        self.mmio(0x44, 1).mmio(0x70, 0xf)
    }
    /// Publishes descriptor 0 = (addr, len) on the avail ring and notifies.
    fn send_desc(&mut self, desc: u64, avail: u64, addr: u64, len: u32) -> &mut Self {
        self.store32(desc, addr as u32)
            .store32(desc + 4, (addr >> 32) as u32);
        self.store32(desc + 8, len).store32(desc + 12, 0);
        self.store32(avail, 1 << 16).store32(avail + 4, 0);
        self.mmio(0x50, 1)
    }

    /// Wraps the code in a static ELF loaded at the guest load address.
    fn elf(&self) -> Arc<[u8]> {
        let code = &self.0;
        let mut e = vec![0u8; 0x1000];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little-endian
        e[6] = 1; // version
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // entry
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        e[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        let ph = &mut e[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // vaddr
        ph[24..32].copy_from_slice(&GUEST_LOAD_ADDR.to_le_bytes()); // paddr
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        e.extend_from_slice(code);
        e.into()
    }
}

const DESC: u64 = QUEUE_AREA + 0x2000;
const AVAIL: u64 = DESC + 0x400;
const USED: u64 = DESC + 0x1000;
const DATA: u64 = QUEUE_AREA + 0x3_0000;

fn boot(asm: &Asm) -> Result<i32, RunError> {
    let config = VmConfig {
        memory_mib: 64,
        timeout: Some(Duration::from_secs(5)),
        guest_elf: Some(asm.elf()),
        ..VmConfig::default()
    };
    let mut io = BufferIo::default();
    run(&config, b"\0asm\x01\0\0\0", &Invocation::default(), &mut io).map(|r| r.exit_code)
}

fn message(e: &RunError) -> String {
    flint_executor::error_chain(e)
}

#[test]
fn an_invalid_instruction_is_a_guest_crash() {
    let err = boot(Asm::default().ud2()).unwrap_err();
    assert!(matches!(err, RunError::GuestCrash(_)), "{err:?}");
    assert!(message(&err).contains("triple fault"), "{}", message(&err));
}

#[test]
fn a_panic_reports_the_guest_log() {
    let mut a = Asm::default();
    for b in b"boom" {
        a.out8(SERIAL_PORT, *b);
    }
    a.out8(PANIC_PORT, 1);
    let err = boot(&a).unwrap_err();
    let msg = message(&err);
    assert!(matches!(err, RunError::GuestCrash(_)), "{err:?}");
    assert!(msg.contains("panicked") && msg.contains("boom"), "{msg}");
}

#[test]
fn a_silent_spinning_guest_is_stopped_by_the_timeout() {
    let config = VmConfig {
        memory_mib: 64,
        timeout: Some(Duration::from_millis(200)),
        guest_elf: Some(Asm::default().spin().elf()),
        ..VmConfig::default()
    };
    let start = std::time::Instant::now();
    let err = run(
        &config,
        b"\0asm\x01\0\0\0",
        &Invocation::default(),
        &mut BufferIo::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, RunError::Timeout(d) if d == Duration::from_millis(200)),
        "{err:?}"
    );
    // The guest never exits to the VMM, so only the timeout ends it: the
    // run returned, and not before the timeout.
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "stopped after {:?}",
        start.elapsed()
    );
}

#[test]
fn notifying_a_queue_that_was_never_set_up_is_refused() {
    let err = boot(Asm::default().mmio(0x50, 1).spin()).unwrap_err();
    let msg = message(&err);
    assert!(matches!(err, RunError::GuestProtocol(_)), "{err:?}");
    assert!(msg.contains("not ready"), "{msg}");
}

#[test]
fn a_ring_outside_guest_memory_is_refused() {
    let mut a = Asm::default();
    a.console_tx_ready(0x7000_0000, AVAIL, USED).spin();
    let err = boot(&a).unwrap_err();
    assert!(
        message(&err).contains("invalid size or ring addresses"),
        "{}",
        message(&err)
    );
}

#[test]
fn a_descriptor_pointing_outside_guest_memory_is_refused() {
    let mut a = Asm::default();
    a.console_tx_ready(DESC, AVAIL, USED)
        .send_desc(DESC, AVAIL, 0xffff_0000_0000, 64)
        .spin();
    let err = boot(&a).unwrap_err();
    let msg = message(&err);
    assert!(matches!(err, RunError::GuestProtocol(_)), "{err:?}");
    assert!(msg.contains("descriptor chain"), "{msg}");
}

#[test]
fn an_avail_index_beyond_the_ring_is_refused() {
    let mut a = Asm::default();
    a.console_tx_ready(DESC, AVAIL, USED);
    a.store32(AVAIL, 4000 << 16).mmio(0x50, 1).spin();
    let err = boot(&a).unwrap_err();
    assert!(message(&err).contains("malformed"), "{}", message(&err));
}

#[test]
fn garbage_bytes_on_the_channel_are_refused() {
    let mut a = Asm::default();
    a.store32(DATA, 0xdead_beef).store32(DATA + 4, 0xffff_ffff);
    a.console_tx_ready(DESC, AVAIL, USED)
        .send_desc(DESC, AVAIL, DATA, 8)
        .spin();
    let err = boot(&a).unwrap_err();
    let msg = message(&err);
    assert!(matches!(err, RunError::GuestProtocol(_)), "{err:?}");
    assert!(msg.contains("malformed frame"), "{msg}");
}

#[test]
fn a_frame_claiming_a_huge_length_is_refused() {
    let mut a = Asm::default();
    // Stdout frame header with a 4 GiB payload length.
    a.store32(DATA, 2).store32(DATA + 4, 0xffff_ffff);
    a.console_tx_ready(DESC, AVAIL, USED)
        .send_desc(DESC, AVAIL, DATA, 8)
        .spin();
    let msg = message(&boot(&a).unwrap_err());
    assert!(msg.contains("exceeds"), "{msg}");
}

#[test]
fn the_host_keeps_working_after_hostile_guests() {
    for asm in [Asm::default().ud2(), Asm::default().mmio(0x50, 9)] {
        let e = boot(asm).unwrap_err();
        assert!(
            matches!(e, RunError::GuestCrash(_) | RunError::GuestProtocol(_)),
            "{e:?}"
        );
    }
    let module = flint_examples::bytes("hello");
    let mut io = BufferIo::default();
    let inv = Invocation {
        args: vec!["hello".into(), "again".into()],
        env: vec![],
    };
    let report = run(&VmConfig::default(), &module, &inv, &mut io).unwrap();
    assert_eq!(report.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&io.stdout), "hello, again\n");
}
