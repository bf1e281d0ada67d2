//! `rsfault MODE`: misbehaves on purpose. `segv` stores through a null
//! pointer; `jump` jumps to an unmapped address; `priv` executes a
//! privileged instruction; `wild` passes wild pointers and lengths to
//! every system call number and survives (prints how many returned
//! EFAULT); `forks` forks until it is refused and prints how many it got;
//! `oom` allocates and touches memory until it is killed; `spin` loops;
//! `reserve` maps 32 TiB of PROT_NONE (as Go and JVMs reserve their
//! heaps), opens 1 GiB of it, touches it and unmaps it, 20 times;
//! `orphans` has 30 children each fill 8 MiB, vfork a grandchild that
//! exits, and exit without reaping it (their memory must come back);
//! `pipes` has 4 children each fill pipes until no write fits (its
//! descriptors run out, or a fresh pipe takes nothing) and prints the
//! bytes they hold together; `epolls` puts epoll sets in each other, in
//! a loop and in chains built top down and bottom up, and prints which
//! additions were refused (ELOOP) before waiting on them.
fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "segv" => {
            let p = std::hint::black_box(std::ptr::null_mut::<u64>());
            // SAFETY: not sound on purpose: the store faults.
            unsafe { p.write_volatile(1) };
        }
        "jump" => {
            let f: extern "C" fn() =
                unsafe { std::mem::transmute(std::hint::black_box(0xdead_0000usize)) };
            f();
        }
        "priv" => {
            // SAFETY: not sound on purpose: hlt at CPL 3 is a #GP.
            unsafe { std::arch::asm!("hlt") };
        }
        "wild" => {
            let skip = [
                libc::SYS_exit,
                libc::SYS_exit_group,
                libc::SYS_fork,
                libc::SYS_vfork,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_kill,
                libc::SYS_tkill,
                libc::SYS_tgkill,
                libc::SYS_rt_sigreturn,
                libc::SYS_pause,
                libc::SYS_rt_sigsuspend,
                libc::SYS_munmap,
                libc::SYS_mremap,
                libc::SYS_mprotect,
                libc::SYS_brk,
                libc::SYS_mmap,
                libc::SYS_madvise,
                libc::SYS_rt_sigaction,
                libc::SYS_rt_sigprocmask,
                libc::SYS_sigaltstack,
                libc::SYS_arch_prctl,
                libc::SYS_set_tid_address,
                libc::SYS_futex,
                libc::SYS_close,
                libc::SYS_dup2,
                libc::SYS_dup3,
                libc::SYS_wait4,
                libc::SYS_waitid,
                libc::SYS_nanosleep,
                libc::SYS_clock_nanosleep,
                libc::SYS_select,
                libc::SYS_pselect6,
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_read,
                libc::SYS_readv,
                libc::SYS_pread64,
                libc::SYS_setitimer,
                libc::SYS_alarm,
                libc::SYS_prctl,
                libc::SYS_seccomp,
                libc::SYS_chdir,
                libc::SYS_fchdir,
                libc::SYS_umask,
            ];
            let wild: [u64; 6] = [
                0xffff_8000_0000_0000,
                0xdead_beef_0000,
                1,
                0x7fff_ffff_ffff,
                u64::MAX,
                0x1000,
            ];
            let mut faults = 0;
            for nr in 0..450i64 {
                if skip.contains(&nr) {
                    continue;
                }
                for (i, &w) in wild.iter().enumerate() {
                    let a = [w, wild[(i + 1) % 6], 0x7fff_0000_0000 + i as u64, w, w, w];
                    // SAFETY: system calls with wild arguments: the kernel
                    // must refuse them; nothing here dereferences them.
                    let r = unsafe { libc::syscall(nr, 3i64, a[0], a[1], a[2], a[3], a[4]) };
                    let r2 = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
                    if r == -1 || r2 == -1 {
                        faults += (std::io::Error::last_os_error().raw_os_error()
                            == Some(libc::EFAULT)) as u32;
                    }
                }
            }
            println!("survived, {faults} EFAULT");
        }
        "reserve" => {
            const LEN: usize = 1 << 45;
            for _ in 0..20 {
                // SAFETY: a fresh anonymous mapping nothing else uses; it
                // is touched only in the part made writable.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        LEN,
                        libc::PROT_NONE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                        -1,
                        0,
                    );
                    assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
                    let rw = libc::PROT_READ | libc::PROT_WRITE;
                    assert_eq!(libc::mprotect(p, 1 << 30, rw), 0);
                    for i in (0..1usize << 30).step_by(1 << 24) {
                        *(p as *mut u8).add(i) = 1;
                    }
                    assert_eq!(libc::munmap(p, LEN), 0);
                }
            }
            println!("reserved 20 times");
        }
        "orphans" => {
            for _ in 0..30 {
                // SAFETY: fork in a single-threaded program; the child
                // touches its own memory, vforks a grandchild that only
                // calls _exit, and exits without waiting for it.
                unsafe {
                    let pid = libc::fork();
                    assert!(pid >= 0, "{}", std::io::Error::last_os_error());
                    if pid == 0 {
                        let mut v = vec![0u8; 8 << 20];
                        for i in (0..v.len()).step_by(4096) {
                            v[i] = 1;
                        }
                        std::hint::black_box(&v);
                        // vfork and, in the child, exit, in one asm block:
                        // the child never touches the stack it shares.
                        std::arch::asm!(
                            "syscall",
                            "test rax, rax",
                            "jnz 2f",
                            "mov eax, 60",
                            "xor edi, edi",
                            "syscall",
                            "2:",
                            inout("rax") libc::SYS_vfork => _,
                            out("rdi") _,
                            out("rcx") _,
                            out("r11") _,
                        );
                        libc::_exit(0);
                    }
                    let mut st = 0;
                    libc::waitpid(pid, &mut st, 0);
                    assert_eq!(st, 0);
                }
            }
            // The grandchildren were orphans: process 1 may reap them.
            // SAFETY: plain libc calls.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
            println!("30 children came and went");
        }
        "forks" => {
            let mut n = 0;
            loop {
                // SAFETY: fork in a single-threaded program; the child
                // only sleeps and exits.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    let e = std::io::Error::last_os_error();
                    println!(
                        "forked {n}, then {}",
                        if e.raw_os_error() == Some(libc::EAGAIN) {
                            "EAGAIN"
                        } else {
                            "other"
                        }
                    );
                    break;
                }
                if pid == 0 {
                    // SAFETY: plain libc calls in the child.
                    unsafe {
                        libc::sleep(1000);
                        libc::_exit(0);
                    }
                }
                n += 1;
                if n > 100_000 {
                    println!("never refused");
                    break;
                }
            }
        }
        "pipes" => {
            // SAFETY: an eventfd the children add their counts to.
            let counts = unsafe { libc::eventfd(0, 0) };
            let mut total = 0u64;
            let mut children = Vec::new();
            for _ in 0..4 {
                // SAFETY: fork in a single-threaded program; the child
                // makes pipes, writes, adds to the eventfd and pauses.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // One more than held: adding 0 to an eventfd would
                    // not wake the parent.
                    let held = fill_pipes() + 1;
                    // SAFETY: writes 8 bytes we own, then waits to be killed.
                    unsafe {
                        libc::write(counts, (&held as *const u64).cast(), 8);
                        libc::pause();
                        libc::_exit(0);
                    }
                }
                children.push(pid);
                let mut n = 0u64;
                // SAFETY: reads the child's count into our u64.
                unsafe { libc::read(counts, (&mut n as *mut u64).cast(), 8) };
                total += n - 1;
            }
            for pid in children {
                // SAFETY: kill and reap our own children.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
            println!("pipes hold {total} bytes");
        }
        "oom" => {
            let mut keep = Vec::new();
            loop {
                let mut v = vec![0u8; 1 << 20];
                for i in (0..v.len()).step_by(4096) {
                    v[i] = 1;
                }
                keep.push(v);
            }
        }
        "epolls" => epolls(),
        "spin" => loop {
            std::hint::spin_loop();
        },
        _ => {
            eprintln!("usage: rsfault segv|jump|priv|wild|forks|oom|spin");
            std::process::exit(2);
        }
    }
}

/// Makes non-blocking pipes and fills each until a write finds no room;
/// stops when a fresh pipe takes nothing or no descriptor is left. The
/// bytes written, all still held.
fn fill_pipes() -> u64 {
    let chunk = vec![1u8; 65536];
    let mut held = 0u64;
    loop {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 writes two descriptors into our array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) } != 0 {
            return held;
        }
        let mut this = 0;
        loop {
            // SAFETY: writes from our buffer.
            let n = unsafe { libc::write(fds[1], chunk.as_ptr().cast(), chunk.len()) };
            if n <= 0 {
                break;
            }
            this += n as u64;
        }
        if this == 0 {
            return held;
        }
        held += this;
    }
}

/// `epoll_ctl(ep, EPOLL_CTL_ADD, fd)` for input: 0 or the errno.
fn epoll_add(ep: i32, fd: i32) -> i32 {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: `ev` is a valid event for the call to read.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn epolls() {
    // SAFETY: epoll_create1 has no memory preconditions.
    let new = || unsafe { libc::epoll_create1(0) };
    let (a, b) = (new(), new());
    println!("a in b: {}", epoll_add(b, a));
    println!("b in a: {}", epoll_add(a, b));
    let down: Vec<i32> = (0..8).map(|_| new()).collect();
    for i in 0..7 {
        println!("top down {i}: {}", epoll_add(down[i], down[i + 1]));
    }
    let up: Vec<i32> = (0..8).map(|_| new()).collect();
    for i in (0..7).rev() {
        println!("bottom up {i}: {}", epoll_add(up[i], up[i + 1]));
    }
    // SAFETY: an eventfd made ready, at the bottom of both chains.
    let efd = unsafe { libc::eventfd(1, 0) };
    println!("event in down[7]: {}", epoll_add(down[7], efd));
    println!("event in up[7]: {}", epoll_add(up[7], efd));
    for (name, ep) in [
        ("a", a),
        ("down[0]", down[0]),
        ("down[5]", down[5]),
        ("up[0]", up[0]),
        ("up[3]", up[3]),
    ] {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: room for 4 events.
        let n = unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 4, 0) };
        println!("{name} ready: {n}");
    }
}
