//! The host end of the data channel: cuts the guest's byte stream into
//! frames (flint_abi::frame), checks each one, and acts on it.
//!
//! Everything arriving here was written by the guest and is hostile: frame
//! kinds, lengths, field layouts and the order of frames are all checked,
//! and a violation ends the VM with a protocol error.

use std::time::Instant;

use flint_abi::frame::{
    self, FrameError, Header, Kind, PayloadReader, HEADER_LEN, MAX_OUTPUT_CHUNK,
};
use flint_abi::{FailureKind, Milestone};

use crate::devices::virtio::console::Console;
use crate::io::GuestIo;

/// Longest failure message kept from the guest.
const MAX_MESSAGE: usize = 4096;

/// How the guest said its run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEnd {
    Exited(i32),
    Failed(FailureKind, String),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the guest sent a malformed frame: {0}")]
    Frame(FrameError),
    #[error("the guest sent {0}")]
    Protocol(String),
    #[error("writing the function's output failed")]
    Output(#[source] std::io::Error),
    #[error("reading the function's stdin failed")]
    Input(#[source] std::io::Error),
    /// A blocking stdin read was interrupted (a kick); call `pump` again.
    #[error("interrupted")]
    Interrupted,
}

/// When the guest reached each milestone.
#[derive(Debug, Default, Clone, Copy)]
pub struct Marks {
    pub entered: Option<Instant>,
    pub compiled: Option<Instant>,
    pub ready: Option<Instant>,
    pub ended: Option<Instant>,
}

pub struct Session<'a> {
    io: &'a mut dyn GuestIo,
    /// The encoded `Start` frame, sent once the guest is ready; `None` to
    /// pause at the ready point instead.
    start: Option<Vec<u8>>,
    started: bool,
    /// The guest reached its ready point and no `Start` was given.
    pub paused: bool,
    stream: Vec<u8>,
    stdin_wanted: Option<usize>,
    stdin_eof: bool,
    pub marks: Marks,
    pub end: Option<GuestEnd>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("started", &self.started)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// Encodes one frame.
pub fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut v = Header::new(kind, payload.len() as u32).encode().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Encodes the `Start` frame for an invocation.
pub fn start_frame(args: &[String], env: &[(String, String)]) -> Vec<u8> {
    let mut p = Vec::new();
    frame::put_string_list(&mut p, args.iter().map(|a| a.as_bytes()));
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    frame::put_string_list(&mut p, env.iter().map(|e| e.as_bytes()));
    encode(Kind::Start, &p)
}

fn exact_u32(payload: &[u8]) -> Result<u32, SessionError> {
    let mut r = PayloadReader::new(payload);
    let v = r.u32().map_err(SessionError::Frame)?;
    r.finish().map_err(SessionError::Frame)?;
    Ok(v)
}

/// Keeps printable text and newlines, at most [`MAX_MESSAGE`] bytes.
fn sanitize(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_MESSAGE)]);
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

impl<'a> Session<'a> {
    pub fn new(io: &'a mut dyn GuestIo, start: Option<Vec<u8>>) -> Self {
        Self {
            io,
            start,
            started: false,
            paused: false,
            stream: Vec::new(),
            stdin_wanted: None,
            stdin_eof: false,
            marks: Marks::default(),
            end: None,
        }
    }

    /// A session for a guest restored at its ready point, whose `Start`
    /// frame the caller has already queued.
    pub fn resumed(io: &'a mut dyn GuestIo) -> Self {
        let mut s = Self::new(io, None);
        s.started = true;
        s
    }

    /// Takes bytes the guest transmitted and acts on every complete frame.
    pub fn feed(&mut self, bytes: &[u8], console: &mut Console) -> Result<(), SessionError> {
        self.stream.extend_from_slice(bytes);
        self.pump(console)
    }

    /// Acts on what is buffered: a pending stdin request first, then frames.
    pub fn pump(&mut self, console: &mut Console) -> Result<(), SessionError> {
        loop {
            if let Some(max) = self.stdin_wanted {
                self.serve_stdin(max, console)?;
                self.stdin_wanted = None;
            }
            if self.end.is_some() || self.paused {
                return Ok(());
            }
            let Some((kind, len)) = self.next_header()? else {
                return Ok(());
            };
            let payload: Vec<u8> = self
                .stream
                .drain(..HEADER_LEN + len)
                .skip(HEADER_LEN)
                .collect();
            self.handle(kind, &payload, console)?;
        }
    }

    fn next_header(&self) -> Result<Option<(Kind, usize)>, SessionError> {
        let Some(h) = self.stream.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(h).map_err(SessionError::Frame)?;
        if !header.kind.is_from_guest() {
            return Err(SessionError::Protocol(format!(
                "a {:?} frame, which only the host may send",
                header.kind
            )));
        }
        let len = header.len as usize;
        Ok((self.stream.len() >= HEADER_LEN + len).then_some((header.kind, len)))
    }

    fn handle(
        &mut self,
        kind: Kind,
        payload: &[u8],
        console: &mut Console,
    ) -> Result<(), SessionError> {
        match kind {
            Kind::Milestone => {
                let m = exact_u32(payload)?;
                let now = Some(Instant::now());
                match Milestone::from_u32(m) {
                    Some(Milestone::Entered) => self.marks.entered = now,
                    Some(Milestone::Compiled) => self.marks.compiled = now,
                    Some(Milestone::Ready) => {
                        self.marks.ready = now;
                        if self.started || self.paused {
                            return Err(SessionError::Protocol("a second Ready milestone".into()));
                        }
                        match self.start.take() {
                            Some(start) => {
                                self.started = true;
                                console.send(&start);
                            }
                            None => self.paused = true,
                        }
                    }
                    None => {
                        return Err(SessionError::Protocol(format!("an unknown milestone {m}")))
                    }
                }
            }
            Kind::Stdout => self.io.stdout(payload).map_err(SessionError::Output)?,
            Kind::Stderr => self.io.stderr(payload).map_err(SessionError::Output)?,
            Kind::StdinRequest => {
                if !self.started {
                    return Err(SessionError::Protocol(
                        "a stdin request before the invocation started".into(),
                    ));
                }
                let max = exact_u32(payload)? as usize;
                self.stdin_wanted = Some(max.clamp(1, MAX_OUTPUT_CHUNK as usize));
            }
            Kind::Exit => {
                let code = exact_u32(payload)? as i32;
                self.finish(GuestEnd::Exited(code));
            }
            Kind::Failure => {
                let mut r = PayloadReader::new(payload);
                let k = r.u32().map_err(SessionError::Frame)?;
                let kind = FailureKind::from_u32(k).ok_or_else(|| {
                    SessionError::Protocol(format!("an unknown failure kind {k}"))
                })?;
                self.finish(GuestEnd::Failed(kind, sanitize(r.rest_bytes())));
            }
            Kind::Start | Kind::StdinData => {
                unreachable!("host-only kinds are refused in next_header")
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: GuestEnd) {
        self.marks.ended = Some(Instant::now());
        self.end = Some(end);
    }

    fn serve_stdin(&mut self, max: usize, console: &mut Console) -> Result<(), SessionError> {
        let mut buf = vec![0u8; max];
        let n = if self.stdin_eof {
            0
        } else {
            match self.io.stdin(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    return Err(SessionError::Interrupted)
                }
                Err(e) => return Err(SessionError::Input(e)),
            }
        };
        if n == 0 {
            self.stdin_eof = true;
        }
        console.send(&encode(Kind::StdinData, &buf[..n]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::BufferIo;

    fn frame_u32(kind: Kind, v: u32) -> Vec<u8> {
        encode(kind, &v.to_le_bytes())
    }

    #[test]
    fn a_whole_run_in_pieces() {
        let mut io = BufferIo::with_stdin("in");
        let mut console = Console::new();
        let start = start_frame(&["f".into()], &[("K".into(), "V".into())]);
        let mut s = Session::new(&mut io, Some(start.clone()));
        let mut bytes = frame_u32(Kind::Milestone, Milestone::Entered as u32);
        bytes.extend(frame_u32(Kind::Milestone, Milestone::Ready as u32));
        bytes.extend(encode(Kind::Stdout, b"hello"));
        // Deliver byte by byte: frames may be split anywhere.
        for b in &bytes {
            s.feed(std::slice::from_ref(b), &mut console).unwrap();
        }
        assert_eq!(
            console.pending(),
            start.len(),
            "Start frame queued once ready"
        );
        s.feed(&frame_u32(Kind::StdinRequest, 100), &mut console)
            .unwrap();
        assert_eq!(console.pending(), start.len() + HEADER_LEN + 2);
        s.feed(&frame_u32(Kind::Exit, 3), &mut console).unwrap();
        assert_eq!(s.end, Some(GuestEnd::Exited(3)));
        assert!(s.marks.entered.is_some() && s.marks.ready.is_some());
        drop(s);
        assert_eq!(io.stdout, b"hello");
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut io = BufferIo::default();
        let mut console = Console::new();
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff; 8],                               // unknown kind
            encode(Kind::Start, b""),                    // host-only kind
            encode(Kind::StdinData, b"x"),               // host-only kind
            encode(Kind::Milestone, b"12345"),           // wrong payload size
            frame_u32(Kind::Milestone, 77),              // unknown milestone
            frame_u32(Kind::StdinRequest, 10),           // before Start
            encode(Kind::Failure, &[99, 0, 0, 0, b'x']), // unknown failure kind
            encode(Kind::Exit, b""),                     // truncated
        ];
        for bytes in cases {
            let mut s = Session::new(&mut io, Some(start_frame(&[], &[])));
            assert!(s.feed(&bytes, &mut console).is_err(), "{bytes:?} accepted");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut io = BufferIo::default();
        let mut console = Console::new();
        let mut s = Session::new(&mut io, None);
        let mut h = Header::new(Kind::Stdout, 0).encode();
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            s.feed(&h, &mut console),
            Err(SessionError::Frame(FrameError::TooLong(_)))
        ));
    }

    #[test]
    fn failure_messages_are_sanitized() {
        let mut io = BufferIo::default();
        let mut console = Console::new();
        let mut s = Session::new(&mut io, None);
        let mut p = (FailureKind::Trap as u32).to_le_bytes().to_vec();
        p.extend_from_slice(b"bad\x1b[31m\xff thing");
        s.feed(&encode(Kind::Failure, &p), &mut console).unwrap();
        assert_eq!(
            s.end,
            Some(GuestEnd::Failed(
                FailureKind::Trap,
                "bad[31m\u{fffd} thing".into()
            ))
        );
    }
}
