//! Reading and writing a program's memory on its behalf. Every pointer
//! and length a system call passes is checked against the calling
//! process's own mappings; a bad one is `EFAULT`, never a host fault.

use super::Kernel;
use crate::mm::Fault;
use crate::syscalls::{Stop, EFAULT, ENOMEM};
use crate::task::Pid;

/// Largest buffer one system call copies in or out at once.
pub const MAX_IO: usize = 16 << 20;

impl Kernel {
    fn fault_to_stop(&mut self, f: Fault) -> Stop {
        match f {
            Fault::OutOfMemory => Stop::Errno(ENOMEM),
            _ => Stop::Errno(EFAULT),
        }
    }

    /// Runs `f` on the process's address space, retrying once after
    /// freeing quarantined frames if guest RAM ran out.
    pub fn with_mm<T>(
        &mut self,
        tid: Pid,
        mut f: impl FnMut(&mut crate::mm::AddressSpace, &mut crate::mm::Frames) -> Result<T, Fault>,
    ) -> Result<T, Stop> {
        let mm = self.mm_of(tid);
        let r = f(&mut mm.borrow_mut(), &mut self.frames);
        match r {
            Err(Fault::OutOfMemory) if self.frames.quarantined() > 0 => {
                self.reset_translations();
                let r = f(&mut mm.borrow_mut(), &mut self.frames);
                r.map_err(|e| self.fault_to_stop(e))
            }
            r => r.map_err(|e| self.fault_to_stop(e)),
        }
    }

    pub fn read_user(&mut self, tid: Pid, addr: u64, len: usize) -> Result<Vec<u8>, Stop> {
        if len > MAX_IO {
            return Err(Stop::Errno(EFAULT));
        }
        let mut buf = vec![0u8; len];
        self.with_mm(tid, |mm, fr| mm.read(fr, addr, &mut buf))?;
        Ok(buf)
    }

    pub fn write_user(&mut self, tid: Pid, addr: u64, data: &[u8]) -> Result<(), Stop> {
        self.with_mm(tid, |mm, fr| mm.write(fr, addr, data))
    }

    pub fn read_u64(&mut self, tid: Pid, addr: u64) -> Result<u64, Stop> {
        let b = self.read_user(tid, addr, 8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn read_u32(&mut self, tid: Pid, addr: u64) -> Result<u32, Stop> {
        let b = self.read_user(tid, addr, 4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn write_u64(&mut self, tid: Pid, addr: u64, v: u64) -> Result<(), Stop> {
        self.write_user(tid, addr, &v.to_le_bytes())
    }

    pub fn write_u32(&mut self, tid: Pid, addr: u64, v: u32) -> Result<(), Stop> {
        self.write_user(tid, addr, &v.to_le_bytes())
    }

    /// A NUL-terminated string (a path: at most 4096 bytes).
    pub fn read_cstr(&mut self, tid: Pid, addr: u64) -> Result<Vec<u8>, Stop> {
        if addr == 0 {
            return Err(Stop::Errno(EFAULT));
        }
        let r = self.with_mm(tid, |mm, fr| mm.read_cstr(fr, addr, 4096));
        match r {
            Err(Stop::Errno(EFAULT)) => {
                // Too long is ENAMETOOLONG; unmapped is EFAULT.
                let mm = self.mm_of(tid);
                let mapped = mm.borrow().vma_at(addr).is_some();
                Err(Stop::Errno(if mapped {
                    crate::syscalls::ENAMETOOLONG
                } else {
                    EFAULT
                }))
            }
            r => r,
        }
    }

    /// A NULL-terminated array of string pointers (argv, envp).
    pub fn read_str_array(&mut self, tid: Pid, addr: u64) -> Result<Vec<Vec<u8>>, Stop> {
        let mut out = Vec::new();
        if addr == 0 {
            return Ok(out);
        }
        let mut total = 0usize;
        for i in 0..(1u64 << 17) {
            let p = self.read_u64(tid, addr + i * 8)?;
            if p == 0 {
                return Ok(out);
            }
            let s = self
                .with_mm(tid, |mm, fr| mm.read_cstr(fr, p, 128 * 1024))
                .map_err(|_| Stop::Errno(EFAULT))?;
            total += s.len() + 1;
            if total > 2 << 20 {
                return Err(Stop::Errno(crate::syscalls::E2BIG));
            }
            out.push(s);
        }
        Err(Stop::Errno(crate::syscalls::E2BIG))
    }
}
