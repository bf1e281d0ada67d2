//! Deployed services and their revisions. Applying a manifest creates a new
//! revision (`NAME-00001`, `NAME-00002`, ...) and snapshots the function
//! once (its readiness check: it must boot to its ready point), as Knative
//! checks a revision's readiness before routing to it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use flint_executor::{BufferIo, ReadyVm, VmConfig};
use flint_snapshotter::{Snapshot, SnapshotError};
use tokio::sync::Semaphore;

use crate::autoscaler::Kpa;
use crate::manifest::{ManifestError, Service};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("spec.template.spec.containers[0].image: cannot read {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spec.template.spec.containers[0].image: {0:?} {1}")]
    ImageRefused(String, &'static str),
    #[error("the revision {0} failed its readiness check (booting to its ready point)")]
    NotReady(String, #[source] SnapshotError),
    #[error("the revision {0} failed its readiness check: {1}")]
    ProgramMissing(String, String),
    #[error("spec.template.metadata.name: revision {0:?} already exists with another template; a revision cannot change (give the new template another name, or none)")]
    RevisionExists(String),
    #[error("spec.traffic: revision {0:?} does not exist")]
    NoSuchRevision(String),
}

/// A Linux image's program, run under Flint's Linux layer: for each
/// request as a CGI program (no snapshot: a fresh VM boots the program),
/// or, when the container declares a port, as a server in each of the
/// revision's instances (`instances.rs`).
#[derive(Debug, Clone)]
pub struct LinuxFunction {
    /// The unpacked root filesystem (in the revision's state directory).
    pub root: PathBuf,
    /// The program's path inside the root.
    pub path: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub memory_mib: u64,
}

/// One immutable revision: its settings and its snapshot (a module), or
/// its Linux program.
#[derive(Debug)]
pub struct Revision {
    pub name: String,
    pub service: Service,
    pub snapshot: Option<Snapshot>,
    pub linux: Option<LinuxFunction>,
    /// `containerConcurrency` slots of all the revision's instances
    /// (None: unlimited): `containerConcurrency` per instance, resized as
    /// the autoscaler changes the instance count (Knative's limit is per
    /// instance, not per revision).
    pub slots: Option<Arc<Semaphore>>,
    /// Slots the semaphore holds in all (in use or free).
    pub capacity: AtomicUsize,
    /// Requests waiting for a slot.
    pub queued: AtomicUsize,
    /// Most requests allowed to wait.
    pub queue_limit: usize,
    /// Requests being served now.
    pub inflight: AtomicUsize,
    /// Requests that arrived since the autoscaler's last tick.
    pub arrivals: AtomicU64,
    /// VMs restored in advance, each ready for one request.
    pub pool: Mutex<Vec<ReadyVm>>,
    /// A Linux server revision's running instances.
    pub instances: crate::instances::Instances,
    /// Restores under way for the pool.
    pub restoring: AtomicUsize,
    /// The autoscaler's state and its latest decision.
    pub kpa: Mutex<Kpa>,
    pub desired: AtomicU32,
}

impl Revision {
    /// True for a Linux image served as a server on its port.
    pub fn is_server(&self) -> bool {
        self.linux.is_some() && self.service.port.is_some()
    }

    /// An idle pre-restored VM, if the pool has one.
    pub fn take_warm(&self) -> Option<ReadyVm> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    pub fn idle(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Where a service's traffic goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// (revision, percent), percents adding up to 100.
    pub split: Vec<(Arc<Revision>, u32)>,
    pub tags: HashMap<String, Arc<Revision>>,
}

#[derive(Debug, Default)]
struct ServiceEntry {
    generation: u32,
    revisions: Vec<Arc<Revision>>,
    route: Option<Route>,
    /// The traffic spec the route was made from.
    traffic: Vec<crate::manifest::TrafficTarget>,
    /// The latest revision that failed to deploy, and why (cleared when
    /// a later one deploys).
    failure: Option<(String, String)>,
}

/// What an apply may use of the host.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Images must lie inside this directory (symlinks resolved).
    pub image_root: PathBuf,
    /// Largest module (or image archive) read.
    pub max_module_bytes: u64,
    /// Most instances a revision may ask for (scale annotations are
    /// capped to it).
    pub max_instances: u32,
    /// Most VMs running requests at once on the node, all revisions
    /// together; further requests wait for a slot in arrival order.
    pub max_running: usize,
}

/// The default run slots: two per core (a run is mostly CPU in its vCPU
/// thread; the second covers the restore and I/O around it).
pub fn default_max_running() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            image_root: PathBuf::from("/"),
            max_module_bytes: 64 << 20,
            max_instances: 64,
            max_running: default_max_running(),
        }
    }
}

/// Every service, by (namespace, name).
#[derive(Debug, Default)]
pub struct Registry {
    services: RwLock<HashMap<(String, String), ServiceEntry>>,
    counter: AtomicU64,
    pub policy: Policy,
}

/// What an image holds.
enum Image {
    /// A module's bytes and file name.
    Wasm(Vec<u8>, String),
    /// A Linux image (an OCI layout whose layers hold no module).
    Linux(PathBuf),
}

/// `path` with `.` and `..` removed lexically.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Where `image` (relative to `base`) is, if it lies inside the policy's
/// image root and is a regular file or a directory, else why not. The
/// answer never says whether something outside the root exists.
fn confine(image: &str, base: &Path, policy: &Policy) -> Result<PathBuf, DeployError> {
    let refused = |why| DeployError::ImageRefused(image.to_string(), why);
    let root = policy
        .image_root
        .canonicalize()
        .map_err(|_| refused("cannot be read: the image root is missing"))?;
    let path = lexical(&base.join(image));
    let path = if path.is_absolute() {
        path
    } else {
        lexical(&std::env::current_dir().unwrap_or_default().join(path))
    };
    if !path.starts_with(&root) {
        return Err(refused("is outside the image root (--image-root)"));
    }
    let real = path
        .canonicalize()
        .map_err(|_| refused("does not exist in the image root"))?;
    if !real.starts_with(&root) {
        return Err(refused("is outside the image root (--image-root)"));
    }
    let meta = std::fs::metadata(&real).map_err(|_| refused("cannot be read"))?;
    if meta.is_dir() {
        return Ok(real);
    }
    if !meta.is_file() {
        return Err(refused(
            "is neither a regular file nor an OCI image layout directory",
        ));
    }
    if meta.len() > policy.max_module_bytes {
        return Err(refused("is larger than --max-module-bytes"));
    }
    Ok(real)
}

/// The function behind `image`: a `.wasm` file, or an OCI image layout
/// (a directory, or a `.tar` archive of one) holding a module or a Linux
/// root filesystem, confined to the policy's image root.
fn resolve_image(image: &str, base: &Path, policy: &Policy) -> Result<Image, DeployError> {
    let path = confine(image, base, policy)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function.wasm".into());
    if path.is_dir() || path.extension().is_some_and(|x| x == "tar") {
        return match flint_image::find_module(&path) {
            Ok((m, n)) => Ok(Image::Wasm(m, n)),
            Err(flint_image::ImageError::NoModule) => Ok(Image::Linux(path)),
            Err(e) => Err(DeployError::Image {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            }),
        };
    }
    let mut module = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| {
            std::io::Read::read_to_end(
                &mut std::io::Read::take(f, policy.max_module_bytes + 1),
                &mut module,
            )
        })
        .map_err(|_| DeployError::ImageRefused(image.to_string(), "cannot be read"))?;
    if module.len() as u64 > policy.max_module_bytes {
        return Err(DeployError::ImageRefused(
            image.to_string(),
            "is larger than --max-module-bytes",
        ));
    }
    Ok(Image::Wasm(module, name))
}

/// Unpacks a Linux image into the revision's directory and finds its
/// program: the manifest's `command` (else the image's entrypoint) and
/// `args` (else its cmd), on the image's PATH, as Knative and runc do.
fn linux_function(
    image: &Path,
    dir: &Path,
    service: &Service,
    name: &str,
) -> Result<LinuxFunction, DeployError> {
    let root = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    let config = flint_image::unpack_rootfs(image, &root).map_err(|e| DeployError::Image {
        path: image.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut argv = if service.command.is_empty() {
        config.entrypoint.clone()
    } else {
        service.command.clone()
    };
    if !service.args.is_empty() {
        argv.extend(service.args.iter().cloned());
    } else if service.command.is_empty() {
        argv.extend(config.cmd.iter().cloned());
    }
    let not_ready = |why: String| DeployError::ProgramMissing(name.to_string(), why);
    let Some(arg0) = argv.first().cloned() else {
        return Err(not_ready(
            "the image has no entrypoint and the manifest no command".into(),
        ));
    };
    let mut env = config.env.clone();
    for (k, v) in &service.env {
        env.retain(|(x, _)| x != k);
        env.push((k.clone(), v.clone()));
    }
    let path_env = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let path = flint_linux::find_program(&root, &arg0, &path_env)
        .ok_or_else(|| not_ready(format!("{arg0} is not an executable file in the image")))?;
    Ok(LinuxFunction {
        root,
        path,
        argv,
        env,
        workdir: service.working_dir.clone().unwrap_or(config.working_dir),
        memory_mib: service.memory_mib.unwrap_or(128).max(64),
    })
}

impl Registry {
    /// An empty registry whose applies follow `policy`.
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Deploys `service` as a new revision (blocking: it boots a VM).
    /// `base` resolves a relative image path; `state_dir` holds snapshots.
    pub fn apply(
        &self,
        service: Service,
        base: &Path,
        state_dir: &Path,
    ) -> Result<Arc<Revision>, DeployError> {
        let mut service = service;
        let cap = self.policy.max_instances.max(1);
        let a = &mut service.autoscaling;
        a.initial_scale = a.initial_scale.min(cap);
        a.min_scale = a.min_scale.min(cap);
        a.max_scale = if a.max_scale == 0 {
            cap
        } else {
            a.max_scale.min(cap)
        };
        let key = (service.namespace.clone(), service.name.clone());
        // A named revision is immutable (Knative): the same template again
        // is a no-op; a changed one is refused, and the revision serves on
        // untouched (its snapshot is never rewritten under live VMs).
        if let Some(name) = &service.revision_name {
            let map = self.services.read().unwrap_or_else(|e| e.into_inner());
            if let Some(existing) = map
                .get(&key)
                .and_then(|e| e.revisions.iter().find(|r| &r.name == name))
            {
                let mut same = existing.service.clone();
                same.traffic = service.traffic.clone();
                return if same == service {
                    Ok(existing.clone())
                } else {
                    Err(DeployError::RevisionExists(name.clone()))
                };
            }
        }
        // An unchanged template makes no new revision (Knative creates one
        // only when spec.template changes); a changed traffic spec still
        // re-routes.
        {
            let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = map.get_mut(&key) {
                if let Some(latest) = entry.revisions.last().cloned() {
                    let mut same = latest.service.clone();
                    same.traffic = service.traffic.clone();
                    if same == service && entry.failure.is_none() {
                        entry.route = Some(route(&service, &entry.revisions)?);
                        entry.traffic = service.traffic.clone();
                        return Ok(latest);
                    }
                }
            }
        }
        let generation = {
            let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(key.clone()).or_default();
            entry.generation += 1;
            entry.generation
        };
        let name = service
            .revision_name
            .clone()
            .unwrap_or_else(|| format!("{}-{generation:05}", service.name));
        let dir = state_dir.join(&service.namespace).join(&name);
        let built = self.build(&service, &name, base, &dir);
        let (snapshot, linux, first) = match built {
            Ok(b) => b,
            Err(e) => {
                // Knative keeps the failed revision in the status (and the
                // route on the last ready one).
                let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = map.get_mut(&key) {
                    entry.failure = Some((name.clone(), error_chain(&e)));
                }
                return Err(e);
            }
        };
        let cc = service.container_concurrency as usize;
        let revision = Arc::new(Revision {
            name,
            slots: (cc > 0).then(|| {
                Arc::new(Semaphore::new(
                    cc * service.autoscaling.initial_scale.max(1) as usize,
                ))
            }),
            capacity: AtomicUsize::new(cc * service.autoscaling.initial_scale.max(1) as usize),
            // What queue-proxy holds per instance (10 x cc), for as many
            // instances as the revision may have, as the activator
            // buffers a revision's requests while it scales.
            queue_limit: if cc > 0 {
                (cc * 10 * service.autoscaling.max_scale.max(1) as usize).max(100)
            } else {
                1000
            },
            queued: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            arrivals: AtomicU64::new(0),
            pool: Mutex::new(Vec::new()),
            instances: Default::default(),
            restoring: AtomicUsize::new(0),
            desired: AtomicU32::new(service.autoscaling.initial_scale),
            kpa: Mutex::new(Kpa::new(service.autoscaling.clone())),
            snapshot,
            linux,
            service,
        });
        // The instance that passed the readiness check is the template
        // later instances start from, under `flint.dev/snapshot`, and
        // serves on, as Knative's initial scale (none kept at an initial
        // scale of 0).
        if let Some(i) = first.as_ref().filter(|_| revision.service.snapshot) {
            revision.instances.make_template(i, &revision.name);
        }
        if let Some(i) = first.filter(|_| revision.service.autoscaling.initial_scale > 0) {
            revision.instances.add(i);
        }
        let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key).or_default();
        entry.revisions.push(revision.clone());
        entry.route = Some(route(&revision.service, &entry.revisions)?);
        entry.traffic = revision.service.traffic.clone();
        entry.failure = None;
        Ok(revision)
    }

    /// Boots `service`'s image to its ready point: a snapshot of a module,
    /// or a Linux program unpacked and checked; a Linux server is started
    /// and must listen on its port (its first instance).
    #[allow(clippy::type_complexity)]
    fn build(
        &self,
        service: &Service,
        name: &str,
        base: &Path,
        dir: &Path,
    ) -> Result<
        (
            Option<Snapshot>,
            Option<LinuxFunction>,
            Option<Arc<crate::instances::Instance>>,
        ),
        DeployError,
    > {
        Ok(match resolve_image(&service.image, base, &self.policy)? {
            Image::Wasm(module, argv0) => {
                let config = VmConfig {
                    memory_mib: service.memory_mib.unwrap_or(128).max(32),
                    timeout: Some(service.timeout),
                    ..VmConfig::default()
                };
                flint_snapshotter::create(&module, &argv0, dir, &config, &mut BufferIo::default())
                    .map_err(|e| DeployError::NotReady(name.to_string(), e))?;
                let snapshot = Snapshot::open_sealed(dir)
                    .map_err(|e| DeployError::NotReady(name.to_string(), e))?;
                (Some(snapshot), None, None)
            }
            Image::Linux(image) => {
                let f = linux_function(&image, dir, service, name)?;
                let first = match service.port {
                    Some(port) => Some(
                        crate::instances::start(
                            &f,
                            port.number,
                            port.h2c,
                            service.readiness_path.as_deref(),
                            &service.name,
                            name,
                        )
                        .map_err(|e| {
                            DeployError::ProgramMissing(name.to_string(), error_chain(&e))
                        })?,
                    ),
                    None => None,
                };
                (None, Some(f), first)
            }
        })
    }

    /// The service as Knative's API returns it: metadata and `status`
    /// (conditions `ConfigurationsReady`, `Ready` and `RoutesReady` with
    /// their reasons, `url`, `latestCreatedRevisionName`,
    /// `latestReadyRevisionName`, and `traffic` with percents and tag
    /// URLs), as `kubectl get ksvc NAME -o json` shows it.
    pub fn status(&self, namespace: &str, name: &str, domain: &str) -> Option<serde_json::Value> {
        use serde_json::json;
        let map = self.services.read().unwrap_or_else(|e| e.into_inner());
        let e = map.get(&(namespace.to_string(), name.to_string()))?;
        let url = |tag: Option<&str>| match tag {
            Some(t) => format!("http://{t}-{name}.{namespace}.{domain}"),
            None => format!("http://{name}.{namespace}.{domain}"),
        };
        let ready = e.revisions.last().map(|r| r.name.clone());
        let created = e
            .failure
            .as_ref()
            .map(|(n, _)| n.clone())
            .or_else(|| ready.clone());
        let cond = |ty: &str, ok: bool, reason: &str, message: &str| {
            let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" }});
            if !ok {
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            c
        };
        let (config_ok, config_reason, config_message) = match &e.failure {
            Some((rev, why)) => (
                false,
                "RevisionFailed",
                format!("Revision \"{rev}\" failed with message: {why}."),
            ),
            None => (true, "", String::new()),
        };
        let routed = e.route.is_some();
        let route_message = format!("Configuration \"{name}\" does not have any ready Revision.");
        let ready_ok = config_ok && routed;
        let (ready_reason, ready_message) = if !config_ok {
            (config_reason, config_message.clone())
        } else {
            ("RevisionMissing", route_message.clone())
        };
        let targets = if e.traffic.is_empty() {
            vec![crate::manifest::TrafficTarget {
                revision_name: None,
                latest_revision: true,
                percent: 100,
                tag: None,
            }]
        } else {
            e.traffic.clone()
        };
        let traffic: Vec<serde_json::Value> = if routed {
            targets
                .iter()
                .map(|t| {
                    let mut v = json!({
                        "revisionName": t.revision_name.clone().or_else(|| ready.clone()),
                        "latestRevision": t.latest_revision,
                        "percent": t.percent,
                    });
                    if let Some(tag) = &t.tag {
                        v["tag"] = json!(tag);
                        v["url"] = json!(url(Some(tag)));
                    }
                    v
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut status = json!({
            "observedGeneration": e.generation,
            "conditions": [
                cond("ConfigurationsReady", config_ok, config_reason, &config_message),
                cond("Ready", ready_ok, ready_reason, &ready_message),
                cond("RoutesReady", routed, "RevisionMissing", &route_message),
            ],
            "traffic": traffic,
        });
        if let Some(c) = created {
            status["latestCreatedRevisionName"] = json!(c);
        }
        if let Some(r) = &ready {
            status["latestReadyRevisionName"] = json!(r);
        }
        if routed {
            status["url"] = json!(url(None));
        }
        Some(json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "generation": e.generation},
            "status": status,
        }))
    }

    /// Removes a service; returns whether it existed.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        let mut map = self.services.write().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        // Its servers stop now (busy ones once their requests are done),
        // not when the last request holding a revision lets it go.
        for r in &entry.revisions {
            r.instances.stop_all();
        }
        true
    }

    /// Every revision of every service, routed or not.
    pub fn revisions(&self) -> Vec<Arc<Revision>> {
        let map = self.services.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .flat_map(|e| e.revisions.iter().cloned())
            .collect()
    }

    /// Every revision that receives traffic.
    pub fn routed_revisions(&self) -> Vec<Arc<Revision>> {
        let map = self.services.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arc<Revision>> = Vec::new();
        for route in map.values().filter_map(|e| e.route.as_ref()) {
            for r in route
                .split
                .iter()
                .map(|(r, _)| r)
                .chain(route.tags.values())
            {
                if !v.iter().any(|x| Arc::ptr_eq(x, r)) {
                    v.push(r.clone());
                }
            }
        }
        v
    }

    /// (namespace, name, latest revision) of every service.
    pub fn list(&self) -> Vec<(String, String, String)> {
        let map = self.services.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .filter_map(|((ns, n), e)| {
                e.revisions
                    .last()
                    .map(|r| (ns.clone(), n.clone(), r.name.clone()))
            })
            .collect();
        v.sort();
        v
    }

    /// Picks the revision for a request to `host` (`[TAG-]NAME.NAMESPACE.DOMAIN`).
    pub fn resolve(&self, host: &str, domain: &str) -> Option<Arc<Revision>> {
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let host = host.to_ascii_lowercase();
        let rest = host.strip_suffix(domain)?.strip_suffix('.')?;
        let (first, namespace) = rest.split_once('.')?;
        let map = self.services.read().unwrap_or_else(|e| e.into_inner());
        if let Some(route) = map
            .get(&(namespace.to_string(), first.to_string()))
            .and_then(|e| e.route.as_ref())
        {
            let n = self
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return pick(route, n);
        }
        // TAG-NAME: try every split point.
        for (i, _) in first.match_indices('-') {
            let (tag, name) = (&first[..i], &first[i + 1..]);
            if let Some(route) = map
                .get(&(namespace.to_string(), name.to_string()))
                .and_then(|e| e.route.as_ref())
            {
                if let Some(r) = route.tags.get(tag) {
                    return Some(r.clone());
                }
            }
        }
        None
    }
}

/// Spreads requests over the split by percent, deterministically.
/// Where request number `n` falls in a traffic split, 0 to 99: the count
/// mixed (splitmix64) with a seed drawn once per process, so consecutive
/// requests land independently, by weight, as Knative's random pick does
/// (a plain `n % 100` would send runs of 50 to one side of a 50/50 split).
fn slot(n: u64) -> u32 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut b = [0u8; 8];
        // SAFETY: getrandom writes at most 8 bytes into `b`.
        unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
        u64::from_le_bytes(b)
    });
    let mut z = n.wrapping_add(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % 100) as u32
}

fn pick(route: &Route, n: u64) -> Option<Arc<Revision>> {
    let slot = slot(n);
    let mut acc = 0;
    for (r, pct) in &route.split {
        acc += pct;
        if slot < acc {
            return Some(r.clone());
        }
    }
    route.split.last().map(|(r, _)| r.clone())
}

/// An error and its sources, `: `-separated.
pub use flint_executor::error_chain;

fn route(service: &Service, revisions: &[Arc<Revision>]) -> Result<Route, DeployError> {
    let latest = revisions.last().expect("at least the new revision").clone();
    if service.traffic.is_empty() {
        return Ok(Route {
            split: vec![(latest, 100)],
            tags: HashMap::new(),
        });
    }
    let mut split = Vec::new();
    let mut tags = HashMap::new();
    for t in &service.traffic {
        let r = match &t.revision_name {
            None => latest.clone(),
            Some(n) => revisions
                .iter()
                .find(|r| &r.name == n)
                .cloned()
                .ok_or_else(|| DeployError::NoSuchRevision(n.clone()))?,
        };
        if let Some(tag) = &t.tag {
            tags.insert(tag.clone(), r.clone());
        }
        if t.percent > 0 {
            split.push((r, t.percent));
        }
    }
    Ok(Route { split, tags })
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn a_split_picks_by_weight_without_sticky_runs() {
        // A 50/50 split over 400 consecutive requests.
        let sides: Vec<bool> = (0..400).map(|n| slot(n) < 50).collect();
        let first = sides.iter().filter(|&&a| a).count();
        assert!(
            (140..=260).contains(&first),
            "{first} of 400 to the first half"
        );
        let mut run = 1;
        let mut longest = 1;
        for w in sides.windows(2) {
            run = if w[0] == w[1] { run + 1 } else { 1 };
            longest = longest.max(run);
        }
        assert!(longest < 20, "a run of {longest} requests to one side");
        // A 90/10 split gives the small side about a tenth.
        let small = (0..1000).filter(|&n| slot(n) >= 90).count();
        assert!(
            (50..=150).contains(&small),
            "{small} of 1000 to the 10% side"
        );
    }
}
