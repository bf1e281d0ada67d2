//! Snapshots end to end: real VMs booted, saved to a directory, restored
//! with each memory backend, with and without prefetch.

use std::path::Path;
use std::time::Duration;

use flint_executor::{run, BufferIo, Invocation, RunError, VmConfig};
use flint_snapshotter::{create, Backend, InvokeOptions, Snapshot, SnapshotError};

/// A directory of its own for one snapshot, removed when dropped.
fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("flint-snap-{tag}-"))
        .tempdir()
        .unwrap()
}

/// A snapshot of the example `name` (in its own directory, removed when
/// dropped).
fn snapshot(name: &str) -> tempfile::TempDir {
    let dir = temp_dir(name);
    let mut io = BufferIo::default();
    create(
        &flint_examples::bytes(name),
        &format!("{name}.wasm"),
        dir.path(),
        &VmConfig::default(),
        &mut io,
    )
    .unwrap();
    dir
}

fn inv(args: &[&str], env: &[(&str, &str)]) -> Invocation {
    Invocation {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn all_options() -> Vec<InvokeOptions> {
    let mut v = Vec::new();
    for backend in [Backend::File, Backend::Uffd] {
        for prefetch in [true, false] {
            v.push(InvokeOptions {
                backend,
                prefetch,
                timeout: Some(Duration::from_secs(30)),
            });
        }
    }
    v
}

/// Invokes `dir` with every backend/prefetch combination, twice each (the
/// second uffd run uses the recorded working set), and checks each output
/// against a cold `flint run` of the same module.
fn same_as_cold_boot(name: &str, invocation: Invocation, stdin: &str) {
    let mut cold = BufferIo::with_stdin(stdin);
    let cold_result = run(
        &VmConfig::default(),
        &flint_examples::bytes(name),
        &invocation,
        &mut cold,
    )
    .map(|r| r.exit_code);
    let dir_tmp = snapshot(name);
    let dir = dir_tmp.path();
    for opts in all_options() {
        for round in 0..2 {
            let snap = Snapshot::open(dir).unwrap();
            let mut io = BufferIo::with_stdin(stdin);
            let got = snap
                .invoke(&invocation, &mut io, &opts)
                .map(|r| r.run.exit_code);
            let ctx = format!("{name} {opts:?} round {round}");
            match (&cold_result, &got) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{ctx}"),
                (Err(a), Err(SnapshotError::Run(b))) => {
                    assert_eq!(a.to_string(), b.to_string(), "{ctx}")
                }
                other => panic!("{ctx}: {other:?}"),
            }
            assert_eq!(io.stdout, cold.stdout, "{ctx}");
            assert_eq!(io.stderr, cold.stderr, "{ctx}");
        }
    }
}

#[test]
fn hello_restored_matches_cold_boot() {
    same_as_cold_boot("hello", inv(&["hello.wasm", "world"], &[]), "");
}

#[test]
fn echo_restored_gets_this_invocations_stdin_and_env() {
    same_as_cold_boot(
        "echo",
        inv(&["echo.wasm"], &[("K", "v"), ("Z", "last")]),
        "from stdin\n",
    );
}

#[test]
fn fib_restored_matches_cold_boot() {
    same_as_cold_boot("fib", inv(&["fib.wasm"], &[("MODE", "json")]), "{\"n\":20}");
    same_as_cold_boot("alloc", inv(&["alloc.wasm", "16"], &[]), "");
}

#[test]
fn trap_restored_reports_the_trap() {
    same_as_cold_boot("trap", inv(&["trap.wasm"], &[]), "");
}

#[test]
fn spin_restored_is_stopped_by_the_timeout() {
    let dir_tmp = snapshot("spin");
    let dir = dir_tmp.path();
    for backend in [Backend::File, Backend::Uffd] {
        let opts = InvokeOptions {
            backend,
            prefetch: true,
            timeout: Some(Duration::from_millis(300)),
        };
        let mut io = BufferIo::default();
        let r = Snapshot::open(dir)
            .unwrap()
            .invoke(&inv(&["spin"], &[]), &mut io, &opts);
        assert!(
            matches!(r, Err(SnapshotError::Run(RunError::Timeout(_)))),
            "{r:?}"
        );
        assert_eq!(io.stdout, b"spinning\n");
    }
}

#[test]
fn the_first_uffd_invocation_records_the_working_set_and_later_ones_prefetch_it() {
    let dir_tmp = snapshot("hello");
    let dir = dir_tmp.path();
    assert_eq!(Snapshot::open(dir).unwrap().info().working_set_pages, None);
    let opts = InvokeOptions::default();
    let first = Snapshot::open(dir)
        .unwrap()
        .invoke(&inv(&["hello"], &[]), &mut BufferIo::default(), &opts)
        .unwrap();
    assert!(first.recorded_working_set);
    assert!(first.faulted_pages > 0);
    assert_eq!(first.prefetched_pages, 0);
    let ws = Snapshot::open(dir)
        .unwrap()
        .info()
        .working_set_pages
        .unwrap();
    assert!(ws > 10, "{ws} pages");
    let second = Snapshot::open(dir)
        .unwrap()
        .invoke(&inv(&["hello"], &[]), &mut BufferIo::default(), &opts)
        .unwrap();
    assert!(!second.recorded_working_set);
    assert_eq!(second.prefetched_pages, ws as u64);
    assert!(
        second.faulted_pages < first.faulted_pages,
        "{} vs {}",
        second.faulted_pages,
        first.faulted_pages
    );
    let off = InvokeOptions {
        prefetch: false,
        ..opts
    };
    let third = Snapshot::open(dir)
        .unwrap()
        .invoke(&inv(&["hello"], &[]), &mut BufferIo::default(), &off)
        .unwrap();
    assert_eq!(third.prefetched_pages, 0);
    assert!(third.faulted_pages >= ws as u64 / 2);
}

#[test]
fn two_restores_draw_different_random_numbers_and_read_the_current_time() {
    let dir_tmp = snapshot("entropy");
    let dir = dir_tmp.path();
    std::thread::sleep(Duration::from_millis(50));
    let mut outs = Vec::new();
    for backend in [Backend::File, Backend::Uffd] {
        let opts = InvokeOptions {
            backend,
            ..InvokeOptions::default()
        };
        let mut io = BufferIo::default();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Snapshot::open(dir)
            .unwrap()
            .invoke(&inv(&["entropy"], &[]), &mut io, &opts)
            .unwrap();
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let out = String::from_utf8(io.stdout).unwrap();
        let time: u128 = out
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("time ")
            .unwrap()
            .parse()
            .unwrap();
        // The guest's clock reads now, not the snapshot's time (allow for TSC rounding).
        assert!(
            time + 5_000_000 >= before && time <= after + 5_000_000,
            "{before} <= {time} <= {after}"
        );
        outs.push(out.lines().next().unwrap().to_string());
    }
    assert_ne!(
        outs[0], outs[1],
        "two restores drew the same random numbers"
    );
}

#[test]
fn fifty_restores_eight_at_a_time_are_independent() {
    let dir_tmp = snapshot("counter");
    let dir = dir_tmp.path();
    let snap = Snapshot::open(dir).unwrap();
    for batch in 0..7 {
        let n = if batch == 6 { 2 } else { 8 };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let snap = &snap;
                    s.spawn(move || {
                        let backend = if i % 2 == 0 {
                            Backend::File
                        } else {
                            Backend::Uffd
                        };
                        let opts = InvokeOptions {
                            backend,
                            ..InvokeOptions::default()
                        };
                        let mut io = BufferIo::default();
                        let r = snap
                            .invoke(&inv(&["counter"], &[]), &mut io, &opts)
                            .unwrap();
                        assert_eq!(r.run.exit_code, 0);
                        String::from_utf8(io.stdout).unwrap()
                    })
                })
                .collect();
            for h in handles {
                // Each instance starts from the snapshot: another's increment never shows.
                assert_eq!(h.join().unwrap(), "count 1\n");
            }
        });
    }
}

fn corrupt(dir: &Path, file: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let p = dir.join(file);
    let mut b = std::fs::read(&p).unwrap();
    f(&mut b);
    std::fs::write(&p, b).unwrap();
}

fn open_err(dir: &Path) -> String {
    flint_executor::error_chain(&Snapshot::open(dir).unwrap_err())
}

#[test]
fn corrupted_snapshots_are_refused_with_the_reason() {
    let good_tmp = snapshot("hello");
    let good = good_tmp.path();
    let copy = |tag: &str| {
        let d = temp_dir(tag);
        for f in ["state.bin", "memory.bin"] {
            std::fs::copy(good.join(f), d.path().join(f)).unwrap();
        }
        d
    };
    let d_tmp = copy("flip");
    let d = d_tmp.path();
    corrupt(d, "state.bin", |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x40;
    });
    assert!(
        open_err(d).contains("checksum does not match"),
        "{}",
        open_err(d)
    );

    let d_tmp = copy("version");

    let d = d_tmp.path();
    corrupt(d, "state.bin", |b| b[8] = 99);
    assert!(open_err(d).contains("format version 99"), "{}", open_err(d));

    let d_tmp = copy("arch");

    let d = d_tmp.path();
    corrupt(d, "state.bin", |b| b[12] = 7);
    assert!(open_err(d).contains("architecture 7"), "{}", open_err(d));

    let d_tmp = copy("magic");

    let d = d_tmp.path();
    corrupt(d, "state.bin", |b| b[0] = b'X');
    assert!(
        open_err(d).contains("not a Flint snapshot"),
        "{}",
        open_err(d)
    );

    let d_tmp = copy("truncstate");

    let d = d_tmp.path();
    corrupt(d, "state.bin", |b| b.truncate(b.len() / 3));
    assert!(
        open_err(d).contains("checksum") || open_err(d).contains("truncated"),
        "{}",
        open_err(d)
    );

    let d_tmp = copy("emptystate");

    let d = d_tmp.path();
    corrupt(d, "state.bin", |b| b.clear());
    assert!(open_err(d).contains("truncated"), "{}", open_err(d));

    let d_tmp = copy("truncmem");

    let d = d_tmp.path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("memory.bin"))
        .unwrap();
    f.set_len(4096 * 100).unwrap();
    assert!(open_err(d).contains("needs exactly"), "{}", open_err(d));

    let d_tmp = copy("ws");

    let d = d_tmp.path();
    std::fs::write(d.join("working-set.bin"), b"FLINTWS1garbage-garbage").unwrap();
    assert!(open_err(d).contains("working-set"), "{}", open_err(d));

    let d_tmp = copy("missing");

    let d = d_tmp.path();
    std::fs::remove_file(d.join("memory.bin")).unwrap();
    assert!(open_err(d).contains("memory.bin"), "{}", open_err(d));

    let d_tmp = temp_dir("huge");

    let d = d_tmp.path();
    let f = std::fs::File::create(d.join("state.bin")).unwrap();
    f.set_len(1 << 30).unwrap();
    assert!(open_err(d).contains("limit"), "{}", open_err(d));

    // The good one still works after all that.
    let r = Snapshot::open(good).unwrap().invoke(
        &inv(&["hello", "ok"], &[]),
        &mut BufferIo::default(),
        &InvokeOptions::default(),
    );
    assert_eq!(r.unwrap().run.exit_code, 0);
}

/// The pages of `memory.bin` that hold data.
fn data_pages(dir: &Path) -> Vec<usize> {
    let mem = std::fs::read(dir.join("memory.bin")).unwrap();
    mem.chunks(4096)
        .enumerate()
        .filter(|(_, p)| p.iter().any(|b| *b != 0))
        .map(|(i, _)| i)
        .collect()
}

fn invoke_with(dir: &Path, backend: Backend, prefetch: bool) -> Result<String, SnapshotError> {
    let opts = InvokeOptions {
        backend,
        prefetch,
        timeout: Some(Duration::from_secs(30)),
    };
    let mut io = BufferIo::default();
    let r = Snapshot::open(dir)?.invoke(&inv(&["hello", "pages"], &[]), &mut io, &opts)?;
    assert_eq!(r.run.exit_code, 0);
    Ok(String::from_utf8_lossy(&io.stdout).into_owned())
}

fn expect_corrupt(r: Result<impl std::fmt::Debug, SnapshotError>, what: &str) {
    match r {
        Err(SnapshotError::MemoryCorrupt { page, .. }) => {
            let e = SnapshotError::MemoryCorrupt {
                path: "memory.bin".into(),
                page,
            };
            assert!(e.to_string().contains("does not match"), "{e}");
        }
        other => panic!("{what}: expected the memory file refused as corrupted, got {other:?}"),
    }
}

/// `memory.bin` is checked page by page against the CRC-32s the state file
/// lists: a changed byte in a data page is refused by every way a restore
/// takes memory (a private mapping before the VM runs, the sealed copy as
/// it is made, the userfaultfd handler as it serves or prefetches the
/// page), with the snapshot's exit code in the CLI; data written into a
/// zero page is refused where the guest would see it (a private mapping)
/// and ignored where zero pages are served as zeros; a data page punched
/// out to a hole is refused.
#[test]
fn memory_pages_that_do_not_match_their_checksums_are_refused() {
    let good_tmp = snapshot("hello");
    let good = good_tmp.path();
    let data = data_pages(good);
    assert!(data.len() > 10, "hello's snapshot has data pages");
    let copy = |tag: &str| {
        let d = temp_dir(tag);
        for f in ["state.bin", "memory.bin"] {
            std::fs::copy(good.join(f), d.path().join(f)).unwrap();
        }
        d
    };
    let flip = |d: &Path, page: usize, at: usize| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(d.join("memory.bin"))
            .unwrap();
        let mut b = [0u8];
        let off = (page * 4096 + at) as u64;
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], off).unwrap();
    };

    // One bit of one data page.
    let d_tmp = copy("onebit");
    let d = d_tmp.path();
    flip(d, data[data.len() / 2], 1234);
    assert!(Snapshot::open(d).is_ok(), "opening reads no memory");
    expect_corrupt(invoke_with(d, Backend::File, false), "file backend");
    expect_corrupt(Snapshot::open(d).unwrap().restore(), "restore");
    expect_corrupt(Snapshot::open_sealed(d), "sealed copy");
    expect_corrupt(Snapshot::open(d).unwrap().verify_memory(), "verify");

    // Every data page: the uffd handler meets one on the guest's first
    // touch of data, without a working set and with one.
    let d_tmp = copy("allpages");
    let d = d_tmp.path();
    for &p in &data {
        flip(d, p, 7);
    }
    expect_corrupt(invoke_with(d, Backend::Uffd, false), "uffd faults");
    std::fs::copy(good.join("memory.bin"), d.join("memory.bin")).unwrap();
    invoke_with(d, Backend::Uffd, true).expect("the repaired file restores");
    assert!(d.join("working-set.bin").exists());
    for &p in &data {
        flip(d, p, 7);
    }
    expect_corrupt(invoke_with(d, Backend::Uffd, true), "uffd prefetch");

    // Data in a zero page: a private mapping would show it to the guest;
    // the other backends serve zeros there whatever the file holds.
    let d_tmp = copy("hole");
    let d = d_tmp.path();
    let hole = (0..).find(|p| !data.contains(p)).unwrap();
    flip(d, hole, 0);
    expect_corrupt(invoke_with(d, Backend::File, false), "data in a hole");
    let out = invoke_with(d, Backend::Uffd, false).unwrap();
    assert_eq!(out, "hello, pages\n");
    Snapshot::open_sealed(d).expect("the sealed copy keeps zero pages zero");

    // A data page punched out (it reads as zeros).
    let d_tmp = copy("punched");
    let d = d_tmp.path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("memory.bin"))
        .unwrap();
    let page = data[0] as i64 * 4096;
    // SAFETY: fallocate on a file we own; no memory is touched.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            page,
            4096,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    expect_corrupt(invoke_with(d, Backend::File, false), "punched page");

    // The good one is untouched by all that.
    for backend in [Backend::File, Backend::Uffd] {
        assert_eq!(invoke_with(good, backend, true).unwrap(), "hello, pages\n");
    }
}

/// A state file whose checksum is right but whose page list is hostile
/// (a page outside memory, pages out of order, one twice) is refused
/// when opened, before any memory is read.
#[test]
fn a_checksummed_state_file_with_a_hostile_page_list_is_refused() {
    use flint_snapshotter::format;
    use flint_snapshotter::memory::DataPage;
    let good_tmp = snapshot("hello");
    let good = good_tmp.path();
    let (_, state) = format::decode(&std::fs::read(good.join("state.bin")).unwrap()).unwrap();
    let pages = (state.memory_bytes / 4096) as u32;
    type Edit = fn(&mut Vec<DataPage>, u32);
    let cases: [(&str, Edit); 3] = [
        ("outside", |l, pages| {
            l.push(DataPage {
                index: pages,
                crc: 0,
            })
        }),
        ("increasing", |l, _| l.swap(0, 1)),
        ("increasing", |l, _| {
            let first = l[0];
            l.insert(1, first)
        }),
    ];
    for (want, f) in cases {
        let d_tmp = temp_dir("hostile-list");
        let d = d_tmp.path();
        std::fs::copy(good.join("memory.bin"), d.join("memory.bin")).unwrap();
        let mut s = state.clone();
        f(&mut s.data_pages, pages);
        std::fs::write(d.join("state.bin"), format::encode(&s).unwrap()).unwrap();
        let e = open_err(d);
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn a_memory_file_that_shrinks_under_a_uffd_restore_stops_the_vm_with_an_error() {
    let dir_tmp = snapshot("hello");
    let dir = dir_tmp.path();
    let snap = Snapshot::open(dir).unwrap();
    // Truncate after the checks: the handler finds the pages missing.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("memory.bin"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let opts = InvokeOptions {
        backend: Backend::Uffd,
        prefetch: false,
        timeout: Some(Duration::from_secs(10)),
    };
    let r = snap.invoke(&inv(&["hello"], &[]), &mut BufferIo::default(), &opts);
    match r {
        Err(SnapshotError::MemoryBackend(why)) => assert!(why.contains("memory file"), "{why}"),
        other => panic!("expected a memory backend error, got {other:?}"),
    }
}

/// Every page of `vm`'s memory but the clock and seed pages (fresh on
/// every restore and reset) equals the snapshot file `image`'s.
fn assert_pristine(vm: &flint_executor::ReadyVm, image: &[u8], what: &str) {
    let fresh = [
        flint_abi::layout::CLOCK_PAGE_ADDR as usize / 4096,
        flint_abi::layout::SEED_PAGE_ADDR as usize / 4096,
    ];
    let mut now = vec![0u8; image.len()];
    vm.read_memory(0, &mut now).unwrap();
    for (page, (a, b)) in now.chunks(4096).zip(image.chunks(4096)).enumerate() {
        if !fresh.contains(&page) {
            assert!(a == b, "{what}: page {page:#x} differs from the snapshot");
        }
    }
}

/// Reset in place: a VM restored from a snapshot, run, and reset is the
/// snapshot again: every byte of guest memory equal to the snapshot's but
/// the clock and seed pages (fresh on every restore, as they are), the
/// registers as saved, and each run sees none of the last (`counter`
/// always counts 1). A run that fails leaves a VM that is not reset.
#[test]
fn a_vm_reset_in_place_is_the_snapshot_again() {
    let dir = snapshot("counter");
    let snap = Snapshot::open(dir.path()).unwrap();
    let image = std::fs::read(dir.path().join("memory.bin")).unwrap();
    let mut vm = snap.restore().unwrap();
    let saved = vm.registers().unwrap();
    for round in 0..5 {
        let mut io = BufferIo::default();
        let r = vm
            .invoke_in_place(
                &inv(&["counter.wasm"], &[]),
                &mut io,
                Some(Duration::from_secs(30)),
                None,
            )
            .unwrap();
        assert_eq!(r.exit_code, 0);
        assert_eq!(io.stdout, b"count 1\n", "round {round}");
        let written = snap.reset(&mut vm).unwrap();
        assert!(written > 2, "round {round}: {written} pages written");
        assert_pristine(&vm, &image, &format!("round {round}"));
        let regs = vm.registers().unwrap();
        assert_eq!(
            (regs.rip, regs.rsp, regs.rflags, regs.rax, regs.rbx),
            (saved.rip, saved.rsp, saved.rflags, saved.rax, saved.rbx),
            "round {round}"
        );
    }
    // A trap: that VM is not reset.
    let dir = snapshot("trap");
    let snap = Snapshot::open(dir.path()).unwrap();
    let mut vm = snap.restore().unwrap();
    let mut io = BufferIo::default();
    let r = vm.invoke_in_place(
        &inv(&["trap.wasm"], &[]),
        &mut io,
        Some(Duration::from_secs(30)),
        None,
    );
    assert!(matches!(r, Err(RunError::Trap(_))), "{r:?}");
    assert!(
        snap.reset(&mut vm).is_err(),
        "a VM whose run trapped is not reset"
    );
}

/// The isolation promise of reset in place, over every example that ends
/// cleanly (16 MiB written across the heap by `alloc`, JSON and Markdown
/// parsed, stdin echoed, the environment printed): after each run and
/// reset, every byte of guest memory but the fresh clock and seed pages
/// equals the snapshot's, every general register the saved one, and the
/// next run answers as the first did.
#[test]
fn every_example_is_pristine_after_each_reset() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("hello", &["world"], ""),
        ("echo", &[], "a line of stdin\n"),
        ("fib", &["20"], ""),
        ("alloc", &["16"], ""),
        ("counter", &[], ""),
        ("greet", &[], ""),
        ("printenv", &[], "body"),
        ("json-transform", &[], "{\"a\":1}"),
        ("markdown", &[], "# title\n\n*x*\n"),
        ("bigheap", &[], ""),
        ("entropy", &[], ""),
    ];
    for &(name, args, stdin) in cases {
        let dir = snapshot(name);
        let snap = Snapshot::open(dir.path()).unwrap();
        let image = std::fs::read(dir.path().join("memory.bin")).unwrap();
        let mut vm = snap.restore().unwrap();
        let saved = format!("{:?}", vm.registers().unwrap());
        let mut argv = vec![format!("{name}.wasm")];
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut first = None;
        for round in 0..3 {
            let mut io = BufferIo::with_stdin(stdin.as_bytes());
            let r = vm
                .invoke_in_place(
                    &inv(&argv, &[("K", "v")]),
                    &mut io,
                    Some(Duration::from_secs(60)),
                    None,
                )
                .unwrap_or_else(|e| panic!("{name} round {round}: {e}"));
            assert_eq!(r.exit_code, 0, "{name}");
            if name != "entropy" {
                let out = first.get_or_insert_with(|| io.stdout.clone());
                assert_eq!(&io.stdout, out, "{name} round {round}: the same answer");
            }
            snap.reset(&mut vm).unwrap();
            assert_pristine(&vm, &image, &format!("{name} round {round}"));
            assert_eq!(
                format!("{:?}", vm.registers().unwrap()),
                saved,
                "{name} round {round}"
            );
        }
    }
}

/// The worst case a reset must undo: after a run, every page of guest
/// memory overwritten with a hostile pattern (the page tables, the
/// runtime's code and data, the rings, the heap, the module's linear
/// memory, the stack), through the host's mapping as a VMM bug or a guest
/// write would. After each reset every page but the fresh clock and seed
/// pages is the snapshot's again and the VM answers as before, over many
/// cycles (pages written in earlier cycles are restored as well as new ones).
#[test]
fn a_vm_whose_every_page_was_overwritten_is_reset_to_the_snapshot() {
    use vm_memory::{Bytes, GuestAddress};
    let dir = snapshot("hello");
    let snap = Snapshot::open(dir.path()).unwrap();
    let image = std::fs::read(dir.path().join("memory.bin")).unwrap();
    let mut vm = snap.restore().unwrap();
    let pages = image.len() / 4096;
    assert_eq!((vm.memory_mib() as usize) << 20, image.len());
    for cycle in 0..6u8 {
        let mut io = BufferIo::default();
        let r = vm
            .invoke_in_place(
                &inv(&["hello.wasm", "world"], &[]),
                &mut io,
                Some(Duration::from_secs(30)),
                None,
            )
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert_eq!((r.exit_code, &io.stdout[..]), (0, &b"hello, world\n"[..]));
        // Every page on even cycles; every third page, shifted, on odd ones
        // (so some pages are written in this cycle only).
        let pattern = [0xa5 ^ cycle; 4096];
        for page in (0..pages).filter(|p| cycle % 2 == 0 || p % 3 == cycle as usize % 3) {
            vm.memory()
                .write_slice(&pattern, GuestAddress(page as u64 * 4096))
                .unwrap();
        }
        let copied = snap.reset(&mut vm).unwrap();
        if cycle % 2 == 0 {
            assert_eq!(
                copied as usize, pages,
                "cycle {cycle}: every page copied back"
            );
        }
        assert_pristine(&vm, &image, &format!("cycle {cycle}"));
    }
}

/// A snapshot knows the module it was made from (length and CRC-64 in its
/// state file): the same bytes match, a changed byte or length does not.
#[test]
fn a_snapshot_tells_whether_it_was_made_from_a_module() {
    let d = snapshot("hello");
    let snap = Snapshot::open(d.path()).unwrap();
    let module = std::fs::read(flint_examples::path("hello")).unwrap();
    assert!(snap.made_from(&module));
    let mut changed = module.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    assert!(!snap.made_from(&changed));
    assert!(!snap.made_from(&module[..last]));
    assert!(!snap.made_from(&std::fs::read(flint_examples::path("echo")).unwrap()));
}

/// A reactor's `_initialize` runs before the snapshot is taken, so what it
/// builds is in the snapshot: bigheap's 32 MiB table (a xorshift sequence,
/// recomputed here) lies in `memory.bin`, and the snapshot holds over
/// 8,192 pages of data where hello's holds a few hundred.
#[test]
fn a_reactors_initialize_runs_before_the_snapshot() {
    let dir = snapshot("bigheap");
    let pages = Snapshot::open(dir.path()).unwrap().info().data_pages;
    assert!(pages > 8192, "{pages} pages of data");
    let hello = snapshot("hello");
    let few = Snapshot::open(hello.path()).unwrap().info().data_pages;
    assert!(few < 2048, "hello: {few} pages of data");
    // The table's first entries, as bigheap's build() makes them.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut head = Vec::new();
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        head.extend_from_slice(&x.to_le_bytes());
    }
    let mem = std::fs::read(dir.path().join("memory.bin")).unwrap();
    assert!(
        mem.windows(head.len()).any(|w| w == head.as_slice()),
        "the table built by _initialize is not in the snapshot"
    );
}
