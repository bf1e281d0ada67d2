//! Shared by the build scripts that build Flint's non-host parts: the guest
//! runtime (`x86_64-unknown-none`) and the example functions
//! (`wasm32-wasip1`). Each is its own cargo workspace, built by a nested
//! `cargo build --release` into `target/<name>` under the main workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The main workspace's root, from the calling build script's package dir.
pub fn workspace_root() -> PathBuf {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run from a build script"));
    dir.parent()
        .expect("crate inside the workspace")
        .to_path_buf()
}

/// Builds the workspace at `project` for `target` in release mode into
/// `<root>/target/<target_dir_name>`, and returns that target's release dir.
/// Panics with a message that says how to fix a missing target.
pub fn build(project: &Path, target: &str, target_dir_name: &str) -> PathBuf {
    for p in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", project.join(p).display());
    }
    check_target_installed(target);
    let target_dir = workspace_root().join("target").join(target_dir_name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(&target_dir);
    scrub_cargo_env(&mut cmd);
    let status = cmd
        .status()
        .expect("could not run cargo for a nested build");
    if !status.success() {
        panic!(
            "building {} for {target} failed (see the errors above)",
            project.display()
        );
    }
    target_dir.join(target).join("release")
}

/// Copies `from` into OUT_DIR as `name` and returns the new path.
pub fn copy_to_out_dir(from: &Path, name: &str) -> PathBuf {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("run from a build script")).join(name);
    std::fs::copy(from, &out).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    out
}

/// Fails early, with the fix, when the target's standard library is missing.
fn check_target_installed(target: &str) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("running rustc");
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .exists()
    {
        panic!(
            "the Rust target {target} is not installed; run `rustup target add x86_64-unknown-none wasm32-wasip1` (scripts/setup does it)"
        );
    }
}

/// The outer build's CARGO_* and RUSTFLAGS settings are for the host; the
/// nested build must see none of them (registry and network settings stay).
fn scrub_cargo_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        let keep = k == "CARGO_HOME"
            || k.starts_with("CARGO_NET")
            || k.starts_with("CARGO_REGISTR")
            || k.starts_with("CARGO_HTTP");
        if (k.starts_with("CARGO_") && !keep) || k == "RUSTFLAGS" || k == "RUSTC_WORKSPACE_WRAPPER"
        {
            cmd.env_remove(&k);
        }
    }
}
