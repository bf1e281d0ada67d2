//! The working-set file (`working-set.bin`): the guest pages an invocation
//! touched, in the order it first touched them (as in REAP).
//!
//! `"FLINTWS1"`, a `u32` count, that many `u32` page indices, CRC-64.

pub const MAGIC: &[u8; 8] = b"FLINTWS1";
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);

pub fn encode(pages: &[u32]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for p in pages {
        out.extend_from_slice(&p.to_le_bytes());
    }
    let crc = CRC64.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and checks a working set for a memory of `total_pages` pages.
pub fn decode(bytes: &[u8], total_pages: u64) -> Result<Vec<u32>, String> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err("not a working-set file".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 8);
    if CRC64.checksum(body) != u64::from_le_bytes(crc.try_into().expect("8 bytes")) {
        return Err("checksum mismatch: the file is corrupted".into());
    }
    let count = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    if body.len() != 12 + 4 * count || count as u64 > total_pages {
        return Err(format!(
            "it claims {count} pages but holds {} bytes",
            body.len()
        ));
    }
    let pages: Vec<u32> = body[12..]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    if let Some(bad) = pages.iter().find(|&&p| p as u64 >= total_pages) {
        return Err(format!(
            "page {bad} is beyond the {total_pages}-page memory"
        ));
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let pages = vec![5, 1, 900, 2];
        assert_eq!(decode(&encode(&pages), 1000).unwrap(), pages);
        assert_eq!(decode(&encode(&[]), 1000).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn refuses_damage() {
        let mut b = encode(&[1, 2, 3]);
        b[13] ^= 1;
        assert!(decode(&b, 1000).unwrap_err().contains("checksum"));
        assert!(decode(&encode(&[1, 2000]), 1000)
            .unwrap_err()
            .contains("beyond"));
        let e = decode(b"FLINTWS1", 1000).unwrap_err();
        assert!(e.contains("not a working-set file"), "{e}");
        let e = decode(&encode(&[1])[..15], 1000).unwrap_err();
        assert!(e.contains("not a working-set file"), "{e}");
    }
}
