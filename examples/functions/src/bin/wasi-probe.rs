//! `wasi-probe [--invalid] [ARGS...]`: calls WASI preview 1 functions
//! directly, the well-formed way and the wrong ways (bad descriptors; with
//! `--invalid`, also arguments outside their types: pointers outside
//! linear memory, clock ids that do not exist), and
//! prints one line per call: its errno and whatever of its result does not
//! vary from run to run. Then its arguments, its environment, its stdin's
//! length and checksum, a line to stderr, and exits with status 3. The
//! tests run it under Flint and under wasmtime and compare everything it
//! prints (wasmtime traps on those invalid arguments where Flint answers
//! EFAULT or EINVAL, the errnos WASI defines for them, so `--invalid` is
//! checked against those).

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn fd_write(fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> i32;
    fn fd_read(fd: i32, iovs: i32, iovs_len: i32, nread: i32) -> i32;
    fn fd_close(fd: i32) -> i32;
    fn fd_fdstat_get(fd: i32, stat: i32) -> i32;
    fn fd_prestat_get(fd: i32, prestat: i32) -> i32;
    fn fd_seek(fd: i32, offset: i64, whence: i32, newoffset: i32) -> i32;
    fn clock_time_get(id: i32, precision: i64, time: i32) -> i32;
    fn clock_res_get(id: i32, res: i32) -> i32;
    fn random_get(buf: i32, len: i32) -> i32;
    fn sched_yield() -> i32;
    fn args_sizes_get(argc: i32, argv_buf_size: i32) -> i32;
    fn environ_sizes_get(count: i32, buf_size: i32) -> i32;
    fn path_open(
        fd: i32,
        dirflags: i32,
        path: i32,
        path_len: i32,
        oflags: i32,
        rights_base: i64,
        rights_inheriting: i64,
        fdflags: i32,
        opened: i32,
    ) -> i32;
    fn poll_oneoff(subs: i32, events: i32, nsubs: i32, nevents: i32) -> i32;
    fn proc_exit(code: i32) -> !;
}

/// A pointer as the i32 WASI takes.
fn p<T>(x: &T) -> i32 {
    x as *const T as i32
}

fn pm<T>(x: &mut T) -> i32 {
    x as *mut T as i32
}

/// Far past the end of linear memory (which is a few MiB here).
const WILD: i32 = 0x7fff_fff0;

fn main() {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    // SAFETY (all calls below): the pointers are to locals of the sizes
    // WASI's ABI gives, or deliberately wild (the callee must refuse them).
    let invalid = std::env::args().nth(1).as_deref() == Some("--invalid");
    unsafe {
        let msg = b"written\n";
        let iov: [u32; 2] = [msg.as_ptr() as u32, msg.len() as u32];
        let mut n: u32 = 0;
        line(format!(
            "fd_write(bad fd) {}",
            fd_write(99, p(&iov), 1, pm(&mut n))
        ));
        if invalid {
            line(format!(
                "fd_write(wild iovs) {}",
                fd_write(1, WILD, 1, pm(&mut n))
            ));
            let wild_iov: [u32; 2] = [WILD as u32, 64];
            let e = fd_write(1, p(&wild_iov), 1, pm(&mut n));
            line(format!("fd_write(wild buffer) {e}"));
            line(format!(
                "fd_write(wild nwritten) {}",
                fd_write(1, p(&iov), 0, WILD)
            ));
            let mut stat = [0u8; 24];
            line(format!("fd_fdstat_get(wild) {}", fd_fdstat_get(1, WILD)));
            line(format!(
                "clock_time_get(wild) {}",
                clock_time_get(1, 1, WILD)
            ));
            line(format!("random_get(wild) {}", random_get(WILD, 32)));
            let mut t: u64 = 0;
            line(format!(
                "clock_time_get(bad id) {}",
                clock_time_get(99, 1, pm(&mut t))
            ));
            line(format!(
                "clock_res_get(bad id) {}",
                clock_res_get(99, pm(&mut t))
            ));
            let e = fd_read(0, WILD, 1, pm(&mut n));
            line(format!(
                "fd_read(wild iovs) {e} {}",
                fd_fdstat_get(1, pm(&mut stat))
            ));
        }
        line(format!(
            "fd_write(no iovs) {} n={n}",
            fd_write(1, p(&iov), 0, pm(&mut n))
        ));
        line(format!(
            "fd_read(bad fd) {}",
            fd_read(99, p(&iov), 1, pm(&mut n))
        ));
        line(format!("fd_close(bad fd) {}", fd_close(99)));
        let mut stat = [0u8; 24];
        let e = fd_fdstat_get(99, pm(&mut stat));
        line(format!("fd_fdstat_get(bad fd) {e}"));
        let mut prestat = [0u32; 2];
        line(format!(
            "fd_prestat_get(3) {}",
            fd_prestat_get(3, pm(&mut prestat))
        ));
        let mut off: u64 = 0;
        line(format!(
            "fd_seek(bad fd) {}",
            fd_seek(99, 0, 0, pm(&mut off))
        ));
        let mut t: u64 = 0;
        let e = clock_time_get(0, 1, pm(&mut t));
        // 2020-01-01 in nanoseconds.
        line(format!(
            "clock_time_get(realtime) {e} after-2020={}",
            t > 1_577_836_800_000_000_000
        ));
        let mut t1: u64 = 0;
        let mut t2: u64 = 0;
        let e1 = clock_time_get(1, 1, pm(&mut t1));
        let e2 = clock_time_get(1, 1, pm(&mut t2));
        line(format!(
            "clock_time_get(monotonic) {e1} {e2} ordered={}",
            t2 >= t1
        ));
        let mut res: u64 = 0;
        let e = clock_res_get(1, pm(&mut res));
        line(format!("clock_res_get(monotonic) {e} positive={}", res > 0));
        let mut buf = [0u8; 32];
        let e = random_get(pm(&mut buf), 32);
        line(format!(
            "random_get {e} nonzero={}",
            buf.iter().any(|b| *b != 0)
        ));
        line(format!("random_get(empty) {}", random_get(pm(&mut buf), 0)));
        line(format!("sched_yield {}", sched_yield()));
        let (mut argc, mut argsz) = (0u32, 0u32);
        let e = args_sizes_get(pm(&mut argc), pm(&mut argsz));
        line(format!("args_sizes_get {e} {argc} {argsz}"));
        let (mut envc, mut envsz) = (0u32, 0u32);
        let e = environ_sizes_get(pm(&mut envc), pm(&mut envsz));
        line(format!("environ_sizes_get {e} {envc} {envsz}"));
        let path = b"etc/passwd";
        let mut fd: u32 = 0;
        let e = path_open(
            3,
            0,
            path.as_ptr() as i32,
            path.len() as i32,
            0,
            0,
            0,
            0,
            pm(&mut fd),
        );
        line(format!("path_open(no preopen) {e}"));
        let mut nevents: u32 = 0;
        let events = [0u8; 32];
        let e = poll_oneoff(p(&events), p(&events), 0, pm(&mut nevents));
        line(format!("poll_oneoff(none) {e}"));
    }
    // Through std: a sleep (poll_oneoff with a clock subscription), files
    // (no preopened directories), arguments, environment, stdin.
    let t0 = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    line(format!(
        "sleep slept-enough={}",
        t0.elapsed().as_millis() >= 20
    ));
    let opened = std::fs::read("/etc/passwd")
        .map(|_| ())
        .map_err(|e| e.kind());
    line(format!("fs::read {opened:?}"));
    line(format!("args {:?}", std::env::args().collect::<Vec<_>>()));
    let mut env: Vec<_> = std::env::vars().collect();
    env.sort();
    line(format!("env {env:?}"));
    let mut stdin = Vec::new();
    let r = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let sum = stdin
        .iter()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(*b as u32));
    line(format!(
        "stdin {:?} {} {sum}",
        r.map(|_| ()).map_err(|e| e.kind()),
        stdin.len()
    ));
    use std::io::Write;
    std::io::stdout().write_all(out.as_bytes()).expect("stdout");
    std::io::stdout().flush().expect("stdout");
    eprintln!("to stderr");
    // SAFETY: ends the program, as std::process::exit would.
    unsafe { proc_exit(3) }
}
