//! One process's address space: its mappings (`Vma`s) and the x86-64 page
//! tables the VMM keeps for them in guest memory.
//!
//! Pages are mapped eagerly where that is cheap (program segments, small
//! mappings, the top of the stack) and otherwise on the first fault, which
//! reaches the VMM through the guest IDT. Entries go from absent to present
//! from the host side at any time; KVM picks them up at the guest's next
//! miss. An entry that was present is only ever cleared or narrowed with
//! the range recorded as stale: KVM's shadow MMU may still hold the old
//! translation, so before anything is mapped there again the VM's
//! translations are reset (`Vm::reset_translations`), and frames freed in
//! between wait in quarantine until that reset (see docs/design.md).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use super::frames::{Frames, PAGE};
use super::{page_down, page_up, MMAP_MIN, PROT_EXEC, PROT_READ, PROT_WRITE, USER_END};
use crate::arch::{kernel_pml4_entry, PTE_ADDR, PTE_NX, PTE_P, PTE_U, PTE_W};

/// What fills a mapping's pages when they are first touched.
#[derive(Debug, Clone)]
pub enum Backing {
    /// Zero pages.
    Anon,
    /// A file's bytes from `offset`; past `file_len` (at map time), zeros.
    File {
        fd: Rc<OwnedFd>,
        offset: u64,
        file_len: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Vma {
    pub end: u64,
    pub prot: u32,
    /// `MAP_SHARED`: fork shares the frames instead of copying them.
    pub shared: bool,
    pub backing: Backing,
    /// What `/proc/PID/maps` names it (`[heap]`, `[stack]`, a path).
    pub name: Rc<str>,
}

/// Why a user access cannot be satisfied (becomes SIGSEGV or EFAULT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No mapping there (SEGV_MAPERR).
    Unmapped,
    /// A mapping that does not allow the access (SEGV_ACCERR).
    Denied,
    /// Guest RAM is exhausted.
    OutOfMemory,
}

/// A software bit of a non-present leaf entry: the frame is kept (the
/// page is PROT_NONE for now) and its contents come back with access.
const KEPT: u64 = 1 << 9;

/// Largest mapping populated at `mmap` time rather than on first touch.
const EAGER_ANON: u64 = 64 * 1024;
const EAGER_FILE: u64 = 256 * 1024;

#[derive(Debug)]
pub struct AddressSpace {
    pub pml4: u64,
    /// Mappings by start address; they never overlap.
    pub vmas: BTreeMap<u64, Vma>,
    /// Frames holding this space's page tables (PML4 included).
    tables: Vec<u64>,
    pub brk_start: u64,
    pub brk: u64,
    /// Where top-down `mmap` placement starts.
    pub mmap_top: u64,
    /// Ranges whose translations KVM may still cache (see the module doc).
    stale: Vec<(u64, u64)>,
}

/// What the caller must do after a change (see [`AddressSpace::take_reset`]).
#[derive(Debug, Default)]
pub struct Released {
    /// Frames no longer mapped anywhere in this space.
    pub frames: Vec<u64>,
}

impl AddressSpace {
    pub fn new(frames: &mut Frames) -> Result<Self, Fault> {
        let pml4 = frames.alloc().ok_or(Fault::OutOfMemory)?;
        frames.write_u64(pml4 + 511 * 8, kernel_pml4_entry());
        Ok(Self {
            pml4,
            vmas: BTreeMap::new(),
            tables: vec![pml4],
            brk_start: 0,
            brk: 0,
            mmap_top: 0x7f00_0000_0000,
            stale: Vec::new(),
        })
    }

    /// The mapping containing `addr`.
    pub fn vma_at(&self, addr: u64) -> Option<(u64, &Vma)> {
        let (&start, vma) = self.vmas.range(..=addr).next_back()?;
        (addr < vma.end).then_some((start, vma))
    }

    /// The leaf entry's address for `va`, creating tables if `create`.
    fn pte_addr(
        &mut self,
        frames: &mut Frames,
        va: u64,
        create: bool,
    ) -> Result<Option<u64>, Fault> {
        let mut table = self.pml4;
        for shift in [39u32, 30, 21] {
            let idx = (va >> shift) & 511;
            let entry_addr = table + idx * 8;
            let e = frames.read_u64(entry_addr);
            if e & PTE_P == 0 {
                if !create {
                    return Ok(None);
                }
                let t = frames.alloc().ok_or(Fault::OutOfMemory)?;
                self.tables.push(t);
                frames.write_u64(entry_addr, t | PTE_P | PTE_W | PTE_U);
                table = t;
            } else {
                table = e & PTE_ADDR;
            }
        }
        Ok(Some(table + ((va >> 12) & 511) * 8))
    }

    /// The present leaf entry for `va`, if any.
    pub fn pte(&self, frames: &Frames, va: u64) -> Option<u64> {
        let mut table = self.pml4;
        for shift in [39u32, 30, 21] {
            let e = frames.read_u64(table + ((va >> shift) & 511) * 8);
            if e & PTE_P == 0 {
                return None;
            }
            table = e & PTE_ADDR;
        }
        let e = frames.read_u64(table + ((va >> 12) & 511) * 8);
        (e & PTE_P != 0).then_some(e)
    }

    fn leaf_flags(prot: u32) -> u64 {
        let mut f = PTE_P | PTE_U;
        if prot & PROT_WRITE != 0 {
            f |= PTE_W;
        }
        if prot & PROT_EXEC == 0 {
            f |= PTE_NX;
        }
        f
    }

    /// This space with the mappings `vmas` (a copy of its own made by
    /// `kernel::copy`), for a VM whose memory is a copy of this one's:
    /// the same page tables at the same frames, and nothing stale (the
    /// new VM has cached no translation).
    pub fn copy_with(&self, vmas: BTreeMap<u64, Vma>) -> Self {
        Self {
            pml4: self.pml4,
            vmas,
            tables: self.tables.clone(),
            brk_start: self.brk_start,
            brk: self.brk,
            mmap_top: self.mmap_top,
            stale: Vec::new(),
        }
    }

    /// True when the translation for `va` must be reset before mapping it.
    pub fn is_stale(&self, va: u64) -> bool {
        self.stale.iter().any(|&(s, e)| va >= s && va < e)
    }

    /// True when `[start, end)` overlaps a stale range.
    pub fn overlaps_stale(&self, start: u64, end: u64) -> bool {
        self.stale.iter().any(|&(s, e)| s < end && start < e)
    }

    /// Forgets the stale ranges: the caller has just reset translations.
    pub fn translations_reset(&mut self) {
        self.stale.clear();
    }

    fn mark_stale(&mut self, start: u64, end: u64) {
        if let Some(last) = self.stale.last_mut() {
            if last.1 == start {
                last.1 = end;
                return;
            }
        }
        self.stale.push((start, end));
    }

    /// Fills and maps the page at `va` (inside `vma`) with a new frame.
    fn populate(
        &mut self,
        frames: &mut Frames,
        va: u64,
        start: u64,
        vma: &Vma,
    ) -> Result<(), Fault> {
        let frame = frames.alloc().ok_or(Fault::OutOfMemory)?;
        if let Backing::File {
            fd,
            offset,
            file_len,
        } = &vma.backing
        {
            let off = offset + (va - start);
            if off < *file_len {
                let mut buf = [0u8; PAGE as usize];
                let want = ((file_len - off).min(PAGE)) as usize;
                // SAFETY: reads into a local buffer of at least `want` bytes.
                let n = unsafe {
                    libc::pread(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        want,
                        off as libc::off_t,
                    )
                };
                if n > 0 {
                    frames.write(frame, &buf[..n as usize]);
                }
            }
        }
        let pte = match self.pte_addr(frames, va, true) {
            Ok(p) => p.expect("created"),
            Err(e) => {
                frames.release(frame);
                return Err(e);
            }
        };
        frames.write_u64(pte, frame | Self::leaf_flags(vma.prot));
        Ok(())
    }

    /// Handles a fault at `va` (`write`, `exec`: the access); `Ok(true)`
    /// when a page was mapped, `Ok(false)` when it was already there (a
    /// spurious fault: the caller resets translations).
    pub fn fault(
        &mut self,
        frames: &mut Frames,
        va: u64,
        write: bool,
        exec: bool,
    ) -> Result<bool, Fault> {
        let page = page_down(va);
        let (start, vma) = self.vma_at(page).ok_or(Fault::Unmapped)?;
        let allowed = vma.prot & PROT_READ != 0 || vma.prot & (PROT_WRITE | PROT_EXEC) != 0;
        if !allowed || (write && vma.prot & PROT_WRITE == 0) || (exec && vma.prot & PROT_EXEC == 0)
        {
            return Err(Fault::Denied);
        }
        if self.pte(frames, page).is_some() {
            return Ok(false);
        }
        let vma = vma.clone();
        self.populate(frames, page, start, &vma)?;
        Ok(true)
    }

    /// Maps every page of `[start, end)` now (they must lie in one VMA).
    pub fn populate_range(
        &mut self,
        frames: &mut Frames,
        start: u64,
        end: u64,
    ) -> Result<(), Fault> {
        let Some((vstart, vma)) = self.vma_at(start) else {
            return Err(Fault::Unmapped);
        };
        if vma.prot == 0 {
            return Ok(());
        }
        let vma = vma.clone();
        let mut va = start;
        while va < end.min(vma.end) {
            if self.pte(frames, va).is_none() {
                self.populate(frames, va, vstart, &vma)?;
            }
            va += PAGE;
        }
        Ok(())
    }

    /// Inserts a mapping at `[start, end)`, replacing whatever was there.
    pub fn insert(
        &mut self,
        frames: &mut Frames,
        start: u64,
        vma: Vma,
        released: &mut Released,
    ) -> Result<(), Fault> {
        let end = vma.end;
        self.unmap(frames, start, end, released);
        let eager = match vma.backing {
            Backing::Anon => EAGER_ANON,
            Backing::File { .. } => EAGER_FILE,
        };
        let stale = self.stale.iter().any(|&(s, e)| s < end && start < e);
        self.vmas.insert(start, vma);
        if end - start <= eager && !stale {
            // Best effort: a full RAM shows at the first touch instead.
            let _ = self.populate_range(frames, start, end);
        }
        Ok(())
    }

    /// Splits the mapping containing `addr` so that one starts there.
    fn split_at(&mut self, addr: u64) {
        let Some((start, vma)) = self.vma_at(addr) else {
            return;
        };
        if start == addr {
            return;
        }
        let mut upper = vma.clone();
        if let Backing::File { offset, .. } = &mut upper.backing {
            *offset += addr - start;
        }
        self.vmas.get_mut(&start).expect("found").end = addr;
        self.vmas.insert(addr, upper);
    }

    /// Removes `[start, end)` from the space; the frames that were mapped
    /// there go to `released`.
    pub fn unmap(&mut self, frames: &mut Frames, start: u64, end: u64, released: &mut Released) {
        self.split_at(start);
        self.split_at(end);
        let starts: Vec<u64> = self.vmas.range(start..end).map(|(&s, _)| s).collect();
        let mut any_present = false;
        for s in starts {
            let vma = self.vmas.remove(&s).expect("listed");
            for (_, pte, e) in self.leaves(frames, s, vma.end) {
                if e & (PTE_P | KEPT) != 0 {
                    frames.write_u64(pte, 0);
                    released.frames.push(e & PTE_ADDR);
                    any_present |= e & PTE_P != 0;
                }
            }
        }
        if any_present {
            self.mark_stale(start, end);
        }
    }

    /// Changes the protection of `[start, end)` (every page must be mapped).
    pub fn protect(
        &mut self,
        frames: &mut Frames,
        start: u64,
        end: u64,
        prot: u32,
    ) -> Result<(), Fault> {
        let mut a = start;
        while a < end {
            let (s, v) = self.vma_at(a).ok_or(Fault::Unmapped)?;
            a = v.end;
            let _ = s;
        }
        self.split_at(start);
        self.split_at(end);
        let starts: Vec<u64> = self.vmas.range(start..end).map(|(&s, _)| s).collect();
        let mut narrowed = false;
        for s in starts {
            let vma = self.vmas.get_mut(&s).expect("listed");
            let old = vma.prot;
            vma.prot = prot;
            let vend = vma.end;
            for (_, pte, e) in self.leaves(frames, s, vend) {
                if e & PTE_P != 0 {
                    if prot == 0 {
                        // PROT_NONE: keep the frame (the contents stay)
                        // but unmap it; `populate` is not used for it
                        // again because the VMA keeps it in `kept`.
                        frames.write_u64(pte, (e & PTE_ADDR) & !PTE_P | KEPT);
                    } else {
                        frames.write_u64(pte, (e & PTE_ADDR) | Self::leaf_flags(prot));
                    }
                    if old & !prot != 0 {
                        narrowed = true;
                    }
                } else if e & KEPT != 0 && prot != 0 {
                    frames.write_u64(pte, (e & PTE_ADDR) | Self::leaf_flags(prot));
                }
            }
        }
        if narrowed {
            self.mark_stale(start, end);
        }
        Ok(())
    }

    /// A free range of `len` bytes for `mmap`, top down below `mmap_top`.
    pub fn find_free(&self, len: u64) -> Option<u64> {
        let mut top = self.mmap_top;
        for (&start, vma) in self.vmas.range(..self.mmap_top).rev() {
            if vma.end <= top && top - vma.end >= len {
                return Some(top - len);
            }
            top = top.min(start);
        }
        (top >= MMAP_MIN + len).then(|| top - len)
    }

    /// True when `[start, end)` overlaps no mapping.
    pub fn is_free(&self, start: u64, end: u64) -> bool {
        if end > USER_END || start < MMAP_MIN {
            return false;
        }
        match self.vma_at(start) {
            Some(_) => false,
            None => self.vmas.range(start..end).next().is_none(),
        }
    }

    /// A copy of this space for a forked child: private pages are copied,
    /// shared ones shared.
    pub fn fork(&self, frames: &mut Frames) -> Result<Self, Fault> {
        let mut child = Self::new(frames)?;
        child.brk_start = self.brk_start;
        child.brk = self.brk;
        child.mmap_top = self.mmap_top;
        for (&start, vma) in &self.vmas {
            child.vmas.insert(start, vma.clone());
            for (va, _, e) in self.leaves(frames, start, vma.end) {
                if e & (PTE_P | KEPT) != 0 {
                    let old = e & PTE_ADDR;
                    let frame = if vma.shared {
                        frames.share(old);
                        old
                    } else {
                        let Some(f) = frames.alloc() else {
                            child.destroy(frames, &mut Released::default());
                            return Err(Fault::OutOfMemory);
                        };
                        frames.copy(old, f);
                        f
                    };
                    let pte = match child.pte_addr(frames, va, true) {
                        Ok(p) => p.expect("created"),
                        Err(e) => {
                            frames.release(frame);
                            child.destroy(frames, &mut Released::default());
                            return Err(e);
                        }
                    };
                    frames.write_u64(pte, frame | (e & !PTE_ADDR));
                }
            }
        }
        Ok(child)
    }

    /// The non-zero leaf entries of `[start, end)` (present, or kept for
    /// PROT_NONE): their addresses, entry addresses and values. Only the
    /// tables that exist are walked, so that the cost follows what is
    /// mapped, not how large a reservation is (a hostile program may map
    /// terabytes of PROT_NONE).
    pub fn leaves(&self, frames: &Frames, start: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let mut va = start;
        'walk: while va < end {
            let mut table = self.pml4;
            for shift in [39u32, 30, 21] {
                let e = frames.read_u64(table + ((va >> shift) & 511) * 8);
                if e & PTE_P == 0 {
                    // Nothing below this entry: on to the next one.
                    va = (va | ((1u64 << shift) - 1)).saturating_add(1);
                    continue 'walk;
                }
                table = e & PTE_ADDR;
            }
            let table_end = (va | ((1u64 << 21) - 1)).saturating_add(1);
            while va < end.min(table_end) {
                let pte = table + ((va >> 12) & 511) * 8;
                let e = frames.read_u64(pte);
                if e != 0 {
                    out.push((va, pte, e));
                }
                va += PAGE;
            }
        }
        out
    }

    /// Unmaps everything and gives back the page tables; the frames (data
    /// and tables) go to `released`.
    pub fn destroy(&mut self, frames: &mut Frames, released: &mut Released) {
        let all: Vec<(u64, u64)> = self.vmas.iter().map(|(&s, v)| (s, v.end)).collect();
        for (s, e) in all {
            for (_, _, pte) in self.leaves(frames, s, e) {
                if pte & (PTE_P | KEPT) != 0 {
                    released.frames.push(pte & PTE_ADDR);
                }
            }
        }
        self.vmas.clear();
        released.frames.append(&mut self.tables);
    }

    /// Translates `va` for an access by the VMM on the program's behalf
    /// (a system call's buffer), faulting the page in as the CPU would.
    pub fn translate(&mut self, frames: &mut Frames, va: u64, write: bool) -> Result<u64, Fault> {
        if va >= USER_END {
            return Err(Fault::Unmapped);
        }
        let page = page_down(va);
        let (_, vma) = self.vma_at(page).ok_or(Fault::Unmapped)?;
        if vma.prot & PROT_READ == 0 && vma.prot & PROT_WRITE == 0 {
            return Err(Fault::Denied);
        }
        if write && vma.prot & PROT_WRITE == 0 {
            return Err(Fault::Denied);
        }
        let e = match self.pte(frames, page) {
            Some(e) => e,
            None => {
                self.fault(frames, page, write, false)?;
                self.pte(frames, page).ok_or(Fault::Unmapped)?
            }
        };
        Ok((e & PTE_ADDR) + (va - page))
    }

    /// Copies `buf.len()` bytes from the program's memory at `va`.
    pub fn read(&mut self, frames: &mut Frames, va: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = va.checked_add(done as u64).ok_or(Fault::Unmapped)?;
            let phys = self.translate(frames, a, false)?;
            let n = ((PAGE - (a % PAGE)) as usize).min(buf.len() - done);
            frames.read(phys, &mut buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Copies `buf` into the program's memory at `va`.
    pub fn write(&mut self, frames: &mut Frames, va: u64, buf: &[u8]) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = va.checked_add(done as u64).ok_or(Fault::Unmapped)?;
            let phys = self.translate(frames, a, true)?;
            let n = ((PAGE - (a % PAGE)) as usize).min(buf.len() - done);
            frames.write(phys, &buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Writes bytes the program may not write itself (its initial stack,
    /// read-only segments at load time).
    pub fn write_force(&mut self, frames: &mut Frames, va: u64, buf: &[u8]) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = va + done as u64;
            let page = page_down(a);
            let e = match self.pte(frames, page) {
                Some(e) => e,
                None => {
                    let (start, vma) = self.vma_at(page).ok_or(Fault::Unmapped)?;
                    let vma = vma.clone();
                    self.populate(frames, page, start, &vma)?;
                    self.pte(frames, page).ok_or(Fault::Unmapped)?
                }
            };
            let n = ((PAGE - (a % PAGE)) as usize).min(buf.len() - done);
            frames.write((e & PTE_ADDR) + (a - page), &buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// A NUL-terminated string of at most `max` bytes at `va`.
    pub fn read_cstr(
        &mut self,
        frames: &mut Frames,
        va: u64,
        max: usize,
    ) -> Result<Vec<u8>, Fault> {
        let mut out = Vec::new();
        let mut a = va;
        loop {
            let phys = self.translate(frames, a, false)?;
            let n = (PAGE - (a % PAGE)) as usize;
            let mut chunk = vec![0u8; n];
            frames.read(phys, &mut chunk);
            if let Some(z) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..z]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
            if out.len() > max {
                return Err(Fault::Denied);
            }
            a += n as u64;
        }
    }

    /// Sets the program break (`brk`); returns the new one.
    pub fn set_brk(&mut self, frames: &mut Frames, want: u64, released: &mut Released) -> u64 {
        if want < self.brk_start {
            return self.brk;
        }
        let old_end = page_up(self.brk).unwrap_or(self.brk);
        let Some(new_end) = page_up(want) else {
            return self.brk;
        };
        if new_end > old_end {
            if !self.is_free(old_end, new_end) {
                return self.brk;
            }
            // Grow the heap mapping (or create it).
            let heap_start = self
                .vmas
                .range(..old_end)
                .next_back()
                .filter(|(_, v)| v.end == old_end && &*v.name == "[heap]")
                .map(|(&s, _)| s);
            match heap_start {
                Some(s) => self.vmas.get_mut(&s).expect("found").end = new_end,
                None => {
                    self.vmas.insert(
                        old_end,
                        Vma {
                            end: new_end,
                            prot: PROT_READ | PROT_WRITE,
                            shared: false,
                            backing: Backing::Anon,
                            name: "[heap]".into(),
                        },
                    );
                }
            }
        } else if new_end < old_end {
            self.unmap(frames, new_end, old_end, released);
        }
        self.brk = want;
        self.brk
    }
}
