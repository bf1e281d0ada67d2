//! `rsclock NOW`: the time system calls, made with the `syscall`
//! instruction itself, checked by the program: every clock the
//! vDSO serves, the CPU-time clocks, `gettimeofday` and `time` agree with
//! each other and with `NOW` (the caller's wall-clock seconds), move
//! forward across a sleep, fail with `EFAULT` on bad pointers and `EINVAL`
//! on a bad clock, and leave every register but RAX, RCX and R11 as they
//! were; and the vDSO (`AT_SYSINFO_EHDR`) is there and agrees with them.
//! Prints one line per check; exits 0 only if all passed.
//!
//! `rsclock loop N`: N clock reads through libc (the vDSO), then exits.
use std::arch::asm;

fn check(name: &str, ok: bool) -> bool {
    println!("{name}: {}", if ok { "ok" } else { "FAILED" });
    ok
}

/// `syscall(nr, a, b)`, returning RAX.
fn sys2(nr: i64, a: u64, b: u64) -> i64 {
    let ret: i64;
    // SAFETY: the time calls write at most 16 bytes through `a` or `b`,
    // which the callers pass valid or deliberately invalid (the kernel
    // checks them).
    unsafe {
        asm!("syscall", inlateout("rax") nr => ret, in("rdi") a, in("rsi") b,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

fn gettime(clock: u64) -> Option<u128> {
    let mut ts = [0i64; 2];
    let r = sys2(libc::SYS_clock_gettime, clock, ts.as_mut_ptr() as u64);
    (r == 0 && ts[0] >= 0 && (0..1_000_000_000).contains(&ts[1]))
        .then(|| ts[0] as u128 * 1_000_000_000 + ts[1] as u128)
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("loop") {
        let n: u32 = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut sum = 0i64;
        for _ in 0..n {
            // SAFETY: writes one timespec into `ts`.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            sum = sum.wrapping_add(ts.tv_nsec);
        }
        println!("{n} reads ({})", sum & 1);
        return;
    }
    let now: u128 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("usage: rsclock NOW");
    let mut all = true;
    let clocks = [
        libc::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC,
        libc::CLOCK_PROCESS_CPUTIME_ID,
        libc::CLOCK_THREAD_CPUTIME_ID,
        libc::CLOCK_MONOTONIC_RAW,
        libc::CLOCK_REALTIME_COARSE,
        libc::CLOCK_MONOTONIC_COARSE,
        libc::CLOCK_BOOTTIME,
    ];
    all &= check(
        "every clock reads",
        clocks.iter().all(|&c| gettime(c as u64).is_some()),
    );
    let real = gettime(libc::CLOCK_REALTIME as u64).unwrap_or(0) / 1_000_000_000;
    all &= check("realtime is now", real.abs_diff(now) < 60);

    let mono: Vec<u128> = (0..2000)
        .map(|_| gettime(libc::CLOCK_MONOTONIC as u64).unwrap_or(0))
        .collect();
    all &= check(
        "monotonic never goes back",
        mono.windows(2).all(|w| w[0] <= w[1]),
    );
    let t0 = gettime(libc::CLOCK_MONOTONIC as u64).unwrap_or(0);
    let b0 = gettime(libc::CLOCK_BOOTTIME as u64).unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let t1 = gettime(libc::CLOCK_MONOTONIC as u64).unwrap_or(0);
    let b1 = gettime(libc::CLOCK_BOOTTIME as u64).unwrap_or(0);
    let slept = t1.saturating_sub(t0);
    all &= check(
        "a 30 ms sleep takes 30 ms",
        (30_000_000..2_000_000_000).contains(&slept) && b1 - b0 >= 30_000_000,
    );

    let mut tv = [0i64; 2];
    let r = sys2(libc::SYS_gettimeofday, tv.as_mut_ptr() as u64, 0);
    let real = gettime(libc::CLOCK_REALTIME as u64).unwrap_or(0);
    let tv_ns = tv[0] as u128 * 1_000_000_000 + tv[1] as u128 * 1000;
    all &= check(
        "gettimeofday agrees with realtime",
        r == 0 && (0..1_000_000).contains(&tv[1]) && real >= tv_ns && real - tv_ns < 1_000_000_000,
    );
    let mut tz = [-1i32; 2];
    let r = sys2(
        libc::SYS_gettimeofday,
        tv.as_mut_ptr() as u64,
        tz.as_mut_ptr() as u64,
    );
    all &= check("gettimeofday with a time zone", r == 0 && tz == [0, 0]);
    all &= check(
        "gettimeofday with no buffer",
        sys2(libc::SYS_gettimeofday, 0, 0) == 0,
    );
    let mut t = 0i64;
    let r = sys2(libc::SYS_time, &mut t as *mut i64 as u64, 0);
    all &= check(
        "time agrees with gettimeofday",
        r == t && (r as u128).abs_diff(tv[0] as u128) <= 1,
    );
    all &= check("time with no buffer", sys2(libc::SYS_time, 0, 0) >= r);

    let efault = -(libc::EFAULT as i64);
    let read_only = "read-only".as_ptr() as u64;
    all &= check(
        "bad pointers are EFAULT",
        sys2(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC as u64, 8) == efault
            && sys2(
                libc::SYS_clock_gettime,
                libc::CLOCK_REALTIME as u64,
                read_only,
            ) == efault
            && sys2(
                libc::SYS_clock_gettime,
                libc::CLOCK_MONOTONIC as u64,
                1 << 63,
            ) == efault
            && sys2(libc::SYS_gettimeofday, 16, 0) == efault
            && sys2(libc::SYS_time, read_only, 0) == efault,
    );
    let mut ts = [0i64; 2];
    all &= check(
        "a bad clock is EINVAL",
        sys2(libc::SYS_clock_gettime, 100, ts.as_mut_ptr() as u64) == -(libc::EINVAL as i64),
    );

    // Every register but RAX, RCX and R11 survives the call.
    let mut ts = [0i64; 2];
    let (mut rdx, mut r8, mut r9, mut r10) = (0x1111u64, 0x2222u64, 0x3333u64, 0x4444u64);
    let (mut r12, mut r13, mut r14, mut r15) = (0x5555u64, 0x6666u64, 0x7777u64, 0x8888u64);
    let (mut rdi, mut rsi) = (libc::CLOCK_MONOTONIC as u64, ts.as_mut_ptr() as u64);
    let ret: i64;
    // SAFETY: clock_gettime writes 16 bytes into `ts`.
    unsafe {
        asm!("syscall", inlateout("rax") libc::SYS_clock_gettime => ret,
             inout("rdi") rdi, inout("rsi") rsi, inout("rdx") rdx,
             inout("r8") r8, inout("r9") r9, inout("r10") r10,
             inout("r12") r12, inout("r13") r13, inout("r14") r14, inout("r15") r15,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    all &= check(
        "registers survive",
        ret == 0
            && ts != [0, 0]
            && (rdi, rsi) == (libc::CLOCK_MONOTONIC as u64, ts.as_ptr() as u64)
            && (rdx, r8, r9, r10) == (0x1111, 0x2222, 0x3333, 0x4444)
            && (r12, r13, r14, r15) == (0x5555, 0x6666, 0x7777, 0x8888),
    );

    // SAFETY: getauxval has no preconditions.
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    // SAFETY: a non-zero AT_SYSINFO_EHDR points at the mapped vDSO image,
    // whose ELF header is at least 4 bytes.
    let magic =
        vdso != 0 && unsafe { std::slice::from_raw_parts(vdso as *const u8, 4) } == b"\x7fELF";
    all &= check("a vDSO is mapped", magic);
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let before = gettime(libc::CLOCK_REALTIME as u64).unwrap_or(0);
    // SAFETY: writes one timespec into `ts`.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let after = gettime(libc::CLOCK_REALTIME as u64).unwrap_or(0);
    let libc_ns = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
    all &= check(
        "libc's clock agrees with the system call",
        r == 0 && before <= libc_ns + 1_000_000 && libc_ns <= after + 1_000_000,
    );
    std::process::exit(if all { 0 } else { 1 });
}
