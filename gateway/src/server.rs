//! The HTTP data plane (hyper 1.x on tokio) and the admin/metrics port.
//!
//! A request is routed by `Host` to a revision, its body read (capped),
//! a `containerConcurrency` slot taken (or the request queued, bounded),
//! and the function invoked in a VM restored from the revision's snapshot
//! (every request a fresh VM: nothing leaks between requests). The VM work
//! runs on tokio's blocking pool; the revision's timeout bounds it, both
//! here (504) and in the VM (stopped by the host).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flint_executor::{Invocation, RunError};
use flint_snapshotter::SnapshotError;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::{labels, Metrics};
use crate::registry::error_chain;
use crate::registry::{Registry, Revision};
use crate::{cgi, cloudevents, h2c};

/// Gateway-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Services answer at `NAME.NAMESPACE.DOMAIN`.
    pub domain: String,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Where revisions' snapshots go.
    pub state_dir: PathBuf,
    /// What applies may use of the host (image root, size and scale caps).
    pub policy: crate::registry::Policy,
}

#[derive(Debug)]
pub struct Gateway {
    pub settings: Settings,
    pub registry: Registry,
    pub metrics: Metrics,
    inflight: AtomicUsize,
    draining: AtomicBool,
    /// The node's run slots (`Policy::max_running`) and the requests
    /// waiting for one.
    running: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
}

/// A request counted in its revision's in-flight number until dropped,
/// whichever way it ends (a client that goes away included).
struct InFlight(Arc<Revision>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request waiting for a run slot, until dropped.
struct Waiting<'a>(&'a Gateway);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let n = self.0.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0
            .metrics
            .set("flint_requests_waiting_for_vm", "", n as f64);
    }
}

/// Every response's body: whole ([`full`]) or streamed from a function
/// (`stream::StreamingBody`).
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A whole body.
fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Gateway {
    pub fn new(settings: Settings) -> Arc<Self> {
        let policy = settings.policy.clone();
        let max_running = policy.max_running.max(1);
        let metrics = Metrics::default();
        metrics.set("flint_run_slots", "", max_running as f64);
        metrics.set("flint_requests_waiting_for_vm", "", 0.0);
        Arc::new(Self {
            settings,
            registry: Registry::with_policy(policy),
            metrics,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            running: Arc::new(tokio::sync::Semaphore::new(max_running)),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Requests being handled now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Body> {
        // A request id: the client's if it sent a sane one, else a new one.
        let id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        if let Ok(v) = HeaderValue::from_str(&id) {
            req.headers_mut().insert("x-request-id", v);
        }
        let (method, path) = (req.method().to_string(), req.uri().path().to_string());
        let mut resp = self.clone().route(req, remote).await;
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        tracing::info!(request_id = %id, %method, %path, status = resp.status().as_u16(), "request");
        resp
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let Some(rev) = self.registry.resolve(&host, &self.settings.domain) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("no service answers at host {host:?}"),
            );
        };
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        let resp = self.clone().invoke(&rev, req, remote).await;
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        let code = resp.status().as_u16().to_string();
        let class = format!("{}xx", &code[..1]);
        let l = labels(&[
            ("namespace_name", &rev.service.namespace),
            ("service_name", &rev.service.name),
            ("configuration_name", &rev.service.name),
            ("revision_name", &rev.name),
            ("response_code", &code),
            ("response_code_class", &class),
        ]);
        self.metrics.inc("revision_request_count", &l, 1.0);
        self.metrics.observe_ms(
            "revision_request_latencies",
            &l,
            start.elapsed().as_secs_f64() * 1e3,
        );
        resp
    }

    async fn invoke(
        self: Arc<Self>,
        rev: &Arc<Revision>,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.settings.max_body_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than the {}-byte limit",
                        self.settings.max_body_bytes
                    ),
                )
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed: {e}"),
                )
            }
        };
        let rev_labels = labels(&[("revision_name", &rev.name)]);
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // A containerConcurrency slot, waiting in a bounded queue for it.
        let _permit = match &rev.slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    if rev.queued.fetch_add(1, Ordering::SeqCst) >= rev.queue_limit {
                        rev.queued.fetch_sub(1, Ordering::SeqCst);
                        return text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("revision {} is at capacity and its queue is full", rev.name),
                        );
                    }
                    self.metrics.set(
                        "revision_queue_depth",
                        &rev_labels,
                        rev.queued.load(Ordering::SeqCst) as f64,
                    );
                    let p = slots.clone().acquire_owned().await;
                    rev.queued.fetch_sub(1, Ordering::SeqCst);
                    self.metrics.set(
                        "revision_queue_depth",
                        &rev_labels,
                        rev.queued.load(Ordering::SeqCst) as f64,
                    );
                    p.ok()
                }
            },
        };
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect();
        let host = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let (server_name, server_port) = match host.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(80)),
            None => (host.to_string(), 80),
        };
        let remote_addr = remote.ip().to_string();
        // The gateway's X-Forwarded-Host and -Proto replace a client's;
        // its Forwarded and X-Forwarded-For entries are appended to the
        // client's, as a proxy appends itself (RFC 7239 4).
        let mut forwarded: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| k != "x-forwarded-host" && k != "x-forwarded-proto")
            .cloned()
            .collect();
        forwarded.push((
            "forwarded".into(),
            format!("for={remote_addr};host={host};proto=http"),
        ));
        forwarded.push(("x-forwarded-for".into(), remote_addr.clone()));
        forwarded.push(("x-forwarded-host".into(), host.to_string()));
        forwarded.push(("x-forwarded-proto".into(), "http".into()));
        let cgi_env = |body_len: usize| {
            let mut env = cgi::environment(&cgi::Request {
                protocol: match parts.version {
                    hyper::Version::HTTP_09 => "HTTP/0.9",
                    hyper::Version::HTTP_10 => "HTTP/1.0",
                    hyper::Version::HTTP_2 => "HTTP/2.0",
                    hyper::Version::HTTP_3 => "HTTP/3.0",
                    _ => "HTTP/1.1",
                },
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                headers: forwarded
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                body_len,
                remote_addr: &remote_addr,
                server_name: &server_name,
                server_port,
                service: &rev.service.name,
                revision: &rev.name,
            });
            env.extend(rev.service.env.iter().cloned());
            env
        };
        let Some(mode) = cloudevents::detect(&parts.headers) else {
            if rev.snapshot.is_some() || rev.linux.is_some() {
                // A plain request: its response streams.
                return self
                    .clone()
                    .run_streaming(rev, &request_id, cgi_env(body.len()), body.to_vec())
                    .await;
            }
            return match self
                .run_function(rev, &request_id, cgi_env(body.len()), body.to_vec())
                .await
            {
                Ok(r) => cgi_response(r),
                Err(resp) => resp,
            };
        };
        // CloudEvents: one invocation per event; replies in the request's mode.
        let events = match cloudevents::parse(mode, &parts.headers, &body) {
            Ok(e) => e,
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let mut replies = Vec::new();
        let mut plain = None;
        for event in &events {
            let data = cloudevents::data_bytes(event);
            let mut env = cgi_env(data.len());
            env.extend(cloudevents::environment(event));
            let out = match self.run_function(rev, &request_id, env, data).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            if out.status >= 300 {
                return cgi_response(out);
            }
            match cloudevents::reply(&out) {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => plain = Some(out),
                Err(e) => {
                    return text(
                        StatusCode::BAD_GATEWAY,
                        format!("the function's reply: {e}"),
                    )
                }
            }
        }
        match (mode, replies.pop()) {
            // No event in reply: the function's own response passes
            // through, as Knative's queue-proxy passes it.
            (_, None) => match plain {
                Some(out) => cgi_response(out),
                None => {
                    let mut r = Response::new(full(Bytes::new()));
                    *r.status_mut() = StatusCode::ACCEPTED;
                    r
                }
            },
            (cloudevents::Mode::Binary, Some(reply)) => {
                let (hs, body) = cloudevents::encode_binary(&reply);
                let mut r = Response::new(full(Bytes::from(body)));
                for (k, v) in hs {
                    r.headers_mut().append(k, v);
                }
                r
            }
            (cloudevents::Mode::Structured, Some(reply)) => {
                let mut r =
                    Response::new(full(Bytes::from(cloudevents::encode_structured(&reply))));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(cloudevents::STRUCTURED),
                );
                r
            }
            (cloudevents::Mode::Batch, Some(last)) => {
                replies.push(last);
                let list: Vec<serde_json::Value> = replies
                    .iter()
                    .filter_map(|e| serde_json::from_slice(&cloudevents::encode_structured(e)).ok())
                    .collect();
                let mut r = Response::new(full(Bytes::from(
                    serde_json::to_vec(&list).unwrap_or_default(),
                )));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(cloudevents::BATCH));
                r
            }
        }
    }

    /// Runs one invocation of a revision (a module, or a Linux program)
    /// and streams its response (`stream.rs`): the status and headers as
    /// soon as the function has written its header block, within the
    /// first-byte deadline; the body as it writes it, each gap within
    /// `idleTimeoutSeconds`; the whole run within Knative's maximum
    /// revision timeout.
    async fn run_streaming(
        self: Arc<Self>,
        rev: &Arc<Revision>,
        request_id: &str,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
    ) -> Response<Body> {
        let linux = rev.linux.clone();
        let invocation = match (&linux, module_invocation(rev, env.clone())) {
            (Some(_), _) => None,
            (None, Some(i)) => Some(i),
            (None, None) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the revision has no function",
                )
            }
        };
        let first_byte = first_byte_timeout(rev);
        let whole =
            Duration::from_secs(crate::manifest::MAX_REVISION_TIMEOUT_SECONDS).max(first_byte);
        let started = Instant::now();
        let inflight = self.begin(rev);
        let (slot, warm) = self.run_slot(rev).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let abort = Arc::new(AtomicBool::new(false));
        let (rev2, abort2, request_id2) = (rev.clone(), abort.clone(), request_id.to_string());
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            match (linux, invocation) {
                (Some(f), _) => match crate::linux::run(&f, env, &stdin, whole, tx, &abort2) {
                    Ok(end) => {
                        log_stderr(&rev2.name, &request_id2, &end.stderr);
                        Ended::of_linux(end.outcome)
                    }
                    Err(e) => Ended::Failed(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("running the function failed: {e}"),
                    ),
                },
                (None, Some(invocation)) => {
                    let mut io = crate::stream::StreamIo::new(stdin, tx);
                    let r = ready_vm(&rev2, warm).and_then(|(vm, restore)| {
                        let (report, reset) = run_and_recycle(
                            &rev2,
                            vm,
                            &invocation,
                            &mut io,
                            Some(whole),
                            Some(&abort2),
                        )?;
                        Ok((report, restore, reset))
                    });
                    log_stderr(&rev2.name, &request_id2, &io.stderr);
                    Ended::of_module(r)
                }
                (None, None) => unreachable!("checked above"),
            }
        });
        self.stream_response(rev, rx, abort, job, first_byte, inflight, started)
            .await
    }

    /// The response of a run whose stdout arrives on `rx`: its header
    /// block within `first_byte`, then the rest as a streaming body whose
    /// end says how the run ended. Raising `abort` stops the run.
    #[allow(clippy::too_many_arguments)]
    async fn stream_response(
        self: Arc<Self>,
        rev: &Arc<Revision>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
        abort: Arc<AtomicBool>,
        job: tokio::task::JoinHandle<Ended>,
        first_byte: Duration,
        inflight: InFlight,
        started: Instant,
    ) -> Response<Body> {
        // The header block, within the first-byte deadline.
        let mut head = Vec::new();
        let deadline = tokio::time::Instant::now() + first_byte;
        let parsed = loop {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(c) => {
                        head.extend_from_slice(&c);
                        match cgi::parse_response(&head) {
                            Ok(r) => break Some(Ok(r)),
                            Err(cgi::CgiError::NoHeaders) if head.len() < cgi::MAX_HEADER_BLOCK => {}
                            Err(e) => break Some(Err(e)),
                        }
                    }
                    // Done writing without a header block: judged below
                    // on how the run ended.
                    None => break None,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    abort.store(true, Ordering::SeqCst);
                    let _ = job.await;
                    drop(inflight);
                    self.app_metrics(rev, "504", started);
                    return timeout_response(first_byte);
                }
            }
        };
        let mut r = match parsed {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                abort.store(true, Ordering::SeqCst);
                let _ = job.await;
                drop(inflight);
                self.app_metrics(rev, "502", started);
                return text(StatusCode::BAD_GATEWAY, e.to_string());
            }
            None => {
                let ended = Ended::joined(job.await);
                drop(inflight);
                let resp = match ended {
                    Ended::Failed(code, why) => text(code, why),
                    Ended::Timeout => timeout_response(first_byte),
                    Ended::Exited { code, .. } if code != 0 => text(
                        StatusCode::BAD_GATEWAY,
                        format!("the function exited with status {code}"),
                    ),
                    Ended::Exited { restore, reset, .. } => {
                        self.observe_vm_latencies(rev, restore, reset);
                        text(
                            StatusCode::BAD_GATEWAY,
                            cgi::CgiError::NoHeaders.to_string(),
                        )
                    }
                };
                self.app_metrics(rev, resp.status().as_str(), started);
                return resp;
            }
        };
        // Headers are out: the rest streams; how the run ends decides
        // whether the body ends cleanly.
        self.app_metrics(rev, &r.status.to_string(), started);
        let gw = self.clone();
        let rev3 = rev.clone();
        let ending = tokio::spawn(async move {
            let ended = Ended::joined(job.await);
            drop(inflight);
            match ended {
                Ended::Failed(_, why) => Err(why),
                Ended::Timeout => Err("the function timed out".into()),
                Ended::Exited {
                    code,
                    restore,
                    reset,
                } => {
                    gw.observe_vm_latencies(&rev3, restore, reset);
                    if code == 0 {
                        Ok(())
                    } else {
                        Err(format!("the function exited with status {code}"))
                    }
                }
            }
        });
        let first = Bytes::from(std::mem::take(&mut r.body));
        let body =
            crate::stream::StreamingBody::new(first, rx, rev.service.idle_timeout, abort, ending);
        cgi_response(r).map(|_| body.boxed_unsync())
    }

    /// How long the request's VM took to restore (if it was not warm) and
    /// to reset in place afterwards (if it was kept).
    fn observe_vm_latencies(
        &self,
        rev: &Revision,
        restore: Option<Duration>,
        reset: Option<Duration>,
    ) {
        let l = labels(&[("revision_name", &rev.name)]);
        for (name, d) in [
            ("flint_restore_latencies", restore),
            ("flint_reset_latencies", reset),
        ] {
            if let Some(d) = d {
                self.metrics.observe_ms(name, &l, d.as_secs_f64() * 1e3);
            }
        }
    }

    /// A request starts on `rev`: counted as it arrives (what the
    /// autoscaler sees, waiting ones included) until the guard drops.
    fn begin(&self, rev: &Arc<Revision>) -> InFlight {
        rev.arrivals.fetch_add(1, Ordering::Relaxed);
        rev.inflight.fetch_add(1, Ordering::SeqCst);
        InFlight(rev.clone())
    }

    /// Waits for one of the node's run slots (`Policy::max_running`), first
    /// come first served, then takes a pre-restored VM if the pool has
    /// one. Bounding the VMs that run at once keeps an overload from
    /// restoring a VM per waiting request and thrashing the cores: the
    /// excess waits here and latency grows with the queue.
    async fn run_slot(
        &self,
        rev: &Arc<Revision>,
    ) -> (
        Option<tokio::sync::OwnedSemaphorePermit>,
        Option<flint_executor::ReadyVm>,
    ) {
        let slot = match self.running.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let n = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
                self.metrics
                    .set("flint_requests_waiting_for_vm", "", n as f64);
                // Dropped with the request if its client goes away.
                let _waiting = Waiting(self);
                self.running.clone().acquire_owned().await.ok()
            }
        };
        let warm = rev.take_warm();
        let start_kind = if warm.is_some() { "warm" } else { "cold" };
        self.metrics.inc(
            "flint_requests_total",
            &labels(&[("revision_name", &rev.name), ("start", start_kind)]),
            1.0,
        );
        (slot, warm)
    }

    /// The function's own answer, as queue-proxy counts it.
    fn app_metrics(&self, rev: &Arc<Revision>, code: &str, started: Instant) {
        let l = labels(&[("revision_name", &rev.name), ("response_code", code)]);
        self.metrics.inc("revision_app_request_count", &l, 1.0);
        self.metrics.observe_ms(
            "revision_app_request_latencies",
            &l,
            started.elapsed().as_secs_f64() * 1e3,
        );
    }

    /// Runs one invocation of `rev` in a fresh VM (a pre-restored one from
    /// the pool if there is one, else restored now): `env` and `stdin` in,
    /// its CGI response out, or the error response to send.
    async fn run_function(
        &self,
        rev: &Arc<Revision>,
        request_id: &str,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
    ) -> Result<cgi::Response, Response<Body>> {
        if let Some(linux) = &rev.linux {
            return self
                .run_linux(rev, linux.clone(), request_id, env, stdin)
                .await;
        }
        let Some(invocation) = module_invocation(rev, env) else {
            return Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the revision has no function",
            ));
        };
        let timeout = first_byte_timeout(rev);
        let rev2 = rev.clone();
        let started = Instant::now();
        let inflight = self.begin(rev);
        let (slot, warm) = self.run_slot(rev).await;
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut io = CappedIo::new(stdin);
            let r = ready_vm(&rev2, warm).and_then(|(vm, restore)| {
                let (report, reset) =
                    run_and_recycle(&rev2, vm, &invocation, &mut io, Some(timeout), None)?;
                Ok((report, restore, reset))
            });
            (r, io)
        });
        // A little grace beyond the VM's own limit, which stops it.
        let waited = tokio::time::timeout(timeout + Duration::from_millis(500), job).await;
        drop(inflight);
        let (result, io) = match waited {
            Err(_) => return Err(timeout_response(timeout)),
            Ok(Err(e)) => {
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the invocation task failed: {e}"),
                ))
            }
            Ok(Ok(o)) => o,
        };
        log_stderr(&rev.name, request_id, &io.stderr);
        match result {
            Ok((report, restore, reset)) => {
                self.observe_vm_latencies(rev, restore, reset);
                let result = if report.exit_code != 0 {
                    Err(text(
                        StatusCode::BAD_GATEWAY,
                        format!("the function exited with status {}", report.exit_code),
                    ))
                } else {
                    cgi::parse_response(&io.stdout)
                        .map_err(|e| text(StatusCode::BAD_GATEWAY, e.to_string()))
                };
                // The status the function's own answer has (as queue-proxy
                // counts it): its CGI status, or 502 when it gave none.
                let code = match &result {
                    Ok(r) => r.status.to_string(),
                    Err(r) => r.status().as_u16().to_string(),
                };
                self.app_metrics(rev, &code, started);
                result
            }
            Err(e) => Err(run_error_response(e, timeout)),
        }
    }
}

impl Gateway {
    /// Runs one request of a Linux function and collects its whole
    /// response (for CloudEvents, whose reply is read whole): a fresh VM
    /// boots its program with the CGI environment, the body on stdin.
    async fn run_linux(
        &self,
        rev: &Arc<Revision>,
        f: crate::registry::LinuxFunction,
        request_id: &str,
        env: Vec<(String, String)>,
        stdin: Vec<u8>,
    ) -> Result<cgi::Response, Response<Body>> {
        let timeout = first_byte_timeout(rev);
        let started = Instant::now();
        let inflight = self.begin(rev);
        let (slot, _) = self.run_slot(rev).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let abort = Arc::new(AtomicBool::new(false));
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            crate::linux::run(&f, env, &stdin, timeout, tx, &abort)
        });
        // At most MAX_RESPONSE_BYTES arrive: past that the run is stopped.
        let mut stdout = Vec::new();
        while let Some(c) = rx.recv().await {
            stdout.extend_from_slice(&c);
        }
        let r = job.await;
        drop(inflight);
        let end = match r {
            Ok(Ok(end)) => end,
            Ok(Err(e)) => {
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("running the function failed: {e}"),
                ))
            }
            Err(e) => {
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the invocation task failed: {e}"),
                ))
            }
        };
        log_stderr(&rev.name, request_id, &end.stderr);
        let result = match Ended::of_linux(end.outcome) {
            Ended::Exited { code: 0, .. } => cgi::parse_response(&stdout)
                .map_err(|e| text(StatusCode::BAD_GATEWAY, e.to_string())),
            Ended::Exited { code, .. } => Err(text(
                StatusCode::BAD_GATEWAY,
                format!("the function exited with status {code}"),
            )),
            Ended::Timeout => Err(timeout_response(timeout)),
            Ended::Failed(code, why) => Err(text(code, why)),
        };
        let code = match &result {
            Ok(r) => r.status.to_string(),
            Err(r) => r.status().as_u16().to_string(),
        };
        self.app_metrics(rev, &code, started);
        result
    }
}

/// How a run whose output streamed ended.
#[derive(Debug)]
enum Ended {
    /// The function exited with `code`; its VM took `restore` to restore
    /// (if it was not warm) and `reset` to reset afterwards (if kept).
    Exited {
        code: i32,
        restore: Option<Duration>,
        reset: Option<Duration>,
    },
    Timeout,
    /// It failed before exiting: the response to send if nothing was.
    Failed(StatusCode, String),
}

impl Ended {
    fn of_module(
        r: Result<
            (
                flint_executor::RunReport,
                Option<Duration>,
                Option<Duration>,
            ),
            SnapshotError,
        >,
    ) -> Self {
        match r {
            Ok((report, restore, reset)) => Self::Exited {
                code: report.exit_code,
                restore,
                reset,
            },
            Err(SnapshotError::Run(RunError::Timeout(_))) => Self::Timeout,
            Err(SnapshotError::Run(RunError::Trap(t))) => Self::Failed(
                StatusCode::BAD_GATEWAY,
                format!("the function trapped: {t}"),
            ),
            Err(e) => Self::Failed(StatusCode::BAD_GATEWAY, error_chain(&e)),
        }
    }

    fn of_linux(r: Result<flint_linux::Outcome, flint_linux::LinuxError>) -> Self {
        match r {
            Ok(o) => Self::Exited {
                code: o.status.code(),
                restore: None,
                reset: None,
            },
            Err(flint_linux::LinuxError::Timeout) => Self::Timeout,
            Err(e) => Self::Failed(StatusCode::BAD_GATEWAY, error_chain(&e)),
        }
    }

    fn joined(r: Result<Self, tokio::task::JoinError>) -> Self {
        r.unwrap_or_else(|e| {
            Self::Failed(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the invocation task failed: {e}"),
            )
        })
    }
}

/// A new request id: time and a process-wide counter, as hex.
fn new_request_id() -> String {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{t:016x}-{:08x}", N.fetch_add(1, Ordering::Relaxed))
}

use crate::stream::{StderrLog, MAX_RESPONSE_BYTES, MAX_STDERR_LOG};

/// A function's streams for one request, bounded: stdin from the body,
/// stdout up to `MAX_RESPONSE_BYTES` (then the write fails and the VM
/// ends), stderr's first `MAX_STDERR_LOG` bytes kept and the rest only
/// counted, so a function flooding either cannot grow the gateway.
#[derive(Debug)]
struct CappedIo {
    stdin: std::io::Cursor<Vec<u8>>,
    stdout: Vec<u8>,
    stderr: StderrLog,
}

impl CappedIo {
    fn new(stdin: Vec<u8>) -> Self {
        Self {
            stdin: std::io::Cursor::new(stdin),
            stdout: Vec::new(),
            stderr: StderrLog::default(),
        }
    }
}

impl flint_executor::GuestIo for CappedIo {
    fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.stdout.len() + data.len() > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other(format!(
                "the response is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        self.stdout.extend_from_slice(data);
        Ok(())
    }
    fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stderr.push(data);
        Ok(())
    }
    fn stdin(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut self.stdin, buf)
    }
}

/// Logs a function's stderr as data: under its revision and request id,
/// escaped (`{:?}`: no control characters or terminal escapes reach the
/// log, and a line of it cannot pass for one of the gateway's), and cut at
/// `MAX_STDERR_LOG` bytes.
fn log_stderr(revision: &str, request_id: &str, stderr: &StderrLog) {
    if stderr.kept.is_empty() {
        return;
    }
    let shown = &stderr.kept[..stderr.kept.len().min(MAX_STDERR_LOG)];
    tracing::info!(
        revision = %revision,
        request_id = %request_id,
        bytes = stderr.total,
        truncated = stderr.total > shown.len(),
        stderr = ?String::from_utf8_lossy(shown),
        "function stderr"
    );
}

/// The invocation of a module revision's function: the module's name and
/// the manifest's args, `env`.
fn module_invocation(rev: &Revision, env: Vec<(String, String)>) -> Option<Invocation> {
    let snapshot = rev.snapshot.as_ref()?;
    let mut args = vec![snapshot.module_name().to_string()];
    args.extend(rev.service.args.iter().cloned());
    Some(Invocation { args, env })
}

/// How long a function has to write its first byte (a buffered response's
/// whole run): `responseStartTimeoutSeconds` if shorter, else
/// `timeoutSeconds`.
fn first_byte_timeout(rev: &Revision) -> Duration {
    match rev.service.response_start_timeout {
        Some(t) => t.min(rev.service.timeout),
        None => rev.service.timeout,
    }
}

/// A VM for one request of a module revision: the warm one restored ahead
/// of time, or one restored now (scale from zero: the request waits, it is
/// not dropped) with how long that took.
fn ready_vm(
    rev: &Revision,
    warm: Option<flint_executor::ReadyVm>,
) -> Result<(flint_executor::ReadyVm, Option<Duration>), SnapshotError> {
    if let Some(vm) = warm {
        return Ok((vm, None));
    }
    let started = Instant::now();
    rev.snapshot
        .as_ref()
        .expect("a module revision")
        .restore()
        .map(|vm| (vm, Some(started.elapsed())))
}

/// Runs `invocation` in `vm`, then, when it ended cleanly (exit 0) and
/// the revision does not ask for `flint.dev/isolation: request`, resets the
/// VM to the snapshot in place and gives it back to the revision's pool for
/// a later request (`Snapshot::reset`: nothing of this run survives). A VM
/// whose run failed, or whose reset failed, is dropped. Returns how long
/// the reset took, if there was one.
fn run_and_recycle(
    rev: &Revision,
    mut vm: flint_executor::ReadyVm,
    invocation: &Invocation,
    io: &mut dyn flint_executor::GuestIo,
    timeout: Option<Duration>,
    abort: Option<&AtomicBool>,
) -> Result<(flint_executor::RunReport, Option<Duration>), SnapshotError> {
    let report = vm
        .invoke_in_place(invocation, io, timeout, abort)
        .map_err(SnapshotError::Run)?;
    if report.exit_code != 0 || rev.service.isolation == crate::manifest::Isolation::Request {
        return Ok((report, None));
    }
    let started = Instant::now();
    match rev
        .snapshot
        .as_ref()
        .expect("a module revision")
        .reset(&mut vm)
    {
        Ok(_) => {
            rev.pool.lock().unwrap_or_else(|e| e.into_inner()).push(vm);
            Ok((report, Some(started.elapsed())))
        }
        Err(e) => {
            tracing::warn!(revision = %rev.name, "a VM could not be reset, so it is dropped: {}", error_chain(&e));
            Ok((report, None))
        }
    }
}

/// The response to a run that failed before answering.
fn run_error_response(e: SnapshotError, timeout: Duration) -> Response<Body> {
    match e {
        SnapshotError::Run(RunError::Timeout(_)) => timeout_response(timeout),
        SnapshotError::Run(RunError::Trap(t)) => text(
            StatusCode::BAD_GATEWAY,
            format!("the function trapped: {t}"),
        ),
        e => text(StatusCode::BAD_GATEWAY, error_chain(&e)),
    }
}

fn timeout_response(t: Duration) -> Response<Body> {
    text(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "the function did not respond within {} s (timeoutSeconds)",
            t.as_secs()
        ),
    )
}

fn cgi_response(r: cgi::Response) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(r.body)));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// The admin port: `/healthz`, `/readyz`, `/metrics`, and the admin API
/// that `flint apply`, `flint delete` and `flint list` use:
/// `POST /apis/services` (a manifest), `GET /apis/services`,
/// `GET /apis/services/NAMESPACE/NAME` (the Service with its Knative
/// status), `DELETE /apis/services/NAMESPACE/NAME`.
/// Which port a request came in on, and so what it may do.
#[derive(Debug, Clone)]
enum Port {
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

async fn admin(gw: Arc<Gateway>, req: Request<Incoming>, port: Port) -> Response<Body> {
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
            gw.metrics.set_counter(
                "flint_seccomp_refused_calls_total",
                "",
                flint_executor::seccomp::refused_calls() as f64,
            );
            let mut r = Response::new(full(Bytes::from(gw.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
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

/// How long a client may take to send a request's header block (and how
/// long an idle keep-alive connection is kept waiting for the next one).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once: under the process's fd limit, leaving room
/// for VMs, files and the admin port.
fn max_connections() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `r`.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    };
    (soft.saturating_sub(256) as usize).clamp(16, 16_384)
}

/// The HTTP/1.1 connection settings: a header read timeout (slow and idle
/// clients are closed).
fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b
}

/// The data plane's connections: HTTP/1.1, and HTTP/2 with prior
/// knowledge on the same port (as Knative's ingresses serve), told apart
/// by the connection's first bytes, or by an h2c upgrade (`h2c`); the same
/// header read timeout.
fn data_plane() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Some(H2_KEEPALIVE));
    b
}

const H2_MAX_STREAMS: u32 = 256;
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// Serves a connection upgraded to h2c (HTTP/2 from stream 1, the request
/// that asked for it) with the data plane's HTTP/2 settings, watched by
/// the gateway's drain as other connections are.
async fn serve_h2c(
    gw: Arc<Gateway>,
    remote: SocketAddr,
    up: h2c::Upgrade,
    watcher: Option<hyper_util::server::graceful::Watcher>,
) {
    let Some(io) = h2c::connection(up, HEADER_READ_TIMEOUT).await else {
        return;
    };
    let svc = service_fn(move |req| {
        let gw = gw.clone();
        async move { Ok::<_, Infallible>(gw.handle(req, remote).await) }
    });
    let mut b = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Some(H2_KEEPALIVE));
    let conn = b.serve_connection(io, svc);
    match watcher {
        Some(w) => {
            let _ = w.watch(conn).await;
        }
        None => {
            let _ = conn.await;
        }
    }
}

/// Accepts a connection; when the process is out of fds (EMFILE, ENFILE)
/// or memory, waits a moment instead of retrying at once, so the loop
/// never spins and service resumes when fds free up.
async fn accept(l: &TcpListener) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match l.accept().await {
        Ok(c) => {
            // A streamed response is written in pieces (head, chunks):
            // without TCP_NODELAY, Nagle's algorithm holds each small write
            // back for the client's delayed ACK, about 40 ms.
            let _ = c.0.set_nodelay(true);
            Some(c)
        }
        Err(e) => {
            let transient = matches!(
                e.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            );
            if transient {
                tracing::warn!("accept failed ({e}); backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }
    }
}

/// Serves the data plane on `listener` (and the admin port on `admin`)
/// until `shutdown` resolves; then stops accepting, lets in-flight requests
/// finish, and returns.
pub async fn serve(
    gw: Arc<Gateway>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_with_admin(gw, listener, admin_listener, None, shutdown).await
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
fn spawn_admin(gw: Arc<Gateway>, limit: Arc<tokio::sync::Semaphore>, l: AdminListener, port: Port) {
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

/// Serves the data plane on `listener`, health and metrics on
/// `metrics_listener`, and the admin API on `admin_api`, until `shutdown`
/// resolves; then stops accepting, lets in-flight requests finish, and
/// returns.
pub async fn serve_with_admin(
    gw: Arc<Gateway>,
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    admin_api: Option<AdminListener>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(max_connections()));
    if let Some(l) = admin_listener {
        spawn_admin(
            gw.clone(),
            limit.clone(),
            AdminListener::Tcp(l, None),
            Port::Metrics,
        );
    }
    if let Some(a) = admin_api {
        let token = match &a {
            AdminListener::Tcp(_, t) => t.clone(),
            AdminListener::Unix(_) => None,
        };
        spawn_admin(gw.clone(), limit.clone(), a, Port::Admin(token));
    }
    let scaler = tokio::spawn(autoscale(gw.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            permit = limit.clone().acquire_owned() => {
                let Ok(permit) = permit else { break };
                let accepted = tokio::select! {
                    a = accept(&listener) => a,
                    _ = &mut shutdown => break,
                };
                let Some((stream, remote)) = accepted else { continue };
                let gw = gw.clone();
                // An h2c upgrade hands the connection on to an HTTP/2
                // server, which the drain watches with this.
                let upgraded = Arc::new(std::sync::Mutex::new(Some(graceful.watcher())));
                let svc = service_fn(move |mut req| {
                    let (gw, upgraded) = (gw.clone(), upgraded.clone());
                    async move {
                        if let Some(up) = h2c::take(&mut req) {
                            let w = upgraded.lock().unwrap_or_else(|e| e.into_inner()).take();
                            tokio::spawn(serve_h2c(gw, remote, up, w));
                            return Ok::<_, Infallible>(h2c::switching());
                        }
                        Ok(gw.handle(req, remote).await)
                    }
                });
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    // A client that sends nothing at all is closed as one
                    // that sends too little (the protocol is chosen from
                    // the first bytes, before HTTP/1's own timer runs).
                    let mut first = [0u8; 1];
                    if !matches!(tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                    let builder = data_plane();
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    gw.draining.store(true, Ordering::SeqCst);
    drop(listener);
    graceful.shutdown().await;
    scaler.abort();
    for rev in gw.registry.routed_revisions() {
        rev.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Gives the revision `containerConcurrency` slots for each of its
/// `desired` instances (at least one instance's).
fn resize_slots(rev: &Revision, desired: u32) {
    let Some(slots) = &rev.slots else { return };
    let cc = rev.service.container_concurrency as usize;
    let want = cc * desired.max(1) as usize;
    let have = rev.capacity.load(Ordering::SeqCst);
    if want > have {
        slots.add_permits(want - have);
        rev.capacity.store(want, Ordering::SeqCst);
    } else if want < have {
        // Only free slots can go; the rest go as requests finish, later.
        let gone = slots.forget_permits(have - want);
        rev.capacity.store(have - gone, Ordering::SeqCst);
    }
}

/// The autoscaler's loop: every tick, for every routed revision, sample its
/// load, decide its scale (KPA), and restore or drop idle instances so
/// that in-use plus idle matches it.
async fn autoscale(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(crate::autoscaler::TICK);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for rev in gw.registry.routed_revisions() {
            let inflight = rev.inflight.load(Ordering::SeqCst);
            // Requests count from their arrival, queued ones included, as
            // Knative's autoscaler sees them.
            let queued = rev.queued.load(Ordering::SeqCst);
            let arrivals = rev.arrivals.swap(0, Ordering::Relaxed);
            let desired = {
                let mut kpa = rev.kpa.lock().unwrap_or_else(|e| e.into_inner());
                let load = match kpa.metric() {
                    crate::manifest::Metric::Concurrency => (inflight + queued) as f64,
                    crate::manifest::Metric::Rps => {
                        arrivals as f64 / crate::autoscaler::TICK.as_secs_f64()
                    }
                };
                kpa.tick(now, load)
            };
            rev.desired.store(desired, Ordering::SeqCst);
            resize_slots(&rev, desired);
            let want_idle = (desired as usize).saturating_sub(inflight);
            let idle = rev.idle();
            let restoring = rev.restoring.load(Ordering::SeqCst);
            if idle > want_idle {
                let mut pool = rev.pool.lock().unwrap_or_else(|e| e.into_inner());
                let keep = pool.len().min(want_idle);
                pool.truncate(keep);
            } else {
                for _ in idle + restoring..want_idle {
                    rev.restoring.fetch_add(1, Ordering::SeqCst);
                    let r = rev.clone();
                    let metrics = gw.clone();
                    tokio::task::spawn_blocking(move || {
                        let Some(snapshot) = &r.snapshot else {
                            r.restoring.fetch_sub(1, Ordering::SeqCst);
                            return;
                        };
                        let t0 = Instant::now();
                        let restored = snapshot.restore();
                        // Restores for the pool are restores too.
                        metrics.metrics.observe_ms(
                            "flint_restore_latencies",
                            &labels(&[("revision_name", &r.name)]),
                            t0.elapsed().as_secs_f64() * 1e3,
                        );
                        match restored {
                            Ok(vm) => r.pool.lock().unwrap_or_else(|e| e.into_inner()).push(vm),
                            Err(e) => {
                                tracing::warn!(revision = %r.name, "pre-restoring an instance failed: {e}")
                            }
                        }
                        r.restoring.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
            let l = |state: &str| labels(&[("revision_name", &rev.name), ("state", state)]);
            gw.metrics
                .set("flint_instances", &l("idle"), rev.idle() as f64);
            gw.metrics
                .set("flint_instances", &l("active"), inflight as f64);
            gw.metrics.set(
                "flint_autoscaler_desired_scale",
                &labels(&[("revision_name", &rev.name)]),
                desired as f64,
            );
        }
    }
}
