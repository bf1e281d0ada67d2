//! `flint apply FILE`, `flint delete NAME`, `flint list`, `flint get NAME`: requests to a
//! running gateway's admin API (`flint serve --admin`: a Unix socket, or
//! TCP with a bearer token).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::exit;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The gateway's admin API (its --admin): unix:PATH or tcp:ADDR.
    #[arg(long, default_value = "unix:/var/lib/flint/admin.sock", global = true)]
    admin: String,
    /// A file holding the admin API's bearer token (for tcp:).
    #[arg(long, global = true)]
    admin_token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn token(&self) -> std::io::Result<Option<String>> {
        self.admin_token_file
            .as_ref()
            .map(|f| std::fs::read_to_string(f).map(|t| t.trim().to_string()))
            .transpose()
    }
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

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The service's name.
    name: String,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// `yaml` or `json`: the Service with its status, as Knative's API
    /// returns it; default a one-line summary.
    #[arg(short = 'o', long)]
    output: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// A stream to the admin API.
trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(addr: &str) -> std::io::Result<Box<dyn Stream>> {
    if let Some(path) = addr.strip_prefix("unix:") {
        let s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        return Ok(Box::new(s));
    }
    let s = TcpStream::connect(addr.strip_prefix("tcp:").unwrap_or(addr))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    Ok(Box::new(s))
}

/// One HTTP/1.1 request; returns (status, body).
fn request(a: &AdminArgs, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = connect(&a.admin)?;
    let auth = match a.token()? {
        Some(t) => format!("Authorization: Bearer {t}\r\n"),
        None => String::new(),
    };
    let head = format!("{method} {path} HTTP/1.1\r\nHost: flint\r\n{auth}Connection: close\r\nContent-Length: {}\r\n\r\n", body.len());
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

fn call(a: &AdminArgs, method: &str, path: &str, body: &[u8]) -> i32 {
    let addr = &a.admin;
    match request(a, method, path, body) {
        Ok((code, body)) if (200..300).contains(&code) => {
            print!("{body}");
            0
        }
        Ok((code, body)) => {
            eprint!("flint: the gateway answered {code}: {body}");
            if code == 400 || code == 404 || code == 401 {
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
        Ok(yaml) => call(&a.admin, "POST", "/apis/services", &yaml),
        Err(e) => {
            eprintln!("flint: cannot read {}: {e}", a.file.display());
            exit::FLINT_ERROR
        }
    }
}

pub fn delete(a: DeleteArgs) -> i32 {
    call(
        &a.admin,
        "DELETE",
        &format!("/apis/services/{}/{}", a.namespace, a.name),
        b"",
    )
}

pub fn list(a: ListArgs) -> i32 {
    call(&a.admin, "GET", "/apis/services", b"")
}

pub fn get(a: GetArgs) -> i32 {
    let path = format!("/apis/services/{}/{}", a.namespace, a.name);
    let body = match request(&a.admin, "GET", &path, b"") {
        Ok((200, body)) => body,
        Ok(_) | Err(_) => return call(&a.admin, "GET", &path, b""),
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        eprintln!("flint: the gateway answered something that is not JSON: {body}");
        return exit::FLINT_ERROR;
    };
    match a.output.as_deref() {
        Some("json") => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Some("yaml") => {
            print!("{}", serde_yaml::to_string(&v).unwrap_or_default());
            0
        }
        Some(other) => {
            eprintln!("flint: unknown output format {other:?} (use yaml or json)");
            exit::USAGE
        }
        None => {
            let s = &v["status"];
            let ready = s["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .cloned()
                .unwrap_or_default();
            let field = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
            println!("NAME\tURL\tLATESTCREATED\tLATESTREADY\tREADY\tREASON");
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                a.name,
                field(&s["url"]),
                field(&s["latestCreatedRevisionName"]),
                field(&s["latestReadyRevisionName"]),
                field(&ready["status"]),
                field(&ready["reason"]),
            );
            0
        }
    }
}
