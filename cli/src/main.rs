//! `flint`: the command-line front end. Subcommands parse their arguments
//! into the executor's request types and map outcomes to exit codes; the
//! work happens in the library crates.

mod admin;
mod exit;
mod image;
mod linux;
mod run;
mod serve;
mod snapshot;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flint",
    version,
    about = "Run WebAssembly functions in KVM micro-VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a fresh micro-VM and run a WASI command module, or a Linux
    /// ELF program, in it.
    Run(run::RunArgs),
    /// Boot a module to its ready point and save the VM to a directory
    /// (`flint snapshot inspect DIR` describes one).
    Snapshot(snapshot::SnapshotArgs),
    /// Restore a snapshot into a new VM and run one invocation.
    Invoke(snapshot::InvokeArgs),
    /// Serve Knative Services over HTTP, each request in a VM restored
    /// from the revision's snapshot.
    Serve(serve::ServeArgs),
    /// Deploy (or update) a Knative Service on a running gateway.
    Apply(admin::ApplyArgs),
    /// Remove a service from a running gateway.
    Delete(admin::DeleteArgs),
    /// List the services of a running gateway.
    List(admin::ListArgs),
    /// Show a service of a running gateway with its Knative status.
    Get(admin::GetArgs),
    /// OCI images of WebAssembly functions.
    Image(image::ImageArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLINT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::main(args),
        Command::Snapshot(args) => snapshot::snapshot(args),
        Command::Invoke(args) => snapshot::invoke(args),
        Command::Serve(args) => serve::main(args),
        Command::Apply(args) => admin::apply(args),
        Command::Delete(args) => admin::delete(args),
        Command::List(args) => admin::list(args),
        Command::Get(args) => admin::get(args),
        Command::Image(args) => image::main(args),
    };
    std::process::exit(code);
}
