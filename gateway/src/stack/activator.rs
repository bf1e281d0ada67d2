//! `containerConcurrency` as Knative's activator and queue-proxy apply it:
//! a hard limit per instance, so a revision holds `cc` slots per instance
//! (`Revision::slots`, resized by the autoscaler). A request takes a slot
//! for as long as its response streams; one that finds none waits in the
//! revision's bounded queue (queue-proxy's 10 x cc per instance, for as
//! many instances as the revision may have), counted by the autoscaler,
//! while instances are added; past the queue it gets 503.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Request, Response, StatusCode};
use tower::ServiceExt;

use super::{guarded, text, Body, Inner};
use crate::registry::Revision;
use crate::server::Gateway;

/// Why a request got no slot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("revision {0} is at capacity and its queue is full")]
    QueueFull(String),
}

impl Error {
    pub fn response(&self) -> Response<Body> {
        text(StatusCode::SERVICE_UNAVAILABLE, self.to_string())
    }
}

/// Holds each request to its revision's slots ([`Activator`]).
#[derive(Debug, Clone)]
pub struct ActivatorLayer {
    gw: Arc<Gateway>,
}

impl ActivatorLayer {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

impl<S> tower::Layer<S> for ActivatorLayer {
    type Service = Activator<S>;
    fn layer(&self, inner: S) -> Activator<S> {
        Activator {
            gw: self.gw.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Activator<S> {
    gw: Arc<Gateway>,
    inner: S,
}

/// A place in a revision's queue, given up when dropped (the request got
/// its slot, or its client went away).
struct Queued<'a> {
    gw: &'a Gateway,
    rev: &'a Revision,
}

impl Queued<'_> {
    fn depth_changed(&self) {
        self.gw
            .metrics
            .queue_depth
            .with_label_values(&[&self.rev.name])
            .set(self.rev.queued.load(Ordering::SeqCst) as i64);
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.rev.queued.fetch_sub(1, Ordering::SeqCst);
        self.depth_changed();
    }
}

/// Takes a slot of `rev`, waiting in its queue if there is room.
async fn slot(
    gw: &Gateway,
    rev: &Revision,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Error> {
    let Some(slots) = &rev.slots else {
        return Ok(None);
    };
    if let Ok(p) = slots.clone().try_acquire_owned() {
        return Ok(Some(p));
    }
    if rev.queued.fetch_add(1, Ordering::SeqCst) >= rev.queue_limit {
        rev.queued.fetch_sub(1, Ordering::SeqCst);
        return Err(Error::QueueFull(rev.name.clone()));
    }
    let queued = Queued { gw, rev };
    queued.depth_changed();
    let p = slots.clone().acquire_owned().await.ok();
    drop(queued);
    Ok(p)
}

impl<S> tower::Service<Request<Bytes>> for Activator<S>
where
    S: Inner<Bytes>,
{
    super::answers!();

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let (gw, inner) = (self.gw.clone(), self.inner.clone());
        Box::pin(async move {
            let Some(rev) = req.extensions().get::<Arc<Revision>>().cloned() else {
                return Ok(super::no_revision());
            };
            let permit = match slot(&gw, &rev).await {
                Ok(p) => p,
                Err(e) => return Ok(e.response()),
            };
            let resp = inner.oneshot(req).await?;
            Ok(resp.map(|b| guarded(b, permit)))
        })
    }
}
