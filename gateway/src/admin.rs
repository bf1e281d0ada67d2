//! The admin and metrics ports: `/healthz`, `/readyz` (503 while
//! draining), `/metrics` (Prometheus text), and on the admin port the API
//! `flint apply`, `get`, `list` and `delete` use.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::registry::error_chain;
use crate::server::{accept, http1, Gateway};
use crate::stack::{full, text, Body};

/// The admin port: `/healthz`, `/readyz`, `/metrics`, and the admin API
/// that `flint apply`, `flint delete` and `flint list` use:
/// `POST /apis/services` (a manifest), `GET /apis/services`,
/// `GET /apis/services/NAMESPACE/NAME` (the Service with its Knative
/// status), `DELETE /apis/services/NAMESPACE/NAME`.
/// Which port a request came in on, and so what it may do.
#[derive(Debug, Clone)]
pub(crate) enum Port {
    /// Health and metrics only (open to anyone who can reach it).
    Metrics,
    /// The admin API too: a Unix socket (its mode guards it), or TCP with
    /// this bearer token.
    Admin(Option<Arc<String>>),
}

/// True when the request carries `Authorization: Bearer TOKEN` (compared
/// in constant time).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(v) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = v.strip_prefix("Bearer ") else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn admin(gw: Arc<Gateway>, req: Request<Incoming>, port: Port) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let api = path.starts_with("/apis/");
    match (&port, api) {
        (Port::Metrics, true) => {
            return text(
                StatusCode::NOT_FOUND,
                "the admin API is served on the admin socket (--admin), not the metrics port",
            )
        }
        (Port::Admin(Some(token)), true) if !authorized(&req, token) => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "the admin API needs its bearer token",
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        _ => {}
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => text(StatusCode::OK, "ok"),
        ("GET", "/readyz") if gw.draining.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        }
        ("GET", "/readyz") => text(StatusCode::OK, "ready"),
        ("GET", "/metrics") => {
            let mut r = Response::new(full(Bytes::from(gw.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(Metrics::content_type()),
            );
            r
        }
        ("GET", "/apis/services") => {
            let list: Vec<serde_json::Value> = gw
                .registry
                .list()
                .into_iter()
                .map(|(ns, name, rev)| serde_json::json!({"namespace": ns, "name": name, "revision": rev, "url": format!("http://{name}.{ns}.{}", gw.settings.domain)}))
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(list))
        }
        ("POST", "/apis/services") => {
            let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "a manifest is at most 1 MiB")
                }
            };
            let yaml = String::from_utf8_lossy(&body).into_owned();
            let service = match crate::manifest::parse(&yaml) {
                Ok(s) => s,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("error validating the manifest: {e}"),
                    )
                }
            };
            let g = gw.clone();
            let result = tokio::task::spawn_blocking(move || {
                let state = g.settings.state_dir.clone();
                // Relative image paths are relative to the image root.
                let base = g.settings.policy.image_root.clone();
                g.registry.apply(service, &base, &state)
            })
            .await;
            match result {
                Ok(Ok(rev)) => json(
                    StatusCode::CREATED,
                    serde_json::json!({"namespace": rev.service.namespace, "name": rev.service.name, "revision": rev.name,
                        "url": format!("http://{}.{}.{}", rev.service.name, rev.service.namespace, gw.settings.domain)}),
                ),
                Ok(Err(e)) => text(StatusCode::UNPROCESSABLE_ENTITY, error_chain(&e)),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("deploying failed: {e}"),
                ),
            }
        }
        ("GET", p) if p.starts_with("/apis/services/") => {
            let rest = &p["/apis/services/".len()..];
            match rest.split_once('/') {
                Some((ns, name)) => match gw.registry.status(ns, name, &gw.settings.domain) {
                    Some(v) => json(StatusCode::OK, v),
                    None => text(
                        StatusCode::NOT_FOUND,
                        format!("no service {name} in namespace {ns}"),
                    ),
                },
                None => text(
                    StatusCode::BAD_REQUEST,
                    "use GET /apis/services/NAMESPACE/NAME",
                ),
            }
        }
        ("DELETE", p) if p.starts_with("/apis/services/") => {
            let rest = &p["/apis/services/".len()..];
            match rest.split_once('/') {
                Some((ns, name)) if gw.registry.delete(ns, name) => {
                    text(StatusCode::OK, format!("service {name}.{ns} deleted"))
                }
                Some((ns, name)) => text(
                    StatusCode::NOT_FOUND,
                    format!("no service {name} in namespace {ns}"),
                ),
                None => text(
                    StatusCode::BAD_REQUEST,
                    "use DELETE /apis/services/NAMESPACE/NAME",
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /healthz, /readyz, /metrics or /apis/services",
        ),
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Where the admin API listens.
#[derive(Debug)]
pub enum AdminListener {
    /// A Unix socket (created mode 0600 by the caller).
    Unix(tokio::net::UnixListener),
    /// TCP, with the bearer token every API request must carry.
    Tcp(TcpListener, Option<Arc<String>>),
}

/// Serves `port`'s routes on `l` until the process ends.
pub(crate) fn spawn_admin(
    gw: Arc<Gateway>,
    limit: Arc<tokio::sync::Semaphore>,
    l: AdminListener,
    port: Port,
) {
    tokio::spawn(async move {
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let gw = gw.clone();
            let port = port.clone();
            let svc = service_fn(move |req| {
                let (gw, port) = (gw.clone(), port.clone());
                async move { Ok::<_, Infallible>(admin(gw, req, port).await) }
            });
            match &l {
                AdminListener::Tcp(t, _) => {
                    let Some((stream, _)) = accept(t).await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _ = http1().serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
                AdminListener::Unix(u) => {
                    let stream = match u.accept().await {
                        Ok((s, _)) => s,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _ = http1().serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
            }
        }
    });
}
