//! Snapshots of modules at their ready point, kept across containers: the
//! first container of a module (per content digest and memory size) boots
//! cold and is snapshotted once initialised; later containers and execs of
//! it restore from the snapshot instead of compiling and instantiating the
//! module again.
//!
//! An entry is `DIR/<sha256 of the module>-<memory MiB>m/`, a snapshot
//! directory (`flint-snapshotter`). It is written under a temporary name
//! and renamed into place whole, so a reader never sees half of one; it is
//! opened as a sealed copy (every memory page checked against its
//! checksum) and must have been made from this very module (length and
//! CRC, on top of the digest in its name). An entry that fails any check,
//! corrupted, stale or of another format version, is removed and made
//! again, never run. Output the module writes while initialising (a
//! reactor's `_initialize`) is seen by the container that made the entry
//! only.
//!
//! Within the pod (one shim), a VM whose run ended cleanly is not thrown
//! away: it is reset to its entry's snapshot in place (`Snapshot::reset`:
//! every page written dropped back to the snapshot's, vCPU and devices
//! restored, a fresh clock and seed) and kept, at most [`MAX_IDLE`] per
//! module, for the pod's next container or exec of the same module. A run
//! that trapped, was killed or ran out of memory leaves a VM that is
//! dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use flint_executor::{error_chain as chain, GuestIo, ReadyVm, RunError, VmConfig};
use flint_snapshotter::{Snapshot, SnapshotError};
use sha2::{Digest, Sha256};

/// Where entries live unless `FLINT_SHIM_SNAPSHOTS` names another place.
pub const DEFAULT_DIR: &str = "/run/flint/shim-snapshots";

/// The cache directory: `FLINT_SHIM_SNAPSHOTS`, else [`DEFAULT_DIR`].
pub fn dir() -> PathBuf {
    std::env::var_os("FLINT_SHIM_SNAPSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_DIR.into())
}

/// Makes the cache directory `root` if it is missing: root's alone, as
/// entries hold the modules of every image run here.
pub fn create_dir(root: &Path) -> std::io::Result<()> {
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(root)
}

/// How a VM was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Restored from an entry that was there.
    Cached,
    /// Booted cold, snapshotted into a new entry, restored from it.
    Made,
    /// Booted cold: the cache could not be used (said in the log).
    Cold,
    /// An earlier container's or exec's VM of the same module in this
    /// pod, reset to the snapshot in place.
    Reused,
}

/// Most reset VMs kept per module in a pod.
pub const MAX_IDLE: usize = 2;

/// This pod's reset VMs, by entry, with the snapshot they reset to.
type Idle = HashMap<PathBuf, Vec<(ReadyVm, Arc<Snapshot>)>>;

fn idle() -> std::sync::MutexGuard<'static, Idle> {
    static IDLE: OnceLock<Mutex<Idle>> = OnceLock::new();
    IDLE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A VM of a module at its ready point, and how it was had.
#[allow(missing_debug_implementations)]
pub struct Had {
    pub vm: ReadyVm,
    pub source: Source,
    /// Its entry and snapshot, to reset it and keep it (none for a VM
    /// booted cold without the cache).
    keep: Option<(PathBuf, Arc<Snapshot>)>,
}

impl Had {
    /// After a run: resets the VM to its snapshot and keeps it for the
    /// pod's next container or exec of the module, if the run ended
    /// cleanly (`ReadyVm::invoke_in_place` says so) and fewer than
    /// [`MAX_IDLE`] are kept; otherwise drops it. True if it was kept.
    pub fn give_back(self) -> bool {
        let Some((entry, snapshot)) = self.keep else {
            return false;
        };
        if idle().get(&entry).is_some_and(|v| v.len() >= MAX_IDLE) {
            return false;
        }
        let mut vm = self.vm;
        if let Err(e) = snapshot.reset(&mut vm) {
            log::info!("a VM is dropped, not reused: {}", chain(&e));
            return false;
        }
        let mut idle = idle();
        let kept = idle.entry(entry).or_default();
        if kept.len() >= MAX_IDLE {
            return false;
        }
        kept.push((vm, snapshot));
        true
    }
}

fn entry_name(module: &[u8], memory_mib: u64) -> String {
    let digest = Sha256::digest(module);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{memory_mib}m")
}

fn open(entry: &Path, module: &[u8]) -> Result<Snapshot, String> {
    let snap = Snapshot::open_sealed(entry).map_err(|e| chain(&e))?;
    if !snap.made_from(module) {
        return Err("it was made from another module".into());
    }
    Ok(snap)
}

/// A VM of `module` at its ready point: one this pod reset after an
/// earlier run, or one restored from the cache in `root`, or booted (its
/// initialisation output to `io`), snapshotted into the cache and
/// restored. If the cache cannot be used at all, the module is booted
/// cold as without one.
pub fn ready_vm(
    root: &Path,
    module: &[u8],
    name: &str,
    config: &VmConfig,
    io: &mut dyn GuestIo,
) -> Result<Had, RunError> {
    let entry = root.join(entry_name(module, config.memory_mib));
    let reused = idle().get_mut(&entry).and_then(Vec::pop);
    if let Some((vm, snapshot)) = reused {
        return Ok(Had {
            vm,
            source: Source::Reused,
            keep: Some((entry, snapshot)),
        });
    }
    let had = |vm, source, snapshot: Snapshot| Had {
        vm,
        source,
        keep: Some((entry.clone(), Arc::new(snapshot))),
    };
    if entry.exists() {
        match open(&entry, module).and_then(|s| match s.restore() {
            Ok(vm) => Ok((vm, s)),
            Err(e) => Err(chain(&e)),
        }) {
            Ok((vm, s)) => return Ok(had(vm, Source::Cached, s)),
            Err(why) => {
                log::warn!(
                    "the cached snapshot {} is unusable ({why}); making it again",
                    entry.display()
                );
                let _ = std::fs::remove_dir_all(&entry);
            }
        }
    }
    match make(root, &entry, module, name, config, io) {
        Ok((vm, s)) => Ok(had(vm, Source::Made, s)),
        // The module itself failed (a trap in `_initialize`, a bad
        // module): that is the container's error.
        Err(SnapshotError::Run(e)) => Err(e),
        Err(e) => {
            log::warn!("cannot cache a snapshot of {name}: {}", chain(&e));
            Ok(Had {
                vm: ReadyVm::boot(config, module, io)?,
                source: Source::Cold,
                keep: None,
            })
        }
    }
}

/// Boots and snapshots `module` into a temporary directory beside
/// `entry`, renames it into place (or takes the one another container put
/// there first), and restores from it.
fn make(
    root: &Path,
    entry: &Path,
    module: &[u8],
    name: &str,
    config: &VmConfig,
    io: &mut dyn GuestIo,
) -> Result<(ReadyVm, Snapshot), SnapshotError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { op, path, source }
    };
    create_dir(root).map_err(io_err("creating", root))?;
    let tmp = root.join(format!(
        ".{}.{}.{}",
        entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("entry"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let made = flint_snapshotter::create(module, name, &tmp, config, io);
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, entry).is_err() {
        // Another container made it meanwhile: use that one.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let snap = open(entry, module).map_err(|why| SnapshotError::Io {
        op: "opening the snapshot just made in",
        path: entry.to_path_buf(),
        source: std::io::Error::other(why),
    })?;
    Ok((snap.restore()?, snap))
}
