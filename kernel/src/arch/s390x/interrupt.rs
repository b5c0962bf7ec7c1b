//! Interruption handling in Rust. The entry stubs (boot/src/entry.rs) save
//! r0-r15, the old PSW and the lowcore interruption fields into an
//! `InterruptFrame` on the stack and call `zdat_interrupt`; whatever this
//! leaves in the frame is what the CPU resumes with.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::extable;
use crate::arch::lowcore::{self, IntClass};
use crate::arch::pgm::{self, ProgramCheck};
use crate::arch::psw::{mask, Psw};

/// What the entry stub saves. The copy of lowcore 0x80..0x100 keeps the
/// interruption codes safe from a nested program check.
#[repr(C)]
pub struct InterruptFrame {
    pub gprs: [u64; 16],
    pub psw: Psw,
    pub lc: [u8; LC_COPY_LEN],
}

/// First lowcore byte the stub copies, and how many.
pub const LC_COPY_START: usize = 0x80;
pub const LC_COPY_LEN: usize = 0x80;
/// Offsets the entry stub uses (it is assembly, so they are spelled out).
pub const FRAME_GPRS: usize = 0;
pub const FRAME_PSW: usize = 128;
pub const FRAME_LC: usize = 144;
pub const FRAME_SIZE: usize = 272;

const _: () = assert!(core::mem::offset_of!(InterruptFrame, gprs) == FRAME_GPRS);
const _: () = assert!(core::mem::offset_of!(InterruptFrame, psw) == FRAME_PSW);
const _: () = assert!(core::mem::offset_of!(InterruptFrame, lc) == FRAME_LC);
const _: () = assert!(core::mem::size_of::<InterruptFrame>() == FRAME_SIZE);

impl InterruptFrame {
    fn lc_u16(&self, off: usize) -> u16 {
        let i = off - LC_COPY_START;
        u16::from_be_bytes([self.lc[i], self.lc[i + 1]])
    }

    fn lc_u32(&self, off: usize) -> u32 {
        let i = off - LC_COPY_START;
        u32::from_be_bytes(self.lc[i..i + 4].try_into().unwrap())
    }

    fn lc_u64(&self, off: usize) -> u64 {
        let i = off - LC_COPY_START;
        u64::from_be_bytes(self.lc[i..i + 8].try_into().unwrap())
    }

    pub fn pgm_code(&self) -> u16 {
        self.lc_u16(lowcore::PGM_CODE)
    }

    pub fn pgm_ilc(&self) -> u8 {
        pgm::ilc_bytes(self.lc_u16(lowcore::PGM_ILC))
    }

    /// The TEID, or 0 when this code does not store one (0xa8 is stale then).
    pub fn teid(&self) -> u64 {
        if pgm::stores_teid(self.pgm_code()) {
            self.lc_u64(lowcore::TRANS_EXC_CODE)
        } else {
            0
        }
    }

    pub fn program_check(&self) -> ProgramCheck {
        ProgramCheck {
            code: self.pgm_code(),
            ilc: self.pgm_ilc(),
            teid: self.teid(),
        }
    }

    pub fn ext_code(&self) -> u16 {
        self.lc_u16(lowcore::EXT_INT_CODE)
    }

    pub fn ext_params(&self) -> u32 {
        self.lc_u32(lowcore::EXT_PARAMS)
    }

    pub fn svc_code(&self) -> u16 {
        self.lc_u16(lowcore::SVC_CODE)
    }

    pub fn mcck_code(&self) -> u64 {
        self.lc_u64(lowcore::MCCK_CODE)
    }
}

/// External interruption codes.
pub mod ext {
    pub const CLOCK_COMPARATOR: u16 = 0x1004;
    pub const CPU_TIMER: u16 = 0x1005;
    pub const SERVICE_SIGNAL: u16 = 0x2401;
    pub const EMERGENCY_SIGNAL: u16 = 0x1201;
    pub const EXTERNAL_CALL: u16 = 0x1202;
}

pub type ExtHandler = fn(&mut InterruptFrame);

const MAX_EXT_HANDLERS: usize = 8;

// Only touched with interruptions disabled (handlers run disabled, and
// registration happens in disabled code), so the lock is never contended by
// an interruption on the same CPU. SMP: a CPU registering while another takes
// an interruption just spins briefly.
static EXT_HANDLERS: Mutex<[Option<(u16, ExtHandler)>; MAX_EXT_HANDLERS]> =
    Mutex::new([None; MAX_EXT_HANDLERS]);

static COUNTS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Error of `register_ext_handler`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// A handler for this code exists already.
    Busy,
    /// All slots are taken.
    Full,
}

/// Route external interruptions with `code` to `handler`.
pub fn register_ext_handler(code: u16, handler: ExtHandler) -> Result<(), RegisterError> {
    let mut table = EXT_HANDLERS.lock();
    if table.iter().flatten().any(|(c, _)| *c == code) {
        return Err(RegisterError::Busy);
    }
    let slot = table
        .iter_mut()
        .find(|s| s.is_none())
        .ok_or(RegisterError::Full)?;
    *slot = Some((code, handler));
    Ok(())
}

pub fn unregister_ext_handler(code: u16) {
    let mut table = EXT_HANDLERS.lock();
    for slot in table.iter_mut() {
        if matches!(slot, Some((c, _)) if *c == code) {
            *slot = None;
        }
    }
}

/// How many interruptions of `class` this CPU has taken.
pub fn count(class: IntClass) -> u64 {
    COUNTS[class as usize].load(Ordering::Relaxed)
}

/// An interruption that ended an enabled wait (`insn::enabled_wait`) resumes
/// after the wait instead of waiting again, with interruptions off.
fn finish_wait(frame: &mut InterruptFrame) {
    if frame.psw.is_wait() {
        frame.psw.mask &= !(mask::WAIT | mask::EXT | mask::IO | mask::MCHECK);
    }
}

/// Called by the entry stubs. `frame` is on the kernel stack.
///
/// # Safety
/// Only the entry stubs call this, with a frame they built.
#[no_mangle]
pub unsafe extern "C" fn zdat_interrupt(frame: *mut InterruptFrame, class: u64) {
    // SAFETY: the stub passes a pointer to the frame it just filled, which
    // nobody else references until this returns.
    let frame = unsafe { &mut *frame };
    let Some(class) = IntClass::from_raw(class) else {
        crate::panic::fatal_interrupt(frame, IntClass::Restart, "bad class from entry stub");
    };
    COUNTS[class as usize].fetch_add(1, Ordering::Relaxed);
    if super::guest::guest_exit(frame, class) {
        return;
    }
    match class {
        IntClass::Program => program_check(frame),
        IntClass::External => external(frame),
        _ => crate::panic::fatal_interrupt(frame, class, "unexpected interruption"),
    }
}

fn program_check(frame: &mut InterruptFrame) {
    let pc = frame.program_check();
    if let Some(fixup) = extable::search(frame.psw.addr) {
        let (r0, r1) = extable::encode(&pc);
        frame.gprs[0] = r0;
        frame.gprs[1] = r1;
        frame.psw.addr = fixup;
        // A probe may have entered problem state on purpose; its fixup
        // always runs in the supervisor state it started from.
        frame.psw.mask &= !mask::PROBLEM;
        return;
    }
    crate::panic::fatal_interrupt(frame, IntClass::Program, "unexpected program check");
}

fn external(frame: &mut InterruptFrame) {
    let code = frame.ext_code();
    let handler = EXT_HANDLERS
        .lock()
        .iter()
        .flatten()
        .find(|(c, _)| *c == code)
        .map(|(_, h)| *h);
    match handler {
        Some(h) => h(frame),
        None => crate::panic::fatal_interrupt(
            frame,
            IntClass::External,
            "unhandled external interruption",
        ),
    }
    finish_wait(frame);
}
