//! A vCPU: its long-mode set-up, its run loop step, and how another thread
//! stops it.

use std::sync::Once;

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::arch::x86_64::{entry_regs, long_mode_sregs};

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
}

impl Vcpu {
    pub(super) fn new(fd: VcpuFd, _kvm: &kvm_ioctls::Kvm) -> Self {
        Self { fd }
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
