//! Linux revisions under Knative's container contract: a Linux image whose
//! container declares a port is a server, not a CGI program. Each of the
//! revision's instances is one long-lived VM running the image's program
//! with `PORT` (and `K_SERVICE`, `K_CONFIGURATION`, `K_REVISION`) set, as
//! Knative starts a user container; it is ready once a connection to its
//! port is accepted (Knative's default TCP readiness probe). Requests reach
//! it over connections the VM's loopback hands to the host
//! (`flint_linux::Port::connect`), kept open between requests
//! (`stack/proxy.rs` speaks HTTP over them). The autoscaler starts and
//! stops instances as it does a module's pooled VMs ([`scale`]); a
//! request that finds none starts one and waits for it (scale from
//! zero). The program's stdout and stderr are logged as data, line by
//! line, up to `MAX_LOG_BYTES` per instance. An instance whose program
//! exits is dropped; one dropped by the gateway gets SIGTERM, as a pod's
//! container does, and SIGKILL after `STOP_GRACE`.

use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::linux::{SIGKILL_BIT, SIGTERM_BIT};
use crate::registry::{LinuxFunction, Revision};
use crate::server::Gateway;

/// How long a server may take from its start to listening.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// How long the VM may take to hand over a connection to its port.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// Most of an instance's stdout and stderr logged (each); the rest is
/// counted.
pub const MAX_LOG_BYTES: usize = 1 << 20;
/// Longest line logged as one; longer ones are cut into pieces.
const MAX_LINE: usize = 4096;
/// Most idle connections kept per instance (a burst's extra ones close).
const MAX_KEPT: usize = 32;
/// How long a stopped instance's program has from SIGTERM to its end
/// before SIGKILL (a pod's `terminationGracePeriodSeconds`, shorter: a
/// scaled-down instance holds its memory until then).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why an instance did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("setting up the server's standard streams failed")]
    Stdio(#[source] std::io::Error),
    #[error("cannot start the server")]
    Linux(#[source] flint_linux::LinuxError),
    #[error("the server ended ({0}) before it listened on port {1}")]
    Exited(String, u16),
    #[error("the server did not listen on port {0} within {1} s")]
    Timeout(u16, u64),
}

/// A connection to an instance's server, kept between requests.
#[derive(Debug)]
pub enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    /// HTTP/2 with prior knowledge (a port named `h2c`): one connection
    /// carries every request to the instance.
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A failed send: the error, and the request if it was not written (so it
/// can go on another connection).
pub type SendError = (hyper::Error, Option<hyper::Request<Full<Bytes>>>);

impl Conn {
    async fn send(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, SendError> {
        let back = |mut e: hyper::client::conn::TrySendError<_>| {
            let req = e.take_message();
            (e.into_error(), req)
        };
        match self {
            Self::H1(s) => match s.ready().await {
                Ok(()) => s.try_send_request(req).await.map_err(back),
                Err(e) => Err((e, Some(req))),
            },
            Self::H2(s) => match s.ready().await {
                Ok(()) => s.try_send_request(req).await.map_err(back),
                Err(e) => Err((e, Some(req))),
            },
        }
    }

    /// Still open (a kept HTTP/1 connection becomes ready for the next
    /// request once its task has seen the last response end; `send` waits
    /// for that).
    fn usable(&self) -> bool {
        match self {
            Self::H1(s) => !s.is_closed(),
            Self::H2(s) => !s.is_closed(),
        }
    }
}

/// One instance: a VM running the revision's server.
#[derive(Debug)]
pub struct Instance {
    port: flint_linux::Port,
    listen: u16,
    /// The server speaks HTTP/2 with prior knowledge.
    h2c: bool,
    signals: Arc<AtomicU64>,
    /// How the program ended, once it has (set by its watcher thread).
    ended: Arc<Mutex<Option<String>>>,
    /// Requests it is serving now.
    active: AtomicUsize,
    /// Connections to it not in use.
    idle: Mutex<Vec<Conn>>,
    /// The thread that waits for the VM to end.
    watcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Nobody routes to it any more: its program gets SIGTERM, as a
        // pod's container does (it reaches process 1 if it handles it),
        // and SIGKILL once the grace period is over.
        self.signals.fetch_or(SIGTERM_BIT, Ordering::SeqCst);
        let (signals, ended) = (self.signals.clone(), self.ended.clone());
        let grace = std::thread::Builder::new()
            .name("flint-server-stop".into())
            .spawn(move || {
                let until = Instant::now() + STOP_GRACE;
                while Instant::now() < until {
                    if ended.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                signals.fetch_or(SIGKILL_BIT, Ordering::SeqCst);
            });
        if grace.is_err() {
            self.signals.fetch_or(SIGKILL_BIT, Ordering::SeqCst);
        }
    }
}

/// A request's place on an instance, until dropped.
#[derive(Debug)]
pub struct Active(pub Arc<Instance>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Instance {
    /// How the program ended, if it has.
    pub fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn claim(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self.clone())
    }

    /// Sends `req` to the server on a kept connection, or a new one; a
    /// kept one the server closed before the request was written (an idle
    /// keep-alive it timed out, say) is replaced by a new one for it, as
    /// hyper's own pooled client retries. The connection goes with the
    /// response, to be given back once its body has ended.
    pub async fn send(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(Conn, hyper::Response<hyper::body::Incoming>), String> {
        let failed = |e: &hyper::Error| crate::registry::error_chain(e);
        if let Some(mut kept) = self.kept() {
            match kept.send(req).await {
                Ok(resp) => return Ok((kept, resp)),
                Err((e, None)) => return Err(failed(&e)),
                Err((_, Some(req))) => {
                    let mut conn = self.connect().await.map_err(|e| e.to_string())?;
                    return match conn.send(req).await {
                        Ok(resp) => Ok((conn, resp)),
                        Err((e, _)) => Err(failed(&e)),
                    };
                }
            }
        }
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        match conn.send(req).await {
            Ok(resp) => Ok((conn, resp)),
            Err((e, _)) => Err(failed(&e)),
        }
    }

    /// A kept connection still open, if there is one.
    fn kept(&self) -> Option<Conn> {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(c) = idle.pop() {
                match c {
                    // Shared: it stays for the others.
                    Conn::H2(ref s) if c.usable() => {
                        let shared = Conn::H2(s.clone());
                        idle.push(c);
                        return Some(shared);
                    }
                    c if c.usable() => return Some(c),
                    _ => {}
                }
            }
        }
        None
    }

    /// A new connection to the server.
    async fn connect(&self) -> std::io::Result<Conn> {
        let (port, number) = (self.port.clone(), self.listen);
        let stream = tokio::task::spawn_blocking(move || port.connect(number, CONNECT_WAIT))
            .await
            .map_err(std::io::Error::other)??;
        stream.set_nonblocking(true)?;
        let io = TokioIo::new(tokio::net::UnixStream::from_std(stream)?);
        let fail = |e: hyper::Error| std::io::Error::other(e.to_string());
        if self.h2c {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(fail)?;
            tokio::spawn(conn);
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Conn::H2(s.clone()));
            return Ok(Conn::H2(s));
        }
        let (s, conn) = http1::handshake(io).await.map_err(fail)?;
        tokio::spawn(conn);
        Ok(Conn::H1(s))
    }

    /// Keeps `conn` for a later request (an HTTP/2 one is kept already),
    /// up to `MAX_KEPT` of them.
    pub fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(conn, Conn::H1(_)) && conn.usable() && idle.len() < MAX_KEPT {
            idle.push(conn);
        }
    }
}

/// A revision's template: its first ready instance, frozen, that later
/// instances are thawed from (`flint_linux::Port::freeze`).
#[derive(Debug, Default)]
enum Template {
    /// Not made yet, after this many tries that found the server busy.
    #[default]
    None,
    Tried(u32),
    Making,
    Ready(Arc<flint_linux::Template>),
    /// The revision's server cannot be frozen: every instance starts
    /// cold.
    Off,
}

/// How long a freeze waits for the server to close the readiness
/// probe's connection, and how many cold starts try.
const FREEZE_PATIENCE: Duration = Duration::from_millis(500);
const FREEZE_TRIES: u32 = 3;

/// A revision's running instances.
#[derive(Debug, Default)]
pub struct Instances {
    list: Mutex<Vec<Arc<Instance>>>,
    template: Mutex<Template>,
    /// Starts under way.
    starting: AtomicUsize,
    /// Held by a request starting an instance because none could take it:
    /// the others wait for that one instead of each starting their own.
    cold: tokio::sync::Mutex<()>,
}

impl Instances {
    fn alive(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Instance>>> {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|i| i.ended().is_none());
        list
    }

    /// A place on the least busy instance with room (fewer than `cc`
    /// requests; any, when `cc` is 0), or, with `take`, an idle instance
    /// removed from the list (it serves one request and goes).
    fn pick(&self, cc: u32, take: bool) -> Option<Active> {
        let mut list = self.alive();
        if take {
            let i = list
                .iter()
                .position(|i| i.active.load(Ordering::SeqCst) == 0)?;
            return Some(list.remove(i).claim());
        }
        let best = list
            .iter()
            .min_by_key(|i| i.active.load(Ordering::SeqCst))?;
        (cc == 0 || best.active.load(Ordering::SeqCst) < cc as usize).then(|| best.claim())
    }

    /// The template to thaw from, if there is one.
    fn template(&self) -> Option<Arc<flint_linux::Template>> {
        match &*self.template.lock().unwrap_or_else(|e| e.into_inner()) {
            Template::Ready(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// Freezes `i`, a cold-started ready instance, into the revision's
    /// template if it has none yet (blocking; `i` pauses while it is
    /// copied). The server may still hold the readiness probe's
    /// connection: the freeze is tried again until `FREEZE_PATIENCE`.
    pub fn make_template(&self, i: &Instance, revision: &str) {
        let tries = {
            let mut t = self.template.lock().unwrap_or_else(|e| e.into_inner());
            let tries = match *t {
                Template::None => 0,
                Template::Tried(n) => n,
                _ => return,
            };
            *t = Template::Making;
            tries
        };
        let until = Instant::now() + FREEZE_PATIENCE;
        let next = loop {
            match i.port.freeze(CONNECT_WAIT) {
                Ok(frozen) => {
                    tracing::info!(
                        revision = %revision,
                        bytes = frozen.memory_bytes(),
                        "server template made: later instances start from it"
                    );
                    break Template::Ready(Arc::new(frozen));
                }
                Err(flint_linux::LinuxError::FreezeBusy(_)) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(flint_linux::LinuxError::FreezeBusy(_)) if tries + 1 < FREEZE_TRIES => {
                    break Template::Tried(tries + 1);
                }
                Err(e) => {
                    tracing::info!(revision = %revision, "no server template, instances start cold: {}", crate::registry::error_chain(&e));
                    break Template::Off;
                }
            }
        };
        *self.template.lock().unwrap_or_else(|e| e.into_inner()) = next;
    }

    pub fn add(&self, i: Arc<Instance>) {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).push(i);
    }

    /// (idle, busy) instances.
    pub fn counts(&self) -> (usize, usize) {
        let list = self.alive();
        let busy = list
            .iter()
            .filter(|i| i.active.load(Ordering::SeqCst) > 0)
            .count();
        (list.len() - busy, busy)
    }

    /// Stops every instance not serving a request; the others go when
    /// their requests are done.
    pub fn stop_all(&self) {
        self.list.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Stops every instance and waits until their VMs have ended
    /// (blocking): before the process changes its user, say, which every
    /// thread must take part in, and a VM's filtered threads cannot.
    pub fn stop_and_wait(&self) {
        let list = std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()));
        for i in list {
            i.signals.fetch_or(SIGKILL_BIT, Ordering::SeqCst);
            let watcher = i.watcher.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = watcher {
                let _ = w.join();
            }
        }
    }
}

/// Starts an instance of `f`, a revision `revision` of `service`
/// (blocking): the program with `PORT` set, until it is ready: its port
/// accepts a connection and, given a `readiness` path, a GET of it
/// answers 200 to 399 (the readiness probe's `httpGet`).
pub fn start(
    f: &LinuxFunction,
    listen: u16,
    h2c: bool,
    readiness: Option<&str>,
    service: &str,
    revision: &str,
) -> Result<Arc<Instance>, StartError> {
    let mut env = f.env.clone();
    let knative = [
        ("PORT", listen.to_string()),
        ("K_SERVICE", service.to_string()),
        ("K_CONFIGURATION", service.to_string()),
        ("K_REVISION", revision.to_string()),
    ];
    for (k, v) in knative {
        env.retain(|(x, _)| x != k);
        env.push((k.to_string(), v));
    }
    let program = flint_linux::Program {
        path: f.path.clone(),
        argv: f.argv.clone(),
        env,
        workdir: f.workdir.clone(),
    };
    let instance = launch(f, listen, h2c, revision, |config, stdio| {
        flint_linux::start(config, &f.root, &program, Some(stdio))
    })?;
    let deadline = Instant::now() + STARTUP_LIMIT;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(why) = instance.ended() {
            return Err(StartError::Exited(why, listen));
        }
        // Knative's default readiness probe: a TCP connection accepted.
        if let Ok(probe) = instance.port.connect(listen, CONNECT_WAIT) {
            match readiness {
                None => return Ok(instance),
                Some(path) if http_ready(probe, path) => return Ok(instance),
                Some(_) => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(StartError::Timeout(listen, STARTUP_LIMIT.as_secs()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Starts an instance from `template`, a frozen ready instance of the
/// same revision (blocking): it listens already, so it is ready as soon
/// as it runs.
pub fn thaw(
    f: &LinuxFunction,
    listen: u16,
    h2c: bool,
    revision: &str,
    template: &Arc<flint_linux::Template>,
) -> Result<Arc<Instance>, StartError> {
    let instance = launch(f, listen, h2c, revision, |config, stdio| {
        flint_linux::thaw(config, template, Some(stdio))
    })?;
    match instance.ended() {
        Some(why) => Err(StartError::Exited(why, listen)),
        None => Ok(instance),
    }
}

/// The VM of a new instance, made by `make` with the instance's limits
/// and streams (stdout and stderr logged), and its watcher.
fn launch(
    f: &LinuxFunction,
    listen: u16,
    h2c: bool,
    revision: &str,
    make: impl FnOnce(
        &flint_linux::Config,
        flint_linux::Stdio,
    ) -> Result<flint_linux::Container, flint_linux::LinuxError>,
) -> Result<Arc<Instance>, StartError> {
    let (out_r, out_w) = crate::linux::pipe().map_err(StartError::Stdio)?;
    let (err_r, err_w) = crate::linux::pipe().map_err(StartError::Stdio)?;
    let stdio = flint_linux::Stdio {
        stdin: crate::linux::memfd("flint-stdin")
            .map_err(StartError::Stdio)?
            .into(),
        stdout: out_w,
        stderr: err_w,
    };
    for (reader, stream) in [(out_r, "stdout"), (err_r, "stderr")] {
        let revision = revision.to_string();
        std::thread::Builder::new()
            .name(format!("flint-log-{stream}"))
            .spawn(move || log_lines(reader, &revision, stream))
            .map_err(StartError::Stdio)?;
    }
    let signals = Arc::new(AtomicU64::new(0));
    let config = flint_linux::Config {
        memory_mib: f.memory_mib,
        timeout: None,
        signals: Some(signals.clone()),
        ..flint_linux::Config::default()
    };
    let container = make(&config, stdio).map_err(StartError::Linux)?;
    let instance = Arc::new(Instance {
        port: container.port(),
        listen,
        h2c,
        signals,
        ended: Arc::default(),
        active: AtomicUsize::new(0),
        idle: Mutex::new(Vec::new()),
        watcher: Mutex::new(None),
    });
    let (ended, name) = (instance.ended.clone(), revision.to_string());
    let watcher = std::thread::Builder::new()
        .name("flint-server-watch".into())
        .spawn(move || {
            let why = match container.wait() {
                Ok(o) if o.oom => "killed: out of memory".to_string(),
                Ok(o) => match o.status {
                    flint_linux::ExitStatus::Exited(c) => format!("exit status {c}"),
                    flint_linux::ExitStatus::Signaled { signal, .. } => {
                        format!("killed by signal {signal}")
                    }
                },
                Err(e) => crate::registry::error_chain(&e),
            };
            tracing::info!(revision = %name, "a server instance ended: {why}");
            *ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        })
        .map_err(StartError::Stdio)?;
    *instance.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(watcher);
    Ok(instance)
}

/// True when a GET of `path` over `conn` answers 200 to 399 within
/// `CONNECT_WAIT` (the kubelet's rule for an HTTP probe).
fn http_ready(mut conn: std::os::unix::net::UnixStream, path: &str) -> bool {
    use std::io::Write;
    let _ = conn.set_read_timeout(Some(CONNECT_WAIT));
    let _ = conn.set_write_timeout(Some(CONNECT_WAIT));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: flint-probe\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut resp = httparse::Response::new(&mut headers);
    // The status line is all it needs (too few header slots is fine).
    let _ = resp.parse(&head);
    resp.code.is_some_and(|c| (200..400).contains(&c))
}

/// Logs what a server writes on `stream`, a line each, escaped (a line
/// cannot pass for the gateway's own), `MAX_LOG_BYTES` at most.
fn log_lines(mut r: std::fs::File, revision: &str, stream: &str) {
    let mut buf = vec![0u8; 16 << 10];
    let (mut line, mut logged, mut dropped) = (Vec::new(), 0usize, 0usize);
    let emit = |line: &mut Vec<u8>, logged: &mut usize, dropped: &mut usize| {
        if line.is_empty() {
            return;
        }
        if *logged + line.len() > MAX_LOG_BYTES {
            *dropped += line.len();
        } else {
            *logged += line.len();
            tracing::info!(revision = %revision, stream, line = ?String::from_utf8_lossy(line), "server output");
        }
        line.clear();
    };
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for &b in &buf[..n] {
                    if b == b'\n' {
                        emit(&mut line, &mut logged, &mut dropped);
                    } else {
                        line.push(b);
                        if line.len() >= MAX_LINE {
                            emit(&mut line, &mut logged, &mut dropped);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    emit(&mut line, &mut logged, &mut dropped);
    if dropped > 0 {
        tracing::info!(revision = %revision, stream, bytes = dropped, "server output not logged (over the cap)");
    }
}

/// A start under way, counted in `Instances::starting` until dropped.
struct Starting(Arc<Revision>);

impl Starting {
    fn new(rev: &Arc<Revision>) -> Self {
        rev.instances.starting.fetch_add(1, Ordering::SeqCst);
        Self(rev.clone())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.instances.starting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts an instance on the blocking pool, added to its revision's list
/// once it listens if `keep` (even if the request that asked for it is
/// gone).
async fn start_for(
    gw: &Arc<Gateway>,
    starting: Starting,
    keep: bool,
) -> Result<Arc<Instance>, StartError> {
    let gw = gw.clone();
    let r = tokio::task::spawn_blocking(move || {
        let rev = &starting.0;
        let started = Instant::now();
        let r = boot(rev);
        if let Ok((i, from)) = &r {
            gw.metrics
                .start_latencies
                .with_label_values(&[&rev.name])
                .observe(crate::metrics::Metrics::ms(started.elapsed()));
            gw.metrics
                .server_starts
                .with_label_values(&[rev.name.as_str(), from])
                .inc();
            if keep {
                rev.instances.add(i.clone());
            }
        }
        r.map(|(i, _)| i)
    })
    .await;
    r.unwrap_or_else(|e| Err(StartError::Stdio(std::io::Error::other(e))))
}

/// Boots an instance of a server revision (blocking): from the
/// revision's template if it has one, else cold, and then, under
/// `flint.dev/snapshot: "true"`, the first ready cold instance becomes
/// the template. Returns how it started: `template` or `cold`.
pub fn boot(rev: &Revision) -> Result<(Arc<Instance>, &'static str), StartError> {
    let f = rev.linux.as_ref().expect("a Linux revision");
    let port = rev.service.port.expect("a server revision");
    if let Some(t) = rev.instances.template() {
        match thaw(f, port.number, port.h2c, &rev.name, &t) {
            Ok(i) => return Ok((i, "template")),
            Err(e) => {
                tracing::warn!(revision = %rev.name, "thawing the server's template failed, starting cold: {}", crate::registry::error_chain(&e))
            }
        }
    }
    let i = start(
        f,
        port.number,
        port.h2c,
        rev.service.readiness_path.as_deref(),
        &rev.service.name,
        &rev.name,
    )?;
    if rev.service.snapshot {
        rev.instances.make_template(&i, &rev.name);
    }
    Ok((i, "cold"))
}

/// A place on an instance of `rev` for one request, and whether one was
/// running for it (`warm`) or it waited for one to start (`cold`). Under
/// `flint.dev/isolation: request` the instance is the request's alone
/// (an idle one taken off the list, or a new one) and goes after it.
pub async fn place_for(
    gw: &Arc<Gateway>,
    rev: &Arc<Revision>,
) -> Result<(Active, &'static str), StartError> {
    let own = rev.service.isolation == crate::manifest::Isolation::Request;
    let cc = rev.service.container_concurrency;
    if let Some(a) = rev.instances.pick(cc, own) {
        replenish(gw, rev, own);
        return Ok((a, "warm"));
    }
    let _gate = rev.instances.cold.lock().await;
    if let Some(a) = rev.instances.pick(cc, own) {
        replenish(gw, rev, own);
        return Ok((a, "cold"));
    }
    let i = start_for(gw, Starting::new(rev), !own).await?;
    replenish(gw, rev, own);
    Ok((i.claim(), "cold"))
}

/// Under `flint.dev/isolation: request` with a template, an instance a
/// request took is replaced at once rather than at the autoscaler's next
/// tick (a thaw is cheap): the next request finds one ready, as a module
/// revision's pool of restored VMs has one.
fn replenish(gw: &Arc<Gateway>, rev: &Arc<Revision>, own: bool) {
    if own && rev.instances.template().is_some() {
        let desired = rev.desired.load(Ordering::SeqCst).max(1) as usize;
        scale(gw, rev, desired);
    }
}

/// Brings `rev`'s instances towards `desired`: starts the missing ones,
/// stops idle ones beyond it (busy ones stay until their requests end).
pub fn scale(gw: &Arc<Gateway>, rev: &Arc<Revision>, desired: usize) {
    let inst = &rev.instances;
    let mut list = inst.alive();
    let starting = inst.starting.load(Ordering::SeqCst);
    if list.len() + starting < desired {
        for _ in list.len() + starting..desired {
            let (gw, name, starting) = (gw.clone(), rev.name.clone(), Starting::new(rev));
            tokio::spawn(async move {
                if let Err(e) = start_for(&gw, starting, true).await {
                    tracing::warn!(revision = %name, "starting an instance failed: {}", crate::registry::error_chain(&e));
                }
            });
        }
    } else {
        while list.len() > desired {
            match list
                .iter()
                .rposition(|i| i.active.load(Ordering::SeqCst) == 0)
            {
                Some(i) => drop(list.remove(i)),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn probe(answer: &'static [u8]) -> (bool, String) {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut req = vec![0u8; 512];
            let n = b.read(&mut req).unwrap();
            b.write_all(answer).unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        let ok = http_ready(a, "/healthz?x=1");
        (ok, server.join().unwrap())
    }

    #[test]
    fn an_http_probe_wants_200_to_399() {
        let (ok, req) = probe(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(ok);
        assert!(req.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(probe(b"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n").0);
        assert!(!probe(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").0);
        assert!(!probe(b"HTTP/1.1 404 Not Found\r\n\r\n").0);
        assert!(!probe(b"SSH-2.0-OpenSSH\r\n").0);
        assert!(!probe(b"").0);
    }
}
