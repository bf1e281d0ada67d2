//! Streaming a function's response: its stdout reaches the client as the
//! function writes it, as queue-proxy passes a container's response on.
//!
//! The VM's thread hands each stdout chunk to the request's task over a
//! channel ([`StreamIo`]); the task waits for the CGI header block within
//! the first-byte deadline (`responseStartTimeoutSeconds`, else
//! `timeoutSeconds`, as Knative's conformance test `revision_timeout_test`
//! has it: a first byte in time makes a 200 however long the rest takes),
//! sends the status and headers at once, and then the body as
//! [`StreamingBody`], each gap between writes bounded by
//! `idleTimeoutSeconds`. A deadline missed, the client gone, or the
//! function failing after its headers were sent stops the VM (through its
//! abort flag); a failure after the headers can only cut the response
//! short, so the connection is reset rather than the body ended cleanly.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

/// Largest response a function may write (stdout): past it the write
/// fails and the VM ends.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Most of a function's stderr that one request logs.
pub const MAX_STDERR_LOG: usize = 8 * 1024;

/// A function's streams for one request: stdin from the body, stdout sent
/// on as it comes (at most `MAX_RESPONSE_BYTES` in all; a closed channel,
/// the client gone, fails the write and so ends the VM), stderr's first
/// `MAX_STDERR_LOG` bytes kept and the rest only counted.
#[derive(Debug)]
pub struct StreamIo {
    stdin: std::io::Cursor<Vec<u8>>,
    out: UnboundedSender<Bytes>,
    sent: usize,
    pub stderr: StderrLog,
}

impl StreamIo {
    pub fn new(stdin: Vec<u8>, out: UnboundedSender<Bytes>) -> Self {
        Self {
            stdin: std::io::Cursor::new(stdin),
            out,
            sent: 0,
            stderr: StderrLog::default(),
        }
    }
}

/// A function's stderr for one request: its first `MAX_STDERR_LOG` bytes,
/// and how many it wrote in all.
#[derive(Debug, Default)]
pub struct StderrLog {
    pub kept: Vec<u8>,
    pub total: usize,
}

impl StderrLog {
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len();
        let room = MAX_STDERR_LOG.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
    }
}

impl flint_executor::GuestIo for StreamIo {
    fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.sent + data.len() > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other(format!(
                "the response is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        self.sent += data.len();
        self.out
            .send(Bytes::copy_from_slice(data))
            .map_err(|_| std::io::Error::other("the client went away"))
    }
    fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stderr.push(data);
        Ok(())
    }
    fn stdin(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut self.stdin, buf)
    }
}

/// How the function's run ended, for the end of its body: `Ok` if it
/// exited 0, else why not.
pub type Ending = JoinHandle<Result<(), String>>;

/// The rest of a streamed response: what came with the header block,
/// then each chunk as the function writes it.
#[derive(Debug)]
pub struct StreamingBody {
    first: Option<Bytes>,
    chunks: UnboundedReceiver<Bytes>,
    idle: Option<Duration>,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    abort: Arc<AtomicBool>,
    ending: Option<Ending>,
}

impl StreamingBody {
    pub fn new(
        first: Bytes,
        chunks: UnboundedReceiver<Bytes>,
        idle: Option<Duration>,
        abort: Arc<AtomicBool>,
        ending: Ending,
    ) -> Self {
        Self {
            first: (!first.is_empty()).then_some(first),
            chunks,
            idle,
            idle_timer: idle.map(|d| Box::pin(tokio::time::sleep(d))),
            abort,
            ending: Some(ending),
        }
    }
}

impl Drop for StreamingBody {
    fn drop(&mut self) {
        // The client went away (or the body was sent): a VM still running
        // for it stops.
        if self.ending.is_some() {
            self.abort.store(true, Ordering::SeqCst);
        }
    }
}

impl Body for StreamingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                if let Some(d) = self.idle {
                    self.idle_timer = Some(Box::pin(tokio::time::sleep(d)));
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Ready(None) => {
                // The function is done writing: end cleanly if it ended well.
                let Some(ending) = self.ending.as_mut() else {
                    return Poll::Ready(None);
                };
                let r = match Pin::new(ending).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                self.ending = None;
                return Poll::Ready(match r {
                    Ok(Ok(())) => None,
                    Ok(Err(why)) => Some(Err(std::io::Error::other(why))),
                    Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                });
            }
            Poll::Pending => {}
        }
        if let Some(t) = self.idle_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                self.abort.store(true, Ordering::SeqCst);
                self.ending = None;
                return Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "the function wrote nothing for {} s (idleTimeoutSeconds)",
                    self.idle.map_or(0, |d| d.as_secs())
                )))));
            }
        }
        Poll::Pending
    }
}
