//! `flint run` of a Linux ELF program: in a VM of its own, its system
//! calls answered by Flint (crate `flint-linux`).

use std::path::{Path, PathBuf};

use flint_linux::{Config, LinuxError, Program};

use crate::exit;
use crate::run::RunArgs;

/// Default guest RAM for Linux programs (all of a container's processes).
pub const DEFAULT_MEMORY_MIB: u64 = 256;

/// A private root for a program run without `--rootfs`: an empty
/// directory (with `/tmp`) holding a copy of the program.
fn scratch_root(program: &Path) -> std::io::Result<(tempfile::TempDir, String)> {
    let dir = tempfile::Builder::new().prefix("flint-root-").tempdir()?;
    std::fs::create_dir(dir.path().join("tmp"))?;
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    std::fs::copy(program, dir.path().join(&name))?;
    Ok((dir, format!("/{name}")))
}

pub fn main(a: &RunArgs) -> i32 {
    let (root, path, _scratch): (PathBuf, String, Option<tempfile::TempDir>) = match &a.rootfs {
        Some(r) => {
            let p = a.module.to_string_lossy().into_owned();
            let p = if p.starts_with('/') {
                p
            } else {
                format!("/{p}")
            };
            (r.clone(), p, None)
        }
        None => match scratch_root(&a.module) {
            Ok((dir, p)) => (dir.path().to_path_buf(), p, Some(dir)),
            Err(e) => {
                eprintln!(
                    "flint: cannot prepare a root for {}: {e}",
                    a.module.display()
                );
                return exit::FLINT_ERROR;
            }
        },
    };
    let mut argv = vec![a.module.to_string_lossy().into_owned()];
    argv.extend(a.call.args.iter().cloned());
    let mut env = a.call.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    let program = Program {
        path,
        argv,
        env,
        workdir: a.workdir.clone().unwrap_or_else(|| "/".into()),
    };
    let config = Config {
        memory_mib: a.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
        timeout: a.call.timeout(),
        egress: a.egress.then(|| {
            std::sync::Arc::new(flint_linux::Direct {
                timeout: std::time::Duration::from_secs(10),
            }) as std::sync::Arc<dyn flint_linux::Dialer>
        }),
        ..Config::default()
    };
    let listeners = match a
        .publish
        .iter()
        .map(|(addr, vm)| {
            std::net::TcpListener::bind(addr)
                .map(|l| (l, *vm))
                .map_err(|e| format!("cannot listen on {addr}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("flint: {e}");
            return exit::FLINT_ERROR;
        }
    };
    let ran = flint_linux::start(&config, &root, &program, None).and_then(|c| {
        for (listener, vm_port) in listeners {
            forward(listener, c.port(), vm_port);
        }
        c.wait()
    });
    match ran {
        Ok(out) => {
            if a.call.timings {
                eprintln!(
                    "flint: total {:?}, {} system calls answered by the VMM",
                    out.elapsed, out.vmm_calls
                );
            }
            out.status.code()
        }
        Err(e) => {
            exit::report(&e);
            match e {
                LinuxError::Timeout => exit::TIMEOUT,
                LinuxError::Exec { source, .. } if source.raw_os_error() == Some(libc::ENOENT) => {
                    127
                }
                LinuxError::Exec { .. } => 126,
                LinuxError::Crash(_) => exit::GUEST_CRASH,
                LinuxError::Vm(
                    flint_executor::VmError::KvmMissing { .. }
                    | flint_executor::VmError::KvmDenied { .. },
                ) => exit::KVM_UNAVAILABLE,
                _ => exit::FLINT_ERROR,
            }
        }
    }
}

/// Forwards each connection to `listener` to `vm_port` in the VM behind
/// `port` (`Port::connect`), both ways, until either side closes; one
/// refused by the VM (nothing listens there yet) is closed at once.
fn forward(listener: std::net::TcpListener, port: flint_linux::Port, vm_port: u16) {
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
            eprintln!("flint: cannot forward a connection: {e}");
        }
    };
    spawn(
        "flint-publish",
        Box::new(move || {
            for client in listener.incoming().flatten() {
                let Ok(vm) = port.connect(vm_port, std::time::Duration::from_secs(2)) else {
                    continue;
                };
                let (Ok(client2), Ok(vm2)) = (client.try_clone(), vm.try_clone()) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                spawn("flint-publish-in", Box::new(move || pipe(client, vm)));
                spawn("flint-publish-out", Box::new(move || pipe(vm2, client2)));
            }
        }),
    );
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing half.
fn pipe(mut from: impl std::io::Read + Shut, mut to: impl std::io::Write + Shut) {
    let _ = std::io::copy(&mut from, &mut to);
    to.shut(std::net::Shutdown::Write);
    from.shut(std::net::Shutdown::Read);
}

/// A stream whose halves can be shut down.
trait Shut {
    fn shut(&self, how: std::net::Shutdown);
}

impl Shut for std::net::TcpStream {
    fn shut(&self, how: std::net::Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl Shut for std::os::unix::net::UnixStream {
    fn shut(&self, how: std::net::Shutdown) {
        let _ = self.shutdown(how);
    }
}
