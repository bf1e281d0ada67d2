//! The gateway's Prometheus metrics: one registry of typed metric families
//! (the `prometheus` crate), rendered in the text exposition format.
//!
//! Knative's names and labels where Knative has the metric (what its
//! activator and queue-proxy export: `revision_request_count`,
//! `revision_request_latencies`, `revision_app_request_count`,
//! `revision_app_request_latencies`, `revision_queue_depth`), Flint's own
//! under `flint_`. Counters keep the names given, with no `_total` added
//! (OpenMetrics' encoders add one, which would rename Knative's), and label
//! pairs come out sorted by name, as the Go client Knative uses writes them.

use std::sync::Mutex;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Upper bounds of the latency histogram buckets, in milliseconds.
const BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// The labels Knative puts on a revision's request metrics.
const REQUEST_LABELS: &[&str] = &[
    "namespace_name",
    "service_name",
    "configuration_name",
    "revision_name",
    "response_code",
    "response_code_class",
];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `revision_request_count`: requests routed to a revision, by the
    /// status the client got (labels [`REQUEST_LABELS`]).
    pub request_count: IntCounterVec,
    /// `revision_request_latencies`: their time to the response head (ms).
    pub request_latencies: HistogramVec,
    /// `revision_app_request_count`: the function's own answers
    /// (`revision_name`, `response_code`), as queue-proxy counts them.
    pub app_request_count: IntCounterVec,
    pub app_request_latencies: HistogramVec,
    /// `revision_queue_depth`: requests waiting for a concurrency slot.
    pub queue_depth: IntGaugeVec,
    /// `flint_restore_latencies`: restoring a VM from the revision's
    /// snapshot (ms), for a request or for the pool.
    pub restore_latencies: HistogramVec,
    /// `flint_reset_latencies`: resetting a VM in place after a request.
    pub reset_latencies: HistogramVec,
    /// `flint_start_latencies`: starting a Linux server instance until it
    /// listens on its port (ms).
    pub start_latencies: HistogramVec,
    /// `flint_server_starts_total`: Linux server instances started, by
    /// `from`: `template` (thawed from the revision's frozen first
    /// instance) or `cold` (the program run from its start).
    pub server_starts: IntCounterVec,
    /// `flint_requests_total`: requests by whether a pooled VM was ready
    /// (`start` = `warm`) or one was restored for them (`cold`).
    pub requests: IntCounterVec,
    /// `flint_instances`: a revision's VMs, `state` = `idle` or `active`.
    pub instances: IntGaugeVec,
    pub desired_scale: IntGaugeVec,
    /// `flint_run_slots`: VMs the node lets run at once.
    pub run_slots: IntGauge,
    /// `flint_requests_waiting_for_vm`: requests waiting for a run slot.
    pub waiting_for_vm: IntGauge,
    /// `flint_seccomp_refused_calls_total`: a process-wide count kept by the
    /// executor, brought up to date at each scrape.
    seccomp_refused: Mutex<IntCounter>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(m.clone()))
        .expect("registered once");
    m
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(m.clone()))
        .expect("registered once");
    m
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS_MS.to_vec());
    let m = HistogramVec::new(opts, labels).expect("a valid metric name");
    registry
        .register(Box::new(m.clone()))
        .expect("registered once");
    m
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help).expect("a valid metric name");
    registry
        .register(Box::new(m.clone()))
        .expect("registered once");
    m
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let rev = &["revision_name"];
        let app = &["revision_name", "response_code"];
        let seccomp = IntCounter::new(
            "flint_seccomp_refused_calls_total",
            "System calls refused by a VM thread's seccomp filter (each ended its VM).",
        )
        .expect("a valid metric name");
        r.register(Box::new(seccomp.clone()))
            .expect("registered once");
        Self {
            request_count: counter_vec(
                &r,
                "revision_request_count",
                "Requests routed to the revision, by the status the client got.",
                REQUEST_LABELS,
            ),
            request_latencies: histogram_vec(
                &r,
                "revision_request_latencies",
                "Time from a request's arrival to its response head, in milliseconds.",
                REQUEST_LABELS,
            ),
            app_request_count: counter_vec(
                &r,
                "revision_app_request_count",
                "Requests the function answered, by its own status.",
                app,
            ),
            app_request_latencies: histogram_vec(
                &r,
                "revision_app_request_latencies",
                "Time the function took to answer, in milliseconds.",
                app,
            ),
            queue_depth: gauge_vec(
                &r,
                "revision_queue_depth",
                "Requests waiting for one of the revision's concurrency slots.",
                rev,
            ),
            restore_latencies: histogram_vec(
                &r,
                "flint_restore_latencies",
                "Restoring a VM from the revision's snapshot, in milliseconds.",
                rev,
            ),
            reset_latencies: histogram_vec(
                &r,
                "flint_reset_latencies",
                "Resetting a VM to its snapshot in place after a request, in milliseconds.",
                rev,
            ),
            start_latencies: histogram_vec(
                &r,
                "flint_start_latencies",
                "Starting a Linux server instance until it listens on its port, in milliseconds.",
                rev,
            ),
            server_starts: counter_vec(
                &r,
                "flint_server_starts_total",
                "Linux server instances started, from the revision's template or cold.",
                &["revision_name", "from"],
            ),
            requests: counter_vec(
                &r,
                "flint_requests_total",
                "Requests run, by whether a pooled VM was ready (warm) or one was restored (cold).",
                &["revision_name", "start"],
            ),
            instances: gauge_vec(
                &r,
                "flint_instances",
                "The revision's VMs: idle in its pool, or active.",
                &["revision_name", "state"],
            ),
            desired_scale: gauge_vec(
                &r,
                "flint_autoscaler_desired_scale",
                "The instances the autoscaler wants for the revision.",
                rev,
            ),
            run_slots: gauge(&r, "flint_run_slots", "VMs the node lets run at once."),
            waiting_for_vm: gauge(
                &r,
                "flint_requests_waiting_for_vm",
                "Requests waiting for one of the node's run slots.",
            ),
            seccomp_refused: Mutex::new(seccomp),
            registry: r,
        }
    }
}

impl Metrics {
    /// Milliseconds for the latency histograms.
    pub fn ms(d: std::time::Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        {
            let c = self
                .seccomp_refused
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = flint_executor::seccomp::refused_calls();
            c.inc_by(now.saturating_sub(c.get()));
        }
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a family without metrics,
        // which the registry never gathers.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding the metrics failed: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The exposition format's content type.
    pub fn content_type() -> &'static str {
        "text/plain; version=0.0.4"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms_with_sorted_labels() {
        let m = Metrics::default();
        let l = ["default", "hello", "hello", "hello-00001", "200", "2xx"];
        m.request_count.with_label_values(&l).inc();
        m.request_count.with_label_values(&l).inc();
        m.queue_depth.with_label_values(&["a-00001"]).set(3);
        m.request_latencies.with_label_values(&l).observe(7.0);
        m.run_slots.set(4);
        let out = m.render();
        assert!(
            out.contains("# TYPE revision_request_count counter"),
            "{out}"
        );
        assert!(out.contains("# HELP revision_request_count "), "{out}");
        assert!(out.contains("revision_request_count{configuration_name=\"hello\",namespace_name=\"default\",response_code=\"200\",response_code_class=\"2xx\",revision_name=\"hello-00001\",service_name=\"hello\"} 2\n"), "{out}");
        assert!(
            out.contains("revision_queue_depth{revision_name=\"a-00001\"} 3\n"),
            "{out}"
        );
        let bucket = |le: &str| {
            format!("revision_request_latencies_bucket{{configuration_name=\"hello\",namespace_name=\"default\",response_code=\"200\",response_code_class=\"2xx\",revision_name=\"hello-00001\",service_name=\"hello\",le=\"{le}\"}}")
        };
        assert!(out.contains(&format!("{} 0\n", bucket("5"))), "{out}");
        assert!(out.contains(&format!("{} 1\n", bucket("10"))), "{out}");
        assert!(out.contains(&format!("{} 1\n", bucket("+Inf"))), "{out}");
        // No labels: no braces; no `_total` added to a counter's name.
        assert!(out.contains("\nflint_run_slots 4\n"), "{out}");
        assert!(!out.contains("revision_request_count_total"), "{out}");
        // A family with no series yet is not written at all.
        assert!(!out.contains("flint_reset_latencies"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.queue_depth.with_label_values(&["x\"y\\z\n"]).set(1);
        let out = m.render();
        assert!(
            out.contains("revision_queue_depth{revision_name=\"x\\\"y\\\\z\\n\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn the_refused_calls_counter_follows_the_executor_count() {
        let m = Metrics::default();
        let out = m.render();
        let line = out
            .lines()
            .find(|l| l.starts_with("flint_seccomp_refused_calls_total "))
            .expect("always there");
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, flint_executor::seccomp::refused_calls());
        // A second scrape does not count again.
        let again = m.render();
        assert!(again.contains(&format!("flint_seccomp_refused_calls_total {n}\n")));
    }
}
