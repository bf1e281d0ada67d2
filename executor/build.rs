//! Builds the guest runtime (guest-runtime/) for `x86_64-unknown-none`; the
//! executor embeds the resulting ELF, so the `flint` binary is self-contained.

fn main() {
    let root = flint_build_support::workspace_root();
    println!("cargo:rerun-if-changed={}", root.join("abi/src").display());
    let release = flint_build_support::build(
        &root.join("guest-runtime"),
        "x86_64-unknown-none",
        "flint-guest",
    );
    let elf = flint_build_support::copy_to_out_dir(&release.join("flint-guest"), "flint-guest");
    println!("cargo:rustc-env=FLINT_GUEST_ELF={}", elf.display());
}
