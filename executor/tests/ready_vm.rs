//! Save a VM at its ready point and restore it into a new VM: the
//! executor's half of snapshots (files are the snapshotter's business).

use flint_executor::{BufferIo, Invocation, Persist, ReadyVm, VmConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn copy_memory(vm: &ReadyVm) -> GuestMemoryMmap {
    let size = (vm.memory_mib() << 20) as usize;
    let mut buf = vec![0u8; size];
    vm.memory().read_slice(&mut buf, GuestAddress(0)).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
    mem.write_slice(&buf, GuestAddress(0)).unwrap();
    mem
}

#[test]
fn a_restored_vm_runs_the_invocation() {
    let module = flint_examples::bytes("hello");
    let mut boot_io = BufferIo::default();
    let mut vm = ReadyVm::boot(&VmConfig::default(), &module, &mut boot_io).unwrap();
    let state = vm.save().unwrap();
    let mem = copy_memory(&vm);
    drop(vm);
    for name in ["ada", "grace"] {
        let restored = ReadyVm::restore(copy_memory_from(&mem), &state).unwrap();
        let mut io = BufferIo::default();
        let inv = Invocation {
            args: vec!["hello".into(), name.into()],
            env: vec![],
        };
        let report = restored.invoke(&inv, &mut io, None).unwrap();
        assert_eq!(report.exit_code, 0);
        assert_eq!(
            String::from_utf8_lossy(&io.stdout),
            format!("hello, {name}\n")
        );
    }
}

fn copy_memory_from(mem: &GuestMemoryMmap) -> GuestMemoryMmap {
    let size = vm_memory::GuestMemoryBackend::iter(mem)
        .map(vm_memory::GuestMemoryRegion::len)
        .sum::<u64>() as usize;
    let mut buf = vec![0u8; size];
    mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
    let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
    m.write_slice(&buf, GuestAddress(0)).unwrap();
    m
}

/// A VM's saved state (vCPU registers, special registers, XSAVE, XCRs,
/// MSRs, the data channel and the UART) comes back from a restore as it
/// was saved: saving the restored VM gives the same state again.
#[test]
fn the_state_round_trips_through_a_restore() {
    let module = flint_examples::bytes("hello");
    let mut vm = ReadyVm::boot(&VmConfig::default(), &module, &mut BufferIo::default()).unwrap();
    let saved = vm.save().unwrap();
    let mem = copy_memory(&vm);
    drop(vm);
    let mut back = ReadyVm::restore(copy_memory_from(&mem), &saved).unwrap();
    let again = back.save().unwrap();
    let (a, b) = (&saved.vcpu, &again.vcpu);
    assert_eq!(a.regs.rip, b.regs.rip);
    assert_eq!(a.regs.rsp, b.regs.rsp);
    assert_eq!(a.regs.rax, b.regs.rax);
    // IOPL aside: restore sets it (the guest runs with IOPL 3), and a
    // nested PVM does not always report it.
    let iopl = |r: &kvm_bindings::kvm_regs| kvm_bindings::kvm_regs {
        rflags: r.rflags & !0x3000,
        ..*r
    };
    assert_eq!(
        format!("{:?}", iopl(&a.regs)),
        format!("{:?}", iopl(&b.regs))
    );
    assert_eq!(format!("{:?}", a.sregs), format!("{:?}", b.sregs));
    assert_eq!(a.xsave, b.xsave);
    assert_eq!(format!("{:?}", a.xcrs), format!("{:?}", b.xcrs));
    // The same MSRs, with the same values but the time stamp counter's,
    // which runs on.
    const TSC: u32 = 0x10;
    let msrs = |s: &flint_executor::VcpuState| -> Vec<(u32, u64)> {
        s.msrs
            .iter()
            .map(|m| (m.index, if m.index == TSC { 0 } else { m.data }))
            .collect()
    };
    assert!(!a.msrs.is_empty());
    assert_eq!(msrs(a), msrs(b));
    assert_eq!(saved.console, again.console);
    assert_eq!(saved.serial, again.serial);
    assert_eq!(saved.memory_mib, again.memory_mib);
    // A state the VM could not have saved is refused, naming the part.
    let mut bad = saved.clone();
    bad.vcpu.xsave.pop();
    let e = ReadyVm::restore(copy_memory_from(&mem), &bad).expect_err("refused");
    assert!(e.to_string().contains("vCPU state"), "{e}");
    let mut bad = saved;
    bad.console.transport.queues.pop();
    let e = ReadyVm::restore(copy_memory_from(&mem), &bad).expect_err("refused");
    assert!(e.to_string().contains("data channel"), "{e}");
}
