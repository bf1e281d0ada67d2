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

/// The Linux layer's system calls, made by a hostile program: each input
/// is a sequence of calls with fuzzed numbers and arguments, made through
/// the real dispatcher of a real VM's kernel on a thread confined as a
/// vCPU thread is. An argument is a small number, a negative one, any
/// 64-bit value, a value an earlier call returned (fds, addresses, pids),
/// or a pointer: into the input itself (mapped into the process) or to one
/// of a few well-formed things (paths inside the root, a timespec, an
/// iovec array, an argv), so that calls get past their first check. An
/// input passes when every call returns without a panic and without a host
/// call outside the vCPU thread's seccomp list, and when, once its
/// processes are ended, all the guest memory they held is free again.
#[test]
fn linux_syscalls() {
    use std::sync::mpsc;
    // The kernel lives on its own thread, confined as a vCPU thread is
    // (the filter stays on a thread once installed, and the fuzz engine's
    // own host calls must not count); inputs go to it and verdicts back.
    let (to_kernel, inputs) = mpsc::channel::<Vec<u8>>();
    let (to_engine, verdicts) = mpsc::channel::<Result<(), String>>();
    let (root_tx, root_rx) = mpsc::channel();
    let kernel = std::thread::spawn(move || {
        let mut h = flint_linux::fuzz::Harness::new(64).expect("a Linux VM for the harness");
        root_tx
            .send(h.root().to_path_buf())
            .expect("the engine thread");
        h.confine().expect("the vCPU thread's filter");
        let frames = (h.end(), h.frames().1);
        // A panic fails the input; `begin` rebuilds the state anyway.
        let mut h = std::panic::AssertUnwindSafe(h);
        for input in inputs {
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                syscall_sequence(&mut h, frames, &input)
            }))
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()))
            });
            if to_engine.send(verdict).is_err() {
                break;
            }
        }
    });
    let root = root_rx.recv().expect("the kernel thread");
    check!().for_each(|input: &[u8]| {
        // Files the last input's calls made, removed or changed go.
        flint_linux::fuzz::fill_root(&root).expect("the harness's root");
        to_kernel.send(input.to_vec()).expect("the kernel thread");
        if let Err(e) = verdicts.recv().expect("the kernel thread") {
            panic!("{e}");
        }
    });
    drop(to_kernel);
    kernel.join().expect("the kernel thread");
}

/// Where the well-formed things a pointer argument may point at are in
/// the scratch region's second page (the first holds the input).
const DICTIONARY: u64 = 0x1000;
const PATHS: [&str; 8] = [
    "/etc/hostname",
    "/tmp/f",
    "/proc/self/maps",
    "/",
    "/init",
    "/proc/self/status",
    "/tmp",
    "/dev/null",
];

/// The scratch region for `input`: the input, then paths (one per 32
/// bytes), a timespec of 1 µs, an iovec array of two 64-byte buffers, an
/// argv and zeroed room for what calls write back.
fn scratch(input: &[u8]) -> Vec<u8> {
    use flint_linux::fuzz::{SCRATCH, SCRATCH_LEN};
    let mut s = vec![0u8; SCRATCH_LEN as usize];
    let n = input.len().min(DICTIONARY as usize);
    s[..n].copy_from_slice(&input[..n]);
    let d = DICTIONARY as usize;
    for (i, p) in PATHS.iter().enumerate() {
        s[d + 32 * i..d + 32 * i + p.len()].copy_from_slice(p.as_bytes());
    }
    let mut put = |at: usize, v: u64| s[d + at..d + at + 8].copy_from_slice(&v.to_le_bytes());
    put(0x100, 0);
    put(0x108, 1000);
    put(0x110, SCRATCH + 0x1800);
    put(0x118, 64);
    put(0x120, SCRATCH + 0x1900);
    put(0x128, 64);
    put(0x130, SCRATCH + DICTIONARY + 32 * 4);
    put(0x138, 0);
    s
}

/// One input's calls (see [`linux_syscalls`]); `frames` is what the kernel
/// area holds with no process, and the memory's size.
fn syscall_sequence(
    h: &mut flint_linux::fuzz::Harness,
    (baseline, total): (u64, u64),
    input: &[u8],
) -> Result<(), String> {
    use flint_linux::fuzz::{SCRATCH, SCRATCH_LEN};
    h.begin(&scratch(input))
        .map_err(|e| format!("process 1: {e}"))?;
    if let Err(e) = flint_executor::seccomp::check() {
        return Err(format!("starting process 1: {e}"));
    }
    let pos = std::cell::Cell::new(0);
    let next = |n: usize| {
        let at = pos.get();
        pos.set(at + n);
        (0..n).fold(0u64, |v, i| {
            v | u64::from(input.get(at + i).copied().unwrap_or(0)) << (8 * i)
        })
    };
    let mut results = [3u64, 4, 0x1000_0000, 1];
    for i in 0..64 {
        if pos.get() >= input.len() {
            break;
        }
        let sel = next(2) as u16;
        // Every x86-64 number up to 334, and the newer calls Flint
        // answers (close_range, openat2, clone3, faccessat2).
        let nr = match sel % 340 {
            335 => 435,
            336 => 436,
            337 => 437,
            338 => 439,
            339 => u64::from(sel),
            n => u64::from(n),
        };
        let mut args = [0u64; 6];
        for a in args.iter_mut() {
            let kind = next(1);
            let high = kind >> 3;
            *a = match kind % 8 {
                0 | 1 => high,
                2 => SCRATCH + DICTIONARY + 32 * (high % PATHS.len() as u64),
                3 => SCRATCH + DICTIONARY + [0x100, 0x110, 0x130, 0x200][high as usize % 4],
                4 => SCRATCH + next(2) % SCRATCH_LEN,
                5 => next(8),
                6 => (-((high % 8) as i64 + 1)) as u64,
                _ => results[high as usize % results.len()],
            };
        }
        let threads = h.runnable();
        let Some(&tid) = threads.get((sel as usize / 340) % threads.len().max(1)) else {
            break;
        };
        let r = h.call(tid, nr, args);
        if let Some(v) = r.filter(|&v| (v as i64) > 0) {
            results[i % results.len()] = v;
        }
        // `FLINT_FUZZ_TRACE=1` shows each call, as strace would.
        if std::env::var_os("FLINT_FUZZ_TRACE").is_some() {
            let r = r.map(|v| v as i64);
            eprintln!("[{tid}] {nr}({args:x?}) = {r:?}, {} frames", h.frames().0);
        }
        if let Err(e) = flint_executor::seccomp::check() {
            return Err(format!("system call {nr}{args:x?} from thread {tid}: {e}"));
        }
        let (used, all) = h.frames();
        if used > all || all != total {
            return Err(format!(
                "frame accounting after system call {nr}: {used} of {all}"
            ));
        }
    }
    // A freeze and a thaw of whatever state the calls made: the copy of
    // the copy is the state again, under the vCPU thread's filter.
    h.copy_check()
        .map_err(|e| format!("copying the state: {e}"))?;
    if let Err(e) = flint_executor::seccomp::check() {
        return Err(format!("copying the state: {e}"));
    }
    let left = h.end();
    if left != baseline {
        return Err(format!(
            "guest frames leaked: {left} in use once every process ended, {baseline} with none"
        ));
    }
    Ok(())
}
