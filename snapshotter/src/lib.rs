//! Snapshots of ready Flint VMs.
//!
//! A function is booted and initialised once, then saved at its ready point
//! (module compiled and instantiated, `_initialize` run); every invocation
//! restores that VM instead of booting one. A snapshot is a directory:
//!
//! * `state.bin`: vCPU and device state (see [`format`]), checksummed;
//! * `memory.bin`: guest RAM from address 0, sparse (holes are zero pages),
//!   each data page checked against its CRC-32 in the state file before a
//!   guest sees it (see [`memory`]);
//! * `working-set.bin`: the pages the first userfaultfd-backed invocation
//!   touched, in order, prefetched by later ones (see [`working_set`]).
//!
//! Restores take guest memory from one of two [`Backend`]s: a private file
//! mapping (pages shared through the page cache, copied on write) or
//! anonymous memory filled by a userfaultfd handler.
//!
//! The executor knows nothing of files: this crate uses its
//! [`ReadyVm`] save/restore API.

pub mod format;
pub mod memory;
pub mod uffd;
pub mod working_set;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flint_executor::{GuestIo, Invocation, Persist, ReadyVm, RunError, RunReport, VmConfig};

use crate::format::{FormatError, Header, SnapshotState};
use crate::memory::{CorruptPage, PageSums, VerifyError, PAGE};
use crate::uffd::{HandlerReport, UffdBackend, UffdError};

pub const STATE_FILE: &str = "state.bin";
pub const MEMORY_FILE: &str = "memory.bin";
pub const WORKING_SET_FILE: &str = "working-set.bin";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable snapshot state file")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("the memory file {path} is {actual} bytes; the snapshot needs exactly {expected}")]
    MemorySize {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("the memory file {path} is corrupted: {page}")]
    MemoryCorrupt {
        path: PathBuf,
        #[source]
        page: CorruptPage,
    },
    #[error("the working-set file {path} is unusable: {why}")]
    WorkingSet { path: PathBuf, why: String },
    #[error("the userfaultfd memory backend failed")]
    Uffd(#[source] UffdError),
    #[error("serving guest memory failed: {0}")]
    MemoryBackend(String),
    #[error(transparent)]
    Run(#[from] RunError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

fn verify_err(op: &'static str, path: &Path) -> impl FnOnce(VerifyError) -> SnapshotError {
    let path = path.to_path_buf();
    move |e| match e {
        VerifyError::Io(source) => SnapshotError::Io { op, path, source },
        VerifyError::Corrupt(page) => SnapshotError::MemoryCorrupt { path, page },
    }
}

/// Where a restored VM's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A `MAP_PRIVATE` mapping of the memory file.
    File,
    /// Anonymous memory filled on demand by a userfaultfd handler.
    Uffd,
}

/// How to restore and run one invocation.
#[derive(Debug, Clone)]
pub struct InvokeOptions {
    pub backend: Backend,
    /// Install the recorded working set before resuming (uffd only).
    pub prefetch: bool,
    pub timeout: Option<Duration>,
}

impl Default for InvokeOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Uffd,
            prefetch: true,
            timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// What restoring and running took.
#[derive(Debug, Clone)]
pub struct InvokeReport {
    pub run: RunReport,
    /// Reading and checking the snapshot's files.
    pub load: Duration,
    /// Setting up memory (mapping, or registering and prefetching).
    pub memory_setup: Duration,
    /// Creating the VM and loading its state, up to resuming the guest.
    pub restore: Duration,
    /// Pages installed by prefetch before the guest ran.
    pub prefetched_pages: u64,
    /// Pages faulted in one by one while it ran (uffd only); each checked
    /// against its checksum as it was served, as prefetched ones are.
    pub faulted_pages: u64,
    /// Time the handler spent serving those faults.
    pub fault_time: Duration,
    /// Whether this invocation recorded the working set.
    pub recorded_working_set: bool,
}

/// Facts about a snapshot, for `flint snapshot inspect`.
#[derive(Debug, Clone)]
pub struct Info {
    pub header: Header,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    /// Pages of memory that hold data, each with a CRC-32.
    pub data_pages: u64,
    pub module_name: String,
    pub module_len: u64,
    /// CRC-64/ECMA-182 of the module.
    pub module_crc: u64,
    pub created: u64,
    pub working_set_pages: Option<usize>,
}

/// Boots `module`, runs it to its ready point and saves it to `dir`
/// (created if needed; an older snapshot there is replaced). Output the
/// module writes while initialising goes to `io`.
pub fn create(
    module: &[u8],
    module_name: &str,
    dir: &Path,
    config: &VmConfig,
    io: &mut dyn GuestIo,
) -> Result<Info, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut vm = ReadyVm::boot(config, module, io)?;
    let vm_state = vm.save()?;
    let memory_bytes = vm.memory_mib() << 20;
    let mem_path = dir.join(MEMORY_FILE);
    let mut mem_file = File::create(&mem_path).map_err(io_err("creating", &mem_path))?;
    let data_pages = memory::write(vm.memory(), memory_bytes, &mut mem_file)
        .map_err(io_err("writing", &mem_path))?;
    drop(vm);
    mem_file.sync_all().map_err(io_err("writing", &mem_path))?;
    let state = SnapshotState {
        vm: vm_state,
        memory_bytes,
        data_pages,
        module_name: module_name.to_string(),
        module_len: module.len() as u64,
        module_crc: format::module_crc(module),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let bytes = format::encode(&state).map_err(|source| SnapshotError::Format {
        path: dir.join(STATE_FILE),
        source,
    })?;
    // Write the state last, atomically: a snapshot without it is not one.
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err("writing", &tmp))?;
    let ws = dir.join(WORKING_SET_FILE);
    let _ = std::fs::remove_file(&ws); // recorded against the old memory
    let state_path = dir.join(STATE_FILE);
    std::fs::rename(&tmp, &state_path).map_err(io_err("renaming", &tmp))?;
    Ok(Snapshot::open(dir)?.info())
}

/// An opened, checked snapshot.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    header: Header,
    state: SnapshotState,
    state_bytes: u64,
    /// What each page of memory must hold.
    sums: Arc<PageSums>,
    working_set: Option<Vec<u32>>,
    /// A sealed in-memory copy of `memory.bin` ([`Snapshot::open_sealed`]):
    /// restores map or read it instead of the file.
    sealed: Option<std::os::fd::OwnedFd>,
}

impl Snapshot {
    /// Reads and checks every file of the snapshot in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SnapshotError> {
        let state_path = dir.join(STATE_FILE);
        let f = File::open(&state_path).map_err(io_err("opening", &state_path))?;
        let len = f.metadata().map_err(io_err("reading", &state_path))?.len();
        let format_err = |source| SnapshotError::Format {
            path: state_path.clone(),
            source,
        };
        if len > format::MAX_STATE_FILE {
            return Err(format_err(FormatError::TooLarge(len)));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(format::MAX_STATE_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", &state_path))?;
        let (header, state) = format::decode(&bytes).map_err(format_err)?;
        if state.memory_bytes != state.vm.memory_mib << 20 || state.memory_bytes % PAGE != 0 {
            return Err(format_err(FormatError::Payload(format!(
                "memory size {} does not match the VM's {} MiB",
                state.memory_bytes, state.vm.memory_mib
            ))));
        }
        let sums = PageSums::new(&state.data_pages, state.memory_bytes / PAGE)
            .map_err(|why| format_err(FormatError::Payload(why)))?;
        let mem_path = dir.join(MEMORY_FILE);
        let mem = File::open(&mem_path).map_err(io_err("opening", &mem_path))?;
        let actual = mem.metadata().map_err(io_err("reading", &mem_path))?.len();
        if actual != state.memory_bytes {
            return Err(SnapshotError::MemorySize {
                path: mem_path,
                expected: state.memory_bytes,
                actual,
            });
        }
        let ws_path = dir.join(WORKING_SET_FILE);
        let working_set = match std::fs::read(&ws_path) {
            Ok(b) => Some(working_set::decode(&b, actual / PAGE).map_err(|why| {
                SnapshotError::WorkingSet {
                    path: ws_path.clone(),
                    why,
                }
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("reading", &ws_path)(e)),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            header,
            state,
            state_bytes: len,
            sums: Arc::new(sums),
            working_set,
            sealed: None,
        })
    }

    /// As [`Snapshot::open`], then copies the memory file's data pages,
    /// each checked against its checksum, into a sealed memfd (no writes, no shrinking or growing) that every
    /// restore maps instead of the file: what happens to `memory.bin` on
    /// disk afterwards (truncated, rewritten) cannot reach a live VM or
    /// raise SIGBUS in this process. For long-lived users (the gateway);
    /// costs the snapshot's data pages in RAM, shared by every instance.
    pub fn open_sealed(dir: &Path) -> Result<Self, SnapshotError> {
        let mut snap = Self::open(dir)?;
        let mem_path = dir.join(MEMORY_FILE);
        let file = File::open(&mem_path).map_err(io_err("opening", &mem_path))?;
        let fd =
            memory::sealed_copy(&file, &snap.sums).map_err(verify_err("copying", &mem_path))?;
        snap.sealed = Some(fd);
        Ok(snap)
    }

    /// The memory to restore from: the sealed copy (checked as it was
    /// made), else the file.
    fn memory_source(&self) -> Result<File, SnapshotError> {
        let mem_path = self.dir.join(MEMORY_FILE);
        match &self.sealed {
            Some(fd) => fd
                .try_clone()
                .map(File::from)
                .map_err(io_err("duplicating the sealed copy of", &mem_path)),
            None => File::open(&mem_path).map_err(io_err("opening", &mem_path)),
        }
    }

    /// The memory to map privately: as [`Self::memory_source`], with a
    /// file checked page by page first (a mapping gives the guest every
    /// page without asking).
    fn checked_memory(&self) -> Result<File, SnapshotError> {
        let file = self.memory_source()?;
        if self.sealed.is_none() {
            self.verify_memory_file(&file)?;
        }
        Ok(file)
    }

    fn verify_memory_file(&self, file: &File) -> Result<(), SnapshotError> {
        memory::verify_file(file, &self.sums)
            .map_err(verify_err("reading", &self.dir.join(MEMORY_FILE)))
    }

    /// Checks every page of the memory file against the snapshot's
    /// checksums now (`flint snapshot inspect`).
    pub fn verify_memory(&self) -> Result<(), SnapshotError> {
        let mem_path = self.dir.join(MEMORY_FILE);
        let file = File::open(&mem_path).map_err(io_err("opening", &mem_path))?;
        self.verify_memory_file(&file)
    }

    pub fn info(&self) -> Info {
        Info {
            header: self.header,
            state_bytes: self.state_bytes,
            memory_bytes: self.state.memory_bytes,
            data_pages: self.state.data_pages.len() as u64,
            module_name: self.state.module_name.clone(),
            module_len: self.state.module_len,
            module_crc: self.state.module_crc,
            created: self.state.created,
            working_set_pages: self.working_set.as_ref().map(|w| w.len()),
        }
    }

    /// Whether this snapshot was made from `module` (its length and
    /// CRC-64 match): how a cache of snapshots tells a stale one.
    pub fn made_from(&self, module: &[u8]) -> bool {
        self.state.module_len == module.len() as u64
            && self.state.module_crc == format::module_crc(module)
    }

    /// The name the module was snapshotted under (its `argv[0]`).
    pub fn module_name(&self) -> &str {
        &self.state.module_name
    }

    /// Restores the VM with the file backend and returns it ready, not yet
    /// invoked (for pools of pre-restored instances).
    pub fn restore(&self) -> Result<ReadyVm, SnapshotError> {
        let mem_path = self.dir.join(MEMORY_FILE);
        let file = self.checked_memory()?;
        let memory = memory::map_private(file, self.state.memory_bytes)
            .map_err(io_err("mapping", &mem_path))?;
        Ok(ReadyVm::restore(memory, &self.state.vm)?)
    }

    /// Returns `vm`, restored from this snapshot with [`Self::restore`]
    /// and run with `ReadyVm::invoke_in_place`, to this snapshot in place
    /// (`ReadyVm::reset`): the next invocation cannot see a byte of the
    /// last one. Returns how many pages had been written.
    pub fn reset(&self, vm: &mut ReadyVm) -> Result<u64, SnapshotError> {
        Ok(vm.reset(&self.state.vm)?)
    }

    /// Restores the VM and runs one invocation in it. With the uffd backend
    /// and no working set yet, records one beside the snapshot.
    pub fn invoke(
        &self,
        invocation: &Invocation,
        io: &mut dyn GuestIo,
        opts: &InvokeOptions,
    ) -> Result<InvokeReport, SnapshotError> {
        let t0 = Instant::now();
        let mem_path = self.dir.join(MEMORY_FILE);
        let file = match opts.backend {
            Backend::File => self.checked_memory()?,
            // The handler checks each page as it serves it.
            Backend::Uffd => self.memory_source()?,
        };
        let load = t0.elapsed();
        let t1 = Instant::now();
        let (memory, backend, prefetched) = match opts.backend {
            Backend::File => (
                memory::map_private(file, self.state.memory_bytes)
                    .map_err(io_err("mapping", &mem_path))?,
                None,
                0,
            ),
            Backend::Uffd => {
                let mem = memory::anonymous(self.state.memory_bytes)
                    .map_err(io_err("allocating memory for", &mem_path))?;
                let record = self.working_set.is_none();
                let b = UffdBackend::start(&mem, file, self.sums.clone(), record)
                    .map_err(SnapshotError::Uffd)?;
                let prefetched = match (&self.working_set, opts.prefetch) {
                    (Some(ws), true) => b.prefetch(ws).map_err(|e| match e {
                        UffdError::Corrupt(page) => SnapshotError::MemoryCorrupt {
                            path: mem_path.clone(),
                            page,
                        },
                        e => SnapshotError::Uffd(e),
                    })?,
                    _ => 0,
                };
                (mem, Some(b), prefetched)
            }
        };
        let memory_setup = t1.elapsed();
        let t2 = Instant::now();
        let restored = ReadyVm::restore(memory, &self.state.vm);
        let restore = t2.elapsed();
        let result = restored.and_then(|vm| {
            let abort = backend.as_ref().map(|b| b.abort_flag());
            vm.invoke_abortable(invocation, io, opts.timeout, abort)
        });
        let handler: HandlerReport = backend.map(UffdBackend::finish).unwrap_or_default();
        if let Some(page) = handler.corrupt {
            return Err(SnapshotError::MemoryCorrupt {
                path: mem_path,
                page,
            });
        }
        if let Some(why) = handler.error {
            return Err(SnapshotError::MemoryBackend(why));
        }
        let run = result?;
        let mut recorded_working_set = false;
        if opts.backend == Backend::Uffd
            && self.working_set.is_none()
            && !handler.recorded.is_empty()
        {
            let ws_path = self.dir.join(WORKING_SET_FILE);
            let tmp = self
                .dir
                .join(format!("{WORKING_SET_FILE}.{}.tmp", std::process::id()));
            // Best effort: a read-only snapshot directory still restores.
            if std::fs::write(&tmp, working_set::encode(&handler.recorded)).is_ok() {
                recorded_working_set = OpenOptions::new().read(true).open(&ws_path).is_err()
                    && std::fs::rename(&tmp, &ws_path).is_ok();
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(InvokeReport {
            run,
            load,
            memory_setup,
            restore,
            prefetched_pages: prefetched,
            faulted_pages: handler.faults,
            fault_time: handler.fault_time,
            recorded_working_set,
        })
    }
}
