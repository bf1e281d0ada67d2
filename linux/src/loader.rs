//! Loading an ELF program into an address space, as Linux's `binfmt_elf`
//! does: its `PT_LOAD` segments (at their addresses, or at a load bias for
//! a PIE), its interpreter (`PT_INTERP`, ld.so from the root filesystem)
//! if it has one, and the initial stack (argc, argv, envp, auxv).

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use goblin::elf::header::{Header, EM_X86_64, ET_DYN, ET_EXEC};
use goblin::elf::program_header::{ProgramHeader, PF_R, PF_W, PF_X, PT_INTERP, PT_LOAD, PT_PHDR};

use crate::mm::space::Released;
use crate::mm::{
    page_down, page_up, AddressSpace, Backing, Frames, Vma, PAGE, PROT_EXEC, PROT_READ, PROT_WRITE,
    USER_END,
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not an x86-64 ELF program ({0})")]
    WrongKind(&'static str),
    #[error("the ELF headers are malformed: {0}")]
    Malformed(&'static str),
    #[error("reading the program failed")]
    Io(#[source] std::io::Error),
    #[error("the program does not fit in guest memory")]
    NoMemory,
    #[error("the interpreter {0:?} cannot be opened")]
    Interpreter(String, #[source] std::io::Error),
}

/// The parts of an ELF image the loader needs.
#[derive(Debug)]
struct Image {
    header: Header,
    phdrs: Vec<ProgramHeader>,
    interp: Option<Vec<u8>>,
}

/// Bytes read from the start of a file to find its headers.
const HEAD: usize = 64 * 1024;

fn pread(fd: &OwnedFd, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    // SAFETY: reads into `buf`, which is valid for `buf.len()` bytes.
    let n = unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            off as i64,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// True when `head` starts with the ELF magic.
pub fn is_elf(head: &[u8]) -> bool {
    head.starts_with(b"\x7fELF")
}

fn parse(fd: &OwnedFd) -> Result<Image, LoadError> {
    let mut head = vec![0u8; HEAD];
    let n = pread(fd, &mut head, 0).map_err(LoadError::Io)?;
    head.truncate(n);
    if !is_elf(&head) {
        return Err(LoadError::NotElf);
    }
    if head.len() < 64 {
        return Err(LoadError::Malformed(
            "the file is shorter than an ELF header",
        ));
    }
    let header = goblin::elf::Elf::parse_header(&head)
        .map_err(|_| LoadError::Malformed("bad ELF header"))?;
    if header.e_ident[4] != 2 {
        return Err(LoadError::WrongKind("32-bit"));
    }
    if header.e_machine != EM_X86_64 {
        return Err(LoadError::WrongKind("another machine"));
    }
    if header.e_type != ET_EXEC && header.e_type != ET_DYN {
        return Err(LoadError::WrongKind("not an executable"));
    }
    if header.e_phentsize as usize != 56 || header.e_phnum == 0 || header.e_phnum > 256 {
        return Err(LoadError::Malformed("bad program header table"));
    }
    let ph_end = header.e_phoff.checked_add(56 * header.e_phnum as u64);
    if ph_end.is_none_or(|e| e > head.len() as u64) {
        return Err(LoadError::Malformed(
            "the program headers are not near the start",
        ));
    }
    let ctx = goblin::container::Ctx::new(
        goblin::container::Container::Big,
        goblin::container::Endian::Little,
    );
    let phdrs = ProgramHeader::parse(&head, header.e_phoff as usize, header.e_phnum as usize, ctx)
        .map_err(|_| LoadError::Malformed("bad program header"))?;
    let mut interp = None;
    for ph in &phdrs {
        if ph.p_type == PT_INTERP {
            if ph.p_filesz == 0 || ph.p_filesz > 4096 {
                return Err(LoadError::Malformed("bad PT_INTERP"));
            }
            let mut path = vec![0u8; ph.p_filesz as usize];
            let n = pread(fd, &mut path, ph.p_offset).map_err(LoadError::Io)?;
            path.truncate(n);
            if let Some(z) = path.iter().position(|&b| b == 0) {
                path.truncate(z);
            }
            interp = Some(path);
        }
        if ph.p_type == PT_LOAD {
            let ok = ph
                .p_vaddr
                .checked_add(ph.p_memsz)
                .is_some_and(|e| e < USER_END)
                && ph.p_filesz <= ph.p_memsz
                && (ph.p_align <= 1 || ph.p_vaddr % PAGE == ph.p_offset % PAGE);
            if !ok {
                return Err(LoadError::Malformed("a PT_LOAD segment is out of range"));
            }
        }
    }
    if !phdrs.iter().any(|p| p.p_type == PT_LOAD) {
        return Err(LoadError::Malformed("no PT_LOAD segment"));
    }
    Ok(Image {
        header,
        phdrs,
        interp,
    })
}

/// Checks an ELF file's headers as `execve` would before loading it
/// (for fuzzing the parser of hostile programs): `Ok` when it could load.
pub fn check(bytes: &[u8]) -> Result<(), LoadError> {
    let mut f = tempfile_in_memory(bytes).map_err(LoadError::Io)?;
    let _ = &mut f;
    parse(&f).map(|_| ())
}

/// An fd holding `bytes` (a memfd), for [`check`].
fn tempfile_in_memory(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the fd is ours.
    let fd = unsafe { libc::memfd_create(c"flint-elf-check".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nobody else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    Ok(f.into())
}

/// Where an image went.
#[derive(Debug, Clone, Copy)]
struct Loaded {
    bias: u64,
    entry: u64,
    phdr: u64,
    phnum: u64,
    end: u64,
}

fn prot_of(flags: u32) -> u32 {
    let mut p = 0;
    if flags & PF_R != 0 {
        p |= PROT_READ;
    }
    if flags & PF_W != 0 {
        p |= PROT_WRITE;
    }
    if flags & PF_X != 0 {
        p |= PROT_EXEC;
    }
    p
}

fn load_image(
    mm: &mut AddressSpace,
    frames: &mut Frames,
    fd: &Rc<OwnedFd>,
    img: &Image,
    name: &str,
    dyn_base: u64,
) -> Result<Loaded, LoadError> {
    let loads: Vec<&ProgramHeader> = img.phdrs.iter().filter(|p| p.p_type == PT_LOAD).collect();
    let lo = page_down(loads.iter().map(|p| p.p_vaddr).min().unwrap_or(0));
    let hi = loads
        .iter()
        .map(|p| p.p_vaddr + p.p_memsz)
        .max()
        .and_then(page_up)
        .ok_or(LoadError::Malformed("segment end"))?;
    let bias = if img.header.e_type == ET_DYN {
        let base = if dyn_base == 0 {
            mm.find_free(hi - lo).ok_or(LoadError::NoMemory)?
        } else {
            dyn_base
        };
        base - lo
    } else {
        0
    };
    if !mm.is_free(lo + bias, hi + bias) {
        return Err(LoadError::Malformed("segments overlap other mappings"));
    }
    let name: Rc<str> = name.into();
    let file_len = {
        // SAFETY: fstat writes a stat struct into `st`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(LoadError::Io(std::io::Error::last_os_error()));
        }
        st.st_size as u64
    };
    let mut released = Released::default();
    for ph in &loads {
        let start = page_down(ph.p_vaddr) + bias;
        let file_end = ph.p_vaddr + ph.p_filesz;
        let file_page_end = page_up(file_end).ok_or(LoadError::Malformed("segment end"))? + bias;
        let end =
            page_up(ph.p_vaddr + ph.p_memsz).ok_or(LoadError::Malformed("segment end"))? + bias;
        let prot = prot_of(ph.p_flags);
        let in_page = ph.p_vaddr - page_down(ph.p_vaddr);
        if ph.p_filesz > 0 {
            let vma = Vma {
                end: file_page_end.max(start + PAGE),
                prot,
                shared: false,
                backing: Backing::File {
                    fd: fd.clone(),
                    offset: ph.p_offset - in_page,
                    // Bytes past the segment's file part read as zeros.
                    file_len: (ph.p_offset + ph.p_filesz).min(file_len),
                },
                name: name.clone(),
            };
            let vend = vma.end;
            mm.insert(frames, start, vma, &mut released)
                .map_err(|_| LoadError::NoMemory)?;
            mm.populate_range(frames, start, vend)
                .map_err(|_| LoadError::NoMemory)?;
        }
        let anon_start = if ph.p_filesz > 0 {
            file_page_end.max(start + PAGE)
        } else {
            start
        };
        if end > anon_start {
            let vma = Vma {
                end,
                prot,
                shared: false,
                backing: Backing::Anon,
                name: name.clone(),
            };
            mm.insert(frames, anon_start, vma, &mut released)
                .map_err(|_| LoadError::NoMemory)?;
        }
    }
    let phdr = img
        .phdrs
        .iter()
        .find(|p| p.p_type == PT_PHDR)
        .map(|p| p.p_vaddr)
        .or_else(|| {
            loads
                .iter()
                .find(|p| p.p_offset == 0)
                .map(|p| p.p_vaddr + img.header.e_phoff)
        })
        .unwrap_or(0)
        + bias;
    Ok(Loaded {
        bias,
        entry: img.header.e_entry + bias,
        phdr,
        phnum: img.header.e_phnum as u64,
        end: hi + bias,
    })
}

/// What `execve` needs to start the program.
#[derive(Debug)]
pub struct Start {
    pub entry: u64,
    pub stack: u64,
}

/// What the loader asks of the file system: the interpreter, opened.
pub trait OpenInterp {
    fn open_interp(&mut self, path: &[u8]) -> std::io::Result<OwnedFd>;
}

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_EXECFN: u64 = 31;
const AT_SYSINFO_EHDR: u64 = 33;
const AT_MINSIGSTKSZ: u64 = 51;

/// Stack size reserved for the main thread.
pub const STACK_SIZE: u64 = 8 << 20;
/// Stack populated at exec.
const STACK_EAGER: u64 = 128 << 10;

/// Loads `fd` (the program, named `path` for `AT_EXECFN` and the maps)
/// into `mm` with `argv` and `envp`. `random` fills `AT_RANDOM`; `vdso`
/// (`crate::vdso`) is mapped read-only and executable as `[vdso]` and
/// named by `AT_SYSINFO_EHDR` (none if empty).
#[allow(clippy::too_many_arguments)]
pub fn load(
    mm: &mut AddressSpace,
    frames: &mut Frames,
    fd: OwnedFd,
    path: &str,
    argv: &[Vec<u8>],
    envp: &[Vec<u8>],
    random: [u8; 16],
    vdso: &[u8],
    fs: &mut dyn OpenInterp,
) -> Result<Start, LoadError> {
    let img = parse(&fd)?;
    let fd = Rc::new(fd);
    let main = load_image(mm, frames, &fd, &img, path, 0x5555_5555_4000)?;
    let mut entry = main.entry;
    let mut interp_base = 0;
    if let Some(ipath) = &img.interp {
        let ifd = fs
            .open_interp(ipath)
            .map_err(|e| LoadError::Interpreter(String::from_utf8_lossy(ipath).into(), e))?;
        let iimg = parse(&ifd)?;
        if iimg.interp.is_some() {
            return Err(LoadError::Malformed("the interpreter has an interpreter"));
        }
        let ifd = Rc::new(ifd);
        let iname = String::from_utf8_lossy(ipath).into_owned();
        let l = load_image(mm, frames, &ifd, &iimg, &iname, 0)?;
        interp_base = l.bias;
        entry = l.entry;
    }
    // The heap starts after the program (page aligned).
    mm.brk_start = page_up(main.end).ok_or(LoadError::NoMemory)?;
    mm.brk = mm.brk_start;

    // The stack.
    let top = USER_END;
    let mut released = Released::default();
    mm.insert(
        frames,
        top - STACK_SIZE,
        Vma {
            end: top,
            prot: PROT_READ | PROT_WRITE,
            shared: false,
            backing: Backing::Anon,
            name: "[stack]".into(),
        },
        &mut released,
    )
    .map_err(|_| LoadError::NoMemory)?;
    mm.populate_range(frames, top - STACK_EAGER, top)
        .map_err(|_| LoadError::NoMemory)?;
    mm.mmap_top = top - STACK_SIZE - (1 << 30);
    let mut vdso_at = 0;
    if !vdso.is_empty() {
        let len = page_up(vdso.len() as u64).ok_or(LoadError::NoMemory)?;
        let at = mm.mmap_top - len;
        mm.insert(
            frames,
            at,
            Vma {
                end: at + len,
                prot: PROT_READ | PROT_EXEC,
                shared: false,
                backing: Backing::Anon,
                name: "[vdso]".into(),
            },
            &mut released,
        )
        .map_err(|_| LoadError::NoMemory)?;
        mm.write_force(frames, at, vdso)
            .map_err(|_| LoadError::NoMemory)?;
        mm.mmap_top = at - PAGE;
        vdso_at = at;
    }

    // Strings at the top: execfn, platform, random bytes, env, args.
    let mut sp = top;
    let mut push_bytes =
        |mm: &mut AddressSpace, frames: &mut Frames, b: &[u8]| -> Result<u64, LoadError> {
            sp -= b.len() as u64 + 1;
            let mut v = b.to_vec();
            v.push(0);
            mm.write_force(frames, sp, &v)
                .map_err(|_| LoadError::NoMemory)?;
            Ok(sp)
        };
    let execfn = push_bytes(mm, frames, path.as_bytes())?;
    let platform = push_bytes(mm, frames, b"x86_64")?;
    let mut envs = Vec::new();
    for e in envp.iter().rev() {
        envs.push(push_bytes(mm, frames, e)?);
    }
    envs.reverse();
    let mut args = Vec::new();
    for a in argv.iter().rev() {
        args.push(push_bytes(mm, frames, a)?);
    }
    args.reverse();
    sp &= !15;
    sp -= 16;
    let rand_at = sp;
    mm.write_force(frames, rand_at, &random)
        .map_err(|_| LoadError::NoMemory)?;

    let hwcap = {
        // CPUID leaf 1 EDX, as Linux reports AT_HWCAP.
        let r = std::arch::x86_64::__cpuid(1);
        r.edx as u64
    };
    let mut auxv: Vec<(u64, u64)> = vec![
        (AT_PHDR, main.phdr),
        (AT_PHENT, 56),
        (AT_PHNUM, main.phnum),
        (AT_PAGESZ, PAGE),
        (AT_BASE, interp_base),
        (AT_FLAGS, 0),
        (AT_ENTRY, main.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_SECURE, 0),
        (AT_RANDOM, rand_at),
        (AT_HWCAP, hwcap),
        (AT_HWCAP2, 0),
        (AT_CLKTCK, 100),
        (AT_PLATFORM, platform),
        (AT_EXECFN, execfn),
        (AT_MINSIGSTKSZ, 2048),
    ];
    if vdso_at != 0 {
        auxv.push((AT_SYSINFO_EHDR, vdso_at));
    }
    auxv.push((AT_NULL, 0));
    let words = 1 + args.len() + 1 + envs.len() + 1 + auxv.len() * 2;
    sp -= words as u64 * 8;
    sp &= !15;
    let mut table: Vec<u64> = Vec::with_capacity(words);
    table.push(args.len() as u64);
    table.extend(&args);
    table.push(0);
    table.extend(&envs);
    table.push(0);
    for (k, v) in auxv {
        table.push(k);
        table.push(v);
    }
    let bytes: Vec<u8> = table.iter().flat_map(|w| w.to_le_bytes()).collect();
    mm.write_force(frames, sp, &bytes)
        .map_err(|_| LoadError::NoMemory)?;
    Ok(Start { entry, stack: sp })
}
