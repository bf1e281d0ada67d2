//! Where the built example functions are.
//!
//! `cargo build` compiles every function in `examples/functions/src/bin/`
//! for `wasm32-wasip1`; this crate names them. They are Flint's demo and its
//! test fixtures.

use std::path::PathBuf;

/// The path of example `name`'s module (built into this crate's OUT_DIR).
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("FLINT_EXAMPLES_DIR")).join(format!("{name}.wasm"))
}

/// The bytes of example `name`'s module.
pub fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap_or_else(|e| panic!("example {name}: {e}"))
}

/// The path of Linux test program `name` (a static x86-64 ELF built from
/// `examples/linux/src/bin/NAME.rs` for `x86_64-unknown-linux-musl`).
pub fn linux_path(name: &str) -> PathBuf {
    PathBuf::from(env!("FLINT_EXAMPLES_DIR")).join(name)
}
