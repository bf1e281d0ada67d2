//! The state file (`state.bin`): a fixed header, a bincode payload, and a
//! CRC-64 over both.
//!
//! ```text
//! 0   magic "FLINTSNP"
//! 8   format version   u32
//! 12  architecture     u32 (1 = x86_64)
//! 16  ABI version      u32 (flint_abi::ABI_VERSION)
//! 20  reserved         u32 (0)
//! 24  payload length   u64
//! 32  payload          bincode(SnapshotState)
//! end CRC-64/ECMA-182  u64, over everything before it
//! ```
//!
//! A snapshot file is hostile input: every field is checked, the file size
//! is capped before anything is allocated, and the payload is decoded with a
//! size limit.

use flint_executor::VmState;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"FLINTSNP";
pub const FORMAT_VERSION: u32 = 1;
pub const ARCH_X86_64: u32 = 1;
const HEADER_LEN: usize = 32;
const CRC_LEN: usize = 8;
/// Largest state file accepted.
pub const MAX_STATE_FILE: u64 = 16 << 20;

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

/// Everything of a snapshot but the guest's RAM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotState {
    pub vm: VmState,
    /// Size of the memory file, in bytes.
    pub memory_bytes: u64,
    /// Pages of the memory file that hold data (the rest are holes).
    pub data_pages: u64,
    /// The module's file name, its `argv[0]` in invocations.
    pub module_name: String,
    /// Length and CRC-64 of the module the snapshot was made from.
    pub module_len: u64,
    pub module_crc: u64,
    /// When the snapshot was taken, seconds since the Unix epoch.
    pub created: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("the state file is {0} bytes, more than the {MAX_STATE_FILE}-byte limit")]
    TooLarge(u64),
    #[error("the state file is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("the state file is not a Flint snapshot (bad magic number)")]
    BadMagic,
    #[error("the snapshot has format version {0}; this Flint reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("the snapshot is for architecture {0}, not x86_64")]
    Architecture(u32),
    #[error("the snapshot's guest ABI version is {0}; this Flint's is {ours}", ours = flint_abi::ABI_VERSION)]
    Abi(u32),
    #[error("the state file's checksum does not match: it is corrupted")]
    Checksum,
    #[error("the state file's payload length {0} does not match its size")]
    Length(u64),
    #[error("the state file's payload cannot be decoded: {0}")]
    Payload(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding().with_limit::<{ MAX_STATE_FILE as usize }>()
}

pub fn module_crc(module: &[u8]) -> u64 {
    CRC64.checksum(module)
}

pub fn encode(state: &SnapshotState) -> Result<Vec<u8>, FormatError> {
    let payload = bincode::serde::encode_to_vec(state, config()).map_err(|e| FormatError::Payload(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_X86_64.to_le_bytes());
    out.extend_from_slice(&flint_abi::ABI_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The checked header fields and the CRC, for `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub arch: u32,
    pub abi: u32,
    pub payload_len: u64,
    pub crc: u64,
}

pub fn decode(bytes: &[u8]) -> Result<(Header, SnapshotState), FormatError> {
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(FormatError::TooLarge(bytes.len() as u64));
    }
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(FormatError::Truncated(bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    let crc = u64::from_le_bytes(crc.try_into().expect("8 bytes"));
    let header = Header {
        version: u32_at(bytes, 8),
        arch: u32_at(bytes, 12),
        abi: u32_at(bytes, 16),
        payload_len: u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes")),
        crc,
    };
    // Version and architecture first: a newer format may checksum differently.
    if header.version != FORMAT_VERSION {
        return Err(FormatError::Version(header.version));
    }
    if header.arch != ARCH_X86_64 {
        return Err(FormatError::Architecture(header.arch));
    }
    if CRC64.checksum(body) != crc {
        return Err(FormatError::Checksum);
    }
    if header.abi != flint_abi::ABI_VERSION {
        return Err(FormatError::Abi(header.abi));
    }
    if u32_at(bytes, 20) != 0 {
        return Err(FormatError::Payload("reserved header field is not zero".into()));
    }
    if header.payload_len != (body.len() - HEADER_LEN) as u64 {
        return Err(FormatError::Length(header.payload_len));
    }
    let (state, used): (SnapshotState, usize) =
        bincode::serde::decode_from_slice(&body[HEADER_LEN..], config()).map_err(|e| FormatError::Payload(e.to_string()))?;
    if used != body.len() - HEADER_LEN {
        return Err(FormatError::Payload("trailing bytes after the payload".into()));
    }
    Ok((header, state))
}
