//! The life of one function in the guest: compile, check imports,
//! instantiate, report ready, wait for the invocation, run `_start`, report
//! how it ended.

use crate::channel::Channel;
use crate::clock::Random;
use crate::heap::HEAP;
use crate::wasi::{self, Ctx};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use flint_abi::frame::{Kind, PayloadReader};
use flint_abi::{FailureKind, Milestone};
use wasmi::{Engine, ExternType, Linker, Module, ResourceLimiter, Store};
use wasmi_core::LimiterError;

/// Heap kept back from linear-memory growth for the interpreter itself.
const HEAP_RESERVE: usize = 1 << 20;

/// Lets linear memory grow only while the guest heap can hold it, and
/// remembers refusing, so that the trap that usually follows is reported as
/// running out of memory.
#[derive(Debug, Default)]
pub struct Limiter {
    pub denied: bool,
    /// The linear-memory size (bytes) last refused.
    pub refused_size: Option<usize>,
    /// The size of the growth under way, for `memory_grow_failed`.
    growing_to: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        self.growing_to = desired;
        let extra = desired.saturating_sub(current);
        if extra.saturating_add(HEAP_RESERVE) > HEAP.free_bytes() {
            self.denied = true;
            self.refused_size = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn memory_grow_failed(
        &mut self,
        _error: &wasmi::errors::MemoryError,
    ) -> Result<(), LimiterError> {
        self.denied = true;
        self.refused_size = Some(self.growing_to);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        Ok(maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        100
    }
    fn memories(&self) -> usize {
        1
    }
}

/// How a run ended, as reported to the host.
pub enum Outcome {
    Exit(i32),
    Failure(FailureKind, String),
}

fn describe_kind(ty: &ExternType) -> &'static str {
    match ty {
        ExternType::Func(_) => "function",
        ExternType::Memory(_) => "memory",
        ExternType::Table(_) => "table",
        ExternType::Global(_) => "global",
    }
}

/// Classifies an error from instantiation or a call.
fn classify(err: &wasmi::Error, limiter: &Limiter) -> Outcome {
    if let Some(code) = err.i32_exit_status() {
        return Outcome::Exit(code);
    }
    if let Some(size) = limiter.refused_size {
        let msg = format!(
            "it asked to grow its linear memory to {} MiB",
            size.div_ceil(1 << 20)
        );
        return Outcome::Failure(FailureKind::OutOfMemory, msg);
    }
    if limiter.denied || HEAP.exhausted() {
        return Outcome::Failure(
            FailureKind::OutOfMemory,
            format!("the guest heap is exhausted ({err})"),
        );
    }
    match err.as_trap_code() {
        Some(trap) => Outcome::Failure(FailureKind::Trap, String::from(trap.trap_message())),
        None => Outcome::Failure(FailureKind::Trap, format!("{err}")),
    }
}

/// The invocation's argv and environment, as byte strings.
type ArgsAndEnv = (Vec<Vec<u8>>, Vec<Vec<u8>>);

fn parse_start(payload: &[u8]) -> Option<ArgsAndEnv> {
    let mut r = PayloadReader::new(payload);
    let mut lists = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        let n = r.list_len().ok()?;
        for _ in 0..n {
            list.push(r.bytes().ok()?.to_vec());
        }
    }
    r.finish().ok()?;
    let [args, env] = lists;
    Some((args, env))
}

/// Compiles, instantiates and runs `module_bytes` as a WASI command,
/// pausing at the ready point for the host's `Start`; with `eager`, every
/// function is translated to wasmi's bytecode before the ready point
/// (`BootInfo::flags`), else each on its first call.
pub fn run(chan: Channel, module_bytes: &[u8], eager: bool) -> (Channel, Outcome) {
    let mut chan = chan;
    let mut config = wasmi::Config::default();
    config.compilation_mode(if eager {
        wasmi::CompilationMode::Eager
    } else {
        wasmi::CompilationMode::LazyTranslation
    });
    let engine = Engine::new(&config);
    let module = match Module::new(&engine, module_bytes) {
        Ok(m) => m,
        Err(e) => {
            let kind = if HEAP.exhausted() {
                FailureKind::OutOfMemory
            } else {
                FailureKind::InvalidModule
            };
            return (chan, Outcome::Failure(kind, format!("{e}")));
        }
    };
    for import in module.imports() {
        let provided = import.module() == wasi::MODULE
            && matches!(import.ty(), ExternType::Func(_))
            && wasi::provides(import.name());
        if !provided {
            let msg = format!(
                "{}::{} ({})",
                import.module(),
                import.name(),
                describe_kind(import.ty())
            );
            return (chan, Outcome::Failure(FailureKind::MissingImport, msg));
        }
    }
    chan.send_u32(Kind::Milestone, Milestone::Compiled as u32);

    let mut linker = Linker::new(&engine);
    if let Err(e) = wasi::add_to_linker(&mut linker) {
        return (
            chan,
            Outcome::Failure(FailureKind::Internal, format!("defining WASI: {e}")),
        );
    }
    let ctx = Ctx {
        chan,
        args: Vec::new(),
        env: Vec::new(),
        limiter: Limiter::default(),
        random: Random::new(),
        stdin_eof: false,
    };
    let mut store = Store::new(&engine, ctx);
    store.limiter(|c| &mut c.limiter);
    macro_rules! finish {
        ($outcome:expr) => {{
            let outcome = $outcome;
            return (store.into_data().chan, outcome);
        }};
    }
    let instance = match linker.instantiate_and_start(&mut store, &module) {
        Ok(i) => i,
        Err(e) => {
            // A function import with the wrong signature lands here.
            if matches!(
                e.kind(),
                wasmi::errors::ErrorKind::Linker(_) | wasmi::errors::ErrorKind::Instantiation(_)
            ) && !(store.data().limiter.denied || HEAP.exhausted())
            {
                finish!(Outcome::Failure(FailureKind::MissingImport, format!("{e}")));
            }
            let outcome = classify(&e, &store.data().limiter);
            finish!(outcome);
        }
    };
    if let Ok(init) = instance.get_typed_func::<(), ()>(&store, "_initialize") {
        if let Err(e) = init.call(&mut store, ()) {
            let outcome = classify(&e, &store.data().limiter);
            finish!(outcome);
        }
    }
    let Ok(start) = instance.get_typed_func::<(), ()>(&store, "_start") else {
        finish!(Outcome::Failure(
            FailureKind::NotACommand,
            String::from("the module exports no `_start` function of type () -> (); it is not a WASI command")
        ));
    };

    // The snapshot point: everything above is the same for every invocation.
    store
        .data_mut()
        .chan
        .send_u32(Kind::Milestone, Milestone::Ready as u32);
    let payload = loop {
        match store.data_mut().chan.recv() {
            (Kind::Start, p) => break p,
            _ => continue,
        }
    };
    let Some((args, env)) = parse_start(&payload) else {
        panic!("malformed Start frame from the host");
    };
    store.data_mut().args = args;
    store.data_mut().env = env;

    match start.call(&mut store, ()) {
        Ok(()) => finish!(Outcome::Exit(0)),
        Err(e) => {
            let outcome = classify(&e, &store.data().limiter);
            finish!(outcome);
        }
    }
}
