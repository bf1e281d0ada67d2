//! The seam to the hypervisor: every KVM ioctl Flint issues lives below
//! this module, so the rest of the executor never sees KVM types.

pub mod pagemap;
pub mod vcpu;
pub mod vm;
