//! `flint serve --listen ADDR --state-dir DIR [--metrics-listen ADDR] MANIFESTS...`

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use flint_gateway::{manifest, Gateway, Settings};

use crate::exit;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to serve functions.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where to serve /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics_listen: SocketAddr,
    /// Where the admin API (`flint apply`, `list`, `delete`) listens:
    /// `unix:PATH` (mode 0600; default `unix:STATE_DIR/admin.sock`) or
    /// `tcp:ADDR` (then --admin-token-file is required).
    #[arg(long)]
    admin: Option<String>,
    /// A file holding the bearer token the admin API requires over TCP.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Started as root: once /dev/kvm, the listeners and the state
    /// directory are open, run as this user (its uid and gid, no
    /// supplementary groups, every capability gone, no_new_privs).
    /// Default: the `flint` user `scripts/setup` creates, if it exists;
    /// `--user root` keeps root.
    #[arg(long)]
    user: Option<String>,
    /// Serve without the process-wide seccomp filter and Landlock file
    /// sandbox (for debugging a refused call; the vCPU threads keep their
    /// filter).
    #[arg(long)]
    no_seccomp: bool,
    /// Where revisions' snapshots are kept.
    #[arg(long)]
    state_dir: PathBuf,
    /// Services answer at NAME.NAMESPACE.DOMAIN.
    #[arg(long, default_value = "example.com")]
    domain: String,
    /// Largest request body accepted (larger: 413).
    #[arg(long, default_value_t = 10 << 20)]
    max_body_bytes: usize,
    /// Images (modules, OCI layouts) must lie inside this directory;
    /// default: the first manifest's directory, else the state directory.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Largest module or image archive an apply reads.
    #[arg(long, default_value_t = 64 << 20)]
    max_module_bytes: u64,
    /// Most instances one revision may scale to (default: as many
    /// 128 MiB VMs as the node's RAM holds).
    #[arg(long)]
    max_instances: Option<u32>,
    /// Most VMs running requests at once on this node, all services
    /// together; more requests wait in arrival order (default: two per
    /// core).
    #[arg(long)]
    max_running: Option<usize>,
    /// Knative Service manifests (YAML) to deploy.
    manifests: Vec<PathBuf>,
}

/// As many 128 MiB VMs as this node's RAM holds.
fn instances_ram_holds() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let bytes = (pages.max(0) as u64).saturating_mul(size.max(0) as u64);
    ((bytes >> 27) as u32).max(1)
}

pub fn main(a: ServeArgs) -> i32 {
    if a.admin.as_deref().is_some_and(|s| s.starts_with("tcp:")) && a.admin_token_file.is_none() {
        eprintln!("flint: an admin API on TCP needs --admin-token-file");
        return exit::USAGE;
    }
    let image_root = a.image_root.clone().unwrap_or_else(|| {
        a.manifests
            .first()
            .and_then(|m| m.parent().map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| {
                if a.manifests.is_empty() {
                    a.state_dir.clone()
                } else {
                    PathBuf::from(".")
                }
            })
    });
    let settings = Settings {
        domain: a.domain.to_ascii_lowercase(),
        max_body_bytes: a.max_body_bytes,
        state_dir: a.state_dir.clone(),
        policy: flint_gateway::Policy {
            image_root: image_root.clone(),
            max_module_bytes: a.max_module_bytes,
            max_instances: a.max_instances.unwrap_or_else(instances_ram_holds),
            max_running: a
                .max_running
                .unwrap_or_else(flint_gateway::registry::default_max_running),
        },
    };
    let gw = Gateway::new(settings);
    for path in &a.manifests {
        let yaml = match std::fs::read_to_string(path) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("flint: cannot read manifest {}: {e}", path.display());
                return exit::FLINT_ERROR;
            }
        };
        let service = match manifest::parse(&yaml) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "flint: error validating {:?}: {e}",
                    path.display().to_string()
                );
                return exit::USAGE;
            }
        };
        let base = path.parent().map(PathBuf::from).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        match gw.registry.apply(service, &base, &a.state_dir) {
            Ok(rev) => eprintln!(
                "flint: service {}.{} ready as revision {} at http://{}.{}.{}",
                rev.service.name,
                rev.service.namespace,
                rev.name,
                rev.service.name,
                rev.service.namespace,
                gw.settings.domain
            ),
            Err(e) => {
                exit::report(&e);
                return exit::FLINT_ERROR;
            }
        }
    }
    // A Linux server that passed its readiness check above stops again:
    // its VM's threads would be outside the file sandbox below and cannot
    // take part in the change of user (their filters refuse it). The
    // autoscaler starts the revision's instances again once serving.
    for rev in gw.registry.revisions() {
        rev.instances.stop_and_wait();
    }
    // Whom to become, looked up now: the file sandbox below leaves
    // /etc/passwd out of reach.
    let spec = a
        .admin
        .clone()
        .unwrap_or_else(|| format!("unix:{}", a.state_dir.join("admin.sock").display()));
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let run_as = match run_as(euid, a.user.as_deref(), user_exists(DEFAULT_USER)) {
        RunAs::User(user) => match lookup(user) {
            Ok(ids) => Some((user.to_string(), ids)),
            Err(e) => {
                eprintln!("flint: cannot run as {user}: {e}");
                return exit::FLINT_ERROR;
            }
        },
        RunAs::RootUnasked => {
            eprintln!(
                "flint: warning: serving as root; create the {DEFAULT_USER} user (scripts/setup \
                 does) or pass --user NAME to drop privileges"
            );
            None
        }
        RunAs::Itself => None,
    };
    // Every thread from here on (the runtime's, the VMs') is in the file
    // sandbox: the state directory, the image root to read, the devices a
    // VM uses, the admin socket's directory and token file.
    if !a.no_seccomp {
        match file_sandbox(&a, &image_root, &spec)
            .and_then(|r| r.enforce().map_err(|e| e.to_string()))
        {
            Ok(flint_executor::landlock::Enforced::Fully) => {}
            Ok(how) => eprintln!(
                "flint: warning: this kernel enforces the Landlock file sandbox {how:?}: \
                 flint serve reaches more host files than it should"
            ),
            Err(e) => {
                eprintln!("flint: cannot confine flint serve's file access: {e}");
                return exit::FLINT_ERROR;
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flint: starting the async runtime failed: {e}");
            return exit::FLINT_ERROR;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(a.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("flint: cannot listen on {}: {e}", a.listen);
                return exit::FLINT_ERROR;
            }
        };
        let admin = match tokio::net::TcpListener::bind(a.metrics_listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("flint: cannot listen on {}: {e}", a.metrics_listen);
                return exit::FLINT_ERROR;
            }
        };
        let admin_api = match admin_listener(&spec, a.admin_token_file.as_deref()).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("flint: the admin API at {spec}: {e}");
                return exit::USAGE;
            }
        };
        if let Some((user, (uid, gid))) = &run_as {
            if let Err(e) = drop_privileges(*uid, *gid, &a.state_dir) {
                eprintln!("flint: cannot run as {user}: {e}");
                return exit::FLINT_ERROR;
            }
        }
        use tokio::signal::unix::{signal, SignalKind};
        // Before the filter: tokio sets up its signal pipe on first use.
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("flint: cannot handle SIGTERM and SIGINT: {e}");
                return exit::FLINT_ERROR;
            }
        };
        if !a.no_seccomp {
            if let Err(e) = flint_gateway::confine::confine() {
                exit::report(&e);
                return exit::FLINT_ERROR;
            }
        }
        eprintln!(
            "flint: serving on http://{} (metrics on http://{}, admin API on {spec})",
            a.listen, a.metrics_listen
        );
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("flint: draining: finishing in-flight requests");
        };
        flint_gateway::serve_with_admin(gw, listener, Some(admin), Some(admin_api), shutdown).await;
        0
    })
}

/// The admin API's listener from `unix:PATH` or `tcp:ADDR`.
async fn admin_listener(
    spec: &str,
    token_file: Option<&std::path::Path>,
) -> Result<flint_gateway::AdminListener, String> {
    if let Some(path) = spec.strip_prefix("unix:") {
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        // A stale socket from an earlier run.
        if std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(path);
        }
        // Created owner-only: only this user (and root) may deploy.
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let l = tokio::net::UnixListener::bind(path);
        // SAFETY: as above, restoring it.
        unsafe { libc::umask(old) };
        return l
            .map(flint_gateway::AdminListener::Unix)
            .map_err(|e| e.to_string());
    }
    if let Some(addr) = spec.strip_prefix("tcp:") {
        let Some(tf) = token_file else {
            return Err("an admin API on TCP needs --admin-token-file".into());
        };
        let token =
            std::fs::read_to_string(tf).map_err(|e| format!("reading {}: {e}", tf.display()))?;
        let token = token.trim().to_string();
        if token.len() < 16 {
            return Err("the admin token must be at least 16 characters".into());
        }
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(flint_gateway::AdminListener::Tcp(
            l,
            Some(std::sync::Arc::new(token)),
        ));
    }
    Err("use unix:PATH or tcp:ADDR".into())
}

/// The unprivileged user `flint serve` becomes by default when started
/// as root (`scripts/setup` creates it).
const DEFAULT_USER: &str = "flint";

#[derive(Debug, PartialEq, Eq)]
enum RunAs<'a> {
    /// Not root, or root by request (`--user root`): stay as is.
    Itself,
    /// Root, no `--user`, and no default user to become.
    RootUnasked,
    User(&'a str),
}

/// Whom `flint serve` runs as, started with effective uid `euid` and
/// `--user given`, when the default user exists or not.
fn run_as(euid: u32, given: Option<&str>, default_exists: bool) -> RunAs<'_> {
    match given {
        Some("root") => RunAs::Itself,
        Some(user) => RunAs::User(user),
        None if euid != 0 => RunAs::Itself,
        None if default_exists => RunAs::User(DEFAULT_USER),
        None => RunAs::RootUnasked,
    }
}

fn user_exists(user: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(user) else {
        return false;
    };
    // SAFETY: getpwnam reads a NUL-terminated name; only the pointer's
    // nullness is used.
    !unsafe { libc::getpwnam(name.as_ptr()) }.is_null()
}

/// `user`'s uid and gid.
fn lookup(user: &str) -> Result<(u32, u32), String> {
    let name = std::ffi::CString::new(user).map_err(|_| "bad user name".to_string())?;
    // SAFETY: getpwnam reads a NUL-terminated name; the record it returns
    // is read at once, before any other call that could reuse it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(format!("no user {user:?}"));
    }
    // SAFETY: `pw` is the non-null record just returned.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// What `flint serve`'s threads may open (Landlock): its state directory
/// (snapshots, Linux images' roots, the admin socket), the image root to
/// read, the devices a VM uses, the admin socket's own directory and the
/// token file if they lie elsewhere, and `/proc` and `/sys` to read. The
/// directories are made first: a rule names an existing one.
fn file_sandbox(
    a: &ServeArgs,
    image_root: &std::path::Path,
    admin: &str,
) -> Result<flint_executor::landlock::Reach, String> {
    use flint_executor::landlock::{Reach, DEVICES};
    std::fs::create_dir_all(&a.state_dir)
        .map_err(|e| format!("creating {}: {e}", a.state_dir.display()))?;
    let mut read_write = vec![a.state_dir.clone()];
    if let Some(dir) = admin
        .strip_prefix("unix:")
        .and_then(|p| std::path::Path::new(p).parent())
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        read_write.push(dir.to_path_buf());
    }
    read_write.extend(DEVICES.iter().map(PathBuf::from));
    let mut read_only = vec![image_root.to_path_buf(), "/proc".into(), "/sys".into()];
    read_only.extend(a.admin_token_file.clone());
    Ok(Reach {
        read_write,
        read_only,
    })
}

/// Becomes the user `uid`, `gid` for good: KVM is opened first (every VM then uses that
/// fd), the state directory is handed to the user (later applies write
/// there), then the gid, the (empty) supplementary groups and the uid
/// change, which leaves no capability, and no_new_privs is set.
fn drop_privileges(uid: u32, gid: u32, state_dir: &std::path::Path) -> Result<(), String> {
    flint_executor::vstate::vm::preopen_kvm().map_err(|e| e.to_string())?;
    flint_executor::vstate::pagemap::preopen()
        .map_err(|e| format!("opening /proc/self/pagemap: {e}"))?;
    // Made now if nothing made it yet (an admin API on TCP makes no socket
    // there): the user could not create it under a root-owned parent.
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("creating {}: {e}", state_dir.display()))?;
    chown_tree(state_dir, uid, gid)
        .map_err(|e| format!("handing {} over: {e}", state_dir.display()))?;
    // SAFETY: plain credential calls; glibc applies them to every thread.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error().to_string());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_drops_to_the_flint_user_by_default() {
        assert_eq!(run_as(0, None, true), RunAs::User("flint"));
        assert_eq!(run_as(0, None, false), RunAs::RootUnasked);
        assert_eq!(run_as(0, Some("root"), true), RunAs::Itself);
        assert_eq!(run_as(0, Some("nobody"), true), RunAs::User("nobody"));
        assert_eq!(run_as(1000, None, true), RunAs::Itself);
        // A non-root --user is honoured (and fails in drop_privileges).
        assert_eq!(run_as(1000, Some("nobody"), false), RunAs::User("nobody"));
    }
}
