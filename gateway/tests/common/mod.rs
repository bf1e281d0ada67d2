//! The gateway's test harness: a gateway on loopback with services from
//! manifests, and a raw HTTP/1.1 client.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use flint_gateway::{manifest, serve, Gateway, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub struct Running {
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<()>,
    pub gw: Arc<Gateway>,
    /// The gateway's state directory, removed with it.
    pub _state: tempfile::TempDir,
}

pub fn manifest(name: &str, example: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n{spec_extra}      containers:\n        - image: {}\n          env:\n            - name: FROM_MANIFEST\n              value: yes\n",
        flint_examples::path(example).display()
    )
}

pub async fn start(services: &[String], max_body: usize) -> Running {
    start_with_policy(services, max_body, Default::default()).await
}

/// [`start`] with what applies and requests may use of the host.
pub async fn start_with_policy(
    services: &[String],
    max_body: usize,
    policy: flint_gateway::Policy,
) -> Running {
    let state_dir = tempfile::Builder::new()
        .prefix("flint-gw-")
        .tempdir()
        .unwrap();
    let state = state_dir.path().to_path_buf();
    let gw = Gateway::new(Settings {
        domain: "example.com".into(),
        max_body_bytes: max_body,
        state_dir: state.clone(),
        policy,
    });
    for yaml in services {
        let s = manifest::parse(yaml).unwrap();
        let gw2 = gw.clone();
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            gw2.registry.apply(s, &PathBuf::from("."), &st).unwrap()
        })
        .await
        .unwrap();
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin) = (l.local_addr().unwrap(), a.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(gw.clone(), l, Some(a), async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        admin,
        stop: Some(tx),
        done,
        gw,
        _state: state_dir,
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, head, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    send(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n"),
        body,
    )
    .await
}

/// Sends `head` (request line and headers, without the final blank line)
/// plus `Connection: close`, `Content-Length` and `body`; reads the response.
pub async fn send(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{head}Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = &out[split + 4..];
    let body = if head.to_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (status, head, body)
}

/// The data of a chunked body (as far as it goes, if it was cut short).
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        if size == 0 {
            break;
        }
        let data = &b[eol + 2..];
        out.extend_from_slice(&data[..size.min(data.len())]);
        if data.len() < size + 2 {
            break;
        }
        b = &data[size + 2..];
    }
    out
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap();
    }
}

/// A POST with extra headers.
pub async fn http_with(
    addr: std::net::SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut head = format!("POST / HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    send(addr, &head, body).await
}

/// The value of the series `name` whose labels are exactly `labels` (in
/// any order) in a Prometheus text exposition, if it is there.
#[allow(dead_code)]
pub fn series(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (mut got, value) = if let Some(inner) = rest.strip_prefix('{') {
            let (pairs, value) = inner.split_once("} ")?;
            (parse_labels(pairs)?, value)
        } else {
            (Vec::new(), rest.strip_prefix(' ')?)
        };
        got.sort();
        (got == want).then(|| value.trim().parse().ok()).flatten()
    })
}

/// `k="v",...` with the exposition format's escapes in the values.
fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            return Some(out);
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        out.push((key, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// Builds the Go program `tests/go/PACKAGE` (static, `CGO_ENABLED=0`,
/// with Debian's golang-go) into the test target directory; its path.
pub fn go_build(package: &str) -> PathBuf {
    use std::path::Path;
    let go = ["/usr/lib/go-1.19/bin/go", "/usr/bin/go"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("go is missing: install Debian's golang-go (scripts/deps does)");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bin = target.join(format!("go-{package}"));
    let st = std::process::Command::new(go)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go"))
        .args(["build", "-o"])
        .arg(&bin)
        .arg(format!("./{package}"))
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", target.join("gocache"))
        .env("GOPATH", target.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .status()
        .unwrap();
    assert!(st.success(), "go build {package} failed");
    bin
}
