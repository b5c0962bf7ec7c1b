//! Entering and leaving a guest without SIE (absent under TCG): the guest
//! runs in problem state, primary-space mode, with its gmap's ASCE in CR1.
//! Any interruption from it comes to the kernel's handlers (home-space mode,
//! kernel stack); `guest_exit` turns it into a return from `run_guest`, like
//! a SIE exit.

use core::arch::global_asm;

use crate::arch::lowcore;
use crate::arch::lowcore::IntClass;
use crate::arch::pgm::ProgramCheck;
use crate::arch::psw::Psw;

use super::insn;
use super::interrupt::InterruptFrame;

/// Why the guest stopped running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// SUPERVISOR CALL with this code.
    Svc(u16),
    Program(ProgramCheck),
    External(u16),
    Other(IntClass),
}

/// What `run_guest` loads and what the exit stores back. Offsets are used by
/// the assembly below.
#[repr(C)]
pub struct GuestCtx {
    pub gprs: [u64; 16],
    pub psw: Psw,
    ksave: [u64; 10],
    kmask: u64,
    pub asce: u64,
    exit: Option<Exit>,
}

const CTX_GPRS: usize = 0;
const CTX_PSW: usize = 128;
const CTX_KSAVE: usize = 144;
const CTX_KMASK: usize = 224;
const CTX_ASCE: usize = 232;
const _: () = assert!(core::mem::offset_of!(GuestCtx, gprs) == CTX_GPRS);
const _: () = assert!(core::mem::offset_of!(GuestCtx, psw) == CTX_PSW);
const _: () = assert!(core::mem::offset_of!(GuestCtx, ksave) == CTX_KSAVE);
const _: () = assert!(core::mem::offset_of!(GuestCtx, kmask) == CTX_KMASK);
const _: () = assert!(core::mem::offset_of!(GuestCtx, asce) == CTX_ASCE);

impl GuestCtx {
    pub fn new(psw: Psw, asce: u64) -> Self {
        GuestCtx {
            gprs: [0; 16],
            psw,
            ksave: [0; 10],
            kmask: 0,
            asce,
            exit: None,
        }
    }
}

global_asm!(
    ".section .text.guest,\"ax\"",
    ".globl zdat_run_guest",
    "zdat_run_guest:",
    // Kernel state the exit comes back with: r6-r15 and the PSW mask.
    "    stmg %r6,%r15,{ksave}(%r2)",
    "    epsw %r0,%r1",
    "    sllg %r0,%r0,32",
    "    llgfr %r1,%r1",
    "    ogr %r0,%r1",
    "    stg %r0,{kmask}(%r2)",
    "    stg %r2,{slot}",
    // The guest's address space; instructions keep coming from the home
    // space (CR13) until the PSW switches to primary mode.
    "    lctlg 1,1,{asce}(%r2)",
    // The secondary space too: a problem-state guest may SACF into
    // secondary-space (or access-register) mode, and CR7 holds the
    // kernel's identity map otherwise. run_guest puts it back.
    "    lctlg 7,7,{asce}(%r2)",
    "    mvc {scratch}(16,%r0),{psw}(%r2)",
    "    lmg %r0,%r15,{gprs}(%r2)",
    "    lpswe {scratch}",
    ".globl zdat_guest_exit",
    "zdat_guest_exit:",
    "    br %r14",
    ksave = const CTX_KSAVE,
    kmask = const CTX_KMASK,
    asce = const CTX_ASCE,
    psw = const CTX_PSW,
    gprs = const CTX_GPRS,
    slot = const lowcore::GUEST_CTX,
    scratch = const lowcore::SCRATCH_PSW,
);

extern "C" {
    fn zdat_run_guest(ctx: *mut u8);
    fn zdat_guest_exit();
}

/// Run the guest until its next interruption.
///
/// The guest runs with CR1 and CR7 (primary and secondary space) both
/// `ctx.asce`, so secondary-space mode, and access-register mode with
/// ALET 0 or 1, reach only the guest's tables; home space (CR13) is not
/// available to a problem-state SACF. CR7 is restored on the way back.
/// Not covered: access-register mode with other ALETs, which would look
/// them up through CR2 and CR5 (never loaded: 0); QEMU TCG refuses SACF
/// to access-register mode with a specification exception, so this holds
/// there, not on hardware.
///
/// # Safety
/// `ctx.asce` must designate live tables for the whole run (the gmap and
/// its host stay alive), this CPU must be attached to the gmap's contexts
/// (`dat::context::AsceRef::attach`) from before the call to after it
/// returns, so that invalidations reach the TLB entries the guest makes,
/// and the guest PSW must be a problem-state PSW
/// with DAT on, not in home-space mode: whatever the guest does then ends
/// in an interruption handled as an exit.
pub unsafe fn run_guest(ctx: &mut GuestCtx) -> Exit {
    ctx.exit = None;
    let cr7 = super::cr::stctg::<7>();
    // SAFETY: forwarded to the caller; zdat_run_guest returns through
    // zdat_guest_exit with r6-r15 restored, like a normal call.
    unsafe { zdat_run_guest(ctx as *mut GuestCtx as *mut u8) };
    // SAFETY: the secondary space the kernel had before the run.
    unsafe { super::cr::lctlg::<7>(cr7) };
    ctx.exit.unwrap_or(Exit::Other(IntClass::Restart))
}

/// Called first by the interruption handler: if the interruption came from
/// a guest, save its state into the guest context and resume the kernel at
/// the return from `run_guest`. Returns whether it was a guest exit.
pub fn guest_exit(frame: &mut InterruptFrame, class: IntClass) -> bool {
    if !frame.psw.is_problem_state() {
        return false;
    }
    let ctx = insn::lowcore_read_u64(lowcore::GUEST_CTX);
    if ctx == 0 {
        return false;
    }
    // SAFETY: the slot holds the context of the guest run in progress on
    // this CPU (set by zdat_run_guest, cleared here), which lives on the
    // kernel stack of its caller until run_guest returns.
    let ctx = unsafe { &mut *(ctx as *mut GuestCtx) };
    // SAFETY: clearing our own software slot.
    unsafe { insn::lowcore_write_u64(lowcore::GUEST_CTX, 0) };
    ctx.gprs = frame.gprs;
    ctx.psw = frame.psw;
    ctx.exit = Some(match class {
        IntClass::Svc => Exit::Svc(frame.svc_code()),
        IntClass::Program => Exit::Program(frame.program_check()),
        IntClass::External => Exit::External(frame.ext_code()),
        c => Exit::Other(c),
    });
    // Back to the kernel's address space and registers.
    let asce = super::cr::kernel_asce();
    if asce != 0 {
        // SAFETY: the kernel's ASCE maps everything the kernel uses.
        unsafe { super::cr::lctlg::<1>(asce) };
    }
    frame.gprs[6..16].copy_from_slice(&ctx.ksave);
    frame.psw = Psw::new(ctx.kmask, zdat_guest_exit as *const () as usize as u64);
    true
}
