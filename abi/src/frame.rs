//! Frames on the data channel.
//!
//! The channel is a virtio-console port: a byte stream each way. Both ends
//! cut it into frames, each an 8-byte [`Header`] (kind `u16`, reserved `u16`
//! that must be zero, payload length `u32`, little-endian) and its payload.
//!
//! Guest to host: [`Kind::Milestone`], [`Kind::Stdout`], [`Kind::Stderr`],
//! [`Kind::StdinRequest`], [`Kind::Exit`], [`Kind::Failure`].
//! Host to guest: [`Kind::Start`], [`Kind::StdinData`].
//!
//! Multi-field payloads are sequences of little-endian `u32`s and
//! length-prefixed byte strings, read back with [`PayloadReader`].

pub const HEADER_LEN: usize = 8;
/// No frame's payload may be longer than this.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// Largest stdout/stderr chunk the guest puts in one frame.
pub const MAX_OUTPUT_CHUNK: u32 = 60 * 1024;

#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// guest -> host: `u32` [`crate::Milestone`].
    Milestone = 1,
    /// guest -> host: bytes the module wrote to fd 1.
    Stdout = 2,
    /// guest -> host: bytes the module wrote to fd 2.
    Stderr = 3,
    /// guest -> host: `u32` most bytes wanted from stdin; answered by `StdinData`.
    StdinRequest = 4,
    /// guest -> host: `i32` exit status (`proc_exit` or the end of `_start`).
    Exit = 5,
    /// guest -> host: `u32` [`crate::FailureKind`] then a UTF-8 message.
    Failure = 6,
    /// host -> guest: the invocation: string list of args, string list of env (`K=V`).
    Start = 0x81,
    /// host -> guest: stdin bytes; an empty payload means end of file.
    StdinData = 0x82,
}

impl Kind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Milestone,
            2 => Self::Stdout,
            3 => Self::Stderr,
            4 => Self::StdinRequest,
            5 => Self::Exit,
            6 => Self::Failure,
            0x81 => Self::Start,
            0x82 => Self::StdinData,
            _ => return None,
        })
    }

    /// Whether the guest may send this kind.
    pub fn is_from_guest(self) -> bool {
        (self as u16) < 0x80
    }
}

/// What is wrong with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    UnknownKind(u16),
    ReservedNotZero(u16),
    TooLong(u32),
    Truncated,
    BadUtf8,
    TrailingBytes,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "unknown frame kind {k:#x}"),
            Self::ReservedNotZero(r) => write!(f, "reserved header field is {r:#x}, not zero"),
            Self::TooLong(l) => write!(
                f,
                "frame payload of {l} bytes exceeds the {MAX_PAYLOAD}-byte limit"
            ),
            Self::Truncated => write!(f, "frame payload ends inside a field"),
            Self::BadUtf8 => write!(f, "frame payload holds a string that is not UTF-8"),
            Self::TrailingBytes => write!(f, "frame payload has bytes after its last field"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: u32,
}

impl Header {
    pub fn new(kind: Kind, len: u32) -> Self {
        Self { kind, len }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let kind = u16::from_le_bytes([b[0], b[1]]);
        let reserved = u16::from_le_bytes([b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let kind = Kind::from_u16(kind).ok_or(FrameError::UnknownKind(kind))?;
        if reserved != 0 {
            return Err(FrameError::ReservedNotZero(reserved));
        }
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLong(len));
        }
        Ok(Self { kind, len })
    }
}

/// Appends a little-endian `u32`.
pub fn put_u32(out: &mut impl Extend<u8>, v: u32) {
    out.extend(v.to_le_bytes());
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut impl Extend<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend(b.iter().copied());
}

/// Appends a list of strings: a count, then each string length-prefixed.
pub fn put_string_list<'a>(
    out: &mut impl Extend<u8>,
    items: impl ExactSizeIterator<Item = &'a [u8]>,
) {
    put_u32(out, items.len() as u32);
    for item in items {
        put_bytes(out, item);
    }
}

/// Checked reads from a payload; every read fails cleanly on short input.
#[derive(Debug)]
pub struct PayloadReader<'a> {
    buf: &'a [u8],
}

impl<'a> PayloadReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn u32(&mut self) -> Result<u32, FrameError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(FrameError::Truncated)?;
        self.buf = rest;
        Ok(u32::from_le_bytes(*head))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let len = self.u32()? as usize;
        if len > self.buf.len() {
            return Err(FrameError::Truncated);
        }
        let (b, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(b)
    }

    pub fn str(&mut self) -> Result<&'a str, FrameError> {
        core::str::from_utf8(self.bytes()?).map_err(|_| FrameError::BadUtf8)
    }

    /// All bytes not read yet, interpreted as UTF-8 (lossy callers may prefer `rest_bytes`).
    pub fn rest_bytes(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// The count of a string list; the caller then reads that many `bytes()`.
    /// Refuses counts that could not possibly fit in what is left.
    pub fn list_len(&mut self) -> Result<u32, FrameError> {
        let n = self.u32()?;
        if (n as usize).saturating_mul(4) > self.buf.len() {
            return Err(FrameError::Truncated);
        }
        Ok(n)
    }

    pub fn finish(self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn header_round_trip() {
        let h = Header::new(Kind::Stdout, 1234);
        let b = h.encode();
        assert_eq!(b, [2, 0, 0, 0, 0xd2, 0x04, 0, 0]);
        assert_eq!(Header::decode(&b), Ok(h));
    }

    #[test]
    fn header_rejects_garbage() {
        assert_eq!(
            Header::decode(&[9, 9, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::UnknownKind(0x909))
        );
        assert_eq!(
            Header::decode(&[2, 0, 1, 0, 0, 0, 0, 0]),
            Err(FrameError::ReservedNotZero(1))
        );
        let mut b = Header::new(Kind::Stdout, 0).encode();
        b[4..8].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(
            Header::decode(&b),
            Err(FrameError::TooLong(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn direction_of_kinds() {
        assert!(Kind::Stdout.is_from_guest());
        assert!(!Kind::Start.is_from_guest());
        assert!(!Kind::StdinData.is_from_guest());
    }

    #[test]
    fn string_lists_round_trip() {
        let mut out = Vec::new();
        let args: [&[u8]; 3] = [b"a", b"", b"hello world"];
        put_string_list(&mut out, args.iter().copied());
        put_u32(&mut out, 7);
        let mut r = PayloadReader::new(&out);
        let n = r.list_len().unwrap();
        assert_eq!(n, 3);
        for want in args {
            assert_eq!(r.bytes().unwrap(), want);
        }
        assert_eq!(r.u32().unwrap(), 7);
        r.finish().unwrap();
    }

    #[test]
    fn reader_refuses_short_and_lying_input() {
        assert_eq!(
            PayloadReader::new(&[1, 0]).u32(),
            Err(FrameError::Truncated)
        );
        // Length prefix says 100 bytes, 2 follow.
        assert_eq!(
            PayloadReader::new(&[100, 0, 0, 0, 1, 2]).bytes(),
            Err(FrameError::Truncated)
        );
        // A list claiming 2^32-1 entries in 4 bytes.
        assert_eq!(
            PayloadReader::new(&[0xff; 8]).list_len(),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            PayloadReader::new(&[1, 0, 0, 0, 0xff]).str(),
            Err(FrameError::BadUtf8)
        );
        let mut r = PayloadReader::new(&[1, 2, 3, 4, 5]);
        r.u32().unwrap();
        assert_eq!(r.finish(), Err(FrameError::TrailingBytes));
    }
}
