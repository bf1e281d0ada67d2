//! `flint apply FILE`, `flint delete NAME`, `flint list`: requests to a
//! running gateway's admin API (`flint serve --metrics-listen`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::exit;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The gateway's admin address (its --metrics-listen).
    #[arg(long, default_value = "127.0.0.1:9090", global = true)]
    admin: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A Knative Service manifest.
    file: PathBuf,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The service's name.
    name: String,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    admin: AdminArgs,
}

/// One HTTP/1.1 request; returns (status, body).
fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn call(addr: &str, method: &str, path: &str, body: &[u8]) -> i32 {
    match request(addr, method, path, body) {
        Ok((code, body)) if (200..300).contains(&code) => {
            print!("{body}");
            0
        }
        Ok((code, body)) => {
            eprint!("flint: the gateway answered {code}: {body}");
            if code == 400 || code == 404 {
                exit::USAGE
            } else {
                exit::FLINT_ERROR
            }
        }
        Err(e) => {
            eprintln!("flint: cannot reach the gateway's admin API at {addr}: {e} (is `flint serve` running?)");
            exit::FLINT_ERROR
        }
    }
}

pub fn apply(a: ApplyArgs) -> i32 {
    match std::fs::read(&a.file) {
        Ok(yaml) => call(&a.admin.admin, "POST", "/apis/services", &yaml),
        Err(e) => {
            eprintln!("flint: cannot read {}: {e}", a.file.display());
            exit::FLINT_ERROR
        }
    }
}

pub fn delete(a: DeleteArgs) -> i32 {
    call(
        &a.admin.admin,
        "DELETE",
        &format!("/apis/services/{}/{}", a.namespace, a.name),
        b"",
    )
}

pub fn list(a: ListArgs) -> i32 {
    call(&a.admin.admin, "GET", "/apis/services", b"")
}
