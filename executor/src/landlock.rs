//! Landlock, the kernel's unprivileged path sandbox (the `landlock`
//! crate): a thread put in a domain, and every thread it makes after,
//! opens files only beneath the paths its [`Reach`] names, whatever its
//! uid and capabilities. `flint serve` and the shim put their main thread
//! in one before they make any other, so the threads that handle guest
//! input (vCPUs, the Linux layer, the fault handler) cannot read or write
//! the host's other files even if taken over.

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The device nodes a VM's threads open: KVM, userfaultfd, and the host
/// devices the Linux layer backs a program's `/dev` files with.
pub const DEVICES: &[&str] = &[
    "/dev/kvm",
    "/dev/userfaultfd",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The Landlock ABI the rules are written for (Linux 6.15): file access,
/// device ioctls, and the signal and abstract-socket scopes. An older
/// kernel enforces what it knows ([`Reach::enforce`] says how much).
const LANDLOCK_ABI: ABI = ABI::V7;

/// What the threads of a Landlock domain may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Anything beneath these (directories) or these (files).
    pub read_write: Vec<PathBuf>,
    /// Reading beneath these.
    pub read_only: Vec<PathBuf>,
}

/// How much of a [`Reach`] the kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    Partly,
    /// The kernel has no Landlock (or it is disabled at boot).
    Not,
}

impl Reach {
    /// Puts the calling thread (and every thread it makes from now on) in
    /// a Landlock domain that reaches only these paths and cannot signal or
    /// reach abstract sockets outside it. Paths that do not exist are left
    /// out. Sets `no_new_privs`.
    pub fn enforce(&self) -> Result<Enforced, landlock::RulesetError> {
        let status = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
            .scope(Scope::from_all(LANDLOCK_ABI))?
            .create()?
            .add_rules(path_beneath_rules(
                &self.read_write,
                AccessFs::from_all(LANDLOCK_ABI),
            ))?
            .add_rules(path_beneath_rules(
                &self.read_only,
                AccessFs::from_read(LANDLOCK_ABI),
            ))?
            .restrict_self()?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => Enforced::Fully,
            RulesetStatus::PartiallyEnforced => Enforced::Partly,
            RulesetStatus::NotEnforced => Enforced::Not,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The domain really confines a thread: what it reaches opens, the
    /// host's other files do not, and threads outside it are untouched.
    #[test]
    fn a_confined_thread_opens_only_what_it_reaches() {
        let allowed = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(allowed.path().join("rootfs/etc")).unwrap();
        std::fs::write(allowed.path().join("rootfs/etc/passwd"), "root:x:0:0\n").unwrap();
        let readable = tempfile::tempdir().unwrap();
        std::fs::write(readable.path().join("image"), "module").unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "no").unwrap();
        let mut read_write = vec![allowed.path().to_path_buf()];
        read_write.extend(DEVICES.iter().map(PathBuf::from));
        let reach = Reach {
            read_write,
            read_only: vec![readable.path().to_path_buf(), "/proc".into()],
        };
        let (a, r, h) = (
            allowed.path().to_path_buf(),
            readable.path().to_path_buf(),
            host.path().to_path_buf(),
        );
        std::thread::spawn(move || {
            assert_eq!(reach.enforce().unwrap(), Enforced::Fully);
            let own = std::fs::read_to_string(a.join("rootfs/etc/passwd"));
            assert_eq!(own.unwrap(), "root:x:0:0\n");
            std::fs::write(a.join("new"), "made").unwrap();
            assert_eq!(std::fs::read_to_string(r.join("image")).unwrap(), "module");
            let kvm = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm");
            assert!(kvm.is_ok(), "{kvm:?}");
            assert!(std::fs::read_to_string("/proc/self/status").is_ok());
            let denied = |e: std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
            for outside in [h.join("secret"), "/etc/passwd".into()] {
                assert!(denied(std::fs::read(&outside).unwrap_err()), "{outside:?}");
            }
            assert!(denied(std::fs::write(h.join("planted"), "x").unwrap_err()));
            assert!(denied(std::fs::write(r.join("image"), "x").unwrap_err()));
            assert!(denied(std::fs::write("/proc/self/comm", "x").unwrap_err()));
        })
        .join()
        .unwrap();
        // The thread that made the domain is gone; this one was never in it.
        assert_eq!(
            std::fs::read_to_string(host.path().join("secret")).unwrap(),
            "no"
        );
    }
}
