//! `flint run MODULE [--memory-mib N] [--timeout-ms N] [--env K=V]... [-- ARGS...]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use flint_executor::{Invocation, StdIo, VmConfig};

use crate::exit;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The program: a WebAssembly module (a WASI preview 1 command) or an
    /// x86-64 Linux ELF program (a path inside --rootfs if given).
    pub module: PathBuf,
    /// Guest memory in MiB (32 to 3072; default 128 for a module, 256 for
    /// a Linux program).
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// A Linux program's root filesystem: a directory presented as `/`.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// A Linux program's working directory (inside its root).
    #[arg(long)]
    pub workdir: Option<String>,
    #[command(flatten)]
    pub call: CallArgs,
}

/// What `run` and `invoke` share: the limits and inputs of one invocation.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Stop the VM after this many milliseconds (0: no limit).
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// An environment variable for the function: K=V, or K to pass the host's value.
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Print how long each phase took to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Arguments for the function (argv[1..]).
    #[arg(last = true)]
    pub args: Vec<String>,
}

impl CallArgs {
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms))
    }

    /// The invocation, with `argv0` before the arguments.
    pub fn invocation(&self, argv0: String) -> Invocation {
        let mut args = vec![argv0];
        args.extend(self.args.iter().cloned());
        Invocation {
            args,
            env: self.env.clone(),
        }
    }
}

pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err("the variable name is empty".into()),
        Some((k, v)) => Ok((k.into(), v.into())),
        None => std::env::var(s)
            .map(|v| (s.into(), v))
            .map_err(|_| format!("`{s}` has no `=` and is not set on the host")),
    }
}

/// True when the program at `path` (inside `rootfs` if given) is an ELF
/// file rather than a WebAssembly module.
fn is_linux_program(a: &RunArgs) -> bool {
    let path = match &a.rootfs {
        Some(r) => r.join(a.module.strip_prefix("/").unwrap_or(&a.module)),
        None => a.module.clone(),
    };
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    a.rootfs.is_some() || flint_linux::is_elf(&head[..n])
}

pub fn main(a: RunArgs) -> i32 {
    if is_linux_program(&a) {
        return crate::linux::main(&a);
    }
    if a.workdir.is_some() {
        eprintln!(
            "flint: --workdir is for Linux programs; {} is a module",
            a.module.display()
        );
        return exit::USAGE;
    }
    let module = match std::fs::read(&a.module) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("flint: cannot read module {}: {e}", a.module.display());
            return exit::FLINT_ERROR;
        }
    };
    let config = VmConfig {
        memory_mib: a.memory_mib.unwrap_or(128),
        timeout: a.call.timeout(),
        ..VmConfig::default()
    };
    let invocation = a.call.invocation(a.module.display().to_string());
    match flint_executor::run(&config, &module, &invocation, &mut StdIo) {
        Ok(report) => {
            if a.call.timings {
                print_phases(&report);
            }
            report.exit_code
        }
        Err(e) => {
            exit::report(&e);
            exit::code(&e)
        }
    }
}

/// `--timings` output for a run.
pub fn print_phases(report: &flint_executor::RunReport) {
    {
        {
            let p = report.phases;
            eprintln!(
                    "flint: vm_create {:?} guest_load {:?} guest_entry {:?} compile {:?} instantiate {:?} run {:?} teardown {:?} total {:?}{}",
                    p.vm_create, p.guest_load, p.guest_entry, p.compile, p.instantiate, p.run, p.teardown, p.total(),
                    report.guest_resident_bytes.map(|b| format!("; guest memory resident {} KiB", b / 1024)).unwrap_or_default()
                );
        }
    }
}
