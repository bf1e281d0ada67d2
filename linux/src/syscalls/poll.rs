//! poll, ppoll, select, pselect6.

use std::os::fd::AsRawFd;

use libc::{EINVAL, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT};

use super::{err, Stop, SysResult};
use crate::fs::file::{Kind, OpenFile};
use crate::kernel::Kernel;
use crate::task::{Pid, Wait};

/// The poll events `f` has now, of those asked in `events`.
fn ready(f: &OpenFile, events: i16) -> i16 {
    let all = match &f.kind {
        Kind::Stream { fd, readable } => {
            super::fd::host_events(fd.as_raw_fd(), if *readable { POLLIN } else { POLLOUT })
        }
        Kind::PipeRead(p, _) => {
            let p = p.borrow();
            let mut r = 0;
            if !p.buf.is_empty() {
                r |= POLLIN;
            }
            if p.writers == 0 {
                r |= POLLHUP;
            }
            r
        }
        Kind::PipeWrite(p, _) => {
            let p = p.borrow();
            if p.readers == 0 {
                POLLERR
            } else if p.space() > 0 {
                POLLOUT
            } else {
                0
            }
        }
        Kind::Socket(s) => super::socket::ready(s),
        Kind::EventFd(v, _) => {
            if v.get() > 0 {
                POLLIN | POLLOUT
            } else {
                POLLOUT
            }
        }
        Kind::Epoll(list) => {
            // Nested sets are at most `MAX_CHAIN` deep (`nests_too_deep`).
            let any = list.borrow().iter().any(|e| {
                e.file
                    .upgrade()
                    .is_some_and(|f| ready(&f, e.events as i16) != 0)
            });
            if any {
                POLLIN
            } else {
                0
            }
        }
        _ => POLLIN | POLLOUT,
    };
    all & (events | POLLHUP | POLLERR)
}

/// The deadline of this call: kept across retries.
fn deadline(k: &Kernel, timeout_ns: Option<u64>) -> Option<u64> {
    if let Some(Wait::Poll { deadline }) = &k.retrying {
        return *deadline;
    }
    timeout_ns.map(|d| k.mono_ns().saturating_add(d))
}

fn expired(k: &Kernel, d: Option<u64>) -> bool {
    d.is_some_and(|d| k.mono_ns() >= d)
}

/// Host fds a process waits on in poll or select (its readable streams).
pub fn host_fds_of(k: &Kernel, t: Pid) -> Vec<i32> {
    let fds = k.fds_of(t);
    let fds = fds.borrow();
    fds.open_fds()
        .into_iter()
        .filter_map(|i| match &fds.get(i as i64)?.kind {
            Kind::Stream { fd, readable: true } => Some(fd.as_raw_fd()),
            Kind::Socket(s) => super::socket::host_fd(s),
            _ => None,
        })
        .collect()
}

fn do_poll(k: &mut Kernel, t: Pid, fds: u64, nfds: u64, timeout_ns: Option<u64>) -> SysResult {
    if nfds > 1024 {
        return err(EINVAL);
    }
    let raw = k.read_user(t, fds, nfds as usize * 8)?;
    let table = k.fds_of(t);
    let mut out = raw.clone();
    let mut n = 0;
    for (i, c) in raw.chunks_exact(8).enumerate() {
        let fd = i32::from_le_bytes(c[..4].try_into().expect("4"));
        let events = i16::from_le_bytes(c[4..6].try_into().expect("2"));
        let rev = if fd < 0 {
            0
        } else {
            match table.borrow().get(fd as i64) {
                Some(f) => ready(&f, events),
                None => POLLNVAL,
            }
        };
        out[i * 8 + 6..i * 8 + 8].copy_from_slice(&rev.to_le_bytes());
        if rev != 0 {
            n += 1;
        }
    }
    let d = deadline(k, timeout_ns);
    if n > 0 || timeout_ns == Some(0) || expired(k, d) {
        k.write_user(t, fds, &out)?;
        return Ok(n);
    }
    Err(Stop::Block(Wait::Poll { deadline: d }))
}

pub fn poll(k: &mut Kernel, t: Pid, fds: u64, nfds: u64, timeout_ms: i64) -> SysResult {
    let to = (timeout_ms >= 0).then(|| timeout_ms as u64 * 1_000_000);
    do_poll(k, t, fds, nfds, to)
}

/// A timeout argument: none when null, else a timespec (`frac_ns` 1) or
/// a timeval (1000).
fn read_timeout(k: &mut Kernel, t: Pid, addr: u64, frac_ns: u64) -> Result<Option<u64>, Stop> {
    if addr == 0 {
        return Ok(None);
    }
    Ok(Some(super::time::read_times(k, t, addr, 1, frac_ns)?[0]))
}

pub fn ppoll(k: &mut Kernel, t: Pid, fds: u64, nfds: u64, ts: u64) -> SysResult {
    let to = read_timeout(k, t, ts, 1)?;
    do_poll(k, t, fds, nfds, to)
}

#[allow(clippy::too_many_arguments)]
pub fn select(
    k: &mut Kernel,
    t: Pid,
    n: u64,
    rd: u64,
    wr: u64,
    ex: u64,
    timeout: u64,
    pselect: bool,
) -> SysResult {
    if n > 1024 {
        return err(EINVAL);
    }
    let bytes = (n as usize).div_ceil(64) * 8;
    let load = |k: &mut Kernel, a: u64| -> Result<Vec<u8>, Stop> {
        if a == 0 {
            Ok(vec![0; bytes])
        } else {
            k.read_user(t, a, bytes)
        }
    };
    let (r, w, e) = (load(k, rd)?, load(k, wr)?, load(k, ex)?);
    let to = read_timeout(k, t, timeout, if pselect { 1 } else { 1000 })?;
    let table = k.fds_of(t);
    let (mut ro, mut wo, eo) = (vec![0u8; bytes], vec![0u8; bytes], vec![0u8; bytes]);
    let mut count = 0;
    let isset = |s: &[u8], i: usize| s[i / 8] >> (i % 8) & 1 == 1;
    for i in 0..n as usize {
        let want_r = isset(&r, i);
        let want_w = isset(&w, i);
        if !want_r && !want_w && !isset(&e, i) {
            continue;
        }
        let Some(f) = table.borrow().get(i as i64) else {
            return err(libc::EBADF);
        };
        let rev = ready(&f, POLLIN | POLLOUT);
        if want_r && rev & (POLLIN | POLLHUP | POLLERR) != 0 {
            ro[i / 8] |= 1 << (i % 8);
            count += 1;
        }
        if want_w && rev & (POLLOUT | POLLERR) != 0 {
            wo[i / 8] |= 1 << (i % 8);
            count += 1;
        }
    }
    let d = deadline(k, to);
    if count > 0 || to == Some(0) || expired(k, d) {
        for (a, v) in [(rd, &ro), (wr, &wo), (ex, &eo)] {
            if a != 0 {
                k.write_user(t, a, v)?;
            }
        }
        return Ok(count);
    }
    Err(Stop::Block(Wait::Poll { deadline: d }))
}

const EPOLL_CTL_ADD: u64 = 1;
const EPOLL_CTL_DEL: u64 = 2;
const EPOLL_CTL_MOD: u64 = 3;
const EPOLLONESHOT: u32 = 1 << 30;
const EPOLLET: u32 = 1 << 31;

/// A token that changes whenever `f`'s readiness may have (data in or
/// out, an end closed, a connection arriving), for edge-triggered epoll;
/// `None` for files whose changes the VMM does not see (host streams),
/// which stay level-triggered.
fn activity(f: &OpenFile) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match &f.kind {
        Kind::PipeRead(p, _) | Kind::PipeWrite(p, _) => p.borrow().token().hash(&mut h),
        Kind::Socket(s) => super::socket::token(s).hash(&mut h),
        Kind::EventFd(v, _) => v.get().hash(&mut h),
        _ => return None,
    }
    Some(h.finish())
}

pub fn epoll_create(k: &mut Kernel, t: Pid, flags: u64) -> SysResult {
    if flags & !(libc::EPOLL_CLOEXEC as u64) != 0 {
        return err(EINVAL);
    }
    let f = OpenFile::new(
        Kind::Epoll(std::cell::RefCell::new(Vec::new())),
        libc::O_RDWR,
    );
    let fds = k.fds_of(t);
    let n = fds
        .borrow_mut()
        .insert(f, flags != 0)
        .ok_or(Stop::Errno(libc::EMFILE))?;
    Ok(n as u64)
}

pub fn epoll_ctl(k: &mut Kernel, t: Pid, epfd: u64, op: u64, fd: u64, event: u64) -> SysResult {
    let ep = super::fd::file(k, t, epfd)?;
    let target = super::fd::file(k, t, fd)?;
    let Kind::Epoll(list) = &ep.kind else {
        return err(EINVAL);
    };
    if std::rc::Rc::ptr_eq(&ep, &target) {
        return err(EINVAL);
    }
    let (events, data) = if op != EPOLL_CTL_DEL {
        let b = k.read_user(t, event, 12)?;
        (
            u32::from_le_bytes(b[..4].try_into().expect("4")),
            u64::from_le_bytes(b[4..12].try_into().expect("8")),
        )
    } else {
        (0, 0)
    };
    if op == EPOLL_CTL_ADD && nests_too_deep(k, &ep, &target) {
        return err(libc::ELOOP);
    }
    let mut list = list.borrow_mut();
    let pos = list.iter().position(|e| {
        e.fd == fd as i64
            && e.file
                .upgrade()
                .is_some_and(|f| std::rc::Rc::ptr_eq(&f, &target))
    });
    match (op, pos) {
        (EPOLL_CTL_ADD, Some(_)) => err(libc::EEXIST),
        (EPOLL_CTL_ADD, None) => {
            if list.len() >= 4096 {
                return err(libc::ENOSPC);
            }
            list.push(crate::fs::file::EpollEntry {
                fd: fd as i64,
                file: std::rc::Rc::downgrade(&target),
                events,
                data,
                seen: None,
            });
            Ok(0)
        }
        (EPOLL_CTL_MOD, Some(i)) => {
            list[i].events = events;
            list[i].data = data;
            // Re-armed: the next wait reports what is ready now.
            list[i].seen = None;
            Ok(0)
        }
        (EPOLL_CTL_DEL, Some(i)) => {
            list.remove(i);
            Ok(0)
        }
        (EPOLL_CTL_MOD | EPOLL_CTL_DEL, None) => err(libc::ENOENT),
        _ => err(EINVAL),
    }
}

/// Epoll sets in a chain at most (Linux's `EP_MAX_NESTS` of 4 below the
/// top one).
const MAX_CHAIN: usize = 5;

/// The epoll sets `f` watches (none if it is not one).
fn nested(f: &OpenFile) -> Vec<std::rc::Rc<OpenFile>> {
    match &f.kind {
        Kind::Epoll(list) => list
            .borrow()
            .iter()
            .filter_map(|e| e.file.upgrade())
            .filter(|f| matches!(f.kind, Kind::Epoll(_)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The longest chain of epoll sets from `f` down, `f` included (at most
/// `MAX_CHAIN + 1`: the walk stops there).
fn height(f: &OpenFile, depth: usize) -> usize {
    if depth > MAX_CHAIN {
        return 0;
    }
    1 + nested(f)
        .iter()
        .map(|c| height(c, depth + 1))
        .max()
        .unwrap_or(0)
}

/// True when `target` reaches `ep` within `MAX_CHAIN` levels.
fn reaches(target: &OpenFile, ep: &OpenFile, depth: usize) -> bool {
    depth <= MAX_CHAIN
        && nested(target)
            .iter()
            .any(|c| std::ptr::eq(&**c, ep) || reaches(c, ep, depth + 1))
}

/// `epoll_ctl(ep, ADD, target)` as Linux's `ep_loop_check` judges it
/// (ELOOP): `target` an epoll set that reaches `ep` (a loop), or a chain
/// through the two longer than `MAX_CHAIN` sets, counting the sets above
/// `ep` (any process's) and below `target`. Keeps every walk over nested
/// sets (readiness, the template copy) bounded.
fn nests_too_deep(k: &Kernel, ep: &std::rc::Rc<OpenFile>, target: &OpenFile) -> bool {
    if !matches!(target.kind, Kind::Epoll(_)) {
        return false;
    }
    if reaches(target, ep, 0) {
        return true;
    }
    // Who watches whom, over every epoll set of the VM.
    let mut parents: Vec<(*const OpenFile, *const OpenFile)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in k.table.procs.values() {
        for slot in p.fds.borrow().fds.iter().flatten() {
            let f = &slot.0;
            if seen.insert(std::rc::Rc::as_ptr(f)) {
                for c in nested(f) {
                    parents.push((std::rc::Rc::as_ptr(&c), std::rc::Rc::as_ptr(f)));
                }
            }
        }
    }
    fn above(
        x: *const OpenFile,
        parents: &[(*const OpenFile, *const OpenFile)],
        d: usize,
    ) -> usize {
        if d > MAX_CHAIN {
            return 0;
        }
        1 + parents
            .iter()
            .filter(|(c, _)| *c == x)
            .map(|(_, p)| above(*p, parents, d + 1))
            .max()
            .unwrap_or(0)
    }
    above(std::rc::Rc::as_ptr(ep), &parents, 0) + height(target, 0) > MAX_CHAIN
}

pub fn epoll_wait(
    k: &mut Kernel,
    t: Pid,
    epfd: u64,
    events: u64,
    max: u64,
    timeout_ms: i64,
) -> SysResult {
    if max == 0 || max > 4096 {
        return err(EINVAL);
    }
    let ep = super::fd::file(k, t, epfd)?;
    let Kind::Epoll(list) = &ep.kind else {
        return err(EINVAL);
    };
    let mut out = Vec::new();
    let mut n = 0u64;
    {
        let mut list = list.borrow_mut();
        list.retain(|e| e.file.strong_count() > 0);
        for e in list.iter_mut() {
            if n >= max {
                break;
            }
            let Some(f) = e.file.upgrade() else { continue };
            // The change token before the readiness: a host stream can
            // become ready between the two looks, and a token taken after
            // would swallow that edge (reported as not ready now, and
            // unchanged next time). Taken first, such an edge is reported
            // again at worst.
            let now = (e.events & EPOLLET != 0).then(|| activity(&f)).flatten();
            let rev = ready(&f, (e.events & 0xffff) as i16) as u16 as u32;
            if rev != 0 && e.events & EPOLLET != 0 {
                // Edge-triggered: only when the file changed since the
                // last report.
                if now.is_some() && now == e.seen {
                    continue;
                }
                e.seen = now;
            }
            if rev != 0 && e.events & 0xffff != 0 {
                out.extend(rev.to_le_bytes());
                out.extend(e.data.to_le_bytes());
                n += 1;
                if e.events & EPOLLONESHOT != 0 {
                    e.events &= !0xffff;
                }
            }
        }
    }
    let to = (timeout_ms >= 0).then(|| timeout_ms as u64 * 1_000_000);
    let d = deadline(k, to);
    if n > 0 || to == Some(0) || expired(k, d) {
        k.write_user(t, events, &out)?;
        return Ok(n);
    }
    Err(Stop::Block(Wait::Poll { deadline: d }))
}

pub fn eventfd(k: &mut Kernel, t: Pid, init: u64, flags: u64) -> SysResult {
    let sem = flags & 1 != 0;
    let nb = flags as i32 & libc::O_NONBLOCK;
    let f = OpenFile::new(
        Kind::EventFd(std::cell::Cell::new(init as u32 as u64), sem),
        libc::O_RDWR | nb,
    );
    let fds = k.fds_of(t);
    let n = fds
        .borrow_mut()
        .insert(f, flags as i32 & libc::O_CLOEXEC != 0)
        .ok_or(Stop::Errno(libc::EMFILE))?;
    Ok(n as u64)
}
