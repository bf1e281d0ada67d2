//! CloudEvents over HTTP (the HTTP protocol binding): a request carrying
//! events (binary, structured or batched) is run once per event, the
//! event's data on stdin and its attributes in `CE_*` variables; a reply
//! event the function writes (binary mode: `ce-*` headers) is answered in
//! the request's mode. A response that is no event passes through as the
//! function wrote it, as Knative's queue-proxy passes it; so does a
//! function's error status. A binary-mode request's reply streams: its
//! `ce-*` headers are checked and written again, its data passes through
//! byte for byte as the function writes it. Structured and batched
//! replies are read whole (bounded by the response size cap) to be
//! encoded.

use ::cloudevents::Event;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tower::ServiceExt;

use super::{full, text, Body, Inner};
use crate::cloudevents::{self as ce, Mode};

/// An event's attributes as the function's environment (`CE_ID`, ...),
/// put on the request the layer below runs.
#[derive(Debug, Clone)]
pub struct EventEnv(pub Vec<(String, String)>);

/// Why a request's events could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Request(ce::CeError),
    #[error("the function's reply: {0}")]
    Reply(ce::CeError),
    #[error("reading the function's reply failed: {0}")]
    ReplyBody(std::io::Error),
}

impl Error {
    pub fn response(&self) -> Response<Body> {
        let status = match self {
            Self::Request(_) => StatusCode::BAD_REQUEST,
            Self::Reply(_) | Self::ReplyBody(_) => StatusCode::BAD_GATEWAY,
        };
        text(status, self.to_string())
    }
}

/// Answers CloudEvents requests ([`Events`]); other requests pass.
#[derive(Debug, Clone, Copy)]
pub struct EventsLayer;

impl<S> tower::Layer<S> for EventsLayer {
    type Service = Events<S>;
    fn layer(&self, inner: S) -> Events<S> {
        Events { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Events<S> {
    inner: S,
}

/// The request that runs `event`: the original's method, target, version
/// and headers, the event's data as its body, its attributes as
/// [`EventEnv`], and what the layers above put on it.
fn event_request(req: &Request<Bytes>, event: &Event) -> Request<Bytes> {
    let mut r = Request::new(Bytes::from(ce::data_bytes(event)));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    *r.extensions_mut() = req.extensions().clone();
    r.extensions_mut().insert(EventEnv(ce::environment(event)));
    r
}

/// A binary-mode reply's head: the function's status and headers, its
/// `ce-*` and `Content-Type` headers replaced by the reply event's own
/// (checked, percent-encoded again); the data streams on unchanged.
fn binary_reply(mut resp: Response<Body>, event: &Event) -> Response<Body> {
    let h = resp.headers_mut();
    let ce_names: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with("ce-"))
        .cloned()
        .collect();
    for k in ce_names {
        h.remove(k);
    }
    h.remove(CONTENT_TYPE);
    for (k, v) in ce::encode_binary(event).0 {
        h.append(k, v);
    }
    resp
}

/// The response for a batch or structured request: its replies encoded
/// in its mode with the last reply's status, else the last plain answer,
/// else 202.
fn encode(
    mode: Mode,
    mut replies: Vec<Event>,
    status: StatusCode,
    plain: Option<Response<Body>>,
) -> Response<Body> {
    let (body, ct) = match (mode, replies.pop()) {
        (_, None) => {
            return plain.unwrap_or_else(|| {
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::ACCEPTED;
                r
            })
        }
        (Mode::Batch, Some(last)) => {
            replies.push(last);
            let list: Vec<serde_json::Value> = replies
                .iter()
                .filter_map(|e| serde_json::from_slice(&ce::encode_structured(e)).ok())
                .collect();
            (serde_json::to_vec(&list).unwrap_or_default(), ce::BATCH)
        }
        (_, Some(reply)) => (ce::encode_structured(&reply), ce::STRUCTURED),
    };
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// A reply read whole: the event in it, if any, or the response again.
async fn read_reply(
    resp: Response<Body>,
) -> Result<Result<(Event, StatusCode), Response<Body>>, Error> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(Error::ReplyBody)?.to_bytes();
    match ce::reply(&parts.headers, body.to_vec()).map_err(Error::Reply)? {
        Some(event) => Ok(Ok((event, parts.status))),
        None => Ok(Err(Response::from_parts(parts, full(body)))),
    }
}

impl<S: Inner> Events<S> {
    async fn answer(self, req: Request<Bytes>, mode: Mode) -> Result<Response<Body>, Error> {
        let events = ce::parse(mode, req.headers(), req.body()).map_err(Error::Request)?;
        if mode == Mode::Binary {
            let Some(event) = events.first() else {
                return Ok(encode(mode, Vec::new(), StatusCode::OK, None));
            };
            let Ok(resp) = self.inner.clone().oneshot(event_request(&req, event)).await;
            if resp.status().as_u16() >= 300 {
                return Ok(resp);
            }
            return match ce::reply(resp.headers(), Vec::new()).map_err(Error::Reply)? {
                Some(head) => Ok(binary_reply(resp, &head)),
                None => Ok(resp),
            };
        }
        let (mut replies, mut status, mut plain) = (Vec::new(), StatusCode::OK, None);
        for event in &events {
            let Ok(resp) = self.inner.clone().oneshot(event_request(&req, event)).await;
            if resp.status().as_u16() >= 300 {
                return Ok(resp);
            }
            match read_reply(resp).await? {
                Ok((reply, s)) => {
                    replies.push(reply);
                    status = s;
                }
                Err(resp) => plain = Some(resp),
            }
        }
        Ok(encode(mode, replies, status, plain))
    }
}

impl<S> tower::Service<Request<Bytes>> for Events<S>
where
    S: Inner<Bytes>,
{
    super::answers!();

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Some(mode) = ce::detect(req.headers()) else {
                return this.inner.oneshot(req).await;
            };
            Ok(this
                .answer(req, mode)
                .await
                .unwrap_or_else(|e| e.response()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// A function that answers every request with `status`, `headers` and
    /// `body`, and says what it got in `x-got-data` and `x-got-id`.
    fn function(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> impl Inner {
        tower::service_fn(move |req: Request<Bytes>| async move {
            let mut r = Response::new(full(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(*k, HeaderValue::from_static(v));
            }
            let id = req
                .extensions()
                .get::<EventEnv>()
                .and_then(|e| {
                    e.0.iter()
                        .find(|(k, _)| k == "CE_ID")
                        .map(|(_, v)| v.clone())
                })
                .unwrap_or_default();
            r.headers_mut()
                .insert("x-got-id", HeaderValue::from_str(&id).unwrap());
            let data = String::from_utf8(req.body().to_vec()).unwrap();
            r.headers_mut()
                .insert("x-got-data", HeaderValue::from_str(&data).unwrap());
            Ok::<_, Infallible>(r)
        })
    }

    fn binary_event(data: &'static str) -> Request<Bytes> {
        let mut r = Request::new(Bytes::from(data));
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-source", "/test"),
            ("ce-type", "t"),
            ("content-type", "application/json"),
        ] {
            r.headers_mut().insert(k, HeaderValue::from_static(v));
        }
        r
    }

    async fn answer(svc: impl Inner, req: Request<Bytes>) -> (Response<()>, Vec<u8>) {
        let resp = EventsLayer.layer(svc).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        (Response::from_parts(parts, ()), body)
    }

    const REPLY: &[(&str, &str)] = &[
        ("ce-id", "r-1"),
        ("ce-source", "/fn"),
        ("ce-type", "reply"),
        ("ce-specversion", "1.0"),
        ("content-type", "application/json"),
        ("x-own", "kept"),
    ];

    use tower::Layer;

    #[tokio::test]
    async fn a_binary_reply_keeps_the_functions_status_headers_and_bytes() {
        let (resp, body) = answer(
            function(201, REPLY, "{ \"a\" :  1 }"),
            binary_event("{\"x\": 2}"),
        )
        .await;
        assert_eq!(resp.status(), 201);
        assert_eq!(
            body, b"{ \"a\" :  1 }",
            "data byte for byte, not re-serialised"
        );
        let h = resp.headers();
        assert_eq!(h["ce-id"], "r-1");
        assert_eq!(h["ce-type"], "reply");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-own"], "kept");
        assert_eq!(h["x-got-id"], "e-1");
        assert_eq!(h["x-got-data"], "{\"x\": 2}");
    }

    #[tokio::test]
    async fn a_bad_reply_is_a_502_and_a_bad_event_a_400() {
        const BAD: &[(&str, &str)] = &[("ce-id", "r"), ("ce-specversion", "0.3")];
        let (resp, body) = answer(function(200, BAD, ""), binary_event("{}")).await;
        assert_eq!(resp.status(), 502, "{}", String::from_utf8_lossy(&body));
        let mut req = binary_event("{}");
        req.headers_mut().remove("ce-source");
        let (resp, _) = answer(function(200, REPLY, ""), req).await;
        assert_eq!(resp.status(), 400);
        // An attribute that is not UTF-8 once percent-decoded.
        let mut req = binary_event("{}");
        req.headers_mut()
            .insert("ce-subject", HeaderValue::from_static("%C0%A0"));
        let (resp, body) = answer(function(200, REPLY, ""), req).await;
        assert_eq!(resp.status(), 400);
        assert!(String::from_utf8_lossy(&body).contains("not UTF-8"));
    }

    #[tokio::test]
    async fn a_structured_request_gets_its_reply_structured() {
        let mut req = Request::new(Bytes::from_static(
            br#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t","data":{"k":"v"}}"#,
        ));
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(ce::STRUCTURED));
        let (resp, body) = answer(function(200, REPLY, "{\"a\":1}"), req).await;
        assert_eq!(resp.headers()[CONTENT_TYPE], ce::STRUCTURED);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "r-1");
        assert_eq!(v["data"], serde_json::json!({"a": 1}));
    }

    #[tokio::test]
    async fn plain_answers_and_errors_pass_through() {
        let (resp, body) = answer(
            function(200, &[("content-type", "text/plain")], "hi"),
            binary_event("{}"),
        )
        .await;
        assert_eq!((resp.status().as_u16(), body.as_slice()), (200, &b"hi"[..]));
        let (resp, body) = answer(function(503, REPLY, "busy"), binary_event("{}")).await;
        assert_eq!(
            (resp.status().as_u16(), body.as_slice()),
            (503, &b"busy"[..])
        );
        // Not an event at all: the request reaches the function untouched.
        let (resp, _) = answer(
            function(200, &[], "x"),
            Request::new(Bytes::from_static(b"raw")),
        )
        .await;
        assert_eq!(resp.headers()["x-got-data"], "raw");
        assert_eq!(resp.headers()["x-got-id"], "");
    }
}
