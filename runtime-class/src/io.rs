//! A process's stdio as containerd hands it to a shim: FIFO paths, or
//! `file://` URIs (output appended to a file), or `binary://` URIs (a
//! logging program containerd's users supply, fed through pipes as fds 3
//! and 4, which closes fd 5 once it is ready), or nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flint_executor::GuestIo;

use crate::helper::{self, set_nonblocking, Logger};
use crate::sandbox::{SandboxError, Stdio};

/// How long a `binary://` logger may take to say it is ready.
const LOGGER_READY: Duration = Duration::from_secs(10);

/// How long an output FIFO may wait for its reader (containerd's client
/// opens its end around the same time as it starts the process).
const FIFO_READER: Duration = Duration::from_secs(10);

/// The open stdio of one process.
#[derive(Debug)]
pub struct ProcessIo {
    stdin: Option<File>,
    /// Set by CloseIO: stdin reads end of file from then on.
    stdin_closed: Arc<AtomicBool>,
    stdout: Option<File>,
    stderr: Option<File>,
    logger: Option<Logger>,
}

fn io_err(what: &str, e: std::io::Error) -> SandboxError {
    SandboxError::io(what, e)
}

/// Opens a FIFO without waiting for its other end; containerd's client
/// puts its FIFOs anywhere, so the shim's helper opens it (outside the
/// shim's file sandbox).
fn open_fifo(path: &str, write: bool) -> std::io::Result<File> {
    helper::open_fifo_anywhere(path, write)
}

/// Opens an output FIFO once it has a reader (opening for writing without
/// one fails with ENXIO), or gives up after [`FIFO_READER`]: the output is
/// then dropped, as nobody reads it.
fn open_output_fifo(path: &str) -> Option<File> {
    let deadline = Instant::now() + FIFO_READER;
    loop {
        match open_fifo(path, true) {
            Ok(f) => return Some(f),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
}

/// A `file://` URI: output appended to the file, created with its
/// directories if needed (anywhere on the host, so by the helper, as
/// [`open_fifo`]).
fn open_log_file(path: &str) -> std::io::Result<File> {
    helper::open_log_file_anywhere(path)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Percent-decodes a URI component (in the query, `+` is a space).
fn unescape(s: &str, query: bool) -> String {
    let s = if query {
        s.replace('+', " ")
    } else {
        s.to_string()
    };
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `binary:///path/to/logger?key=value&flag`: the program and its
/// arguments (`key value flag`, as containerd builds them).
fn parse_binary_uri(uri: &str) -> Result<(String, Vec<String>), SandboxError> {
    let rest = &uri["binary://".len()..];
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = unescape(path, false);
    if !path.starts_with('/') {
        return Err(SandboxError::Invalid(format!(
            "{uri}: a binary:// logger needs an absolute path"
        )));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(unescape(k, true));
        if !v.is_empty() {
            args.push(unescape(v, true));
        }
    }
    Ok((path, args))
}

/// Starts a `binary://` logger: stdout on its fd 3, stderr on fd 4; waits
/// until it closes fd 5 (ready) or exits.
fn start_logger(
    uri: &str,
    namespace: &str,
    container_id: &str,
) -> Result<(File, File, Logger), SandboxError> {
    let (program, args) = parse_binary_uri(uri)?;
    let (out_r, out_w) = pipe().map_err(|e| io_err("a pipe for the logger", e))?;
    let (err_r, err_w) = pipe().map_err(|e| io_err("a pipe for the logger", e))?;
    let (ready_r, ready_w) = pipe().map_err(|e| io_err("a pipe for the logger", e))?;
    // Started by the helper, outside the shim's seccomp filter: the
    // logger is the user's program, not the shim's.
    let env = [
        ("CONTAINER_ID", container_id),
        ("CONTAINER_NAMESPACE", namespace),
    ];
    let child = Logger::start(&program, &args, &env, [out_r, err_r, ready_w])
        .map_err(|e| io_err(&format!("starting the logger {program}"), e))?;
    // Ready when fd 5 is closed: a read returns end of file.
    let ready = File::from(ready_r);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = ready;
        let _ = ready.read(&mut [0u8; 1]);
        let _ = tx.send(());
    });
    if rx.recv_timeout(LOGGER_READY).is_err() {
        child.stop();
        return Err(SandboxError::Internal(format!(
            "the logger {program} did not become ready within {LOGGER_READY:?}"
        )));
    }
    Ok((File::from(out_w), File::from(err_w), child))
}

impl ProcessIo {
    /// Opens the process's stdio; this can block (see [`FIFO_READER`]).
    /// Output FIFOs that cannot be opened are dropped (nobody reads them);
    /// a file or logger that cannot be set up is an error.
    pub fn open(
        stdio: &Stdio,
        namespace: &str,
        container_id: &str,
        stdin_closed: Arc<AtomicBool>,
    ) -> Result<Self, SandboxError> {
        let mut io = Self {
            stdin: None,
            stdin_closed,
            stdout: None,
            stderr: None,
            logger: None,
        };
        if !stdio.stdin.is_empty() {
            io.stdin = Some(
                open_fifo(&stdio.stdin, false)
                    .map_err(|e| io_err(&format!("opening stdin {}", stdio.stdin), e))?,
            );
        }
        if stdio.stdout.starts_with("binary://") {
            let (out, err, child) = start_logger(&stdio.stdout, namespace, container_id)?;
            io.stdout = Some(out);
            io.stderr = Some(err);
            io.logger = Some(child);
            return Ok(io);
        }
        for (uri, slot) in [
            (&stdio.stdout, &mut io.stdout),
            (&stdio.stderr, &mut io.stderr),
        ] {
            *slot = if let Some(path) = uri.strip_prefix("file://") {
                Some(
                    open_log_file(path)
                        .map_err(|e| io_err(&format!("opening the log file {path}"), e))?,
                )
            } else if uri.is_empty() {
                None
            } else {
                open_output_fifo(uri)
            };
        }
        Ok(io)
    }

    /// Closes the output and waits briefly for a logger to finish writing.
    pub fn close(mut self) {
        self.stdout = None;
        self.stderr = None;
        if let Some(child) = self.logger.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.exited() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            child.stop();
        }
    }
}

/// Writes to an output stream; once its reader is gone (a detached `ctr
/// run` exits at once), further output is dropped: the function keeps
/// running, as a process that ignores SIGPIPE would.
fn write_or_drop(out: &mut Option<File>, data: &[u8]) -> std::io::Result<()> {
    if let Some(f) = out {
        if f.write_all(data).is_err() {
            *out = None;
        }
    }
    Ok(())
}

impl ProcessIo {
    /// The streams as host descriptors for a Linux program (its fds 0, 1
    /// and 2); a stream containerd did not give is /dev/null.
    pub fn linux_stdio(&self) -> Result<flint_linux::Stdio, SandboxError> {
        let dup = |f: &Option<File>, write: bool| -> Result<std::os::fd::OwnedFd, SandboxError> {
            match f {
                Some(f) => f
                    .try_clone()
                    .map(Into::into)
                    .map_err(|e| io_err("duplicating stdio", e)),
                None => OpenOptions::new()
                    .read(!write)
                    .write(write)
                    .open("/dev/null")
                    .map(Into::into)
                    .map_err(|e| io_err("/dev/null", e)),
            }
        };
        Ok(flint_linux::Stdio {
            stdin: dup(&self.stdin, false)?,
            stdout: dup(&self.stdout, true)?,
            stderr: dup(&self.stderr, true)?,
        })
    }
}

impl GuestIo for ProcessIo {
    fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        write_or_drop(&mut self.stdout, data)
    }
    fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        write_or_drop(&mut self.stderr, data)
    }
    fn stdin(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(f) = &mut self.stdin else {
            return Ok(0);
        };
        if !self.stdin_closed.load(Ordering::SeqCst) {
            return f.read(buf);
        }
        // Closed: what the FIFO still holds is read, then end of file
        // instead of waiting for a writer.
        set_nonblocking(f, true);
        match f.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_uris_become_a_program_and_arguments() {
        let (p, a) =
            parse_binary_uri("binary:///usr/bin/my%20logger?id=7&verbose&dir=%2Ftmp").unwrap();
        assert_eq!(p, "/usr/bin/my logger");
        assert_eq!(a, ["id", "7", "verbose", "dir", "/tmp"]);
        assert!(parse_binary_uri("binary://relative/logger").is_err());
        assert_eq!(unescape("a%2", false), "a%2");
        assert_eq!(unescape("%zz%41+b", true), "%zzA b");
    }
}
