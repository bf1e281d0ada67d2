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
