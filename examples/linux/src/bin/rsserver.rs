//! `rsserver`: a server and its clients in one program, over the
//! loopback (`127.0.0.1`, and `::1` with the argument `v6`) and over
//! `AF_UNIX` path and abstract names: bind to port 0 and read the port
//! back, accept a client's connection and answer it, peers' names, a
//! second bind of a name in use, a refused connection, a non-blocking
//! accept, end of file when the server hangs up. Prints one line per
//! check (no port numbers, which differ from run to run); exits 0 only if
//! all passed.
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};

fn check(name: &str, ok: bool) -> bool {
    println!("{name}: {}", if ok { "ok" } else { "FAILED" });
    ok
}

/// A listener on `ip` port 0 that answers one client in upper case.
fn tcp(label: &str, ip: &str) -> bool {
    let mut all = true;
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let addr = listener.local_addr().unwrap();
    all &= check(&format!("{label} port chosen"), addr.port() != 0);
    let again = TcpListener::bind(addr);
    all &= check(
        &format!("{label} in use"),
        again.is_err_and(|e| e.kind() == ErrorKind::AddrInUse),
    );
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        let names = (c.local_addr().unwrap(), c.peer_addr().unwrap());
        c.set_nodelay(true).unwrap();
        c.write_all(b"hello").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        (answer, names.0, names.1)
    });
    let (mut conn, peer) = listener.accept().expect("accept");
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    conn.write_all(&got.to_ascii_uppercase()).unwrap();
    drop(conn);
    let (answer, client_local, client_peer) = client.join().unwrap();
    all &= check(&format!("{label} answered"), answer == "HELLO");
    all &= check(&format!("{label} peer"), peer == client_local);
    all &= check(&format!("{label} client's peer"), client_peer == addr);
    all &= check(
        &format!("{label} loopback"),
        peer.ip().is_loopback() && matches!(peer.ip(), IpAddr::V6(_)) == ip.contains(':'),
    );
    listener.set_nonblocking(true).unwrap();
    all &= check(
        &format!("{label} nonblocking accept"),
        listener
            .accept()
            .is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
    );
    drop(listener);
    all &= check(
        &format!("{label} refused"),
        TcpStream::connect(addr).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
    );
    all
}

/// A server on the any address, reached through the loopback.
fn any_address() -> bool {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let c = TcpStream::connect(to);
    let accepted = listener.accept();
    check("any address", c.is_ok() && accepted.is_ok())
}

fn unix() -> bool {
    let mut all = true;
    let path = std::env::temp_dir().join("rsserver.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let client = std::thread::spawn({
        let path = path.clone();
        move || {
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(b"over a path").unwrap();
            let mut b = [0u8; 2];
            c.read_exact(&mut b).unwrap();
            b
        }
    });
    let (mut conn, peer) = listener.accept().unwrap();
    let mut buf = [0u8; 11];
    conn.read_exact(&mut buf).unwrap();
    conn.write_all(b"ok").unwrap();
    all &= check(
        "unix path",
        &buf == b"over a path" && &client.join().unwrap() == b"ok",
    );
    all &= check("unix peer unnamed", peer.is_unnamed());
    all &= check(
        "unix name",
        listener.local_addr().unwrap().as_pathname() == Some(path.as_path()),
    );
    let _ = std::fs::remove_file(&path);
    all &= check(
        "unix missing path",
        UnixStream::connect("/nonexistent/rsserver.sock")
            .is_err_and(|e| e.kind() == ErrorKind::NotFound),
    );

    let name = std::os::unix::net::SocketAddr::from_abstract_name(b"rsserver-abstract").unwrap();
    let abs = UnixListener::bind_addr(&name).unwrap();
    let mut c = UnixStream::connect_addr(&name).unwrap();
    let (mut s, _) = abs.accept().unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    all &= check("unix abstract", &b == b"x");
    all &= check(
        "unix abstract in use",
        UnixListener::bind_addr(&name).is_err_and(|e| e.kind() == ErrorKind::AddrInUse),
    );
    all &= check(
        "unix abstract name",
        c.peer_addr().unwrap().as_abstract_name() == Some(&b"rsserver-abstract"[..]),
    );
    drop((abs, s));
    let mut end = Vec::new();
    all &= check(
        "unix server gone",
        c.read_to_end(&mut end).is_ok() && end.is_empty(),
    );
    all
}

fn main() {
    let mut all = tcp("v4", "127.0.0.1");
    if std::env::args().any(|a| a == "v6") {
        all &= tcp("v6", "::1");
    }
    all &= any_address();
    all &= unix();
    std::process::exit(if all { 0 } else { 1 });
}
