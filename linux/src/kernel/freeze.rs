//! Templates of running containers: a container stopped at a point of
//! its choosing (a server once it listens) is copied whole, its state
//! (`copy.rs`) and the guest memory in use, into a [`Template`]; each VM
//! thawed from it starts where the template stopped, as a process
//! restored by CRIU or a Lambda SnapStart function does, in a fraction
//! of the time the program took to get there.
//!
//! The capture happens at a vCPU's scheduler loop with every other vCPU
//! out of the guest and back at its loop (`cpu.rs`): there every thread's
//! registers are in its `Thread` and every system call is answered or
//! recorded as blocked, so the state is whole. The memory goes to a
//! sealed memfd that each thawed VM maps privately (its pages shared
//! through the page cache, written ones copied). The guest's clock goes
//! on: each new vCPU's TSC is set so that the template's clock constants
//! (in the kernel page and in every process's vDSO) read the time now,
//! later than any time the template saw.
//!
//! Clones share what the program held in memory at the freeze, its
//! random seeds included (see docs/linux.md).

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};

use flint_executor::vstate::vm::Vm;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::copy::{dup, Copier, Refusal};
use super::{copy_xsave, make_cpus, Control, Kernel, Limits, Parts, Stdio};
use crate::mm::PAGE;
use crate::LinuxError;

const MSR_IA32_TSC: u32 = 0x10;

/// A container stopped and copied: what every VM thawed from it starts
/// from. Made by [`crate::Port::freeze`], used by [`crate::thaw`].
pub struct Template {
    frozen: Mutex<Frozen>,
    /// The guest memory in use at the freeze (a sealed memfd).
    memory: OwnedFd,
    mem_size: u64,
    /// Data pages in `memory`.
    pages: u64,
    /// Where they are: runs of frames (first, count).
    runs: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("mem_size", &self.mem_size)
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

impl Template {
    /// Bytes of guest memory the template holds (pages in use at the
    /// freeze).
    pub fn memory_bytes(&self) -> u64 {
        self.pages * PAGE
    }

    /// The TCP ports listened on before the freeze.
    pub fn listened(&self) -> Vec<u16> {
        self.frozen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .listened
            .clone()
    }
}

/// The container's state, owned by no running kernel.
struct Frozen {
    parts: Parts,
    /// The TCP ports listened on before the freeze.
    listened: Vec<u16>,
}

// SAFETY: the `Rc`s and `RefCell`s of a frozen state form a graph of
// their own (`Copier` shares nothing with the kernel it copied from) and
// are reached only through the template's mutex, one thread at a time.
unsafe impl Send for Frozen {}

/// What a copy reads of a container: a running kernel's state, or a
/// template's.
struct View<'a> {
    frames: &'a crate::mm::Frames,
    root: &'a crate::fs::root::Root,
    table: &'a crate::task::Table,
    clean_fpu: &'a kvm_bindings::kvm_xsave,
    clock: &'a crate::entry::Clock,
    vdso: &'a [u8],
    next_mm_id: usize,
    next_pipe_id: usize,
    sockets: &'a crate::fs::socket::Names,
    warned: &'a std::collections::BTreeSet<u64>,
    hostname: &'a str,
    stdio: &'a [Weak<OwnedFd>; 3],
}

impl Parts {
    fn view(&self) -> Result<View<'_>, Refusal> {
        Ok(View {
            frames: &self.frames,
            root: &self.root,
            table: &self.table,
            clean_fpu: &self.clean_fpu,
            clock: &self.clock,
            vdso: &self.vdso,
            next_mm_id: self.next_mm_id,
            next_pipe_id: self.next_pipe_id,
            sockets: &self.sockets,
            warned: &self.warned,
            hostname: &self.hostname,
            stdio: self.stdio.as_ref().ok_or("there is no process 1")?,
        })
    }
}

/// A copy of the container `v` reads, over `memory` (a copy of its
/// memory, or none for a template), with `stdio` for its streams.
fn copy(v: View<'_>, stdio: [Rc<OwnedFd>; 3], memory: GuestMemoryMmap) -> Result<Parts, Refusal> {
    let mut c = Copier::new(v.stdio, &stdio, v.root);
    let table = c.table(v.table)?;
    let sockets = v.sockets.copy_with(|w| c.weak_file(w))?;
    let pipe_bytes = c.held.clone();
    drop(c);
    Ok(Parts {
        frames: v.frames.copy_for(memory),
        root: v
            .root
            .try_clone()
            .map_err(|e| format!("the root cannot be kept: {e}"))?,
        table,
        clean_fpu: copy_xsave(v.clean_fpu),
        clock: v.clock.clone(),
        vdso: v.vdso.to_vec(),
        next_mm_id: v.next_mm_id,
        next_pipe_id: v.next_pipe_id,
        pipe_bytes,
        sockets,
        warned: v.warned.clone(),
        hostname: v.hostname.to_string(),
        stdio: Some(stdio.each_ref().map(Rc::downgrade)),
    })
}

/// A copy of a template's state as a thaw makes it, with `stdio` for its
/// streams (for the fuzz harness's check).
#[cfg(feature = "fuzzing")]
pub(super) fn copy_again(p: &Parts, stdio: [Rc<OwnedFd>; 3]) -> Result<Parts, Refusal> {
    copy(p.view()?, stdio, GuestMemoryMmap::default())
}

impl Kernel {
    /// Copies this container into a template. Called with every other
    /// vCPU at its scheduler loop, none in the guest.
    pub(super) fn capture(&mut self, memory: std::fs::File) -> Result<Template, Refusal> {
        let parts = self.capture_state()?;
        let runs = self.frames.used_runs();
        let (memory, pages) = self.memory_image(memory, &runs)?;
        let listened = self
            .control
            .listened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(Template {
            frozen: Mutex::new(Frozen { parts, listened }),
            memory,
            mem_size: self.frames.bytes(),
            pages,
            runs,
        })
    }

    /// A copy of this container's state (all but its memory).
    pub(super) fn capture_state(&mut self) -> Result<Parts, Refusal> {
        if self.init_exit.is_some() {
            return Err("process 1 has ended".into());
        }
        if !self.outside.is_empty() {
            return Err("processes started from outside the VM (exec) are running".into());
        }
        let Some(stdio) = self.stdio.clone() else {
            return Err("there is no process 1".into());
        };
        // The threads' FPU state, wherever it is (on a vCPU or saved).
        let tids: Vec<_> = self.table.threads.keys().copied().collect();
        let fpus: Vec<_> = tids.iter().map(|&t| (t, self.fpu_of(t))).collect();
        // Stand-ins for the streams, told apart by their descriptors
        // (copies of the wake-up eventfd: nothing reads or writes them).
        let stand_ins = [dup(&self.wake)?, dup(&self.wake)?, dup(&self.wake)?].map(Rc::new);
        let view = View {
            frames: &self.frames,
            root: &self.root,
            table: &self.table,
            clean_fpu: &self.clean_fpu,
            clock: &self.clock,
            vdso: &self.vdso,
            next_mm_id: self.next_mm_id,
            next_pipe_id: self.next_pipe_id,
            sockets: &self.sockets,
            warned: &self.warned,
            hostname: &self.hostname,
            stdio: &stdio,
        };
        let mut parts = copy(view, stand_ins, GuestMemoryMmap::default())?;
        for (tid, fpu) in fpus {
            if let Some(t) = parts.table.threads.get_mut(&tid) {
                t.fpu = Some(fpu);
            }
        }
        Ok(parts)
    }

    /// Writes the frames in use and the kernel's pages into `file` (a
    /// memfd), at their addresses, and seals it: the guest's RAM, holes
    /// elsewhere.
    fn memory_image(
        &self,
        file: std::fs::File,
        runs: &[(u64, u64)],
    ) -> Result<(OwnedFd, u64), Refusal> {
        use std::os::unix::fs::FileExt;
        let fail = |e: std::io::Error| format!("copying guest memory failed: {e}");
        file.set_len(self.frames.bytes()).map_err(fail)?;
        const CHUNK: u64 = 64;
        let mut buf = vec![0u8; (CHUNK * PAGE) as usize];
        let mut pages = 0;
        for &(first, n) in runs {
            let mut at = first;
            while at < first + n {
                let len = (first + n - at).min(CHUNK);
                let buf = &mut buf[..(len * PAGE) as usize];
                self.frames
                    .memory()
                    .read_slice(buf, GuestAddress(at * PAGE))
                    .map_err(|e| format!("reading guest memory failed: {e}"))?;
                file.write_all_at(buf, at * PAGE).map_err(fail)?;
                at += len;
                pages += len;
            }
        }
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on the memfd we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        Ok((file.into(), pages))
    }

    /// A kernel over a new VM whose memory and state are `t`'s, with
    /// `vcpus` vCPUs and `stdio` as process 1's streams.
    pub fn thaw(
        t: &Template,
        vcpus: usize,
        limits: Limits,
        control: Arc<Control>,
        stdio: Stdio,
    ) -> Result<Self, LinuxError> {
        let thaw = |e: String| LinuxError::Thaw(e);
        let file = std::fs::File::from(t.memory.try_clone().map_err(LinuxError::Stdio)?);
        let memory = flint_executor::vstate::vm::private_memory(file, t.mem_size)
            .map_err(|e| thaw(format!("mapping the template's memory failed: {e}")))?;
        let vm = Vm::with_memory(memory).map_err(LinuxError::Vm)?;
        // The pages in use, copied now in a few calls rather than one
        // host fault at a time as the guest touches them.
        for &(first, n) in &t.runs {
            vm.prefault(first * PAGE, n * PAGE);
        }
        let cpus = make_cpus(&vm, vcpus)?;
        let frozen = t.frozen.lock().unwrap_or_else(|e| e.into_inner());
        let p = &frozen.parts;
        // The clock goes on from the template's: each vCPU's TSC where
        // the template's would be now.
        for c in &cpus {
            let v = c.vcpu.as_ref().expect("just made");
            let Some(tsc) = p.clock.guest_tsc_now() else {
                break;
            };
            v.set_msrs(&[(MSR_IA32_TSC, tsc)])
                .map_err(LinuxError::Vcpu)?;
            let got = v.guest_tsc().map_err(LinuxError::Vcpu)?;
            // A TSC that did not take would move the guest's clock back.
            if got.abs_diff(tsc) > 1 << 40 {
                return Err(thaw(format!(
                    "the vCPU's TSC could not be set ({got:#x}, wanted {tsc:#x})"
                )));
            }
        }
        let streams = [stdio.stdin, stdio.stdout, stdio.stderr].map(Rc::new);
        let parts = p
            .view()
            .and_then(|v| copy(v, streams, vm.memory().clone()))
            .map_err(thaw)?;
        drop(frozen);
        Self::assemble(vm, cpus, control, limits, parts)
    }
}
