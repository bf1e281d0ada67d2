//! Signals: dispositions, masks, and the `rt_sigframe` that Linux x86-64
//! pushes on the user stack (`arch/x86/kernel/signal.c`), so handlers run
//! and `rt_sigreturn` restores exactly what Linux would.

use kvm_bindings::kvm_regs;

use crate::mm::{AddressSpace, Fault, Frames};

pub type SigSet = u64;

pub const SIGQUIT: i32 = 3;
pub const SIGILL: i32 = 4;
pub const SIGTRAP: i32 = 5;
pub const SIGABRT: i32 = 6;
pub const SIGBUS: i32 = 7;
pub const SIGFPE: i32 = 8;
pub const SIGKILL: i32 = 9;
pub const SIGSEGV: i32 = 11;
pub const SIGPIPE: i32 = 13;
pub const SIGALRM: i32 = 14;
pub const SIGCHLD: i32 = 17;
pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;
pub const SIGTSTP: i32 = 20;
pub const SIGTTIN: i32 = 21;
pub const SIGTTOU: i32 = 22;
pub const SIGURG: i32 = 23;
pub const SIGXCPU: i32 = 24;
pub const SIGXFSZ: i32 = 25;
pub const SIGWINCH: i32 = 28;
pub const SIGSYS: i32 = 31;
pub const NSIG: i32 = 64;

pub const SIG_DFL: u64 = 0;
pub const SIG_IGN: u64 = 1;

pub const SA_ONSTACK: u64 = 0x0800_0000;
pub const SA_RESTART: u64 = 0x1000_0000;
pub const SA_NODEFER: u64 = 0x4000_0000;
pub const SA_RESETHAND: u64 = 0x8000_0000;

pub const SS_ONSTACK: i32 = 1;
pub const SS_DISABLE: i32 = 2;

/// si_code values.
pub const SI_USER: i32 = 0;
pub const SI_TKILL: i32 = -6;
pub const SEGV_MAPERR: i32 = 1;
pub const SEGV_ACCERR: i32 = 2;
pub const CLD_EXITED: i32 = 1;
pub const CLD_KILLED: i32 = 2;
pub const CLD_DUMPED: i32 = 3;

/// The mask bit of signal `sig`; none for a number that is no signal.
pub fn bit(sig: i32) -> SigSet {
    if (1..=NSIG).contains(&sig) {
        1u64 << (sig - 1)
    } else {
        0
    }
}

/// Signals that can be neither caught, blocked nor ignored.
pub const UNBLOCKABLE: SigSet = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1));

#[derive(Debug, Clone, Copy, Default)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: SigSet,
}

#[derive(Debug, Clone)]
pub struct SigActions(pub [SigAction; NSIG as usize]);

impl Default for SigActions {
    fn default() -> Self {
        Self([SigAction::default(); NSIG as usize])
    }
}

impl SigActions {
    pub fn get(&self, sig: i32) -> SigAction {
        self.0[(sig - 1) as usize]
    }

    /// After `execve`: handled signals go back to their default; ignored
    /// ones stay ignored.
    pub fn reset_for_exec(&mut self) {
        for a in &mut self.0 {
            if a.handler != SIG_IGN {
                *a = SigAction::default();
            }
        }
    }
}

/// What a signal does when nobody handles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    Terminate,
    Core,
    Ignore,
    Stop,
    Continue,
}

pub fn default_action(sig: i32) -> DefaultAction {
    match sig {
        SIGCHLD | SIGURG | SIGWINCH => DefaultAction::Ignore,
        SIGCONT => DefaultAction::Continue,
        SIGSTOP | SIGTSTP | SIGTTIN | SIGTTOU => DefaultAction::Stop,
        SIGQUIT | SIGILL | SIGTRAP | SIGABRT | SIGBUS | SIGFPE | SIGSEGV | SIGXCPU | SIGXFSZ
        | SIGSYS => DefaultAction::Core,
        _ => DefaultAction::Terminate,
    }
}

/// A signal on its way, with the fields of its `siginfo_t`.
#[derive(Debug, Clone, Copy)]
pub struct SigInfo {
    pub signo: i32,
    pub code: i32,
    /// Sender pid and uid (kill), or the child's pid (SIGCHLD).
    pub pid: i32,
    pub uid: u32,
    /// The child's status (SIGCHLD), or a timer's overrun.
    pub status: i32,
    /// The fault address (SIGSEGV), or a timer's `sigev_value`.
    pub addr: u64,
}

impl SigInfo {
    pub fn user(signo: i32, pid: i32) -> Self {
        Self {
            signo,
            code: SI_USER,
            pid,
            uid: 0,
            status: 0,
            addr: 0,
        }
    }

    pub fn fault(signo: i32, code: i32, addr: u64) -> Self {
        Self {
            signo,
            code,
            pid: 0,
            uid: 0,
            status: 0,
            addr,
        }
    }

    /// The 128-byte `siginfo_t`.
    pub fn encode(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0..4].copy_from_slice(&self.signo.to_le_bytes());
        b[8..12].copy_from_slice(&self.code.to_le_bytes());
        match self.signo {
            SIGSEGV | SIGBUS | SIGILL | SIGFPE | SIGTRAP if self.code > 0 => {
                b[16..24].copy_from_slice(&self.addr.to_le_bytes());
            }
            // A POSIX timer's: si_tid (the timer id), si_overrun, si_value.
            _ if self.code == crate::syscalls::timer::SI_TIMER => {
                b[16..20].copy_from_slice(&self.pid.to_le_bytes());
                b[20..24].copy_from_slice(&self.status.to_le_bytes());
                b[24..32].copy_from_slice(&self.addr.to_le_bytes());
            }
            _ => {
                b[16..20].copy_from_slice(&self.pid.to_le_bytes());
                b[20..24].copy_from_slice(&self.uid.to_le_bytes());
                b[24..28].copy_from_slice(&self.status.to_le_bytes());
            }
        }
        b
    }
}

/// Size of the kernel's `struct ucontext` on x86-64.
const UCONTEXT: u64 = 304;
/// `pretcode` + ucontext + siginfo.
const FRAME: u64 = 8 + UCONTEXT + 128;
/// The legacy FXSAVE image kept with the frame.
const FPSTATE: u64 = 512;

const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;

/// What delivering one signal needs from the thread.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub regs: &'a mut kvm_regs,
    pub fxsave: &'a [u8],
    pub mask: SigSet,
    pub altstack: (u64, u64, i32),
    pub trapno: u64,
    pub err: u64,
    pub cr2: u64,
}

fn sigcontext(d: &Delivery<'_>, fpstate: u64, mask: SigSet) -> Vec<u8> {
    let r = &*d.regs;
    let words: [u64; 18] = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.rflags,
    ];
    let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    // cs, gs, fs, ss
    let segs: [u16; 4] = [crate::arch::USER_CS, 0, 0, crate::arch::USER_DS];
    for s in segs {
        v.extend_from_slice(&s.to_le_bytes());
    }
    for w in [d.err, d.trapno, mask, d.cr2, fpstate] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.resize(256, 0);
    v
}

/// Pushes a signal frame for `info` handled by `act` and points the
/// registers at the handler. Fails with the fault when the stack is not
/// writable (the caller then kills the process with SIGSEGV, as Linux).
pub fn push_frame(
    mm: &mut AddressSpace,
    frames: &mut Frames,
    d: &mut Delivery<'_>,
    info: &SigInfo,
    act: &SigAction,
) -> Result<(), Fault> {
    let (ss_sp, ss_size, ss_flags) = d.altstack;
    let rsp = d.regs.rsp;
    let on_alt = ss_size > 0 && rsp > ss_sp && rsp <= ss_sp.wrapping_add(ss_size);
    let mut sp =
        if act.flags & SA_ONSTACK != 0 && ss_flags & SS_DISABLE == 0 && ss_size > 0 && !on_alt {
            // Guest values: a wrapped top is unmapped and faults below.
            ss_sp.wrapping_add(ss_size)
        } else {
            rsp.wrapping_sub(128)
        };
    sp = (sp.wrapping_sub(FPSTATE)) & !63;
    let fpstate = sp;
    mm.write(frames, fpstate, &d.fxsave[..FPSTATE as usize])?;
    let frame = ((sp.wrapping_sub(FRAME)) & !15).wrapping_sub(8);
    let mut buf = Vec::with_capacity(FRAME as usize);
    buf.extend_from_slice(&act.restorer.to_le_bytes());
    // ucontext: flags, link, stack, mcontext, sigmask.
    buf.extend_from_slice(&(UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS).to_le_bytes());
    buf.extend_from_slice(&0u64.to_le_bytes());
    buf.extend_from_slice(&ss_sp.to_le_bytes());
    buf.extend_from_slice(&(if on_alt { SS_ONSTACK } else { ss_flags }).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&ss_size.to_le_bytes());
    buf.extend_from_slice(&sigcontext(d, fpstate, d.mask));
    buf.extend_from_slice(&d.mask.to_le_bytes());
    buf.extend_from_slice(&info.encode());
    debug_assert_eq!(buf.len() as u64, FRAME);
    mm.write(frames, frame, &buf)?;
    let r = &mut *d.regs;
    r.rsp = frame;
    r.rip = act.handler;
    r.rdi = info.signo as u64;
    r.rsi = frame + 8 + UCONTEXT;
    r.rdx = frame + 8;
    r.rax = 0;
    // Direction flag and trap flag cleared, as Linux does.
    r.rflags &= !(0x400 | 0x100);
    Ok(())
}

/// What `rt_sigreturn` restores: the registers and mask saved in the
/// frame at `rsp`, and the FXSAVE image if the frame points at one.
#[derive(Debug)]
pub struct Restored {
    pub mask: SigSet,
    pub fxsave: Option<Vec<u8>>,
}

pub fn sigreturn(
    mm: &mut AddressSpace,
    frames: &mut Frames,
    regs: &mut kvm_regs,
) -> Result<Restored, Fault> {
    // The guest's rsp: a frame that wraps is unmapped and faults.
    let uc = regs.rsp;
    let mut sc = [0u8; 256];
    mm.read(frames, uc.wrapping_add(40), &mut sc)?;
    let w = |i: usize| u64::from_le_bytes(sc[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let mut mask = [0u8; 8];
    mm.read(frames, uc.wrapping_add(40 + 256), &mut mask)?;
    regs.r8 = w(0);
    regs.r9 = w(1);
    regs.r10 = w(2);
    regs.r11 = w(3);
    regs.r12 = w(4);
    regs.r13 = w(5);
    regs.r14 = w(6);
    regs.r15 = w(7);
    regs.rdi = w(8);
    regs.rsi = w(9);
    regs.rbp = w(10);
    regs.rbx = w(11);
    regs.rdx = w(12);
    regs.rax = w(13);
    regs.rcx = w(14);
    regs.rsp = w(15);
    regs.rip = w(16);
    // Only the flags a program may change (as Linux's FIX_EFLAGS).
    const USER_FLAGS: u64 =
        0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x4_0000 | 0x20_0000;
    regs.rflags = (regs.rflags & !USER_FLAGS) | (w(17) & USER_FLAGS) | 0x2;
    let fpstate = w(23);
    let fxsave = if fpstate != 0 {
        let mut b = vec![0u8; FPSTATE as usize];
        mm.read(frames, fpstate, &mut b)?;
        Some(b)
    } else {
        None
    };
    Ok(Restored {
        mask: u64::from_le_bytes(mask) & !UNBLOCKABLE,
        fxsave,
    })
}
