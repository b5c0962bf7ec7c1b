//! tlb_warm with local clearing: a space (or gmap) loaded on this CPU and
//! no other is invalidated with the local-clearing control (IPTE, IDTE),
//! which QEMU carries out on this vCPU only, and the next access on this
//! CPU, whose TLB holds the old entry, still faults. The counters say
//! which kind of invalidation ran; the masks say why.

use super::{faulted, space, st, VA};
use crate::arch::pgm::{code, TeidAccess};
use crate::dat::context::this_cpu_bit;
use crate::dat::entry::Prot;
use crate::dat::tlb::{self, FlushStats};
use crate::ktest::fixtures::{free_frame, tagged_frame, warm, warm_ipte};
use crate::ktest::KResult;
use crate::{kassert_eq, kskip};

fn need_local_clearing() -> KResult {
    if !tlb::local_clearing() {
        kskip!("no local TLB clearing (facility 51 absent, or dat.local_clearing=0)");
    }
    Ok(())
}

/// IPTE with local clearing: the space is loaded on this CPU only, so
/// `protect` clears this CPU's TLB alone, and the next store through the
/// warm entry faults (protection, the page's address, a store, secondary
/// space).
pub(super) fn protect_of_a_space_loaded_here_clears_locally() -> KResult {
    need_local_clearing()?;
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xc1)?;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    let sp = &s;
    let me = this_cpu_bit();
    // SAFETY: `s` lives across the window; the frame is the case's.
    let (st1, masks, prot, flushes, st2) = unsafe {
        warm_ipte(&s.asce_ref(), |w| {
            let st1 = w.store(VA + 8, 1);
            let masks = (sp.context().cpu_attach_mask(), sp.context().mm_cpumask());
            let f0 = tlb::flush_stats();
            let prot = sp.protect(VA, Prot::ReadOnly);
            let flushes = tlb::flush_stats().since(f0);
            (st1, masks, prot, flushes, w.store(VA + 8, 2))
        })
    }?;
    kassert_eq!(st1, Ok(()));
    // Attached here, and nowhere else.
    kassert_eq!(masks, (me, me));
    kassert_eq!(prot, Ok(()));
    kassert_eq!(
        flushes,
        FlushStats {
            ipte_local: 1,
            ..FlushStats::default()
        }
    );
    faulted(st(st2), code::PROTECTION, VA + 8, TeidAccess::Store)?;
    // Detached: no longer loaded, but its TLB may still hold entries.
    kassert_eq!(
        (s.context().cpu_attach_mask(), s.context().mm_cpumask()),
        (0, me)
    );
    drop(s);
    free_frame(f)
}

/// IPTE with local clearing, unmapping: the next load through the warm
/// entry takes a page-translation exception.
pub(super) fn unmap_of_a_space_loaded_here_clears_locally() -> KResult {
    need_local_clearing()?;
    let mut s = space(1 << 31, 1 << 31, false)?;
    let (a, b) = (tagged_frame(0xc2)?, tagged_frame(0xd2)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    // The neighbour keeps the page table: one IPTE, no IDTE.
    kassert_eq!(s.map(VA + 0x1000, b.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce_ref();
    let sp = &mut s;
    // SAFETY: the space and its page table live across the window.
    let (l1, un, flushes, l2) = unsafe {
        warm_ipte(&asce, |w| {
            let l1 = w.load(VA);
            let f0 = tlb::flush_stats();
            let un = sp.unmap(VA);
            let flushes = tlb::flush_stats().since(f0);
            (l1, un, flushes, w.load(VA))
        })
    }?;
    kassert_eq!(l1, Ok(0xc2 << 32));
    kassert_eq!(un, Ok(a.phys()));
    kassert_eq!((flushes.ipte_local, flushes.ipte_global), (1, 0));
    faulted(l2, code::PAGE_TRANSLATION, VA, TeidAccess::Fetch)?;
    drop(s);
    free_frame(a)?;
    free_frame(b)
}

/// IDTE with local clearing: a segment made read-only in a space loaded
/// here only faults the next store through the warm entry.
pub(super) fn segment_protect_of_a_space_loaded_here_clears_locally() -> KResult {
    need_local_clearing()?;
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xc3)?;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce_ref();
    let sp = &mut s;
    // SAFETY: the space lives across the window; the frame is the case's.
    let (s1, p, flushes, s2) = unsafe {
        warm(&asce, |w| {
            let s1 = w.store(VA, 1);
            let f0 = tlb::flush_stats();
            let p = sp.protect_segment(VA, true);
            let flushes = tlb::flush_stats().since(f0);
            (s1, p, flushes, w.store(VA, 2))
        })
    }?;
    kassert_eq!(s1, Ok(()));
    kassert_eq!(p, Ok(()));
    kassert_eq!(
        flushes,
        FlushStats {
            idte_local: 1,
            ..FlushStats::default()
        }
    );
    faulted(st(s2), code::PROTECTION, VA, TeidAccess::Store)?;
    drop(s);
    free_frame(f)
}
