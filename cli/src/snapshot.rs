//! `flint snapshot MODULE -o DIR`, `flint snapshot inspect DIR` and
//! `flint invoke DIR [-- ARGS...]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use flint_executor::{StdIo, VmConfig};
use flint_snapshotter::{Backend, InvokeOptions, Snapshot, SnapshotError};

use crate::exit;
use crate::run::CallArgs;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    command: Option<SnapshotCommand>,
    /// The WebAssembly module (a WASI command) to boot and snapshot.
    module: Option<PathBuf>,
    /// The snapshot directory to write.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Guest memory in MiB (32 to 3072).
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Give up on booting to the ready point after this many milliseconds.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Describe a snapshot: format version, sizes, checksum, working set;
    /// checks every memory page against its checksum.
    Inspect { dir: PathBuf },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Uffd,
    File,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// A snapshot directory made by `flint snapshot`.
    dir: PathBuf,
    /// Where the restored VM's memory comes from (default: uffd, or file
    /// where this user may not use userfaultfd, which needs root or
    /// vm.unprivileged_userfaultfd=1).
    #[arg(long, value_enum)]
    memory_backend: Option<BackendArg>,
    /// Install the recorded working set before resuming (uffd backend).
    #[arg(long, value_enum, default_value = "on")]
    prefetch: OnOff,
    /// Run this many invocations in one restored VM, reset to the snapshot
    /// in place between them (memory then comes from a private file
    /// mapping, which a reset needs); stops at the first that fails.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    #[command(flatten)]
    call: CallArgs,
}

fn timeout(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn fail(e: &SnapshotError) -> i32 {
    exit::report(e);
    match e {
        SnapshotError::Run(r) => exit::code(r),
        SnapshotError::Format { .. }
        | SnapshotError::MemorySize { .. }
        | SnapshotError::MemoryCorrupt { .. }
        | SnapshotError::WorkingSet { .. } => exit::INVALID_SNAPSHOT,
        SnapshotError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            exit::INVALID_SNAPSHOT
        }
        _ => exit::FLINT_ERROR,
    }
}

pub fn snapshot(a: SnapshotArgs) -> i32 {
    if let Some(SnapshotCommand::Inspect { dir }) = a.command {
        return inspect(&dir);
    }
    let (Some(module_path), Some(out)) = (a.module, a.output) else {
        eprintln!("flint: usage: flint snapshot MODULE -o DIR, or flint snapshot inspect DIR");
        return exit::USAGE;
    };
    let module = match std::fs::read(&module_path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("flint: cannot read module {}: {e}", module_path.display());
            return exit::FLINT_ERROR;
        }
    };
    let config = VmConfig {
        memory_mib: a.memory_mib,
        timeout: timeout(a.timeout_ms),
        ..VmConfig::default()
    };
    let name = module_path.display().to_string();
    match flint_snapshotter::create(&module, &name, &out, &config, &mut StdIo) {
        Ok(info) => {
            eprintln!(
                "flint: snapshot of {} written to {} ({} MiB memory, {} pages of data)",
                name,
                out.display(),
                info.memory_bytes >> 20,
                info.data_pages
            );
            0
        }
        Err(e) => fail(&e),
    }
}

fn inspect(dir: &std::path::Path) -> i32 {
    match Snapshot::open(dir) {
        Ok(s) => {
            let i = s.info();
            println!("snapshot:        {}", dir.display());
            println!("format version:  {}", i.header.version);
            println!("architecture:    x86_64");
            println!("guest ABI:       {}", i.header.abi);
            println!(
                "checksum:        {:016x} (CRC-64/ECMA-182, verified)",
                i.header.crc
            );
            println!("state:           {} bytes", i.state_bytes);
            println!(
                "memory:          {} MiB, {} pages of data ({} KiB)",
                i.memory_bytes >> 20,
                i.data_pages,
                i.data_pages * 4
            );
            if let Err(e) = s.verify_memory() {
                return fail(&e);
            }
            println!(
                "memory checksums: every page verified (CRC-32 per data page, zeros elsewhere)"
            );
            println!(
                "module:          {} ({} bytes, CRC-64 {:016x})",
                i.module_name, i.module_len, i.module_crc
            );
            println!("created:         {} (Unix time)", i.created);
            match i.working_set_pages {
                Some(n) => println!("working set:     {n} pages ({} KiB)", n * 4),
                None => println!(
                    "working set:     not recorded yet (the first uffd invocation records it)"
                ),
            }
            0
        }
        Err(e) => fail(&e),
    }
}

/// `flint invoke --repeat N`: one restore, then N invocations with a reset
/// in place after each clean one; the exit code is the last one's (or the
/// first failing one's, after which the VM is not reset but dropped).
fn invoke_repeated(
    snap: &Snapshot,
    invocation: &flint_executor::Invocation,
    repeat: u32,
    call: &CallArgs,
) -> i32 {
    let t0 = std::time::Instant::now();
    let mut vm = match snap.restore() {
        Ok(vm) => vm,
        Err(e) => return fail(&e),
    };
    if call.timings {
        eprintln!("flint: restore {:?}", t0.elapsed());
    }
    for i in 1..=repeat {
        let r = match vm.invoke_in_place(invocation, &mut StdIo, call.timeout(), None) {
            Ok(r) => r,
            Err(e) => return fail(&SnapshotError::Run(e)),
        };
        if r.exit_code != 0 || i == repeat {
            if call.timings {
                eprintln!("flint: invocation {i}: run {:?}", r.phases.run);
            }
            return r.exit_code;
        }
        let t = std::time::Instant::now();
        let pages = match snap.reset(&mut vm) {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        if call.timings {
            eprintln!(
                "flint: invocation {i}: run {:?} reset {:?} ({pages} pages written)",
                r.phases.run,
                t.elapsed()
            );
        }
    }
    0
}

pub fn invoke(a: InvokeArgs) -> i32 {
    let snap = match Snapshot::open(&a.dir) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let invocation = a.call.invocation(snap.module_name().to_string());
    if a.repeat > 1 {
        return invoke_repeated(&snap, &invocation, a.repeat, &a.call);
    }
    let mut opts = InvokeOptions {
        backend: match a.memory_backend {
            Some(BackendArg::File) => Backend::File,
            Some(BackendArg::Uffd) | None => Backend::Uffd,
        },
        prefetch: matches!(a.prefetch, OnOff::On),
        timeout: a.call.timeout(),
    };
    let mut result = snap.invoke(&invocation, &mut StdIo, &opts);
    if a.memory_backend.is_none() {
        if let Err(SnapshotError::Uffd(
            flint_snapshotter::uffd::UffdError::Create(_)
            | flint_snapshotter::uffd::UffdError::CreateBySystemCall(_),
        )) = &result
        {
            // Refused before anything ran: the file backend instead.
            eprintln!(
                "flint: userfaultfd is not allowed for this user (root, or \
                 vm.unprivileged_userfaultfd=1); using --memory-backend file"
            );
            opts.backend = Backend::File;
            result = snap.invoke(&invocation, &mut StdIo, &opts);
        }
    }
    match result {
        Ok(r) => {
            if a.call.timings {
                eprintln!(
                    "flint: load {:?} memory_setup {:?} (prefetched {} pages) restore {:?} run {:?} teardown {:?}; faulted {} pages in {:?}{}",
                    r.load,
                    r.memory_setup,
                    r.prefetched_pages,
                    r.restore,
                    r.run.phases.run,
                    r.run.phases.teardown,
                    r.faulted_pages,
                    r.fault_time,
                    if r.recorded_working_set { "; working set recorded" } else { "" }
                );
            }
            r.run.exit_code
        }
        Err(e) => fail(&e),
    }
}
