//! Architecture layer. Everything that executes an s390x instruction lives in
//! `s390x`; the rest of the kernel uses it through safe wrappers. Pure
//! definitions (PSW bits, interruption codes, lowcore offsets) build on the
//! host too, so their decoders are unit-tested there.

pub mod lowcore;
pub mod pgm;
pub mod psw;

#[cfg(target_arch = "s390x")]
pub mod s390x;
