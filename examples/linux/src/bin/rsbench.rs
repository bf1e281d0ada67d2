//! `rsbench N`: per-call cost of system calls, measured by the program
//! itself (a monotonic clock read before and after each loop): `getpid`,
//! `clock_gettime` (the `syscall` instruction, then libc's call, which
//! goes through the vDSO),
//! a 4 KiB `pread` of a file, and a one-byte pipe round trip between two
//! processes. Prints `NAME MICROSECONDS` lines.
use std::time::Instant;

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid has no preconditions.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    println!("getpid {:.2}", t.elapsed().as_secs_f64() * 1e6 / n as f64);

    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let t = Instant::now();
    for _ in 0..n * 100 {
        // SAFETY: clock_gettime writes one timespec into `ts`.
        unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    }
    println!(
        "clock_gettime-syscall {:.3}",
        t.elapsed().as_secs_f64() * 1e6 / (n * 100) as f64
    );
    let t = Instant::now();
    for _ in 0..n * 100 {
        // SAFETY: as above, through libc (the vDSO where there is one).
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    println!(
        "clock_gettime-vdso {:.3}",
        t.elapsed().as_secs_f64() * 1e6 / (n * 100) as f64
    );

    let path = std::env::temp_dir().join("rsbench.dat");
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    for _ in 0..n {
        std::os::unix::fs::FileExt::read_at(&f, &mut buf, 0).unwrap();
    }
    println!("read-4k {:.2}", t.elapsed().as_secs_f64() * 1e6 / n as f64);
    let _ = std::fs::remove_file(&path);

    let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe writes two fds into each array.
    unsafe {
        libc::pipe(a.as_mut_ptr());
        libc::pipe(b.as_mut_ptr());
    }
    // SAFETY: fork in a single-threaded program; the child only echoes.
    let pid = unsafe { libc::fork() };
    let mut c = [0u8; 1];
    if pid == 0 {
        for _ in 0..n {
            // SAFETY: reads and writes one byte on our pipes.
            unsafe {
                libc::read(a[0], c.as_mut_ptr().cast(), 1);
                libc::write(b[1], c.as_ptr().cast(), 1);
            }
        }
        // SAFETY: leaving the child.
        unsafe { libc::_exit(0) };
    }
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: as above.
        unsafe {
            libc::write(a[1], c.as_ptr().cast(), 1);
            libc::read(b[0], c.as_mut_ptr().cast(), 1);
        }
    }
    println!(
        "pipe-round-trip {:.2}",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    // SAFETY: reaps the child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
}
