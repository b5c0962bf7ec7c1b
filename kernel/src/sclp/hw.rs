//! SERVC and the service-signal wait.

use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;

use super::info::{self, SclpInfo};
use super::{cmd, response, SclpError, SCCB_SIZE};
use crate::arch::psw::mask;
use crate::arch::s390x::cr::{self, cr0};
use crate::arch::s390x::insn;
use crate::arch::s390x::interrupt::{self, ext, InterruptFrame};

/// The SCCB: 8-byte aligned (page aligned here), below 2 GiB and outside the
/// first 8 KiB, as SERVC requires. It lives in the image's .bss.
#[repr(C, align(4096))]
pub struct Sccb(pub [u8; SCCB_SIZE]);

static SCCB: Mutex<Sccb> = Mutex::new(Sccb([0; SCCB_SIZE]));
static PENDING: AtomicBool = AtomicBool::new(false);

/// Service signals taken since boot (the sclp suite counts its own).
static SIGNALS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

pub fn service_signals() -> u64 {
    SIGNALS.load(Ordering::Relaxed)
}

fn service_signal(_frame: &mut InterruptFrame) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
    PENDING.store(false, Ordering::Release);
}

/// Register the service-signal handler. The subclass is opened in CR0 only
/// by the CPU waiting for a command (the SCCB lock holder): the service
/// signal is a floating interruption, and any other CPU in an enabled wait
/// would otherwise take it and leave the waiter asleep.
pub fn init() {
    let _ = interrupt::register_ext_handler(ext::SERVICE_SIGNAL, service_signal);
}

/// Run one SCLP command on `sccb` (already filled in, header length set)
/// and wait for its completion. Returns the response code.
pub fn service_call(command: u32, sccb: &mut Sccb) -> Result<u16, SclpError> {
    let addr = sccb.0.as_ptr() as u64;
    PENDING.store(true, Ordering::Release);
    // SAFETY: `sccb` is a valid SCCB below 2 GiB that the caller holds
    // exclusively (it is behind the SCCB lock) until the wait below ends.
    let cc = unsafe { insn::servc(command, addr) };
    if cc != 0 {
        PENDING.store(false, Ordering::Release);
        return Err(SclpError::NotOperational(cc));
    }
    // SAFETY: the handler is registered (init); the subclass is closed again
    // below, so only this waiting CPU takes the signal.
    unsafe { cr::cr0_set(cr0::SERVICE_SIGNAL) };
    while PENDING.load(Ordering::Acquire) {
        insn::enabled_wait(mask::EXT);
    }
    // SAFETY: closing a subclass is always safe.
    unsafe { cr::cr0_clear(cr0::SERVICE_SIGNAL) };
    Ok(u16::from_be_bytes([sccb.0[6], sccb.0[7]]))
}

fn header(sccb: &mut Sccb, len: u16) {
    sccb.0.fill(0);
    sccb.0[0..2].copy_from_slice(&len.to_be_bytes());
}

/// Read SCP Info (forced first, as Linux does, then the plain form).
pub fn read_info() -> Result<SclpInfo, SclpError> {
    let mut sccb = SCCB.lock();
    let mut last = response::INVALID_COMMAND;
    for command in [cmd::READ_SCP_INFO_FORCED, cmd::READ_SCP_INFO] {
        header(&mut sccb, SCCB_SIZE as u16);
        last = service_call(command, &mut sccb)?;
        if last == response::NORMAL_COMPLETION {
            return Ok(info::parse(&sccb.0));
        }
    }
    Err(SclpError::Response(last))
}

/// Run `f` with the SCCB held.
pub(super) fn with_sccb<R>(f: impl FnOnce(&mut Sccb) -> R) -> R {
    f(&mut SCCB.lock())
}

/// Break the SCCB lock: only for the crash path, which may have interrupted
/// a console write and must still print its dump.
///
/// # Safety
/// No other code may use the SCCB afterwards except the crash path, which
/// never returns.
pub(super) unsafe fn force_unlock() {
    // SAFETY: forwarded to the caller.
    unsafe { SCCB.force_unlock() };
    PENDING.store(false, Ordering::Release);
}
