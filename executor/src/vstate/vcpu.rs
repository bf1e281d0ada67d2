//! A vCPU: its long-mode set-up, its run loop step, and how another thread
//! stops it.

use std::sync::{Once, OnceLock};

use kvm_bindings::{
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_sync_regs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId,
    Msrs,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};

use crate::arch::x86_64::{entry_regs, long_mode_sregs};
use crate::persist::Persist;

const MSR_IA32_TSC: u32 = 0x10;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("reading the vCPU's special registers failed")]
    GetSregs(#[source] kvm_ioctls::Error),
    #[error("setting the vCPU's registers failed")]
    SetRegs(#[source] kvm_ioctls::Error),
    #[error("reading the guest's TSC failed")]
    Tsc(#[source] kvm_ioctls::Error),
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    #[error("reading vCPU state ({0}) failed")]
    Save(&'static str, #[source] kvm_ioctls::Error),
    #[error("restoring vCPU state ({0}) failed")]
    Restore(&'static str, #[source] kvm_ioctls::Error),
    #[error("the vCPU state is invalid: {0}")]
    Invalid(String),
}

/// Words in the legacy 4 KiB XSAVE area.
const XSAVE_WORDS: usize = 1024;

/// Everything of a vCPU that a snapshot keeps. XSAVE covers the x87/SSE
/// state that `KVM_GET_FPU` would give.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: Vec<u32>,
    pub xcrs: kvm_xcrs,
    pub events: kvm_vcpu_events,
    /// The MSRs that round-trip on this host (some are read-only or refused,
    /// notably under PVM), with their values.
    pub msrs: Vec<kvm_msr_entry>,
}

/// The MSR indices KVM reports, asked once per process.
fn msr_index_list(kvm: &kvm_ioctls::Kvm) -> Vec<u32> {
    static LIST: OnceLock<Vec<u32>> = OnceLock::new();
    LIST.get_or_init(|| {
        kvm.get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_else(|e| {
                tracing::error!("KVM_GET_MSR_INDEX_LIST failed ({e}): snapshots are refused");
                Vec::new()
            })
    })
    .clone()
}

/// What the guest did that needs the VMM, in hypervisor-neutral terms.
#[derive(Debug)]
pub enum VcpuEvent<'a> {
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    /// Another thread kicked the vCPU out of the guest (see [`kick`]).
    Interrupted,
    /// The guest triple-faulted (any exception: there is no IDT).
    Shutdown,
    /// Anything else KVM reported: the guest is not runnable any more.
    Fault(String),
}

#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    msr_indices: Vec<u32>,
}

impl Vcpu {
    pub(super) fn new(fd: VcpuFd, kvm: &kvm_ioctls::Kvm) -> Self {
        Self {
            fd,
            msr_indices: msr_index_list(kvm),
        }
    }

    /// Loads saved state into this vCPU (fresh, or one being reset in
    /// place), after checking it.
    pub fn load(&self, state: &VcpuState) -> Result<(), VcpuError> {
        if state.sregs.cs.dpl != 3 || state.sregs.cs.selector & 3 != 3 {
            return Err(VcpuError::Invalid(
                "the vCPU was not running at CPL 3".into(),
            ));
        }
        if state.xsave.len() != XSAVE_WORDS {
            return Err(VcpuError::Invalid(format!(
                "the XSAVE area has {} words, not {XSAVE_WORDS}",
                state.xsave.len()
            )));
        }
        if state.msrs.len() > self.msr_indices.len().max(64) {
            return Err(VcpuError::Invalid(format!(
                "{} MSRs is more than KVM has",
                state.msrs.len()
            )));
        }
        self.fd
            .set_sregs(&state.sregs)
            .map_err(|e| VcpuError::Restore("special registers", e))?;
        let mut regs = state.regs;
        // The guest always runs with IOPL 3; PVM does not report it back.
        regs.rflags |= 0x3000;
        self.fd
            .set_regs(&regs)
            .map_err(|e| VcpuError::Restore("registers", e))?;
        let mut xsave = kvm_xsave::default();
        xsave.region.copy_from_slice(&state.xsave);
        // SAFETY: `xsave` is a complete kvm_xsave (the legacy 4 KiB area),
        // which is what KVM_SET_XSAVE reads.
        unsafe { self.fd.set_xsave(&xsave) }.map_err(|e| VcpuError::Restore("XSAVE area", e))?;
        self.fd
            .set_xcrs(&state.xcrs)
            .map_err(|e| VcpuError::Restore("XCRs", e))?;
        if !state.msrs.is_empty() {
            let msrs = Msrs::from_entries(&state.msrs)
                .map_err(|_| VcpuError::Invalid("too many MSRs".into()))?;
            let n = self
                .fd
                .set_msrs(&msrs)
                .map_err(|e| VcpuError::Restore("MSRs", e))?;
            if n != state.msrs.len() {
                let bad = state.msrs[n].index;
                return Err(VcpuError::Invalid(format!("KVM refused MSR {bad:#x}")));
            }
        }
        self.fd
            .set_vcpu_events(&state.events)
            .map_err(|e| VcpuError::Restore("events", e))
    }

    /// Puts the vCPU in 64-bit mode at CPL 3 at `entry` with stack `stack_top`.
    pub fn setup_long_mode(&self, entry: u64, stack_top: u64) -> Result<(), VcpuError> {
        let sregs = self.fd.get_sregs().map_err(VcpuError::GetSregs)?;
        self.fd
            .set_sregs(&long_mode_sregs(sregs))
            .map_err(VcpuError::SetRegs)?;
        self.fd
            .set_regs(&entry_regs(entry, stack_top))
            .map_err(VcpuError::SetRegs)
    }

    /// Reads the general registers (one ioctl).
    pub fn regs(&self) -> Result<kvm_regs, VcpuError> {
        self.fd
            .get_regs()
            .map_err(|e| VcpuError::Save("registers", e))
    }

    /// Sets the general registers (one ioctl).
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), VcpuError> {
        self.fd.set_regs(regs).map_err(VcpuError::SetRegs)
    }

    /// Reads the special registers (one ioctl).
    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(VcpuError::GetSregs)
    }

    /// Sets the special registers (one ioctl).
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        self.fd.set_sregs(sregs).map_err(VcpuError::SetRegs)
    }

    /// Sets MSRs; every one must be accepted.
    pub fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<(), VcpuError> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list =
            Msrs::from_entries(&entries).map_err(|_| VcpuError::Invalid("too many MSRs".into()))?;
        let n = self
            .fd
            .set_msrs(&list)
            .map_err(|e| VcpuError::Restore("MSRs", e))?;
        match msrs.get(n) {
            None => Ok(()),
            Some((index, _)) => Err(VcpuError::Invalid(format!("KVM refused MSR {index:#x}"))),
        }
    }

    /// Gives the vCPU the CPUID table KVM supports (needed before XCR0 may
    /// enable AVX state).
    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<(), VcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(|e| VcpuError::Restore("CPUID", e))
    }

    /// Sets XCR0, the set of state components XSAVE manages.
    pub fn set_xcr0(&self, value: u64) -> Result<(), VcpuError> {
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = value;
        self.fd
            .set_xcrs(&xcrs)
            .map_err(|e| VcpuError::Restore("XCRs", e))
    }

    /// The XSAVE area (x87, SSE and AVX state), as KVM gives it.
    pub fn xsave(&self) -> Result<Box<kvm_xsave>, VcpuError> {
        self.fd
            .get_xsave()
            .map(Box::new)
            .map_err(|e| VcpuError::Save("XSAVE area", e))
    }

    /// Loads an XSAVE area read by [`Vcpu::xsave`].
    pub fn set_xsave(&self, xsave: &kvm_xsave) -> Result<(), VcpuError> {
        // SAFETY: `xsave` is a complete kvm_xsave (the legacy 4 KiB area),
        // which is what KVM_SET_XSAVE reads.
        unsafe { self.fd.set_xsave(xsave) }.map_err(|e| VcpuError::Restore("XSAVE area", e))
    }

    /// Has KVM fill the kvm_run sync-regs area (general and special
    /// registers) at every exit, so a trap handler reads them without an
    /// ioctl.
    pub fn enable_sync_regs(&mut self) {
        self.fd.set_sync_valid_reg(SyncReg::Register);
        self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
    }

    /// The sync-regs area: valid after an exit once [`Vcpu::enable_sync_regs`]
    /// was called; changes reach the vCPU at the next `KVM_RUN` for the
    /// parts marked with [`Vcpu::mark_sync_dirty`].
    pub fn sync_regs_mut(&mut self) -> &mut kvm_sync_regs {
        self.fd.sync_regs_mut()
    }

    /// Marks the general (`regs`) and special (`sregs`) registers of the
    /// sync-regs area as changed, so the next `KVM_RUN` loads them.
    pub fn mark_sync_dirty(&mut self, regs: bool, sregs: bool) {
        if regs {
            self.fd.set_sync_dirty_reg(SyncReg::Register);
        }
        if sregs {
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
        }
    }

    /// The guest's current TSC value.
    pub fn guest_tsc(&self) -> Result<u64, VcpuError> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }])
        .expect("one MSR fits");
        let n = self.fd.get_msrs(&mut msrs).map_err(VcpuError::Tsc)?;
        if n != 1 {
            return Err(VcpuError::Tsc(kvm_ioctls::Error::new(libc::EINVAL)));
        }
        Ok(msrs.as_slice()[0].data)
    }

    /// The guest's TSC frequency in kHz, if KVM reports it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&k| k > 0)
    }

    /// Where the guest was, for crash reports.
    pub fn describe(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                "rip={:#x} rsp={:#x} rflags={:#x} cr2={:#x} cs={:#x}",
                r.rip, r.rsp, r.rflags, s.cr2, s.cs.selector
            ),
            _ => "registers unavailable".into(),
        }
    }

    /// Runs the guest until it needs the VMM.
    pub fn run(&mut self) -> Result<VcpuEvent<'_>, VcpuError> {
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::MmioRead(a, d) => VcpuEvent::MmioRead(a, d),
                VcpuExit::MmioWrite(a, d) => VcpuEvent::MmioWrite(a, d),
                VcpuExit::IoIn(p, d) => VcpuEvent::IoIn(p, d),
                VcpuExit::IoOut(p, d) => VcpuEvent::IoOut(p, d),
                VcpuExit::Shutdown => VcpuEvent::Shutdown,
                VcpuExit::Intr => VcpuEvent::Interrupted,
                VcpuExit::Hlt => VcpuEvent::Fault("the guest executed hlt".into()),
                VcpuExit::InternalError => VcpuEvent::Fault(
                    "KVM internal error (an instruction KVM cannot emulate)".into(),
                ),
                VcpuExit::FailEntry(reason, _) => {
                    VcpuEvent::Fault(format!("VM entry failed (reason {reason:#x})"))
                }
                other => VcpuEvent::Fault(format!("unexpected VM exit {other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VcpuEvent::Interrupted)
            }
            Err(e) => Err(VcpuError::Run(e)),
        }
    }
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN` (and out
/// of blocking reads: the handler is installed without `SA_RESTART`).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler once per process. Call before any vCPU runs.
pub fn init_kick_signal() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .expect("installing the vCPU kick signal handler");
    });
}

/// Blocks every asynchronous signal on the calling thread but the kick:
/// process-directed signals (SIGCHLD, SIGTERM, ...) then go to the
/// process's other threads, whose handlers may make calls a vCPU thread's
/// seccomp filter refuses (a self-pipe write, say). Synchronous ones
/// (faults, SIGSYS from the filter) stay deliverable.
pub fn block_signals_but_kick() {
    // SAFETY: builds a signal set on the stack and applies it to this
    // thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [
            kick_signal(),
            libc::SIGSYS,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// The calling thread's handle, for [`kick`].
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Interrupts `thread` if it is in `KVM_RUN` or a blocking system call. The
/// caller sets its stop flag first and repeats the kick until the thread
/// acknowledges, which closes the race with a thread about to enter KVM_RUN.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is a live vCPU thread (the caller joins it only after
    // the last kick), and the signal has a handler installed by
    // `init_kick_signal`, so delivery cannot kill the process.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
impl Persist for Vcpu {
    type State = VcpuState;
    /// A fresh vCPU of the VM being restored.
    type Args<'a> = Vcpu;
    type Error = VcpuError;

    /// Captures the vCPU's state. The vCPU must be stopped after an exit;
    /// the exit is completed first so the state is consistent.
    fn save(&mut self) -> Result<VcpuState, VcpuError> {
        // Let KVM finish the instruction that exited (an MMIO store) without
        // running any guest code: KVM_RUN with immediate_exit returns EINTR.
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
        let regs = self
            .fd
            .get_regs()
            .map_err(|e| VcpuError::Save("registers", e))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::Save("special registers", e))?;
        let xsave = self
            .fd
            .get_xsave()
            .map_err(|e| VcpuError::Save("XSAVE area", e))?
            .region
            .to_vec();
        let xcrs = self.fd.get_xcrs().map_err(|e| VcpuError::Save("XCRs", e))?;
        let events = self
            .fd
            .get_vcpu_events()
            .map_err(|e| VcpuError::Save("events", e))?;
        if self.msr_indices.is_empty() {
            return Err(VcpuError::Invalid(
                "KVM lists no MSRs, so a snapshot would lose them".into(),
            ));
        }
        let mut msrs = Vec::new();
        let mut dropped = Vec::new();
        for &index in &self.msr_indices {
            let mut one = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }])
            .expect("one MSR fits");
            if self.fd.get_msrs(&mut one).ok() != Some(1) {
                dropped.push(index);
                continue;
            }
            // Keep it only if writing it back works (setting an MSR to its
            // current value changes nothing).
            if self.fd.set_msrs(&one).ok() == Some(1) {
                msrs.push(one.as_slice()[0]);
            } else {
                dropped.push(index);
            }
        }
        if !dropped.is_empty() {
            // The same set every time under one KVM: said once.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::info!(
                    "{} of {} MSRs KVM lists do not read back and write again here and are not saved: {dropped:x?}",
                    dropped.len(),
                    self.msr_indices.len()
                )
            });
        }
        Ok(VcpuState {
            regs,
            sregs,
            xsave,
            xcrs,
            events,
            msrs,
        })
    }

    fn restore(fresh: Vcpu, state: &VcpuState) -> Result<Self, VcpuError> {
        fresh.load(state)?;
        Ok(fresh)
    }
}
