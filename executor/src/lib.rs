//! Flint's VM core: runs one WebAssembly (WASI preview 1) function in its
//! own KVM micro-VM.
//!
//! The guest is `guest-runtime/`, a `no_std` program the VMM puts straight
//! into 64-bit mode at CPL 3; it talks to the host over a virtio-console
//! (MMIO) data channel and a serial port for its log. See `docs/design.md`.
//!
//! ```no_run
//! use flint_executor::{run, BufferIo, Invocation, VmConfig};
//! let module = std::fs::read("examples/hello.wasm").unwrap();
//! let mut io = BufferIo::default();
//! let inv = Invocation { args: vec!["hello".into(), "world".into()], env: vec![] };
//! let report = run(&VmConfig::default(), &module, &inv, &mut io).unwrap();
//! assert_eq!(report.exit_code, 0);
//! ```

pub mod arch;
pub mod devices;
mod error;
mod io;
pub mod landlock;
mod loader;
mod machine;
pub mod persist;
pub mod seccomp;
mod session;
pub mod vstate;

pub use devices::serial::SerialState;
pub use devices::virtio::console::ConsoleState;
pub use error::{chain as error_chain, ProtocolViolation, RunError, SetupError};
pub use io::{BufferIo, GuestIo, StdIo};
pub use machine::{run, Invocation, Phases, ReadyVm, RunReport, VmConfig, VmProbe, VmState};
pub use persist::{InvalidState, Persist};
pub use vstate::vcpu::VcpuState;
pub use vstate::vm::{kvm_device_path, VmError};
