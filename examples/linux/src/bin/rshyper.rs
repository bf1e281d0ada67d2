//! `rshyper`: an HTTP server on `$PORT` (all addresses) written as Rust
//! Knative services are, on tokio and hyper: HTTP/1.1 and HTTP/2 with prior
//! knowledge (h2c) on the same port. It answers each request with its
//! method, path, protocol version and body, and counts the requests it
//! has served (`X-Served`).
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

async fn answer(
    served: Arc<AtomicU64>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = served.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = format!(
        "{} {} {:?} {}\n",
        parts.method,
        parts.uri.path(),
        parts.version,
        String::from_utf8_lossy(&body)
    );
    Ok(Response::builder()
        .header("x-served", n.to_string())
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response"))
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("::", port))
        .await
        .expect("bind");
    println!("listening on {port}");
    let served = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let served = served.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(served.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
