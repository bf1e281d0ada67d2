//! Prometheus metrics in the text exposition format, with Knative's names
//! (`revision_request_count`, `revision_request_latencies`,
//! `revision_app_request_count`, `revision_queue_depth`) and Flint's own.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the latency histogram buckets, in milliseconds.
const BUCKETS_MS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<(String, String), f64>,
    gauges: BTreeMap<(String, String), f64>,
    histograms: BTreeMap<(String, String), Histogram>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Renders `k="v"` pairs, escaping values.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a counter kept elsewhere (a process-wide count) to `value`.
    pub fn set_counter(&self, name: &str, labels: &str, value: f64) {
        self.lock()
            .counters
            .insert((name.into(), labels.into()), value);
    }

    pub fn inc(&self, name: &str, labels: &str, by: f64) {
        *self
            .lock()
            .counters
            .entry((name.into(), labels.into()))
            .or_default() += by;
    }

    pub fn set(&self, name: &str, labels: &str, value: f64) {
        self.lock()
            .gauges
            .insert((name.into(), labels.into()), value);
    }

    pub fn add(&self, name: &str, labels: &str, by: f64) {
        *self
            .lock()
            .gauges
            .entry((name.into(), labels.into()))
            .or_default() += by;
    }

    pub fn observe_ms(&self, name: &str, labels: &str, ms: f64) {
        let mut inner = self.lock();
        let h = inner
            .histograms
            .entry((name.into(), labels.into()))
            .or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS_MS.len()];
        }
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += ms;
        h.count += 1;
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let mut last = String::new();
        let mut typed = |out: &mut String, name: &str, ty: &str| {
            if last != name {
                let _ = writeln!(out, "# TYPE {name} {ty}");
                last = name.to_string();
            }
        };
        // `name value` without labels, `name{k="v",...} value` with them.
        let braced = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        for ((name, l), v) in &inner.counters {
            typed(&mut out, name, "counter");
            let _ = writeln!(out, "{name}{} {v}", braced(l));
        }
        for ((name, l), v) in &inner.gauges {
            typed(&mut out, name, "gauge");
            let _ = writeln!(out, "{name}{} {v}", braced(l));
        }
        for ((name, l), h) in &inner.histograms {
            typed(&mut out, name, "histogram");
            let sep = if l.is_empty() { "" } else { "," };
            for (b, c) in BUCKETS_MS.iter().zip(&h.counts) {
                let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"{b}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_bucket{{{l}{sep}le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{} {}", braced(l), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", braced(l), h.count);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let m = Metrics::default();
        let l = labels(&[("revision_name", "a-00001"), ("response_code", "200")]);
        m.inc("revision_request_count", &l, 1.0);
        m.inc("revision_request_count", &l, 1.0);
        m.set(
            "revision_queue_depth",
            &labels(&[("revision_name", "a-00001")]),
            3.0,
        );
        m.observe_ms("revision_request_latencies", &l, 7.0);
        let out = m.render();
        assert!(out.contains("# TYPE revision_request_count counter"));
        assert!(out
            .contains("revision_request_count{revision_name=\"a-00001\",response_code=\"200\"} 2"));
        assert!(out.contains("revision_queue_depth{revision_name=\"a-00001\"} 3"));
        assert!(out.contains("revision_request_latencies_bucket{revision_name=\"a-00001\",response_code=\"200\",le=\"5\"} 0"));
        assert!(out.contains("revision_request_latencies_bucket{revision_name=\"a-00001\",response_code=\"200\",le=\"10\"} 1"));
        assert!(out.contains(
            "revision_request_latencies_count{revision_name=\"a-00001\",response_code=\"200\"} 1"
        ));
        // No labels: no braces.
        m.set("flint_run_slots", "", 4.0);
        m.observe_ms("flint_x", "", 3.0);
        let out = m.render();
        assert!(out.contains("\nflint_run_slots 4\n"), "{out}");
        assert!(out.contains("\nflint_x_count 1\n"), "{out}");
        assert!(out.contains("\nflint_x_bucket{le=\"5\"} 1\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\n")]), "a=\"x\\\"y\\\\z\\n\"");
    }
}
