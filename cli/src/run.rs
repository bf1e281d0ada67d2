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
    /// Forward a host TCP port to a port a Linux program listens on in
    /// its VM: `[ADDR:]HOST_PORT[:VM_PORT]` (ADDR defaults to 127.0.0.1,
    /// VM_PORT to HOST_PORT), repeated; a server wants `--timeout-ms 0`.
    #[arg(long = "publish", short = 'p', value_name = "[ADDR:]PORT[:VM_PORT]", value_parser = parse_publish)]
    pub publish: Vec<(std::net::SocketAddr, u16)>,
    /// Let a Linux program connect out of its VM: its TCP connections to
    /// addresses off the VM's loopback are made from the host, to the
    /// address it names (no DNS: there is no UDP; IP addresses and
    /// /etc/hosts work).
    #[arg(long)]
    pub egress: bool,
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

/// `[ADDR:]HOST_PORT[:VM_PORT]`, as `docker run -p` reads it but
/// binding the loopback unless told otherwise. An IPv6 ADDR goes in
/// brackets (`[::1]:8080:80`).
pub fn parse_publish(s: &str) -> Result<(std::net::SocketAddr, u16), String> {
    let bad = || format!("{s:?} is not [ADDR:]HOST_PORT[:VM_PORT]");
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad);
    let (addr, rest): (std::net::IpAddr, &str) = if let Some(v6) = s.strip_prefix('[') {
        let (a, rest) = v6.split_once("]:").ok_or_else(bad)?;
        (a.parse().map_err(|_| bad())?, rest)
    } else {
        match s.split(':').count() {
            3 => {
                let (a, rest) = s.split_once(':').ok_or_else(bad)?;
                (a.parse().map_err(|_| bad())?, rest)
            }
            1 | 2 => (std::net::Ipv4Addr::LOCALHOST.into(), s),
            _ => return Err(bad()),
        }
    };
    let (host, vm) = match rest.split_once(':') {
        Some((h, v)) => (port(h)?, port(v)?),
        None => (port(rest)?, port(rest)?),
    };
    Ok((std::net::SocketAddr::new(addr, host), vm))
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
    if a.workdir.is_some() || !a.publish.is_empty() {
        eprintln!(
            "flint: --workdir and --publish are for Linux programs; {} is a module",
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

#[cfg(test)]
mod tests {
    use super::parse_publish;

    #[test]
    fn publish_reads_as_docker_does_on_the_loopback() {
        let ok = |s: &str| parse_publish(s).unwrap();
        assert_eq!(ok("8080"), ("127.0.0.1:8080".parse().unwrap(), 8080));
        assert_eq!(ok("9000:80"), ("127.0.0.1:9000".parse().unwrap(), 80));
        assert_eq!(ok("0.0.0.0:9000:80"), ("0.0.0.0:9000".parse().unwrap(), 80));
        assert_eq!(ok("[::1]:9000:80"), ("[::1]:9000".parse().unwrap(), 80));
        for bad in [
            "",
            "0",
            "x",
            "70000",
            "1:2:3:4",
            "host:80:80",
            "[::1]9000",
            ":80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?}");
        }
    }
}
