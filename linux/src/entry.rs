//! The `syscall` entry and the calls answered inside the guest.
//!
//! The entry page holds one block of code, assembled with the VMM and
//! copied into the guest:
//!
//! - at offset 0, the way to the VMM: `out` to [`SYSCALL_PORT`]
//!   (`crate::arch::SYSCALL_PORT`), which every call takes on real KVM,
//!   where `syscall` enters CPL 0;
//! - after it, the *fast entry*: under PVM, where `syscall` stays at CPL 3
//!   and jumps to LSTAR, the time calls (`clock_gettime` for the clocks
//!   the vDSO serves, `gettimeofday`, `time`) are answered right there
//!   from the guest's TSC and a few constants the VMM wrote into the
//!   page, and the program goes on with `jmp rcx`, no exit at all; any
//!   other call, clock or argument falls through to the `out`.
//!
//! The VMM points LSTAR at the fast entry only once it has seen a
//! `syscall` arrive at CPL 3 (so never on real KVM, where `jmp rcx` would
//! return at CPL 0). The fast entry clobbers only RAX (the result), RCX
//! and R11 (as `syscall` does); RDX is kept in R11 while `rdtsc` and
//! `div` use it. A store through a bad pointer faults inside the block,
//! and the VMM answers that fault as the call's `EFAULT`
//! ([`fixup_fault`]), as Linux's `copy_to_user` would.
//!
//! The guest's monotonic clock is the TSC: `(tsc - tsc_base) * mult >> 32`
//! nanoseconds since the VM started, `tsc_base` the guest's TSC then;
//! realtime adds the wall-clock time of that moment. The VMM reads the
//! same clock through the host's TSC (the guest's is the host's plus an
//! offset it measures), so a deadline computed in the guest means the
//! same thing in the VMM.

use kvm_bindings::kvm_regs;

core::arch::global_asm!(
    ".pushsection .rodata.flint_linux_entry,\"a\"",
    // RAX = nanoseconds on the monotonic clock, from the TSC (clobbers
    // RDX): (tsc - tsc_base) * mult >> 32.
    ".macro flint_linux_entry_mono_ns",
    "rdtsc",
    "shl rdx, 32",
    "or rax, rdx",
    "sub rax, qword ptr [rip + flint_linux_entry_tsc_base]",
    "mul qword ptr [rip + flint_linux_entry_mult]",
    "shrd rax, rdx, 32",
    ".endm",
    ".balign 64",
    ".globl flint_linux_entry_start",
    "flint_linux_entry_start:",
    // To the VMM (the slow path).
    "out 0xbf, al",
    "ud2",
    ".balign 16",
    ".globl flint_linux_entry_fast",
    "flint_linux_entry_fast:",
    "mov r11, rdx",
    "cmp rax, 228",
    "je 20f",
    "cmp rax, 96",
    "je 30f",
    "cmp rax, 201",
    "je 40f",
    "jmp flint_linux_entry_start",
    // clock_gettime(clockid in edi, tp in rsi): REALTIME, MONOTONIC,
    // MONOTONIC_RAW, REALTIME_COARSE, MONOTONIC_COARSE, BOOTTIME.
    "20:",
    "cmp edi, 7",
    "ja flint_linux_entry_start",
    "mov edx, 0xf3",
    "bt edx, edi",
    "mov rdx, r11",
    "jnc flint_linux_entry_start",
    "flint_linux_entry_mono_ns",
    "test edi, edi",
    "je 21f",
    "cmp edi, 5",
    "jne 22f",
    "21:",
    "add rax, qword ptr [rip + flint_linux_entry_wall_base]",
    "22:",
    "xor edx, edx",
    "div qword ptr [rip + flint_linux_entry_billion]",
    "mov qword ptr [rsi], rax",
    "mov qword ptr [rsi + 8], rdx",
    "mov rdx, r11",
    "xor eax, eax",
    "jmp rcx",
    // gettimeofday(tv in rdi, tz in rsi): a time zone goes to the VMM.
    "30:",
    "test rsi, rsi",
    "jne flint_linux_entry_start",
    "test rdi, rdi",
    "je 31f",
    "flint_linux_entry_mono_ns",
    "add rax, qword ptr [rip + flint_linux_entry_wall_base]",
    "xor edx, edx",
    "div qword ptr [rip + flint_linux_entry_billion]",
    "mov qword ptr [rdi], rax",
    "mov rax, rdx",
    "xor edx, edx",
    "div qword ptr [rip + flint_linux_entry_thousand]",
    "mov qword ptr [rdi + 8], rax",
    "31:",
    "mov rdx, r11",
    "xor eax, eax",
    "jmp rcx",
    // time(tloc in rdi).
    "40:",
    "flint_linux_entry_mono_ns",
    "add rax, qword ptr [rip + flint_linux_entry_wall_base]",
    "xor edx, edx",
    "div qword ptr [rip + flint_linux_entry_billion]",
    "test rdi, rdi",
    "je 41f",
    "mov qword ptr [rdi], rax",
    "41:",
    "mov rdx, r11",
    "jmp rcx",
    ".globl flint_linux_entry_code_end",
    "flint_linux_entry_code_end:",
    ".balign 8",
    ".globl flint_linux_entry_tsc_base",
    "flint_linux_entry_tsc_base: .quad 0",
    ".globl flint_linux_entry_mult",
    "flint_linux_entry_mult: .quad 0",
    ".globl flint_linux_entry_wall_base",
    "flint_linux_entry_wall_base: .quad 0",
    "flint_linux_entry_billion: .quad 1000000000",
    "flint_linux_entry_thousand: .quad 1000",
    ".globl flint_linux_entry_end",
    "flint_linux_entry_end:",
    ".popsection",
);

extern "C" {
    static flint_linux_entry_start: u8;
    static flint_linux_entry_fast: u8;
    static flint_linux_entry_code_end: u8;
    static flint_linux_entry_tsc_base: u8;
    static flint_linux_entry_mult: u8;
    static flint_linux_entry_wall_base: u8;
    static flint_linux_entry_end: u8;
}

/// Offsets inside the entry block.
struct Layout {
    fast: usize,
    code_end: usize,
    tsc_base: usize,
    mult: usize,
    wall_base: usize,
    len: usize,
}

fn layout() -> Layout {
    // Only the labels' addresses are taken.
    let start = std::ptr::addr_of!(flint_linux_entry_start) as usize;
    let off = |p: *const u8| p as usize - start;
    Layout {
        fast: off(std::ptr::addr_of!(flint_linux_entry_fast)),
        code_end: off(std::ptr::addr_of!(flint_linux_entry_code_end)),
        tsc_base: off(std::ptr::addr_of!(flint_linux_entry_tsc_base)),
        mult: off(std::ptr::addr_of!(flint_linux_entry_mult)),
        wall_base: off(std::ptr::addr_of!(flint_linux_entry_wall_base)),
        len: off(std::ptr::addr_of!(flint_linux_entry_end)),
    }
}

/// The entry block's bytes with `clock`'s constants in place.
pub fn block(clock: &Clock) -> Vec<u8> {
    let l = layout();
    // SAFETY: the block is `l.len` bytes of read-only data from the label
    // `flint_linux_entry_start` on.
    let mut b = unsafe {
        std::slice::from_raw_parts(std::ptr::addr_of!(flint_linux_entry_start), l.len).to_vec()
    };
    let (tsc_base, mult, wall_base) = clock.constants();
    b[l.tsc_base..][..8].copy_from_slice(&tsc_base.to_le_bytes());
    b[l.mult..][..8].copy_from_slice(&mult.to_le_bytes());
    b[l.wall_base..][..8].copy_from_slice(&wall_base.to_le_bytes());
    b
}

/// Offset of the fast entry in the block.
pub fn fast_offset() -> u64 {
    layout().fast as u64
}

/// Where a `syscall` that reaches the VMM stands (just after the `out`).
pub const SLOW_EXIT_OFFSET: u64 = 2;

/// A fault at `rip` (offset `rip - entry` in the block) while the fast
/// entry wrote a result: completes the call with `EFAULT` instead of a
/// signal. True when `regs` were changed so.
pub fn fixup_fault(entry: u64, regs: &mut kvm_regs) -> bool {
    let l = layout();
    let fast = entry + l.fast as u64..entry + l.code_end as u64;
    if !fast.contains(&regs.rip) {
        return false;
    }
    regs.rax = (-(libc::EFAULT as i64)) as u64;
    regs.rdx = regs.r11;
    regs.rip = regs.rcx;
    true
}

/// The guest's clocks, from the TSC.
#[derive(Debug, Clone)]
pub struct Clock {
    /// The guest's TSC when the VM started.
    guest_base: u64,
    /// Guest TSC minus host TSC.
    offset: u64,
    /// Nanoseconds per tick, times 2^32.
    mult: u64,
    /// Wall-clock nanoseconds when the VM started.
    wall_base: u64,
    /// False when the TSC's rate is not known: time then comes from the
    /// host's monotonic clock and every time call goes to the VMM.
    tsc: bool,
    start: std::time::Instant,
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl Clock {
    /// A clock whose zero is now: `guest_tsc` reads the guest's TSC (from
    /// a stopped vCPU), `khz` its rate.
    pub fn new(guest_tsc: impl FnOnce() -> Option<u64>, khz: Option<u32>) -> Self {
        let wall_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let start = std::time::Instant::now();
        let before = rdtsc();
        let guest = guest_tsc();
        let after = rdtsc();
        let (Some(guest), Some(khz)) = (guest, khz.filter(|&k| k >= 1000)) else {
            return Self {
                guest_base: 0,
                offset: 0,
                mult: 0,
                wall_base,
                tsc: false,
                start,
            };
        };
        let host = before + (after - before) / 2;
        Self {
            guest_base: guest,
            offset: guest.wrapping_sub(host),
            mult: ((1_000_000u128 << 32) / khz as u128) as u64,
            wall_base,
            tsc: true,
            start,
        }
    }

    /// The guest TSC value that keeps this clock's readings going on in
    /// another VM whose TSC is set to it now (a thawed copy,
    /// `kernel::freeze`): the guest's TSC is the host's plus the offset.
    pub fn guest_tsc_now(&self) -> Option<u64> {
        self.tsc.then(|| rdtsc().wrapping_add(self.offset))
    }

    /// True when the guest can read this clock itself.
    pub fn guest_readable(&self) -> bool {
        self.tsc
    }

    /// Nanoseconds since the VM started.
    pub fn mono_ns(&self) -> u64 {
        if !self.tsc {
            return self.start.elapsed().as_nanos() as u64;
        }
        let ticks = rdtsc()
            .wrapping_add(self.offset)
            .wrapping_sub(self.guest_base);
        ((ticks as u128 * self.mult as u128) >> 32) as u64
    }

    /// Wall-clock nanoseconds since the epoch.
    pub fn wall_ns(&self) -> u64 {
        self.wall_base + self.mono_ns()
    }

    /// What guest code needs to read the clock: the TSC at zero,
    /// nanoseconds per tick times 2^32, the wall-clock time at zero.
    pub fn constants(&self) -> (u64, u64, u64) {
        (self.guest_base, self.mult, self.wall_base)
    }

    pub fn wall_base(&self) -> u64 {
        self.wall_base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_starts_with_the_exit_and_holds_the_clock() {
        let c = Clock::new(|| Some(rdtsc()), Some(2_000_000));
        let b = block(&c);
        assert_eq!(
            &b[..4],
            &[0xe6, crate::arch::SYSCALL_PORT as u8, 0x0f, 0x0b]
        );
        let l = layout();
        assert!(l.fast < l.code_end && l.code_end <= l.tsc_base && l.len < 4096);
        let word = |o: usize| u64::from_le_bytes(b[o..][..8].try_into().unwrap());
        assert_eq!(word(l.mult), 1u64 << 31, "0.5 ns per tick at 2 GHz");
        assert_eq!(word(l.tsc_base), c.guest_base);
    }

    #[test]
    fn the_clock_follows_the_host_monotonic_clock() {
        let c = Clock::new(|| Some(rdtsc().wrapping_add(12345)), host_khz());
        let t0 = std::time::Instant::now();
        let a = c.mono_ns();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = c.mono_ns();
        let host = t0.elapsed().as_nanos() as u64;
        assert!(b > a);
        let diff = (b - a).abs_diff(host);
        assert!(diff < host / 20, "TSC clock {} ns vs host {host} ns", b - a);
    }

    #[test]
    fn a_fault_in_the_fast_entry_is_efault_and_elsewhere_not() {
        let entry = 0x7000;
        let mut r = kvm_regs {
            rip: entry + fast_offset() + 3,
            rcx: 0x40_1000,
            r11: 77,
            ..Default::default()
        };
        assert!(fixup_fault(entry, &mut r));
        assert_eq!((r.rax as i64, r.rdx, r.rip), (-14, 77, 0x40_1000));
        let mut r = kvm_regs {
            rip: 0x40_2000,
            ..Default::default()
        };
        assert!(!fixup_fault(entry, &mut r));
        assert_eq!(r.rip, 0x40_2000);
    }

    /// The host TSC's rate, measured (the tests have no vCPU to ask).
    fn host_khz() -> Option<u32> {
        let t0 = std::time::Instant::now();
        let c0 = rdtsc();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let ticks = rdtsc() - c0;
        Some((ticks as u128 * 1_000_000 / t0.elapsed().as_nanos()) as u32)
    }
}
