//! Connections out of a VM (`Config::egress`): a program's `connect` to
//! an address off the VM's loopback goes to the VM's dialer, which hands
//! back a host connection; without one such addresses are unreachable.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::*;

/// An HTTP server on the host's loopback answering every request with
/// its path; its address.
fn host_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let mut c = c;
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{path}",
                    path.len()
                );
            });
        }
    });
    addr
}

/// Sends every connection to `to` (a NAT's view), refusing port 81, and
/// records what was asked.
#[derive(Debug)]
struct Redirect {
    to: SocketAddr,
    asked: Mutex<Vec<SocketAddr>>,
}

impl flint_linux::Dialer for Redirect {
    fn dial(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.asked.lock().unwrap().push(addr);
        if addr.port() == 81 {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        }
        TcpStream::connect(self.to)
    }
}

fn with_egress(d: Option<Arc<Redirect>>) -> flint_linux::Config {
    flint_linux::Config {
        egress: d.map(|d| d as Arc<dyn flint_linux::Dialer>),
        ..config()
    }
}

/// Go's net/http client (non-blocking connect, epoll, SO_ERROR) fetches
/// through the dialer as it fetches natively; a refused dial is its
/// "connection refused"; the dialer saw the addresses the program named.
#[test]
fn a_go_client_connects_out_through_the_dialer_as_natively() {
    let server = host_server();
    let prog = go_program("goget");
    let native = native_run(&prog, &[&format!("http://{server}/a")]);
    assert_eq!(native, "200 /a\n");
    let (root, path) = program_root(&prog);
    let d = Arc::new(Redirect {
        to: server,
        asked: Mutex::default(),
    });
    let r = run_with(
        &with_egress(Some(d.clone())),
        root.path(),
        &path,
        &["goget", "http://203.0.113.7/a", "http://203.0.113.7:81/b"],
        &[],
        b"",
        "/",
    );
    assert_eq!(r.code(), 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], native.trim_end());
    assert!(lines[1].contains("connection refused"), "{}", r.stdout);
    let asked = d.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![
            "203.0.113.7:80".parse::<SocketAddr>().unwrap(),
            "203.0.113.7:81".parse().unwrap()
        ]
    );
}

/// busybox wget (a blocking connect) fetches through the dialer too.
#[test]
fn a_blocking_connect_waits_for_the_dialer() {
    let server = host_server();
    let root = busybox_root();
    let d = Arc::new(Redirect {
        to: server,
        asked: Mutex::default(),
    });
    let r = run_with(
        &with_egress(Some(d)),
        root.path(),
        "/bin/busybox",
        &["wget", "-q", "-O", "-", "http://203.0.113.7:8080/c"],
        &[],
        b"",
        "/",
    );
    assert_eq!(r.code(), 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "/c");
}

/// Without a dialer, an address off the VM's loopback is unreachable, as
/// before.
#[test]
fn without_a_dialer_the_world_is_unreachable() {
    let prog = go_program("goget");
    let (root, path) = program_root(&prog);
    let r = run_with(
        &with_egress(None),
        root.path(),
        &path,
        &["goget", "http://203.0.113.7/a"],
        &[],
        b"",
        "/",
    );
    assert_eq!(r.code(), 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("network is unreachable"), "{}", r.stdout);
}
