//! Request ids and the access log. `tower-http` sets and propagates
//! `X-Request-Id` (`SetRequestId` keeps one the request has, so a client's
//! id reaches the function, its logs and the response); what this file
//! adds is the rule for which client ids are kept ([`keep_sane`]), how a
//! new one is made ([`MakeId`]), and the access log's span and line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::{Request, Response};
use tower_http::request_id::{MakeRequestId, RequestId};
use tracing::Span;

/// The header.
pub const X_REQUEST_ID: &str = "x-request-id";

/// Longest client request id kept.
pub const MAX_CLIENT_ID: usize = 128;

/// Drops a client's `X-Request-Id` unless it is sane: 1 to
/// [`MAX_CLIENT_ID`] printable ASCII characters, no spaces. An empty,
/// oversized or binary id would otherwise reach the function's environment
/// and the logs as sent.
pub fn keep_sane<B>(mut req: Request<B>) -> Request<B> {
    let sane = req.headers().get(X_REQUEST_ID).is_none_or(|v| {
        !v.is_empty() && v.len() <= MAX_CLIENT_ID && v.as_bytes().iter().all(u8::is_ascii_graphic)
    });
    if !sane {
        req.headers_mut().remove(X_REQUEST_ID);
    }
    req
}

/// New request ids: the time and a process-wide counter, as hex.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let id = format!("{t:016x}-{:08x}", N.fetch_add(1, Ordering::Relaxed));
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// The request's id (set by the layers above).
pub fn of<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The access log's span: the request's id, method and path.
pub fn span<B>(req: &Request<B>) -> Span {
    tracing::info_span!(
        "request",
        request_id = %of(req),
        method = %req.method(),
        path = %req.uri().path(),
    )
}

/// The access log's line, once the response's head is out.
pub fn log_response<B>(resp: &Response<B>, latency: Duration, _: &Span) {
    tracing::info!(
        status = resp.status().as_u16(),
        ms = latency.as_secs_f64() * 1e3,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &[u8]) -> Request<()> {
        let mut r = Request::new(());
        r.headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from_bytes(id).unwrap());
        r
    }

    #[test]
    fn only_sane_client_ids_are_kept() {
        assert_eq!(of(&keep_sane(with_id(b"abc-123_X"))), "abc-123_X");
        for bad in [
            &b""[..],
            b"has space",
            b"\xff\xfe",
            &[b'a'; MAX_CLIENT_ID + 1],
        ] {
            let r = keep_sane(with_id(bad));
            assert!(r.headers().get(X_REQUEST_ID).is_none(), "{bad:?}");
        }
        assert_eq!(
            of(&keep_sane(with_id(&[b'a'; MAX_CLIENT_ID]))).len(),
            MAX_CLIENT_ID
        );
    }

    #[test]
    fn new_ids_differ() {
        let r = Request::new(());
        let a = MakeId.make_request_id(&r).unwrap();
        let b = MakeId.make_request_id(&r).unwrap();
        assert_ne!(a.header_value(), b.header_value());
    }
}
