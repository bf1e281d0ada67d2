//! A Knative Service document as written: the fields Flint reads, and the
//! ones Knative's webhook accepts that have no effect here (its
//! `PodSpecMask` and `ContainerMask`), as serde types. Every struct denies
//! unknown fields, so a misspelt field is an error naming its path (through
//! `serde_path_to_error`); values are checked afterwards, in `super`.

// Fields Knative accepts without effect here are read for their shape only.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct Document {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct ServiceSpec {
    pub template: Template,
    pub traffic: Option<Vec<Traffic>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct Template {
    pub metadata: Option<TemplateMetadata>,
    pub spec: PodSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct TemplateMetadata {
    pub name: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct PodSpec {
    pub container_concurrency: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub response_start_timeout_seconds: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub runtime_class_name: Option<String>,
    pub containers: Vec<Container>,
    // Accepted as Knative's webhook accepts them; no effect in a Flint VM.
    pub service_account_name: Option<String>,
    pub image_pull_secrets: Option<Vec<NameReference>>,
    pub enable_service_links: Option<bool>,
    pub security_context: Option<Mapping>,
    /// Refused with a reason (they need a Kubernetes API).
    pub volumes: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct NameReference {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct Container {
    pub name: Option<String>,
    pub image: String,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub resources: Option<Resources>,
    pub ports: Option<Vec<Port>>,
    pub working_dir: Option<String>,
    // Checked for shape, without effect here: a revision is ready when its
    // VM reaches its ready point, and images are local.
    pub image_pull_policy: Option<String>,
    pub readiness_probe: Option<Probe>,
    pub liveness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub security_context: Option<SecurityContext>,
    pub termination_message_path: Option<String>,
    pub termination_message_policy: Option<String>,
    /// Refused with a reason (they need a Kubernetes API).
    pub env_from: Option<Value>,
    pub volume_mounts: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct Resources {
    #[serde(default)]
    pub limits: BTreeMap<String, Quantity>,
    #[serde(default)]
    pub requests: BTreeMap<String, Quantity>,
}

/// A Kubernetes quantity: `128Mi`, `"1"`, or a bare number (`cpu: 1`).
#[derive(Debug)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Self(s)),
            Value::Number(n) => Ok(Self(n.to_string())),
            _ => Err(serde::de::Error::custom(
                "expected a quantity such as 128Mi or 1",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct Port {
    pub container_port: Option<u64>,
    pub name: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct Probe {
    pub http_get: Option<HttpGet>,
    pub tcp_socket: Option<TcpSocket>,
    pub exec: Option<ExecAction>,
    pub grpc: Option<Grpc>,
    pub initial_delay_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub period_seconds: Option<u64>,
    pub success_threshold: Option<u64>,
    pub failure_threshold: Option<u64>,
}

impl Probe {
    /// The handlers the probe names (Kubernetes allows exactly one).
    pub fn handlers(&self) -> Vec<&'static str> {
        [
            ("httpGet", self.http_get.is_some()),
            ("tcpSocket", self.tcp_socket.is_some()),
            ("exec", self.exec.is_some()),
            ("grpc", self.grpc.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct HttpGet {
    pub path: Option<String>,
    pub port: Option<Value>,
    pub host: Option<String>,
    pub scheme: Option<String>,
    pub http_headers: Option<Vec<Mapping>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct TcpSocket {
    pub port: Option<Value>,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct ExecAction {
    pub command: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct Grpc {
    pub port: Option<Value>,
    pub service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: Option<bool>,
    pub read_only_root_filesystem: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities: Option<Mapping>,
    pub seccomp_profile: Option<Mapping>,
    pub privileged: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", expecting = "a mapping")]
pub struct Traffic {
    pub revision_name: Option<String>,
    pub latest_revision: Option<bool>,
    pub percent: Option<u64>,
    pub tag: Option<String>,
}
