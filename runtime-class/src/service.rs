//! The shim v2 task service: a thin translation from containerd's ttrpc
//! calls to the sandbox API, plus the events containerd expects.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{api, TtrpcResult};

use crate::sandbox::{Container, Exit, Sandbox, SandboxError, Spec, Status};

#[derive(Clone)]
pub struct Service {
    pub sandbox: Arc<Sandbox>,
    pub exit: Arc<ExitSignal>,
    pub publisher: Option<Arc<RemotePublisher>>,
    pub namespace: String,
}

fn status(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn map_err(e: SandboxError) -> ttrpc::Error {
    let code = match &e {
        SandboxError::NotFound(_) => Code::NOT_FOUND,
        SandboxError::Exists(_) => Code::ALREADY_EXISTS,
        SandboxError::Invalid(_) => Code::INVALID_ARGUMENT,
        SandboxError::Unsupported(_) => Code::UNIMPLEMENTED,
        SandboxError::State(_) => Code::FAILED_PRECONDITION,
        SandboxError::Io(_) => Code::INTERNAL,
    };
    status(code, e.to_string())
}

fn timestamp((seconds, nanos): (i64, i32)) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = seconds;
    t.nanos = nanos;
    t
}

/// The task's pid as containerd sees it: the shim's own (the function runs
/// in a VM thread of this process).
fn pid() -> u32 {
    std::process::id()
}

fn exec_unsupported(exec_id: &str) -> TtrpcResult<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(status(
            Code::UNIMPLEMENTED,
            "exec is not supported by Flint yet",
        ))
    }
}

impl Service {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = &self.publisher {
            let _ = p
                .publish(
                    ttrpc::context::Context::default(),
                    topic,
                    &self.namespace,
                    event,
                )
                .await;
        }
    }

    fn exit_event(&self, c: &Container, exit: &Exit) -> TaskExit {
        let mut e = TaskExit::new();
        e.container_id = c.spec.id.clone();
        e.id = c.spec.id.clone();
        e.pid = pid();
        e.exit_status = exit.status;
        e.exited_at = Some(timestamp(exit.at)).into();
        e
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        let mut mounted = false;
        for m in &req.rootfs {
            std::fs::create_dir_all(&rootfs).map_err(|e| {
                status(
                    Code::INTERNAL,
                    format!("creating {}: {e}", rootfs.display()),
                )
            })?;
            containerd_shim::util::mount_rootfs(m, &rootfs)
                .await
                .map_err(|e| status(Code::INTERNAL, format!("mounting the rootfs: {e}")))?;
            mounted = true;
        }
        let spec = Spec {
            id: req.id.clone(),
            bundle: bundle.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let container = match Container::create(spec, mounted) {
            Ok(c) => c,
            Err(e) => {
                if mounted {
                    unmount(&rootfs);
                }
                return Err(map_err(e));
            }
        };
        self.sandbox.insert(container).map_err(map_err)?;
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        ev.pid = pid();
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::CreateTaskResponse {
            pid: pid(),
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        exec_unsupported(&req.exec_id)?;
        let c = self.sandbox.get(&req.id).map_err(map_err)?;
        let handle = tokio::runtime::Handle::current();
        let me = self.clone();
        let c2 = c.clone();
        c.start(move |exit| {
            let ev = me.exit_event(&c2, &exit);
            handle.spawn(async move {
                me.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
                    .await
            });
        })
        .map_err(map_err)?;
        let mut ev = TaskStart::new();
        ev.container_id = req.id.clone();
        ev.pid = pid();
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::StartResponse {
            pid: pid(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        exec_unsupported(&req.exec_id)?;
        let c = self.sandbox.get(&req.id).map_err(map_err)?;
        let (st, exit) = c.status();
        let mut r = api::StateResponse::new();
        r.id = req.id.clone();
        r.bundle = c.spec.bundle.display().to_string();
        r.pid = pid();
        r.status = match st {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        }
        .into();
        r.stdin = c.spec.stdin.clone();
        r.stdout = c.spec.stdout.clone();
        r.stderr = c.spec.stderr.clone();
        r.terminal = c.spec.terminal;
        if let Some(e) = exit {
            r.exit_status = e.status;
            r.exited_at = Some(timestamp(e.at)).into();
        }
        Ok(r)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        exec_unsupported(&req.exec_id)?;
        let c = self.sandbox.get(&req.id).map_err(map_err)?;
        c.kill(req.signal).map_err(map_err)?;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        exec_unsupported(&req.exec_id)?;
        let c = self.sandbox.get(&req.id).map_err(map_err)?;
        let (st, exit) = c.status();
        if st == Status::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {} is still running: kill it first", req.id),
            ));
        }
        self.sandbox.remove(&req.id);
        if c.rootfs_mounted {
            unmount(&c.spec.bundle.join("rootfs"));
        }
        let exit = exit.unwrap_or(Exit {
            status: 0,
            at: (0, 0),
        });
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = pid();
        ev.exit_status = exit.status;
        ev.exited_at = Some(timestamp(exit.at)).into();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        let mut r = api::DeleteResponse::new();
        r.pid = pid();
        r.exit_status = exit.status;
        r.exited_at = Some(timestamp(exit.at)).into();
        Ok(r)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        exec_unsupported(&req.exec_id)?;
        let c = self.sandbox.get(&req.id).map_err(map_err)?;
        let exit = c.wait().await;
        let mut r = api::WaitResponse::new();
        r.exit_status = exit.status;
        r.exited_at = Some(timestamp(exit.at)).into();
        Ok(r)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        self.sandbox.get(&req.id).map_err(map_err)?;
        let mut p = containerd_shim::protos::types::task::ProcessInfo::new();
        p.pid = pid();
        Ok(api::PidsResponse {
            processes: vec![p],
            ..Default::default()
        })
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(api::Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: pid(),
            task_pid: pid(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if self.sandbox.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

/// Unmounts the container's rootfs (best effort: delete must not fail on it).
pub fn unmount(path: &std::path::Path) {
    let _ = containerd_shim::mount::umount_recursive(path.to_str(), libc::MNT_DETACH);
}
