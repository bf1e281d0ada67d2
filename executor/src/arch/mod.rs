//! Architecture-specific set-up of the guest: page tables and the register
//! state that puts the vCPU straight into 64-bit mode at CPL 3.

pub mod x86_64;
