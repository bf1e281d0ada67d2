//! The shim's privileged helper: a separate process that does the few
//! things a serving shim must do outside its seccomp filter and Landlock
//! domain, and so the shim's own process never holds CAP_SYS_ADMIN.
//!
//! A serving shim starts it before it confines itself (`confine`): a fork
//! of the shim, holding one end of a `SOCK_SEQPACKET` pair. From then on
//! the shim asks it, one
//! [`Request`] per message, to mount and unmount containers' root
//! filesystems, to open the FIFOs and log files containerd names
//! (anywhere on the host), and to start, poll and stop the `binary://`
//! loggers containerd's users name; opened descriptors come back with the
//! reply (`SCM_RIGHTS`). The helper shares no writable memory with the
//! shim (forked before any container exists), so a thread taken over
//! through a VM can only send it requests, and it checks
//! each one: a mount or unmount only at `TASKS/ID/rootfs` (the namespace's
//! task directories the shim's Landlock domain reaches, with no symlink on
//! the way), a FIFO only if the path names a FIFO, a log file only if it
//! is a regular file. It dies with the shim (`PR_SET_PDEATHSIG`, and end
//! of file on its socket).
//!
//! A shim that is not serving (containerd's `delete` action) does the same
//! work itself: [`Helper::handle`] runs in its own process.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

/// The helper's thread name, as `/proc` shows it.
pub const HELPER_NAME: &str = "flint-helper";

/// The largest message either side sends (a mount's options list the
/// image's layers).
const MAX_MESSAGE: usize = 256 * 1024;

/// What the shim asks of the helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Opens a FIFO without blocking; the descriptor comes back blocking.
    OpenFifo { path: String, write: bool },
    /// Opens (creating it and its directories) a file to append output to.
    OpenLogFile { path: String },
    /// Starts a logger with the three descriptors sent along as its fds
    /// 3, 4 and 5; the reply names it by an id.
    StartLogger {
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// Whether a logger has exited (reaping it if so).
    LoggerExited { id: u64 },
    /// Kills and reaps a logger.
    StopLogger { id: u64 },
    /// containerd's rootfs mount (`containerd_shim::mount::mount_rootfs`).
    Mount {
        kind: String,
        source: String,
        options: Vec<String>,
        target: PathBuf,
    },
    /// Unmounts everything at and beneath `path`, lazily.
    Unmount { path: PathBuf },
}

/// The helper's answer; a descriptor travels beside `Fd`.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Fd,
    Logger { id: u64 },
    Exited(bool),
    Failed { errno: Option<i32>, message: String },
}

impl Reply {
    fn from_io(e: std::io::Error) -> Self {
        Reply::Failed {
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    /// A request the helper will not do (no OS error behind it).
    fn refused(message: String) -> Self {
        Reply::Failed {
            errno: None,
            message,
        }
    }

    /// A failure as the error it carries, anything else as itself.
    fn into_result(self) -> std::io::Result<Reply> {
        match self {
            // An OS error as it was (callers look at its code), a refusal
            // or a mount failure with its own words.
            Reply::Failed { errno: Some(n), .. } => Err(std::io::Error::from_raw_os_error(n)),
            Reply::Failed { message, .. } => Err(std::io::Error::other(message)),
            other => Ok(other),
        }
    }
}

/// The helper's state: the loggers it started, and where mounts may go.
#[derive(Default)]
pub struct Helper {
    /// The namespace's task directory (canonical); `None` checks nothing
    /// (a shim doing its own work, unconfined).
    tasks: Option<PathBuf>,
    loggers: HashMap<u64, Child>,
    next: u64,
}

impl Helper {
    /// Does one request, with the descriptors that came with it; returns
    /// the reply and the descriptor going back, if any.
    pub fn handle(&mut self, req: Request, fds: Vec<OwnedFd>) -> (Reply, Option<OwnedFd>) {
        match req {
            Request::OpenFifo { path, write } => match open_fifo(&path, write) {
                Ok(f) => (Reply::Fd, Some(f.into())),
                Err(e) => (e, None),
            },
            Request::OpenLogFile { path } => match open_log_file(&path) {
                Ok(f) => (Reply::Fd, Some(f.into())),
                Err(e) => (e, None),
            },
            Request::StartLogger { program, args, env } => {
                let Ok::<[OwnedFd; 3], _>(fds) = fds.try_into() else {
                    return (
                        Reply::refused("a logger needs three descriptors".into()),
                        None,
                    );
                };
                match spawn_logger(&program, &args, &env, fds) {
                    Ok(child) => {
                        self.next += 1;
                        self.loggers.insert(self.next, child);
                        (Reply::Logger { id: self.next }, None)
                    }
                    Err(e) => (Reply::from_io(e), None),
                }
            }
            Request::LoggerExited { id } => {
                let exited = match self.loggers.get_mut(&id) {
                    Some(child) => !matches!(child.try_wait(), Ok(None)),
                    None => true,
                };
                if exited {
                    self.loggers.remove(&id);
                }
                (Reply::Exited(exited), None)
            }
            Request::StopLogger { id } => {
                if let Some(mut child) = self.loggers.remove(&id) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                (Reply::Done, None)
            }
            Request::Mount {
                kind,
                source,
                options,
                target,
            } => {
                let target = match self.check_rootfs(&target) {
                    Ok(real) => real,
                    Err(e) => return (e, None),
                };
                let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
                let (kind, source) = (some(&kind), some(&source));
                let mounted = containerd_shim::mount::mount_rootfs(
                    kind.as_deref(),
                    source.as_deref(),
                    &options,
                    &target,
                );
                match mounted {
                    Ok(()) => (Reply::Done, None),
                    Err(e) => (
                        Reply::Failed {
                            errno: None,
                            message: e.to_string(),
                        },
                        None,
                    ),
                }
            }
            Request::Unmount { path } => {
                let path = match self.check_rootfs(&path) {
                    Ok(real) => real,
                    Err(e) => return (e, None),
                };
                let _ = containerd_shim::mount::umount_recursive(path.to_str(), libc::MNT_DETACH);
                (Reply::Done, None)
            }
        }
    }

    /// A mount point the shim may ask for: one whose real path is
    /// `TASKS/ID/rootfs`, a directory (a symlink or `..` leading
    /// elsewhere is refused; one in the path to the task directory, such
    /// as `/var/run`, is not). Returns that real path, where the mount is
    /// made.
    fn check_rootfs(&self, target: &Path) -> Result<PathBuf, Reply> {
        let Some(tasks) = &self.tasks else {
            return Ok(target.to_path_buf());
        };
        let real = std::fs::canonicalize(target).map_err(Reply::from_io)?;
        let fits = real.file_name().is_some_and(|n| n == "rootfs")
            && real
                .parent()
                .and_then(Path::parent)
                .is_some_and(|p| p == tasks)
            && real.is_dir();
        if fits {
            Ok(real)
        } else {
            Err(Reply::refused(format!(
                "{} is not a container's rootfs in {}",
                target.display(),
                tasks.display()
            )))
        }
    }
}

/// Opens a FIFO without blocking (its open would wait for the other end),
/// then switches the descriptor back to blocking I/O. The path is opened
/// as a path first: anything but a FIFO is refused before it is opened
/// for reading or writing.
fn open_fifo(path: &str, write: bool) -> Result<File, Reply> {
    let at = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(Reply::from_io)?;
    let kind = at.metadata().map_err(Reply::from_io)?.file_type();
    if !kind.is_fifo() {
        return Err(Reply::refused(format!("{path} is not a FIFO")));
    }
    let f = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", at.as_raw_fd()))
        .map_err(Reply::from_io)?;
    set_nonblocking(&f, false);
    Ok(f)
}

/// A `file://` URI's file: created with its directories if needed, and
/// only a regular file.
fn open_log_file(path: &str) -> Result<File, Reply> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(Reply::from_io)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Reply::from_io)?;
    if !f.metadata().map_err(Reply::from_io)?.is_file() {
        return Err(Reply::refused(format!("{path} is not a regular file")));
    }
    set_nonblocking(&f, false);
    Ok(f)
}

/// Sets or clears O_NONBLOCK on a file we own.
pub fn set_nonblocking(f: &File, on: bool) {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK flag changes.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            let flags = if on {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, flags);
        }
    }
}

/// Starts a logger with `fds` as its fds 3, 4 and 5, stdin, stdout and
/// stderr on /dev/null.
fn spawn_logger(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    fds: [OwnedFd; 3],
) -> std::io::Result<Child> {
    let raw = fds.each_ref().map(AsRawFd::as_raw_fd);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // dup2) on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            // Move the three ends above 5 first, so no dup2 clobbers another.
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(raw) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high) {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(fds);
    child
}

/// The shim's end of the helper's socket, once it is started.
static SOCKET: OnceLock<Mutex<OwnedFd>> = OnceLock::new();

/// The unconfined shim's own helper state (no helper process).
static LOCAL: OnceLock<Mutex<Helper>> = OnceLock::new();

/// Starts the helper process for a serving shim whose containers' bundles
/// are in `tasks`: a fork of the shim, so it shares the shim's pages until
/// either writes them (an exec of the shim's executable cost 4 MiB of
/// PSS a pod). Must run before the shim confines itself (the helper keeps
/// the capabilities the shim has now) and while the process has one
/// thread.
pub fn start(tasks: &Path) -> std::io::Result<()> {
    let tasks = tasks.canonicalize()?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: getpid has no preconditions.
    let shim = unsafe { libc::getpid() };
    // SAFETY: the process has one thread (the caller's contract), so the
    // child may go on running Rust code: no lock can be held by a thread
    // that does not exist in it.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(ours);
            serve(theirs, tasks, shim)
        }
        _ => {
            drop(theirs);
            let _ = SOCKET.set(Mutex::new(ours));
            Ok(())
        }
    }
}

/// The helper process's life: serves requests on `socket` until the
/// shim's end closes, and dies with the shim.
fn serve(socket: OwnedFd, tasks: PathBuf, shim: libc::pid_t) -> ! {
    let name = std::ffi::CString::new(HELPER_NAME).expect("no NUL in the name");
    // SAFETY: prctl with a NUL-terminated name that outlives the call; the
    // parent check after PR_SET_PDEATHSIG closes the race with a shim that
    // died first. stdin and stdout become /dev/null: the shim's stdout is
    // the pipe containerd-shim's start action reads to its end.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != shim {
            libc::_exit(1);
        }
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    let mut helper = Helper {
        tasks: Some(tasks),
        ..Helper::default()
    };
    let code = match serve_on(&socket, &mut helper) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{HELPER_NAME}: {e}");
            1
        }
    };
    // SAFETY: ends the helper without running the shim's exit handlers.
    unsafe { libc::_exit(code) }
}

/// Answers requests on `socket` until its other end closes.
fn serve_on(socket: &OwnedFd, helper: &mut Helper) -> std::io::Result<()> {
    while let Some((bytes, fds)) = receive(socket)? {
        let (reply, fd) = match serde_json::from_slice::<Request>(&bytes) {
            Ok(req) => helper.handle(req, fds),
            Err(e) => (Reply::refused(format!("a malformed request: {e}")), None),
        };
        send(socket, &reply, fd.as_slice())?;
    }
    Ok(())
}

fn send(socket: &OwnedFd, msg: &impl Serialize, fds: &[OwnedFd]) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let more = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &more };
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// One message and the descriptors that came with it; `None` at end of
/// file.
#[allow(clippy::type_complexity)]
fn receive(socket: &OwnedFd) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this
            // process; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(std::io::Error::other("a message over the size limit"));
    }
    let n = msg.bytes;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some((buf, fds)))
}

/// Asks the helper (or, unconfined, does it here): the reply, and the
/// descriptor that came with it.
fn call(req: Request, fds: Vec<OwnedFd>) -> std::io::Result<(Reply, Option<OwnedFd>)> {
    let Some(socket) = SOCKET.get() else {
        let local = LOCAL.get_or_init(Mutex::default);
        let (reply, fd) = local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handle(req, fds);
        return Ok((reply.into_result()?, fd));
    };
    let socket = socket.lock().unwrap_or_else(|e| e.into_inner());
    send(&socket, &req, &fds)?;
    drop(fds);
    let (bytes, mut back) =
        receive(&socket)?.ok_or_else(|| std::io::Error::other("the shim's helper is gone"))?;
    let reply: Reply = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    Ok((reply.into_result()?, back.pop()))
}

/// The descriptor a reply should have brought.
fn file_from(reply: (Reply, Option<OwnedFd>)) -> std::io::Result<File> {
    match reply {
        (Reply::Fd, Some(fd)) => Ok(File::from(fd)),
        (other, _) => Err(std::io::Error::other(format!(
            "the shim's helper answered {other:?} without a descriptor"
        ))),
    }
}

/// Opens a FIFO containerd named, for reading or writing, without
/// waiting for its other end (an output FIFO without a reader is ENXIO).
pub fn open_fifo_anywhere(path: &str, write: bool) -> std::io::Result<File> {
    let path = path.to_string();
    file_from(call(Request::OpenFifo { path, write }, Vec::new())?)
}

/// Opens a `file://` URI's file for appending.
pub fn open_log_file_anywhere(path: &str) -> std::io::Result<File> {
    let path = path.to_string();
    file_from(call(Request::OpenLogFile { path }, Vec::new())?)
}

/// A `binary://` logger the helper started.
#[derive(Debug)]
pub struct Logger {
    id: u64,
}

impl Logger {
    /// Starts `program` with `fds` as its fds 3, 4 and 5.
    pub fn start(
        program: &str,
        args: &[String],
        env: &[(&str, &str)],
        fds: [OwnedFd; 3],
    ) -> std::io::Result<Self> {
        let req = Request::StartLogger {
            program: program.to_string(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        match call(req, fds.into())? {
            (Reply::Logger { id }, _) => Ok(Self { id }),
            (other, _) => Err(std::io::Error::other(format!(
                "the shim's helper answered {other:?} to a logger's start"
            ))),
        }
    }

    /// Whether the logger has exited (an unanswered question counts as
    /// yes: there is nobody left to wait for).
    pub fn exited(&self) -> bool {
        !matches!(
            call(Request::LoggerExited { id: self.id }, Vec::new()),
            Ok((Reply::Exited(false), _))
        )
    }

    /// Kills and reaps the logger.
    pub fn stop(self) {
        let _ = call(Request::StopLogger { id: self.id }, Vec::new());
    }
}

/// Mounts one of containerd's rootfs mounts at `target`, a container's
/// `rootfs` in its bundle.
pub fn mount(kind: &str, source: &str, options: &[String], target: &Path) -> std::io::Result<()> {
    let req = Request::Mount {
        kind: kind.into(),
        source: source.into(),
        options: options.to_vec(),
        target: target.into(),
    };
    call(req, Vec::new()).map(drop)
}

/// Unmounts a container's rootfs, and whatever is mounted beneath it.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    call(Request::Unmount { path: path.into() }, Vec::new()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined(tasks: &Path) -> Helper {
        Helper {
            tasks: Some(tasks.canonicalize().unwrap()),
            ..Helper::default()
        }
    }

    fn refusal(reply: (Reply, Option<OwnedFd>)) -> String {
        match reply {
            (Reply::Failed { message, .. }, None) => message,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// Mounts and unmounts only at a bundle's rootfs in the task
    /// directory: not the directory itself, not elsewhere on the host,
    /// not through `..` or a symlink out of it; a symlink on the way to
    /// the task directory is no matter.
    #[test]
    fn mounts_go_only_to_a_containers_rootfs() {
        let top = tempfile::tempdir().unwrap();
        let tasks = top.path().join("k8s.io");
        std::fs::create_dir_all(tasks.join("pod-1/rootfs")).unwrap();
        std::fs::create_dir_all(top.path().join("etc/rootfs")).unwrap();
        std::os::unix::fs::symlink(top.path().join("etc"), tasks.join("link")).unwrap();
        let mut h = confined(&tasks);
        let tasks = tasks.canonicalize().unwrap();
        let top = top.path().canonicalize().unwrap();
        for target in [
            top.join("etc/rootfs"),
            tasks.join("link/rootfs"),
            tasks.join("pod-1/rootfs/../../../etc/rootfs"),
            tasks.join("pod-1"),
            tasks.clone(),
        ] {
            let m = refusal(h.handle(
                Request::Mount {
                    kind: "bind".into(),
                    source: "/".into(),
                    options: vec!["rbind".into()],
                    target: target.clone(),
                },
                Vec::new(),
            ));
            assert!(m.contains("is not a container's rootfs"), "{target:?}: {m}");
            let m = refusal(h.handle(Request::Unmount { path: target }, Vec::new()));
            assert!(m.contains("is not a container's rootfs"), "{m}");
        }
        // The check lets a real bundle's rootfs through (to the unmount,
        // which has nothing to do), however the path to it is spelled.
        std::os::unix::fs::symlink(&tasks, top.join("alias")).unwrap();
        for path in [
            tasks.join("pod-1/rootfs"),
            top.join("alias/pod-1/rootfs"),
            tasks.join("pod-1/../pod-1/rootfs"),
        ] {
            let ok = h.handle(Request::Unmount { path }, Vec::new());
            assert!(matches!(ok, (Reply::Done, None)), "{ok:?}");
        }
    }

    /// Only a FIFO opens as one, only a regular file as a log file: a
    /// request for a host file or a device gets no descriptor.
    #[test]
    fn fifos_and_log_files_are_what_they_claim() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "secret").unwrap();
        let mut h = Helper::default();
        let fifo = fifo.to_str().unwrap().to_string();
        let (r, fd) = h.handle(
            Request::OpenFifo {
                path: fifo.clone(),
                write: false,
            },
            Vec::new(),
        );
        assert!(matches!(r, Reply::Fd) && fd.is_some(), "{r:?}");
        for path in [plain.to_str().unwrap(), "/dev/null"] {
            let req = Request::OpenFifo {
                path: path.into(),
                write: false,
            };
            assert!(refusal(h.handle(req, Vec::new())).ends_with("is not a FIFO"));
        }
        for path in [fifo.as_str(), "/dev/null"] {
            let req = Request::OpenLogFile { path: path.into() };
            let m = refusal(h.handle(req, Vec::new()));
            assert!(m.ends_with("is not a regular file"), "{m}");
        }
        let log = dir.path().join("logs/a/b.log");
        let req = Request::OpenLogFile {
            path: log.to_str().unwrap().into(),
        };
        assert!(matches!(h.handle(req, Vec::new()), (Reply::Fd, Some(_))));
        assert!(log.is_file());
    }

    /// The helper's loop: it answers over its socket (a descriptor comes
    /// back beside the reply), a malformed message is refused without
    /// ending it, and it returns once the socket closes.
    #[test]
    fn requests_and_replies_cross_the_socket() {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().to_path_buf();
        let server = std::thread::spawn(move || serve_on(&theirs, &mut confined(&tasks)));
        sendmsg::<()>(
            ours.as_raw_fd(),
            &[IoSlice::new(b"{\"Mount\":")],
            &[],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let (bytes, _) = receive(&ours).unwrap().unwrap();
        let reply: Reply = serde_json::from_slice(&bytes).unwrap();
        assert!(
            matches!(reply, Reply::Failed { ref message, .. } if message.starts_with("a malformed request")),
            "{reply:?}"
        );
        let log = dir.path().join("x.log");
        let req = Request::OpenLogFile {
            path: log.to_str().unwrap().into(),
        };
        send(&ours, &req, &[]).unwrap();
        let (bytes, mut fds) = receive(&ours).unwrap().unwrap();
        assert!(matches!(serde_json::from_slice(&bytes).unwrap(), Reply::Fd));
        let mut f = File::from(fds.pop().expect("a descriptor came back"));
        std::io::Write::write_all(&mut f, b"logged").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "logged");
        drop(ours);
        server.join().unwrap().unwrap();
    }
}
