//! x86-64 long mode at CPL 3, prepared entirely by the VMM.
//!
//! The guest never runs at ring 0: the VMM writes identity-mapped page
//! tables (2 MiB pages, all user-accessible), loads flat 64-bit user code and
//! data segments, and sets IOPL 3 so the guest can use `out` to reach the
//! VMM. No GDT or IDT is needed in guest memory: any exception the guest
//! takes escalates to a triple fault, which KVM reports as a shutdown and
//! the VMM treats as a guest crash.
//!
//! The first 2 MiB (page tables; descriptor-table bases point here) are
//! mapped supervisor-only: CPL-3 code faults on them (null pointers), but
//! the CPU's own accesses succeed. PVM (nested KVM without VT-x) needs that
//! mapping to emulate `out` at CPL 3; without it every `out` triple-faults.

use flint_abi::layout::{
    HUGE_PAGE, MMIO_BASE, PAGE_SIZE, PDPT_ADDR, PD_ADDR, PD_COUNT, PML4_ADDR, SHARED_BASE,
    STACK_GUARD, STACK_SIZE,
};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_WRITE_THROUGH: u64 = 1 << 3;
const PTE_CACHE_DISABLE: u64 = 1 << 4;
const PTE_HUGE: u64 = 1 << 7;
const TABLE: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Reserved bit 1 plus IOPL 3.
const RFLAGS_IOPL3: u64 = 0x3002;

/// One 4 KiB page-table page: where it goes and its 512 entries.
pub type TablePage = (u64, [u64; 512]);

/// Builds the guest's page tables for `mem_size` bytes of RAM.
///
/// Mapped (2 MiB pages, user, writable): `[SHARED_BASE, heap end)` and the
/// stack `[mem_size - STACK_SIZE, mem_size)`, plus the first 2 MiB of the
/// MMIO windows (uncached). Supervisor-only: the first 2 MiB (page tables;
/// catches null pointers). Unmapped: the stack guard.
pub fn page_tables(mem_size: u64) -> Vec<TablePage> {
    let mut pml4 = [0u64; 512];
    pml4[0] = PDPT_ADDR | TABLE;
    let mut pdpt = [0u64; 512];
    let mut pds = vec![[0u64; 512]; PD_COUNT as usize];
    for (i, entry) in pdpt.iter_mut().take(PD_COUNT as usize).enumerate() {
        *entry = (PD_ADDR + i as u64 * PAGE_SIZE) | TABLE;
    }
    let mut map = |addr: u64, flags: u64| {
        let gib = (addr >> 30) as usize;
        let idx = ((addr >> 21) & 511) as usize;
        pds[gib][idx] = addr | PTE_PRESENT | PTE_HUGE | flags;
    };
    map(0, PTE_WRITABLE);
    let guard_start = mem_size - STACK_SIZE - STACK_GUARD;
    let mut addr = SHARED_BASE;
    while addr < guard_start {
        map(addr, PTE_WRITABLE | PTE_USER);
        addr += HUGE_PAGE;
    }
    let mut addr = mem_size - STACK_SIZE;
    while addr < mem_size {
        map(addr, PTE_WRITABLE | PTE_USER);
        addr += HUGE_PAGE;
    }
    map(
        MMIO_BASE,
        PTE_WRITABLE | PTE_USER | PTE_CACHE_DISABLE | PTE_WRITE_THROUGH,
    );

    let mut pages = vec![(PML4_ADDR, pml4), (PDPT_ADDR, pdpt)];
    for (i, pd) in pds.into_iter().enumerate() {
        pages.push((PD_ADDR + i as u64 * PAGE_SIZE, pd));
    }
    pages
}

/// Special registers for 64-bit mode at CPL 3 with the tables above.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: (1 << 3) | 3,
        type_: 11, // execute/read, accessed
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: (2 << 3) | 3,
        type_: 3,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the guest's first instruction.
pub fn entry_regs(entry: u64, stack_top: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: stack_top,
        rflags: RFLAGS_IOPL3,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Translates a CPL-3 access; `None` if it would fault.
    fn lookup(tables: &[TablePage], vaddr: u64) -> Option<u64> {
        let find = |addr: u64| tables.iter().find(|(a, _)| *a == addr).map(|(_, t)| t);
        let pml4 = find(PML4_ADDR)?;
        let e = pml4[((vaddr >> 39) & 511) as usize];
        if e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpt = find(e & !0xfff)?;
        let e = pdpt[((vaddr >> 30) & 511) as usize];
        if e & PTE_PRESENT == 0 {
            return None;
        }
        let pd = find(e & !0xfff)?;
        let e = pd[((vaddr >> 21) & 511) as usize];
        if e & PTE_PRESENT == 0 {
            return None;
        }
        assert_ne!(e & PTE_HUGE, 0);
        if e & PTE_USER == 0 {
            return None;
        }
        Some((e & !0x1f_ffff & !(1 << 63)) + (vaddr & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_ram_except_low_memory_and_guard() {
        let mem = 64u64 << 20;
        let t = page_tables(mem);
        assert_eq!(lookup(&t, 0), None, "null page must fault");
        assert_eq!(
            lookup(&t, 0x1000),
            None,
            "page tables are not guest-visible"
        );
        let pd0 = t.iter().find(|(a, _)| *a == PD_ADDR).unwrap().1[0];
        assert_eq!(
            pd0 & (PTE_PRESENT | PTE_USER),
            PTE_PRESENT,
            "low 2 MiB is supervisor-only"
        );
        assert_eq!(lookup(&t, SHARED_BASE), Some(SHARED_BASE));
        assert_eq!(lookup(&t, 0x40_1234), Some(0x40_1234));
        let guard = mem - STACK_SIZE - STACK_GUARD;
        assert_eq!(lookup(&t, guard - 8), Some(guard - 8));
        assert_eq!(lookup(&t, guard), None, "stack guard must fault");
        assert_eq!(lookup(&t, mem - STACK_SIZE - 1), None);
        assert_eq!(lookup(&t, mem - 16), Some(mem - 16));
        assert_eq!(lookup(&t, mem), None, "nothing past RAM");
        assert_eq!(lookup(&t, MMIO_BASE + 0x50), Some(MMIO_BASE + 0x50));
    }

    #[test]
    fn large_memories_span_several_directories() {
        let mem = 3072u64 << 20;
        let t = page_tables(mem);
        assert_eq!(t.len(), 2 + PD_COUNT as usize);
        assert_eq!(lookup(&t, (1 << 30) + 5), Some((1 << 30) + 5));
        assert_eq!(
            lookup(&t, (2 << 30) + (7 << 21)),
            Some((2 << 30) + (7 << 21))
        );
    }

    #[test]
    fn registers_enter_cpl3_long_mode() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cs.dpl, 3);
        assert_eq!(s.cs.selector & 3, 3);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.ss.dpl, 3);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        let r = entry_regs(0x40_0000, 0x3ff_fff0);
        assert_eq!(r.rflags >> 12 & 3, 3, "IOPL 3 lets the guest use out");
    }
}
