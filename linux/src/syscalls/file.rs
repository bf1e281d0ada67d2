//! Paths: open, stat, directories, links, renames, permissions. Every
//! path is resolved inside the container's root (`fs::root`), or answered
//! by Flint's own `/proc` and `/dev` (`fs::procfs`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use libc::*;

use super::fd::file;
use super::{err, host_err, Stop, SysResult};
use crate::fs::file::{Kind, OpenFile};
use crate::fs::procfs::{self, Node};
use crate::fs::root::{join, normalize};
use crate::kernel::Kernel;
use crate::task::Pid;

/// Where a path leads.
#[derive(Debug)]
pub enum Target {
    /// A path inside the root filesystem (absolute, unnormalized).
    Host(Vec<u8>),
    /// A path Flint answers itself (normalized).
    Synth(String),
}

/// The base directory for a `*at` call's relative path.
fn base_dir(k: &Kernel, t: Pid, dirfd: u64) -> Result<String, Stop> {
    if dirfd as i32 == AT_FDCWD {
        return Ok(k.proc_of(t).cwd.clone());
    }
    let f = file(k, t, dirfd)?;
    match &f.kind {
        Kind::Host {
            path, dir: true, ..
        }
        | Kind::SynthDir { path, .. } => Ok(path.clone()),
        _ => err(ENOTDIR),
    }
}

pub fn target_of(k: &Kernel, t: Pid, dirfd: u64, path: &[u8]) -> Result<Target, Stop> {
    if path.is_empty() {
        return err(ENOENT);
    }
    let abs = if path[0] == b'/' {
        path.to_vec()
    } else {
        join(&base_dir(k, t, dirfd)?, path)
    };
    let norm = normalize(&abs);
    if procfs::is_synthetic(&norm) {
        // /proc/self/exe and friends may lead back into the root.
        if let Ok((_, Node::Link(target))) = procfs::resolve(k, t, &norm) {
            if target.starts_with('/') && !procfs::is_synthetic(&target) {
                return Ok(Target::Host(target.into_bytes()));
            }
        }
        return Ok(Target::Synth(norm));
    }
    Ok(Target::Host(abs))
}

pub fn target(k: &mut Kernel, t: Pid, dirfd: u64, path: u64) -> Result<Target, Stop> {
    let p = k.read_cstr(t, path)?;
    target_of(k, t, dirfd, &p)
}

const OPEN_FLAGS: i32 = O_ACCMODE
    | O_CREAT
    | O_EXCL
    | O_TRUNC
    | O_APPEND
    | O_NONBLOCK
    | O_DIRECTORY
    | O_NOFOLLOW
    | O_CLOEXEC
    | O_PATH
    | O_TMPFILE
    | O_DSYNC
    | O_SYNC
    | O_NOATIME
    | O_LARGEFILE
    | O_NOCTTY;

fn is_dir(fd: &OwnedFd) -> bool {
    // SAFETY: fstat into a zeroed struct.
    let mut st: stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    unsafe { libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & S_IFMT == S_IFDIR }
}

/// Opens a path for the program: the open file and its close-on-exec flag.
pub fn open_path(
    k: &mut Kernel,
    t: Pid,
    target: Target,
    flags: i32,
    mode: u32,
) -> Result<Rc<OpenFile>, Stop> {
    match target {
        Target::Host(path) => {
            let umask = k.proc_of(t).umask;
            let fd = k
                .root
                .open_at(&path, flags & OPEN_FLAGS, mode & !umask)
                .map_err(host_err)?;
            let dir = is_dir(&fd);
            let gpath = if dir {
                k.root
                    .guest_path_of(&fd)
                    .unwrap_or_else(|| normalize(&path))
            } else {
                normalize(&path)
            };
            Ok(OpenFile::new(
                Kind::Host {
                    fd,
                    path: gpath,
                    dir,
                },
                flags & !O_CLOEXEC,
            ))
        }
        Target::Synth(p) => {
            let (path, node) = procfs::resolve(k, t, &p).map_err(Stop::Errno)?;
            if flags & (O_CREAT | O_TRUNC) != 0 && !matches!(node, Node::Device(_) | Node::Open(_))
            {
                return err(EACCES);
            }
            match node {
                Node::File(data) => {
                    if flags & O_DIRECTORY != 0 {
                        return err(ENOTDIR);
                    }
                    Ok(OpenFile::new(
                        Kind::Synthetic { data, path },
                        flags & !O_CLOEXEC,
                    ))
                }
                Node::Dir(entries) => {
                    if flags & O_ACCMODE != O_RDONLY {
                        return err(EISDIR);
                    }
                    Ok(OpenFile::new(
                        Kind::SynthDir { entries, path },
                        flags & !O_CLOEXEC,
                    ))
                }
                Node::Open(f) => Ok(f),
                Node::Device(kind) => Ok(OpenFile::new(kind, flags & !O_CLOEXEC)),
                Node::Link(_) => err(ENOENT),
            }
        }
    }
}

pub fn openat(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, flags: u64, mode: u64) -> SysResult {
    let flags = flags as i32;
    let tg = target(k, t, dirfd, path)?;
    let f = open_path(k, t, tg, flags, mode as u32)?;
    let fds = k.fds_of(t);
    let n = fds
        .borrow_mut()
        .insert(f, flags & O_CLOEXEC != 0)
        .ok_or(Stop::Errno(EMFILE))?;
    Ok(n as u64)
}

fn synth_stat(node: &Node, ino: u64) -> stat {
    // SAFETY: a zeroed stat is a valid value.
    let mut st: stat = unsafe { std::mem::zeroed() };
    st.st_dev = 0x1f;
    st.st_ino = ino;
    st.st_nlink = 1;
    st.st_blksize = 4096;
    match node {
        Node::File(d) => {
            st.st_mode = S_IFREG | 0o444;
            st.st_size = d.len() as i64;
        }
        Node::Dir(_) => {
            st.st_mode = S_IFDIR | 0o555;
            st.st_nlink = 2;
        }
        Node::Link(_) => st.st_mode = S_IFLNK | 0o777,
        Node::Device(_) => {
            st.st_mode = S_IFCHR | 0o666;
            st.st_rdev = 0x103;
        }
        Node::Open(_) => st.st_mode = S_IFIFO | 0o600,
    }
    st
}

fn stat_bytes(st: &stat) -> Vec<u8> {
    // SAFETY: `stat` is plain old data; the guest's struct stat on x86-64
    // has exactly the host's layout.
    unsafe {
        std::slice::from_raw_parts(
            (st as *const stat).cast::<u8>(),
            std::mem::size_of::<stat>(),
        )
    }
    .to_vec()
}

fn host_fstat(fd: i32) -> Result<stat, Stop> {
    // SAFETY: a zeroed stat is valid; fstat fills it.
    let mut st: stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(host_err(std::io::Error::last_os_error()));
    }
    Ok(st)
}

/// The stat of an open file.
pub fn stat_of_file(f: &OpenFile) -> Result<stat, Stop> {
    match &f.kind {
        Kind::Host { fd, .. } => host_fstat(fd.as_raw_fd()),
        Kind::Stream { fd, .. } => {
            let mut st = host_fstat(fd.as_raw_fd())?;
            // Never a terminal to the program: a host tty shows as a pipe.
            if st.st_mode & S_IFMT == S_IFCHR {
                st.st_mode = S_IFIFO | 0o600;
                st.st_rdev = 0;
            }
            Ok(st)
        }
        Kind::PipeRead(..) | Kind::PipeWrite(..) => {
            Ok(synth_stat(&Node::Open(unreachable_file()), 0x7000))
        }
        Kind::Socket(s) => {
            let mut st = synth_stat(&Node::Open(unreachable_file()), 0x9000 + s.id as u64);
            st.st_mode = S_IFSOCK | 0o777;
            Ok(st)
        }
        Kind::Null | Kind::Zero | Kind::Full | Kind::Random => {
            Ok(synth_stat(&Node::Device(Kind::Null), 0x6000))
        }
        Kind::Synthetic { data, .. } => Ok(synth_stat(&Node::File(data.clone()), 0x5000)),
        Kind::SynthDir { .. } => Ok(synth_stat(&Node::Dir(Vec::new()), 0x5001)),
        Kind::Epoll(_) | Kind::EventFd(..) => Ok(synth_stat(&Node::File(Vec::new()), 0x8000)),
    }
}

fn unreachable_file() -> Rc<OpenFile> {
    OpenFile::new(Kind::Null, O_RDONLY)
}

/// The stat of a path (following a final symlink unless `nofollow`).
fn stat_path(k: &mut Kernel, t: Pid, tg: Target, nofollow: bool) -> Result<stat, Stop> {
    match tg {
        Target::Host(path) => {
            if nofollow {
                let (dir, last) = k.root.parent(&path).map_err(host_err)?;
                if let Some(name) = last {
                    // SAFETY: zeroed stat filled by fstatat.
                    let mut st: stat = unsafe { std::mem::zeroed() };
                    // SAFETY: valid dir fd, name and buffer.
                    let r = unsafe {
                        libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, AT_SYMLINK_NOFOLLOW)
                    };
                    if r != 0 {
                        return Err(host_err(std::io::Error::last_os_error()));
                    }
                    return Ok(st);
                }
            }
            let fd = k.root.open_at(&path, O_PATH, 0).map_err(host_err)?;
            host_fstat(fd.as_raw_fd())
        }
        Target::Synth(p) => {
            if nofollow {
                if let Ok(n @ Node::Link(_)) = procfs::lookup(k, t, &p) {
                    return Ok(synth_stat(&n, 0x4000));
                }
            }
            let (_, node) = procfs::resolve(k, t, &p).map_err(Stop::Errno)?;
            match node {
                Node::Open(f) => stat_of_file(&f),
                n => Ok(synth_stat(&n, 0x4000 + p.len() as u64)),
            }
        }
    }
}

pub fn fstat(k: &mut Kernel, t: Pid, fd: u64, buf: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let st = stat_of_file(&f)?;
    k.write_user(t, buf, &stat_bytes(&st))?;
    Ok(0)
}

/// The stat a `*at` call names: `path` relative to `dirfd`, or `dirfd`
/// itself with AT_EMPTY_PATH and an empty path; a final symlink followed
/// unless AT_SYMLINK_NOFOLLOW.
fn stat_at(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, flags: u64) -> Result<stat, Stop> {
    let p = k.read_cstr(t, path)?;
    if p.is_empty() && flags & AT_EMPTY_PATH as u64 != 0 {
        if dirfd as i32 == AT_FDCWD {
            let cwd = k.proc_of(t).cwd.clone();
            return stat_path(k, t, Target::Host(cwd.into_bytes()), false);
        }
        return stat_of_file(&*file(k, t, dirfd)?);
    }
    let tg = target_of(k, t, dirfd, &p)?;
    stat_path(k, t, tg, flags & AT_SYMLINK_NOFOLLOW as u64 != 0)
}

pub fn fstatat(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, buf: u64, flags: u64) -> SysResult {
    let st = stat_at(k, t, dirfd, path, flags)?;
    k.write_user(t, buf, &stat_bytes(&st))?;
    Ok(0)
}

pub fn statx(
    k: &mut Kernel,
    t: Pid,
    dirfd: u64,
    path: u64,
    flags: u64,
    _mask: u64,
    buf: u64,
) -> SysResult {
    let st = stat_at(k, t, dirfd, path, flags)?;
    let mut b = vec![0u8; 256];
    let put32 = |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |b: &mut Vec<u8>, o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut b, 0, 0x7ff); // STATX_BASIC_STATS
    put32(&mut b, 4, st.st_blksize as u32);
    put32(&mut b, 16, st.st_nlink as u32);
    put32(&mut b, 20, st.st_uid);
    put32(&mut b, 24, st.st_gid);
    b[28..30].copy_from_slice(&(st.st_mode as u16).to_le_bytes());
    put64(&mut b, 32, st.st_ino);
    put64(&mut b, 40, st.st_size as u64);
    put64(&mut b, 48, st.st_blocks as u64);
    let ts = |b: &mut Vec<u8>, o: usize, s: i64, ns: i64| {
        b[o..o + 8].copy_from_slice(&s.to_le_bytes());
        b[o + 8..o + 12].copy_from_slice(&(ns as u32).to_le_bytes());
    };
    ts(&mut b, 64, st.st_atime, st.st_atime_nsec);
    ts(&mut b, 80, st.st_ctime, st.st_ctime_nsec);
    ts(&mut b, 96, st.st_ctime, st.st_ctime_nsec);
    ts(&mut b, 112, st.st_mtime, st.st_mtime_nsec);
    put32(&mut b, 128, major(st.st_rdev));
    put32(&mut b, 132, minor(st.st_rdev));
    put32(&mut b, 136, major(st.st_dev));
    put32(&mut b, 140, minor(st.st_dev));
    k.write_user(t, buf, &b)?;
    Ok(0)
}

pub fn statfs(k: &mut Kernel, t: Pid, buf: u64) -> SysResult {
    let mut b = vec![0u8; 120];
    let words: [u64; 7] = [0xef53, 4096, 1 << 20, 1 << 19, 1 << 19, 1 << 16, 1 << 15];
    for (i, w) in words.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    b[64..72].copy_from_slice(&255u64.to_le_bytes());
    b[72..80].copy_from_slice(&4096u64.to_le_bytes());
    k.write_user(t, buf, &b)?;
    Ok(0)
}

pub fn faccessat(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, mode: u64) -> SysResult {
    let tg = target(k, t, dirfd, path)?;
    let st = stat_path(k, t, tg, false)?;
    if mode & X_OK as u64 != 0 && st.st_mode & S_IFMT != S_IFDIR && st.st_mode & 0o111 == 0 {
        return err(EACCES);
    }
    Ok(0)
}

pub fn getdents64(k: &mut Kernel, t: Pid, fd: u64, buf: u64, count: u64) -> SysResult {
    let f = file(k, t, fd)?;
    let count = (count as usize).min(1 << 20);
    match &f.kind {
        Kind::Host { fd, dir: true, .. } => {
            let mut tmp = vec![0u8; count];
            // SAFETY: getdents64 writes at most `count` bytes into `tmp`.
            let n = unsafe { syscall(SYS_getdents64, fd.as_raw_fd(), tmp.as_mut_ptr(), count) };
            if n < 0 {
                return Err(host_err(std::io::Error::last_os_error()));
            }
            k.write_user(t, buf, &tmp[..n as usize])?;
            Ok(n as u64)
        }
        Kind::SynthDir { entries, .. } => {
            let mut out = Vec::new();
            let mut i = f.offset.get() as usize;
            while i < entries.len() {
                let (name, ino, ty) = &entries[i];
                let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
                if out.len() + reclen > count {
                    break;
                }
                let mut rec = vec![0u8; reclen];
                rec[0..8].copy_from_slice(&ino.to_le_bytes());
                rec[8..16].copy_from_slice(&((i + 1) as u64).to_le_bytes());
                rec[16..18].copy_from_slice(&(reclen as u16).to_le_bytes());
                rec[18] = *ty;
                rec[19..19 + name.len()].copy_from_slice(name.as_bytes());
                out.extend(rec);
                i += 1;
            }
            if out.is_empty() && i < entries.len() {
                return err(EINVAL);
            }
            f.offset.set(i as u64);
            k.write_user(t, buf, &out)?;
            Ok(out.len() as u64)
        }
        _ => err(ENOTDIR),
    }
}

pub fn getcwd(k: &mut Kernel, t: Pid, buf: u64, size: u64) -> SysResult {
    let mut cwd = k.proc_of(t).cwd.clone().into_bytes();
    cwd.push(0);
    if (size as usize) < cwd.len() {
        return err(ERANGE);
    }
    k.write_user(t, buf, &cwd)?;
    Ok(cwd.len() as u64)
}

fn set_cwd_to(k: &mut Kernel, t: Pid, tg: Target) -> SysResult {
    match tg {
        Target::Host(path) => {
            let fd = k
                .root
                .open_at(&path, O_PATH | O_DIRECTORY, 0)
                .map_err(host_err)?;
            let g = k.root.guest_path_of(&fd).ok_or(Stop::Errno(ENOENT))?;
            k.proc_of_mut(t).cwd = g;
            Ok(0)
        }
        Target::Synth(p) => match procfs::resolve(k, t, &p).map_err(Stop::Errno)? {
            (p, Node::Dir(_)) => {
                k.proc_of_mut(t).cwd = p;
                Ok(0)
            }
            _ => err(ENOTDIR),
        },
    }
}

pub fn chdir(k: &mut Kernel, t: Pid, path: u64) -> SysResult {
    let tg = target(k, t, AT_FDCWD as u64, path)?;
    set_cwd_to(k, t, tg)
}

pub fn fchdir(k: &mut Kernel, t: Pid, fd: u64) -> SysResult {
    let f = file(k, t, fd)?;
    match &f.kind {
        Kind::Host {
            path, dir: true, ..
        }
        | Kind::SynthDir { path, .. } => {
            k.proc_of_mut(t).cwd = path.clone();
            Ok(0)
        }
        _ => err(ENOTDIR),
    }
}

/// The parent directory (host fd) and last component of a host path.
fn parent_of(k: &mut Kernel, t: Pid, dirfd: u64, path: u64) -> Result<(OwnedFd, CString), Stop> {
    match target(k, t, dirfd, path)? {
        Target::Host(p) => {
            let (dir, last) = k.root.parent(&p).map_err(host_err)?;
            Ok((dir, last.ok_or(Stop::Errno(EEXIST))?))
        }
        Target::Synth(_) => err(EACCES),
    }
}

fn check(r: c_int) -> SysResult {
    if r != 0 {
        Err(host_err(std::io::Error::last_os_error()))
    } else {
        Ok(0)
    }
}

/// An `O_PATH` parent fd cannot be used by the `*at` calls that change
/// a directory; reopen it as a real directory fd.
fn as_dir(fd: &OwnedFd) -> Result<OwnedFd, Stop> {
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    // SAFETY: opening a path we built.
    let r = unsafe { open(p.as_ptr(), O_RDONLY | O_DIRECTORY | O_CLOEXEC) };
    if r < 0 {
        return Err(host_err(std::io::Error::last_os_error()));
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

pub fn mkdirat(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, mode: u64) -> SysResult {
    let (dir, name) = parent_of(k, t, dirfd, path)?;
    let dir = as_dir(&dir)?;
    let umask = k.proc_of(t).umask;
    // SAFETY: valid dir fd and name.
    check(unsafe {
        libc::mkdirat(
            dir.as_raw_fd(),
            name.as_ptr(),
            (mode as u32 & 0o7777) & !umask,
        )
    })
}

pub fn unlinkat(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, flags: u64) -> SysResult {
    let (dir, name) = parent_of(k, t, dirfd, path)?;
    let dir = as_dir(&dir)?;
    // SAFETY: valid dir fd and name.
    check(unsafe {
        libc::unlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            (flags as i32) & AT_REMOVEDIR,
        )
    })
}

pub fn renameat(
    k: &mut Kernel,
    t: Pid,
    od: u64,
    op: u64,
    nd: u64,
    np: u64,
    flags: u64,
) -> SysResult {
    let (odir, oname) = parent_of(k, t, od, op)?;
    let (ndir, nname) = parent_of(k, t, nd, np)?;
    let (odir, ndir) = (as_dir(&odir)?, as_dir(&ndir)?);
    // SAFETY: valid dir fds and names.
    check(unsafe {
        syscall(
            SYS_renameat2,
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            flags as u32,
        ) as c_int
    })
}

pub fn linkat(k: &mut Kernel, t: Pid, od: u64, op: u64, nd: u64, np: u64) -> SysResult {
    let (odir, oname) = parent_of(k, t, od, op)?;
    let (ndir, nname) = parent_of(k, t, nd, np)?;
    let (odir, ndir) = (as_dir(&odir)?, as_dir(&ndir)?);
    // SAFETY: valid dir fds and names; no AT_SYMLINK_FOLLOW (a link to a
    // symlink stays a link to the symlink, never to what it names).
    check(unsafe {
        libc::linkat(
            odir.as_raw_fd(),
            oname.as_ptr(),
            ndir.as_raw_fd(),
            nname.as_ptr(),
            0,
        )
    })
}

pub fn symlinkat(k: &mut Kernel, t: Pid, target_ptr: u64, nd: u64, np: u64) -> SysResult {
    let tgt = k.read_cstr(t, target_ptr)?;
    let tgt = CString::new(tgt).map_err(|_| Stop::Errno(EINVAL))?;
    let (ndir, nname) = parent_of(k, t, nd, np)?;
    let ndir = as_dir(&ndir)?;
    // SAFETY: valid strings and dir fd.
    check(unsafe { libc::symlinkat(tgt.as_ptr(), ndir.as_raw_fd(), nname.as_ptr()) })
}

pub fn readlinkat(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, buf: u64, size: u64) -> SysResult {
    if (size as i64) <= 0 {
        return err(EINVAL);
    }
    let p = k.read_cstr(t, path)?;
    let abs = if p.first() == Some(&b'/') {
        p.clone()
    } else {
        join(&base_dir(k, t, dirfd)?, &p)
    };
    let norm = normalize(&abs);
    let text: Vec<u8> = if procfs::is_synthetic(&norm) {
        let (parent, name) = norm.rsplit_once('/').unwrap_or(("", &norm));
        let parent = if parent.is_empty() {
            "/".to_string()
        } else {
            parent.to_string()
        };
        let (rp, _) = procfs::resolve(k, t, &parent).map_err(Stop::Errno)?;
        match procfs::lookup(k, t, &format!("{rp}/{name}")).map_err(Stop::Errno)? {
            Node::Link(s) => s.into_bytes(),
            Node::Open(f) => f.describe().into_bytes(),
            _ => return err(EINVAL),
        }
    } else {
        let (dir, last) = k.root.parent(&abs).map_err(host_err)?;
        let name = last.ok_or(Stop::Errno(EINVAL))?;
        let mut out = vec![0u8; 4096];
        // SAFETY: readlinkat writes at most out.len() bytes.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                out.as_mut_ptr().cast(),
                out.len(),
            )
        };
        if n < 0 {
            return Err(host_err(std::io::Error::last_os_error()));
        }
        out.truncate(n as usize);
        out
    };
    let n = text.len().min(size as usize);
    k.write_user(t, buf, &text[..n])?;
    Ok(n as u64)
}

pub fn fchmodat(k: &mut Kernel, t: Pid, dirfd: u64, path: u64, mode: u64) -> SysResult {
    match target(k, t, dirfd, path)? {
        Target::Host(p) => {
            let fd = k.root.open_at(&p, O_PATH, 0).map_err(host_err)?;
            let via = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
            // SAFETY: chmod through the O_PATH fd's magic link (the file
            // it names, resolved inside the root).
            check(unsafe { chmod(via.as_ptr(), mode as u32 & 0o7777) })
        }
        Target::Synth(_) => err(EPERM),
    }
}

pub fn fchmod(k: &mut Kernel, t: Pid, fd: u64, mode: u64) -> SysResult {
    let f = file(k, t, fd)?;
    match &f.kind {
        Kind::Host { fd, .. } => {
            // SAFETY: fchmod on an fd we own.
            check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as u32 & 0o7777) })
        }
        _ => Ok(0),
    }
}

pub fn truncate(k: &mut Kernel, t: Pid, path: u64, len: u64) -> SysResult {
    let tg = target(k, t, AT_FDCWD as u64, path)?;
    let f = open_path(k, t, tg, O_WRONLY, 0)?;
    match &f.kind {
        // SAFETY: ftruncate on an fd we own.
        Kind::Host { fd, .. } => check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }),
        _ => err(EINVAL),
    }
}

pub fn ftruncate(k: &mut Kernel, t: Pid, fd: u64, len: u64) -> SysResult {
    let f = file(k, t, fd)?;
    match &f.kind {
        Kind::Host { fd, dir: false, .. } => {
            // SAFETY: ftruncate on an fd we own.
            check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) })
        }
        _ => err(EINVAL),
    }
}

pub fn utimensat(
    k: &mut Kernel,
    t: Pid,
    dirfd: u64,
    path: u64,
    times: u64,
    _flags: u64,
) -> SysResult {
    let ts = if times != 0 {
        let b = k.read_user(t, times, 32)?;
        let mut v = [timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }; 2];
        for (i, x) in v.iter_mut().enumerate() {
            x.tv_sec = i64::from_le_bytes(b[i * 16..i * 16 + 8].try_into().expect("8"));
            x.tv_nsec = i64::from_le_bytes(b[i * 16 + 8..i * 16 + 16].try_into().expect("8"));
        }
        Some(v)
    } else {
        None
    };
    let f = if path == 0 {
        file(k, t, dirfd)?
    } else {
        let tg = target(k, t, dirfd, path)?;
        open_path(k, t, tg, O_RDONLY, 0)?
    };
    match &f.kind {
        Kind::Host { fd, .. } => {
            let p = ts.as_ref().map_or(std::ptr::null(), |v| v.as_ptr());
            // SAFETY: futimens with a valid fd and a null or 2-element array.
            check(unsafe { futimens(fd.as_raw_fd(), p) })
        }
        _ => Ok(0),
    }
}

pub fn umask(k: &mut Kernel, t: Pid, mask: u64) -> SysResult {
    let p = k.proc_of_mut(t);
    let old = p.umask;
    p.umask = mask as u32 & 0o777;
    Ok(old as u64)
}
