//! The gateway's connections (hyper 1.x on tokio): the data plane's
//! (HTTP/1.1, HTTP/2 by prior knowledge or h2c upgrade, each request
//! through the tower stack in `stack/`), the admin and metrics ports, the
//! drain, and the autoscaler's loop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use crate::admin::AdminListener;
use crate::admin::{spawn_admin, Port};
use crate::h2c;
use crate::metrics::Metrics;
use crate::registry::{Registry, Revision};
use crate::stack::{Body, DataPlane, Remote};
use tower::ServiceExt;

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
    pub(crate) inflight: AtomicUsize,
    pub(crate) draining: AtomicBool,
    /// The node's run slots (`Policy::max_running`) and the requests
    /// waiting for one.
    pub(crate) running: Arc<tokio::sync::Semaphore>,
    pub(crate) waiting: AtomicUsize,
}

impl Gateway {
    pub fn new(settings: Settings) -> Arc<Self> {
        let policy = settings.policy.clone();
        let max_running = policy.max_running.max(1);
        let metrics = Metrics::default();
        metrics.run_slots.set(max_running as i64);
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

    /// True once the gateway stopped accepting and drains what it has.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
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
pub(crate) fn http1() -> hyper::server::conn::http1::Builder {
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
    stack: DataPlane,
    remote: SocketAddr,
    up: h2c::Upgrade,
    watcher: Option<hyper_util::server::graceful::Watcher>,
) {
    let Some(io) = h2c::connection(up, HEADER_READ_TIMEOUT).await else {
        return;
    };
    let svc = connection_service(stack, remote);
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

/// The data plane's service for one connection from `remote`, as hyper
/// calls it.
fn connection_service(
    stack: DataPlane,
    remote: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| through(&stack, remote, req))
}

/// Runs `req`, from `remote`, through the stack.
fn through(
    stack: &DataPlane,
    remote: SocketAddr,
    mut req: Request<Incoming>,
) -> tower::util::Oneshot<DataPlane, Request<Incoming>> {
    req.extensions_mut().insert(Remote(remote));
    stack.clone().oneshot(req)
}

/// Accepts a connection; when the process is out of fds (EMFILE, ENFILE)
/// or memory, waits a moment instead of retrying at once, so the loop
/// never spins and service resumes when fds free up.
pub(crate) async fn accept(l: &TcpListener) -> Option<(tokio::net::TcpStream, SocketAddr)> {
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
    // One stack for every connection: each clones it.
    let stack = crate::stack::data_plane(gw.clone());
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
                let stack = stack.clone();
                // An h2c upgrade hands the connection on to an HTTP/2
                // server, which the drain watches with this.
                let upgraded = Arc::new(std::sync::Mutex::new(Some(graceful.watcher())));
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let (upgraded, stack) = (upgraded.clone(), stack.clone());
                    async move {
                        if let Some(up) = h2c::take(&mut req) {
                            let w = upgraded.lock().unwrap_or_else(|e| e.into_inner()).take();
                            tokio::spawn(serve_h2c(stack, remote, up, w));
                            return Ok::<_, Infallible>(h2c::switching());
                        }
                        through(&stack, remote, req).await
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
    for rev in gw.registry.revisions() {
        rev.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        rev.instances.stop_all();
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
/// load, decide its scale (KPA), and restore or drop idle VMs so that
/// in-use plus idle matches it (a Linux server's instances: start or stop
/// them, `instances::scale`).
async fn autoscale(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(crate::autoscaler::TICK);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let routed = gw.registry.routed_revisions();
        for rev in &routed {
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
            resize_slots(rev, desired);
            let (idle, active) = if rev.is_server() {
                crate::instances::scale(&gw, rev, desired as usize);
                rev.instances.counts()
            } else {
                keep_pool(&gw, rev, desired as usize, inflight);
                (rev.idle(), inflight)
            };
            let m = &gw.metrics;
            m.instances
                .with_label_values(&[&rev.name, "idle"])
                .set(idle as i64);
            m.instances
                .with_label_values(&[&rev.name, "active"])
                .set(active as i64);
            m.desired_scale
                .with_label_values(&[&rev.name])
                .set(desired as i64);
        }
        // A revision no route names any more (replaced, or its traffic
        // moved) keeps no idle servers.
        for rev in gw.registry.revisions() {
            if rev.is_server() && !routed.iter().any(|r| Arc::ptr_eq(r, &rev)) {
                crate::instances::scale(&gw, &rev, 0);
            }
        }
    }
}

/// Restores or drops a module revision's idle VMs so that in-use plus
/// idle matches `desired`.
fn keep_pool(gw: &Arc<Gateway>, rev: &Arc<Revision>, desired: usize, inflight: usize) {
    let want_idle = desired.saturating_sub(inflight);
    let idle = rev.idle();
    let restoring = rev.restoring.load(Ordering::SeqCst);
    if idle > want_idle {
        let mut pool = rev.pool.lock().unwrap_or_else(|e| e.into_inner());
        let keep = pool.len().min(want_idle);
        pool.truncate(keep);
        return;
    }
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
            metrics
                .metrics
                .restore_latencies
                .with_label_values(&[&r.name])
                .observe(Metrics::ms(t0.elapsed()));
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
