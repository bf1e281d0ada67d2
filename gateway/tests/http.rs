//! The gateway over real HTTP on loopback: routing, the CGI contract,
//! limits, errors, metrics and drain. Each test deploys its own services.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use flint_gateway::manifest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_by_host_and_follows_the_cgi_contract() {
    let gw = start(&[manifest("hello", "greet", "")], 1 << 20).await;
    let (code, head, body) = http(
        gw.addr,
        "GET",
        "hello.default.example.com",
        "/greet?name=ada",
        b"",
    )
    .await;
    assert_eq!(code, 200, "{head}");
    assert_eq!(body, b"hello, ada\n");
    assert!(
        head.to_lowercase().contains("x-revision: hello-00001"),
        "{head}"
    );
    let (code, _, body) = http(
        gw.addr,
        "POST",
        "hello.default.example.com:8080",
        "/greet?name=bob",
        b"payload",
    )
    .await;
    assert_eq!((code, body.as_slice()), (200, &b"hello, bob\npayload"[..]));
    let (code, _, _) = http(gw.addr, "GET", "hello.default.example.com", "/nowhere", b"").await;
    assert_eq!(code, 404, "the function's own Status passes through");
    let (code, _, body) = http(gw.addr, "GET", "other.default.example.com", "/", b"").await;
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("no service answers"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_map_to_status_codes() {
    let services = [
        manifest("trap", "trap", ""),
        manifest("spin", "spin", "      timeoutSeconds: 1\n"),
        manifest("plain", "hello", ""),
        manifest("hello", "greet", ""),
    ];
    let gw = start(&services, 1000).await;
    let (code, _, body) = http(gw.addr, "GET", "trap.default.example.com", "/", b"").await;
    assert_eq!(code, 502);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "the function trapped: wasm `unreachable` instruction executed\n"
    );
    let (code, _, body) = http(gw.addr, "GET", "spin.default.example.com", "/", b"").await;
    assert_eq!(code, 504);
    assert!(String::from_utf8_lossy(&body).contains("did not respond within 1 s"));
    let (code, _, body) = http(gw.addr, "GET", "plain.default.example.com", "/", b"").await;
    assert_eq!(code, 502, "output that is not CGI");
    assert!(String::from_utf8_lossy(&body).contains("no header block"));
    let (code, _, body) = http(
        gw.addr,
        "POST",
        "hello.default.example.com",
        "/",
        &vec![b'x'; 5000],
    )
    .await;
    assert_eq!(code, 413);
    assert!(String::from_utf8_lossy(&body).contains("1000-byte limit"));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_concurrency_queues_and_overflows_with_503() {
    // containerConcurrency 1 on one instance at most: 1 running and
    // queue-proxy's 10 x cc per instance (100 at least, the activator's
    // buffer) fit; past them, 503 at once.
    let one = with_annotations(
        "slow",
        "greet",
        &[("autoscaling.knative.dev/max-scale", "1")],
    )
    .replace(
        "    spec:\n      containers",
        "    spec:\n      containerConcurrency: 1\n      containers",
    );
    let gw = start(&[one], 1 << 20).await;
    let codes = burst(gw.addr, "slow.default.example.com", 130).await;
    let ok = codes.iter().filter(|c| **c == 200).count();
    let busy = codes.iter().filter(|c| **c == 503).count();
    assert_eq!(ok + busy, 130, "{codes:?}");
    assert!(busy >= 1 && ok >= 101, "{ok} ok, {busy} busy");
    gw.stop().await;
}

/// `containerConcurrency` is per instance, and requests beyond capacity
/// wait while the revision scales, as Knative's activator holds them: a
/// burst of 60 against containerConcurrency 1 scaled to 4 is all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_concurrency_is_per_instance_and_bursts_are_buffered() {
    let four = with_annotations(
        "cc",
        "greet",
        &[("autoscaling.knative.dev/initial-scale", "4")],
    )
    .replace(
        "    spec:\n      containers",
        "    spec:\n      containerConcurrency: 1\n      containers",
    );
    let gw = start(&[four], 1 << 20).await;
    let rev = gw
        .gw
        .registry
        .resolve("cc.default.example.com", "example.com")
        .unwrap();
    assert_eq!(
        rev.capacity.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "1 slot per instance, 4 instances"
    );
    let codes = burst(gw.addr, "cc.default.example.com", 60).await;
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    gw.stop().await;
}

async fn burst(addr: std::net::SocketAddr, host: &'static str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { http(addr, "GET", host, "/greet", b"").await.0 }))
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_health_are_served_on_the_admin_port() {
    let gw = start(&[manifest("hello", "greet", "")], 1 << 20).await;
    http(gw.addr, "GET", "hello.default.example.com", "/", b"").await;
    let (code, _, body) = http(gw.admin, "GET", "x", "/metrics", b"").await;
    assert_eq!(code, 200);
    let m = String::from_utf8_lossy(&body);
    let knative = [
        ("namespace_name", "default"),
        ("service_name", "hello"),
        ("configuration_name", "hello"),
        ("revision_name", "hello-00001"),
        ("response_code", "200"),
        ("response_code_class", "2xx"),
    ];
    assert_eq!(
        series(&m, "revision_request_count", &knative),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "revision_request_latencies_count", &knative),
        Some(1.0),
        "{m}"
    );
    assert!(m.contains("# TYPE revision_request_count counter"), "{m}");
    assert!(m.contains("revision_app_request_count"), "{m}");
    assert!(m.contains("flint_restore_latencies_count"), "{m}");
    assert_eq!(http(gw.admin, "GET", "x", "/healthz", b"").await.0, 200);
    assert_eq!(http(gw.admin, "GET", "x", "/readyz", b"").await.0, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_lets_in_flight_requests_finish_while_readyz_fails() {
    let gw = start(&[manifest("hello", "greet", "")], 1 << 20).await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        http(
            addr,
            "GET",
            "hello.default.example.com",
            "/?name=late&sleep_ms=400",
            b"",
        )
        .await
    });
    wait_for("the request in flight", 30, || gw.gw.inflight() == 1).await;
    let (admin, handle) = (gw.admin, gw.gw.clone());
    let stopping = tokio::spawn(gw.stop());
    // Draining: /readyz fails (a load balancer stops sending) while the
    // request in flight goes on.
    wait_for("the drain", 10, || handle.draining()).await;
    let (code, _, body) = http(admin, "GET", "x", "/readyz", b"").await;
    assert_eq!(
        (code, String::from_utf8_lossy(&body).trim()),
        (503, "draining")
    );
    let (code, _, body) = slow.await.unwrap();
    assert_eq!((code, body.as_slice()), (200, &b"hello, late\n"[..]));
    stopping.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revisions_traffic_split_and_tags() {
    let gw = start(&[manifest("hello", "greet", "")], 1 << 20).await;
    let apply = |yaml: String| {
        let g = gw.gw.clone();
        async move {
            let s = manifest::parse(&yaml).unwrap();
            let state = g.settings.state_dir.clone();
            tokio::task::spawn_blocking(move || g.registry.apply(s, &PathBuf::from("."), &state))
                .await
                .unwrap()
        }
    };
    // The same template again is no new revision (Knative makes one only
    // when spec.template changes).
    let rev = apply(manifest("hello", "greet", "")).await.unwrap();
    assert_eq!(rev.name, "hello-00001");
    // A changed template with a traffic block: a new revision, 100% to
    // it and the first one tagged.
    let changed = manifest("hello", "greet", "      containerConcurrency: 5\n");
    let v2 = format!("{changed}  traffic:\n    - latestRevision: true\n      percent: 100\n    - revisionName: hello-00001\n      percent: 0\n      tag: old\n");
    let rev = apply(v2.clone()).await.unwrap();
    assert_eq!(rev.name, "hello-00002");
    let status = gw
        .gw
        .registry
        .status("default", "hello", "example.com")
        .unwrap();
    let s = &status["status"];
    assert_eq!(s["latestReadyRevisionName"], "hello-00002");
    assert_eq!(s["latestCreatedRevisionName"], "hello-00002");
    assert_eq!(s["url"], "http://hello.default.example.com");
    assert_eq!(
        s["traffic"],
        serde_json::json!([
            {"revisionName": "hello-00002", "latestRevision": true, "percent": 100},
            {"revisionName": "hello-00001", "latestRevision": false, "percent": 0,
             "tag": "old", "url": "http://old-hello.default.example.com"},
        ])
    );
    for c in s["conditions"].as_array().unwrap() {
        assert_eq!(c["status"], "True", "{c}");
    }
    // The same template, traffic only: re-routed, no new revision.
    let back =
        format!("{changed}  traffic:\n    - revisionName: hello-00001\n      percent: 100\n");
    assert_eq!(apply(back).await.unwrap().name, "hello-00002");
    let (_, head, _) = http(gw.addr, "GET", "hello.default.example.com", "/", b"").await;
    assert!(
        head.to_lowercase().contains("x-revision: hello-00001"),
        "{head}"
    );
    assert_eq!(apply(v2).await.unwrap().name, "hello-00002");
    // A revision that fails to deploy: the status says which and why,
    // the last ready one keeps serving.
    let e = apply(manifest("hello", "nosuch", "")).await.unwrap_err();
    assert!(
        matches!(&e, flint_gateway::registry::DeployError::ImageRefused(_, why) if why.contains("does not exist")),
        "{e:?}"
    );
    let status = gw
        .gw
        .registry
        .status("default", "hello", "example.com")
        .unwrap();
    let s = &status["status"];
    assert_eq!(s["latestCreatedRevisionName"], "hello-00003");
    assert_eq!(s["latestReadyRevisionName"], "hello-00002");
    let ready = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "RevisionFailed");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with("Revision \"hello-00003\" failed with message: ")
            && message.contains("nosuch"),
        "{message}"
    );
    let (code, head, _) = http(gw.addr, "GET", "hello.default.example.com", "/", b"").await;
    assert_eq!(code, 200);
    assert!(
        head.to_lowercase().contains("x-revision: hello-00002"),
        "{head}"
    );
    let (_, head, _) = http(gw.addr, "GET", "hello.default.example.com", "/", b"").await;
    assert!(
        head.to_lowercase().contains("x-revision: hello-00002"),
        "{head}"
    );
    let (_, head, _) = http(gw.addr, "GET", "old-hello.default.example.com", "/", b"").await;
    assert!(
        head.to_lowercase().contains("x-revision: hello-00001"),
        "{head}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloudevents_in_every_mode() {
    let gw = start(&[manifest("events", "ce-responder", "")], 1 << 20).await;
    let host = "events.default.example.com";
    // Binary mode, with a percent-encoded attribute.
    let (code, head, body) = http_with(
        gw.addr,
        host,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/test"),
            ("ce-type", "com.example.ping"),
            ("ce-subject", "caf%C3%A9"),
            ("content-type", "application/json"),
        ],
        br#"{"x":1}"#,
    )
    .await;
    assert_eq!(code, 200, "{head}");
    let h = head.to_lowercase();
    assert!(h.contains("ce-type: com.example.ping.reply"), "{head}");
    assert!(h.contains("ce-id: reply-1"), "{head}");
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        reply,
        serde_json::json!({"got": {"x": 1}, "subject": "café"})
    );

    // Structured mode in, structured reply out.
    let ev = r#"{"specversion":"1.0","id":"2","source":"/test","type":"com.example.ping","datacontenttype":"application/json","data":{"y":2}}"#;
    let (code, head, body) = http_with(
        gw.addr,
        host,
        &[("content-type", "application/cloudevents+json")],
        ev.as_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/cloudevents+json"),
        "{head}"
    );
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["type"], "com.example.ping.reply");
    assert_eq!(reply["id"], "reply-2");
    assert_eq!(reply["data"]["got"], serde_json::json!({"y": 2}));

    // Batched mode: one invocation per event, replies batched.
    let batch = format!("[{ev},{}]", ev.replace("\"id\":\"2\"", "\"id\":\"3\""));
    let (code, head, body) = http_with(
        gw.addr,
        host,
        &[("content-type", "application/cloudevents-batch+json")],
        batch.as_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{head}");
    let replies: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = replies.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["reply-2", "reply-3"]);

    // No reply: 202.
    let (code, _, body) = http_with(
        gw.addr,
        host,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "4"),
            ("ce-source", "/t"),
            ("ce-type", "x.noreply"),
        ],
        b"",
    )
    .await;
    assert_eq!((code, body.len()), (202, 0));

    // A plain (non-event) answer passes through as the function gave it.
    let (code, head, body) = http_with(
        gw.addr,
        host,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "5"),
            ("ce-source", "/t"),
            ("ce-type", "x.plain"),
        ],
        b"raw",
    )
    .await;
    assert_eq!(
        (code, String::from_utf8_lossy(&body).into_owned()),
        (200, "not an event: raw".to_string())
    );
    assert!(!head.to_lowercase().contains("ce-id"), "{head}");

    // Invalid events: 400 naming the problem.
    let (code, _, body) = http_with(
        gw.addr,
        host,
        &[("ce-specversion", "1.0"), ("ce-id", "5"), ("ce-type", "t")],
        b"",
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("source"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (code, _, _) = http_with(
        gw.addr,
        host,
        &[("content-type", "application/cloudevents+json")],
        b"{not json",
    )
    .await;
    assert_eq!(code, 400);
    let (code, _, _) = http_with(
        gw.addr,
        host,
        &[("content-type", "application/cloudevents-batch+json")],
        b"{}",
    )
    .await;
    assert_eq!(code, 400);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_http_functions() {
    let gw = start(
        &[
            manifest("json", "json-transform", ""),
            manifest("md", "markdown", ""),
        ],
        1 << 20,
    )
    .await;
    let (code, _, body) = http_with(
        gw.addr,
        "json.default.example.com",
        &[],
        br#"{"b":"x","a":1}"#,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        r#"{"a":1,"b":"X","count":2}"#
    );
    let (code, _, _) = http_with(gw.addr, "json.default.example.com", &[], b"[1]").await;
    assert_eq!(code, 422);
    let (code, head, body) = http_with(
        gw.addr,
        "md.default.example.com",
        &[],
        b"# Title\n\nsome *text*\n",
    )
    .await;
    assert_eq!(code, 200);
    assert!(head.to_lowercase().contains("content-type: text/html"));
    assert_eq!(
        String::from_utf8_lossy(&body),
        "<h1>Title</h1>\n<p>some <em>text</em></p>\n"
    );
    gw.stop().await;
}

fn with_annotations(name: &str, example: &str, annotations: &[(&str, &str)]) -> String {
    let mut a = String::from("    metadata:\n      annotations:\n");
    for (k, v) in annotations {
        a.push_str(&format!("        {k}: \"{v}\"\n"));
    }
    manifest(name, example, "").replace(
        "  template:\n    spec:\n",
        &format!("  template:\n{a}    spec:\n"),
    )
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_from_zero_under_a_burst_of_100_loses_nothing() {
    let svc = with_annotations(
        "burst",
        "greet",
        &[("autoscaling.knative.dev/initial-scale", "0")],
    );
    let gw = start(&[svc], 1 << 20).await;
    let rev = gw.gw.registry.routed_revisions().remove(0);
    assert_eq!(rev.idle(), 0, "at zero");
    let addr = gw.addr;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                http(
                    addr,
                    "GET",
                    "burst.default.example.com",
                    &format!("/greet?name=n{i}"),
                    b"",
                )
                .await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (code, _, body) = t.await.unwrap();
        assert_eq!(
            (code, String::from_utf8_lossy(&body).into_owned()),
            (200, format!("hello, n{i}\n"))
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_restored_instances_serve_warm_and_scale_to_zero_when_idle() {
    let svc = with_annotations(
        "pool",
        "greet",
        &[
            ("autoscaling.knative.dev/initial-scale", "2"),
            ("autoscaling.knative.dev/window", "6s"),
        ],
    );
    let gw = start(&[svc], 1 << 20).await;
    let rev = gw.gw.registry.routed_revisions().remove(0);
    wait_for("two idle instances", 30, || rev.idle() >= 1).await;
    let (code, _, _) = http(gw.addr, "GET", "pool.default.example.com", "/", b"").await;
    assert_eq!(code, 200);
    let (_, _, m) = http(gw.admin, "GET", "x", "/metrics", b"").await;
    let m = String::from_utf8_lossy(&m).into_owned();
    assert_eq!(
        series(
            &m,
            "flint_requests_total",
            &[("revision_name", "pool-00001"), ("start", "warm")]
        ),
        Some(1.0),
        "{m}"
    );
    // No traffic for a stable window: scale to zero.
    wait_for("scale to zero", 30, || {
        rev.idle() == 0 && rev.desired.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    // And back from zero on the next request.
    let (code, _, _) = http(gw.addr, "GET", "pool.default.example.com", "/", b"").await;
    assert_eq!(code, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_gets_a_fresh_instance() {
    let svc = with_annotations(
        "iso",
        "greet",
        &[
            ("flint.dev/isolation", "request"),
            ("autoscaling.knative.dev/initial-scale", "3"),
        ],
    );
    let gw = start(&[svc], 1 << 20).await;
    let addr = gw.addr;
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            tokio::spawn(async move {
                http(addr, "GET", "iso.default.example.com", "/count", b"").await
            })
        })
        .collect();
    for t in tasks {
        let (code, _, body) = t.await.unwrap();
        assert_eq!(
            (code, String::from_utf8_lossy(&body).into_owned()),
            (200, "count 1\n".to_string())
        );
    }
    // A reset VM answers `count 1` too: what tells the isolation apart is
    // that no VM was ever reset and kept, each request had its own
    // restore (12 for 12 requests, the pool's included).
    let (_, _, m) = http(gw.admin, "GET", "x", "/metrics", b"").await;
    let m = String::from_utf8_lossy(&m).into_owned();
    let rev = [("revision_name", "iso-00001")];
    assert_eq!(series(&m, "flint_reset_latencies_count", &rev), None, "{m}");
    let restores = series(&m, "flint_restore_latencies_count", &rev).unwrap_or(0.0);
    assert!(
        restores >= 12.0,
        "{restores} restores for 12 requests:\n{m}"
    );
    gw.stop().await;
}

/// Without `flint.dev/isolation: request`, an instance is kept after a
/// clean run and reset to its snapshot in place for the next request: the
/// requests are served warm by reset VMs, each still sees a pristine one
/// (`/count` is 1 every time), and the resets are in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_are_reset_in_place_between_requests() {
    let gw = start(&[manifest("kept", "greet", "")], 1 << 20).await;
    for i in 0..8 {
        let (code, _, body) = http(gw.addr, "GET", "kept.default.example.com", "/count", b"").await;
        assert_eq!(
            (code, String::from_utf8_lossy(&body).into_owned()),
            (200, "count 1\n".to_string()),
            "request {i}"
        );
    }
    let (_, _, metrics) = http(gw.admin, "GET", "x", "/metrics", b"").await;
    let metrics = String::from_utf8_lossy(&metrics);
    let resets = series(
        &metrics,
        "flint_reset_latencies_count",
        &[("revision_name", "kept-00001")],
    )
    .unwrap_or(0.0);
    assert!(resets >= 7.0, "{resets} resets for 8 requests:\n{metrics}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_can_be_oci_layouts() {
    let archive = flint_image::build(
        &flint_examples::bytes("greet"),
        "greet.wasm",
        "example.com/greet:v1",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    std::fs::write(&tar, &archive).unwrap();
    let svc = manifest("oci", "greet", "").replace(
        &flint_examples::path("greet").display().to_string(),
        tar.to_str().unwrap(),
    );
    let gw = start(&[svc], 1 << 20).await;
    let (code, _, body) = http(
        gw.addr,
        "GET",
        "oci.default.example.com",
        "/greet?name=layout",
        b"",
    )
    .await;
    assert_eq!((code, body.as_slice()), (200, &b"hello, layout\n"[..]));
    gw.stop().await;
}

/// Reads one HTTP/1.1 response from `s`, framed as the gateway frames
/// it: by its Content-Length, or chunked.
async fn read_framed(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside a response");
        buf.extend_from_slice(&chunk[..n]);
    }
    let split = loop {
        if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break split;
        }
        fill(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    buf.drain(..split + 4);
    let len: Option<usize> = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    if let Some(len) = len {
        while buf.len() < len {
            fill(s, buf).await;
        }
        return (head, buf.drain(..len).collect());
    }
    assert!(
        head.to_lowercase().contains("transfer-encoding: chunked"),
        "the gateway frames every response: {head}"
    );
    let mut body = Vec::new();
    loop {
        let eol = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(s, buf).await;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&buf[..eol]).unwrap().trim(), 16).unwrap();
        while buf.len() < eol + 2 + size + 2 {
            fill(s, buf).await;
        }
        body.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
        buf.drain(..eol + 2 + size + 2);
        if size == 0 {
            return (head, body);
        }
    }
}

/// A function's framing headers are never trusted: one that says
/// `Content-Length: 0` and prints a second response cannot have it read
/// as the answer to the next request on the connection (another
/// service's), and 1xx statuses from a function are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_cannot_frame_or_forge_responses() {
    let gw = start(
        &[manifest("evil", "echo", ""), manifest("hello", "greet", "")],
        1 << 20,
    )
    .await;
    let forged = "HTTP/1.1 200 OK\r\nX-Injected: yes\r\nContent-Length: 5\r\n\r\nowned";
    let evil = format!(
        "Content-Length: 0\r\nConnection: keep-alive\r\nTransfer-Encoding: identity\r\nContent-Type: text/plain\r\n\r\n{forged}"
    );
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req1 = format!(
        "POST / HTTP/1.1\r\nHost: evil.default.example.com\r\nContent-Length: {}\r\n\r\n{evil}",
        evil.len()
    );
    let req2 = "GET /greet?name=ada HTTP/1.1\r\nHost: hello.default.example.com\r\n\r\n";
    s.write_all(req1.as_bytes()).await.unwrap();
    s.write_all(req2.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (head1, body1) = read_framed(&mut s, &mut buf).await;
    assert!(head1.starts_with("HTTP/1.1 200"), "{head1}");
    assert_eq!(body1, forged.as_bytes(), "the whole output is the body");
    // The function's own framing is gone; the gateway's chunking, if any,
    // is the only transfer coding.
    let lower = head1.to_lowercase();
    assert!(
        !lower.contains("identity") && !lower.contains("content-length: 0"),
        "{head1}"
    );
    let (head2, body2) = read_framed(&mut s, &mut buf).await;
    assert!(head2.starts_with("HTTP/1.1 200"), "{head2}");
    assert!(!head2.contains("X-Injected"), "{head2}");
    assert_eq!(body2, b"hello, ada\n");

    // 101 and 100 from a function: refused, and the connection still
    // answers the request pipelined behind them.
    for status in ["101 Switching Protocols\r\nUpgrade: h2c", "100 Continue"] {
        let out = format!("Status: {status}\r\n\r\n");
        let req = format!(
            "POST / HTTP/1.1\r\nHost: evil.default.example.com\r\nContent-Length: {}\r\n\r\n{out}",
            out.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(req2.as_bytes()).await.unwrap();
        let (head, _) = read_framed(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 502"), "{status}: {head}");
        assert!(!head.to_lowercase().contains("upgrade"), "{head}");
        let (head, body) = read_framed(&mut s, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"hello, ada\n");
    }
    gw.stop().await;
}

/// Headers whose CGI names would collide with the gateway's are dropped
/// (`X_Forwarded_For`), and the gateway's forwarding values are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_headers_cannot_pose_as_the_gateways() {
    let gw = start(&[manifest("env", "printenv", "")], 1 << 20).await;
    let (code, head, body) = send(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: env.default.example.com\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nAccept: a\r\nAccept: b\r\n",
        b"",
    )
    .await;
    assert_eq!(code, 200, "{head}");
    let body = String::from_utf8_lossy(&body);
    let vars: Vec<&str> = body.lines().collect();
    assert!(vars.contains(&"HTTP_X_FORWARDED_FOR=127.0.0.1"), "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");
    assert!(vars.contains(&"HTTP_X_FORWARDED_PROTO=http"), "{body}");
    assert!(vars.contains(&"HTTP_ACCEPT=a, b"), "{body}");
    gw.stop().await;
}

/// A Linux image of a shell CGI program, `script`, on a busybox root, as
/// an image tarball in a temporary directory (kept while the guard lives).
fn shell_cgi_image(script: &str, env: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    for d in ["bin", "srv", "tmp"] {
        std::fs::create_dir(root.path().join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).expect("install busybox-static");
    for a in ["sh", "echo", "cat", "tr", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(a)).unwrap();
    }
    std::fs::write(root.path().join("srv/handler"), script).unwrap();
    std::fs::set_permissions(
        root.path().join("srv/handler"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("sh.tar");
    let mut env: Vec<&str> = env.to_vec();
    env.push("PATH=/bin");
    let config = serde_json::json!({"Entrypoint": ["/srv/handler"], "Env": env});
    std::fs::write(
        &tar,
        flint_image::build_dir(root.path(), config, "docker.io/library/shcgi:v1").unwrap(),
    )
    .unwrap();
    (dir, tar)
}

fn linux_service(name: &str, tar: &std::path::Path, spec: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n{spec}      containers:\n        - image: {}\n          env:\n            - name: FROM_MANIFEST\n              value: yes\n",
        tar.display()
    )
}

/// A Linux image as a function: a shell CGI program from a busybox root,
/// run under the CGI contract (env in, body on stdin, response on stdout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linux_images_serve_under_the_cgi_contract() {
    let script = "#!/bin/sh\necho 'Content-Type: text/plain'\necho 'X-From: shell'\necho\necho \"$REQUEST_METHOD $PATH_INFO $QUERY_STRING $FROM_MANIFEST $GREETING\"\ntr a-z A-Z\n";
    let (_dir, tar) = shell_cgi_image(script, &["GREETING=hej"]);
    let gw = start(&[linux_service("sh", &tar, "")], 1 << 20).await;
    let (code, head, body) = http(
        gw.addr,
        "POST",
        "sh.default.example.com",
        "/p?q=1",
        b"body text",
    )
    .await;
    assert_eq!(code, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert!(head.to_lowercase().contains("x-from: shell"), "{head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "POST /p q=1 yes hej\nBODY TEXT"
    );
    gw.stop().await;
}

/// A Linux function's response streams as a module's does, with the same
/// Knative timeouts: its head and first line reach the client while it
/// still writes; a first byte within `timeoutSeconds` is a 200 however
/// long the rest takes, none within it a 504; a stderr flood is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linux_functions_stream_and_time_out_as_knative_says() {
    let chunks = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho start\nfor i in 0 1 2; do sleep 0.6; echo chunk $i; done\n";
    let (_d1, tar1) = shell_cgi_image(chunks, &[]);
    let late = "#!/bin/sh\nsleep 2\necho 'Content-Type: text/plain'\necho\necho late\n";
    let (_d2, tar2) = shell_cgi_image(late, &[]);
    let flood = "#!/bin/sh\nwhile true; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx >&2; done\n";
    let (_d3, tar3) = shell_cgi_image(flood, &[]);
    let timeout = "      timeoutSeconds: 1\n";
    let gw = start(
        &[
            linux_service("chunks", &tar1, timeout),
            linux_service("late", &tar2, timeout),
            linux_service("flood", &tar3, "      timeoutSeconds: 2\n"),
        ],
        1 << 20,
    )
    .await;
    // The first byte before the timeout, the rest after it: a 200.
    let (code, _, body) = http(gw.addr, "GET", "chunks.default.example.com", "/", b"").await;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        String::from_utf8_lossy(&body),
        "start\nchunk 0\nchunk 1\nchunk 2\n"
    );
    // Nothing within it: a 504.
    let (code, _, _) = http(gw.addr, "GET", "late.default.example.com", "/", b"").await;
    assert_eq!(code, 504);
    // The head and the first line arrive while the program still writes.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: chunks.default.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (early, mut seen) = read_until(&mut s, "start").await;
    assert!(early.starts_with("HTTP/1.1 200"), "{early}");
    assert!(!early.contains("chunk 1"), "not streamed: {early}");
    s.read_to_end(&mut seen).await.unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("chunk 2"));
    // A stderr flood and no head: a 504 at the timeout, on time, and the
    // gateway stays small (stderr is read through a pipe, its first 8 KiB
    // kept).
    let before = rss_kib();
    let t0 = std::time::Instant::now();
    let (code, _, _) = http(gw.addr, "GET", "flood.default.example.com", "/", b"").await;
    assert_eq!(code, 504);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        rss_kib() < before + 64 * 1024,
        "the gateway grew from {before} KiB to {} KiB",
        rss_kib()
    );
    gw.stop().await;
}

/// Reads from `s` until what came holds `needle`: that much as text, and
/// the bytes.
async fn read_until(s: &mut TcpStream, needle: &str) -> (String, Vec<u8>) {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    (String::from_utf8_lossy(&seen).into_owned(), seen)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A function flooding stdout is cut at the response cap; one flooding
/// stderr is logged only in part, stopped at its timeout on time, and
/// neither grows the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_floods_are_bounded() {
    let args = |a: &str| format!("          args: [\"{a}\"]\n");
    let mk = |name: &str, arg: &str| {
        manifest(name, "flood", "      timeoutSeconds: 3\n").replace(
            "          env:\n",
            &format!("{}          env:\n", args(arg)),
        )
    };
    let gw = start(&[mk("out", "stdout"), mk("err", "stderr")], 1 << 20).await;
    let before = rss_kib();
    // Its headers came first, so the response streams: it is cut at the
    // cap (the connection reset, no end of body) and the VM stopped.
    let (code, _, body) = http(gw.addr, "GET", "out.default.example.com", "/", b"").await;
    assert_eq!(code, 200);
    assert!(
        body.len() <= 16 << 20 && body.len() > 1 << 20,
        "{} bytes streamed",
        body.len()
    );
    let t0 = std::time::Instant::now();
    let (code, _, _) = http(gw.addr, "GET", "err.default.example.com", "/", b"").await;
    assert_eq!(code, 504);
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "the timeout came after {:?}",
        t0.elapsed()
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 100 * 1024, "the gateway grew by {grown} KiB");
    gw.stop().await;
}

/// Slow and idle clients are closed (the header read timeout), and the
/// gateway keeps serving others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_idle_clients_are_closed() {
    let gw = start(&[manifest("hello", "greet", "")], 1 << 20).await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: hello.default.example.com\r\nX-Slow: ")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    let (code, _, _) = http(gw.addr, "GET", "hello.default.example.com", "/greet", b"").await;
    assert_eq!(code, 200);
    let limit = flint_gateway::server::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    for s in [&mut slow, &mut idle] {
        let mut buf = [0u8; 512];
        let r = tokio::time::timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "the connection was not closed within {limit:?}");
    }
    gw.stop().await;
}

/// A revision's memory file truncated (or rewritten) on disk under live
/// instances changes nothing for them: restores use a sealed copy, so no
/// SIGBUS reaches the gateway and every request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_changed_on_disk_cannot_reach_live_revisions() {
    let gw = start(&[manifest("hello", "greet", "")], 1 << 20).await;
    let (code, _, _) = http(
        gw.addr,
        "GET",
        "hello.default.example.com",
        "/greet?name=a",
        b"",
    )
    .await;
    assert_eq!(code, 200);
    let mem = gw._state.path().join("default/hello-00001/memory.bin");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mem)
        .unwrap()
        .set_len(0)
        .unwrap();
    for i in 0..6 {
        let (code, _, body) = http(
            gw.addr,
            "GET",
            "hello.default.example.com",
            &format!("/greet?name={i}"),
            b"",
        )
        .await;
        assert_eq!(
            (code, String::from_utf8_lossy(&body).into_owned()),
            (200, format!("hello, {i}\n"))
        );
    }
    std::fs::write(&mem, vec![0xffu8; 1 << 20]).unwrap();
    let (code, _, _) = http(gw.addr, "GET", "hello.default.example.com", "/greet", b"").await;
    assert_eq!(code, 200);
    gw.stop().await;
}

/// revision_app_request_count counts the function's own status: a 404 it
/// answers is a 404, a function that exits non-zero a 502, never 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_request_metrics_carry_the_functions_status() {
    let gw = start(
        &[manifest("hello", "greet", ""), manifest("bad", "fib", "")],
        1 << 20,
    )
    .await;
    assert_eq!(
        http(gw.addr, "GET", "hello.default.example.com", "/nowhere", b"")
            .await
            .0,
        404
    );
    assert_eq!(
        http(gw.addr, "GET", "bad.default.example.com", "/", b"")
            .await
            .0,
        502
    );
    let (_, _, body) = http(gw.admin, "GET", "x", "/metrics", b"").await;
    let m = String::from_utf8_lossy(&body);
    let app = |rev: &str, code: &str| {
        series(
            &m,
            "revision_app_request_count",
            &[("revision_name", rev), ("response_code", code)],
        )
    };
    assert_eq!(app("hello-00001", "404"), Some(1.0), "{m}");
    assert_eq!(app("bad-00001", "502"), Some(1.0), "{m}");
    assert_eq!(app("bad-00001", "200"), None, "{m}");
    gw.stop().await;
}

/// HTTP/2 with prior knowledge on the same port as HTTP/1.1, as
/// Knative's ingresses serve (the real client: curl).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_with_prior_knowledge_on_the_same_port() {
    let gw = start(&[manifest("hello", "greet", "")], 1 << 20).await;
    let url = format!("http://{}/greet?name=h2", gw.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "-H",
                "Host: hello.default.example.com",
                "-w",
                " %{http_version}",
                &url,
            ])
            .output()
            .expect("curl (scripts/deps installs it)")
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello, h2\n 2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, body) = http(
        gw.addr,
        "GET",
        "hello.default.example.com",
        "/greet?name=h1",
        b"",
    )
    .await;
    assert_eq!((code, body), (200, b"hello, h1\n".to_vec()));
    gw.stop().await;
}

/// HTTP/2 by upgrade from HTTP/1.1 (`Upgrade: h2c`, RFC 7540 §3.2), as
/// `curl --http2` asks for it: the upgrading request is answered on stream
/// 1 and later requests on the same connection go over HTTP/2; a request
/// with a body is answered as HTTP/1.1 (the RFC lets a server decline).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_by_h2c_upgrade_on_the_same_port() {
    let gw = start(
        &[
            manifest("hello", "greet", ""),
            manifest("env", "printenv", ""),
        ],
        1 << 20,
    )
    .await;
    let curl = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(args)
                .output()
                .expect("curl (scripts/deps installs it)")
        })
    };
    let a = format!("http://{}/greet?name=up", gw.addr);
    let b = format!("http://{}/greet?name=again", gw.addr);
    let out = curl(
        [
            "-sSv",
            "--http2",
            "-H",
            "Host: hello.default.example.com",
            "-w",
            " %{http_version}\n",
            &a,
            &b,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello, up\n 2\nhello, again\n 2\n",
        "{err}"
    );
    assert!(err.contains("< HTTP/1.1 101"), "{err}");
    assert!(err.contains("Re-using existing connection"), "{err}");
    // The function sees the upgraded request's headers and none of the
    // upgrade's own.
    let env = format!("http://{}/", gw.addr);
    let out = curl(
        [
            "-sS",
            "--http2",
            "-H",
            "Host: env.default.example.com",
            "-H",
            "X-Custom: one",
            &env,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("HTTP_X_CUSTOM=one"), "{body}");
    assert!(body.contains("SERVER_PROTOCOL=HTTP/2.0"), "{body}");
    assert!(
        !body.contains("HTTP_UPGRADE") && !body.contains("HTTP2_SETTINGS"),
        "{body}"
    );
    // With a body: HTTP/1.1.
    let out = curl(
        [
            "-sS",
            "--http2",
            "-H",
            "Host: hello.default.example.com",
            "-d",
            "x",
            "-w",
            " %{http_version}",
            &a,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello, up\nx 1.1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client that asks for the upgrade and then sends no HTTP/2 preface
    // is disconnected; the gateway goes on serving.
    {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(
            b"GET /greet HTTP/1.1\r\nHost: hello.default.example.com\r\n\
              Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
              HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
        // Read the 101 before sending the bad preface: the gateway closes
        // with the rest of it unread, and the kernel then resets the
        // connection, which may discard what the client had not read yet.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
                .await
                .expect("the 101 arrives")
                .unwrap();
            assert!(
                n > 0,
                "closed before the 101: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        c.write_all(b"GET / HTTP/1.1\r\n\r\nnot a preface at all")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut rest))
            .await
            .expect("the connection is closed");
        match end {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{e}"),
        }
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("200"), "{rest}");
    }
    let (code, _, body) = http(
        gw.addr,
        "GET",
        "hello.default.example.com",
        "/greet?name=still",
        b"",
    )
    .await;
    assert_eq!((code, body), (200, b"hello, still\n".to_vec()));
    gw.stop().await;
}

/// Every response carries X-Request-Id: the client's if it sent a sane
/// one, else a new one each time; the function sees the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_response_carries_a_request_id() {
    let gw = start(&[manifest("env", "printenv", "")], 1 << 20).await;
    let id_of = |head: &str| {
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-request-id:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let (code, head, body) = send(
        gw.addr,
        "GET / HTTP/1.1\r\nHost: env.default.example.com\r\nX-Request-Id: abc-123\r\n",
        b"",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(id_of(&head), "abc-123");
    assert!(String::from_utf8_lossy(&body).contains("HTTP_X_REQUEST_ID=abc-123"));
    let (_, h1, _) = http(gw.addr, "GET", "env.default.example.com", "/", b"").await;
    let (_, h2, _) = http(gw.addr, "GET", "nowhere.default.example.com", "/", b"").await;
    let (a, b) = (id_of(&h1), id_of(&h2));
    assert!(!a.is_empty() && !b.is_empty() && a != b, "{a} {b}");
    // A hostile id (control characters, too long) is replaced.
    let long = "x".repeat(300);
    let (_, h3, _) = send(
        gw.addr,
        &format!("GET / HTTP/1.1\r\nHost: env.default.example.com\r\nX-Request-Id: {long}\r\n"),
        b"",
    )
    .await;
    assert_ne!(id_of(&h3), long);
    gw.stop().await;
}

/// Responses stream, and timeouts are Knative's (its conformance test
/// `revision_timeout_test.go`): a first byte within `timeoutSeconds` is a
/// 200 however long the rest takes; none within it is a 504; the head and
/// the first lines reach the client while the function still writes; a
/// gap between writes past `idleTimeoutSeconds` cuts the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_stream_and_time_out_as_knative_says() {
    let gw = start(
        &[
            manifest("slow", "greet", "      timeoutSeconds: 1\n"),
            manifest(
                "idle",
                "greet",
                "      timeoutSeconds: 5\n      idleTimeoutSeconds: 1\n",
            ),
        ],
        1 << 20,
    )
    .await;
    let get = |host: &'static str, path: &'static str| http(gw.addr, "GET", host, path, b"");
    // Does not exceed the timeout.
    let (code, _, body) = get("slow.default.example.com", "/?sleep_ms=200").await;
    assert_eq!((code, body.as_slice()), (200, &b"hello, world\n"[..]));
    // Exceeds it before the first byte.
    let (code, _, _) = get("slow.default.example.com", "/?sleep_ms=1500").await;
    assert_eq!(code, 504);
    // Writes the first byte before the timeout, the rest after it.
    let (code, _, body) = get("slow.default.example.com", "/?chunks=4&gap_ms=400").await;
    assert_eq!(code, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "hello, world\nchunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    );
    // The head and the greeting arrive while the function is still writing.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /?chunks=3&gap_ms=500 HTTP/1.1\r\nHost: slow.default.example.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (early, mut seen) = read_until(&mut s, "hello, world").await;
    assert!(early.starts_with("HTTP/1.1 200"), "{early}");
    assert!(!early.contains("chunk 2"), "not streamed: {early}");
    s.read_to_end(&mut seen).await.unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("chunk 2"));
    // Gaps within idleTimeoutSeconds: whole; past it: cut short.
    let (code, _, body) = get("idle.default.example.com", "/?chunks=3&gap_ms=200").await;
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).ends_with("chunk 2\n"));
    let (code, _, body) = get("idle.default.example.com", "/?chunks=2&gap_ms=1600").await;
    assert_eq!(code, 200);
    assert_eq!(
        String::from_utf8_lossy(&body),
        "hello, world\n",
        "the response ends at the idle timeout"
    );
    gw.stop().await;
}

/// A reply to a binary-mode event streams as any response does: its head
/// (the reply's `ce-*` headers, the function's own status) and first data
/// reach the client while the function still writes; a structured request
/// to the same function gets the whole reply encoded as one event, with
/// the function's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_event_replies_stream() {
    let script = "#!/bin/sh\necho 'Status: 201 Created'\necho 'Ce-Id: r-1'\necho 'Ce-Source: /sh'\necho \"Ce-Type: $CE_TYPE.reply\"\necho 'Content-Type: text/plain'\necho\necho start\nfor i in 0 1 2; do sleep 0.6; echo chunk $i; done\n";
    let (_d, tar) = shell_cgi_image(script, &[]);
    let gw = start(&[linux_service("ev", &tar, "")], 1 << 20).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: ev.default.example.com\r\nConnection: close\r\n\
          Ce-Specversion: 1.0\r\nCe-Id: e-1\r\nCe-Source: /t\r\nCe-Type: ping\r\n\
          Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .unwrap();
    let (early, mut seen) = read_until(&mut s, "start").await;
    assert!(early.starts_with("HTTP/1.1 201"), "{early}");
    let lower = early.to_lowercase();
    assert!(lower.contains("ce-type: ping.reply"), "{early}");
    assert!(lower.contains("ce-id: r-1"), "{early}");
    assert!(!early.contains("chunk 1"), "not streamed: {early}");
    s.read_to_end(&mut seen).await.unwrap();
    assert!(String::from_utf8_lossy(&seen).contains("chunk 2"));
    // Structured: read whole, then encoded.
    let event = br#"{"specversion":"1.0","id":"e-2","source":"/t","type":"pong","data":"x"}"#;
    let (code, head, body) = send(
        gw.addr,
        "POST / HTTP/1.1\r\nHost: ev.default.example.com\r\nContent-Type: application/cloudevents+json\r\n",
        event,
    )
    .await;
    assert_eq!(code, 201, "the function's status: {head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "pong.reply");
    assert_eq!(v["data"], "start\nchunk 0\nchunk 1\nchunk 2\n");
    gw.stop().await;
}

/// What a manifest's container says reaches the function: `env` (a
/// module's and a Linux program's), `args` after the entrypoint, and the
/// memory limit as the VM's RAM (a Linux program reads it in
/// `/proc/meminfo`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifests_env_args_and_memory_limit_reach_the_function() {
    let script = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$EXTRA|$#|$1|$2\"\nread line < /proc/meminfo\necho \"$line\"\n";
    let (_dir, tar) = shell_cgi_image(script, &[]);
    let linux = |name: &str, memory: &str| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}\n          args: [first, \"second arg\"]\n          env:\n            - name: EXTRA\n              value: from the manifest\n          resources:\n            limits:\n              memory: {memory}\n",
            tar.display()
        )
    };
    let module = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: vars\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}\n          env:\n            - name: FOO\n              value: bar baz\n",
        flint_examples::path("printenv").display()
    );
    let gw = start(
        &[linux("small", "64Mi"), linux("large", "160Mi"), module],
        1 << 20,
    )
    .await;
    let mem_kib = |body: &str| -> u64 {
        let line = body.lines().nth(1).unwrap_or_default();
        line.split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0)
    };
    let (code, _, small) = http(gw.addr, "GET", "small.default.example.com", "/", b"").await;
    let small = String::from_utf8_lossy(&small).into_owned();
    assert_eq!(code, 200, "{small}");
    assert_eq!(
        small.lines().next(),
        Some("from the manifest|2|first|second arg"),
        "{small}"
    );
    let (code, _, large) = http(gw.addr, "GET", "large.default.example.com", "/", b"").await;
    let large = String::from_utf8_lossy(&large).into_owned();
    assert_eq!(code, 200, "{large}");
    assert!(small.contains("MemTotal:"), "{small}");
    let (s, l) = (mem_kib(&small), mem_kib(&large));
    assert!(
        s > 32 * 1024 && s <= 64 * 1024,
        "64Mi limit, MemTotal {s} kB"
    );
    assert!(
        l > 128 * 1024 && l <= 160 * 1024,
        "160Mi limit, MemTotal {l} kB"
    );
    let (code, _, vars) = http(gw.addr, "GET", "vars.default.example.com", "/", b"").await;
    let vars = String::from_utf8_lossy(&vars).into_owned();
    assert_eq!(code, 200, "{vars}");
    assert!(vars.lines().any(|l| l == "FOO=bar baz"), "{vars}");
    gw.stop().await;
}

/// `autoscaling.knative.dev/metric: rps` scales on request arrivals: one
/// client sending requests one after another (concurrency about 0.1 at
/// most) scales an rps service past one instance, while the same load on
/// a concurrency service with the same target stays at one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rps_services_scale_on_arrivals() {
    let svc = |name: &str, metric: &str| {
        with_annotations(
            name,
            "greet",
            &[
                ("autoscaling.knative.dev/metric", metric),
                ("autoscaling.knative.dev/target", "2"),
                ("autoscaling.knative.dev/window", "6s"),
            ],
        )
    };
    let gw = start(
        &[svc("byrps", "rps"), svc("byconc", "concurrency")],
        1 << 20,
    )
    .await;
    let revs = gw.gw.registry.routed_revisions();
    let desired = |name: &str| {
        revs.iter()
            .find(|r| r.service.name == name)
            .map(|r| r.desired.load(std::sync::atomic::Ordering::SeqCst))
            .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while desired("byrps") < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rps service at {} instances",
            desired("byrps")
        );
        for host in ["byrps.default.example.com", "byconc.default.example.com"] {
            assert_eq!(http(gw.addr, "GET", host, "/", b"").await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(desired("byconc"), 1, "the same load by concurrency");
    gw.stop().await;
}
