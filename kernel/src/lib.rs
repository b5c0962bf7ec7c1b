//! zdat: a teaching-and-research kernel for s390x memory management.
//!
//! This crate is everything but the entry code: it builds for
//! `s390x-unknown-none-softfloat` (linked by the `boot` crate) and for the
//! host, where `cargo test` runs the unit tests of its pure parts.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
#[cfg(target_arch = "s390x")]
pub mod bench;
pub mod bug;
pub mod cmdline;
pub mod console;
pub mod dat;
pub mod fmtbuf;
pub mod gmap;
pub mod ktest;
pub mod log;
pub mod machine;
pub mod mm;
pub mod panic;
pub mod sclp;
#[cfg(target_arch = "s390x")]
pub mod smp;
pub mod sync;

#[cfg(target_arch = "s390x")]
mod init;
#[cfg(target_arch = "s390x")]
pub use init::start_kernel;

#[cfg(target_os = "none")]
mod example_tests;
#[cfg(target_os = "none")]
mod fault_tests;
#[cfg(all(test, not(target_arch = "s390x")))]
mod ktest_tests;
#[cfg(target_os = "none")]
mod qemu_deviations;
#[cfg(target_os = "none")]
mod smp_tests;
#[cfg(target_os = "none")]
mod tlb_tests;
