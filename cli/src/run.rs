//! `flint run MODULE [--memory-mib N] [--timeout-ms N] [--env K=V]... [-- ARGS...]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use flint_executor::{Invocation, StdIo, VmConfig};

use crate::exit;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The WebAssembly module (a WASI preview 1 command) to run.
    module: PathBuf,
    /// Guest memory in MiB (32 to 3072).
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    #[command(flatten)]
    call: CallArgs,
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

pub fn main(a: RunArgs) -> i32 {
    let module = match std::fs::read(&a.module) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("flint: cannot read module {}: {e}", a.module.display());
            return exit::FLINT_ERROR;
        }
    };
    let config = VmConfig {
        memory_mib: a.memory_mib,
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
                    "flint: vm_create {:?} guest_load {:?} guest_entry {:?} compile {:?} instantiate {:?} run {:?} teardown {:?} total {:?}; guest memory resident {} KiB",
                    p.vm_create, p.guest_load, p.guest_entry, p.compile, p.instantiate, p.run, p.teardown, p.total(),
                    report.guest_resident_bytes / 1024
                );
        }
    }
}
