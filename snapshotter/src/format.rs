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

use crate::memory::DataPage;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"FLINTSNP";
pub const FORMAT_VERSION: u32 = 2;
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
    /// Pages of the memory file that hold data, with their checksums, in
    /// increasing order; every other page is zero.
    pub data_pages: Vec<DataPage>,
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
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<{ MAX_STATE_FILE as usize }>()
}

pub fn module_crc(module: &[u8]) -> u64 {
    CRC64.checksum(module)
}

pub fn encode(state: &SnapshotState) -> Result<Vec<u8>, FormatError> {
    let payload = bincode::serde::encode_to_vec(state, config())
        .map_err(|e| FormatError::Payload(e.to_string()))?;
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
        return Err(FormatError::Payload(
            "reserved header field is not zero".into(),
        ));
    }
    if header.payload_len != (body.len() - HEADER_LEN) as u64 {
        return Err(FormatError::Length(header.payload_len));
    }
    let (state, used): (SnapshotState, usize) =
        bincode::serde::decode_from_slice(&body[HEADER_LEN..], config())
            .map_err(|e| FormatError::Payload(e.to_string()))?;
    if used != body.len() - HEADER_LEN {
        return Err(FormatError::Payload(
            "trailing bytes after the payload".into(),
        ));
    }
    Ok((header, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flint_executor::devices::virtio::mmio::{QueueSnap, TransportState};
    use flint_executor::{ConsoleState, SerialState, VcpuState};

    fn sample() -> SnapshotState {
        let q = QueueSnap {
            max_size: 32,
            size: 16,
            ready: true,
            next_avail: 3,
            next_used: 3,
            desc_table: 0x21_0000,
            avail_ring: 0x21_0400,
            used_ring: 0x21_1000,
        };
        SnapshotState {
            vm: flint_executor::VmState {
                memory_mib: 64,
                vcpu: VcpuState {
                    regs: kvm_bindings::kvm_regs {
                        rax: 0x1111,
                        rbx: 0x2222,
                        rsp: 0x20_0ff8,
                        rip: 0x10_0042,
                        r15: u64::MAX,
                        rflags: 0x202,
                        ..Default::default()
                    },
                    sregs: kvm_bindings::kvm_sregs {
                        cr0: 0x8000_0011,
                        cr3: 0x9000,
                        cr4: 0x620,
                        efer: 0x500,
                        cs: kvm_bindings::kvm_segment {
                            selector: 0x2b,
                            dpl: 3,
                            l: 1,
                            present: 1,
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                    // Distinct words, so a shifted or truncated copy shows.
                    xsave: (0..1024).map(|i| i * 3 + 1).collect(),
                    xcrs: kvm_bindings::kvm_xcrs {
                        nr_xcrs: 1,
                        xcrs: {
                            let mut x = [kvm_bindings::kvm_xcr::default(); 16];
                            x[0].value = 7;
                            x
                        },
                        ..Default::default()
                    },
                    events: {
                        let mut e = kvm_bindings::kvm_vcpu_events::default();
                        e.exception.injected = 1;
                        e.exception.nr = 14;
                        e.flags = 4;
                        e
                    },
                    msrs: vec![
                        kvm_bindings::kvm_msr_entry {
                            index: 0x10,
                            data: 42,
                            ..Default::default()
                        },
                        kvm_bindings::kvm_msr_entry {
                            index: 0xc000_0082,
                            data: 0xffff_8000_0000_1000,
                            ..Default::default()
                        },
                    ],
                },
                console: ConsoleState {
                    transport: TransportState {
                        device_features_sel: 1,
                        driver_features: 1 << 32,
                        driver_features_sel: 1,
                        status: 15,
                        queue_sel: 1,
                        queues: vec![q, q],
                    },
                },
                serial: SerialState {
                    regs: [1, 2, 3, 4, 5, 6, 7, 8, 9],
                },
            },
            memory_bytes: 64 << 20,
            data_pages: vec![
                DataPage { index: 0, crc: 9 },
                DataPage {
                    index: 300,
                    crc: 0xdead_beef,
                },
            ],
            module_name: "hello.wasm".into(),
            module_len: 1000,
            module_crc: 5,
            created: 1,
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = encode(&s).unwrap();
        let (h, back) = decode(&bytes).unwrap();
        assert_eq!(
            (h.version, h.arch, h.abi),
            (FORMAT_VERSION, ARCH_X86_64, flint_abi::ABI_VERSION)
        );
        // Every part comes back as it was written (not merely as this
        // code would encode it again).
        let (v, w) = (&back.vm.vcpu, &s.vm.vcpu);
        assert_eq!(v.regs, w.regs);
        assert_eq!(v.sregs, w.sregs);
        assert_eq!(v.xsave, w.xsave);
        assert_eq!(v.xcrs, w.xcrs);
        assert_eq!(v.events, w.events);
        assert_eq!(v.msrs, w.msrs);
        assert_eq!(back.vm.console, s.vm.console);
        assert_eq!(back.vm.serial, s.vm.serial);
        assert_eq!(back.vm.memory_mib, 64);
        assert_eq!(back.memory_bytes, s.memory_bytes);
        assert_eq!(back.data_pages, s.data_pages);
        assert_eq!(
            (
                &back.module_name,
                back.module_len,
                back.module_crc,
                back.created
            ),
            (&s.module_name, s.module_len, s.module_crc, s.created)
        );
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncation to {len} went unnoticed"
            );
        }
    }

    #[test]
    fn header_errors_name_the_problem() {
        let bytes = encode(&sample()).unwrap();
        let mut b = bytes.clone();
        b[8] = 1;
        assert_eq!(decode(&b).unwrap_err(), FormatError::Version(1));
        let mut b = bytes.clone();
        b[12] = 2;
        assert_eq!(decode(&b).unwrap_err(), FormatError::Architecture(2));
        assert_eq!(
            decode(b"NOTASNAPSHOT-AT-ALL-BUT-LONG-ENOUGH-TO-READ-IT").unwrap_err(),
            FormatError::BadMagic
        );
        assert_eq!(
            decode(&vec![0; (MAX_STATE_FILE + 1) as usize]).unwrap_err(),
            FormatError::TooLarge(MAX_STATE_FILE + 1)
        );
    }
}
