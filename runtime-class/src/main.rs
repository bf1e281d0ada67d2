//! `containerd-shim-flint-v2`: containerd's shim v2 for Flint. containerd
//! starts it for a task (or a pod) whose runtime is `io.containerd.flint.v2`;
//! each container's WebAssembly module runs in its own Flint VM.

mod sandbox;
mod service;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::{api, Config, Error, Flags, StartOpts};

use crate::sandbox::Sandbox;
use crate::service::Service;

#[derive(Clone)]
struct FlintShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    bundle: String,
}

#[async_trait]
impl Shim for FlintShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // All containers of one pod share one shim (grouped by sandbox id).
        let grouping =
            std::fs::read_to_string(std::path::Path::new(&self.bundle).join("config.json"))
                .ok()
                .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
                .and_then(|v| {
                    let a = &v["annotations"];
                    let container = a["io.kubernetes.cri.container-type"]
                        .as_str()
                        .or(a["io.kubernetes.cri-o.ContainerType"].as_str());
                    let sandbox = a["io.kubernetes.cri.sandbox-id"]
                        .as_str()
                        .or(a["io.kubernetes.cri-o.SandboxID"].as_str());
                    (container == Some("container"))
                        .then(|| sandbox.map(String::from))
                        .flatten()
                })
                .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, Error> {
        // The shim died or containerd cleans up: unmount what a container
        // of this bundle may have left mounted.
        service::unmount(&std::path::Path::new(&self.bundle).join("rootfs"));
        let mut r = api::DeleteResponse::new();
        r.exit_status = 128 + libc::SIGKILL as u32;
        Ok(r)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        Service {
            sandbox: Arc::new(Sandbox::default()),
            exit: self.exit.clone(),
            publisher: Some(Arc::new(publisher)),
            namespace: self.namespace.clone(),
        }
    }
}

#[tokio::main]
async fn main() {
    run::<FlintShim>("io.containerd.flint.v2", None).await;
}
