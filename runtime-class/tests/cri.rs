//! Pods through containerd's CRI plugin, as the kubelet drives them: a pod
//! sandbox with the runtime handler `flint`, containers in it (one shim
//! for the pod), their logs, exit codes (OOMKilled too) and stats, then stop and
//! remove, and nothing left behind. The CRI client is the `k8s-cri` crate
//! (Kubernetes' CRI protos) over containerd's socket.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

const SANDBOX_IMAGE: &str = "docker.io/library/flint-pause:v1";
const TOOLS_IMAGE: &str = "docker.io/library/tools:v1";
const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:flint";

async fn channel(sock: &Path) -> Channel {
    let sock = sock.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
        .await
        .unwrap()
}

fn pod_config(logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "flint-pod".into(),
            uid: "0b7c5d3e-flint-test".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "flint-pod".into(),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                // The host's network: no CNI on the test machine.
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

fn container_config(name: &str, command: &[&str], env: &[(&str, &str)]) -> ContainerConfig {
    image_config(TOOLS_IMAGE, name, command, env)
}

fn image_config(
    image: &str,
    name: &str,
    command: &[&str],
    env: &[(&str, &str)],
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        envs: env
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

async fn status(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    rt.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}

async fn wait_exited(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(rt, id).await;
        if s.state == ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the CRI log file holds `want` (CRI's log lines are
/// `<time> <stream> <tag> <text>`).
async fn wait_log(path: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(want) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{} lacks {want:?}:\n{log}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pods_run_their_containers_in_flint_vms() {
    let sockets = shim_sockets();
    let ctd = Containerd::start_with_cri("cri", SANDBOX_IMAGE);
    // The pod sandbox runs nothing: a pause-like static Linux program as
    // its image, as Kubernetes' pause image (built here by flint-image,
    // for there is no registry to pull from).
    let pause = std::fs::read(flint_examples::linux_path("pause")).unwrap();
    ctd.import_archive(
        "pause.tar",
        flint_image::build_files(
            &[("pause", &pause)],
            serde_json::json!({"Entrypoint": ["/pause"]}),
            SANDBOX_IMAGE,
        )
        .unwrap(),
    );
    // A Linux image (busybox) for a container beside the wasm ones.
    let bb = tempfile::tempdir().unwrap();
    std::fs::create_dir(bb.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", bb.path().join("bin/busybox"))
        .expect("/bin/busybox: install busybox-static");
    for a in ["sh", "echo", "uname", "cat"] {
        std::os::unix::fs::symlink("busybox", bb.path().join("bin").join(a)).unwrap();
    }
    ctd.import_archive(
        "bb.tar",
        flint_image::build_dir(
            bb.path(),
            serde_json::json!({"Env": ["PATH=/bin"]}),
            BUSYBOX_IMAGE,
        )
        .unwrap(),
    );
    ctd.import(
        &[
            ("hello.wasm", &flint_examples::bytes("hello")),
            ("echo.wasm", &flint_examples::bytes("echo")),
            ("spin.wasm", &flint_examples::bytes("spin")),
            ("alloc.wasm", &flint_examples::bytes("alloc")),
        ],
        TOOLS_IMAGE,
    );
    let ch = channel(&ctd.sock).await;
    let mut rt = RuntimeServiceClient::new(ch.clone());
    let mut images = ImageServiceClient::new(ch);

    // CRI sees the imported images.
    let deadline = Instant::now() + Duration::from_secs(15);
    for image in [SANDBOX_IMAGE, TOOLS_IMAGE, BUSYBOX_IMAGE] {
        loop {
            let s = images
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner();
            if s.image.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "CRI does not see {image}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let logs = ctd.dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let config = pod_config(&logs);
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "flint".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let ps = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(ps.state, PodSandboxState::SandboxReady as i32, "{ps:?}");
    assert_eq!(ps.runtime_handler, "flint");

    let mut ids = HashMap::new();
    for (name, command, env) in [
        ("greeter", vec!["/hello.wasm", "pod"], vec![]),
        ("env", vec!["/echo.wasm"], vec![("POD_GREETING", "hi")]),
        ("spinner", vec!["/spin.wasm"], vec![]),
        ("hog", vec!["/alloc.wasm", "512"], vec![]),
        (
            "shell",
            vec!["sh", "-c", "echo from busybox $POD_GREETING; uname -s"],
            vec![("POD_GREETING", "hi")],
        ),
    ] {
        let mut config_c = if name == "shell" {
            image_config(BUSYBOX_IMAGE, name, &command, &env)
        } else {
            container_config(name, &command, &env)
        };
        if name == "hog" {
            // A 64 MiB limit: the container's VM gets 64 MiB of RAM.
            config_c.linux = Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 64 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config_c),
                sandbox_config: Some(config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        ids.insert(name, id);
    }

    // Output, exit codes and logs.
    let s = wait_exited(&mut rt, &ids["greeter"]).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    wait_log(&logs.join("greeter.log"), "stdout F hello, pod").await;
    let s = wait_exited(&mut rt, &ids["env"]).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    wait_log(&logs.join("env.log"), "stderr F POD_GREETING=hi").await;
    wait_log(&logs.join("spinner.log"), "stdout F spinning").await;
    // The busybox container beside them, in the same pod.
    let s = wait_exited(&mut rt, &ids["shell"]).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    wait_log(&logs.join("shell.log"), "stdout F from busybox hi").await;
    wait_log(&logs.join("shell.log"), "stdout F Linux").await;
    // A container that outgrows its memory limit is OOMKilled, as with runc.
    let s = wait_exited(&mut rt, &ids["hog"]).await;
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert_eq!(s.reason, "OOMKilled", "{s:?}");
    wait_log(
        &logs.join("hog.log"),
        "needs more memory than the VM's 64 MiB",
    )
    .await;

    // All containers of the pod share one shim.
    let pids = shims_only(&ctd.sock);
    assert_eq!(pids.len(), 1, "one shim per pod: {pids:?}");
    assert_eq!(shim_pids(&ctd.sock).len(), 2, "the shim and its helper");

    // Stats of the running container: its VM's memory and CPU.
    let stats = rt
        .container_stats(ContainerStatsRequest {
            container_id: ids["spinner"].clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStats: {e}"))
        .into_inner()
        .stats
        .unwrap();
    let memory = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value);
    assert!(memory > 0 && cpu > 0, "memory {memory}, cpu {cpu}");

    // Stopping the pod stops what still runs; removing it removes all.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    let s = wait_exited(&mut rt, &ids["spinner"]).await;
    assert_ne!(s.exit_code, 0, "{s:?}");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    let left = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    ctd.assert_nothing_left(&sockets);
}
