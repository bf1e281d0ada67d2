//! The data plane's request path as a tower stack, one concern per layer
//! and per file, outermost first:
//!
//! - request ids (`tower-http`'s `SetRequestId` and `PropagateRequestId`,
//!   with [`request_id`]'s rule for which client ids are kept) and the
//!   access log (`tower-http`'s `Trace`);
//! - [`route`]: `Host` to a revision (404 when none answers), the request
//!   metrics Knative's activator reports;
//! - [`collect`]: the body read whole, up to the limit (413 past it);
//! - [`activator`]: the revision's `containerConcurrency` slots and its
//!   bounded queue (503 when full);
//! - [`proxy`]: a Linux server revision's requests, proxied to one of its
//!   instances (the layers below are for CGI functions);
//! - [`events`]: CloudEvents, one invocation per event, replies in the
//!   request's mode;
//! - [`function`]: the CGI invocation in a VM, its response streamed.
//!
//! Each of Flint's own layers has its layer, its service and its error,
//! as linkerd2-proxy builds its stack; every service answers with a
//! response (its errors become statuses where they arise), so the stack's
//! error type is [`Infallible`].

/// The part of `tower::Service` every Flint service of the stack shares:
/// it answers every request with a response ([`Answer`]) and is always
/// ready (the node's and the revision's limits are waited for inside a
/// call, where the request is known).
macro_rules! answers {
    () => {
        type Response = hyper::Response<$crate::stack::Body>;
        type Error = std::convert::Infallible;
        type Future = $crate::stack::Answer;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
    };
}
pub(crate) use answers;

pub mod activator;
pub mod collect;
pub mod events;
pub mod function;
pub mod proxy;
pub mod request_id;
pub mod route;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::server::Gateway;

/// Every response's body: whole ([`full`]) or streamed from a function
/// (`stream::StreamingBody`).
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A service's future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What every Flint service of the stack returns: a response, always.
pub type Answer = BoxFuture<Result<Response<Body>, Infallible>>;

/// The service a Flint layer wraps: one that answers every request
/// (`B`, a whole body below `collect`) with a response, and can be cloned
/// into the future of a call.
pub trait Inner<B = Bytes>:
    tower::Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S, B> Inner<B> for S where
    S: tower::Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send>
        + Clone
        + Send
        + 'static
{
}

/// The client's address, put on each request by the connection.
#[derive(Debug, Clone, Copy)]
pub struct Remote(pub SocketAddr);

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A plain-text response (the message and a newline).
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A body that holds `guard` until it is sent or dropped: what a request
/// holds (a `containerConcurrency` slot, its place in the in-flight count)
/// lasts as long as its response streams, not only until its headers.
pub fn guarded<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    Guarded {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin> hyper::body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The data plane's service: every layer above over the gateway `gw`,
/// boxed so a connection (HTTP/1, HTTP/2 or an h2c upgrade) can clone it.
pub type DataPlane = tower::util::BoxCloneService<Request<Incoming>, Response<Body>, Infallible>;

/// Builds the [`DataPlane`] stack.
pub fn data_plane(gw: Arc<Gateway>) -> DataPlane {
    let max_body = gw.settings.max_body_bytes;
    let stack = ServiceBuilder::new()
        // tower-http's layers wrap the body; the stack's is boxed again.
        .map_response(|r: Response<_>| r.map(BodyExt::boxed_unsync))
        .map_request(request_id::keep_sane::<Incoming>)
        .layer(SetRequestIdLayer::x_request_id(request_id::MakeId))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_id::span)
                .on_request(())
                .on_response(request_id::log_response)
                .on_failure(()),
        )
        .layer(route::RouteLayer::new(gw.clone()))
        .layer(collect::CollectLayer::new(max_body))
        .layer(activator::ActivatorLayer::new(gw.clone()))
        .layer(proxy::ProxyLayer::new(gw.clone()))
        .layer(events::EventsLayer)
        .service(function::Function::new(gw));
    tower::util::BoxCloneService::new(stack)
}

/// The answer of a layer below routing that finds no revision on its
/// request: a stack built wrong, never a client's doing.
fn no_revision() -> Response<Body> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the request reached the function without a revision",
    )
}
