//! The container's root filesystem: a host directory presented as `/`.
//!
//! Every path a program names is resolved by the host kernel with
//! `openat2(RESOLVE_IN_ROOT)` against the root's directory fd: `..`,
//! absolute and relative symlinks are all resolved as if the root were
//! `/`, and a directory swapped for a symlink mid-walk cannot lead out
//! (the kernel checks every step). Operations on a name (`unlink`,
//! `mkdir`, `rename`, `lstat`) open its parent that way and act on the
//! last component with the `*at` call and `AT_SYMLINK_NOFOLLOW`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    host: PathBuf,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Joins a guest path onto the guest's working directory, as the kernel's
/// walk starts: absolute paths from `/`, relative ones from `cwd`.
pub fn join(cwd: &str, path: &[u8]) -> Vec<u8> {
    if path.first() == Some(&b'/') {
        path.to_vec()
    } else {
        let mut v = cwd.as_bytes().to_vec();
        if v.last() != Some(&b'/') {
            v.push(b'/');
        }
        v.extend_from_slice(path);
        v
    }
}

/// `path` with `.`, `..` and repeated slashes removed lexically (never above
/// `/`). Used only to recognise Flint's own trees (`/proc`, `/dev`).
pub fn normalize(path: &[u8]) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut s = String::from("/");
    s.push_str(
        &parts
            .iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>()
            .join("/"),
    );
    s
}

/// Splits `path` into its parent and last component (`None` when the last
/// component is `.`, `..` or missing, which name the directory itself).
pub fn split_last(path: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let trimmed: &[u8] = {
        let mut p = path;
        while p.len() > 1 && p.last() == Some(&b'/') {
            p = &p[..p.len() - 1];
        }
        p
    };
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => {
            let last = &trimmed[i + 1..];
            let parent = if i == 0 {
                b"/".to_vec()
            } else {
                trimmed[..i].to_vec()
            };
            if last.is_empty() || last == b"." || last == b".." {
                (trimmed.to_vec(), None)
            } else {
                (parent, Some(last.to_vec()))
            }
        }
        None => {
            if trimmed.is_empty() || trimmed == b"." || trimmed == b".." {
                (trimmed.to_vec(), None)
            } else {
                (b".".to_vec(), Some(trimmed.to_vec()))
            }
        }
    }
}

impl Root {
    pub fn open(host: &Path) -> io::Result<Self> {
        let c = cstr(host.as_os_str().as_encoded_bytes())?;
        // SAFETY: `c` is a NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let host = std::fs::canonicalize(host)?;
        Ok(Self { dir, host })
    }

    /// Opens the absolute guest path `path` inside the root.
    /// Another handle on the same root.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            dir: self.dir.try_clone()?,
            host: self.host.clone(),
        })
    }

    pub fn open_at(&self, path: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
        let rel: &[u8] = {
            let mut p = path;
            while p.first() == Some(&b'/') {
                p = &p[1..];
            }
            if p.is_empty() {
                b"."
            } else {
                p
            }
        };
        let c = cstr(rel)?;
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
                mode as u64 & 0o7777
            } else {
                0
            },
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        loop {
            // SAFETY: openat2 reads `how` (of the size given) and the path.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.dir.as_raw_fd(),
                    c.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd >= 0 {
                // SAFETY: a new fd owned by nobody else.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let e = io::Error::last_os_error();
            // EAGAIN: a rename raced the walk (RESOLVE_IN_ROOT refuses to
            // guess); try again.
            if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }

    /// Opens the parent of `path` (a directory, `O_PATH`) and returns it
    /// with the last component.
    pub fn parent(&self, path: &[u8]) -> io::Result<(OwnedFd, Option<CString>)> {
        let (parent, last) = split_last(path);
        let fd = self.open_at(&parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok((fd, last.map(|l| cstr(&l)).transpose()?))
    }

    /// The guest path of an open host fd inside the root (for `getcwd` and
    /// `/proc/PID/fd`), from the host's view of it.
    pub fn guest_path_of(&self, fd: &OwnedFd) -> Option<String> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = link.strip_prefix(&self.host).ok()?;
        let mut s = String::from("/");
        s.push_str(&rel.to_string_lossy());
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_and_normalize() {
        assert_eq!(normalize(b"/proc/../proc/./self//stat"), "/proc/self/stat");
        assert_eq!(normalize(b"/../../etc"), "/etc");
        assert_eq!(split_last(b"/a/b"), (b"/a".to_vec(), Some(b"b".to_vec())));
        assert_eq!(split_last(b"/a/b/"), (b"/a".to_vec(), Some(b"b".to_vec())));
        assert_eq!(split_last(b"/x"), (b"/".to_vec(), Some(b"x".to_vec())));
        assert_eq!(split_last(b"/a/.."), (b"/a/..".to_vec(), None));
        assert_eq!(join("/home", b"f"), b"/home/f".to_vec());
        assert_eq!(join("/", b"f"), b"/f".to_vec());
        assert_eq!(join("/home", b"/etc"), b"/etc".to_vec());
    }

    #[test]
    fn nothing_resolves_outside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/ok"), b"guest").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../..", root.path().join("etc/up")).unwrap();
        let r = Root::open(root.path()).unwrap();
        let read = |p: &[u8]| -> io::Result<Vec<u8>> {
            let fd = r.open_at(p, libc::O_RDONLY, 0)?;
            Ok(std::fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default())
        };
        assert_eq!(read(b"/etc/ok").unwrap(), b"guest");
        assert_eq!(read(b"/../../../etc/ok").unwrap(), b"guest");
        assert_eq!(read(b"/etc/up/etc/ok").unwrap(), b"guest");
        let secret = "/abs/secret".to_string();
        assert!(
            read(secret.as_bytes()).is_err(),
            "an absolute symlink stays inside"
        );
        let host_path = format!("{}/secret", outside.path().display());
        assert!(read(format!("/etc/up{host_path}").as_bytes()).is_err());
    }
}
