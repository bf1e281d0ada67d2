//! Builds examples/functions for wasm32-wasip1, puts each module in OUT_DIR
//! (for tests) and at examples/NAME.wasm (for people).

fn main() {
    let root = flint_build_support::workspace_root();
    let functions = root.join("examples/functions");
    let release = flint_build_support::build(&functions, "wasm32-wasip1", "flint-wasm");
    let mut names: Vec<String> = std::fs::read_dir(functions.join("src/bin"))
        .expect("examples/functions/src/bin")
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(String::from))
        .collect();
    names.push("bigheap".into()); // the reactor, src/bigheap.rs
    names.sort();
    for name in &names {
        let built = release.join(format!("{name}.wasm"));
        let out = flint_build_support::copy_to_out_dir(&built, &format!("{name}.wasm"));
        let visible = root.join("examples").join(format!("{name}.wasm"));
        let fresh = std::fs::read(&out).ok();
        if std::fs::read(&visible).ok() != fresh {
            std::fs::copy(&out, &visible)
                .unwrap_or_else(|e| panic!("copying to {}: {e}", visible.display()));
        }
    }
    // Linux test programs, static (musl).
    let linux = root.join("examples/linux");
    let release =
        flint_build_support::build(&linux, "x86_64-unknown-linux-musl", "flint-linux-examples");
    for e in std::fs::read_dir(linux.join("src/bin")).expect("examples/linux/src/bin") {
        let name = e
            .unwrap()
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        flint_build_support::copy_to_out_dir(&release.join(&name), &name);
    }
    println!(
        "cargo:rustc-env=FLINT_EXAMPLES_DIR={}",
        std::env::var("OUT_DIR").unwrap()
    );
}
