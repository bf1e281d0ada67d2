//! Memory: brk, mmap, munmap, mprotect, mremap, madvise.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use libc::*;

use super::fd::file;
use super::{err, Stop, SysResult};
use crate::fs::file::Kind;
use crate::kernel::Kernel;
use crate::mm::space::Released;
use crate::mm::{page_down, page_up, Backing, Vma, PAGE, USER_END};
use crate::task::Pid;

pub fn brk(k: &mut Kernel, t: Pid, want: u64) -> SysResult {
    let mm = k.mm_of(t);
    let mut released = Released::default();
    let r = mm.borrow_mut().set_brk(&mut k.frames, want, &mut released);
    k.release(released);
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
pub fn mmap(
    k: &mut Kernel,
    t: Pid,
    addr: u64,
    len: u64,
    prot: u64,
    flags: u64,
    fd: u64,
    off: u64,
) -> SysResult {
    let flags = flags as i32;
    let prot = prot as u32 & 7;
    if len == 0 || !off.is_multiple_of(PAGE) {
        return err(EINVAL);
    }
    let len = page_up(len)
        .filter(|&l| l <= USER_END)
        .ok_or(Stop::Errno(ENOMEM))?;
    let shared = match flags & MAP_TYPE {
        MAP_SHARED | MAP_SHARED_VALIDATE => true,
        MAP_PRIVATE => false,
        _ => return err(EINVAL),
    };
    let (backing, name): (Backing, Rc<str>) = if flags & MAP_ANONYMOUS != 0 {
        (Backing::Anon, "".into())
    } else {
        let f = file(k, t, fd)?;
        match &f.kind {
            Kind::Host {
                fd,
                dir: false,
                path,
            } => {
                if !f.readable() || (shared && prot & PROT_WRITE as u32 != 0 && !f.writable()) {
                    return err(EACCES);
                }
                // SAFETY: dup of an fd we own; the mapping keeps its own.
                let dup = unsafe { libc::fcntl(fd.as_raw_fd(), F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return err(ENFILE);
                }
                // SAFETY: a new fd we own.
                let dup =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
                // SAFETY: zeroed stat filled by fstat.
                let mut st: stat = unsafe { std::mem::zeroed() };
                // SAFETY: valid fd and buffer.
                unsafe { fstat(dup.as_raw_fd(), &mut st) };
                (
                    Backing::File {
                        fd: Rc::new(dup),
                        offset: off,
                        file_len: st.st_size as u64,
                    },
                    path.as_str().into(),
                )
            }
            Kind::Null | Kind::Zero => (Backing::Anon, "/dev/zero".into()),
            _ => return err(ENODEV),
        }
    };
    let mm = k.mm_of(t);
    let start = {
        let m = mm.borrow();
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            if !addr.is_multiple_of(PAGE)
                || addr.checked_add(len).is_none_or(|e| e > USER_END)
                || addr < crate::mm::MMAP_MIN
            {
                return err(if !addr.is_multiple_of(PAGE) {
                    EINVAL
                } else {
                    ENOMEM
                });
            }
            if flags & MAP_FIXED_NOREPLACE != 0 && !m.is_free(addr, addr + len) {
                return err(EEXIST);
            }
            addr
        } else if addr != 0
            && addr.is_multiple_of(PAGE)
            && m.is_free(addr, addr.saturating_add(len))
        {
            addr
        } else {
            m.find_free(len).ok_or(Stop::Errno(ENOMEM))?
        }
    };
    if mm.borrow().overlaps_stale(start, start + len) {
        k.reset_translations();
    }
    let vma = Vma {
        end: start + len,
        prot,
        shared: shared && flags & MAP_ANONYMOUS != 0,
        backing,
        name,
    };
    let mut released = Released::default();
    let r = mm
        .borrow_mut()
        .insert(&mut k.frames, start, vma, &mut released);
    k.release(released);
    r.map_err(Stop::from)?;
    if flags & MAP_POPULATE != 0 {
        let _ = mm
            .borrow_mut()
            .populate_range(&mut k.frames, start, start + len);
    }
    Ok(start)
}

fn range(addr: u64, len: u64) -> Result<(u64, u64), Stop> {
    if !addr.is_multiple_of(PAGE) {
        return err(EINVAL);
    }
    let end =
        page_up(addr.checked_add(len).ok_or(Stop::Errno(EINVAL))?).ok_or(Stop::Errno(EINVAL))?;
    if end > USER_END {
        return err(EINVAL);
    }
    Ok((addr, end))
}

pub fn munmap(k: &mut Kernel, t: Pid, addr: u64, len: u64) -> SysResult {
    let (start, end) = range(addr, len)?;
    if len == 0 {
        return err(EINVAL);
    }
    let mm = k.mm_of(t);
    let mut released = Released::default();
    mm.borrow_mut()
        .unmap(&mut k.frames, start, end, &mut released);
    k.release(released);
    Ok(0)
}

pub fn mprotect(k: &mut Kernel, t: Pid, addr: u64, len: u64, prot: u64) -> SysResult {
    let (start, end) = range(addr, len)?;
    if start == end {
        return Ok(0);
    }
    let mm = k.mm_of(t);
    let r = mm
        .borrow_mut()
        .protect(&mut k.frames, start, end, prot as u32 & 7);
    r.map_err(|_| Stop::Errno(ENOMEM))?;
    Ok(0)
}

pub fn mremap(
    k: &mut Kernel,
    t: Pid,
    old: u64,
    old_len: u64,
    new_len: u64,
    flags: u64,
    new_addr: u64,
) -> SysResult {
    if !old.is_multiple_of(PAGE) || new_len == 0 {
        return err(EINVAL);
    }
    let old_len = page_up(old_len).ok_or(Stop::Errno(EINVAL))?;
    let new_len = page_up(new_len).ok_or(Stop::Errno(EINVAL))?;
    let mm = k.mm_of(t);
    let Some((vstart, vma)) = mm.borrow().vma_at(old).map(|(s, v)| (s, v.clone())) else {
        return err(EFAULT);
    };
    if old + old_len > vma.end {
        return err(EFAULT);
    }
    if new_len <= old_len {
        let mut released = Released::default();
        mm.borrow_mut()
            .unmap(&mut k.frames, old + new_len, old + old_len, &mut released);
        k.release(released);
        return Ok(old);
    }
    // Grow in place when the space after it is free.
    if old + old_len == vma.end
        && mm.borrow().is_free(vma.end, old + new_len)
        && flags & MREMAP_FIXED as u64 == 0
    {
        let mut m = mm.borrow_mut();
        let v = m.vmas.get_mut(&vstart).expect("found");
        v.end = old + new_len;
        return Ok(old);
    }
    if flags & MREMAP_MAYMOVE as u64 == 0 {
        return err(ENOMEM);
    }
    // Move: a new mapping, the old pages copied over, the old range gone.
    let dest = if flags & MREMAP_FIXED as u64 != 0 {
        new_addr
    } else {
        mm.borrow().find_free(new_len).ok_or(Stop::Errno(ENOMEM))?
    };
    let mut backing = vma.backing.clone();
    if let Backing::File { offset, .. } = &mut backing {
        *offset += old - vstart;
    }
    let nv = Vma {
        end: dest + new_len,
        prot: vma.prot,
        shared: vma.shared,
        backing,
        name: vma.name.clone(),
    };
    let mut released = Released::default();
    if mm.borrow().overlaps_stale(dest, dest + new_len) {
        k.reset_translations();
    }
    mm.borrow_mut()
        .insert(&mut k.frames, dest, nv, &mut released)
        .map_err(Stop::from)?;
    let mut page = vec![0u8; PAGE as usize];
    let mut off = 0;
    while off < old_len {
        let present = mm.borrow().pte(&k.frames, old + off).is_some();
        if present {
            let mut m = mm.borrow_mut();
            m.read(&mut k.frames, old + off, &mut page)
                .map_err(Stop::from)?;
            m.write_force(&mut k.frames, dest + off, &page)
                .map_err(Stop::from)?;
        }
        off += PAGE;
    }
    mm.borrow_mut()
        .unmap(&mut k.frames, old, old + old_len, &mut released);
    k.release(released);
    Ok(dest)
}

pub fn madvise(k: &mut Kernel, t: Pid, addr: u64, len: u64, advice: u64) -> SysResult {
    let (start, end) = range(addr, len)?;
    if advice as i32 == MADV_DONTNEED {
        // Private anonymous pages read as zeros afterwards: zero them in
        // place (no entry changes, so no translation reset).
        let mm = k.mm_of(t);
        let m = mm.borrow();
        for (va, _, pte) in m.leaves(&k.frames, start, end) {
            let private_anon = m
                .vma_at(va)
                .is_some_and(|(_, v)| matches!(v.backing, Backing::Anon) && !v.shared);
            if private_anon && pte & crate::arch::PTE_P != 0 {
                k.frames
                    .write(pte & crate::arch::PTE_ADDR, &[0u8; PAGE as usize]);
            }
        }
    }
    let _ = page_down;
    Ok(0)
}
