//! Why a run failed, in terms a user can act on.

use std::time::Duration;

use crate::devices::virtio::DeviceError;
use crate::loader::LoadError;
use crate::session::SessionError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// KVM cannot be used on this machine (missing, no permission, too old).
    #[error(transparent)]
    Kvm(VmError),
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("the file is not a valid WebAssembly module: {0}")]
    InvalidModule(String),
    #[error("the module imports {0}, which Flint does not provide")]
    MissingImport(String),
    #[error("the module is not a WASI command: {0}")]
    NotACommand(String),
    #[error("the function trapped: {0}")]
    Trap(String),
    #[error("the function needs more memory than the VM's {memory_mib} MiB ({detail}); raise --memory-mib")]
    OutOfMemory { memory_mib: u64, detail: String },
    #[error("the function did not finish within {} ms; its VM was stopped", .0.as_millis())]
    Timeout(Duration),
    #[error("the guest crashed: {0}")]
    GuestCrash(String),
    #[error("the guest broke the host-guest protocol")]
    GuestProtocol(#[source] ProtocolViolation),
    #[error("writing the function's output failed")]
    Output(#[source] std::io::Error),
    #[error("reading the function's input failed")]
    Input(#[source] std::io::Error),
    #[error("setting up the VM failed")]
    Setup(#[source] SetupError),
    #[error("the guest runtime failed: {0}")]
    GuestInternal(String),
    /// The caller's abort flag stopped the VM (its memory backend failed).
    #[error("the VM was stopped because its memory could not be served")]
    Aborted,
    /// Saved state (a snapshot) that cannot be restored.
    #[error("invalid VM state: {0}")]
    InvalidState(String),
}

/// A guest misbehaving on the data channel or its device.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolViolation {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Session(SessionError),
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Vm(VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("spawning the vCPU thread failed")]
    Thread(#[source] std::io::Error),
    #[error("the vCPU thread panicked")]
    VcpuPanic,
}

impl From<VmError> for RunError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::KvmMissing { .. }
            | VmError::KvmDenied { .. }
            | VmError::KvmOpen { .. }
            | VmError::KvmVersion(_) => RunError::Kvm(e),
            other => RunError::Setup(SetupError::Vm(other)),
        }
    }
}

impl From<VcpuError> for RunError {
    fn from(e: VcpuError) -> Self {
        RunError::Setup(SetupError::Vcpu(e))
    }
}

impl From<LoadError> for RunError {
    fn from(e: LoadError) -> Self {
        RunError::Setup(SetupError::Load(e))
    }
}

impl From<DeviceError> for RunError {
    fn from(e: DeviceError) -> Self {
        RunError::GuestProtocol(ProtocolViolation::Device(e))
    }
}

impl From<SessionError> for RunError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Output(io) => RunError::Output(io),
            SessionError::Input(io) => RunError::Input(io),
            other => RunError::GuestProtocol(ProtocolViolation::Session(other)),
        }
    }
}

/// An error and its sources, `: `-separated (for logs and messages).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
