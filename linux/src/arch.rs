//! The guest's CPU set-up for Linux programs: the structures a CPL-3
//! program needs around it (GDT, TSS with an I/O bitmap, IDT, trap stubs,
//! the `syscall` entry), all built by the VMM in guest memory and mapped in
//! the upper half of every address space.
//!
//! A `syscall` jumps to LSTAR, the entry page (`crate::entry`): `out` to
//! [`SYSCALL_PORT`], on real KVM at CPL 0, on PVM (where `syscall` stays
//! at CPL 3) at CPL 3, which the TSS I/O bitmap permits for that port
//! alone; under PVM the time calls are answered in the page itself. Each exception vector has its own CPL-0 stub, `out` to
//! `EXCEPTION_PORT_BASE + vector`; the exception frame is on the kernel
//! stack. Either way the VMM answers and puts the vCPU back at CPL 3 by
//! setting its registers; no guest code runs at CPL 0 beyond one `out`.

use kvm_bindings::{kvm_dtable, kvm_segment, kvm_sregs};

/// Port the `syscall` entry writes to.
pub const SYSCALL_PORT: u16 = 0xbf;
/// Exception `v`'s stub writes to port `EXCEPTION_PORT_BASE + v` (v < 32).
pub const EXCEPTION_PORT_BASE: u16 = 0xc0;

/// Where the kernel area is mapped in every address space (PML4 slot 511).
pub const KERNEL_VA: u64 = 0xffff_ff80_0000_0000;

/// Guest-physical layout of the kernel area (first 64 KiB of RAM); each is
/// mapped at `KERNEL_VA + phys`.
pub const GDT_PHYS: u64 = 0x1000;
pub const TSS_PHYS: u64 = 0x2000;
/// TSS (0x68 bytes), then an 8 KiB I/O bitmap and its 0xff terminator.
pub const TSS_LIMIT: u32 = 0x68 + 0x2000;
pub const IDT_PHYS: u64 = 0x5000;
pub const STUBS_PHYS: u64 = 0x6000;
/// The `syscall` entry page: the only kernel-area page user code may touch.
pub const SYSCALL_PAGE_PHYS: u64 = 0x7000;
pub const KSTACK_PHYS: u64 = 0x8000;
pub const KSTACK_TOP_PHYS: u64 = 0x10000;
/// Most vCPUs a VM has: each has its own TSS (so its own I/O bitmap and
/// kernel stack, where its exception frames land); vCPU 0's are above,
/// vCPU n's (n >= 1) are in the 16 KiB at `CPU_AREA_PHYS + (n - 1) *
/// 0x4000`: the TSS, then a one-page kernel stack.
pub const MAX_VCPUS: usize = 3;
pub const CPU_AREA_PHYS: u64 = 0x13000;
/// The end of what the kernel page table maps.
const KERNEL_AREA_END: u64 = CPU_AREA_PHYS + (MAX_VCPUS as u64 - 1) * 0x4000;
/// The kernel area's page tables (a PDPT, a PD and a PT shared by every
/// address space).
pub const KPDPT_PHYS: u64 = 0x10000;
pub const KPD_PHYS: u64 = 0x11000;
pub const KPT_PHYS: u64 = 0x12000;
/// First guest-physical byte the frame allocator hands out.
pub const FRAMES_START: u64 = 0x20000;

/// Linux's selectors, so signal frames and programs see the usual values.
pub const KERNEL_CS: u16 = 0x10;
pub const KERNEL_DS: u16 = 0x18;
pub const USER32_CS: u16 = 0x23;
pub const USER_DS: u16 = 0x2b;
pub const USER_CS: u16 = 0x33;
/// vCPU n's TSS selector is `TSS_SEL + 16 n`.
pub const TSS_SEL: u16 = 0x40;
const GDT_ENTRIES: usize = 8 + 2 * MAX_VCPUS;

pub const PTE_P: u64 = 1 << 0;
pub const PTE_W: u64 = 1 << 1;
pub const PTE_U: u64 = 1 << 2;
pub const PTE_NX: u64 = 1 << 63;
pub const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Vectors whose exception frame starts with an error code.
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The `syscall` entry address.
pub fn syscall_entry() -> u64 {
    KERNEL_VA + SYSCALL_PAGE_PHYS
}

/// Address just after exception `vector`'s `out`, where the vCPU stands
/// when the stub's exit reaches the VMM.
pub fn stub_after_out(vector: u8) -> u64 {
    KERNEL_VA + STUBS_PHYS + vector as u64 * 8 + 2
}

/// vCPU `cpu`'s TSS (guest-physical).
fn tss_phys(cpu: usize) -> u64 {
    if cpu == 0 {
        TSS_PHYS
    } else {
        CPU_AREA_PHYS + (cpu as u64 - 1) * 0x4000
    }
}

/// vCPU `cpu`'s kernel stack (RSP0 and IST1 at its top): exception frames
/// are pushed into it.
pub fn kernel_stack(cpu: usize) -> std::ops::Range<u64> {
    if cpu == 0 {
        KERNEL_VA + KSTACK_PHYS..KERNEL_VA + KSTACK_TOP_PHYS
    } else {
        let top = KERNEL_VA + tss_phys(cpu) + 0x4000;
        top - 0x1000..top
    }
}

/// The kernel area's pages: `(guest-physical address, contents)`, the
/// `syscall` entry page holding `entry_block` (`crate::entry`). Written
/// once per VM.
pub fn kernel_pages(entry_block: Vec<u8>) -> Vec<(u64, Vec<u8>)> {
    let mut pages = Vec::new();
    // GDT: null, (unused), kernel code, kernel data, user32 code, user
    // data, user code, (unused), then a TSS (two slots) per vCPU.
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[2] = 0x00af_9b00_0000_ffff; // 0x10: 64-bit code, DPL 0
    gdt[3] = 0x00cf_9300_0000_ffff; // 0x18: data, DPL 0
    gdt[4] = 0x00cf_fb00_0000_ffff; // 0x23: 32-bit code, DPL 3
    gdt[5] = 0x00cf_f300_0000_ffff; // 0x2b: data, DPL 3
    gdt[6] = 0x00af_fb00_0000_ffff; // 0x33: 64-bit code, DPL 3
    for cpu in 0..MAX_VCPUS {
        let tss_base = KERNEL_VA + tss_phys(cpu);
        let limit = TSS_LIMIT as u64;
        gdt[8 + 2 * cpu] = (limit & 0xffff)
            | ((tss_base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((tss_base >> 24) & 0xff) << 56);
        gdt[9 + 2 * cpu] = tss_base >> 32;
    }
    pages.push((GDT_PHYS, gdt.iter().flat_map(|e| e.to_le_bytes()).collect()));

    // Each TSS: RSP0 and IST1 on its vCPU's kernel stack; I/O bitmap at
    // 0x68 denying every port but the syscall port.
    for cpu in 0..MAX_VCPUS {
        let top = kernel_stack(cpu).end;
        let mut tss = vec![0u8; 0x68 + 0x2000 + 1];
        tss[4..12].copy_from_slice(&top.to_le_bytes());
        tss[0x24..0x2c].copy_from_slice(&top.to_le_bytes());
        tss[0x66..0x68].copy_from_slice(&0x68u16.to_le_bytes());
        for b in &mut tss[0x68..] {
            *b = 0xff;
        }
        let port = SYSCALL_PORT as usize;
        tss[0x68 + port / 8] &= !(1 << (port % 8));
        pages.push((tss_phys(cpu), tss));
    }

    // Stubs: for vector v, `out %al, $(0xc0 + v)` then `ud2` (never reached:
    // the VMM moves the vCPU on). 8 bytes each.
    let mut stubs = vec![0u8; 32 * 8];
    for v in 0..32u8 {
        let s = &mut stubs[v as usize * 8..][..8];
        s[..4].copy_from_slice(&[0xe6, EXCEPTION_PORT_BASE as u8 + v, 0x0f, 0x0b]);
    }
    pages.push((STUBS_PHYS, stubs));

    // IDT: 32 interrupt gates (DPL 0: `int n` from user code is a #GP),
    // the double fault on IST1.
    let mut idt = vec![0u8; 4096];
    for v in 0..32u64 {
        let off = KERNEL_VA + STUBS_PHYS + v * 8;
        let ist = if v == 8 { 1 } else { 0 };
        let lo = (off & 0xffff)
            | ((KERNEL_CS as u64) << 16)
            | (ist << 32)
            | (0x8e << 40)
            | (((off >> 16) & 0xffff) << 48);
        let hi = off >> 32;
        idt[v as usize * 16..][..8].copy_from_slice(&lo.to_le_bytes());
        idt[v as usize * 16 + 8..][..8].copy_from_slice(&hi.to_le_bytes());
    }
    pages.push((IDT_PHYS, idt));

    // The syscall entry: `out %al, $SYSCALL_PORT` first, then the calls
    // answered in the guest.
    pages.push((SYSCALL_PAGE_PHYS, entry_block));

    // Kernel page tables: PDPT[0] -> PD, PD[0] -> PT, PT maps the kernel
    // area's RAM at KERNEL_VA (its own page tables excepted). Upper levels allow user access so that
    // the syscall page (the only leaf with U) is reachable.
    let table = PTE_P | PTE_W | PTE_U;
    let mut pdpt = vec![0u8; 4096];
    pdpt[..8].copy_from_slice(&(KPD_PHYS | table).to_le_bytes());
    let mut pd = vec![0u8; 4096];
    pd[..8].copy_from_slice(&(KPT_PHYS | table).to_le_bytes());
    let mut pt = vec![0u8; 4096];
    let mapped = (1..KSTACK_TOP_PHYS / 4096).chain(CPU_AREA_PHYS / 4096..KERNEL_AREA_END / 4096);
    for i in mapped {
        let phys = i * 4096;
        let flags = match phys {
            SYSCALL_PAGE_PHYS => PTE_P | PTE_U,
            STUBS_PHYS => PTE_P,
            _ => PTE_P | PTE_W | PTE_NX,
        };
        pt[i as usize * 8..][..8].copy_from_slice(&(phys | flags).to_le_bytes());
    }
    pages.push((KPDPT_PHYS, pdpt));
    pages.push((KPD_PHYS, pd));
    pages.push((KPT_PHYS, pt));
    pages
}

/// The PML4 entry every address space has in slot 511.
pub fn kernel_pml4_entry() -> u64 {
    KPDPT_PHYS | PTE_P | PTE_W | PTE_U
}

fn user_code() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: USER_CS,
        type_: 11,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    }
}

fn user_data() -> kvm_segment {
    kvm_segment {
        selector: USER_DS,
        type_: 3,
        db: 1,
        l: 0,
        ..user_code()
    }
}

/// True when the vCPU's CS and SS are the user ones (after a trap on real
/// KVM they are the kernel's and must be put back).
pub fn at_user_segments(s: &kvm_sregs) -> bool {
    s.cs.selector == USER_CS && s.ss.selector == USER_DS && s.cs.dpl == 3
}

/// Puts CPL-3 code and stack segments back.
pub fn set_user_segments(s: &mut kvm_sregs) {
    s.cs = user_code();
    s.ss = user_data();
}

/// Special registers for a Linux program at CPL 3 on vCPU `cpu`, with
/// page tables at `cr3`.
pub fn user_sregs(mut s: kvm_sregs, cr3: u64, cpu: usize) -> kvm_sregs {
    const CR0_PE: u64 = 1;
    const CR0_MP: u64 = 1 << 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_NE: u64 = 1 << 5;
    const CR0_WP: u64 = 1 << 16;
    const CR0_AM: u64 = 1 << 18;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const CR4_OSFXSR: u64 = 1 << 9;
    const CR4_OSXMMEXCPT: u64 = 1 << 10;
    const CR4_OSXSAVE: u64 = 1 << 18;
    const EFER_SCE: u64 = 1;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    const EFER_NXE: u64 = 1 << 11;
    set_user_segments(&mut s);
    let data = user_data();
    s.ds = data;
    s.es = data;
    s.fs = kvm_segment { base: 0, ..data };
    s.gs = kvm_segment { base: 0, ..data };
    s.tr = kvm_segment {
        base: KERNEL_VA + tss_phys(cpu),
        limit: TSS_LIMIT,
        selector: TSS_SEL + 16 * cpu as u16,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        ..Default::default()
    };
    s.gdt = kvm_dtable {
        base: KERNEL_VA + GDT_PHYS,
        limit: (GDT_ENTRIES * 8 - 1) as u16,
        ..Default::default()
    };
    s.idt = kvm_dtable {
        base: KERNEL_VA + IDT_PHYS,
        limit: 32 * 16 - 1,
        ..Default::default()
    };
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
    s.cr3 = cr3;
    s.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    s
}

/// The MSRs of the syscall entry, written once per vCPU.
pub fn syscall_msrs() -> Vec<(u32, u64)> {
    vec![
        // SYSCALL: CS 0x10, SS 0x18; SYSRET: CS 0x33, SS 0x2b.
        (
            MSR_STAR,
            ((USER32_CS as u64) << 48) | ((KERNEL_CS as u64) << 32),
        ),
        (MSR_LSTAR, syscall_entry()),
        (MSR_CSTAR, syscall_entry()),
        // Cleared on entry: TF, DF, IF, IOPL, NT, AC (as Linux).
        (MSR_SFMASK, 0x47700),
        (MSR_FS_BASE, 0),
        (MSR_GS_BASE, 0),
        (MSR_KERNEL_GS_BASE, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_block() -> Vec<u8> {
        crate::entry::block(&crate::entry::Clock::new(|| None, None))
    }

    #[test]
    fn the_tss_descriptor_encodes_its_base_and_limit() {
        let pages = kernel_pages(test_block());
        let gdt = &pages.iter().find(|(a, _)| *a == GDT_PHYS).unwrap().1;
        let lo = u64::from_le_bytes(gdt[64..72].try_into().unwrap());
        let hi = u64::from_le_bytes(gdt[72..80].try_into().unwrap());
        let base = ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
        assert_eq!(base, KERNEL_VA + TSS_PHYS);
        assert_eq!((lo & 0xffff) | ((lo >> 48) & 0xf) << 16, TSS_LIMIT as u64);
        // Every vCPU's TSS, its selector and its own kernel stack.
        let mut stacks = Vec::new();
        for cpu in 0..MAX_VCPUS {
            let s = user_sregs(kvm_sregs::default(), 0, cpu);
            let at = s.tr.selector as usize;
            let lo = u64::from_le_bytes(gdt[at..at + 8].try_into().unwrap());
            let hi = u64::from_le_bytes(gdt[at + 8..at + 16].try_into().unwrap());
            let base = ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | (hi << 32);
            assert_eq!(base, s.tr.base, "vCPU {cpu}");
            assert!(at + 16 <= s.gdt.limit as usize + 1);
            let tss = &pages
                .iter()
                .find(|(a, _)| *a == base - KERNEL_VA)
                .unwrap()
                .1;
            let rsp0 = u64::from_le_bytes(tss[4..12].try_into().unwrap());
            assert_eq!(rsp0, kernel_stack(cpu).end);
            stacks.push(kernel_stack(cpu));
        }
        for (i, a) in stacks.iter().enumerate() {
            for b in &stacks[i + 1..] {
                assert!(a.end <= b.start || b.end <= a.start, "{a:x?} {b:x?}");
            }
            assert!(a.end - KERNEL_VA <= FRAMES_START);
        }
    }

    #[test]
    fn only_the_syscall_port_is_open_to_user_code() {
        let pages = kernel_pages(test_block());
        let tss = &pages.iter().find(|(a, _)| *a == TSS_PHYS).unwrap().1;
        let bit = |port: usize| tss[0x68 + port / 8] >> (port % 8) & 1;
        assert_eq!(bit(SYSCALL_PORT as usize), 0);
        for port in [0x3f8, 0x80, 0xc0, 0xc0 + 14, 0xffff] {
            assert_eq!(bit(port), 1, "port {port:#x}");
        }
        assert_eq!(tss.len(), TSS_LIMIT as usize + 1);
        assert_eq!(*tss.last().unwrap(), 0xff);
    }

    #[test]
    fn only_the_syscall_page_is_user_accessible() {
        let pages = kernel_pages(test_block());
        let pt = &pages.iter().find(|(a, _)| *a == KPT_PHYS).unwrap().1;
        for i in 0..32 {
            let e = u64::from_le_bytes(pt[i * 8..][..8].try_into().unwrap());
            let user = e & PTE_U != 0;
            assert_eq!(user, i as u64 * 4096 == SYSCALL_PAGE_PHYS, "page {i}");
        }
    }
}
