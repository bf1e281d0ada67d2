//! `rstimer`: POSIX timers through the system calls themselves
//! (`timer_create`, `timer_settime`, `timer_gettime`, `timer_getoverrun`,
//! `timer_delete`), checked by the program: a periodic timer signals the
//! process with `SI_TIMER`, its id and `sigev_value`; a one-shot
//! `SIGEV_THREAD_ID` timer signals the thread it names; `SIGEV_NONE`
//! counts down without a signal; an absolute realtime deadline; bad
//! arguments are EINVAL; a deleted timer is gone. Prints one line per
//! check; exits 0 only if all passed.
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

static TICKS: AtomicU64 = AtomicU64::new(0);
static LAST_VALUE: AtomicU64 = AtomicU64::new(0);
static LAST_CODE: AtomicI32 = AtomicI32::new(0);
static LAST_TID: AtomicI32 = AtomicI32::new(0);
static TARGET_HITS: AtomicU64 = AtomicU64::new(0);

fn check(name: &str, ok: bool) -> bool {
    println!("{name}: {}", if ok { "ok" } else { "FAILED" });
    ok
}

extern "C" fn on_tick(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let info = unsafe { &*info };
    LAST_CODE.store(info.si_code, Ordering::SeqCst);
    // SAFETY: si_value is valid for a timer's signal (the union's _timer
    // member; libc exposes it through si_value()).
    LAST_VALUE.store(
        unsafe { info.si_value().sival_ptr } as u64,
        Ordering::SeqCst,
    );
    TICKS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_target(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: gettid has no preconditions (and is async-signal-safe).
    LAST_TID.store(unsafe { libc::gettid() }, Ordering::SeqCst);
    TARGET_HITS.fetch_add(1, Ordering::SeqCst);
}

fn handle(sig: i32, f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void)) {
    // SAFETY: installs a handler that only touches atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// `struct sigevent` as the kernel reads it.
#[repr(C)]
struct SigEvent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    pad: [i32; 11],
}

fn create(clock: i32, ev: Option<&SigEvent>) -> Result<i32, i64> {
    let mut id = -1i32;
    let evp = ev.map_or(std::ptr::null(), |e| e as *const SigEvent);
    // SAFETY: timer_create reads one sigevent and writes one int.
    let r = unsafe { libc::syscall(libc::SYS_timer_create, clock, evp, &mut id as *mut i32) };
    if r == 0 {
        Ok(id)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    }
}

fn settime(id: i32, flags: i32, interval_ns: u64, value_ns: u64) -> i64 {
    let spec = [
        (interval_ns / 1_000_000_000) as i64,
        (interval_ns % 1_000_000_000) as i64,
        (value_ns / 1_000_000_000) as i64,
        (value_ns % 1_000_000_000) as i64,
    ];
    // SAFETY: timer_settime reads one itimerspec; no old value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            flags,
            spec.as_ptr(),
            std::ptr::null_mut::<i64>(),
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64
    }
}

fn gettime(id: i32) -> Option<[i64; 4]> {
    let mut spec = [0i64; 4];
    // SAFETY: timer_gettime writes one itimerspec.
    let r = unsafe { libc::syscall(libc::SYS_timer_gettime, id, spec.as_mut_ptr()) };
    (r == 0).then_some(spec)
}

fn delete(id: i32) -> i64 {
    // SAFETY: timer_delete takes an id.
    unsafe { libc::syscall(libc::SYS_timer_delete, id) }
}

fn sleep_for(d: Duration) {
    // Sleeps through signals (each one cuts a nanosleep short).
    let end = std::time::Instant::now() + d;
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        std::thread::sleep(left);
    }
}

fn main() {
    let mut all = true;
    let sig = libc::SIGRTMIN() + 2;
    handle(sig, on_tick);

    // A periodic timer every 10 ms, signalling the process.
    let ev = SigEvent {
        value: 0x5eed,
        signo: sig,
        notify: libc::SIGEV_SIGNAL,
        tid: 0,
        pad: [0; 11],
    };
    let id = create(libc::CLOCK_MONOTONIC, Some(&ev)).unwrap_or(-1);
    all &= check("timer_create", id >= 0);
    all &= check("armed", settime(id, 0, 10_000_000, 10_000_000) == 0);
    let spec = gettime(id).unwrap_or([0; 4]);
    all &= check(
        "timer_gettime while armed",
        spec[0] == 0
            && spec[1] == 10_000_000
            && spec[2] == 0
            && (1..=10_000_000).contains(&spec[3]),
    );
    sleep_for(Duration::from_millis(120));
    let ticks = TICKS.load(Ordering::SeqCst);
    all &= check("a periodic timer fires", (3..=14).contains(&ticks));
    all &= check(
        "its signal is SI_TIMER with sigev_value",
        LAST_CODE.load(Ordering::SeqCst) == -2 && LAST_VALUE.load(Ordering::SeqCst) == 0x5eed,
    );
    // SAFETY: timer_getoverrun takes an id.
    let overrun = unsafe { libc::syscall(libc::SYS_timer_getoverrun, id) };
    all &= check("timer_getoverrun", overrun >= 0);
    all &= check("disarmed", settime(id, 0, 0, 0) == 0);
    let after = TICKS.load(Ordering::SeqCst);
    sleep_for(Duration::from_millis(40));
    all &= check(
        "a disarmed timer stays quiet",
        TICKS.load(Ordering::SeqCst) <= after + 1 && gettime(id) == Some([0; 4]),
    );
    all &= check("timer_delete", delete(id) == 0);
    all &= check(
        "a deleted timer is gone",
        delete(id) == -1 && gettime(id).is_none(),
    );

    // A one-shot SIGEV_THREAD_ID timer aimed at another thread.
    let tsig = libc::SIGRTMIN() + 3;
    handle(tsig, on_target);
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tx.send(unsafe { libc::gettid() }).unwrap();
        sleep_for(Duration::from_millis(150));
    });
    let wtid = rx.recv().unwrap();
    let ev = SigEvent {
        value: 0,
        signo: tsig,
        notify: libc::SIGEV_THREAD_ID,
        tid: wtid,
        pad: [0; 11],
    };
    let id = create(libc::CLOCK_MONOTONIC, Some(&ev)).unwrap_or(-1);
    all &= check("one shot", id >= 0 && settime(id, 0, 0, 20_000_000) == 0);
    worker.join().unwrap();
    all &= check(
        "SIGEV_THREAD_ID reaches its thread, once",
        TARGET_HITS.load(Ordering::SeqCst) == 1 && LAST_TID.load(Ordering::SeqCst) == wtid,
    );
    delete(id);

    // SIGEV_NONE counts down with no signal; an absolute realtime deadline.
    let ev = SigEvent {
        value: 0,
        signo: 0,
        notify: libc::SIGEV_NONE,
        tid: 0,
        pad: [0; 11],
    };
    let id = create(libc::CLOCK_REALTIME, Some(&ev)).unwrap_or(-1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let before = TICKS.load(Ordering::SeqCst) + TARGET_HITS.load(Ordering::SeqCst);
    all &= check(
        "an absolute realtime deadline",
        settime(id, libc::TIMER_ABSTIME, 0, now + 5_000_000_000) == 0,
    );
    let spec = gettime(id).unwrap_or([0; 4]);
    all &= check("SIGEV_NONE counts down", (3..=5).contains(&spec[2]));
    all &= check(
        "SIGEV_NONE sends nothing",
        TICKS.load(Ordering::SeqCst) + TARGET_HITS.load(Ordering::SeqCst) == before,
    );
    delete(id);

    // Bad arguments.
    let bad_sig = SigEvent {
        value: 0,
        signo: 99,
        notify: libc::SIGEV_SIGNAL,
        tid: 0,
        pad: [0; 11],
    };
    let bad_tid = SigEvent {
        value: 0,
        signo: sig,
        notify: libc::SIGEV_THREAD_ID,
        tid: 999_999,
        pad: [0; 11],
    };
    all &= check(
        "bad arguments are EINVAL",
        create(12345, None) == Err(libc::EINVAL as i64)
            && create(libc::CLOCK_MONOTONIC, Some(&bad_sig)) == Err(libc::EINVAL as i64)
            && create(libc::CLOCK_MONOTONIC, Some(&bad_tid)) == Err(libc::EINVAL as i64)
            && settime(4321, 0, 0, 1) == libc::EINVAL as i64,
    );
    let id = create(libc::CLOCK_MONOTONIC, None).unwrap_or(-1);
    let spec = [0i64, 0, 0, 1_000_000_000];
    // SAFETY: timer_settime reads one itimerspec; no old value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            spec.as_ptr(),
            std::ptr::null_mut::<i64>(),
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    all &= check(
        "a bad nanosecond count is EINVAL",
        id >= 0 && r == -1 && errno == Some(libc::EINVAL),
    );
    std::process::exit(if all { 0 } else { 1 });
}
