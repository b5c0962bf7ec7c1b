//! s390x primitives: every `asm!` of the kernel lives below this module.

pub mod cr;
pub mod dat;
pub mod extable;
pub mod facility;
pub mod guest;
pub mod insn;
pub mod interrupt;
pub mod mem;
pub mod probe;
pub mod sigp;
pub mod tod;

#[cfg(target_os = "none")]
mod ktests;
