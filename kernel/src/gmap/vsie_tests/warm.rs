//! vsie under a warm TLB: the shadow loaded once as the secondary space,
//! guest-1 or the host changes what a shadow entry was built from, and the
//! very next access (no control-register load between) sees the change.

use super::{world, G2Tables, World, G1_DATA};
use crate::arch::pgm::{code, TeidAccess};
use crate::dat::entry::{Level, Prot, SegmentEntry, SEGMENT_SIZE};
use crate::gmap::shadow::{ShadowFault, ShadowGmap};
use crate::gmap::GmapError;
use crate::ktest::fixtures::{faulted, st, warm, warm_ipte};
use crate::ktest::{KResult, Outcome};
use crate::{kassert, kassert_eq};

/// A guest-2 address whose page differs from every guest-1 and host
/// address the case uses (QEMU's IPTE purges by address: a shared page
/// number would hide a missing purge).
const G2: u64 = (7u64 << 31) | (9 << 20) | 0x5000;

/// A world whose guest-2 (region-third ASCE) maps `G2` to `G1_DATA`
/// (holding 0x1111), with `G1_DATA + 4K` holding 0x2222; the shadow has
/// the page.
fn setup() -> Result<(World, G2Tables, ShadowGmap), Outcome> {
    let w = world()?;
    w.w(G1_DATA, 0x1111)?;
    w.w(G1_DATA + 0x1000, 0x2222)?;
    let mut t = G2Tables::new(&w, Level::Region3)?;
    t.map(&w, G2, G1_DATA, Prot::ReadWrite)?;
    let s = w.shadow(t.asce())?;
    kassert_eq!(s.shadow_fault(G2, false), Ok(()));
    Ok((w, t, s))
}

/// Guest-1 points guest-2's PTE at another page (a guest-1 store into the
/// protected page holding guest-2's page table): the shadow page table
/// goes before the store, so the next access through the still-loaded
/// shadow faults; shadowed again, it reads the new page.
pub(super) fn guest1_changing_a_guest2_pte_is_seen_by_the_next_access() -> KResult {
    let (w, mut t, s) = setup()?;
    let ss = s.clone();
    // SAFETY: the shadow (its top table) lives across the window; what it
    // maps is guest-1 memory the host populated for this case.
    let (l1, m, l2, f, l3) = unsafe {
        warm(&s.asce_ref(), |wm| {
            let l1 = wm.load(G2);
            let m = t.map(&w, G2, G1_DATA + 0x1000, Prot::ReadWrite);
            let l2 = wm.load(G2);
            let f = ss.shadow_fault(G2, false);
            (l1, m, l2, f, wm.load(G2))
        })
    }?;
    kassert_eq!(l1, Ok(0x1111));
    kassert_eq!(m, Ok(()));
    faulted(l2, code::SEGMENT_TRANSLATION, G2, TeidAccess::Fetch)?;
    kassert_eq!(f, Ok(()));
    kassert_eq!(l3, Ok(0x2222));
    kassert_eq!(s.check(), Ok(1));
    Ok(())
}

/// Guest-1 invalidates guest-2's segment entry: the shadow segment table
/// built from that page goes, the next access faults at the region-third
/// level, and the fault is then guest-2's own (reflected).
pub(super) fn guest1_changing_a_guest2_segment_entry_is_seen() -> KResult {
    let (w, mut t, s) = setup()?;
    let ss = s.clone();
    // SAFETY: as above.
    let (l1, m, l2, f) = unsafe {
        warm(&s.asce_ref(), |wm| {
            let l1 = wm.load(G2);
            let m = t.set(&w, G2, Some(Level::Segment), SegmentEntry::empty().raw());
            let l2 = wm.load(G2);
            (l1, m, l2, ss.shadow_fault(G2, false))
        })
    }?;
    kassert_eq!(l1, Ok(0x1111));
    kassert_eq!(m, Ok(()));
    faulted(l2, code::REGION_THIRD_TRANSLATION, G2, TeidAccess::Fetch)?;
    kassert_eq!(f, Err(ShadowFault::Reflect(code::SEGMENT_TRANSLATION)));
    kassert_eq!(s.check(), Ok(0));
    Ok(())
}

/// The host replaces the frame behind guest-2's page (guest-1 memory the
/// shadow PTE maps directly): the shadow PTE goes by IPTE before the host
/// PTE changes; the next access faults, then reads the new (zeroed) frame.
pub(super) fn host_remap_of_a_guest2_page_invalidates_its_shadow_pte() -> KResult {
    let (w, _t, s) = setup()?;
    let ss = s.clone();
    let hh = w.h.clone();
    let vm = w.vm(G1_DATA);
    // SAFETY: as above.
    let (l1, r, l2, f, l3) = unsafe {
        warm_ipte(&s.asce_ref(), |wm| {
            let l1 = wm.load(G2);
            let r = hh.lock().remap(vm);
            let l2 = wm.load(G2);
            let f = ss.shadow_fault(G2, false);
            (l1, r, l2, f, wm.load(G2))
        })
    }?;
    kassert_eq!(l1, Ok(0x1111));
    kassert!(r.is_ok(), "remap: {r:?}");
    faulted(l2, code::PAGE_TRANSLATION, G2, TeidAccess::Fetch)?;
    kassert_eq!(f, Ok(()));
    kassert_eq!(l3, Ok(0));
    kassert_eq!(s.check(), Ok(1));
    Ok(())
}

/// The host makes guest-2's page read-only: the writable shadow PTE goes
/// at once; re-shadowed it is read-only, a store faults, and a store fault
/// the host refuses is not resolved (`Host(Protected)`).
pub(super) fn host_protect_of_a_guest2_page_is_seen_and_refused() -> KResult {
    let (w, _t, s) = setup()?;
    let ss = s.clone();
    let hh = w.h.clone();
    let vm = w.vm(G1_DATA);
    // SAFETY: as above; stores go to the guest-1 page the case owns.
    let (s1, p, s2, fw, fr, s3, l) = unsafe {
        warm_ipte(&s.asce_ref(), |wm| {
            let s1 = wm.store(G2, 0x3333);
            let p = hh.lock().protect(vm, Prot::ReadOnly);
            let s2 = wm.store(G2, 0x4444);
            let fw = ss.shadow_fault(G2, true);
            let fr = ss.shadow_fault(G2, false);
            let s3 = wm.store(G2, 0x5555);
            (s1, p, s2, fw, fr, s3, wm.load(G2))
        })
    }?;
    kassert_eq!(s1, Ok(()));
    kassert_eq!(p, Ok(()));
    faulted(st(s2), code::PAGE_TRANSLATION, G2, TeidAccess::Store)?;
    kassert_eq!(fw, Err(ShadowFault::Host(GmapError::Protected)));
    kassert_eq!(fr, Ok(()));
    faulted(st(s3), code::PROTECTION, G2, TeidAccess::Store)?;
    kassert_eq!(l, Ok(0x3333));
    kassert!(s.pte(G2).is_protected());
    kassert_eq!(s.check(), Ok(1));
    Ok(())
}

/// Guest-1 loses the segment of its memory that holds guest-2's page (the
/// parent unmaps it): what the shadow built from it goes; the next access
/// faults, and is then an addressing exception for guest-1 to handle.
pub(super) fn parent_unmapping_the_guest1_segment_drops_the_shadow_part() -> KResult {
    let (w, _t, s) = setup()?;
    let ss = s.clone();
    let seg = G1_DATA & !(SEGMENT_SIZE - 1);
    // SAFETY: as above.
    let (l1, u, l2, f) = unsafe {
        warm_ipte(&s.asce_ref(), |wm| {
            let l1 = wm.load(G2);
            let u = w.g.gmap_unmap_segment(seg, SEGMENT_SIZE);
            let l2 = wm.load(G2);
            (l1, u, l2, ss.shadow_fault(G2, false))
        })
    }?;
    kassert_eq!(l1, Ok(0x1111));
    kassert_eq!(u, Ok(()));
    faulted(l2, code::PAGE_TRANSLATION, G2, TeidAccess::Fetch)?;
    kassert_eq!(f, Err(ShadowFault::Reflect(code::ADDRESSING)));
    kassert_eq!(s.check(), Ok(0));
    Ok(())
}

/// The host unmaps the page holding guest-2's top table: the whole shadow
/// goes (removed, its top emptied and the TLBs purged), and the next
/// access through the still-loaded ASCE faults at the top.
pub(super) fn host_losing_the_top_table_page_drops_the_whole_shadow() -> KResult {
    let (w, t, s) = setup()?;
    let hh = w.h.clone();
    let top_vm = w.vm(t.top_g1);
    // SAFETY: as above; the top table stays allocated (empty) while the
    // handle lives.
    let (l1, u, l2) = unsafe {
        warm(&s.asce_ref(), |wm| {
            let l1 = wm.load(G2);
            let u = hh.lock().unmap_range(top_vm, 0x1000);
            (l1, u, wm.load(G2))
        })
    }?;
    kassert_eq!(l1, Ok(0x1111));
    kassert_eq!(u, Ok(1));
    faulted(l2, code::REGION_THIRD_TRANSLATION, G2, TeidAccess::Fetch)?;
    kassert!(s.is_removed());
    kassert_eq!(s.shadow_fault(G2, false), Err(ShadowFault::Again));
    // A new shadow for the same ASCE is a new one.
    let n = w.shadow(t.asce())?;
    kassert!(n.id() != s.id());
    Ok(())
}

/// The host makes the whole segment holding guest-2's page read-only
/// (its segment entry's protection): the shadows are told before the
/// segment entry changes, so the writable shadow PTE is gone at once; the
/// page is then shadowed read-only, and a store the host refuses is not
/// resolved.
pub(super) fn host_segment_protection_reaches_the_shadow() -> KResult {
    let (w, _t, s) = setup()?;
    let ss = s.clone();
    let hh = w.h.clone();
    let vm = w.vm(G1_DATA);
    // SAFETY: as above; stores go to the guest-1 page the case owns.
    let (s1, p, s2, fw, fr, s3) = unsafe {
        warm(&s.asce_ref(), |wm| {
            let s1 = wm.store(G2, 0x3333);
            let p = hh.lock().space_mut().protect_segment(vm, true);
            let s2 = wm.store(G2, 0x4444);
            let fw = ss.shadow_fault(G2, true);
            let fr = ss.shadow_fault(G2, false);
            (s1, p, s2, fw, fr, wm.store(G2, 0x5555))
        })
    }?;
    kassert_eq!(s1, Ok(()));
    kassert_eq!(p, Ok(()));
    faulted(st(s2), code::PAGE_TRANSLATION, G2, TeidAccess::Store)?;
    kassert_eq!(fw, Err(ShadowFault::Host(GmapError::Protected)));
    kassert_eq!(fr, Ok(()));
    faulted(st(s3), code::PROTECTION, G2, TeidAccess::Store)?;
    kassert!(s.pte(G2).is_protected());
    kassert_eq!(s.check(), Ok(1));
    // Guest-1 cannot store there either.
    kassert_eq!(w.g.guest_write_u64(G1_DATA, 1), Err(GmapError::Protected));
    Ok(())
}

/// A read-only choice of the host ends with the page: unmapped and
/// populated again, the page is writable, and guest-1's store to it is
/// not refused.
pub(super) fn host_forgets_its_read_only_choice_when_it_unmaps() -> KResult {
    let (w, _t, s) = setup()?;
    let vm = w.vm(G1_DATA);
    kassert_eq!(w.h.lock().protect(vm, Prot::ReadOnly), Ok(()));
    kassert_eq!(w.g.guest_write_u64(G1_DATA, 1), Err(GmapError::Protected));
    kassert_eq!(w.h.lock().unmap_range(vm, 0x1000), Ok(1));
    kassert_eq!(w.g.guest_write_u64(G1_DATA, 2), Ok(()));
    kassert_eq!(w.g.guest_read_u64(G1_DATA), Ok(2));
    kassert_eq!(s.shadow_fault(G2, true), Ok(()));
    kassert_eq!(s.check(), Ok(1));
    Ok(())
}
