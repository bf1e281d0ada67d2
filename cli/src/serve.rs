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
            image_root,
            max_module_bytes: a.max_module_bytes,
            max_instances: a.max_instances.unwrap_or_else(instances_ram_holds),
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
        eprintln!(
            "flint: serving on http://{} (metrics on http://{})",
            a.listen, a.metrics_listen
        );
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("flint: draining: finishing in-flight requests");
        };
        flint_gateway::serve(gw, listener, Some(admin), shutdown).await;
        0
    })
}
