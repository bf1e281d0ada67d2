//! Linux functions: each request boots the image's program in a fresh VM
//! (`flint_linux`) with the CGI environment and the body on stdin. Its
//! stdout is a pipe read as the program writes it, each chunk handed to
//! the request's task as a module's are (`stream.rs`), at most
//! `MAX_RESPONSE_BYTES` in all; its stderr is a pipe of which the first
//! `MAX_STDERR_LOG` bytes are kept and the rest counted. Nothing a program
//! writes is buffered beyond that, in memory or on disk.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;

use crate::registry::LinuxFunction;
use crate::stream::{StderrLog, MAX_RESPONSE_BYTES};

/// How a Linux function's run ended, and its stderr.
#[derive(Debug)]
pub struct LinuxEnd {
    pub outcome: Result<flint_linux::Outcome, flint_linux::LinuxError>,
    pub stderr: StderrLog,
    /// The program listened on this TCP port before it wrote anything:
    /// a server, not a CGI program, so it was stopped.
    pub listened: Option<u16>,
}

/// SIGKILL's and SIGTERM's bits in a container's pending-signal set.
pub(crate) const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
pub(crate) const SIGTERM_BIT: u64 = 1 << (libc::SIGTERM - 1);

/// How often the run checks its abort flag.
const ABORT_POLL: Duration = Duration::from_millis(10);

pub(crate) fn pipe() -> std::io::Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// An anonymous in-memory file.
pub(crate) fn memfd(name: &str) -> std::io::Result<File> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new
    // descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Runs `f` once, blocking: `env` (the CGI variables, over the image's
/// own) and `stdin` in; each stdout chunk sent on `out` as it is written.
/// The run ends at `timeout`, or soon after `abort` is raised (the
/// request's deadline, its client gone), or when its output passes the
/// cap or `out`'s receiver is gone: then process 1 is killed.
pub fn run(
    f: &LinuxFunction,
    env: Vec<(String, String)>,
    stdin: &[u8],
    timeout: Duration,
    out: UnboundedSender<Bytes>,
    abort: &Arc<AtomicBool>,
) -> std::io::Result<LinuxEnd> {
    // In memory, not a file in TMPDIR: the process reaches no directory
    // but its own (its Landlock domain).
    let mut input = memfd("flint-stdin")?;
    input.write_all(stdin)?;
    input.rewind()?;
    let (mut out_r, out_w) = pipe()?;
    let (mut err_r, err_w) = pipe()?;
    let stdio = flint_linux::Stdio {
        stdin: input.into(),
        stdout: out_w,
        stderr: err_w,
    };
    let mut all_env = f.env.clone();
    for (k, v) in env {
        all_env.retain(|(x, _)| *x != k);
        all_env.push((k, v));
    }
    let program = flint_linux::Program {
        path: f.path.clone(),
        argv: f.argv.clone(),
        env: all_env,
        workdir: f.workdir.clone(),
    };
    let signals = Arc::new(AtomicU64::new(0));
    let config = flint_linux::Config {
        memory_mib: f.memory_mib,
        timeout: Some(timeout),
        signals: Some(signals.clone()),
        ..flint_linux::Config::default()
    };
    // The readers end when every copy of the write ends is closed: the
    // container's, once it is gone (ours were moved into `stdio`).
    let abort_out = abort.clone();
    let wrote = Arc::new(AtomicBool::new(false));
    let wrote_out = wrote.clone();
    let stdout = std::thread::Builder::new()
        .name("flint-linux-stdout".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut sent = 0usize;
            loop {
                match out_r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        sent += n;
                        wrote_out.store(true, Ordering::SeqCst);
                        if sent > MAX_RESPONSE_BYTES
                            || out.send(Bytes::copy_from_slice(&buf[..n])).is_err()
                        {
                            // Over the cap, or nobody to send it to: the
                            // run stops, its next write fails (EPIPE).
                            abort_out.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })?;
    let stderr = std::thread::Builder::new()
        .name("flint-linux-stderr".into())
        .spawn(move || {
            let mut log = StderrLog::default();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match err_r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => log.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            log
        })?;
    let mut listened = None;
    let outcome = match flint_linux::start(&config, &f.root, &program, Some(stdio)) {
        Ok(container) => {
            let port = container.port();
            while !container.finished() {
                // A server waiting for connections would wait until the
                // deadline: it is told apart now (CGI programs do not
                // listen before they answer).
                if listened.is_none() && !wrote.load(Ordering::SeqCst) {
                    listened = port.listened().first().copied();
                }
                if abort.load(Ordering::SeqCst) || listened.is_some() {
                    signals.fetch_or(SIGKILL_BIT, Ordering::SeqCst);
                }
                std::thread::sleep(ABORT_POLL);
            }
            container.wait()
        }
        Err(e) => Err(e),
    };
    let _ = stdout.join();
    let stderr = stderr.join().unwrap_or_default();
    Ok(LinuxEnd {
        outcome,
        stderr,
        listened,
    })
}
