//! Under a low fd limit, more idle clients than fds neither make the
//! accept loop spin nor stop the gateway: once the idle ones time out,
//! requests are served again. A test binary of its own: it lowers the
//! process's RLIMIT_NOFILE.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flint_gateway::{manifest, serve, Gateway, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into a zeroed struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_clients_than_fds_do_not_stop_the_gateway() {
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::new(Settings {
        domain: "example.com".into(),
        max_body_bytes: 1 << 20,
        state_dir: state.path().to_path_buf(),
        policy: Default::default(),
    });
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}\n",
        flint_examples::path("greet").display()
    );
    let s = manifest::parse(&yaml).unwrap();
    let (g, st) = (gw.clone(), state.path().to_path_buf());
    tokio::task::spawn_blocking(move || g.registry.apply(s, &PathBuf::from("."), &st).unwrap())
        .await
        .unwrap();
    // 300 fds for everything: the test's own client sockets included.
    let lim = libc::rlimit {
        rlim_cur: 300,
        rlim_max: 4096,
    };
    // SAFETY: setrlimit reads `lim`.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(serve(gw, l, None, async move {
        let _ = rx.await;
    }));
    // Idle clients, as many as the test's fds allow.
    let mut idle = Vec::new();
    while idle.len() < 200 {
        match TcpStream::connect(addr).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    assert!(idle.len() >= 100, "{} idle clients", idle.len());
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /greet HTTP/1.1\r\nHost: hello.default.example.com\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("served in time")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    assert!(
        cpu < wall * 0.5,
        "the accept loop spun: {cpu:.1} s of CPU in {wall:.1} s"
    );
    drop(idle);
    let _ = tx.send(());
    done.await.unwrap();
}
