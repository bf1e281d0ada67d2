//! `flint serve` with `flint apply`, `flint list` and `flint delete`, as a
//! user runs them, ending with SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{flint, text};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let body = if head.to_lowercase().contains("transfer-encoding: chunked") {
        // Size lines and data alternate; the last chunk is empty.
        let mut data = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            data.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        data
    } else {
        body.to_string()
    };
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body,
    )
}

/// A Service manifest for the greet example at `path`.
fn write_hello_manifest(path: &std::path::Path) {
    std::fs::write(
        path,
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}\n",
            flint_examples::path("greet").display()
        ),
    )
    .unwrap();
}

/// A `flint serve` child, killed if its test ends (or fails) while it
/// still runs.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Server {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Stops `flint serve` with SIGTERM; it must exit 0. Returns its stderr.
fn sigterm(server: &mut std::process::Child) -> String {
    // SAFETY: sends SIGTERM to our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = server.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = server.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    assert!(status.success(), "{err}");
    err
}

/// `flint serve` on `port`, its metrics on `metrics`, its state in
/// `state`, its stdout dropped and its stderr kept; callers add the rest.
fn serve_command(port: u16, metrics: u16, state: impl AsRef<std::path::Path>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flint"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .arg("--state-dir")
        .arg(state.as_ref())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A temporary directory the user `flint serve` becomes can read, for a
/// test that must run as root (it says so otherwise).
fn readable_dir_as_root() -> tempfile::TempDir {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test runs as root");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// Waits for the admin socket of a `flint serve` whose state is `state`;
/// its `--admin` address.
fn admin_socket(state: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.join("admin.sock").exists() {
        assert!(Instant::now() < deadline, "no admin socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    format!("unix:{}", state.join("admin.sock").display())
}

/// The gateway whose metrics are on `metrics` refused no system call.
fn assert_nothing_refused(metrics: u16) {
    let (_, metrics_text) = get(metrics, "localhost", "/metrics");
    let refused = metrics_text
        .lines()
        .find(|l| l.starts_with("flint_seccomp_refused_calls_total"))
        .and_then(|l| l.split_whitespace().last());
    assert_eq!(refused, Some("0"), "{metrics_text}");
}

/// Waits until something listens on `port`.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "flint serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_apply_list_delete_and_sigterm() {
    let (port, admin) = (free_port(), free_port());
    let state_tmp = tempfile::tempdir().unwrap();
    let state = state_tmp.path().join("state");
    let dir_tmp = tempfile::tempdir().unwrap();
    let dir = dir_tmp.path();
    let manifest = dir.join("hello.yaml");
    write_hello_manifest(&manifest);
    let mut server = serve_command(port, admin, &state)
        .arg("--image-root")
        .arg(flint_examples::path("greet").parent().unwrap())
        .arg(&manifest)
        .spawn()
        .map(Server)
        .unwrap();
    wait_listening(port);
    assert_eq!(
        get(port, "hello.default.example.com", "/greet?name=ada"),
        (200, "hello, ada\n".into())
    );
    // The admin API is on a Unix socket only its owner may use; the
    // metrics port refuses it.
    let sock = state.join("admin.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
    let o = flint(&["list", "--admin", &format!("127.0.0.1:{admin}")], "", &[]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        text(&o.stderr).contains("admin socket"),
        "{}",
        text(&o.stderr)
    );
    let a = format!("unix:{}", sock.display());
    let o = flint(&["list", "--admin", &a], "", &[]);
    assert!(
        text(&o.stdout).contains("\"revision\":\"hello-00001\""),
        "{}",
        text(&o.stdout)
    );
    // Apply again unchanged: no new revision (Knative's rule); changed: one.
    let o = flint(
        &["apply", "--admin", &a, manifest.to_str().unwrap()],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("hello-00001"),
        "{}",
        text(&o.stdout)
    );
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        yaml + "          env:\n            - name: V\n              value: \"2\"\n",
    )
    .unwrap();
    let o = flint(
        &["apply", "--admin", &a, manifest.to_str().unwrap()],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("hello-00002"),
        "{}",
        text(&o.stdout)
    );
    // `flint get`: a summary, and the Service with its Knative status.
    let o = flint(&["get", "hello", "--admin", &a], "", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let line = text(&o.stdout).lines().nth(1).unwrap_or("").to_string();
    assert_eq!(
        line.split('\t').collect::<Vec<_>>(),
        [
            "hello",
            "http://hello.default.example.com",
            "hello-00002",
            "hello-00002",
            "True",
            ""
        ],
        "{}",
        text(&o.stdout)
    );
    let o = flint(&["get", "hello", "-o", "json", "--admin", &a], "", &[]);
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(v["kind"], "Service");
    assert_eq!(v["status"]["traffic"][0]["percent"], 100);
    assert_eq!(v["status"]["traffic"][0]["revisionName"], "hello-00002");
    let o = flint(&["get", "hello", "-o", "yaml", "--admin", &a], "", &[]);
    assert!(
        text(&o.stdout).contains("latestReadyRevisionName: hello-00002"),
        "{}",
        text(&o.stdout)
    );
    let o = flint(&["get", "nothere", "--admin", &a], "", &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing service is a usage error"
    );
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers:\n        - imagee: x\n").unwrap();
    let o = flint(&["apply", "--admin", &a, bad.to_str().unwrap()], "", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("spec.template.spec.containers[0].imagee: unknown field"),
        "{}",
        text(&o.stderr)
    );
    let o = flint(&["delete", "hello", "--admin", &a], "", &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(get(port, "hello.default.example.com", "/").0, 404);
    // SIGTERM: drains and exits 0.
    let err = sigterm(&mut server);
    assert!(err.contains("draining"), "{err}");
}

/// The admin API on TCP needs the bearer token from --admin-token-file;
/// without it (or with a wrong one) every API call is refused with 401.
#[test]
fn the_admin_api_on_tcp_needs_its_token() {
    let (port, metrics, adm) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-of-enough-length\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token-at-all-no\n").unwrap();
    let mut server = serve_command(port, metrics, dir.path().join("state"))
        .args(["--admin", &format!("tcp:127.0.0.1:{adm}")])
        .arg("--admin-token-file")
        .arg(&token)
        .stderr(Stdio::null())
        .spawn()
        .map(Server)
        .unwrap();
    wait_listening(adm);
    let a = format!("tcp:127.0.0.1:{adm}");
    let o = flint(&["list", "--admin", &a], "", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("401"), "{}", text(&o.stderr));
    let o = flint(
        &[
            "list",
            "--admin",
            &a,
            "--admin-token-file",
            wrong.to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    let o = flint(
        &[
            "list",
            "--admin",
            &a,
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "[]\n");
    // A token file is required for TCP at all.
    let o = flint(
        &[
            "serve",
            "--state-dir",
            dir.path().join("s2").to_str().unwrap(),
            "--admin",
            "tcp:127.0.0.1:0",
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--admin-token-file"),
        "{}",
        text(&o.stderr)
    );
    // SAFETY: sends SIGTERM to our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().unwrap().success());
}

/// Started as root with --user, the gateway keeps serving as that user,
/// with no capability left and no_new_privs set.
#[test]
fn serve_drops_to_an_unprivileged_user() {
    let (port, metrics) = (free_port(), free_port());
    let dir = readable_dir_as_root();
    let manifest = dir.path().join("hello.yaml");
    write_hello_manifest(&manifest);
    let mut server = serve_command(port, metrics, dir.path().join("state"))
        .arg("--image-root")
        .arg(flint_examples::path("greet").parent().unwrap())
        .args(["--user", "nobody"])
        .arg(&manifest)
        .spawn()
        .map(Server)
        .unwrap();
    wait_listening(port);
    // It listens first and drops privileges right after: wait for that.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap();
        if !status.lines().any(|l| l.starts_with("Uid:\t0")) || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    assert!(field("Uid:").starts_with("65534"), "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    // Requests still boot VMs (through the KVM fd opened before the drop),
    // and the VMs are reset in place after each (through the pagemap
    // opened before it: an unprivileged process cannot open its own).
    for _ in 0..3 {
        assert_eq!(
            get(port, "hello.default.example.com", "/greet?name=nobody"),
            (200, "hello, nobody\n".into())
        );
    }
    let (_, metrics_text) = get(metrics, "localhost", "/metrics");
    let resets: f64 = metrics_text
        .lines()
        .find_map(|l| l.strip_prefix("flint_reset_latencies_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(resets >= 1.0, "no reset in place:\n{metrics_text}");
    let err = sigterm(&mut server);
    assert!(!err.contains("could not be reset"), "{err}");
}

/// The seccomp mode of every thread of process `pid`.
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let get = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            Some((get("Name:"), get("Seccomp:")))
        })
        .collect()
}

/// `flint serve` puts all of its threads under its seccomp filter once it
/// is set up, and serving needs no call outside it: an apply at run time
/// (a module snapshotted, a Linux image unpacked), requests to a module,
/// to a CloudEvents consumer and to a Linux program, a trapping function,
/// a delete and the drain on SIGTERM all work with no call refused.
#[test]
fn every_thread_of_serve_is_under_its_seccomp_filter() {
    let (port, metrics) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A Linux image: a shell CGI program on a busybox root.
    let root = tempfile::tempdir().unwrap();
    for d in ["bin", "srv"] {
        std::fs::create_dir(root.path().join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).expect("install busybox-static");
    std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.path().join("bin/cat")).unwrap();
    let script =
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"linux $QUERY_STRING\"\ncat\n";
    std::fs::write(root.path().join("srv/handler"), script).unwrap();
    std::fs::set_permissions(
        root.path().join("srv/handler"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let images = tempfile::tempdir().unwrap();
    let tar = images.path().join("sh.tar");
    let config = serde_json::json!({"Entrypoint": ["/srv/handler"], "Env": ["PATH=/bin"]});
    std::fs::write(
        &tar,
        flint_image::build_dir(root.path(), config, "docker.io/library/shcgi:v1").unwrap(),
    )
    .unwrap();
    let service = |name: &str, image: &std::path::Path| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}\n",
            image.display()
        )
    };
    std::fs::write(images.path().join("sh.yaml"), service("sh", &tar)).unwrap();
    for ex in ["trap", "greet"] {
        std::fs::copy(
            flint_examples::path(ex),
            images.path().join(format!("{ex}.wasm")),
        )
        .unwrap();
    }
    std::fs::write(
        images.path().join("trap.yaml"),
        service("trap", &images.path().join("trap.wasm")),
    )
    .unwrap();
    let manifest = images.path().join("hello.yaml");
    std::fs::write(
        &manifest,
        service("hello", &images.path().join("greet.wasm")),
    )
    .unwrap();
    let mut server = serve_command(port, metrics, &state)
        .arg("--image-root")
        .arg(images.path())
        .arg(&manifest)
        .spawn()
        .map(Server)
        .unwrap();
    wait_listening(port);
    let a = admin_socket(&state);
    for m in ["sh.yaml", "trap.yaml"] {
        let o = flint(
            &[
                "apply",
                "--admin",
                &a,
                images.path().join(m).to_str().unwrap(),
            ],
            "",
            &[],
        );
        assert_eq!(o.status.code(), Some(0), "{m}: {}", text(&o.stderr));
    }
    assert_eq!(
        get(port, "hello.default.example.com", "/greet?name=ada"),
        (200, "hello, ada\n".into())
    );
    let (code, body) = get(port, "sh.default.example.com", "/?q=1");
    assert_eq!((code, body.as_str()), (200, "linux q=1\n"));
    assert_eq!(get(port, "trap.default.example.com", "/").0, 502);
    // A CloudEvent in binary mode to the module.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /greet?name=ev HTTP/1.1\r\nHost: hello.default.example.com\r\nce-specversion: 1.0\r\nce-id: 1\r\nce-source: /t\r\nce-type: t\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 2"), "{out}");
    // HTTP/2, by prior knowledge and by an h2c upgrade (curl).
    for how in ["--http2-prior-knowledge", "--http2"] {
        let o = Command::new("curl")
            .args([
                "-sS",
                how,
                "-H",
                "Host: hello.default.example.com",
                "-w",
                " %{http_version}",
                &format!("http://127.0.0.1:{port}/greet?name=h2"),
            ])
            .output()
            .expect("curl (scripts/deps installs it)");
        assert_eq!(
            text(&o.stdout),
            "hello, h2\n 2",
            "{how}: {}",
            text(&o.stderr)
        );
    }
    assert_nothing_refused(metrics);
    let modes = thread_modes(server.id());
    assert!(modes.len() > 2, "{modes:?}");
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name} is not filtered: {modes:?}");
    }
    let o = flint(&["delete", "sh", "--admin", &a], "", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let err = sigterm(&mut server);
    assert!(
        !err.contains("seccomp refused"),
        "serving made a call outside its filter:\n{err}"
    );
}

/// A relative `image:` resolves against the manifest's directory, not the
/// gateway's working directory, and `--domain` names the host services
/// answer at (`NAME.NAMESPACE.DOMAIN`; another domain finds nothing).
#[test]
fn relative_images_resolve_against_the_manifest_and_domain_names_the_hosts() {
    let (port, admin) = (free_port(), free_port());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("site");
    std::fs::create_dir_all(root.join("functions")).unwrap();
    std::fs::create_dir_all(root.join("services")).unwrap();
    std::fs::copy(
        flint_examples::path("greet"),
        root.join("functions/greet.wasm"),
    )
    .unwrap();
    let manifest = root.join("services/hello.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n        - image: ../functions/greet.wasm\n",
    )
    .unwrap();
    // Started elsewhere: from here the relative path names nothing.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut server = serve_command(port, admin, tmp.path().join("state"))
        .current_dir(&elsewhere)
        .args(["--domain", "flint.test"])
        .arg("--image-root")
        .arg(&root)
        .arg(&manifest)
        .spawn()
        .map(Server)
        .unwrap();
    wait_listening(port);
    assert_eq!(
        get(port, "hello.default.flint.test", "/greet?name=ada"),
        (200, "hello, ada\n".into())
    );
    assert_eq!(get(port, "hello.default.example.com", "/greet").0, 404);
    let err = sigterm(&mut server);
    assert!(err.contains("hello.default.flint.test"), "{err}");
}

/// A Linux image whose container declares a port is a server: busybox's
/// `httpd` (from Debian's busybox-static), started by `flint serve` as
/// root that then becomes `nobody`, one from the command line (its
/// readiness checked before the change of user, its instance started again
/// after) and one applied at run time; both answer on `$PORT`, every
/// thread is filtered, no call is refused, and SIGTERM ends it cleanly.
#[test]
fn serve_runs_linux_servers_on_their_port_as_an_unprivileged_user() {
    let (port, metrics) = (free_port(), free_port());
    let images = readable_dir_as_root();
    let root = tempfile::tempdir().unwrap();
    for d in ["bin", "www"] {
        std::fs::create_dir(root.path().join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox")).expect("install busybox-static");
    for a in ["sh", "httpd"] {
        std::os::unix::fs::symlink("busybox", root.path().join("bin").join(a)).unwrap();
    }
    std::fs::write(root.path().join("www/index.html"), "served by httpd\n").unwrap();
    let tar = images.path().join("httpd.tar");
    let config = serde_json::json!({
        "Entrypoint": ["/bin/sh", "-c", "exec httpd -f -p $PORT -h /www"],
        "Env": ["PATH=/bin"],
    });
    std::fs::write(
        &tar,
        flint_image::build_dir(root.path(), config, "docker.io/library/httpd:v1").unwrap(),
    )
    .unwrap();
    let service = |name: &str, port: u16| {
        format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n        - image: {}\n          ports:\n            - containerPort: {port}\n",
            tar.display()
        )
    };
    std::fs::write(images.path().join("web.yaml"), service("web", 8080)).unwrap();
    std::fs::write(images.path().join("late.yaml"), service("late", 3000)).unwrap();
    let state = images.path().join("state");
    let mut server = serve_command(port, metrics, &state)
        .arg("--image-root")
        .arg(images.path())
        .args(["--user", "nobody"])
        .arg(images.path().join("web.yaml"))
        .spawn()
        .map(Server)
        .unwrap();
    wait_listening(port);
    let a = admin_socket(&state);
    let o = flint(
        &[
            "apply",
            "--admin",
            &a,
            images.path().join("late.yaml").to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    for host in ["web.default.example.com", "late.default.example.com"] {
        for _ in 0..2 {
            assert_eq!(get(port, host, "/"), (200, "served by httpd\n".into()));
        }
        assert_eq!(get(port, host, "/missing").0, 404, "httpd's own answer");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
    let modes = thread_modes(server.id());
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name} is not filtered: {modes:?}");
    }
    assert_nothing_refused(metrics);
    let err = sigterm(&mut server);
    assert!(!err.contains("seccomp refused"), "{err}");
}
