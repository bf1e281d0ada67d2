//! The vDSO Flint maps into every program (`AT_SYSINFO_EHDR`): the time
//! functions glibc, musl and Go look up there (`__vdso_clock_gettime`,
//! `__vdso_gettimeofday`, `__vdso_time`, version `LINUX_2.6`, as Linux's
//! x86-64 vDSO exports them), answered from the TSC with no system call
//! and no exit, on PVM and on real KVM alike. (`getcpu` is left to the
//! system call: only the VMM knows which vCPU a thread is on.)
//! A clock they do not serve, or a time zone, falls back to the
//! `syscall` instruction, as Linux's vDSO does.
//!
//! The code is assembled with the VMM (below); the ELF shared object
//! around it (dynamic symbols, hash table, version definitions) is built
//! with the `object` crate once per process, and each VM's copy gets its
//! clock's constants (`crate::entry::Clock`) in the data words after the
//! code. The image is read-only and executable in the guest.

use std::sync::OnceLock;

use object::build::elf::{Builder, Dynamic, SectionData, VersionData, VersionDef};
use object::{elf, Endianness};

use crate::entry::Clock;

core::arch::global_asm!(
    ".pushsection .rodata.flint_vdso,\"a\"",
    // RAX = nanoseconds on the monotonic clock, from the TSC (clobbers
    // RDX): (tsc - tsc_base) * mult >> 32.
    ".macro flint_vdso_mono_ns",
    "rdtsc",
    "shl rdx, 32",
    "or rax, rdx",
    "sub rax, qword ptr [rip + flint_vdso_tsc_base]",
    "mul qword ptr [rip + flint_vdso_mult]",
    "shrd rax, rdx, 32",
    ".endm",
    ".balign 16",
    ".globl flint_vdso_start",
    "flint_vdso_start:",
    // int clock_gettime(clockid_t clock: edi, struct timespec *ts: rsi)
    ".globl flint_vdso_clock_gettime",
    "flint_vdso_clock_gettime:",
    "cmp edi, 7",
    "ja 9f",
    "mov eax, 0xf3",
    "bt eax, edi",
    "jnc 9f",
    "flint_vdso_mono_ns",
    "test edi, edi",
    "je 2f",
    "cmp edi, 5",
    "jne 3f",
    "2:",
    "add rax, qword ptr [rip + flint_vdso_wall_base]",
    "3:",
    "xor edx, edx",
    "div qword ptr [rip + flint_vdso_billion]",
    "mov qword ptr [rsi], rax",
    "mov qword ptr [rsi + 8], rdx",
    "xor eax, eax",
    "ret",
    "9:",
    "mov eax, 228",
    "syscall",
    "ret",
    ".globl flint_vdso_gettimeofday",
    // int gettimeofday(struct timeval *tv: rdi, struct timezone *tz: rsi)
    "flint_vdso_gettimeofday:",
    "test rsi, rsi",
    "jne 9f",
    "test rdi, rdi",
    "je 8f",
    "flint_vdso_mono_ns",
    "add rax, qword ptr [rip + flint_vdso_wall_base]",
    "xor edx, edx",
    "div qword ptr [rip + flint_vdso_billion]",
    "mov qword ptr [rdi], rax",
    "mov rax, rdx",
    "xor edx, edx",
    "div qword ptr [rip + flint_vdso_thousand]",
    "mov qword ptr [rdi + 8], rax",
    "8:",
    "xor eax, eax",
    "ret",
    "9:",
    "mov eax, 96",
    "syscall",
    "ret",
    // time_t time(time_t *t: rdi)
    ".globl flint_vdso_time",
    "flint_vdso_time:",
    "flint_vdso_mono_ns",
    "add rax, qword ptr [rip + flint_vdso_wall_base]",
    "xor edx, edx",
    "div qword ptr [rip + flint_vdso_billion]",
    "test rdi, rdi",
    "je 2f",
    "mov qword ptr [rdi], rax",
    "2:",
    "ret",
    ".globl flint_vdso_code_end",
    "flint_vdso_code_end:",
    ".balign 8",
    ".globl flint_vdso_tsc_base",
    "flint_vdso_tsc_base: .quad 0",
    ".globl flint_vdso_mult",
    "flint_vdso_mult: .quad 0",
    ".globl flint_vdso_wall_base",
    "flint_vdso_wall_base: .quad 0",
    "flint_vdso_billion: .quad 1000000000",
    "flint_vdso_thousand: .quad 1000",
    ".globl flint_vdso_end",
    "flint_vdso_end:",
    ".popsection",
);

extern "C" {
    static flint_vdso_start: u8;
    static flint_vdso_clock_gettime: u8;
    static flint_vdso_gettimeofday: u8;
    static flint_vdso_time: u8;
    static flint_vdso_code_end: u8;
    static flint_vdso_tsc_base: u8;
    static flint_vdso_mult: u8;
    static flint_vdso_wall_base: u8;
    static flint_vdso_end: u8;
}

/// Offset of a label in the code block.
fn off(p: *const u8) -> u64 {
    (p as usize - std::ptr::addr_of!(flint_vdso_start) as usize) as u64
}

/// The code block's bytes.
fn code() -> &'static [u8] {
    let len = off(std::ptr::addr_of!(flint_vdso_end)) as usize;
    // SAFETY: the block is `len` bytes of read-only data from the label
    // `flint_vdso_start` on.
    unsafe { std::slice::from_raw_parts(std::ptr::addr_of!(flint_vdso_start), len) }
}

/// The ELF image with zero constants, and where the code starts in it.
struct Template {
    image: Vec<u8>,
    text: u64,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| build().expect("the vDSO's ELF image builds"))
}

fn build() -> object::build::Result<Template> {
    let mut b = Builder::new(Endianness::Little, true);
    b.header.e_type = elf::ET_DYN;
    b.header.e_machine = elf::EM_X86_64;
    b.header.os_abi = elf::ELFOSABI_SYSV;
    b.header.e_phoff = b.file_header_size();
    b.load_align = 4096;
    b.hash_bucket_count = 4;

    let section = |b: &mut Builder<'static>, name: &'static [u8], ty, flags, align, data| {
        let s = b.sections.add();
        s.name = name.into();
        s.sh_type = ty;
        s.sh_flags = flags;
        s.sh_addralign = align;
        s.data = data;
        s.id()
    };
    let alloc = elf::SHF_ALLOC;
    let hash = section(&mut b, b".hash", elf::SHT_HASH, alloc, 8, SectionData::Hash);
    let dynsym = section(
        &mut b,
        b".dynsym",
        elf::SHT_DYNSYM,
        alloc,
        8,
        SectionData::DynamicSymbol,
    );
    let dynstr = section(
        &mut b,
        b".dynstr",
        elf::SHT_STRTAB,
        alloc,
        1,
        SectionData::DynamicString,
    );
    let versym = section(
        &mut b,
        b".gnu.version",
        elf::SHT_GNU_VERSYM,
        alloc,
        2,
        SectionData::GnuVersym,
    );
    let verdef = section(
        &mut b,
        b".gnu.version_d",
        elf::SHT_GNU_VERDEF,
        alloc,
        8,
        SectionData::GnuVerdef,
    );
    let text = section(
        &mut b,
        b".text",
        elf::SHT_PROGBITS,
        alloc | elf::SHF_EXECINSTR,
        16,
        SectionData::Data(code().into()),
    );
    let dynamic = section(
        &mut b,
        b".dynamic",
        elf::SHT_DYNAMIC,
        alloc | elf::SHF_WRITE,
        8,
        SectionData::Dynamic(vec![
            Dynamic::String {
                tag: elf::DT_SONAME,
                val: b"linux-vdso.so.1"[..].into(),
            },
            Dynamic::Auto { tag: elf::DT_HASH },
            Dynamic::Auto {
                tag: elf::DT_STRTAB,
            },
            Dynamic::Auto {
                tag: elf::DT_SYMTAB,
            },
            Dynamic::Auto { tag: elf::DT_STRSZ },
            Dynamic::Integer {
                tag: elf::DT_SYMENT,
                val: 24,
            },
            Dynamic::Auto {
                tag: elf::DT_VERSYM,
            },
            Dynamic::Auto {
                tag: elf::DT_VERDEF,
            },
            Dynamic::Auto {
                tag: elf::DT_VERDEFNUM,
            },
        ]),
    );
    section(
        &mut b,
        b".shstrtab",
        elf::SHT_STRTAB,
        elf::SectionFlags(0),
        1,
        SectionData::SectionString,
    );
    b.sections.get_mut(dynsym).sh_link_section = Some(dynstr);
    b.sections.get_mut(versym).sh_link_section = Some(dynsym);
    b.sections.get_mut(verdef).sh_link_section = Some(dynstr);
    b.sections.get_mut(hash).sh_link_section = Some(dynsym);
    b.sections.get_mut(dynamic).sh_link_section = Some(dynstr);

    b.version_base = Some(b"linux-vdso.so.1"[..].into());
    let version = b.versions.add(VersionData::Def(VersionDef {
        names: vec![b"LINUX_2.6"[..].into()],
        flags: elf::VersionFlags(0),
    }));
    let functions: [(&[u8], u64, u64); 3] = [
        (
            b"clock_gettime",
            off(std::ptr::addr_of!(flint_vdso_clock_gettime)),
            off(std::ptr::addr_of!(flint_vdso_gettimeofday)),
        ),
        (
            b"gettimeofday",
            off(std::ptr::addr_of!(flint_vdso_gettimeofday)),
            off(std::ptr::addr_of!(flint_vdso_time)),
        ),
        (
            b"time",
            off(std::ptr::addr_of!(flint_vdso_time)),
            off(std::ptr::addr_of!(flint_vdso_code_end)),
        ),
    ];

    // One PT_LOAD from offset 0 (the loader reads the headers from
    // memory), and PT_DYNAMIC.
    let load = b.segments.add().id();
    let dyn_seg = b.segments.add().id();
    // Symbols go in before sizes are set (they size .dynsym and .dynstr).
    b.dynamic_symbols.add(); // the null symbol
    let mut syms = Vec::new();
    for (name, start, end) in functions {
        for prefixed in [true, false] {
            let s = b.dynamic_symbols.add();
            s.name = if prefixed {
                [b"__vdso_".as_slice(), name].concat().into()
            } else {
                name.to_vec().into()
            };
            let bind = if prefixed {
                elf::STB_GLOBAL
            } else {
                elf::STB_WEAK
            };
            s.set_st_info(bind, elf::STT_FUNC);
            s.section = Some(text);
            s.st_size = end - start;
            s.version = version;
            syms.push((s.id(), start));
        }
    }
    b.set_section_sizes();
    let headers = b.file_header_size() + b.program_headers_size();
    {
        let seg = b.segments.get_mut(load);
        seg.p_type = elf::PT_LOAD;
        seg.p_flags = elf::PF_R | elf::PF_X;
        seg.p_align = 4096;
        seg.p_offset = 0;
        seg.p_vaddr = 0;
        seg.p_paddr = 0;
        seg.p_filesz = headers;
        seg.p_memsz = headers;
    }
    for id in [hash, dynsym, dynstr, versym, verdef, text, dynamic] {
        b.segments
            .get_mut(load)
            .append_section(b.sections.get_mut(id));
    }
    {
        let d = b.sections.get(dynamic);
        let (off, addr, size) = (d.sh_offset, d.sh_addr, d.sh_size);
        let seg = b.segments.get_mut(dyn_seg);
        seg.p_type = elf::PT_DYNAMIC;
        seg.p_flags = elf::PF_R;
        seg.p_align = 8;
        seg.p_offset = off;
        seg.p_vaddr = addr;
        seg.p_paddr = addr;
        seg.p_filesz = size;
        seg.p_memsz = size;
        seg.sections.push(dynamic);
    }
    let text_addr = b.sections.get(text).sh_addr;
    for (id, start) in syms {
        b.dynamic_symbols.get_mut(id).st_value = text_addr + start;
    }
    let mut image = Vec::new();
    b.write(&mut image)?;
    Ok(Template {
        image,
        text: text_addr,
    })
}

/// The vDSO image for a VM whose clock is `clock`.
pub fn image(clock: &Clock) -> Vec<u8> {
    let t = template();
    let mut image = t.image.clone();
    let (tsc_base, mult, wall_base) = clock.constants();
    for (label, value) in [
        (std::ptr::addr_of!(flint_vdso_tsc_base), tsc_base),
        (std::ptr::addr_of!(flint_vdso_mult), mult),
        (std::ptr::addr_of!(flint_vdso_wall_base), wall_base),
    ] {
        let at = (t.text + off(label)) as usize;
        image[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_exports_linuxs_vdso_symbols_at_the_code() {
        let clock = Clock::new(|| Some(42), Some(1_000_000));
        let img = image(&clock);
        let elf = goblin::elf::Elf::parse(&img).expect("a valid ELF");
        assert_eq!(elf.header.e_type, goblin::elf::header::ET_DYN);
        assert_eq!(elf.soname, Some("linux-vdso.so.1"));
        let load = &elf.program_headers[0];
        assert_eq!((load.p_type, load.p_offset, load.p_vaddr), (1, 0, 0));
        assert!(load.p_filesz as usize <= img.len());
        let versym = elf.versym.as_ref().expect("symbol versions");
        let verdef = elf.verdef.as_ref().expect("version definitions");
        let names: Vec<String> = verdef
            .iter()
            .flat_map(|d| {
                d.iter()
                    .map(|a| elf.dynstrtab[a.vda_name].to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(names.contains(&"LINUX_2.6".to_string()), "{names:?}");
        let want = [
            (
                "__vdso_clock_gettime",
                std::ptr::addr_of!(flint_vdso_clock_gettime),
            ),
            (
                "__vdso_gettimeofday",
                std::ptr::addr_of!(flint_vdso_gettimeofday),
            ),
            ("__vdso_time", std::ptr::addr_of!(flint_vdso_time)),
        ];
        for (name, label) in want {
            let (i, sym) = elf
                .dynsyms
                .iter()
                .enumerate()
                .find(|(_, s)| &elf.dynstrtab[s.st_name] == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(sym.st_type(), goblin::elf::sym::STT_FUNC);
            assert_eq!(versym.get_at(i).unwrap().version(), 2, "{name}: LINUX_2.6");
            let at = sym.st_value as usize;
            let code = &code()[off(label) as usize..];
            assert_eq!(&img[at..at + 16], &code[..16], "{name}");
        }
        // The clock's constants are in the copy.
        let text = template().text as usize;
        let word = |label| {
            let at = text + off(label) as usize;
            u64::from_le_bytes(img[at..at + 8].try_into().unwrap())
        };
        assert_eq!(word(std::ptr::addr_of!(flint_vdso_tsc_base)), 42);
        assert_eq!(word(std::ptr::addr_of!(flint_vdso_mult)), 1 << 32);
    }
}
