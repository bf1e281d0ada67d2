//! Knative `serving.knative.dev/v1` `Service` manifests: the fields users
//! write, checked like `kubectl apply` would (an unknown or invalid field is
//! an error naming its path), with Knative's defaults where absent. The
//! document's shape is [`schema`] (serde, unknown fields denied, the path
//! of a bad field from `serde_path_to_error`); its values are checked here
//! as Knative's webhook checks them.

use std::collections::BTreeMap;
use std::time::Duration;

mod schema;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest is not valid YAML: {0}")]
    Yaml(String),
    #[error("{0}: unknown field")]
    Unknown(String),
    #[error("{0}: required field is missing")]
    Missing(String),
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
}

fn invalid(path: &str, why: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        path: path.into(),
        why: why.into(),
    }
}

/// The container's declared port (`ports[0]`): a Linux image that
/// declares one is a server on it (Knative's container contract: `PORT`
/// holds the number), not a CGI program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerPort {
    /// `containerPort`, 8080 when not given (Knative's default).
    pub number: u16,
    /// Named `h2c`: the server speaks HTTP/2 with prior knowledge.
    pub h2c: bool,
}

/// How requests map to VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Requests share warm instances (the default).
    Shared,
    /// Every request gets a fresh VM restored from the snapshot.
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Concurrency,
    Rps,
}

/// Knative Pod Autoscaler settings (`autoscaling.knative.dev/*`).
#[derive(Debug, Clone, PartialEq)]
pub struct Autoscaling {
    pub min_scale: u32,
    pub max_scale: u32,
    pub initial_scale: u32,
    pub target: f64,
    pub metric: Metric,
    pub window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub scale_down_delay: Duration,
    /// The share of `target` an instance is meant to carry
    /// (`target-utilization-percentage`, 1 to 100, default 70).
    pub target_utilization_percentage: f64,
    /// The least non-zero scale (`activation-scale`, at least 2 when set;
    /// 1 means unset).
    pub activation_scale: u32,
    /// How long the last instance stays once the revision went idle
    /// (`scale-to-zero-pod-retention-period`).
    pub last_instance_retention: Duration,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            min_scale: 0,
            max_scale: 0,
            initial_scale: 1,
            target: 100.0,
            metric: Metric::Concurrency,
            window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            scale_down_delay: Duration::ZERO,
            target_utilization_percentage: 70.0,
            activation_scale: 1,
            last_instance_retention: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrafficTarget {
    pub revision_name: Option<String>,
    pub latest_revision: bool,
    pub percent: u32,
    pub tag: Option<String>,
}

/// A checked Service manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub annotations: BTreeMap<String, String>,
    /// `spec.template.metadata.name`, if the user names the revision.
    pub revision_name: Option<String>,
    pub autoscaling: Autoscaling,
    pub isolation: Isolation,
    /// `flint.dev/snapshot: "true"`: a Linux server's instances start
    /// from a template of its first instance, frozen once ready (opt-in,
    /// as Lambda's SnapStart is: every clone shares what the program held
    /// at the freeze, its random state included).
    pub snapshot: bool,
    /// 0 means unlimited.
    pub container_concurrency: u32,
    pub timeout: Duration,
    pub response_start_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub runtime_class_name: Option<String>,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// The container's `command` (a Linux image's entrypoint override).
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// The container's `workingDir` (a Linux image's, overriding the
    /// image's own).
    pub working_dir: Option<String>,
    pub memory_mib: Option<u64>,
    /// `ports[0]`, if the container declares a port.
    pub port: Option<ContainerPort>,
    /// `readinessProbe.httpGet.path`: a Linux server is ready once a GET
    /// of it answers 200 to 399 (else once its port accepts a connection).
    pub readiness_path: Option<String>,
    pub traffic: Vec<TrafficTarget>,
}

/// A DNS-1035 label, as Kubernetes requires of Service names.
fn check_name(path: &str, name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(path, format!("{name:?} is not a valid name (lowercase letters, digits and '-', starting with a letter, at most 63)")))
    }
}

/// Parses a duration as Go's `time.ParseDuration` does, which is what
/// Knative's webhook reads its annotations with ("60s", "1m30s", "1.5h",
/// "500ms", "10µs"): a sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), or
/// "0"; at most 2^63-1 ns. A negative duration, which no annotation may
/// have, is `None` (but "-0" is zero, as Go reads it).
/// `gateway/tests/go_duration.rs` compares it with Go's, input by input.
pub fn parse_duration(s: &str) -> Option<Duration> {
    const MAX: u64 = 1 << 63;
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        // The integer part; digits past what fits are an error.
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mut v: u64 = 0;
        for d in rest[..int_end].bytes() {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            if v > MAX {
                return None;
            }
        }
        let had_int = int_end > 0;
        rest = &rest[int_end..];
        // The fraction: digits past what fits are dropped.
        let (mut f, mut scale, mut had_frac) = (0u64, 1f64, false);
        if let Some(frac) = rest.strip_prefix('.') {
            let frac_end = frac
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(frac.len());
            had_frac = frac_end > 0;
            let mut overflow = false;
            for d in frac[..frac_end].bytes() {
                if overflow {
                    continue;
                }
                match f.checked_mul(10).map(|x| x + u64::from(d - b'0')) {
                    Some(y) if f <= (MAX - 1) / 10 && y <= MAX => {
                        f = y;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            rest = &frac[frac_end..];
        }
        if !had_int && !had_frac {
            return None;
        }
        let unit_end = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit: u64 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_end..];
        if v > MAX / unit {
            return None;
        }
        v *= unit;
        if f > 0 {
            // As Go computes it, in floating point, truncated.
            v = v.checked_add((f as f64 * (unit as f64 / scale)) as u64)?;
            if v > MAX {
                return None;
            }
        }
        total = total.checked_add(v)?;
        if total > MAX {
            return None;
        }
    }
    if neg {
        return (total == 0).then_some(Duration::ZERO);
    }
    (total < MAX).then(|| Duration::from_nanos(total))
}

/// Parses a Kubernetes memory quantity ("128Mi", "1Gi", "200M", "134217728") into MiB, rounding up.
pub fn parse_memory_mib(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    let bytes = match &s[split..] {
        "" => n,
        "Ki" => n.checked_mul(1 << 10)?,
        "Mi" => n.checked_mul(1 << 20)?,
        "Gi" => n.checked_mul(1 << 30)?,
        "k" => n.checked_mul(1_000)?,
        "M" => n.checked_mul(1_000_000)?,
        "G" => n.checked_mul(1_000_000_000)?,
        _ => return None,
    };
    Some(bytes.div_ceil(1 << 20))
}

const AUTOSCALING: &str = "autoscaling.knative.dev/";

fn autoscaling(
    annotations: &BTreeMap<String, String>,
    path: &str,
) -> Result<(Autoscaling, Isolation, bool), ManifestError> {
    let mut a = Autoscaling::default();
    let mut isolation = Isolation::Shared;
    let mut snapshot = false;
    for (k, v) in annotations {
        let p = format!("{path}[{k}]");
        let num = || {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| invalid(&p, "must be a non-negative number"))
        };
        let int = || {
            v.parse::<u32>()
                .map_err(|_| invalid(&p, "must be a non-negative integer"))
        };
        let dur = || parse_duration(v).ok_or_else(|| invalid(&p, "must be a duration like 60s"));
        match k.strip_prefix(AUTOSCALING) {
            Some("min-scale" | "minScale") => a.min_scale = int()?,
            Some("max-scale" | "maxScale") => a.max_scale = int()?,
            Some("initial-scale" | "initialScale") => a.initial_scale = int()?,
            Some("target") => a.target = num()?.max(0.01),
            Some("metric") => {
                a.metric = match v.as_str() {
                    "concurrency" => Metric::Concurrency,
                    "rps" => Metric::Rps,
                    _ => return Err(invalid(&p, "must be concurrency or rps")),
                }
            }
            Some("window") => {
                a.window = dur()?;
                if !(Duration::from_secs(6)..=Duration::from_secs(3600)).contains(&a.window) {
                    return Err(invalid(&p, "must be between 6s and 1h"));
                }
            }
            Some("panic-window-percentage" | "panicWindowPercentage") => {
                a.panic_window_percentage = num()?
            }
            Some("panic-threshold-percentage" | "panicThresholdPercentage") => {
                a.panic_threshold_percentage = num()?
            }
            Some("scale-down-delay" | "scaleDownDelay") => a.scale_down_delay = dur()?,
            Some("target-utilization-percentage") => {
                a.target_utilization_percentage = num()?;
                if !(1.0..=100.0).contains(&a.target_utilization_percentage) {
                    return Err(invalid(&p, "must be between 1 and 100"));
                }
            }
            Some("activation-scale") => {
                a.activation_scale = int()?;
                if a.activation_scale < 2 {
                    return Err(invalid(&p, "must be greater than 1"));
                }
            }
            Some("scale-to-zero-pod-retention-period") => {
                a.last_instance_retention = dur()?;
                if a.last_instance_retention > Duration::from_secs(3600) {
                    return Err(invalid(&p, "must be between 0s and 1h"));
                }
            }
            // Whether Knative keeps its activator in the request path:
            // Flint's gateway always buffers as the activator does.
            Some("target-burst-capacity")
                if !v
                    .parse::<f64>()
                    .is_ok_and(|x| x.is_finite() && (x >= 0.0 || x == -1.0)) =>
            {
                return Err(invalid(&p, "must be -1 or a non-negative number"));
            }
            // Flint averages its windows linearly whichever is named.
            Some("metric-aggregation-algorithm")
                if !matches!(
                    v.as_str(),
                    "linear" | "weighted-exponential" | "weightedExponential"
                ) =>
            {
                return Err(invalid(&p, "must be linear or weighted-exponential"));
            }
            Some("target-burst-capacity" | "metric-aggregation-algorithm") => {}
            Some("class") => {}
            Some(_) => return Err(ManifestError::Unknown(p)),
            None if k == "flint.dev/isolation" => {
                isolation = match v.as_str() {
                    "request" => Isolation::Request,
                    "shared" => Isolation::Shared,
                    _ => return Err(invalid(&p, "must be request or shared")),
                }
            }
            None if k == "flint.dev/snapshot" => {
                snapshot = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(invalid(&p, "must be true or false")),
                }
            }
            None => {} // other annotations are the user's
        }
    }
    if a.max_scale > 0 && a.min_scale > a.max_scale {
        return Err(invalid(path, "min-scale is larger than max-scale"));
    }
    if a.activation_scale > 1 {
        let p = format!("{path}[{AUTOSCALING}activation-scale]");
        if a.min_scale > a.activation_scale {
            return Err(invalid(&p, "min-scale is greater than activation-scale"));
        }
        if a.max_scale > 0 && a.max_scale < a.activation_scale {
            return Err(invalid(&p, "max-scale is less than activation-scale"));
        }
    }
    Ok((a, isolation, snapshot))
}

/// Knative's `max-revision-timeout-seconds` default: the most
/// `timeoutSeconds` (and the response-start and idle timeouts) may be.
pub const MAX_REVISION_TIMEOUT_SECONDS: u64 = 600;

/// A serde error as a [`ManifestError`] naming the field's path.
fn schema_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ManifestError {
    let path = e.path().to_string();
    let msg = e.inner().to_string();
    let within = |field: &str| {
        if path == "." {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if msg.starts_with("unknown field `") {
        return ManifestError::Unknown(path);
    }
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        return ManifestError::Missing(within(field));
    }
    let path = if path == "." { "<root>".into() } else { path };
    let why = msg
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected i64", "expected an integer");
    invalid(&path, why)
}

/// Parses and checks one Service manifest.
pub fn parse(yaml: &str) -> Result<Service, ManifestError> {
    // YAML first (a syntax error is told as one), then the document's shape.
    let doc: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let doc: schema::Document = serde_path_to_error::deserialize(doc).map_err(schema_error)?;
    if doc.api_version != "serving.knative.dev/v1" {
        return Err(invalid(
            "apiVersion",
            format!(
                "{:?} is not supported; use serving.knative.dev/v1",
                doc.api_version
            ),
        ));
    }
    if doc.kind != "Service" {
        return Err(invalid(
            "kind",
            format!("{:?} is not supported; use Service", doc.kind),
        ));
    }
    let name = doc.metadata.name;
    check_name("metadata.name", &name)?;
    let namespace = doc.metadata.namespace.unwrap_or_else(|| "default".into());
    check_name("metadata.namespace", &namespace)?;

    let template = doc.spec.template;
    let (template_annotations, revision_name) = match template.metadata {
        Some(m) => (m.annotations, m.name),
        None => (BTreeMap::new(), None),
    };
    if let Some(r) = &revision_name {
        if !r.starts_with(&format!("{name}-")) {
            return Err(invalid(
                "spec.template.metadata.name",
                format!("must start with \"{name}-\""),
            ));
        }
        check_name("spec.template.metadata.name", r)?;
    }
    let (autoscaling, isolation, snapshot) =
        autoscaling(&template_annotations, "spec.template.metadata.annotations")?;

    let p = "spec.template.spec";
    let pod = template.spec;
    if pod.volumes.is_some() {
        return Err(invalid(
            &format!("{p}.volumes"),
            "volumes (ConfigMaps, Secrets, projected) need a Kubernetes API, which Flint does not have",
        ));
    }
    let container_concurrency = pod.container_concurrency.unwrap_or(0);
    if container_concurrency > 1000 {
        return Err(invalid(
            &format!("{p}.containerConcurrency"),
            "must be at most 1000",
        ));
    }
    // Knative's webhook: 0 (or absent) is the default, anything past
    // max-revision-timeout-seconds (600 by default) is out of bounds.
    let secs = |key: &str, v: Option<u64>| -> Result<Option<Duration>, ManifestError> {
        match v {
            Some(0) | None => Ok(None),
            Some(s) if s > MAX_REVISION_TIMEOUT_SECONDS => Err(invalid(
                &format!("{p}.{key}"),
                format!("expected 0 <= {s} <= {MAX_REVISION_TIMEOUT_SECONDS}"),
            )),
            Some(s) => Ok(Some(Duration::from_secs(s))),
        }
    };
    let timeout = secs("timeoutSeconds", pod.timeout_seconds)?.unwrap_or(Duration::from_secs(300));
    let response_start_timeout = secs(
        "responseStartTimeoutSeconds",
        pod.response_start_timeout_seconds,
    )?;
    let idle_timeout = secs("idleTimeoutSeconds", pod.idle_timeout_seconds)?;
    if let Some(rc) = &pod.runtime_class_name {
        if rc != "flint" {
            return Err(invalid(
                &format!("{p}.runtimeClassName"),
                format!("{rc:?} is not served here; use flint or leave it out"),
            ));
        }
    }
    let mut containers = pod.containers;
    if containers.len() != 1 {
        return Err(invalid(
            &format!("{p}.containers"),
            format!("must hold exactly one container, not {}", containers.len()),
        ));
    }
    let c = containers.remove(0);
    let cp = format!("{p}.containers[0]");
    container_extras(&c, &cp)?;
    let mut env = Vec::new();
    for (i, e) in c.env.into_iter().enumerate() {
        let ep = format!("{cp}.env[{i}]");
        if e.value_from.is_some() {
            return Err(invalid(
                &format!("{ep}.valueFrom"),
                "ConfigMap and Secret references need a Kubernetes API, which Flint does not have; give a value",
            ));
        }
        if e.name.is_empty() || e.name.contains('=') {
            return Err(invalid(
                &format!("{ep}.name"),
                "must be a non-empty name without '='",
            ));
        }
        // Knative sets these itself (serving's k8s_validation.go).
        if ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"].contains(&e.name.as_str()) {
            return Err(invalid(
                &format!("{ep}.name"),
                format!("{:?} is a reserved environment variable", e.name),
            ));
        }
        env.push((e.name, e.value.unwrap_or_default()));
    }
    let memory_mib = match &c.resources {
        Some(r) => memory_limit(r, &format!("{cp}.resources"))?,
        None => None,
    };
    let port = match &c.ports {
        Some(ports) => check_ports(ports, &format!("{cp}.ports"))?,
        None => None,
    };
    let readiness_path = match c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()) {
        Some(get) => {
            let path = get.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(invalid(
                    &format!("{cp}.readinessProbe.httpGet.path"),
                    format!(
                        "{path:?} is not an absolute path without spaces or control characters"
                    ),
                ));
            }
            Some(path)
        }
        None => None,
    };
    let traffic = match doc.spec.traffic {
        Some(list) => traffic(list)?,
        None => Vec::new(),
    };
    Ok(Service {
        name,
        namespace,
        annotations: doc.metadata.annotations,
        revision_name,
        autoscaling,
        isolation,
        snapshot,
        container_concurrency: container_concurrency as u32,
        timeout,
        response_start_timeout,
        idle_timeout,
        runtime_class_name: pod.runtime_class_name,
        image: c.image,
        env,
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        memory_mib,
        port,
        readiness_path,
        traffic,
    })
}

/// The memory limit in MiB; every quantity must parse, only `cpu` and
/// `memory` are known resources.
fn memory_limit(r: &schema::Resources, rp: &str) -> Result<Option<u64>, ManifestError> {
    let mut limit = None;
    for (key, quantities) in [("limits", &r.limits), ("requests", &r.requests)] {
        for (res, schema::Quantity(v)) in quantities {
            let qp = format!("{rp}.{key}.{res}");
            match res.as_str() {
                "memory" => {
                    let mib = parse_memory_mib(v).ok_or_else(|| {
                        invalid(&qp, format!("{v:?} is not a memory quantity like 128Mi"))
                    })?;
                    if key == "limits" {
                        limit = Some(mib);
                    }
                }
                "cpu" => {}
                _ => return Err(ManifestError::Unknown(qp)),
            }
        }
    }
    Ok(limit)
}

/// Knative allows at most one container port, named `http1` or `h2c`.
fn check_ports(ports: &[schema::Port], pp: &str) -> Result<Option<ContainerPort>, ManifestError> {
    if ports.len() > 1 {
        return Err(invalid(pp, "more than one container port is not allowed"));
    }
    for (i, port) in ports.iter().enumerate() {
        let pp = format!("{pp}[{i}]");
        match port.container_port {
            // queue-proxy's and the profiling ports (Knative's
            // reservedPorts): a revision Knative refuses is refused here.
            Some(n @ (8008 | 8012 | 8013 | 8022 | 9090 | 9091)) => {
                return Err(invalid(
                    &format!("{pp}.containerPort"),
                    format!("{n} is reserved by Knative"),
                ))
            }
            Some(1..=65535) | None => {}
            Some(n) => {
                return Err(invalid(
                    &format!("{pp}.containerPort"),
                    format!("expected 1 <= {n} <= 65535"),
                ))
            }
        }
        match port.name.as_deref() {
            None | Some("") | Some("http1") | Some("h2c") => {}
            Some(other) => {
                return Err(invalid(
                    &format!("{pp}.name"),
                    format!("{other:?} is not http1 or h2c"),
                ))
            }
        }
        match port.protocol.as_deref() {
            None | Some("TCP") => {}
            Some(other) => {
                return Err(invalid(
                    &format!("{pp}.protocol"),
                    format!("{other:?} is not supported; use TCP"),
                ))
            }
        }
    }
    Ok(ports.first().map(|p| ContainerPort {
        number: p.container_port.map_or(8080, |n| n as u16),
        h2c: p.name.as_deref() == Some("h2c"),
    }))
}

/// `spec.traffic`: each target names a revision or the latest one, tags
/// are unique, percentages add up to 100.
fn traffic(list: Vec<schema::Traffic>) -> Result<Vec<TrafficTarget>, ManifestError> {
    let mut out: Vec<TrafficTarget> = Vec::new();
    let mut total = 0;
    for (i, t) in list.into_iter().enumerate() {
        let tp = format!("spec.traffic[{i}]");
        let percent = t.percent.unwrap_or(0);
        if percent > 100 {
            return Err(invalid(&format!("{tp}.percent"), "must be at most 100"));
        }
        total += percent;
        let latest_revision = t.latest_revision.unwrap_or(false);
        if t.revision_name.is_some() == latest_revision {
            return Err(invalid(
                &tp,
                "needs exactly one of revisionName and latestRevision: true",
            ));
        }
        if let Some(tag) = &t.tag {
            check_name(&format!("{tp}.tag"), tag)?;
            if out.iter().any(|x| x.tag.as_ref() == Some(tag)) {
                return Err(invalid(
                    &format!("{tp}.tag"),
                    format!("multiple definitions for {tag:?}"),
                ));
            }
        }
        out.push(TrafficTarget {
            revision_name: t.revision_name,
            latest_revision,
            percent: percent as u32,
            tag: t.tag,
        });
    }
    if total != 100 {
        return Err(invalid(
            "spec.traffic",
            format!("percentages add up to {total}, not 100"),
        ));
    }
    Ok(out)
}

/// The container fields Flint accepts for Knative's sake: their values
/// are checked as Kubernetes would, nothing more.
fn container_extras(c: &schema::Container, cp: &str) -> Result<(), ManifestError> {
    if let Some(policy) = &c.image_pull_policy {
        if !["Always", "IfNotPresent", "Never"].contains(&policy.as_str()) {
            return Err(invalid(
                &format!("{cp}.imagePullPolicy"),
                format!("{policy:?} is not Always, IfNotPresent or Never"),
            ));
        }
    }
    if let Some(policy) = &c.termination_message_policy {
        if !["File", "FallbackToLogsOnError"].contains(&policy.as_str()) {
            return Err(invalid(
                &format!("{cp}.terminationMessagePolicy"),
                format!("{policy:?} is not File or FallbackToLogsOnError"),
            ));
        }
    }
    for (name, probe) in [
        ("readinessProbe", &c.readiness_probe),
        ("livenessProbe", &c.liveness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        let handlers = probe.as_ref().map(|p| p.handlers()).unwrap_or_default();
        if handlers.len() > 1 {
            return Err(invalid(
                &format!("{cp}.{name}"),
                format!("expected exactly one handler, got {}", handlers.join(", ")),
            ));
        }
    }
    if c.security_context
        .as_ref()
        .is_some_and(|s| s.privileged == Some(true))
    {
        return Err(invalid(
            &format!("{cp}.securityContext.privileged"),
            "must not be true",
        ));
    }
    for (field, set) in [
        ("envFrom", c.env_from.is_some()),
        ("volumeMounts", c.volume_mounts.is_some()),
    ] {
        if set {
            return Err(invalid(
                &format!("{cp}.{field}"),
                "needs a Kubernetes API (ConfigMaps, Secrets, volumes), which Flint does not have",
            ));
        }
    }
    Ok(())
}
