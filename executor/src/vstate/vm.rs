//! A KVM virtual machine and its guest memory.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::vcpu::Vcpu;

/// Where Flint looks for KVM, unless `FLINT_KVM_DEVICE` names another path.
pub const DEFAULT_KVM_DEVICE: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{path} does not exist: this machine has no KVM. Load the module (`modprobe kvm_intel` or `modprobe kvm_amd`), or on a VM enable nested virtualization")]
    KvmMissing { path: PathBuf },
    #[error("{path} is not readable and writable by this user. Run as root, or add the user to the `kvm` group (`sudo usermod -aG kvm $USER`, then log in again)")]
    KvmDenied { path: PathBuf },
    #[error("cannot open {path}")]
    KvmOpen {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmVersion(i32),
    #[error("creating the VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("allocating {0} bytes of guest memory failed")]
    Memory(usize, #[source] vm_memory::mmap::FromRangesError),
    #[error("registering guest memory with KVM failed")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("reading the CPUID table KVM supports failed")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("creating vCPU {0} failed")]
    CreateVcpu(u64, #[source] kvm_ioctls::Error),
}

/// The KVM device path in force.
pub fn kvm_device_path() -> PathBuf {
    std::env::var_os("FLINT_KVM_DEVICE")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_KVM_DEVICE.into())
}

/// `/dev/kvm` opened once ahead of time ([`preopen_kvm`]): every VM then
/// gets a duplicate of it, so a process that dropped its privileges can
/// still create VMs.
static PREOPENED: std::sync::Mutex<Option<(PathBuf, std::os::fd::OwnedFd)>> =
    std::sync::Mutex::new(None);

/// Opens the KVM device now and keeps it for every later VM of this
/// process (call before dropping privileges).
pub fn preopen_kvm() -> Result<(), VmError> {
    let path = kvm_device_path();
    let kvm = open_device(&path)?;
    // SAFETY: the fd is the live one `kvm` owns, borrowed for the clone.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&kvm)) }
        .try_clone_to_owned()
        .map_err(|e| VmError::KvmOpen {
            path: path.clone(),
            source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EBADF)),
        })?;
    *PREOPENED.lock().unwrap_or_else(|e| e.into_inner()) = Some((path, fd));
    Ok(())
}

fn open_kvm(path: &Path) -> Result<Kvm, VmError> {
    let pre = PREOPENED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, fd)) = pre.as_ref().filter(|(p, _)| p == path) {
        let dup = fd.try_clone().map_err(|e| VmError::KvmOpen {
            path: p.clone(),
            source: kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EBADF)),
        })?;
        // SAFETY: `dup` is a new fd of the opened KVM device, owned by the
        // Kvm from here on.
        return Ok(unsafe {
            <Kvm as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(dup))
        });
    }
    drop(pre);
    open_device(path)
}

fn open_device(path: &Path) -> Result<Kvm, VmError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| VmError::KvmMissing { path: path.into() })?;
    let kvm = Kvm::new_with_path(&c).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::KvmMissing { path: path.into() },
        libc::EACCES | libc::EPERM | libc::EROFS => VmError::KvmDenied { path: path.into() },
        _ => VmError::KvmOpen {
            path: path.into(),
            source: e,
        },
    })?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(VmError::KvmVersion(version));
    }
    Ok(kvm)
}

/// One VM: its KVM handles and its RAM, identity-mapped at guest-physical 0.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemoryMmap,
}

impl Vm {
    /// Creates a VM with `mem_size` bytes of anonymous RAM (reserved, not
    /// committed: pages cost host memory only once touched).
    pub fn new(mem_size: usize) -> Result<Self, VmError> {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size)])
            .map_err(|e| VmError::Memory(mem_size, e))?;
        Self::with_memory(memory)
    }

    /// Creates a VM over memory the caller prepared (for instance a private
    /// mapping of a snapshot's memory file).
    pub fn with_memory(memory: GuestMemoryMmap) -> Result<Self, VmError> {
        let kvm = open_kvm(&kvm_device_path())?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        for (slot, region) in memory.iter().enumerate() {
            let host = memory
                .get_host_address(region.start_addr())
                .expect("region start is mapped");
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `memory`, which this
            // Vm keeps alive for as long as `fd` (and so the slot) exists.
            unsafe { fd.set_user_memory_region(r) }.map_err(VmError::MemorySlot)?;
        }
        Ok(Self { kvm, fd, memory })
    }

    /// Makes KVM forget every translation it derived from the guest's page
    /// tables, by removing the memory slots and adding them back. Needed
    /// after the VMM changes or removes a *present* page-table entry from
    /// the host side: KVM's shadow MMU (nested KVM here) keeps using its
    /// copy, and neither a guest `invlpg` nor a CR3 reload refreshes it
    /// (`bench/probes/stale_pte.c`: 100 of 200 reads stale without this,
    /// none with it; about 0.2 ms). On hardware EPT the slot change also
    /// flushes the guest's TLB.
    pub fn reset_translations(&self) -> Result<(), VmError> {
        for (slot, region) in self.memory.iter().enumerate() {
            let host = self
                .memory
                .get_host_address(region.start_addr())
                .expect("region start is mapped");
            let mut r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: 0,
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: deleting a slot (size 0) never exposes host memory.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(VmError::MemorySlot)?;
            r.memory_size = region.len();
            // SAFETY: as in `with_memory`: the region is a live mmap owned
            // by `memory`, which lives as long as `fd`.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(VmError::MemorySlot)?;
        }
        Ok(())
    }

    /// Returns every private page of guest memory to the contents of the
    /// snapshot file it is a private mapping of, by copying the file's
    /// bytes into it. A private page is one the guest or the VMM wrote
    /// since the mapping was made (a copy-on-write copy: present and
    /// anonymous in `/proc/self/pagemap`, or swapped), so every page written
    /// in the last run is among them, and so are pages written in earlier
    /// runs and copied back already (they stay private): a superset, never
    /// fewer. The pages stay mapped, so KVM keeps its translations of them
    /// and the next run does not fault on them again (dropping them with
    /// `MADV_DONTNEED` cost a nested fault per page on the next write).
    /// Returns how many pages were copied. Refused for memory without a
    /// file behind it.
    pub fn restore_written_pages(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        const PAGE: usize = 4096;
        let mut copied = 0u64;
        for region in self.memory.iter() {
            let Some(backing) = region.file_offset() else {
                return Err(std::io::Error::other(
                    "guest memory is not a mapping of a snapshot file",
                ));
            };
            let host = self
                .memory
                .get_host_address(region.start_addr())
                .map_err(std::io::Error::other)? as usize;
            for run in super::pagemap::written(host, region.len() as usize)? {
                // SAFETY: the run's pages lie inside this region's live
                // mapping, which `memory` owns; no vCPU runs while a VM is
                // reset, and the bytes written are the file's own.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        (host + run.start * PAGE) as *mut u8,
                        run.len() * PAGE,
                    )
                };
                backing
                    .file()
                    .read_exact_at(dst, backing.start() + (run.start * PAGE) as u64)?;
                copied += run.len() as u64;
            }
        }
        Ok(copied)
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Asks the host kernel to back `[start, start + len)` of guest RAM
    /// with pages now, in one call, instead of one fault at a time while the
    /// guest runs. Best effort: older kernels lack MADV_POPULATE_WRITE.
    pub fn prefault(&self, start: u64, len: u64) {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let Ok(host) = self.memory.get_host_address(GuestAddress(start)) else {
            return;
        };
        if !self.memory.check_range(GuestAddress(start), len as usize) {
            return;
        }
        let len = len as usize;
        // SAFETY: the range lies inside one live mapping owned by `memory`
        // (checked above); populating pages does not change their contents.
        unsafe { libc::madvise(host.cast(), len, MADV_POPULATE_WRITE) };
    }

    /// Bytes of guest RAM resident in host memory now (pages the guest or
    /// the VMM has touched).
    pub fn resident_bytes(&self) -> u64 {
        resident_bytes(&self.memory)
    }

    /// The CPUID table KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<kvm_bindings::CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmError::Cpuid)
    }

    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, VmError> {
        let fd = self
            .fd
            .create_vcpu(id)
            .map_err(|e| VmError::CreateVcpu(id, e))?;
        Ok(Vcpu::new(fd, &self.kvm))
    }
}

/// Guest RAM as a private mapping of `file` (`size` bytes from offset
/// 0): pages are shared through the page cache by every VM made over the
/// same file; writes copy (a snapshot's memory file, a Linux template's
/// memfd).
pub fn private_memory(file: std::fs::File, size: u64) -> std::io::Result<GuestMemoryMmap> {
    use vm_memory::{FileOffset, GuestRegionMmap, MmapRegion};
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

/// Bytes of `memory` resident in host memory now (pages the guest or the
/// VMM has touched).
pub fn resident_bytes(memory: &GuestMemoryMmap) -> u64 {
    let page = 4096usize;
    let mut total = 0u64;
    for region in memory.iter() {
        let len = region.len() as usize;
        let Ok(host) = memory.get_host_address(region.start_addr()) else {
            continue;
        };
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `host..host+len` is one live mapping owned by `memory`;
        // `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|b| **b & 1 == 1).count() as u64 * page as u64;
        }
    }
    total
}
