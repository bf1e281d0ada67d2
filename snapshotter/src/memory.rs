//! The memory file (`memory.bin`): guest-physical RAM from address 0, page
//! aligned, with holes (sparse file) where a page is all zeros.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

pub const PAGE: u64 = 4096;
/// Pages copied per write when saving.
const CHUNK_PAGES: u64 = 256;

/// Writes `mem` (of `size` bytes) to `file`, leaving holes for zero pages.
/// Returns how many pages hold data.
pub fn write(mem: &GuestMemoryMmap, size: u64, file: &mut File) -> std::io::Result<u64> {
    file.set_len(0)?;
    file.set_len(size)?;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE) as usize];
    let mut data_pages = 0;
    let mut at = 0u64;
    while at < size {
        let len = (size - at).min(CHUNK_PAGES * PAGE) as usize;
        mem.read_slice(&mut buf[..len], GuestAddress(at))
            .map_err(std::io::Error::other)?;
        for (i, page) in buf[..len].chunks(PAGE as usize).enumerate() {
            if page.iter().any(|b| *b != 0) {
                file.write_all_at(page, at + i as u64 * PAGE)?;
                data_pages += 1;
            }
        }
        at += len as u64;
    }
    file.flush()?;
    Ok(data_pages)
}

/// Which pages of the memory file hold data, from the file's extents
/// (SEEK_DATA / SEEK_HOLE), one bool per page.
pub fn data_map(file: &mut File, size: u64) -> std::io::Result<Vec<bool>> {
    let pages = size.div_ceil(PAGE) as usize;
    let mut map = vec![false; pages];
    let fd = file.as_raw_fd();
    let mut pos: i64 = 0;
    loop {
        // SAFETY: lseek on a file descriptor we own; no memory is touched.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= size {
            break; // ENXIO: no more data
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        for p in (data as u64 / PAGE)..end.div_ceil(PAGE) {
            map[p as usize] = true;
        }
        pos = end as i64;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(map)
}

/// Guest RAM as a private mapping of the memory file: pages are shared
/// through the page cache by every VM restored from it; writes copy.
pub fn map_private(file: File, size: u64) -> std::io::Result<GuestMemoryMmap> {
    let region = MmapRegion::build(
        Some(FileOffset::new(file, 0)),
        size as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_NORESERVE,
    )
    .map_err(std::io::Error::other)?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| std::io::Error::other("bad region"))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(std::io::Error::other)
}

/// Anonymous guest RAM (for the userfaultfd backend).
pub fn anonymous(size: u64) -> std::io::Result<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).map_err(std::io::Error::other)
}

/// A sealed memfd holding `file`'s data pages (the pages `data_map` marks)
/// at their offsets, `size` bytes long, holes left as holes. Sealed
/// against writes, shrinking, growing and further seals.
pub fn sealed_copy(
    file: &File,
    size: u64,
    data_map: &[bool],
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let name = c"flint-snapshot-memory";
    // SAFETY: memfd_create with a NUL-terminated name; the fd is ours.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let copy = unsafe { File::from_raw_fd(fd) };
    copy.set_len(size)?;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE) as usize];
    let mut page = 0usize;
    while page < data_map.len() {
        if !data_map[page] {
            page += 1;
            continue;
        }
        let run = data_map[page..]
            .iter()
            .take(CHUNK_PAGES as usize)
            .take_while(|d| **d)
            .count();
        let at = page as u64 * PAGE;
        let len = (run as u64 * PAGE).min(size - at) as usize;
        file.read_exact_at(&mut buf[..len], at)?;
        copy.write_all_at(&buf[..len], at)?;
        page += run;
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on the memfd we own.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(copy.into())
}
