//! Where a function's stdin comes from and its stdout/stderr go.

use std::io::{self, Read, Write};

/// The host side of a function's standard streams. Called from the vCPU
/// thread while the guest waits, so a slow implementation slows the guest,
/// never corrupts it. `stdin` may block; if it fails with
/// [`io::ErrorKind::Interrupted`] the VMM checks for a stop and retries.
pub trait GuestIo: Send {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()>;
    fn stderr(&mut self, data: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes; `Ok(0)` is end of file.
    fn stdin(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// The process's own stdin, stdout and stderr (what `flint run` uses).
/// Output is flushed chunk by chunk, so it streams.
#[derive(Debug, Default)]
pub struct StdIo;

impl GuestIo for StdIo {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(data)?;
        out.flush()
    }
    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        io::stderr().lock().write_all(data)
    }
    fn stdin(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::stdin().lock().read(buf)
    }
}

/// In-memory streams: stdin from a buffer, stdout and stderr captured.
#[derive(Debug, Default, Clone)]
pub struct BufferIo {
    pub stdin: io::Cursor<Vec<u8>>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl BufferIo {
    pub fn with_stdin(stdin: impl Into<Vec<u8>>) -> Self {
        Self {
            stdin: io::Cursor::new(stdin.into()),
            ..Self::default()
        }
    }
}

impl GuestIo for BufferIo {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        self.stdout.extend_from_slice(data);
        Ok(())
    }
    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        self.stderr.extend_from_slice(data);
        Ok(())
    }
    fn stdin(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdin.read(buf)
    }
}
