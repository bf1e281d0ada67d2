//! CloudEvents with an independent client: the Python `cloudevents` SDK
//! (installed by scripts/test) talks to a real gateway over loopback.

use std::path::PathBuf;
use std::process::Command;

use flint_gateway::{manifest, serve, Gateway, Settings};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_cloudevents_sdk_round_trips_every_mode() {
    let state_dir = tempfile::Builder::new()
        .prefix("flint-gw-py-")
        .tempdir()
        .unwrap();
    let state = state_dir.path().to_path_buf();
    let gw = Gateway::new(Settings {
        domain: "example.com".into(),
        max_body_bytes: 1 << 20,
        state_dir: state.clone(),
        policy: Default::default(),
    });
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: events\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}\n",
        flint_examples::path("ce-responder").display()
    );
    let s = manifest::parse(&yaml).unwrap();
    let g = gw.clone();
    tokio::task::spawn_blocking(move || g.registry.apply(s, &PathBuf::from("."), &state).unwrap())
        .await
        .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(gw, l, None, async move {
        let _ = rx.await;
    }));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/ce_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(addr.to_string())
            .arg("events.default.example.com")
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs (scripts/test installs the cloudevents package)");
    let _ = tx.send(());
    server.await.unwrap();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
