//! One fuzz target per parser of untrusted bytes. Under `cargo test` each
//! runs the kept corpus and then random inputs for a bounded number of
//! iterations (`BOLERO_RANDOM_ITERATIONS`, raised by `scripts/test long`);
//! `cargo bolero test targets::NAME` runs it under libFuzzer. A target
//! passes when the parser returns (an error is fine) and never panics.

use bolero::check;

/// The data channel's frame header (guest to host).
#[test]
fn frame_header() {
    check!().for_each(|input: &[u8]| {
        if let Ok(b) = <&[u8; flint_abi::frame::HEADER_LEN]>::try_from(
            input.get(..flint_abi::frame::HEADER_LEN).unwrap_or(&[]),
        ) {
            let _ = flint_abi::frame::Header::decode(b);
        }
    });
}

/// A snapshot's state file.
#[test]
fn snapshot_state_file() {
    check!().for_each(|input: &[u8]| {
        let _ = flint_snapshotter::format::decode(input);
    });
}

/// A snapshot's working-set file.
#[test]
fn working_set_file() {
    check!().for_each(|input: &[u8]| {
        let _ = flint_snapshotter::working_set::decode(input, 1 << 20);
    });
}

/// A Knative Service manifest (reachable over the admin API).
#[test]
fn service_manifest() {
    check!().for_each(|input: &[u8]| {
        if let Ok(s) = std::str::from_utf8(input) {
            let _ = flint_gateway::manifest::parse(s);
        }
    });
}

/// A function's CGI response.
#[test]
fn cgi_response() {
    check!().for_each(|input: &[u8]| {
        let _ = flint_gateway::cgi::parse_response(input);
    });
}

/// A CloudEvent in each mode: headers from the input's first line, the
/// rest as the body.
#[test]
fn cloudevents_request() {
    check!().for_each(|input: &[u8]| {
        let split = input
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(input.len());
        let (head, body) = input.split_at(split);
        let mut headers = http::HeaderMap::new();
        for kv in head.split(|&b| b == b';') {
            let mut it = kv.splitn(2, |&b| b == b'=');
            if let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k),
                    http::HeaderValue::from_bytes(v),
                ) {
                    headers.append(k, v);
                }
            }
        }
        for mode in [
            flint_gateway::cloudevents::Mode::Binary,
            flint_gateway::cloudevents::Mode::Structured,
            flint_gateway::cloudevents::Mode::Batch,
        ] {
            let _ = flint_gateway::cloudevents::parse(mode, &headers, body);
        }
    });
}

/// An ELF program's headers, as execve reads them.
#[test]
fn elf_headers() {
    check!().for_each(|input: &[u8]| {
        let _ = flint_linux::loader::check(input);
    });
}

/// An OCI image layout archive, as an apply or a shim container reads it
/// (index, nested manifests, config, layers, each checked against its
/// digest; layers unpacked). An input that is a tar archive is used as
/// is; any other is split at 0xff bytes into index.json and up to four
/// blobs, each stored under its digest, and `@1`..`@4` in any part stand
/// for those digests, so that the walk gets past the digest checks.
#[test]
fn oci_layout() {
    use sha2::Digest;
    check!().for_each(|input: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("image.tar");
        let is_tar = input.len() > 262 && &input[257..262] == b"ustar";
        let bytes = if is_tar {
            input.to_vec()
        } else {
            let parts: Vec<&[u8]> = input.split(|&b| b == 0xff).take(5).collect();
            let digest = |b: &[u8]| {
                let hex: String = sha2::Sha256::digest(b)
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect();
                format!("sha256:{hex}")
            };
            // Blobs first (their digests fill the placeholders of the
            // parts before them, as a manifest names its config).
            let mut blobs: Vec<Vec<u8>> = parts.iter().skip(1).map(|p| p.to_vec()).collect();
            for i in (0..blobs.len()).rev() {
                let mut b = blobs[i].clone();
                for (j, later) in blobs.iter().enumerate().skip(i + 1) {
                    b = replace(
                        &b,
                        format!("@{}", j + 1).as_bytes(),
                        digest(later).as_bytes(),
                    );
                }
                blobs[i] = b;
            }
            let mut index = parts.first().copied().unwrap_or(b"").to_vec();
            for (j, blob) in blobs.iter().enumerate() {
                index = replace(
                    &index,
                    format!("@{}", j + 1).as_bytes(),
                    digest(blob).as_bytes(),
                );
            }
            let mut t = tar::Builder::new(Vec::new());
            let mut add = |name: &str, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                t.append_data(&mut h, name, data).unwrap();
            };
            add("index.json", &index);
            for blob in &blobs {
                let name = format!("blobs/sha256/{}", &digest(blob)["sha256:".len()..]);
                add(&name, blob);
            }
            t.into_inner().unwrap()
        };
        std::fs::write(&archive, bytes).unwrap();
        let _ = flint_image::find_module(&archive);
        let _ = flint_image::unpack_rootfs(&archive, &dir.path().join("rootfs"));
    });
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}
