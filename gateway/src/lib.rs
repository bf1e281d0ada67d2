//! Flint's gateway: a Knative-compatible HTTP front end. Services are
//! deployed from Knative `Service` manifests ([`manifest`]), each revision
//! is snapshotted once ([`registry`]), and requests are routed by `Host`
//! and run as CGI-style invocations ([`cgi`]) in VMs restored from the
//! snapshot ([`server`]).

mod admin;
pub mod autoscaler;
pub mod cgi;
pub mod cloudevents;
pub mod confine;
mod h2c;
pub mod instances;
mod linux;
pub mod manifest;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod stack;
pub mod stream;

pub use registry::Policy;
pub use server::{serve, serve_with_admin, AdminListener, Gateway, Settings};
