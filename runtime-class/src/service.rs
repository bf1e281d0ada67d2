//! The shim v2 task service: a thin translation from containerd's ttrpc
//! calls to the sandbox API, plus the events containerd expects.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{api, TtrpcResult};

use crate::sandbox::{Container, Exit, Process, Sandbox, SandboxError, Spec, Status, Stdio};

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
        SandboxError::Io { .. } | SandboxError::Internal(_) => Code::INTERNAL,
    };
    // The whole chain: what failed, then why.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    log::warn!("{msg}");
    status(code, msg)
}

fn timestamp((seconds, nanos): (i64, i32)) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = seconds;
    t.nanos = nanos;
    t
}

/// A process's pid as containerd sees it: the shim's own (every VM of the
/// pod runs on a thread of this process).
fn pid() -> u32 {
    std::process::id()
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

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        self.sandbox.get(id).map_err(map_err)
    }

    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        let p = c.process(exec_id).map_err(map_err)?;
        Ok((c, p))
    }

    fn exit_event(p: &Process, exit: &Exit) -> TaskExit {
        let mut e = TaskExit::new();
        e.container_id = p.container_id.clone();
        e.id = p.name().to_string();
        e.pid = pid();
        e.exit_status = exit.status;
        e.exited_at = Some(timestamp(exit.at)).into();
        e
    }
}

/// Stats in the shape containerd reads from runc's shim (cgroups v1
/// metrics): the VMs' resident guest RAM against their RAM size, and their
/// vCPU threads' CPU time.
fn metrics(c: &Container) -> Metrics {
    let u = c.usage();
    let mut m = Metrics::new();
    let mut usage = MemoryEntry::new();
    usage.usage = u.memory_bytes;
    usage.max = u.memory_bytes;
    usage.limit = u.memory_limit_bytes;
    let mut memory = MemoryStat::new();
    memory.rss = u.memory_bytes;
    memory.total_rss = u.memory_bytes;
    memory.hierarchical_memory_limit = u.memory_limit_bytes;
    memory.usage = Some(usage).into();
    m.memory = Some(memory).into();
    let mut cpu_usage = CPUUsage::new();
    cpu_usage.total = u.cpu_ns;
    cpu_usage.user = u.cpu_ns;
    let mut cpu = CPUStat::new();
    cpu.usage = Some(cpu_usage).into();
    m.cpu = Some(cpu).into();
    let mut pids = PidsStat::new();
    pids.current = u.vms;
    m.pids = Some(pids).into();
    m
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
            mount(m, &rootfs)
                .await
                .map_err(|e| status(Code::INTERNAL, format!("mounting the rootfs: {e}")))?;
            mounted = true;
        }
        let spec = Spec {
            id: req.id.clone(),
            namespace: self.namespace.clone(),
            bundle: bundle.clone(),
            stdio: Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        };
        let inserted = Container::create(spec, mounted).and_then(|c| self.sandbox.insert(c));
        if let Err(e) = inserted {
            if mounted {
                unmount(&rootfs);
            }
            return Err(map_err(e));
        }
        log::info!("created {} from {}", req.id, req.bundle);
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
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let opening = p.clone();
        let io = tokio::task::spawn_blocking(move || opening.open_io())
            .await
            .map_err(|e| status(Code::INTERNAL, format!("opening stdio: {e}")))?
            .map_err(map_err)?;
        let handle = tokio::runtime::Handle::current();
        let me = self.clone();
        let p2 = p.clone();
        let is_init = req.exec_id.is_empty();
        p.start(io, move |exit| {
            if is_init {
                c.stop_execs();
            }
            log::info!(
                "{} of {} exited with status {}{}",
                p2.name(),
                p2.container_id,
                exit.status,
                if exit.oom { " (out of memory)" } else { "" }
            );
            let ev = Service::exit_event(&p2, &exit);
            let oom = exit.oom.then(|| {
                let mut e = TaskOOM::new();
                e.container_id = p2.container_id.clone();
                e
            });
            handle.spawn(async move {
                // As runc's shim does on a cgroup OOM: CRI then reports the
                // container as OOMKilled.
                if let Some(oom) = oom {
                    me.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(oom))
                        .await;
                }
                me.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
                    .await
            });
        })
        .map_err(map_err)?;
        if is_init {
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid();
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = pid();
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
                .await;
        }
        Ok(api::StartResponse {
            pid: pid(),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.container(&req.id)?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.as_slice())
            .unwrap_or(b"{}");
        c.exec(&req.exec_id, stdio, spec).map_err(map_err)?;
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let (st, exit) = p.status();
        let mut r = api::StateResponse::new();
        r.id = p.name().to_string();
        r.exec_id = req.exec_id.clone();
        r.bundle = c.spec.bundle.display().to_string();
        r.pid = pid();
        r.status = match st {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        }
        .into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        if let Some(e) = exit {
            r.exit_status = e.status;
            r.exited_at = Some(timestamp(e.at)).into();
        }
        Ok(r)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        p.kill(req.signal).map_err(map_err)?;
        if req.all && req.exec_id.is_empty() {
            c.stop_execs();
        }
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let (st, exit) = p.status();
        if st == Status::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{} is still running: kill it first", p.name()),
            ));
        }
        let exit = exit.unwrap_or(Exit {
            status: 0,
            at: (0, 0),
            oom: false,
        });
        if req.exec_id.is_empty() {
            c.stop_execs();
            self.sandbox.remove(&req.id);
            if c.rootfs_mounted {
                unmount(&c.spec.bundle.join("rootfs"));
            }
            let mut ev = TaskDelete::new();
            ev.container_id = req.id.clone();
            ev.id = req.id.clone();
            ev.pid = pid();
            ev.exit_status = exit.status;
            ev.exited_at = Some(timestamp(exit.at)).into();
            self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
                .await;
        } else {
            c.remove_exec(&req.exec_id).map_err(map_err)?;
        }
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
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let exit = p.wait().await;
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
        let c = self.container(&req.id)?;
        // A Linux container lists its processes as its VM numbers them;
        // a module's container is the shim's VMs, shown as the shim.
        let pids: Vec<u32> = match c.linux_processes() {
            Some(list) if !list.is_empty() => list.iter().map(|(p, _)| *p as u32).collect(),
            _ => vec![pid()],
        };
        let processes = pids
            .into_iter()
            .map(|p| {
                let mut info = containerd_shim::protos::types::task::ProcessInfo::new();
                info.pid = p;
                info
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let c = self.container(&req.id)?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics(&c)))
            .map_err(|e| status(Code::INTERNAL, format!("encoding the stats: {e}")))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
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

/// Mounts one of containerd's rootfs mounts at `target`, through the
/// shim's helper (the process that keeps CAP_SYS_ADMIN: the shim's own
/// threads can neither mount nor hold the capability).
async fn mount(
    m: &containerd_shim::protos::api::Mount,
    target: &std::path::Path,
) -> Result<(), String> {
    let (kind, source, options) = (m.type_.clone(), m.source.clone(), m.options.to_vec());
    let target = target.to_path_buf();
    tokio::task::spawn_blocking(move || crate::helper::mount(&kind, &source, &options, &target))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Unmounts the container's rootfs (best effort: delete must not fail on
/// it), through the helper (see [`mount`]).
pub fn unmount(path: &std::path::Path) {
    if let Err(e) = crate::helper::unmount(path) {
        log::warn!("unmounting {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd gets the whole chain (what failed, then the OS error)
    /// with the code for the kind of failure.
    #[test]
    fn errors_reach_containerd_with_their_cause_and_code() {
        let e = SandboxError::io(
            "reading /x.wasm",
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        let ttrpc::Error::RpcStatus(s) = map_err(e) else {
            panic!("not a status")
        };
        assert_eq!(s.code(), Code::INTERNAL);
        assert_eq!(
            s.message(),
            "reading /x.wasm: Permission denied (os error 13)"
        );
        let ttrpc::Error::RpcStatus(s) = map_err(SandboxError::NotFound("no such exec".into()))
        else {
            panic!("not a status")
        };
        assert_eq!((s.code(), s.message()), (Code::NOT_FOUND, "no such exec"));
    }
}
