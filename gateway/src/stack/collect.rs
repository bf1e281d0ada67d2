//! Reads the request body whole (a function gets its body on stdin, and
//! an event's data is inside it), through `http-body-util`'s `Limited`: a
//! body past the limit is refused with 413 naming the limit, whether its
//! `Content-Length` says so up front or it grows past it while read.
//! (`tower-http`'s `RequestBodyLimit` does the same but answers with a
//! body of its own that does not name the limit.)

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::{Request, Response, StatusCode};
use tower::ServiceExt;

use super::{text, Body, Inner};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request body is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("reading the request body failed: {0}")]
    Read(String),
}

impl Error {
    pub fn response(&self) -> Response<Body> {
        let status = match self {
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Read(_) => StatusCode::BAD_REQUEST,
        };
        text(status, self.to_string())
    }
}

/// Collects bodies ([`Collect`]); `limit` names the limit in the 413.
#[derive(Debug, Clone, Copy)]
pub struct CollectLayer {
    limit: usize,
}

impl CollectLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for CollectLayer {
    type Service = Collect<S>;
    fn layer(&self, inner: S) -> Collect<S> {
        Collect {
            limit: self.limit,
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Collect<S> {
    limit: usize,
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Collect<S>
where
    S: Inner<Bytes>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    super::answers!();

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (limit, inner) = (self.limit, self.inner.clone());
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    let e: &(dyn std::error::Error + 'static) = &*e;
                    let too_large = std::iter::successors(Some(e), |e| e.source())
                        .any(|e| e.is::<LengthLimitError>());
                    let err = if too_large {
                        Error::TooLarge(limit)
                    } else {
                        Error::Read(e.to_string())
                    };
                    return Ok(err.response());
                }
            };
            inner.oneshot(Request::from_parts(parts, body)).await
        })
    }
}
