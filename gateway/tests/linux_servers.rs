//! Linux images under Knative's container contract: a container that
//! declares a port is an HTTP server on `$PORT`, one long-lived VM per
//! instance, requests proxied to it. The server is a Go `net/http` program
//! written as Knative's helloworld samples are (`tests/go/server`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use flint_gateway::manifest;

/// One test at a time: each counts the VM threads of this process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Go server, built once per test binary run (static, `CGO_ENABLED=0`).
fn go_server() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| go_build("server")).clone()
}

/// An image holding `program` as `/srv/server` (its entrypoint) and
/// `/bin/busybox` with `sh`, in a temporary directory kept while the guard
/// lives.
fn image(program: &Path) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    for d in ["bin", "srv", "tmp"] {
        std::fs::create_dir(root.path().join(d)).unwrap();
    }
    std::fs::copy(program, root.path().join("srv/server")).unwrap();
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).expect("install busybox-static");
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("server.tar");
    let config =
        serde_json::json!({"Entrypoint": ["/srv/server"], "Env": ["PATH=/bin", "TARGET=image"]});
    std::fs::write(
        &tar,
        flint_image::build_dir(root.path(), config, "docker.io/library/server:v1").unwrap(),
    )
    .unwrap();
    (dir, tar)
}

/// A Service of the image at `tar` whose container declares `ports`
/// (YAML lines under `ports:`, or none for no `ports` field) and runs
/// `command` if given.
fn service(name: &str, tar: &Path, annotations: &str, ports: &str, command: &str) -> String {
    let ports = if ports.is_empty() {
        String::new()
    } else {
        format!("          ports:\n{ports}")
    };
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        flint.dev/unused: \"x\"\n{annotations}    spec:\n      containers:\n        - image: {}\n{command}          env:\n            - name: TARGET\n              value: world\n{ports}",
        tar.display()
    )
}

const PORT_8080: &str = "            - containerPort: 8080\n";

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Threads of this process running a Linux VM's vCPUs.
fn vcpu_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("flint-linux-vcp"))
        .count()
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(gw: &Running) -> String {
    let (_, _, body) = http(gw.admin, "GET", "localhost", "/metrics", b"").await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The server answers on its port with Knative's environment; the
/// instance lives across requests (its counter goes on) and so does the
/// gateway's connection to it; hop-by-hop
/// headers stay behind both ways; the gateway names itself in the
/// forwarding headers; a client's `X-Forwarded-Host` is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linux_server_answers_on_its_port_and_keeps_its_state() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let gw = start(&[service("hello", &tar, "", PORT_8080, "")], 1 << 20).await;
    let host = "hello.default.example.com";
    let (code, head, body) = send(
        gw.addr,
        &format!("POST /p?q=1 HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Host: evil\r\nX-Forwarded-For: 10.1.2.3\r\nKeep-Alive: timeout=9\r\nX-Secret: s\r\nConnection: X-Secret\r\n"),
        b"body text",
    )
    .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{head}\n{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "POST /p?q=1 BODY TEXT");
    for want in [
        "TARGET=world",
        "PORT=8080",
        "K_SERVICE=hello",
        "K_CONFIGURATION=hello",
        "K_REVISION=hello-00001",
        "X-Forwarded-For: 10.1.2.3,127.0.0.1",
        "X-Forwarded-Host: hello.default.example.com",
        "X-Forwarded-Proto: http",
        "Forwarded: for=127.0.0.1;host=\"hello.default.example.com\";proto=http",
        "X-Secret: ",
        "Keep-Alive: ",
        "Host: hello.default.example.com",
    ] {
        assert!(lines.contains(&want), "{want:?} missing in\n{body}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("X-Request-Id: ") && l.len() > 14),
        "{body}"
    );
    assert_eq!(header(&head, "x-served"), Some("1"), "{head}");
    let instance = header(&head, "x-instance").unwrap().to_string();
    let mut remotes = Vec::new();
    for n in 2..=4 {
        let (code, head, _) = http(gw.addr, "GET", host, "/", b"").await;
        assert_eq!(code, 200);
        assert_eq!(header(&head, "x-served"), Some(n.to_string().as_str()));
        assert_eq!(header(&head, "x-instance"), Some(instance.as_str()));
        remotes.push(header(&head, "x-remote").unwrap().to_string());
    }
    // Each client connection was its own; the gateway's connection to the
    // server was kept for all of them (the server saw one peer).
    assert!(remotes.iter().all(|r| *r == remotes[0]), "{remotes:?}");
    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            "revision_app_request_count",
            &[("revision_name", "hello-00001"), ("response_code", "200")]
        ),
        Some(4.0),
        "{m}"
    );
    assert!(
        series(
            &m,
            "flint_start_latencies_count",
            &[("revision_name", "hello-00001")]
        )
        .is_none(),
        "the deploy's own instance served: no start for a request\n{m}"
    );
    gw.stop().await;
}

/// A server that exits is replaced by a new instance at the next request
/// (its state starts again); one that exits before it listens fails the
/// revision's readiness check with its status; a container without a port
/// is still a CGI program.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_server_is_replaced_and_one_that_never_listens_is_not_ready() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let gw = start(&[service("hello", &tar, "", PORT_8080, "")], 1 << 20).await;
    let host = "hello.default.example.com";
    let (code, head, _) = http(gw.addr, "GET", host, "/exit", b"").await;
    assert_eq!(code, 200);
    let first = header(&head, "x-instance").unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, head, body) = http(gw.addr, "GET", host, "/", b"").await;
    assert_eq!(code, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert_eq!(header(&head, "x-served"), Some("1"), "a new instance");
    assert_ne!(header(&head, "x-instance"), Some(first.as_str()));
    let m = metrics(&gw).await;
    assert_eq!(
        series(
            &m,
            "flint_requests_total",
            &[("revision_name", "hello-00001"), ("start", "cold")]
        ),
        Some(1.0),
        "{m}"
    );

    // `sh -c 'exit 7'` never listens.
    let bad = manifest::parse(&service(
        "bad",
        &tar,
        "",
        PORT_8080,
        "          command: [\"/bin/sh\", \"-c\", \"exit 7\"]\n",
    ))
    .unwrap();
    let gw2 = gw.gw.clone();
    let state = gw._state.path().to_path_buf();
    let err = tokio::task::spawn_blocking(move || {
        gw2.registry
            .apply(bad, &PathBuf::from("."), &state)
            .unwrap_err()
    })
    .await
    .unwrap();
    let msg = flint_gateway::registry::error_chain(&err);
    assert!(
        msg.contains("failed its readiness check")
            && msg.contains("exit status 7")
            && msg.contains("before it listened on port 8080"),
        "{msg}"
    );
    gw.stop().await;
}

/// `containerPort` sets `PORT`; under `flint.dev/isolation: request` every
/// request has an instance of its own (the counter is always 1); a
/// `readinessProbe.httpGet` path is asked until it answers 200 (the server
/// fails it twice) before the instance serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_declared_port_is_used_and_isolated_requests_get_their_own_server() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let gw = start(
        &[service(
            "iso",
            &tar,
            "        flint.dev/isolation: request\n",
            "            - containerPort: 9000\n              name: http1\n          readinessProbe:\n            httpGet:\n              path: /ready\n",
            "",
        )],
        1 << 20,
    )
    .await;
    let host = "iso.default.example.com";
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (code, head, body) = http(gw.addr, "GET", host, "/", b"").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "{head} {body}");
        assert!(body.contains("PORT=9000\n"), "{body}");
        assert_eq!(header(&head, "x-served"), Some("1"), "{head}");
        assert_eq!(header(&head, "x-probes"), Some("3"), "{head}");
        let i = header(&head, "x-instance").unwrap().to_string();
        assert!(!seen.contains(&i), "a fresh instance each time");
        seen.push(i);
    }
    gw.stop().await;
}

/// Under `flint.dev/snapshot: "true"` the deploy's ready instance is
/// frozen into the revision's template and every later instance is
/// thawed from it: here each isolated request's instance has served
/// nothing (its counter is 1), passed the readiness path already (the
/// template's three probes), and carries the template's start time, the
/// state a fresh run of the program would not have; it has its own
/// memory all the same (the counter of one is not another's). Nothing is
/// left running once the gateway stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_instances_start_from_the_revisions_template() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let gw = start(
        &[service(
            "snap",
            &tar,
            "        flint.dev/isolation: request\n        flint.dev/snapshot: \"true\"\n",
            "            - containerPort: 8080\n          readinessProbe:\n            httpGet:\n              path: /ready\n",
            "",
        )],
        1 << 20,
    )
    .await;
    let host = "snap.default.example.com";
    let mut instances = Vec::new();
    for _ in 0..4 {
        let (code, head, body) = http(gw.addr, "GET", host, "/", b"").await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "{head} {body}");
        assert!(body.contains("K_REVISION=snap-00001\n"), "{body}");
        assert_eq!(header(&head, "x-served"), Some("1"), "{head}");
        assert_eq!(header(&head, "x-probes"), Some("3"), "{head}");
        instances.push(header(&head, "x-instance").unwrap().to_string());
    }
    assert!(
        instances.iter().all(|i| *i == instances[0]),
        "{instances:?}"
    );
    let m = metrics(&gw).await;
    let rev = [("revision_name", "snap-00001"), ("from", "template")];
    // The first request took the deploy's own instance; three or more
    // were thawed (each one taken is replaced at once).
    let thawed = series(&m, "flint_server_starts_total", &rev).unwrap_or(0.0);
    assert!(thawed >= 3.0, "{m}");
    let cold = [("revision_name", "snap-00001"), ("from", "cold")];
    assert_eq!(series(&m, "flint_server_starts_total", &cold), None, "{m}");
    gw.stop().await;
    wait_for("no VM after the gateway stopped", 10, || {
        vcpu_threads() == 0
    })
    .await;
}

/// A server that forks a process per connection (busybox `httpd`)
/// freezes once the child that took the readiness probe's connection has
/// ended, and its clones fork their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forking_server_starts_from_its_template_too() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let gw = start(
        &[service(
            "fork",
            &tar,
            "        flint.dev/isolation: request\n        flint.dev/snapshot: \"true\"\n",
            PORT_8080,
            "          command: [\"/bin/sh\", \"-c\", \"echo made at start > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp\"]\n",
        )],
        1 << 20,
    )
    .await;
    for _ in 0..3 {
        let (code, head, body) = http(
            gw.addr,
            "GET",
            "fork.default.example.com",
            "/index.html",
            b"",
        )
        .await;
        assert_eq!(code, 200, "{head}");
        assert_eq!(String::from_utf8_lossy(&body), "made at start\n");
    }
    let m = metrics(&gw).await;
    let rev = [("revision_name", "fork-00001"), ("from", "template")];
    let thawed = series(&m, "flint_server_starts_total", &rev).unwrap_or(0.0);
    assert!(thawed >= 2.0, "{m}");
    gw.stop().await;
    // httpd, process 1, ignores SIGTERM: SIGKILL ends it after the
    // 10 s grace.
    wait_for("no VM after the gateway stopped", 20, || {
        vcpu_threads() == 0
    })
    .await;
}

/// A streamed response reaches the client as the server writes it (its
/// first line long before the second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_servers_response_streams() {
    let _one = SERIAL.lock().await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (_dir, tar) = image(&go_server());
    let gw = start(&[service("s", &tar, "", PORT_8080, "")], 1 << 20).await;
    let mut c = BufReader::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    c.get_mut()
        .write_all(b"GET /stream HTTP/1.1\r\nHost: s.default.example.com\r\n\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut line = String::new();
    let mut lines = Vec::new();
    while !line.contains("second") {
        line.clear();
        if c.read_line(&mut line).await.unwrap() == 0 {
            break;
        }
        lines.push((line.trim_end().to_string(), t0.elapsed()));
    }
    let at = |s: &str| lines.iter().find(|(l, _)| l == s).map(|(_, t)| *t);
    let (first, second) = (at("first").unwrap(), at("second").unwrap());
    assert!(second - first >= Duration::from_millis(1000), "{lines:?}");
    gw.stop().await;
}

/// With no traffic for a stable window the revision scales to zero and its
/// VM goes; the next request starts a server again and waits for it (a
/// cold start, timed in `flint_start_latencies`); once the gateway stops,
/// no VM is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_scales_to_zero_and_back_and_nothing_is_left_running() {
    let _one = SERIAL.lock().await;
    wait_for("earlier tests' VMs to go", 10, || vcpu_threads() == 0).await;
    let (_dir, tar) = image(&go_server());
    let gw = start(
        &[service(
            "z",
            &tar,
            "        autoscaling.knative.dev/window: 6s\n",
            PORT_8080,
            "",
        )],
        1 << 20,
    )
    .await;
    let host = "z.default.example.com";
    assert!(vcpu_threads() >= 1, "the first instance runs");
    let (code, _, _) = http(gw.addr, "GET", host, "/", b"").await;
    assert_eq!(code, 200);
    let rev = gw.gw.registry.routed_revisions().remove(0);
    wait_for("scale to zero", 40, || {
        rev.instances.counts() == (0, 0)
            && rev.desired.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    wait_for("the VM to go", 10, || vcpu_threads() == 0).await;
    let (code, head, _) = http(gw.addr, "GET", host, "/", b"").await;
    assert_eq!(code, 200);
    assert_eq!(header(&head, "x-served"), Some("1"), "{head}");
    let m = metrics(&gw).await;
    let rev_label = [("revision_name", "z-00001")];
    assert_eq!(
        series(&m, "flint_start_latencies_count", &rev_label),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "flint_requests_total",
            &[("revision_name", "z-00001"), ("start", "cold")]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(vcpu_threads() >= 1);
    gw.stop().await;
    wait_for("no VM after the gateway stopped", 10, || {
        vcpu_threads() == 0
    })
    .await;
}

/// `containerConcurrency`: an instance never serves more requests at once
/// than it (each `/stream` response says how many its server had then);
/// with 0 (no limit) one instance takes them all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn container_concurrency_holds_per_server_instance() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let with_cc = |name: &str, cc: u32| {
        service(name, &tar, "", PORT_8080, "").replace(
            "    spec:\n      containers:",
            &format!("    spec:\n      containerConcurrency: {cc}\n      containers:"),
        )
    };
    let gw = start(&[with_cc("one", 1), with_cc("any", 0)], 1 << 20).await;
    let addr = gw.addr;
    for (host, most) in [
        ("one.default.example.com", 1),
        ("any.default.example.com", 3),
    ] {
        let all: Vec<_> = (0..3)
            .map(|_| tokio::spawn(async move { http(addr, "GET", host, "/stream", b"").await }))
            .collect();
        let mut seen = Vec::new();
        for t in all {
            let (code, head, body) = t.await.unwrap();
            assert_eq!(code, 200, "{head}");
            assert_eq!(String::from_utf8_lossy(&body), "first\nsecond\n");
            seen.push(
                header(&head, "x-concurrent")
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
        }
        assert_eq!(seen.iter().max(), Some(&most), "{host}: {seen:?}");
    }
    gw.stop().await;
}

/// A server that misbehaves costs only its own request: no answer within
/// `timeoutSeconds` is a 504, bytes that are not HTTP a 502, a body cut
/// short a response cut short (never a clean end); the instance serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misbehaving_server_fails_only_its_request() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let yaml = service("bad", &tar, "", PORT_8080, "").replace(
        "    spec:\n      containers:",
        "    spec:\n      timeoutSeconds: 4\n      containers:",
    );
    let gw = start(&[yaml], 1 << 20).await;
    let host = "bad.default.example.com";
    let (_, head, _) = http(gw.addr, "GET", host, "/", b"").await;
    let instance = header(&head, "x-instance").unwrap().to_string();
    let (code, _, body) = http(gw.addr, "GET", host, "/hang", b"").await;
    assert_eq!(code, 504, "{}", String::from_utf8_lossy(&body));
    let (code, _, body) = http(gw.addr, "GET", host, "/garbage", b"").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("the server did not answer"), "{body}");
    // The head went out; the body ends without its last chunk.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET /cut HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("partial"), "{out}");
    assert!(!out.ends_with("0\r\n\r\n"), "a clean end: {out:?}");
    let (code, head, _) = http(gw.addr, "GET", host, "/", b"").await;
    assert_eq!(code, 200);
    assert_eq!(header(&head, "x-served"), Some("2"), "{head}");
    assert_eq!(
        header(&head, "x-instance"),
        Some(instance.as_str()),
        "the same instance"
    );
    gw.stop().await;
}

/// A new revision takes the traffic and the old one's idle server stops
/// (a revision no route names keeps no instance); deleting the service
/// stops the new one's, with SIGTERM first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaced_and_deleted_revisions_stop_their_servers() {
    let _one = SERIAL.lock().await;
    wait_for("earlier tests' VMs to go", 10, || vcpu_threads() == 0).await;
    let (_dir, tar) = image(&go_server());
    let v1 = service("up", &tar, "", PORT_8080, "");
    let gw = start(std::slice::from_ref(&v1), 1 << 20).await;
    let host = "up.default.example.com";
    let (_, _, body) = http(gw.addr, "GET", host, "/", b"").await;
    assert!(String::from_utf8_lossy(&body).contains("K_REVISION=up-00001"));
    let old = gw.gw.registry.routed_revisions().remove(0);
    let v2 = manifest::parse(&v1.replace("value: world", "value: again")).unwrap();
    let (gw2, state) = (gw.gw.clone(), gw._state.path().to_path_buf());
    tokio::task::spawn_blocking(move || gw2.registry.apply(v2, &PathBuf::from("."), &state))
        .await
        .unwrap()
        .unwrap();
    let (_, _, body) = http(gw.addr, "GET", host, "/", b"").await;
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("K_REVISION=up-00002") && body.contains("TARGET=again"),
        "{body}"
    );
    wait_for("the old revision's server to stop", 10, || {
        old.instances.counts() == (0, 0)
    })
    .await;
    let new = gw.gw.registry.routed_revisions().remove(0);
    assert_eq!(new.instances.counts().0 + new.instances.counts().1, 1);
    assert!(gw.gw.registry.delete("default", "up"));
    assert_eq!(new.instances.counts(), (0, 0));
    // Stopped as a pod's container is: SIGTERM first (the server writes
    // that it got it into its root, then exits).
    let stopped = gw._state.path().join("default/up-00002/rootfs/tmp/stopped");
    wait_for("the server's SIGTERM", 10, || stopped.exists()).await;
    assert_eq!(std::fs::read_to_string(&stopped).unwrap(), "SIGTERM\n");
    wait_for("no VM after the delete", 10, || vcpu_threads() == 0).await;
    gw.stop().await;
}

/// A Rust server on tokio and hyper: a port named `h2c` is spoken to over
/// HTTP/2 with prior knowledge (several requests at once), an unnamed one
/// over HTTP/1.1; an HTTP/1.1 client reaches either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_h2c_port_is_spoken_to_over_http2() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&flint_examples::linux_path("rshyper"));
    let gw = start(
        &[
            service(
                "two",
                &tar,
                "",
                "            - containerPort: 8080\n              name: h2c\n",
                "",
            ),
            service("one", &tar, "", PORT_8080, ""),
        ],
        1 << 20,
    )
    .await;
    let addr = gw.addr;
    let all: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                http(
                    addr,
                    "POST",
                    "two.default.example.com",
                    &format!("/r{i}"),
                    b"data",
                )
                .await
            })
        })
        .collect();
    for (i, t) in all.into_iter().enumerate() {
        let (code, head, body) = t.await.unwrap();
        assert_eq!(code, 200, "{head}");
        assert_eq!(
            String::from_utf8_lossy(&body),
            format!("POST /r{i} HTTP/2.0 data\n")
        );
    }
    let (code, _, body) = http(addr, "GET", "one.default.example.com", "/x", b"").await;
    assert_eq!(
        (code, String::from_utf8_lossy(&body).as_ref()),
        (200, "GET /x HTTP/1.1 \n")
    );
    gw.stop().await;
}

/// A server deployed without a port is run as a CGI program, which it is
/// not: it is stopped as soon as it listens, and the answer says what to
/// declare (rather than waiting out `timeoutSeconds`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_without_a_declared_port_is_told_apart() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let gw = start(
        &[service(
            "noport",
            &tar,
            "",
            "",
            "          command: [\"/bin/sh\", \"-c\", \"exec busybox httpd -f -p 8081\"]\n",
        )],
        1 << 20,
    )
    .await;
    let t0 = std::time::Instant::now();
    let (code, _, body) = http(gw.addr, "GET", "noport.default.example.com", "/", b"").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("listens on port 8081") && body.contains("containerPort: 8081"),
        "{body}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "it waited for the timeout"
    );
    gw.stop().await;
}

/// A server that closes idle keep-alive connections (Go's `IdleTimeout`,
/// 200 ms here) costs no request: a kept connection it closed is not
/// used again (or, closed as a request went out, the request goes on a new
/// one), and connections in quick succession are still shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_closing_idle_connections_loses_no_request() {
    let _one = SERIAL.lock().await;
    let (_dir, tar) = image(&go_server());
    let yaml = service("idle", &tar, "", PORT_8080, "").replace(
        "              value: world\n",
        "              value: world\n            - name: IDLE_TIMEOUT_MS\n              value: \"200\"\n",
    );
    let gw = start(&[yaml], 1 << 20).await;
    let host = "idle.default.example.com";
    let mut peers = Vec::new();
    for pause in [0, 0, 400, 0, 190, 210, 400, 0] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let (code, head, body) = http(gw.addr, "GET", host, "/", b"").await;
        assert_eq!(
            code,
            200,
            "after {pause} ms: {head} {}",
            String::from_utf8_lossy(&body)
        );
        peers.push((pause, header(&head, "x-remote").unwrap().to_string()));
    }
    // Back to back, one connection; after the server closed it, another.
    assert_eq!(peers[0].1, peers[1].1, "{peers:?}");
    assert_ne!(peers[1].1, peers[2].1, "{peers:?}");
    assert_eq!(peers[2].1, peers[3].1, "{peers:?}");
    gw.stop().await;
}
