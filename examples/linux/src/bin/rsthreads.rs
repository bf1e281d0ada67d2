//! `rsthreads`: threads, channels, a mutex, files, time, randomness and a
//! child process, each checked by the program itself; prints one line per
//! check and exits 0 only if all passed. `rsthreads parallel`: which CPUs
//! two threads run on at the same moment.
use std::io::Read;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

fn check(name: &str, ok: bool) -> bool {
    println!("{name}: {}", if ok { "ok" } else { "FAILED" });
    ok
}

/// Two threads meet (each spins until the other has arrived, with no
/// system call), then each asks which CPU it is on while the other is
/// still spinning: on two vCPUs they must be on different ones. Prints
/// `cpus N: A B` (N from sched_getaffinity).
fn parallel() {
    use std::sync::atomic::{AtomicU32, Ordering};
    static ARRIVED: AtomicU32 = AtomicU32::new(0);
    static DONE: AtomicU32 = AtomicU32::new(0);
    fn meet() -> u32 {
        ARRIVED.fetch_add(1, Ordering::SeqCst);
        while ARRIVED.load(Ordering::SeqCst) < 2 {
            std::hint::spin_loop();
        }
        let mut cpu = u32::MAX;
        // SAFETY: getcpu writes one u32 into `cpu`; the others are null.
        unsafe {
            libc::syscall(
                libc::SYS_getcpu,
                &mut cpu as *mut u32,
                std::ptr::null_mut::<u32>(),
                std::ptr::null_mut::<u8>(),
            )
        };
        DONE.fetch_add(1, Ordering::SeqCst);
        while DONE.load(Ordering::SeqCst) < 2 {
            std::hint::spin_loop();
        }
        cpu
    }
    let other = std::thread::spawn(meet);
    let a = meet();
    let b = other.join().unwrap();
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("cpus {n}: {a} {b}");
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("parallel") {
        parallel();
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("child") {
        println!("child pid {}", std::process::id());
        std::process::exit(3);
    }
    let mut all = true;
    let (tx, rx) = mpsc::channel();
    let counter = Arc::new(Mutex::new(0u64));
    let handles: Vec<_> = (0..6u64)
        .map(|i| {
            let tx = tx.clone();
            let counter = counter.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    *counter.lock().unwrap() += 1;
                }
                let s: u64 = (0..200_000u64).map(|x| x % (i + 2)).sum();
                tx.send((i, s)).unwrap();
            })
        })
        .collect();
    drop(tx);
    let mut got: Vec<(u64, u64)> = rx.iter().collect();
    for h in handles {
        h.join().unwrap();
    }
    got.sort();
    let want: Vec<(u64, u64)> = (0..6u64)
        .map(|i| (i, (0..200_000u64).map(|x| x % (i + 2)).sum()))
        .collect();
    all &= check("threads and channels", got == want);
    all &= check("mutex", *counter.lock().unwrap() == 6000);
    let dir = std::env::temp_dir().join("rsthreads");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/f"), b"contents").unwrap();
    std::fs::rename(dir.join("sub/f"), dir.join("g")).unwrap();
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    all &= check(
        "files",
        std::fs::read(dir.join("g")).unwrap() == b"contents" && names.len() == 2,
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(30));
    all &= check("sleep", t0.elapsed() >= Duration::from_millis(30));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    all &= check("wall clock", now > 1_700_000_000);
    let mut a = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut a)
        .unwrap();
    let mut b = [0u8; 32];
    // SAFETY: getrandom writes at most 32 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 32, 0) };
    all &= check("randomness", n == 32 && a != b && a != [0; 32]);
    let out = std::process::Command::new("/proc/self/exe")
        .arg("child")
        .output()
        .unwrap();
    all &= check(
        "child process",
        out.status.code() == Some(3)
            && String::from_utf8_lossy(&out.stdout).starts_with("child pid "),
    );
    std::process::exit(if all { 0 } else { 1 });
}
