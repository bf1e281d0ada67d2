//! Puts everything the guest needs into its memory before the first
//! instruction: page tables, the guest runtime ELF, the module, BootInfo,
//! and the clock and seed pages.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use flint_abi::layout::{
    Placement, BOOT_INFO_ADDR, CLOCK_PAGE_ADDR, GUEST_IMAGE_MAX, GUEST_LOAD_ADDR, MMIO_BASE,
    SEED_PAGE_ADDR,
};
use flint_abi::{BootInfo, ClockPage, SeedPage, ABI_VERSION, BOOT_MAGIC};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::page_tables;

/// The guest runtime, built by build.rs for x86_64-unknown-none.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("FLINT_GUEST_ELF"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("creating the in-memory file for the guest image failed")]
    Memfd(#[source] std::io::Error),
    #[error("loading the guest runtime ELF failed")]
    Elf(#[source] linux_loader::loader::Error),
    #[error("the guest runtime image ends at {0:#x}, past its {GUEST_IMAGE_MAX:#x}-byte slot")]
    ImageTooLarge(u64),
    #[error("writing guest memory at {0:#x} failed")]
    Write(u64, #[source] vm_memory::GuestMemoryError),
}

/// An anonymous in-memory file holding `bytes` (linux-loader reads from a
/// seekable file).
fn memfd_with(bytes: &[u8]) -> Result<File, LoadError> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the returned fd
    // is checked and then owned by the File.
    let fd = unsafe { libc::memfd_create(c"flint-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(LoadError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes).map_err(LoadError::Memfd)?;
    Ok(file)
}

/// The built-in guest runtime, in one memfd per process, shared under a lock
/// (for its file offset).
fn builtin_image() -> Result<&'static Mutex<File>, LoadError> {
    static FILE: OnceLock<Mutex<File>> = OnceLock::new();
    if let Some(f) = FILE.get() {
        return Ok(f);
    }
    let file = memfd_with(GUEST_ELF)?;
    Ok(FILE.get_or_init(|| Mutex::new(file)))
}

/// Where the guest image went.
#[derive(Debug, Clone, Copy)]
pub struct LoadedGuest {
    pub entry: u64,
    /// First byte past the image.
    pub end: u64,
}

/// Loads the guest (the built-in runtime unless `custom` is given).
pub fn load_guest(mem: &GuestMemoryMmap, custom: Option<&[u8]>) -> Result<LoadedGuest, LoadError> {
    let load = |file: &mut File| {
        Elf::load(mem, None, file, Some(GuestAddress(GUEST_LOAD_ADDR))).map_err(LoadError::Elf)
    };
    let result = match custom {
        Some(bytes) => load(&mut memfd_with(bytes)?)?,
        None => load(&mut builtin_image()?.lock().unwrap_or_else(|e| e.into_inner()))?,
    };
    if result.kernel_end > GUEST_LOAD_ADDR + GUEST_IMAGE_MAX {
        return Err(LoadError::ImageTooLarge(result.kernel_end));
    }
    Ok(LoadedGuest {
        entry: result.kernel_load.0,
        end: result.kernel_end,
    })
}

fn write(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), LoadError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| LoadError::Write(addr, e))
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: only used with the ABI's #[repr(C)] structs of plain integers
    // (no padding holes are read as uninitialised: each is fully written).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Writes page tables, the module and BootInfo (with `flags`, the
/// `BootInfo::flags`).
pub fn load_module(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    placement: &Placement,
    module: &[u8],
    flags: u64,
) -> Result<(), LoadError> {
    for (addr, table) in page_tables(mem_size) {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        write(mem, addr, &bytes)?;
    }
    write(mem, placement.module_addr, module)?;
    let boot = BootInfo {
        magic: BOOT_MAGIC,
        abi_version: ABI_VERSION,
        channel_index: 0,
        mem_size,
        module_addr: placement.module_addr,
        module_len: module.len() as u64,
        heap_start: placement.heap_start,
        heap_end: placement.heap_end,
        stack_top: placement.stack_top,
        mmio_base: MMIO_BASE,
        flags,
    };
    write(mem, BOOT_INFO_ADDR, as_bytes(&boot))
}

/// Writes the clock page: the guest's TSC `guest_tsc` corresponds to now.
pub fn write_clock(
    mem: &GuestMemoryMmap,
    generation: u64,
    guest_tsc: u64,
    tsc_khz: u64,
) -> Result<(), LoadError> {
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let page = ClockPage {
        generation,
        wall_ns,
        tsc_base: guest_tsc,
        tsc_khz,
    };
    write(mem, CLOCK_PAGE_ADDR, as_bytes(&page))
}

/// The generation of the seed page (the clock page shares it).
pub fn read_generation(mem: &GuestMemoryMmap) -> u64 {
    mem.read_obj::<u64>(GuestAddress(SEED_PAGE_ADDR))
        .unwrap_or(0)
}

/// Writes a fresh random seed.
pub fn write_seed(mem: &GuestMemoryMmap, generation: u64) -> Result<(), LoadError> {
    let mut seed = [0u8; 32];
    fill_random(&mut seed);
    write(
        mem,
        SEED_PAGE_ADDR,
        as_bytes(&SeedPage { generation, seed }),
    )
}

fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `buf.len() - filled` bytes into `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// The host TSC frequency in kHz, measured once (used when KVM does not
/// report the guest's; without TSC scaling they are the same).
pub fn host_tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(|| {
        let t0 = std::time::Instant::now();
        // SAFETY: rdtsc has no preconditions.
        let c0 = unsafe { core::arch::x86_64::_rdtsc() };
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: as above.
        let c1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = t0.elapsed().as_nanos().max(1) as u64;
        ((c1 - c0) as u128 * 1_000_000 / ns as u128) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_image_loads_at_its_slot() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let g = load_guest(&mem, None).unwrap();
        assert!((GUEST_LOAD_ADDR..GUEST_LOAD_ADDR + GUEST_IMAGE_MAX).contains(&g.entry));
        assert!(g.entry < g.end && g.end <= GUEST_LOAD_ADDR + GUEST_IMAGE_MAX);
    }

    #[test]
    fn boot_info_lands_where_the_guest_reads_it() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let p = flint_abi::layout::place(64 << 20, 0x60_0000, 3).unwrap();
        load_module(&mem, 64 << 20, &p, b"abc", 0).unwrap();
        let magic: u64 = mem.read_obj(GuestAddress(BOOT_INFO_ADDR)).unwrap();
        assert_eq!(magic, BOOT_MAGIC);
        let len: u64 = mem.read_obj(GuestAddress(BOOT_INFO_ADDR + 32)).unwrap();
        assert_eq!(len, 3);
        let mut m = [0u8; 3];
        mem.read_slice(&mut m, GuestAddress(0x60_0000)).unwrap();
        assert_eq!(&m, b"abc");
    }
}
