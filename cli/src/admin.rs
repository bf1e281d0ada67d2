//! `flint apply FILE`, `flint delete NAME`, `flint list`, `flint get NAME`: requests to a
//! running gateway's admin API (`flint serve --admin`: a Unix socket, or
//! TCP with a bearer token).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

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

/// How long an admin request may take (an apply restores its VMs first).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request over `io` with hyper's HTTP/1 client; returns (status, body).
async fn send<S>(io: S, req: hyper::Request<Full<Bytes>>) -> Result<(u16, String), BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let resp = tx.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    drop(tx);
    let _ = conn.await;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request to the admin API at `a.admin` (`unix:PATH` or
/// `[tcp:]ADDR`); returns (status, body).
fn request(
    a: &AdminArgs,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String), BoxError> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "flint");
    if let Some(t) = a.token()? {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body)))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let exchange = async {
            match a.admin.strip_prefix("unix:") {
                Some(p) => send(tokio::net::UnixStream::connect(p).await?, req).await,
                None => {
                    let addr = a.admin.strip_prefix("tcp:").unwrap_or(&a.admin);
                    send(tokio::net::TcpStream::connect(addr).await?, req).await
                }
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
    })
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
