//! A Linux server revision's requests, proxied to one of its instances
//! (`instances.rs`) as Knative's queue-proxy hands them to the user
//! container: the request as the client sent it but for its hop-by-hop
//! headers, with the gateway added to `Forwarded` and `X-Forwarded-*`;
//! the response's status, headers (hop-by-hop ones dropped) and body as
//! the server writes them, streamed with backpressure under the same
//! first-byte, idle and whole-run timeouts as a CGI function's. Other
//! revisions pass to the layer below. CloudEvents are HTTP requests like
//! any other here: the server reads them as it likes.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;

use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Request, Response, StatusCode};
use tower::ServiceExt;

use super::function::{app_metrics, begin, first_byte_timeout, timeout_response, InFlight};
use super::{text, Body, Inner, Remote};
use crate::instances::{Active, Conn};
use crate::registry::{error_chain, Revision};
use crate::server::Gateway;

/// Proxies server revisions' requests ([`Proxy`]); others pass.
#[derive(Debug, Clone)]
pub struct ProxyLayer {
    gw: Arc<Gateway>,
}

impl ProxyLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

impl<S> tower::Layer<S> for ProxyLayer {
    type Service = Proxy<S>;
    fn layer(&self, inner: S) -> Proxy<S> {
        Proxy {
            gw: self.gw.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Proxy<S> {
    gw: Arc<Gateway>,
    inner: S,
}

impl<S: Inner> tower::Service<Request<Bytes>> for Proxy<S> {
    super::answers!();

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            match req.extensions().get::<Arc<Revision>>().cloned() {
                Some(rev) if rev.is_server() => Ok(forward(&this.gw, &rev, req).await),
                _ => this.inner.oneshot(req).await,
            }
        })
    }
}

/// Headers that belong to one connection, never passed on (RFC 9110
/// 7.6.1), besides those the `Connection` header names.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    // The gateway frames the body itself.
    "content-length",
];

/// `headers` without the hop-by-hop ones.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        let k_str = k.as_str();
        if !HOP_BY_HOP.contains(&k_str) && !named.iter().any(|n| n == k_str) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// A `Forwarded` node for `ip` (RFC 7239 6: an IPv6 address quoted, in
/// brackets).
fn node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    }
}

/// The request the server gets: origin-form target (absolute over
/// HTTP/2, whose `:authority` is the `Host`), `Host` kept, hop-by-hop headers dropped, the gateway appended to
/// `Forwarded` and `X-Forwarded-For`, and `X-Forwarded-Host` and `-Proto`
/// its own, as for a CGI function.
fn upstream(req: Request<Bytes>, h2: bool) -> Result<Request<Full<Bytes>>, String> {
    let remote = req.extensions().get::<Remote>().map(|r| r.0.ip());
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = if h2 {
        format!("http://{host}{target}")
    } else {
        target.to_string()
    };
    let mut headers = end_to_end(&parts.headers);
    headers.remove("x-forwarded-host");
    headers.remove("x-forwarded-proto");
    let add = |headers: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.append(HeaderName::from_static(k), v);
        }
    };
    let for_ = remote.map(node).unwrap_or_else(|| "unknown".into());
    let h = &mut headers;
    add(
        h,
        "forwarded",
        format!("for={for_};host=\"{host}\";proto=http"),
    );
    if let Some(ip) = remote {
        add(h, "x-forwarded-for", ip.to_string());
    }
    add(h, "x-forwarded-host", host.clone());
    add(h, "x-forwarded-proto", "http".into());
    if h2 {
        h.remove(HOST);
    } else if !h.contains_key(HOST) {
        add(h, "host", host);
    }
    let mut b = Request::builder()
        .method(parts.method)
        .uri(uri)
        .version(if h2 {
            hyper::Version::HTTP_2
        } else {
            hyper::Version::HTTP_11
        });
    if let Some(h) = b.headers_mut() {
        *h = headers;
    }
    b.body(Full::new(body)).map_err(|e| e.to_string())
}

/// Runs `req` on an instance of `rev` and answers with its response.
async fn forward(gw: &Arc<Gateway>, rev: &Arc<Revision>, req: Request<Bytes>) -> Response<Body> {
    let started = Instant::now();
    let inflight = begin(rev);
    let first_byte = first_byte_timeout(rev);
    let deadline = tokio::time::Instant::now() + first_byte;
    let answer = |code: StatusCode, why: String| {
        app_metrics(gw, rev, code.as_str(), started);
        text(code, why)
    };
    let timed_out = || {
        app_metrics(gw, rev, "504", started);
        timeout_response(first_byte)
    };
    let place = tokio::time::timeout_at(deadline, crate::instances::place_for(gw, rev)).await;
    let (active, kind) = match place {
        Err(_) => return timed_out(),
        Ok(Err(e)) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no instance could start: {}", error_chain(&e)),
            )
        }
        Ok(Ok(p)) => p,
    };
    gw.metrics
        .requests
        .with_label_values(&[&rev.name, kind])
        .inc();
    let h2 = rev.service.port.is_some_and(|p| p.h2c);
    let upstream = match upstream(req, h2) {
        Ok(r) => r,
        Err(why) => return answer(StatusCode::BAD_REQUEST, why),
    };
    let sent = tokio::time::timeout_at(deadline, active.0.send(upstream)).await;
    let (conn, resp) = match sent {
        Err(_) => return timed_out(),
        Ok(Err(why)) => {
            let why = match active.0.ended() {
                Some(end) => format!("the server ended ({end})"),
                None => format!("the server did not answer: {why}"),
            };
            return answer(StatusCode::BAD_GATEWAY, why);
        }
        Ok(Ok(r)) => r,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return answer(
            StatusCode::BAD_GATEWAY,
            "the server switched protocols; upgrades (WebSocket) are not supported".into(),
        );
    }
    app_metrics(gw, rev, resp.status().as_str(), started);
    let (parts, incoming) = resp.into_parts();
    let whole = Duration::from_secs(crate::manifest::MAX_REVISION_TIMEOUT_SECONDS).max(first_byte);
    let body = Relayed {
        inner: incoming,
        idle: rev.service.idle_timeout,
        idle_timer: rev
            .service
            .idle_timeout
            .map(|d| Box::pin(tokio::time::sleep(d))),
        whole: Box::pin(tokio::time::sleep(whole)),
        conn: Some(conn),
        place: active,
        _inflight: inflight,
    };
    let mut out = Response::new(body.boxed_unsync());
    *out.status_mut() = parts.status;
    *out.headers_mut() = end_to_end(&parts.headers);
    out
}

/// The server's response body on its way to the client: polled only as
/// fast as the client takes it; each gap within `idleTimeoutSeconds`, the
/// whole within the revision's maximum. Its connection goes back to the
/// instance once the body has been read to its end (hyper stops polling a
/// body that says it has ended, so that is checked when it is dropped).
struct Relayed {
    inner: Incoming,
    idle: Option<Duration>,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    whole: Pin<Box<tokio::time::Sleep>>,
    conn: Option<Conn>,
    place: Active,
    _inflight: InFlight,
}

impl Drop for Relayed {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if hyper::body::Body::is_end_stream(&self.inner) {
                self.place.0.give_back(c);
            }
        }
    }
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = this.idle {
                    this.idle_timer = Some(Box::pin(tokio::time::sleep(d)));
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                return Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "the server's response was cut short: {e}"
                )))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let idle = this
            .idle_timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if idle || this.whole.as_mut().poll(cx).is_ready() {
            this.conn = None;
            let why = if idle {
                format!(
                    "the server wrote nothing for {} s (idleTimeoutSeconds)",
                    this.idle.map_or(0, |d| d.as_secs())
                )
            } else {
                "the server's response ran past the revision's maximum time".into()
            };
            return Poll::Ready(Some(Err(std::io::Error::other(why))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("upgrade", "websocket"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = end_to_end(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["accept", "x-kept"]);
        assert_eq!(out.get_all("accept").iter().count(), 2);
    }

    #[test]
    fn the_upstream_request_names_the_gateway() {
        let mut req = Request::builder()
            .method("POST")
            .uri("/p?q=1")
            .header("host", "s.default.example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-host", "evil")
            .header("connection", "keep-alive")
            .body(Bytes::from_static(b"hi"))
            .unwrap();
        req.extensions_mut()
            .insert(Remote("[::1]:5000".parse().unwrap()));
        let up = upstream(req, false).unwrap();
        assert_eq!(up.uri(), "/p?q=1");
        let h = up.headers();
        assert_eq!(h["host"], "s.default.example.com");
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["10.0.0.1", "::1"]);
        assert_eq!(h["x-forwarded-host"], "s.default.example.com");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";host=\"s.default.example.com\";proto=http"
        );
        assert!(!h.contains_key("connection"));
        // An HTTP/2 client's authority is the HTTP/1.1 server's Host, and
        // the other way round.
        let req = || {
            Request::builder()
                .uri("http://s.default.example.com/x")
                .body(Bytes::new())
                .unwrap()
        };
        let h1 = upstream(req(), false).unwrap();
        assert_eq!(h1.uri(), "/x");
        assert_eq!(h1.headers()["host"], "s.default.example.com");
        let h2 = upstream(req(), true).unwrap();
        assert_eq!(h2.uri(), "http://s.default.example.com/x");
        assert!(!h2.headers().contains_key("host"));
    }
}
