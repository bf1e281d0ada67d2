//! containerd benchmark: Flint's shim beside runc, on one containerd
//! (Debian's, started here with its CRI plugin on its own socket).
//!
//! - `ctr run --rm` to exit: Flint running hello.wasm vs runc running a
//!   static busybox `echo`, both from images in containerd's store.
//! - Pod start to container output through CRI (the kubelet's path):
//!   RunPodSandbox, CreateContainer, StartContainer, until the container's
//!   line is in its log.
//! - Memory per pod: PSS of every process of the pod (Flint: the shim,
//!   which holds the VMs; runc: the shim, the sandbox and the container
//!   process), and for Flint what lies beyond the guest's resident RAM;
//!   this sets `overhead.podFixed` in runtime-class/deploy/.
//!
//! Run with `bench/containerd.sh` (root; installs containerd and
//! busybox-static, builds release binaries).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{median, ms, p90};

const FLINT_IMAGE: &str = "docker.io/library/flint-hello:bench";
const BUSYBOX_IMAGE: &str = "docker.io/library/busybox-static:bench";
const SANDBOX_IMAGE: &str = "docker.io/library/bench-pause:bench";
const NS: &str = "k8s.io";

struct Containerd {
    dir: PathBuf,
    sock: PathBuf,
    child: Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in pod_processes(&self.sock) {
            // SAFETY: kill(2) on a shim (or its child) of our containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Rootfs and shm mounts a killed shim or containerd left under our
        // directory (detached, so a busy one goes too).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        let under = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&prefix));
        for m in under {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a NUL-terminated path under our own directory.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Containerd {
    fn start(shim_dir: &Path) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("flint-bench-ctd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{0}/root"
state = "{0}/state"
[grpc]
  address = "{1}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.flint]
    runtime_type = "io.containerd.flint.v2"
"#,
            dir.display(),
            sock.display()
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log"))?)
            .spawn()
            .context("starting containerd")?;
        let me = Self { dir, sock, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !me.sock.exists() {
            ensure!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(me)
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.sock).args(["-n", NS]).args(args);
        c.stdin(Stdio::null());
        c
    }

    fn import(&self, name: &str, archive: Vec<u8>) -> Result<()> {
        let tar = self.dir.join(format!("{name}.tar"));
        std::fs::write(&tar, archive)?;
        let o = self
            .ctr(&["images", "import", tar.to_str().context("path")?])
            .output()?;
        ensure!(
            o.status.success(),
            "importing {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    }

    /// `ctr run --rm`, timed to its exit; checks the output.
    fn ctr_run(
        &self,
        runtime: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
        want: &str,
    ) -> Result<f64> {
        let mut args = vec!["run", "--rm", "--runtime", runtime, image, id];
        args.extend_from_slice(cmd);
        let t = Instant::now();
        let o = self.ctr(&args).output()?;
        let wall = ms(t.elapsed());
        ensure!(
            o.status.success() && String::from_utf8_lossy(&o.stdout) == want,
            "{runtime}: {:?} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(wall)
    }
}

/// Processes of our containerd's pods: its shims and their descendants.
fn pod_processes(sock: &Path) -> Vec<i32> {
    let sock = sock.display().to_string();
    let mut procs: Vec<(i32, i32, String)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // The parent pid follows the command name's closing parenthesis.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            procs.push((pid, ppid, String::from_utf8_lossy(&cmdline).into_owned()));
        }
    }
    let mut set: Vec<i32> = procs
        .iter()
        .filter(|(_, _, c)| c.contains("containerd-shim") && c.contains(&sock))
        .map(|p| p.0)
        .collect();
    loop {
        let more: Vec<i32> = procs
            .iter()
            .filter(|(pid, ppid, _)| set.contains(ppid) && !set.contains(pid))
            .map(|p| p.0)
            .collect();
        if more.is_empty() {
            return set;
        }
        set.extend(more);
    }
}

/// Proportional set size of a process, KiB.
fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn cri(sock: &Path) -> Result<RuntimeServiceClient<Channel>> {
    let sock = sock.to_path_buf();
    let ch = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(ch))
}

fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Pod {
    id: String,
    container: String,
    log: PathBuf,
}

/// Starts a pod with one container; returns once `want` is in its log.
async fn start_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    handler: &str,
    name: &str,
    logs: &Path,
    image: &str,
    command: &[&str],
    want: &str,
) -> Result<Pod> {
    let config = pod_config(name, logs);
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let log_path = format!("{name}.log");
    let container = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| s.to_string()).collect(),
                log_path: log_path.clone(),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: container.clone(),
    })
    .await
    .context("StartContainer")?;
    let log = logs.join(log_path);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(want)
    {
        ensure!(
            Instant::now() < deadline,
            "{handler}: no {want:?} in the log"
        );
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok(Pod { id, container, log })
}

async fn remove_pod(rt: &mut RuntimeServiceClient<Channel>, pod: Pod) -> Result<()> {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.id.clone(),
    })
    .await
    .context("StopPodSandbox")?;
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.id,
    })
    .await
    .context("RemovePodSandbox")?;
    let _ = std::fs::remove_file(pod.log);
    Ok(())
}

/// One table row of times (ms): medians and p90s, and the ratio of medians.
fn timing_row(what: &str, flint: Vec<f64>, runc: Vec<f64>) {
    let (fm, rm) = (median(flint.clone()), median(runc.clone()));
    println!(
        "| {what}, median (p90) | {fm:.1} ms ({:.1}) | {rm:.1} ms ({:.1}) | {:.2}x |",
        p90(flint),
        p90(runc),
        fm / rm
    );
}

pub fn main(iterations: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("the binary's directory")?;
    ensure!(
        bin_dir.join("containerd-shim-flint-v2").exists(),
        "build the shim first: cargo build --release -p flint-runtime-class"
    );
    for tool in ["containerd", "ctr", "runc"] {
        ensure!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed (apt-get install containerd runc)"
        );
    }
    let busybox =
        std::fs::read("/bin/busybox").context("/bin/busybox (apt-get install busybox-static)")?;
    let ctd = Containerd::start(bin_dir)?;
    let wasm = [
        ("hello.wasm", flint_examples::bytes("hello")),
        ("spin.wasm", flint_examples::bytes("spin")),
    ];
    let wasm: Vec<(&str, &[u8])> = wasm.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    ctd.import("flint", flint_image::build_with(&wasm, FLINT_IMAGE)?)?;
    let bb = [("busybox", busybox.as_slice())];
    ctd.import(
        "busybox",
        flint_image::build_files(
            &bb,
            serde_json::json!({"Entrypoint": ["/busybox"]}),
            BUSYBOX_IMAGE,
        )?,
    )?;
    ctd.import(
        "pause",
        flint_image::build_files(
            &bb,
            serde_json::json!({"Entrypoint": ["/busybox", "sleep", "2147483647"]}),
            SANDBOX_IMAGE,
        )?,
    )?;

    // 1. ctr run to exit, alternating so both see the same machine state.
    let (mut flint, mut runc, mut flint_bb) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..=iterations {
        // The same busybox image under Flint's Linux layer.
        let fb = ctd.ctr_run(
            "io.containerd.flint.v2",
            BUSYBOX_IMAGE,
            &format!("fb{i}"),
            &["/busybox", "echo", "hello, world"],
            "hello, world\n",
        )?;
        let f = ctd.ctr_run(
            "io.containerd.flint.v2",
            FLINT_IMAGE,
            &format!("f{i}"),
            &["/hello.wasm", "world"],
            "hello, world\n",
        )?;
        let r = ctd.ctr_run(
            "io.containerd.runc.v2",
            BUSYBOX_IMAGE,
            &format!("r{i}"),
            &["/busybox", "echo", "hello, world"],
            "hello, world\n",
        )?;
        if i > 0 {
            flint.push(f);
            runc.push(r);
            flint_bb.push(fb);
        }
    }
    println!("## containerd: Flint vs runc ({iterations} runs each, after one warm-up)\n");
    println!("| measure | Flint | runc | Flint / runc |");
    println!("|---|---|---|---|");
    timing_row(
        "`ctr run --rm` busybox echo (the same image)",
        flint_bb,
        runc.clone(),
    );
    timing_row("`ctr run --rm` to exit (Flint: hello.wasm)", flint, runc);

    // 2 and 3 through CRI.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = cri(&ctd.sock).await?;
        let logs = ctd.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let pods = iterations.clamp(3, 20);
        let (mut flint, mut runc) = (Vec::new(), Vec::new());
        for i in 0..=pods {
            for (handler, image, cmd, out) in [
                ("flint", FLINT_IMAGE, vec!["/hello.wasm", "pod"], &mut flint),
                (
                    "runc",
                    BUSYBOX_IMAGE,
                    vec!["/busybox", "echo", "hello, pod"],
                    &mut runc,
                ),
            ] {
                let t = Instant::now();
                let pod = start_pod(
                    &mut client,
                    handler,
                    &format!("{handler}-{i}"),
                    &logs,
                    image,
                    &cmd,
                    "stdout F hello, pod",
                )
                .await?;
                if i > 0 {
                    out.push(ms(t.elapsed()));
                }
                remove_pod(&mut client, pod).await?;
            }
        }
        timing_row("CRI pod start to container output", flint, runc);

        // Memory: one pod at a time with one running container.
        let mut rows = Vec::new();
        for (handler, image, cmd, want) in [
            (
                "flint",
                FLINT_IMAGE,
                vec!["/spin.wasm"],
                "stdout F spinning",
            ),
            (
                "runc",
                BUSYBOX_IMAGE,
                vec!["/busybox", "sh", "-c", "echo up; exec sleep 600"],
                "stdout F up",
            ),
        ] {
            let pod = start_pod(
                &mut client,
                handler,
                &format!("mem-{handler}"),
                &logs,
                image,
                &cmd,
                want,
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let procs = pod_processes(&ctd.sock);
            let pss: u64 = procs.iter().map(|p| pss_kib(*p)).sum();
            let stats = client
                .container_stats(ContainerStatsRequest {
                    container_id: pod.container.clone(),
                })
                .await
                .context("ContainerStats")?
                .into_inner()
                .stats
                .and_then(|s| s.memory)
                .and_then(|m| m.working_set_bytes)
                .map_or(0, |v| v.value);
            rows.push((handler, procs.len(), pss, stats / 1024));
            remove_pod(&mut client, pod).await?;
        }
        let mib = |k: u64| k as f64 / 1024.0;
        let (f, r) = (rows[0], rows[1]);
        println!(
            "| memory per pod: PSS of its {} / {} processes | {:.1} MiB | {:.1} MiB | |",
            f.1,
            r.1,
            mib(f.2),
            mib(r.2)
        );
        println!(
            "| of which the guest's resident RAM (Flint's VM) | {:.1} MiB | - | |",
            mib(f.3)
        );
        println!(
            "| memory per pod beyond guest RAM | {:.1} MiB | {:.1} MiB | |",
            mib(f.2.saturating_sub(f.3)),
            mib(r.2)
        );
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
