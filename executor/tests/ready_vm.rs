//! Save a VM at its ready point and restore it into a new VM: the
//! executor's half of snapshots (files are the snapshotter's business).

use flint_executor::{BufferIo, Invocation, ReadyVm, VmConfig};
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
        let restored = ReadyVm::restore(&state, copy_memory_from(&mem)).unwrap();
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
