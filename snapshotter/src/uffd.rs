//! The userfaultfd memory backend: guest RAM is anonymous memory registered
//! with userfaultfd; a handler thread fills each page on its first touch,
//! from the memory file (`UFFDIO_COPY`) or with zeros for a hole
//! (`UFFDIO_ZEROPAGE`), each page read from the file checked against its
//! checksum before the guest sees it. It can record the order of faults (the working set)
//! and install a recorded working set in one pass before the guest runs.
//!
//! If serving a page fails, the handler raises the abort flag (the VM is
//! stopped with an error) and keeps answering faults with zeros so that no
//! thread is left waiting.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use userfaultfd::{Event, Uffd, UffdBuilder};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::memory::{CorruptPage, PageSums, PAGE};

#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error(
        "creating the userfaultfd failed (is it allowed? root, or vm.unprivileged_userfaultfd=1)"
    )]
    Create(#[source] userfaultfd::Error),
    #[error(
        "creating the userfaultfd failed (is it allowed? root, or vm.unprivileged_userfaultfd=1)"
    )]
    CreateBySystemCall(#[source] std::io::Error),
    #[error("registering guest memory with userfaultfd failed")]
    Register(#[source] userfaultfd::Error),
    #[error("starting the page-fault handler thread failed")]
    Thread(#[source] std::io::Error),
    #[error("creating the handler's wake-up eventfd failed")]
    EventFd(#[source] std::io::Error),
    #[error("prefetching the working set failed at page {0}: {1}")]
    Prefetch(u64, String),
    #[error("the memory file is corrupted: {0}")]
    Corrupt(#[source] CorruptPage),
}

/// What the handler did, returned when it stops.
#[derive(Debug, Default, Clone)]
pub struct HandlerReport {
    /// Page faults served one by one.
    pub faults: u64,
    /// Time spent serving them (reading the file and copying).
    pub fault_time: Duration,
    /// Page indices in the order they were first faulted (when recording).
    pub recorded: Vec<u32>,
    /// Why serving stopped working, if it did.
    pub error: Option<String>,
    /// The page whose contents did not match its checksum, if one did.
    pub corrupt: Option<CorruptPage>,
}

/// Where pages come from: the memory file, and what each page must hold.
struct Source {
    file: File,
    sums: Arc<PageSums>,
}

#[derive(Debug)]
enum ReadError {
    Io(String),
    Corrupt(CorruptPage),
}

impl Source {
    /// Reads the pages from `first` into `buf` (whole pages): data pages
    /// from the file, each checked against its checksum; zero pages as
    /// zeros, whatever the file holds there.
    fn read(&self, first: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let at = first * PAGE;
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| ReadError::Io(format!("reading the memory file at {at:#x}: {e}")))?;
        for (i, page) in buf.chunks_mut(PAGE as usize).enumerate() {
            let index = first + i as u64;
            if self.sums.has_data(index) {
                self.sums.check(index, page).map_err(ReadError::Corrupt)?;
            } else {
                page.fill(0);
            }
        }
        Ok(())
    }
}

/// Raw guest-memory base, sent to the handler thread. The mapping outlives
/// every fault on it (faults only come from accesses to live memory).
#[derive(Clone, Copy)]
struct Base(usize);

pub struct UffdBackend {
    uffd: Arc<Uffd>,
    base: Base,
    pages: u64,
    source: Arc<Source>,
    stop: Arc<AtomicBool>,
    /// Wakes the handler from poll() when it should stop.
    wake: Arc<EventFd>,
    abort: Arc<AtomicBool>,
    thread: Option<JoinHandle<HandlerReport>>,
}

impl std::fmt::Debug for UffdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UffdBackend")
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

/// A userfaultfd that serves kernel-mode faults too (KVM reads guest
/// memory from the kernel). `/dev/userfaultfd` first, as the userfaultfd
/// crate does; when that device is root's alone, the `userfaultfd(2)`
/// system call, which a user may make where `vm.unprivileged_userfaultfd`
/// is 1 (the crate falls back only when the device is missing).
fn create() -> Result<Uffd, UffdError> {
    let made = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .create();
    match made {
        Err(userfaultfd::Error::OpenDevUserfaultfd(e))
            if e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            by_system_call()
        }
        r => r.map_err(UffdError::Create),
    }
}

fn by_system_call() -> Result<Uffd, UffdError> {
    // SAFETY: userfaultfd(2) takes only flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(UffdError::CreateBySystemCall(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is the userfaultfd just made, owned by the Uffd alone.
    let uffd = unsafe { <Uffd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut api = userfaultfd_sys::uffdio_api {
        api: userfaultfd_sys::UFFD_API,
        features: 0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes the uffdio_api it is given.
    let r = unsafe {
        libc::ioctl(
            fd as i32,
            userfaultfd_sys::UFFDIO_API as _,
            &mut api as *mut userfaultfd_sys::uffdio_api,
        )
    };
    if r != 0 {
        return Err(UffdError::CreateBySystemCall(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(uffd)
}

impl UffdBackend {
    /// Registers `mem` (anonymous, untouched) and starts serving its faults
    /// from `file`, whose pages `sums` describes.
    pub fn start(
        mem: &GuestMemoryMmap,
        file: File,
        sums: Arc<PageSums>,
        record: bool,
    ) -> Result<Self, UffdError> {
        let uffd = create()?;
        let region = mem.iter().next().expect("one region");
        let len = vm_memory::GuestMemoryRegion::len(region);
        let host = mem
            .get_host_address(GuestAddress(0))
            .expect("address 0 is mapped");
        uffd.register(host.cast(), len as usize)
            .map_err(UffdError::Register)?;
        let uffd = Arc::new(uffd);
        let pages = len / PAGE;
        let source = Arc::new(Source { file, sums });
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let base = Base(host as usize);
        let wake = Arc::new(EventFd::new(libc::EFD_CLOEXEC).map_err(UffdError::EventFd)?);
        let thread = {
            let (uffd, source, stop, abort, wake) = (
                uffd.clone(),
                source.clone(),
                stop.clone(),
                abort.clone(),
                wake.clone(),
            );
            std::thread::Builder::new()
                .name("flint-uffd".into())
                .spawn(move || {
                    // The handler serves the guest's faults: only the calls
                    // it needs (poll, read, UFFDIO ioctls, pread of the
                    // memory file), as every vCPU thread.
                    if let Err(e) = flint_executor::seccomp::confine_thread(&[]) {
                        tracing::warn!(
                            "the userfaultfd handler runs without its seccomp filter: {e}"
                        );
                    }
                    serve(&uffd, &wake, base, pages, &source, &stop, &abort, record)
                })
                .map_err(UffdError::Thread)?
        };
        Ok(Self {
            uffd,
            base,
            pages,
            source,
            stop,
            wake,
            abort,
            thread: Some(thread),
        })
    }

    /// Raised when the handler could not serve a page.
    pub fn abort_flag(&self) -> &AtomicBool {
        &self.abort
    }

    /// Installs `pages` (a recorded working set) now, in runs of contiguous
    /// pages, one read and one `UFFDIO_COPY` per run. Returns pages installed.
    pub fn prefetch(&self, pages: &[u32]) -> Result<u64, UffdError> {
        let mut sorted: Vec<u64> = pages
            .iter()
            .map(|&p| p as u64)
            .filter(|&p| p < self.pages)
            .collect();
        let outside = pages.len() - sorted.len();
        sorted.sort_unstable();
        sorted.dedup();
        let mut installed = 0;
        // Pages that could not be installed for another reason than being
        // there already (a fault raced the prefetch): the guest faults
        // them in later, but it is said.
        let mut failed = 0u64;
        let mut buf = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let first = sorted[i];
            let mut n = 1;
            while i + n < sorted.len() && sorted[i + n] == first + n as u64 && n < 512 {
                n += 1;
            }
            buf.resize(n * PAGE as usize, 0);
            self.source.read(first, &mut buf).map_err(|e| match e {
                ReadError::Io(why) => UffdError::Prefetch(first, why),
                ReadError::Corrupt(page) => UffdError::Corrupt(page),
            })?;
            let dst = (self.base.0 + (first * PAGE) as usize) as *mut libc::c_void;
            // SAFETY: `dst..dst + buf.len()` lies inside the registered guest
            // mapping (pages < self.pages), which is alive while `self` is;
            // `buf` holds exactly that many bytes.
            match unsafe { self.uffd.copy(buf.as_ptr().cast(), dst, buf.len(), true) } {
                Ok(_) => installed += n as u64,
                Err(_) => {
                    // Some page of the run is already there: go page by page.
                    for k in 0..n {
                        let page = &buf[k * PAGE as usize..(k + 1) * PAGE as usize];
                        let d = (dst as usize + k * PAGE as usize) as *mut libc::c_void;
                        // SAFETY: one page inside the registered mapping.
                        match unsafe {
                            self.uffd.copy(page.as_ptr().cast(), d, PAGE as usize, true)
                        } {
                            Ok(_) => installed += 1,
                            Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {}
                            Err(_) => failed += 1,
                        }
                    }
                }
            }
            i += n;
        }
        if outside > 0 || failed > 0 {
            tracing::warn!(
                "prefetch: {outside} recorded pages lie outside guest memory and {failed} could not be installed; the guest faults them in"
            );
        }
        Ok(installed)
    }

    /// Stops the handler and returns what it did.
    pub fn finish(mut self) -> HandlerReport {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for UffdBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn serve(
    uffd: &Uffd,
    wake: &EventFd,
    base: Base,
    pages: u64,
    source: &Source,
    stop: &AtomicBool,
    abort: &AtomicBool,
    record: bool,
) -> HandlerReport {
    let mut report = HandlerReport::default();
    let mut seen = if record {
        vec![false; pages as usize]
    } else {
        Vec::new()
    };
    let mut buf = vec![0u8; PAGE as usize];
    let fd = std::os::fd::AsRawFd::as_raw_fd(uffd);
    let wake_fd = std::os::fd::AsRawFd::as_raw_fd(wake);
    while !stop.load(Ordering::SeqCst) {
        let mut pfds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polls two valid fds; `pfds` lives across the call.
        let ready = unsafe { libc::poll(pfds.as_mut_ptr(), 2, 1000) };
        if ready <= 0 || pfds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        loop {
            let event = match uffd.read_event() {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => {
                    fail(
                        &mut report,
                        abort,
                        format!("reading userfaultfd events: {e}"),
                    );
                    break;
                }
            };
            let Event::Pagefault { addr, .. } = event else {
                continue;
            };
            let t = Instant::now();
            let offset = (addr as usize).wrapping_sub(base.0) as u64;
            let index = offset / PAGE;
            let dst = (base.0 + (index * PAGE) as usize) as *mut libc::c_void;
            if index >= pages {
                fail(
                    &mut report,
                    abort,
                    format!("a fault at {addr:?} outside guest memory"),
                );
                continue;
            }
            let has_data = report.error.is_none() && source.sums.has_data(index);
            let result = if has_data {
                match source.read(index, &mut buf) {
                    // SAFETY: one page inside the registered, live mapping.
                    Ok(()) => unsafe { uffd.copy(buf.as_ptr().cast(), dst, PAGE as usize, true) }
                        .map(|_| ()),
                    Err(e) => {
                        let why = match e {
                            ReadError::Io(why) => why,
                            ReadError::Corrupt(page) => {
                                report.corrupt.get_or_insert(page);
                                format!("the memory file is corrupted: {page}")
                            }
                        };
                        fail(&mut report, abort, why);
                        // SAFETY: as above; zeros unblock the faulting thread.
                        unsafe { uffd.zeropage(dst, PAGE as usize, true) }.map(|_| ())
                    }
                }
            } else {
                // SAFETY: one page inside the registered, live mapping.
                unsafe { uffd.zeropage(dst, PAGE as usize, true) }.map(|_| ())
            };
            if result.is_err() {
                // Already populated (a race with prefetch): just wake the waiter.
                let _ = uffd.wake(dst, PAGE as usize);
            }
            if let Err(e) = flint_executor::seccomp::check() {
                fail(&mut report, abort, e.to_string());
            }
            report.faults += 1;
            report.fault_time += t.elapsed();
            if record && !seen[index as usize] {
                seen[index as usize] = true;
                report.recorded.push(index as u32);
            }
        }
    }
    report
}

fn fail(report: &mut HandlerReport, abort: &AtomicBool, why: String) {
    if report.error.is_none() {
        tracing::error!("userfaultfd handler: {why}");
        report.error = Some(why);
    }
    abort.store(true, Ordering::SeqCst);
}
