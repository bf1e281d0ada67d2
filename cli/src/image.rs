//! `flint image build MODULE -t REFERENCE -o OUT.tar`: packs a module into
//! an OCI image layout archive (`ctr images import` reads it).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::exit;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an OCI image holding WebAssembly modules at `/NAME.wasm`, or
    /// a Linux root filesystem (`--rootfs DIR`).
    Build {
        /// The modules: the first is the image's entrypoint, the others
        /// can be run in its containers with `ctr task exec`.
        #[arg(required_unless_present = "rootfs", num_args = 0..)]
        modules: Vec<PathBuf>,
        /// A directory to pack as a Linux image's root filesystem.
        #[arg(long, conflicts_with = "modules")]
        rootfs: Option<PathBuf>,
        /// The Linux image's entrypoint (a path inside the root), e.g. /bin/sh.
        #[arg(long, requires = "rootfs")]
        entrypoint: Option<String>,
        /// The Linux image's default arguments (`Cmd`), repeated.
        #[arg(long = "cmd", requires = "rootfs", allow_hyphen_values = true)]
        cmd: Vec<String>,
        /// An environment variable of the Linux image (K=V), repeated.
        #[arg(long = "env", requires = "rootfs")]
        env: Vec<String>,
        /// The Linux image's working directory.
        #[arg(long, requires = "rootfs")]
        workdir: Option<String>,
        /// The image reference, e.g. docker.io/library/hello:v1.
        #[arg(short = 't', long = "tag")]
        tag: String,
        /// Where to write the image layout archive.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

pub fn main(a: ImageArgs) -> i32 {
    let ImageCommand::Build {
        modules,
        rootfs,
        entrypoint,
        cmd,
        env,
        workdir,
        tag,
        output,
    } = a.command;
    if let Some(dir) = rootfs {
        let mut env = env;
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        let mut config =
            serde_json::json!({ "Env": env, "WorkingDir": workdir.unwrap_or_else(|| "/".into()) });
        if let Some(e) = entrypoint {
            config["Entrypoint"] = serde_json::json!([e]);
        }
        if !cmd.is_empty() {
            config["Cmd"] = serde_json::json!(cmd);
        }
        let what = format!("image {tag} of {}", dir.display());
        return write_archive(flint_image::build_dir(&dir, config, &tag), &output, &what);
    }
    let mut files = Vec::new();
    for module in &modules {
        let bytes = match std::fs::read(module) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("flint: cannot read module {}: {e}", module.display());
                return exit::FLINT_ERROR;
            }
        };
        if !bytes.starts_with(b"\0asm") {
            eprintln!(
                "flint: {} is not a WebAssembly module (no \\0asm magic number)",
                module.display()
            );
            return exit::INVALID_MODULE;
        }
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "module.wasm".into());
        if files.iter().any(|(n, _)| *n == name) {
            eprintln!("flint: two modules are named {name}: an image holds each at /{name}");
            return exit::USAGE;
        }
        files.push((name, bytes));
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let name = &files[0].0;
    let what = format!("image {tag} (module at /{name})");
    write_archive(flint_image::build_with(&refs, &tag), &output, &what)
}

/// Writes a built image archive to `output`; the exit code.
fn write_archive(
    archive: Result<Vec<u8>, flint_image::ImageError>,
    output: &std::path::Path,
    what: &str,
) -> i32 {
    let archive = match archive {
        Ok(a) => a,
        Err(e) => {
            exit::report(&e);
            return exit::FLINT_ERROR;
        }
    };
    if let Err(e) = std::fs::write(output, archive) {
        eprintln!("flint: cannot write {}: {e}", output.display());
        return exit::FLINT_ERROR;
    }
    eprintln!("flint: {what} written to {}", output.display());
    0
}
