//! Files as a container sees them: its root filesystem (a host directory),
//! pipes and sockets, and the trees Flint provides itself (`/proc`, `/dev`).

pub mod file;
pub mod pipe;
pub mod procfs;
pub mod root;
pub mod socket;
