//! Knative `serving.knative.dev/v1` `Service` manifests: the fields users
//! write, checked like `kubectl apply` would (an unknown or invalid field is
//! an error naming its path), with Knative's defaults where absent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml::Value;

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
    pub traffic: Vec<TrafficTarget>,
}

type Map = serde_yaml::Mapping;

/// Knative's `max-revision-timeout-seconds` default: the most
/// `timeoutSeconds` (and the response-start and idle timeouts) may be.
pub const MAX_REVISION_TIMEOUT_SECONDS: u64 = 600;

fn as_map<'a>(v: &'a Value, path: &str) -> Result<&'a Map, ManifestError> {
    v.as_mapping()
        .ok_or_else(|| invalid(path, "must be a mapping"))
}

/// Checks that `map` only has `allowed` keys.
fn only(map: &Map, path: &str, allowed: &[&str]) -> Result<(), ManifestError> {
    for k in map.keys() {
        let k = k
            .as_str()
            .ok_or_else(|| invalid(path, "keys must be strings"))?;
        if !allowed.contains(&k) {
            return Err(ManifestError::Unknown(format!("{path}.{k}")));
        }
    }
    Ok(())
}

fn get<'a>(map: &'a Map, key: &str) -> Option<&'a Value> {
    map.get(Value::String(key.into())).filter(|v| !v.is_null())
}

fn string(map: &Map, path: &str, key: &str) -> Result<Option<String>, ManifestError> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(&format!("{path}.{key}"), "must be a string")),
    }
}

fn uint(map: &Map, path: &str, key: &str) -> Result<Option<u64>, ManifestError> {
    match get(map, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(&format!("{path}.{key}"), "must be a non-negative integer")),
    }
}

fn string_map(map: &Map, path: &str, key: &str) -> Result<BTreeMap<String, String>, ManifestError> {
    let mut out = BTreeMap::new();
    if let Some(v) = get(map, key) {
        let p = format!("{path}.{key}");
        for (k, v) in as_map(v, &p)? {
            let k = k
                .as_str()
                .ok_or_else(|| invalid(&p, "keys must be strings"))?;
            let v = v
                .as_str()
                .ok_or_else(|| invalid(&format!("{p}.{k}"), "must be a string"))?;
            out.insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
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

/// Parses a Go duration as Knative annotations use it ("60s", "1m30s", "500ms").
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(n * secs).ok()?)?;
        rest = &rest[unit_end..];
    }
    Some(total)
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
) -> Result<(Autoscaling, Isolation), ManifestError> {
    let mut a = Autoscaling::default();
    let mut isolation = Isolation::Shared;
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
    Ok((a, isolation))
}

/// Parses and checks one Service manifest.
pub fn parse(yaml: &str) -> Result<Service, ManifestError> {
    let doc: Value = serde_yaml::from_str(yaml).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let root = as_map(&doc, "<root>")?;
    only(root, "", &["apiVersion", "kind", "metadata", "spec"]).map_err(|e| match e {
        ManifestError::Unknown(p) => ManifestError::Unknown(p.trim_start_matches('.').to_string()),
        e => e,
    })?;
    match string(root, "", "apiVersion")?.as_deref() {
        Some("serving.knative.dev/v1") => {}
        Some(other) => {
            return Err(invalid(
                "apiVersion",
                format!("{other:?} is not supported; use serving.knative.dev/v1"),
            ))
        }
        None => return Err(ManifestError::Missing("apiVersion".into())),
    }
    match string(root, "", "kind")?.as_deref() {
        Some("Service") => {}
        Some(other) => {
            return Err(invalid(
                "kind",
                format!("{other:?} is not supported; use Service"),
            ))
        }
        None => return Err(ManifestError::Missing("kind".into())),
    }
    let meta = as_map(
        get(root, "metadata").ok_or_else(|| ManifestError::Missing("metadata".into()))?,
        "metadata",
    )?;
    only(
        meta,
        "metadata",
        &["name", "namespace", "annotations", "labels"],
    )?;
    let name = string(meta, "metadata", "name")?
        .ok_or_else(|| ManifestError::Missing("metadata.name".into()))?;
    check_name("metadata.name", &name)?;
    let namespace = string(meta, "metadata", "namespace")?.unwrap_or_else(|| "default".into());
    check_name("metadata.namespace", &namespace)?;
    let annotations = string_map(meta, "metadata", "annotations")?;
    string_map(meta, "metadata", "labels")?;

    let spec = as_map(
        get(root, "spec").ok_or_else(|| ManifestError::Missing("spec".into()))?,
        "spec",
    )?;
    only(spec, "spec", &["template", "traffic"])?;
    let template = as_map(
        get(spec, "template").ok_or_else(|| ManifestError::Missing("spec.template".into()))?,
        "spec.template",
    )?;
    only(template, "spec.template", &["metadata", "spec"])?;
    let (mut template_annotations, mut revision_name) = (BTreeMap::new(), None);
    if let Some(m) = get(template, "metadata") {
        let m = as_map(m, "spec.template.metadata")?;
        only(
            m,
            "spec.template.metadata",
            &["name", "annotations", "labels"],
        )?;
        template_annotations = string_map(m, "spec.template.metadata", "annotations")?;
        string_map(m, "spec.template.metadata", "labels")?;
        revision_name = string(m, "spec.template.metadata", "name")?;
        if let Some(r) = &revision_name {
            if !r.starts_with(&format!("{name}-")) {
                return Err(invalid(
                    "spec.template.metadata.name",
                    format!("must start with \"{name}-\""),
                ));
            }
            check_name("spec.template.metadata.name", r)?;
        }
    }
    let (autoscaling, isolation) =
        autoscaling(&template_annotations, "spec.template.metadata.annotations")?;

    let p = "spec.template.spec";
    let tspec = as_map(
        get(template, "spec").ok_or_else(|| ManifestError::Missing(p.into()))?,
        p,
    )?;
    only(
        tspec,
        p,
        &[
            "containerConcurrency",
            "timeoutSeconds",
            "responseStartTimeoutSeconds",
            "idleTimeoutSeconds",
            "runtimeClassName",
            "containers",
            // Accepted as Knative's webhook accepts them (PodSpecMask);
            // they have no effect in a Flint VM.
            "serviceAccountName",
            "imagePullSecrets",
            "enableServiceLinks",
            "securityContext",
            "volumes",
        ],
    )?;
    string(tspec, p, "serviceAccountName")?;
    if let Some(v) = get(tspec, "securityContext") {
        as_map(v, &format!("{p}.securityContext"))?;
    }
    if get(tspec, "volumes").is_some() {
        return Err(invalid(
            &format!("{p}.volumes"),
            "volumes (ConfigMaps, Secrets, projected) need a Kubernetes API, which Flint does not have",
        ));
    }
    let container_concurrency = uint(tspec, p, "containerConcurrency")?.unwrap_or(0);
    if container_concurrency > 1000 {
        return Err(invalid(
            &format!("{p}.containerConcurrency"),
            "must be at most 1000",
        ));
    }
    // Knative's webhook: 0 (or absent) is the default, anything past
    // max-revision-timeout-seconds (600 by default) is out of bounds.
    let secs = |key: &str| -> Result<Option<Duration>, ManifestError> {
        match uint(tspec, p, key)? {
            Some(0) | None => Ok(None),
            Some(s) if s > MAX_REVISION_TIMEOUT_SECONDS => Err(invalid(
                &format!("{p}.{key}"),
                format!("expected 0 <= {s} <= {MAX_REVISION_TIMEOUT_SECONDS}"),
            )),
            Some(s) => Ok(Some(Duration::from_secs(s))),
        }
    };
    let timeout = secs("timeoutSeconds")?.unwrap_or(Duration::from_secs(300));
    let response_start_timeout = secs("responseStartTimeoutSeconds")?;
    let idle_timeout = secs("idleTimeoutSeconds")?;
    let runtime_class_name = string(tspec, p, "runtimeClassName")?;
    if let Some(rc) = &runtime_class_name {
        if rc != "flint" {
            return Err(invalid(
                &format!("{p}.runtimeClassName"),
                format!("{rc:?} is not served here; use flint or leave it out"),
            ));
        }
    }
    let containers = get(tspec, "containers")
        .ok_or_else(|| ManifestError::Missing(format!("{p}.containers")))?;
    let containers = containers
        .as_sequence()
        .ok_or_else(|| invalid(&format!("{p}.containers"), "must be a list"))?;
    if containers.len() != 1 {
        return Err(invalid(
            &format!("{p}.containers"),
            format!("must hold exactly one container, not {}", containers.len()),
        ));
    }
    let cp = format!("{p}.containers[0]");
    let c = as_map(&containers[0], &cp)?;
    only(
        c,
        &cp,
        &[
            "name",
            "image",
            "env",
            "command",
            "args",
            "resources",
            "ports",
            "workingDir",
            // Accepted as Knative's webhook accepts them (ContainerMask);
            // checked for shape, without effect here: a revision is ready
            // when its VM reaches its ready point, images are local.
            "imagePullPolicy",
            "readinessProbe",
            "livenessProbe",
            "startupProbe",
            "securityContext",
            "terminationMessagePath",
            "terminationMessagePolicy",
            "envFrom",
            "volumeMounts",
        ],
    )?;
    container_extras(c, &cp)?;
    let working_dir = string(c, &cp, "workingDir")?;
    let image =
        string(c, &cp, "image")?.ok_or_else(|| ManifestError::Missing(format!("{cp}.image")))?;
    let mut env = Vec::new();
    if let Some(list) = get(c, "env") {
        let list = list
            .as_sequence()
            .ok_or_else(|| invalid(&format!("{cp}.env"), "must be a list"))?;
        for (i, e) in list.iter().enumerate() {
            let ep = format!("{cp}.env[{i}]");
            let e = as_map(e, &ep)?;
            only(e, &ep, &["name", "value", "valueFrom"])?;
            if get(e, "valueFrom").is_some() {
                return Err(invalid(
                    &format!("{ep}.valueFrom"),
                    "ConfigMap and Secret references need a Kubernetes API, which Flint does not have; give a value",
                ));
            }
            let n = string(e, &ep, "name")?
                .ok_or_else(|| ManifestError::Missing(format!("{ep}.name")))?;
            if n.is_empty() || n.contains('=') {
                return Err(invalid(
                    &format!("{ep}.name"),
                    "must be a non-empty name without '='",
                ));
            }
            env.push((n, string(e, &ep, "value")?.unwrap_or_default()));
        }
    }
    let strings = |field: &str| -> Result<Vec<String>, ManifestError> {
        let mut out = Vec::new();
        if let Some(list) = get(c, field) {
            let list = list
                .as_sequence()
                .ok_or_else(|| invalid(&format!("{cp}.{field}"), "must be a list"))?;
            for (i, a) in list.iter().enumerate() {
                out.push(
                    a.as_str()
                        .ok_or_else(|| invalid(&format!("{cp}.{field}[{i}]"), "must be a string"))?
                        .to_string(),
                );
            }
        }
        Ok(out)
    };
    let command = strings("command")?;
    let args = strings("args")?;
    let mut memory_mib = None;
    if let Some(r) = get(c, "resources") {
        let rp = format!("{cp}.resources");
        let r = as_map(r, &rp)?;
        only(r, &rp, &["limits", "requests"])?;
        for key in ["limits", "requests"] {
            let q = string_map(r, &rp, key)?;
            for (res, v) in &q {
                let qp = format!("{rp}.{key}.{res}");
                match res.as_str() {
                    "memory" => {
                        let mib = parse_memory_mib(v).ok_or_else(|| {
                            invalid(&qp, format!("{v:?} is not a memory quantity like 128Mi"))
                        })?;
                        if key == "limits" {
                            memory_mib = Some(mib);
                        }
                    }
                    "cpu" => {}
                    _ => return Err(ManifestError::Unknown(qp)),
                }
            }
        }
    }
    if let Some(ports) = get(c, "ports") {
        let ports = ports
            .as_sequence()
            .ok_or_else(|| invalid(&format!("{cp}.ports"), "must be a list"))?;
        if ports.len() > 1 {
            return Err(invalid(
                &format!("{cp}.ports"),
                "more than one container port is not allowed",
            ));
        }
        for (i, port) in ports.iter().enumerate() {
            let pp = format!("{cp}.ports[{i}]");
            let port = as_map(port, &pp)?;
            only(port, &pp, &["containerPort", "name", "protocol"])?;
            match uint(port, &pp, "containerPort")? {
                Some(1..=65535) | None => {}
                Some(n) => {
                    return Err(invalid(
                        &format!("{pp}.containerPort"),
                        format!("expected 1 <= {n} <= 65535"),
                    ))
                }
            }
            match string(port, &pp, "name")?.as_deref() {
                None | Some("") | Some("http1") | Some("h2c") => {}
                Some(other) => {
                    return Err(invalid(
                        &format!("{pp}.name"),
                        format!("{other:?} is not http1 or h2c"),
                    ))
                }
            }
            match string(port, &pp, "protocol")?.as_deref() {
                None | Some("TCP") => {}
                Some(other) => {
                    return Err(invalid(
                        &format!("{pp}.protocol"),
                        format!("{other:?} is not supported; use TCP"),
                    ))
                }
            }
        }
    }

    let mut traffic = Vec::new();
    if let Some(list) = get(spec, "traffic") {
        let list = list
            .as_sequence()
            .ok_or_else(|| invalid("spec.traffic", "must be a list"))?;
        let mut total = 0;
        for (i, t) in list.iter().enumerate() {
            let tp = format!("spec.traffic[{i}]");
            let t = as_map(t, &tp)?;
            only(
                t,
                &tp,
                &["revisionName", "latestRevision", "percent", "tag"],
            )?;
            let percent = uint(t, &tp, "percent")?.unwrap_or(0);
            if percent > 100 {
                return Err(invalid(&format!("{tp}.percent"), "must be at most 100"));
            }
            total += percent;
            let latest_revision = match get(t, "latestRevision") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(invalid(
                        &format!("{tp}.latestRevision"),
                        "must be true or false",
                    ))
                }
            };
            let revision_name = string(t, &tp, "revisionName")?;
            if revision_name.is_some() == latest_revision {
                return Err(invalid(
                    &tp,
                    "needs exactly one of revisionName and latestRevision: true",
                ));
            }
            let tag = string(t, &tp, "tag")?;
            if let Some(tag) = &tag {
                check_name(&format!("{tp}.tag"), tag)?;
                if traffic
                    .iter()
                    .any(|x: &TrafficTarget| x.tag.as_ref() == Some(tag))
                {
                    return Err(invalid(
                        &format!("{tp}.tag"),
                        format!("multiple definitions for {tag:?}"),
                    ));
                }
            }
            traffic.push(TrafficTarget {
                revision_name,
                latest_revision,
                percent: percent as u32,
                tag,
            });
        }
        if total != 100 {
            return Err(invalid(
                "spec.traffic",
                format!("percentages add up to {total}, not 100"),
            ));
        }
    }
    Ok(Service {
        name,
        namespace,
        annotations,
        revision_name,
        autoscaling,
        isolation,
        container_concurrency: container_concurrency as u32,
        timeout,
        response_start_timeout,
        idle_timeout,
        runtime_class_name,
        image,
        env,
        command,
        args,
        working_dir,
        memory_mib,
        traffic,
    })
}

/// The container fields Flint accepts for Knative's sake: their shape and
/// values are checked as Kubernetes would, nothing more.
fn container_extras(c: &Map, cp: &str) -> Result<(), ManifestError> {
    if let Some(policy) = string(c, cp, "imagePullPolicy")? {
        if !["Always", "IfNotPresent", "Never"].contains(&policy.as_str()) {
            return Err(invalid(
                &format!("{cp}.imagePullPolicy"),
                format!("{policy:?} is not Always, IfNotPresent or Never"),
            ));
        }
    }
    if let Some(policy) = string(c, cp, "terminationMessagePolicy")? {
        if !["File", "FallbackToLogsOnError"].contains(&policy.as_str()) {
            return Err(invalid(
                &format!("{cp}.terminationMessagePolicy"),
                format!("{policy:?} is not File or FallbackToLogsOnError"),
            ));
        }
    }
    string(c, cp, "terminationMessagePath")?;
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let Some(v) = get(c, probe) else { continue };
        let pp = format!("{cp}.{probe}");
        let p = as_map(v, &pp)?;
        only(
            p,
            &pp,
            &[
                "httpGet",
                "tcpSocket",
                "exec",
                "grpc",
                "initialDelaySeconds",
                "timeoutSeconds",
                "periodSeconds",
                "successThreshold",
                "failureThreshold",
            ],
        )?;
        for n in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            uint(p, &pp, n)?;
        }
        let handlers: Vec<&str> = ["httpGet", "tcpSocket", "exec", "grpc"]
            .into_iter()
            .filter(|h| get(p, h).is_some())
            .collect();
        if handlers.len() > 1 {
            return Err(invalid(
                &pp,
                format!("expected exactly one handler, got {}", handlers.join(", ")),
            ));
        }
        for h in handlers {
            let hp = format!("{pp}.{h}");
            let m = as_map(get(p, h).expect("present"), &hp)?;
            let allowed: &[&str] = match h {
                "httpGet" => &["path", "port", "host", "scheme", "httpHeaders"],
                "tcpSocket" => &["port", "host"],
                "exec" => &["command"],
                _ => &["port", "service"],
            };
            only(m, &hp, allowed)?;
        }
    }
    if let Some(v) = get(c, "securityContext") {
        let sp = format!("{cp}.securityContext");
        let sc = as_map(v, &sp)?;
        only(
            sc,
            &sp,
            &[
                "runAsUser",
                "runAsGroup",
                "runAsNonRoot",
                "readOnlyRootFilesystem",
                "allowPrivilegeEscalation",
                "capabilities",
                "seccompProfile",
                "privileged",
            ],
        )?;
        if matches!(get(sc, "privileged"), Some(Value::Bool(true))) {
            return Err(invalid(&format!("{sp}.privileged"), "must not be true"));
        }
    }
    for field in ["envFrom", "volumeMounts"] {
        if get(c, field).is_some() {
            return Err(invalid(
                &format!("{cp}.{field}"),
                "needs a Kubernetes API (ConfigMaps, Secrets, volumes), which Flint does not have",
            ));
        }
    }
    Ok(())
}
