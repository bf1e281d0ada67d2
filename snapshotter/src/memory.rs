//! The memory file (`memory.bin`): guest-physical RAM from address 0, page
//! aligned, with holes (sparse file) where a page is all zeros.
//!
//! The state file lists the pages that hold data, each with the CRC-32 of
//! its contents ([`DataPage`]); every other page is zero. Whoever takes a
//! page from the memory file checks it against that list ([`PageSums`]):
//! the userfaultfd handler page by page as it serves them, the sealed copy
//! as it copies, a private mapping of the file before the VM runs.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const PAGE: u64 = 4096;
/// Pages copied per write when saving.
const CHUNK_PAGES: u64 = 256;

/// A page of the memory file that holds data, and the CRC-32 of its
/// 4096 bytes, as the state file lists them (in increasing page order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPage {
    pub index: u32,
    pub crc: u32,
}

fn crc32(page: &[u8]) -> u32 {
    crc32fast::hash(page)
}

/// A page of guest memory whose contents are not the snapshot's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("page {page} (guest address {addr:#x}) does not match the snapshot's checksum", addr = page * PAGE)]
pub struct CorruptPage {
    pub page: u64,
}

/// What every page of a snapshot's memory must hold: the CRC-32 of a data
/// page, or zeros.
#[derive(Debug, Clone)]
pub struct PageSums {
    /// Per page of guest memory: `Some(crc)` for a data page.
    sums: Vec<Option<u32>>,
}

impl PageSums {
    /// Checks a state file's list against a memory of `pages` pages:
    /// strictly increasing page numbers, all inside it.
    pub fn new(list: &[DataPage], pages: u64) -> Result<Self, String> {
        let mut sums = vec![None; pages as usize];
        let mut last: Option<u32> = None;
        for p in list {
            if last.is_some_and(|l| p.index <= l) {
                return Err(format!(
                    "the data pages are not in increasing order at page {}",
                    p.index
                ));
            }
            let slot = sums.get_mut(p.index as usize).ok_or_else(|| {
                format!("data page {} lies outside the {pages}-page memory", p.index)
            })?;
            *slot = Some(p.crc);
            last = Some(p.index);
        }
        Ok(Self { sums })
    }

    pub fn pages(&self) -> u64 {
        self.sums.len() as u64
    }

    /// Whether page `index` holds data (else it is a zero page).
    pub fn has_data(&self, index: u64) -> bool {
        matches!(self.sums.get(index as usize), Some(Some(_)))
    }

    /// Checks `page`'s contents against page `index`'s checksum (a zero
    /// page must be all zeros).
    pub fn check(&self, index: u64, page: &[u8]) -> Result<(), CorruptPage> {
        let ok = match self.sums.get(index as usize) {
            Some(Some(crc)) => crc32(page) == *crc,
            Some(None) => page.iter().all(|b| *b == 0),
            None => false,
        };
        if ok {
            Ok(())
        } else {
            Err(CorruptPage { page: index })
        }
    }

    /// Checks pages `first..` held in `buf` (whole pages), each as
    /// [`Self::check`].
    pub fn check_run(&self, first: u64, buf: &[u8]) -> Result<(), CorruptPage> {
        for (i, page) in buf.chunks(PAGE as usize).enumerate() {
            self.check(first + i as u64, page)?;
        }
        Ok(())
    }

    /// Runs of consecutive pages for which `want` holds, at most
    /// `CHUNK_PAGES` long: `(first, count)`.
    fn runs<'a>(&self, want: impl Fn(u64) -> bool + 'a) -> impl Iterator<Item = (u64, u64)> + 'a {
        let pages = self.pages();
        let mut p = 0u64;
        std::iter::from_fn(move || {
            while p < pages && !want(p) {
                p += 1;
            }
            if p >= pages {
                return None;
            }
            let first = p;
            while p < pages && p - first < CHUNK_PAGES && want(p) {
                p += 1;
            }
            Some((first, p - first))
        })
    }
}

/// Why a memory file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptPage),
}

/// Checks every page of `file` a private mapping of it would show the
/// guest: each data page against its checksum, and any data the file
/// holds where the snapshot has a zero page.
pub fn verify_file(file: &File, sums: &PageSums) -> Result<(), VerifyError> {
    let size = sums.pages() * PAGE;
    let extents = data_map(file, size)?;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE) as usize];
    for (first, n) in sums.runs(|p| sums.has_data(p) || extents[p as usize]) {
        let buf = &mut buf[..(n * PAGE) as usize];
        file.read_exact_at(buf, first * PAGE)?;
        sums.check_run(first, buf)?;
    }
    Ok(())
}

/// Writes `mem` (of `size` bytes) to `file`, leaving holes for zero pages.
/// Returns the pages that hold data, with their checksums.
pub fn write(mem: &GuestMemoryMmap, size: u64, file: &mut File) -> std::io::Result<Vec<DataPage>> {
    file.set_len(0)?;
    file.set_len(size)?;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE) as usize];
    let mut data_pages = Vec::new();
    let mut at = 0u64;
    while at < size {
        let len = (size - at).min(CHUNK_PAGES * PAGE) as usize;
        mem.read_slice(&mut buf[..len], GuestAddress(at))
            .map_err(std::io::Error::other)?;
        for (i, page) in buf[..len].chunks(PAGE as usize).enumerate() {
            if page.iter().any(|b| *b != 0) {
                let at = at + i as u64 * PAGE;
                file.write_all_at(page, at)?;
                let index = u32::try_from(at / PAGE).map_err(std::io::Error::other)?;
                data_pages.push(DataPage {
                    index,
                    crc: crc32(page),
                });
            }
        }
        at += len as u64;
    }
    file.flush()?;
    Ok(data_pages)
}

/// Which pages of the memory file hold data, from the file's extents
/// (SEEK_DATA / SEEK_HOLE), one bool per page.
fn data_map(file: &File, size: u64) -> std::io::Result<Vec<bool>> {
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
    Ok(map)
}

/// Guest RAM as a private mapping of the memory file: pages are shared
/// through the page cache by every VM restored from it; writes copy.
pub fn map_private(file: File, size: u64) -> std::io::Result<GuestMemoryMmap> {
    flint_executor::vstate::vm::private_memory(file, size)
}

/// Anonymous guest RAM (for the userfaultfd backend).
pub fn anonymous(size: u64) -> std::io::Result<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).map_err(std::io::Error::other)
}

/// A sealed memfd holding `file`'s data pages (the pages `sums` lists,
/// each checked against its checksum) at their offsets, holes for the
/// zero pages whatever the file holds there. Sealed against writes,
/// shrinking, growing and further seals.
pub fn sealed_copy(file: &File, sums: &PageSums) -> Result<std::os::fd::OwnedFd, VerifyError> {
    use std::os::fd::FromRawFd;
    let name = c"flint-snapshot-memory";
    // SAFETY: memfd_create with a NUL-terminated name; the fd is ours.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let copy = unsafe { File::from_raw_fd(fd) };
    copy.set_len(sums.pages() * PAGE)?;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGE) as usize];
    for (first, n) in sums.runs(|p| sums.has_data(p)) {
        let buf = &mut buf[..(n * PAGE) as usize];
        file.read_exact_at(buf, first * PAGE)?;
        sums.check_run(first, buf)?;
        copy.write_all_at(buf, first * PAGE)?;
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on the memfd we own.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(copy.into())
}
