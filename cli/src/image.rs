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
    /// Build an OCI image holding WebAssembly modules at `/NAME.wasm`.
    Build {
        /// The modules: the first is the image's entrypoint, the others
        /// can be run in its containers with `ctr task exec`.
        #[arg(required = true, num_args = 1..)]
        modules: Vec<PathBuf>,
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
        tag,
        output,
    } = a.command;
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
    let archive = match flint_image::build_with(&refs, &tag) {
        Ok(a) => a,
        Err(e) => {
            exit::report(&e);
            return exit::FLINT_ERROR;
        }
    };
    if let Err(e) = std::fs::write(&output, archive) {
        eprintln!("flint: cannot write {}: {e}", output.display());
        return exit::FLINT_ERROR;
    }
    eprintln!(
        "flint: image {tag} written to {} (module at /{name})",
        output.display()
    );
    0
}
