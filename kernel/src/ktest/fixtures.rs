//! Fixtures the in-kernel suites share: frames with a recognisable
//! pattern, given back with the allocator's verdict checked, and warm-TLB
//! windows.

use super::{KResult, Outcome};
use crate::arch::pgm::{code, ProgramCheck, Teid, TeidAccess};
use crate::arch::s390x::facility;
use crate::dat::context::AsceRef;
use crate::dat::kernel::{warm_secondary, Cooled, Warm};
use crate::dat::tlb;
use crate::mm::{self, AllocFlags, Pages};
use crate::{kassert_eq, kfail};

/// A frame whose doublewords read `tag << 32 | offset`, so a load through
/// any mapping says which frame and offset it reached.
pub fn tagged_frame(tag: u64) -> Result<Pages, Outcome> {
    let mut p = mm::alloc_pages(0, AllocFlags::empty()).or_else(|e| kfail!("alloc: {e:?}"))?;
    for (i, w) in p.as_mut_slice().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&((tag << 32) | (i as u64 * 8)).to_be_bytes());
    }
    Ok(p)
}

/// Give a frame back; a refused free fails the case.
pub fn free_frame(p: Pages) -> KResult {
    match mm::free_pages(p) {
        Ok(()) => Ok(()),
        Err((_, e)) => kfail!("free_pages: {e:?}"),
    }
}

/// Run `f` in a warm window on `space` (`dat::kernel::warm_secondary`); a
/// window cooled by a control-register load fails the case, since its
/// accesses then prove nothing about invalidation.
///
/// # Safety
/// As `warm_secondary`: the tables `space`'s ASCE designates stay live for the
/// window, unless the case tests their teardown (the purge must then make
/// the access fault or see the tables that replaced them).
pub unsafe fn warm<R>(space: &AsceRef, f: impl FnOnce(&Warm) -> R) -> Result<R, Outcome> {
    // SAFETY: forwarded to the caller.
    match unsafe { warm_secondary(space, f) } {
        Ok(r) => Ok(r),
        Err(Cooled(n)) => {
            kfail!("{n} control-register load(s) inside the warm window: QEMU purged its TLB")
        }
    }
}

/// `warm`, for a case that judges IPTE: it also fails if an IDTE, CSPG,
/// clearing by ASCE or PTLB ran in the window, because QEMU purges its
/// whole TLB on each and would hide a missing IPTE.
///
/// # Safety
/// As `warm`.
pub unsafe fn warm_ipte<R>(space: &AsceRef, f: impl FnOnce(&Warm) -> R) -> Result<R, Outcome> {
    let (_, idtes, purges) = tlb::flush_counts();
    // SAFETY: forwarded to the caller.
    let r = unsafe { warm(space, f) }?;
    let (_, idtes2, purges2) = tlb::flush_counts();
    if (idtes2, purges2) != (idtes, purges) {
        return kfail!(
            "{} IDTE/CSPG and {} full purges inside an IPTE-judged window",
            idtes2 - idtes,
            purges2 - purges
        );
    }
    Ok(r)
}

/// The fault the architecture requires: `code`, and a TEID naming the page
/// of `va`, the access and the secondary space.
pub fn faulted(r: Result<u64, ProgramCheck>, want: u16, va: u64, access: TeidAccess) -> KResult {
    let Err(pc) = r else {
        return kfail!(
            "{va:#x}: expected {} ({want:#x}), but the access succeeded: {r:x?} (a stale TLB entry)",
            crate::arch::pgm::code_name(want)
        );
    };
    kassert_eq!(pc.code, want);
    let t = Teid(pc.teid);
    kassert_eq!(t.address(), va & !0xfff);
    kassert_eq!(t.space(), 2);
    if want != code::PROTECTION || facility::has_esop1() {
        kassert_eq!(t.access(), access);
    }
    Ok(())
}

/// A store result as a load-shaped one, for `faulted`.
pub fn st(r: Result<(), ProgramCheck>) -> Result<u64, ProgramCheck> {
    r.map(|()| 0)
}
