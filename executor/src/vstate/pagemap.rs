//! Which pages of a private file mapping this process has written, from
//! `/proc/self/pagemap` (Documentation/admin-guide/mm/pagemap.rst): a
//! written page is a private copy, present and anonymous, or swapped out.
//! Asked with the `PAGEMAP_SCAN` ioctl (Linux 6.7), which walks the page
//! tables and returns only the matching runs, skipping unmapped ranges
//! whole; on older kernels by reading one 8-byte entry per page.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

const PAGE: usize = 4096;

/// This process's pagemap. Opened once: a process that changed its uid is
/// not dumpable, and its pagemap (mode 0400, then owned by root) cannot be
/// opened again.
static PAGEMAP: OnceLock<File> = OnceLock::new();

/// `PAGEMAP_SCAN` answered `ENOTTY` or `EINVAL` once: read entries.
static NO_SCAN: AtomicBool = AtomicBool::new(false);

/// Opens `/proc/self/pagemap` now, for every later question (call before
/// dropping privileges).
pub fn preopen() -> io::Result<()> {
    pagemap().map(|_| ())
}

fn pagemap() -> io::Result<&'static File> {
    if let Some(f) = PAGEMAP.get() {
        return Ok(f);
    }
    let f = File::open("/proc/self/pagemap")?;
    Ok(PAGEMAP.get_or_init(|| f))
}

/// The runs of pages in the mapping `[host, host + len)` (page-aligned)
/// that are written, as page indices from `host`, in order.
pub fn written(host: usize, len: usize) -> io::Result<Vec<Range<usize>>> {
    let f = pagemap()?;
    if !NO_SCAN.load(Ordering::Relaxed) {
        match scan(f, host, len) {
            Ok(runs) => return Ok(runs),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                NO_SCAN.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    read_entries(f, host, len)
}

// From include/uapi/linux/fs.h.
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

fn scan(f: &File, host: usize, len: usize) -> io::Result<Vec<Range<usize>>> {
    let mut regions = vec![PageRegion::default(); 256];
    let mut runs: Vec<Range<usize>> = Vec::new();
    let (mut at, end) = (host as u64, (host + len) as u64);
    while at < end {
        // Not a file page, and present or swapped: the kernel tests
        // `(categories ^ inverted) & mask == mask` and then that
        // `(categories ^ inverted) & anyof` is not zero.
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_inverted: PAGE_IS_FILE,
            category_mask: PAGE_IS_FILE,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..Default::default()
        };
        // SAFETY: `arg` is a pm_scan_arg of the size it declares; `vec`
        // points to `vec_len` writable page_region entries that outlive
        // the call; the kernel only reads this process's page tables.
        let n = unsafe { libc::ioctl(f.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for r in &regions[..n as usize] {
            let page = |a: u64| (a as usize - host) / PAGE;
            let run = page(r.start)..page(r.end);
            match runs.last_mut() {
                Some(last) if last.end == run.start => last.end = run.end,
                _ => runs.push(run),
            }
        }
        if arg.walk_end <= at {
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        at = arg.walk_end;
    }
    Ok(runs)
}

fn read_entries(f: &File, host: usize, len: usize) -> io::Result<Vec<Range<usize>>> {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE: u64 = 1 << 61;
    let pages = len / PAGE;
    let mut entries = vec![0u8; pages * 8];
    f.read_exact_at(&mut entries, (host / PAGE * 8) as u64)?;
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, e) in entries.chunks_exact(8).enumerate() {
        let e = u64::from_le_bytes(e.try_into().expect("8 bytes"));
        if (e & PRESENT != 0 && e & FILE == 0) || e & SWAPPED != 0 {
            match runs.last_mut() {
                Some(last) if last.end == i => last.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of asking name the same pages: the ones written in a
    /// private mapping of a file, not the ones only read or never touched.
    #[test]
    fn the_scan_and_the_entries_name_the_written_pages() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; 64 * PAGE]).unwrap();
        // SAFETY: a fresh private mapping of a file this test owns.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                64 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as *mut u8;
        let mut sum = 0u64;
        for page in 0..64 {
            // SAFETY: inside the 64-page mapping above.
            unsafe {
                if [3, 4, 5, 9, 63].contains(&page) {
                    base.add(page * PAGE + 17).write_volatile(1);
                } else if page % 2 == 0 {
                    sum += base.add(page * PAGE).read_volatile() as u64;
                }
            }
        }
        assert!(sum > 0);
        let want = vec![3..6, 9..10, 63..64];
        assert_eq!(
            read_entries(pagemap().unwrap(), p as usize, 64 * PAGE).unwrap(),
            want
        );
        match scan(pagemap().unwrap(), p as usize, 64 * PAGE) {
            Ok(runs) => assert_eq!(runs, want),
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)),
                "{e}"
            ),
        }
        assert_eq!(written(p as usize, 64 * PAGE).unwrap(), want);
        // SAFETY: unmaps the mapping made above, used no more.
        unsafe { libc::munmap(p, 64 * PAGE) };
    }
}
