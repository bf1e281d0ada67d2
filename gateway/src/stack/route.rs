//! Routing: the request's `Host` names a revision (a service's traffic
//! split picks one per request; a tag's host names its target), put on
//! the request for the layers below; a host nobody answers at gets 404.
//! Counts the request in the gateway's in-flight number while its
//! response streams, and in Knative's activator metrics
//! (`revision_request_count`, `revision_request_latencies`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::header::HOST;
use hyper::{Request, StatusCode};
use tower::ServiceExt;

use super::{guarded, text, Inner};
use crate::metrics::Metrics;
use crate::server::Gateway;

/// Routes by `Host` ([`Route`]).
#[derive(Debug, Clone)]
pub struct RouteLayer {
    gw: Arc<Gateway>,
}

impl RouteLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            gw: self.gw.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route<S> {
    gw: Arc<Gateway>,
    inner: S,
}

/// The request's host: `Host`, else the URI's authority (HTTP/2's
/// `:authority`).
pub fn host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// One request in the gateway's in-flight count until dropped.
struct InFlight(Arc<Gateway>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, B> tower::Service<Request<B>> for Route<S>
where
    S: Inner<B>,
    B: Send + 'static,
{
    super::answers!();

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let gw = self.gw.clone();
        // Called from the future: a clone, made ready there (`oneshot`).
        let inner = self.inner.clone();
        Box::pin(async move {
            let host = host(&req);
            let Some(rev) = gw.registry.resolve(&host, &gw.settings.domain) else {
                return Ok(text(
                    StatusCode::NOT_FOUND,
                    format!("no service answers at host {host:?}"),
                ));
            };
            req.extensions_mut().insert(rev.clone());
            gw.inflight.fetch_add(1, Ordering::SeqCst);
            let counted = InFlight(gw.clone());
            let start = Instant::now();
            let resp = inner.oneshot(req).await?;
            let code = resp.status().as_u16().to_string();
            let class = format!("{}xx", &code[..1]);
            let l = [
                rev.service.namespace.as_str(),
                &rev.service.name,
                &rev.service.name,
                &rev.name,
                &code,
                &class,
            ];
            gw.metrics.request_count.with_label_values(&l).inc();
            gw.metrics
                .request_latencies
                .with_label_values(&l)
                .observe(Metrics::ms(start.elapsed()));
            Ok(resp.map(|b| guarded(b, counted)))
        })
    }
}
