//! The function: a request run as a CGI invocation (RFC 3875, with
//! Flint's contract in docs/function-contract.md) in a VM of its revision
//! (a module's, restored from its snapshot or reset in place; a Linux
//! program's, booted), and its response streamed (`stream.rs`) as the
//! function writes it, under Knative's first-byte, idle and whole-run
//! timeouts. Every run waits for one of the node's run slots first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flint_executor::{Invocation, RunError};
use flint_snapshotter::SnapshotError;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, StatusCode};

use super::events::EventEnv;
use super::{full, text, Body, Remote};
use crate::cgi;
use crate::metrics::Metrics;
use crate::registry::{error_chain, Revision};
use crate::server::Gateway;
use crate::stream::{StderrLog, MAX_STDERR_LOG};

/// Runs requests ([`Function::call`]).
#[derive(Debug, Clone)]
pub struct Function {
    gw: Arc<Gateway>,
}

impl Function {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

impl tower::Service<Request<Bytes>> for Function {
    super::answers!();

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Some(rev) = req.extensions().get::<Arc<Revision>>().cloned() else {
                return Ok(super::no_revision());
            };
            let env = environment(&req, &rev);
            let id = super::request_id::of(&req).to_string();
            let stdin = req.into_body().to_vec();
            Ok(this.run_streaming(&rev, &id, env, stdin).await)
        })
    }
}

/// The request's CGI environment: the meta-variables of `cgi::environment`
/// (the gateway's `Forwarded` and `X-Forwarded-*` added as a proxy adds
/// itself), the manifest's `env`, and an event's `CE_*` variables.
fn environment(req: &Request<Bytes>, rev: &Revision) -> Vec<(String, String)> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (server_name, server_port) = match host.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(80)),
        None => (host.to_string(), 80),
    };
    let remote_addr = req
        .extensions()
        .get::<Remote>()
        .map(|r| r.0.ip().to_string())
        .unwrap_or_default();
    // The gateway's X-Forwarded-Host and -Proto replace a client's; its
    // Forwarded and X-Forwarded-For entries are appended to the client's,
    // as a proxy appends itself (RFC 7239 4).
    let mut forwarded: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| k != "x-forwarded-host" && k != "x-forwarded-proto")
        .collect();
    forwarded.push((
        "forwarded".into(),
        format!("for={remote_addr};host={host};proto=http"),
    ));
    forwarded.push(("x-forwarded-for".into(), remote_addr.clone()));
    forwarded.push(("x-forwarded-host".into(), host.to_string()));
    forwarded.push(("x-forwarded-proto".into(), "http".into()));
    let mut env = cgi::environment(&cgi::Request {
        protocol: match req.version() {
            hyper::Version::HTTP_09 => "HTTP/0.9",
            hyper::Version::HTTP_10 => "HTTP/1.0",
            hyper::Version::HTTP_2 => "HTTP/2.0",
            hyper::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        },
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers: forwarded
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        body_len: req.body().len(),
        remote_addr: &remote_addr,
        server_name: &server_name,
        server_port,
        service: &rev.service.name,
        revision: &rev.name,
    });
    env.extend(rev.service.env.iter().cloned());
    if let Some(EventEnv(vars)) = req.extensions().get::<EventEnv>() {
        env.extend(vars.iter().cloned());
    }
    env
}

/// A request counted in its revision's in-flight number until dropped,
/// whichever way it ends (a client that goes away included).
pub(super) struct InFlight(Arc<Revision>);

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
        self.0.metrics.waiting_for_vm.set(n as i64);
    }
}

impl Function {
    /// Runs one invocation of a revision (a module, or a Linux program)
    /// and streams its response (`stream.rs`): the status and headers as
    /// soon as the function has written its header block, within the
    /// first-byte deadline; the body as it writes it, each gap within
    /// `idleTimeoutSeconds`; the whole run within Knative's maximum
    /// revision timeout.
    async fn run_streaming(
        self,
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
        let inflight = begin(rev);
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
                        match end.listened {
                            Some(port) => Ended::Failed(
                                StatusCode::BAD_GATEWAY,
                                format!("the program listens on port {port}, so it is a server, not a CGI program: declare the port in the container (ports: [{{containerPort: {port}}}]) to serve it as one"),
                            ),
                            None => Ended::of_linux(end.outcome),
                        }
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
        self,
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
                    app_metrics(&self.gw, rev, "504", started);
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
                app_metrics(&self.gw, rev, "502", started);
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
                app_metrics(&self.gw, rev, resp.status().as_str(), started);
                return resp;
            }
        };
        // Headers are out: the rest streams; how the run ends decides
        // whether the body ends cleanly.
        app_metrics(&self.gw, rev, &r.status.to_string(), started);
        let this = self.clone();
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
                    this.observe_vm_latencies(&rev3, restore, reset);
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
        let m = &self.gw.metrics;
        for (histogram, d) in [(&m.restore_latencies, restore), (&m.reset_latencies, reset)] {
            if let Some(d) = d {
                histogram
                    .with_label_values(&[&rev.name])
                    .observe(Metrics::ms(d));
            }
        }
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
        let slot = match self.gw.running.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let n = self.gw.waiting.fetch_add(1, Ordering::SeqCst) + 1;
                self.gw.metrics.waiting_for_vm.set(n as i64);
                // Dropped with the request if its client goes away.
                let _waiting = Waiting(&self.gw);
                self.gw.running.clone().acquire_owned().await.ok()
            }
        };
        let warm = rev.take_warm();
        let start_kind = if warm.is_some() { "warm" } else { "cold" };
        self.gw
            .metrics
            .requests
            .with_label_values(&[&rev.name, start_kind])
            .inc();
        (slot, warm)
    }
}

/// A request starts on `rev`: counted as it arrives (what the autoscaler
/// sees, waiting ones included) until the guard drops.
pub(super) fn begin(rev: &Arc<Revision>) -> InFlight {
    rev.arrivals.fetch_add(1, Ordering::Relaxed);
    rev.inflight.fetch_add(1, Ordering::SeqCst);
    InFlight(rev.clone())
}

/// The function's own answer, as queue-proxy counts it.
pub(super) fn app_metrics(gw: &Gateway, rev: &Arc<Revision>, code: &str, started: Instant) {
    let l = [rev.name.as_str(), code];
    let m = &gw.metrics;
    m.app_request_count.with_label_values(&l).inc();
    m.app_request_latencies
        .with_label_values(&l)
        .observe(Metrics::ms(started.elapsed()));
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

/// How long a function has to write its header block:
/// `responseStartTimeoutSeconds` if shorter, else `timeoutSeconds`.
pub(super) fn first_byte_timeout(rev: &Revision) -> Duration {
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

pub(super) fn timeout_response(t: Duration) -> Response<Body> {
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
