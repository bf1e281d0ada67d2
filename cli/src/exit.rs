//! Exit codes of `flint run` when Flint, not the function, ends the run.
//! The function's own exit status is passed through otherwise. Documented in
//! the README; keep the two in sync.

use flint_executor::RunError;

pub const USAGE: i32 = 2;
pub const INVALID_SNAPSHOT: i32 = 119;
pub const INVALID_MODULE: i32 = 120;
pub const MISSING_IMPORT: i32 = 121;
pub const TRAP: i32 = 122;
pub const OUT_OF_MEMORY: i32 = 123;
pub const TIMEOUT: i32 = 124;
pub const FLINT_ERROR: i32 = 125;
pub const KVM_UNAVAILABLE: i32 = 126;
pub const GUEST_CRASH: i32 = 127;

pub fn code(e: &RunError) -> i32 {
    match e {
        RunError::InvalidModule(_) | RunError::NotACommand(_) => INVALID_MODULE,
        RunError::MissingImport(_) => MISSING_IMPORT,
        RunError::Trap(_) => TRAP,
        RunError::OutOfMemory { .. } => OUT_OF_MEMORY,
        RunError::Timeout(_) => TIMEOUT,
        RunError::Kvm(_) => KVM_UNAVAILABLE,
        RunError::GuestCrash(_) | RunError::GuestProtocol(_) | RunError::GuestInternal(_) => {
            GUEST_CRASH
        }
        RunError::Config(_) => USAGE,
        RunError::InvalidState(_) => INVALID_SNAPSHOT,
        RunError::Output(_) | RunError::Input(_) | RunError::Setup(_) | RunError::Aborted => {
            FLINT_ERROR
        }
    }
}

/// Prints `flint: <error>` and its chain of causes to stderr.
pub fn report(e: &dyn std::error::Error) {
    eprintln!("flint: {}", flint_executor::error_chain(e));
}
