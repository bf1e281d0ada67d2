//! One save/restore shape for every piece of a VM's state, as
//! Firecracker's `Persist`: each component has a serde `State` (what goes
//! into a snapshot's state file), `save` captures it, and `restore` builds
//! the component again from it and from what it needs besides (guest
//! memory, a fresh vCPU), validating everything it reads: a state comes
//! from a file and is untrusted. Each implementation has a round-trip
//! test beside it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A component that can be saved and restored.
pub trait Persist: Sized {
    /// What is saved.
    type State: Serialize + DeserializeOwned;
    /// What restoring needs besides the state.
    type Args<'a>;
    /// Why saving or restoring failed.
    type Error;

    /// Captures the component's state (the vCPU's needs `&mut`: it
    /// completes the exit it stopped at first).
    fn save(&mut self) -> Result<Self::State, Self::Error>;

    /// Builds the component from `state`, refusing a state it could not
    /// have saved.
    fn restore(args: Self::Args<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}

/// A device's saved state that it refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidState(pub String);
