//! `rssocket`: connected `AF_UNIX` stream pairs (`socketpair`), checked
//! by the program: data both ways, `send`/`recv` with `MSG_PEEK` and
//! `MSG_DONTWAIT`, `sendmsg`/`recvmsg` over several buffers, `shutdown`
//! each way, EPIPE with and without SIGPIPE (`MSG_NOSIGNAL`), poll, the
//! socket options, names and file type a pair has, `FIONREAD`,
//! edge-triggered epoll on a pair, and a pair shared with a forked child. Prints one line per check; exits 0 only if
//! all passed.
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, Ordering};

static SIGPIPES: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigpipe(_: i32) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

fn check(name: &str, ok: bool) -> bool {
    println!("{name}: {}", if ok { "ok" } else { "FAILED" });
    ok
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn poll_events(fd: i32) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 0) };
    p.revents
}

fn int_option(fd: i32, name: i32) -> (i32, u32) {
    let mut v = 0i32;
    let mut len = 4u32;
    // SAFETY: a 4-byte value and its length, both ours.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    };
    (if r == 0 { v } else { -errno() }, len)
}

fn main() {
    // SAFETY: a handler that only counts.
    unsafe { libc::signal(libc::SIGPIPE, on_sigpipe as *const () as usize) };
    let mut all = true;
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());

    a.write_all(b"ping").unwrap();
    let mut buf = [0u8; 16];
    let n = b.read(&mut buf).unwrap();
    all &= check("a to b", &buf[..n] == b"ping");
    b.write_all(b"pong").unwrap();
    let n = a.read(&mut buf).unwrap();
    all &= check("b to a", &buf[..n] == b"pong");

    // MSG_PEEK leaves the bytes; FIONREAD counts them.
    a.write_all(b"peek").unwrap();
    // SAFETY: recv into our buffer.
    let n = unsafe { libc::recv(fb, buf.as_mut_ptr().cast(), 16, libc::MSG_PEEK) };
    let mut avail = 0i32;
    // SAFETY: FIONREAD writes an int we own.
    unsafe { libc::ioctl(fb, libc::FIONREAD, &mut avail) };
    let m = b.read(&mut buf).unwrap();
    all &= check("peek then read", n == 4 && m == 4 && &buf[..4] == b"peek");
    all &= check("fionread", avail == 4);

    // Nothing to read: MSG_DONTWAIT and a non-blocking socket say EAGAIN.
    // SAFETY: recv into our buffer.
    let r = unsafe { libc::recv(fb, buf.as_mut_ptr().cast(), 16, libc::MSG_DONTWAIT) };
    all &= check("dontwait", r == -1 && errno() == libc::EAGAIN);
    b.set_nonblocking(true).unwrap();
    let e = b.read(&mut buf).unwrap_err();
    all &= check("nonblocking", e.kind() == ErrorKind::WouldBlock);
    b.set_nonblocking(false).unwrap();

    // sendmsg over two buffers, recvmsg into two.
    let (x, y) = (b"hello ", b"world");
    let iov = [
        libc::iovec {
            iov_base: x.as_ptr() as *mut _,
            iov_len: x.len(),
        },
        libc::iovec {
            iov_base: y.as_ptr() as *mut _,
            iov_len: y.len(),
        },
    ];
    // SAFETY: a zeroed msghdr is valid; its iovecs point at our buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut _;
    msg.msg_iovlen = 2;
    // SAFETY: sendmsg with a valid msghdr.
    let sent = unsafe { libc::sendmsg(fa, &msg, 0) };
    let (mut p, mut q) = ([0u8; 3], [0u8; 16]);
    let iov = [
        libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: 3,
        },
        libc::iovec {
            iov_base: q.as_mut_ptr().cast(),
            iov_len: 16,
        },
    ];
    msg.msg_iov = iov.as_ptr() as *mut _;
    msg.msg_flags = -1;
    // SAFETY: recvmsg into our buffers.
    let got = unsafe { libc::recvmsg(fb, &mut msg, 0) };
    all &= check(
        "sendmsg recvmsg",
        sent == 11 && got == 11 && &p == b"hel" && &q[..8] == b"lo world" && msg.msg_flags == 0,
    );

    // What a pair is.
    all &= check(
        "so_type",
        int_option(fa, libc::SO_TYPE) == (libc::SOCK_STREAM, 4),
    );
    all &= check(
        "so_domain",
        int_option(fa, libc::SO_DOMAIN).0 == libc::AF_UNIX,
    );
    all &= check("so_error", int_option(fa, libc::SO_ERROR).0 == 0);
    // SAFETY: a zeroed sockaddr_un and its length, both ours.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as u32;
    // SAFETY: getsockname into our sockaddr_un.
    let r = unsafe { libc::getsockname(fa, (&mut sun as *mut libc::sockaddr_un).cast(), &mut len) };
    all &= check(
        "unnamed",
        r == 0 && len == 2 && sun.sun_family == libc::AF_UNIX as u16,
    );
    // SAFETY: a zeroed stat we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into it.
    unsafe { libc::fstat(fa, &mut st) };
    all &= check("fstat", st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
    let link = std::fs::read_link(format!("/proc/self/fd/{fa}")).unwrap();
    all &= check("proc fd", link.to_string_lossy().starts_with("socket:["));
    // SAFETY: listen on a connected socket.
    let r = unsafe { libc::listen(fa, 1) };
    all &= check("listen", r == -1 && errno() == libc::EINVAL);
    let mut sv = [0i32; 2];
    // SAFETY: socketpair into our array (a family without pairs).
    let r = unsafe { libc::socketpair(libc::AF_INET, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
    all &= check("af_inet pair", r == -1 && errno() == libc::EOPNOTSUPP);
    // SAFETY: shutdown on a pipe.
    let r = unsafe { libc::shutdown(0, libc::SHUT_WR) };
    all &= check("not a socket", r == -1 && errno() == libc::ENOTSOCK);

    // Poll: writable when empty; readable with data.
    all &= check("poll empty", poll_events(fb) == libc::POLLOUT);
    a.write_all(b"x").unwrap();
    all &= check("poll data", poll_events(fb) == libc::POLLIN | libc::POLLOUT);
    b.read_exact(&mut buf[..1]).unwrap();

    // Edge-triggered epoll: reported once per change, not while the state
    // stays as it was.
    // SAFETY: an epoll instance we own, watching our socket.
    let ep = unsafe { libc::epoll_create1(0) };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32,
        u64: 7,
    };
    // SAFETY: registers fb with our event.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fb, &mut ev) };
    let wait = || {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: waits into our array, without blocking.
        let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 0) };
        (n, if n > 0 { out[0].events as i32 } else { 0 })
    };
    all &= check("epollet first", wait() == (1, libc::EPOLLOUT));
    all &= check("epollet quiet", wait().0 == 0);
    a.write_all(b"e").unwrap();
    all &= check(
        "epollet data",
        wait() == (1, libc::EPOLLIN | libc::EPOLLOUT),
    );
    all &= check("epollet no new data", wait().0 == 0);
    a.write_all(b"f").unwrap();
    all &= check("epollet more data", wait().0 == 1);
    b.read_exact(&mut buf[..2]).unwrap();
    // SAFETY: closes our epoll instance.
    unsafe { libc::close(ep) };

    // shutdown(SHUT_WR): the peer reads end of file, a write here EPIPE
    // with SIGPIPE; the other way still works.
    a.shutdown(std::net::Shutdown::Write).unwrap();
    all &= check("eof after shutdown", b.read(&mut buf).unwrap() == 0);
    // write(2), not std's write, which sends with MSG_NOSIGNAL.
    // SAFETY: write from our buffer.
    let r = unsafe { libc::write(fa, b"late".as_ptr().cast(), 4) };
    all &= check("epipe after shutdown", r == -1 && errno() == libc::EPIPE);
    all &= check("sigpipe", SIGPIPES.load(Ordering::SeqCst) == 1);
    b.write_all(b"still").unwrap();
    let n = a.read(&mut buf).unwrap();
    all &= check("other way open", &buf[..n] == b"still");

    // The peer closes: end of file and hang-up here; MSG_NOSIGNAL gives
    // EPIPE without the signal.
    drop(a);
    all &= check(
        "hup",
        poll_events(fb) & (libc::POLLIN | libc::POLLHUP) == libc::POLLIN | libc::POLLHUP,
    );
    all &= check("eof after close", b.read(&mut buf).unwrap() == 0);
    // SAFETY: send from our buffer.
    let r = unsafe { libc::send(fb, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    all &= check(
        "nosignal",
        r == -1 && errno() == libc::EPIPE && SIGPIPES.load(Ordering::SeqCst) == 1,
    );
    drop(b);

    // A pair shared with a child: it writes, exits; the parent reads it
    // all, then end of file once the child's end is closed everywhere.
    let (mut parent, child) = UnixStream::pair().unwrap();
    // SAFETY: the child only writes, closes and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(parent);
        let mut child = child;
        let _ = child.write_all(b"from the child");
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    drop(child);
    let mut got = String::new();
    parent.read_to_string(&mut got).unwrap();
    let mut status = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    all &= check("fork", got == "from the child" && status == 0);

    std::process::exit(if all { 0 } else { 1 });
}
