//! A harness for fuzzing the system-call layer (feature `fuzzing`, used by
//! `fuzz/`): a real kernel with a real VM and one process, whose system
//! calls are made straight through the dispatcher with arguments and guest
//! memory from the fuzzer, as a hostile program would make them (wild
//! pointers, lengths, flags, fds), without running guest code. Blocked
//! calls are retried as the scheduler retries them; a call that ends the
//! thread ends the sequence.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use super::{Control, Kernel, Limits, Program, Stdio};
use crate::task::Pid;
use crate::LinuxError;

/// Where the harness maps its scratch memory in the process.
pub const SCRATCH: u64 = 0x1000_0000;
/// The scratch region's size (two pages).
pub const SCRATCH_LEN: u64 = 0x2000;

/// A kernel whose process 1 ([`Harness::begin`]) runs a minimal static
/// program and makes the calls it is given.
pub struct Harness {
    k: Kernel,
    root: tempfile::TempDir,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

/// A static x86-64 ELF executable of one page whose code loops forever
/// (it never runs: the harness makes its calls for it).
fn tiny_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let mut e = vec![0u8; 0x1000];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little-endian
    e[6] = 1; // EV_CURRENT
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&(BASE + 0x78).to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = &mut e[64..120];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[16..24].copy_from_slice(&BASE.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&BASE.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&0x1000u64.to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&0x1000u64.to_le_bytes()); // memsz
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes()); // align
    e[0x78..0x7a].copy_from_slice(&[0xeb, 0xfe]); // jmp .
    e
}

/// What a copy must keep of a table: each process's family, threads and
/// descriptors (number, flags, what they are, their pipe's ends), each
/// thread's registers and wait.
fn summary(t: &crate::task::Table) -> Vec<String> {
    let mut out = Vec::new();
    for p in t.procs.values() {
        out.push(format!(
            "process {} ppid {} pgid {} threads {:?} exit {:?} mm {} brk {:#x} vmas {}",
            p.pid,
            p.ppid,
            p.pgid,
            p.threads,
            p.exit,
            p.mm_id,
            p.mm.borrow().brk,
            p.mm.borrow().vmas.len()
        ));
        for (n, slot) in p.fds.borrow().fds.iter().enumerate() {
            if let Some((f, cloexec)) = slot {
                let ends = match &f.kind {
                    crate::fs::file::Kind::PipeRead(q, _)
                    | crate::fs::file::Kind::PipeWrite(q, _) => {
                        let q = q.borrow();
                        format!(" {} bytes, {}r {}w", q.buf.len(), q.readers, q.writers)
                    }
                    _ => String::new(),
                };
                out.push(format!(
                    "  fd {n} {} flags {:#x} offset {} cloexec {cloexec}{ends}",
                    f.describe(),
                    f.flags.get(),
                    f.offset.get()
                ));
            }
        }
    }
    for th in t.threads.values() {
        out.push(format!(
            "thread {} of {} rip {:#x} rax {:#x} mask {:#x} pending {} blocked {:?}",
            th.tid,
            th.pid,
            th.regs.rip,
            th.regs.rax,
            th.sigmask,
            th.pending.len(),
            th.blocked.as_ref().map(|b| (b.nr, b.args))
        ));
    }
    out
}

/// Empties `dir` and puts the harness's files in it: a harness's root
/// as new, for the next input (called from an unconfined thread: the
/// harness's own housekeeping is no guest's call).
pub fn fill_root(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    let init = dir.join("init");
    std::fs::write(&init, tiny_elf())?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::create_dir(dir.join("etc"))?;
    std::fs::create_dir(dir.join("tmp"))?;
    std::fs::write(dir.join("etc/hostname"), "fuzz\n")
}

fn null_fd(write: bool) -> Result<OwnedFd, LinuxError> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(Into::into)
        .map_err(LinuxError::Thread)
}

impl Harness {
    /// A kernel of `memory_mib` MiB and one vCPU, with a fresh temporary
    /// root holding `/init`, `/etc/hostname` and an empty `/tmp` for the
    /// file calls to find. [`Harness::begin`] starts its process.
    pub fn new(memory_mib: u64) -> Result<Self, LinuxError> {
        let root = tempfile::tempdir().map_err(LinuxError::Thread)?;
        fill_root(root.path()).map_err(LinuxError::Thread)?;
        let fsroot = crate::fs::root::Root::open(root.path()).map_err(|e| LinuxError::Root {
            path: root.path().display().to_string(),
            source: e,
        })?;
        let limits = Limits {
            max_processes: 8,
            signals: None,
        };
        let k = Kernel::new(memory_mib, 1, fsroot, limits, Arc::new(Control::default()))?;
        Ok(Self { k, root })
    }

    /// Confines the calling thread as a Linux VM's vCPU threads are
    /// (`flint_executor::seccomp`, with [`super::HOST_CALLS`]); a host call
    /// outside that list then fails and [`flint_executor::seccomp::check`]
    /// reports it.
    pub fn confine(&self) -> Result<(), flint_executor::seccomp::SeccompError> {
        flint_executor::seccomp::confine_thread(super::HOST_CALLS)
    }

    /// Ends every process, starts a fresh process 1 from `/init` and maps
    /// its scratch region at [`SCRATCH`], filled with `scratch`: the state
    /// each fuzz input starts from, made on the vCPU thread's own paths (a
    /// container's exec starts processes so).
    pub fn begin(&mut self, scratch: &[u8]) -> Result<(), LinuxError> {
        self.end();
        self.k.spawn_init(
            &Program {
                path: "/init".into(),
                argv: vec!["init".into()],
                env: vec![("PATH".into(), "/".into())],
                workdir: "/".into(),
            },
            Stdio {
                stdin: null_fd(false)?,
                stdout: null_fd(true)?,
                stderr: null_fd(true)?,
            },
        )?;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED) as u64;
        let mapped = crate::syscalls::mem::mmap(
            &mut self.k,
            1,
            SCRATCH,
            SCRATCH_LEN,
            prot,
            flags,
            u64::MAX,
            0,
        );
        if !matches!(mapped, Ok(SCRATCH)) {
            return Err(LinuxError::NoMemory);
        }
        let n = scratch.len().min(SCRATCH_LEN as usize);
        self.k
            .write_user(1, SCRATCH, &scratch[..n])
            .map_err(|_| LinuxError::NoMemory)?;
        Ok(())
    }

    /// Ends every process (as SIGKILL would) and forgets them; returns the
    /// guest frames still in use (the kernel area's alone when nothing
    /// leaked).
    pub fn end(&mut self) -> u64 {
        let pids: Vec<Pid> = self.k.table.procs.keys().copied().collect();
        for pid in pids {
            self.k.exit_process(
                pid,
                crate::task::ExitStatus::Signaled {
                    signal: crate::signal::SIGKILL,
                    core: false,
                },
            );
        }
        self.k.table = crate::task::Table {
            next_pid: 1,
            ..Default::default()
        };
        self.k.init_exit = None;
        self.k.retrying = None;
        // As the kernel itself does it: when enough frames wait for it.
        if self.k.frames.quarantined() > 1024 {
            self.k.reset_translations();
        }
        self.k.frames.used()
    }

    /// The host directory that is the processes' root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The threads that can make a call now (alive, not blocked).
    pub fn runnable(&self) -> Vec<Pid> {
        self.k
            .table
            .threads
            .iter()
            .filter(|(_, t)| t.blocked.is_none())
            .map(|(&t, _)| t)
            .collect()
    }

    /// Makes call `nr` from thread `tid` as its `syscall` instruction would,
    /// then lets the waits that are over end (retrying blocked calls).
    /// Returns what the thread's `rax` holds after it, or `None` when the
    /// thread is gone or still blocked.
    pub fn call(&mut self, tid: Pid, nr: u64, args: [u64; 6]) -> Option<u64> {
        self.k.table.threads.get(&tid)?;
        let r = crate::syscalls::dispatch(&mut self.k, tid, nr, args);
        let stays = self.k.complete(tid, nr, args, r);
        self.k.wake_ready();
        let t = self.k.table.threads.get(&tid)?;
        (stays || t.blocked.is_none()).then_some(t.regs.rax)
    }

    /// Copies the kernel's state as a freeze does, copies that as a thaw
    /// does, and compares the last copy with the kernel: the same
    /// processes, threads (registers, waits) and descriptors, the same
    /// bytes in the VM's pipes. The copies are dropped after, as a
    /// template and a clone are, and the kernel goes on untouched. (Once
    /// process 1 has ended there is nothing to copy.)
    pub fn copy_check(&mut self) -> Result<(), String> {
        if self.k.init_exit.is_some() {
            return Ok(()); // nothing to freeze (refused so, rightly)
        }
        let template = self.k.capture_state()?;
        let stdio = [null_fd(false), null_fd(true), null_fd(true)];
        let stdio = stdio.map(|f| f.map(std::rc::Rc::new));
        let [Ok(i), Ok(o), Ok(e)] = stdio else {
            return Err("/dev/null cannot be opened".into());
        };
        let clone = super::freeze::copy_again(&template, [i, o, e])?;
        let (was, is) = (summary(&self.k.table), summary(&clone.table));
        if was != is {
            return Err(format!("the copy differs:\n{was:#?}\n{is:#?}"));
        }
        let (was, is) = (self.k.pipe_bytes.get(), clone.pipe_bytes.get());
        if was != is {
            return Err(format!("pipes hold {was} bytes, their copies {is}"));
        }
        drop((template, clone));
        if self.k.pipe_bytes.get() != was {
            return Err("dropping the copies changed the kernel's pipes".into());
        }
        Ok(())
    }

    /// Guest frames in use and in all: what the calls' memory accounting
    /// says, for checks across calls.
    pub fn frames(&self) -> (u64, u64) {
        (self.k.frames.used(), self.k.frames.total())
    }
}
