//! tlb_warm on gmaps: host changes (protect, unmap, remap, segment unmap
//! and protection) as a loaded gmap sees them, a guest segment unmapped,
//! the PTE notifier running before the change, a gmap removed while
//! loaded, and a segment linked by `gmap_fault`.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;

use super::{faulted, st};
use crate::arch::pgm::{code, TeidAccess};
use crate::dat::entry::{Prot, SEGMENT_SIZE};
use crate::gmap::{gmap_create, notify, Access, Gmap, HostMm};
use crate::ktest::fixtures::{warm, warm_ipte};
use crate::ktest::{KResult, Outcome};
use crate::{kassert, kassert_eq, kassert_matches, kfail};

const HOST_LIMIT: u64 = 1 << 31;
const VM: u64 = 0x1000_0000;
const G: u64 = 0x4000_0000;

fn host() -> Result<Arc<Mutex<HostMm>>, Outcome> {
    HostMm::new(HOST_LIMIT).or_else(|e| kfail!("HostMm::new: {e:?}"))
}

/// A host with two populated pages in one segment, and a gmap mapping that
/// segment at `G`, linked.
fn linked_gmap() -> Result<(Arc<Mutex<HostMm>>, Gmap), Outcome> {
    let h = host()?;
    let g = gmap_create(&h, (1 << 31) - 1).or_else(|e| kfail!("gmap_create: {e:?}"))?;
    kassert_eq!(g.gmap_map_segment(VM, G, SEGMENT_SIZE), Ok(()));
    for off in [0x1000u64, 0x2000] {
        kassert_eq!(g.gmap_fault(G + off, Access::Write), Ok(VM + off));
    }
    Ok((h, g))
}

/// The QEMU workaround: the host makes a page read-only with IPTE at the
/// host address; a gmap kept loaded must fault on its next store.
pub(super) fn host_protect_seen_by_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: the gmap and host live across the window; guest memory is
    // the host's frames, populated for this case.
    let (s1, p, s2, l) = unsafe {
        warm_ipte(&g.asce_ref(), |w| {
            let s1 = w.store(G + 0x1000, 0x1111);
            let p = hh.lock().protect(VM + 0x1000, Prot::ReadOnly);
            let s2 = w.store(G + 0x1000, 0x2222);
            (s1, p, s2, w.load(G + 0x1000))
        })
    }?;
    kassert_eq!(s1, Ok(()));
    kassert_eq!(p, Ok(()));
    faulted(st(s2), code::PROTECTION, G + 0x1000, TeidAccess::Store)?;
    kassert_eq!(l, Ok(0x1111));
    drop(g);
    drop(h);
    Ok(())
}

/// A host page unmapped (the table stays for its neighbour): the loaded
/// gmap's next load faults; the neighbour still translates.
pub(super) fn host_unmap_page_seen_by_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above; the host's page table stays (the other page).
    let (l1, un, l2, l3) = unsafe {
        warm_ipte(&g.asce_ref(), |w| {
            let l1 = w.load(G + 0x1000);
            let _ = w.load(G + 0x2000);
            let un = hh.lock().unmap_range(VM + 0x1000, 0x1000);
            (l1, un, w.load(G + 0x1000), w.load(G + 0x2000))
        })
    }?;
    kassert_eq!(l1, Ok(0));
    kassert_eq!(un, Ok(1));
    faulted(l2, code::PAGE_TRANSLATION, G + 0x1000, TeidAccess::Fetch)?;
    kassert_eq!(l3, Ok(0));
    drop(g);
    drop(h);
    Ok(())
}

/// A host page remapped to a new frame: the loaded gmap reads the new one.
pub(super) fn host_remap_seen_by_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above.
    let (s1, r, l2) = unsafe {
        warm_ipte(&g.asce_ref(), |w| {
            let s1 = w.store(G + 0x1000, 0x5555);
            let r = hh.lock().remap(VM + 0x1000);
            (s1, r, w.load(G + 0x1000))
        })
    }?;
    kassert_eq!(s1, Ok(()));
    kassert!(r.is_ok(), "remap: {:?}", r);
    // The new frame is zeroed: the guest's 0x5555 was in the old one.
    kassert_eq!(l2, Ok(0));
    drop(g);
    drop(h);
    Ok(())
}

/// The host frees the PTE table of a linked segment (unmapping it whole):
/// the gmap segment entry is unlinked first, so the loaded gmap's next load
/// takes a segment-translation exception, not a walk of the freed table.
pub(super) fn host_unmap_segment_unlinks_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above; the unlink makes the freed table unreachable.
    let (l1, un, l2) = unsafe {
        warm(&g.asce_ref(), |w| {
            let l1 = w.load(G + 0x2000);
            let un = hh.lock().unmap_range(VM, SEGMENT_SIZE);
            (l1, un, w.load(G + 0x2000))
        })
    }?;
    kassert_eq!(l1, Ok(0));
    kassert_eq!(un, Ok(2));
    faulted(l2, code::SEGMENT_TRANSLATION, G + 0x2000, TeidAccess::Fetch)?;
    kassert_eq!(g.check(), Ok(0));
    drop(g);
    drop(h);
    Ok(())
}

/// Host segment protection reaches the linked gmap segment: the loaded
/// gmap's next store faults, and lifting it lets the store through.
pub(super) fn host_segment_protection_reaches_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above.
    let (s1, p, s2, u, s3) = unsafe {
        warm(&g.asce_ref(), |w| {
            let s1 = w.store(G + 0x1000, 1);
            let p = hh.lock().space_mut().protect_segment(VM, true);
            let s2 = w.store(G + 0x1000, 2);
            let u = hh.lock().space_mut().protect_segment(VM, false);
            (s1, p, s2, u, w.store(G + 0x1000, 3))
        })
    }?;
    kassert_eq!(s1, Ok(()));
    kassert_eq!(p, Ok(()));
    faulted(st(s2), code::PROTECTION, G + 0x1000, TeidAccess::Store)?;
    kassert_eq!(u, Ok(()));
    kassert_eq!(s3, Ok(()));
    drop(g);
    drop(h);
    Ok(())
}

/// Unmapping a guest segment (gmap_unmap_segment) unlinks it: the next
/// guest load faults, while the host keeps its page.
pub(super) fn gmap_unmap_segment_faults_next_load() -> KResult {
    let (h, g) = linked_gmap()?;
    let gg = &g;
    // SAFETY: as above.
    let (l1, u, l2) = unsafe {
        warm(&g.asce_ref(), |w| {
            let l1 = w.load(G + 0x1000);
            let u = gg.gmap_unmap_segment(G, SEGMENT_SIZE);
            (l1, u, w.load(G + 0x1000))
        })
    }?;
    kassert_eq!(l1, Ok(0));
    kassert_eq!(u, Ok(()));
    faulted(l2, code::SEGMENT_TRANSLATION, G + 0x1000, TeidAccess::Fetch)?;
    kassert!(h.lock().space().lookup(VM + 0x1000).is_some());
    drop(g);
    drop(h);
    Ok(())
}

static NOTIFIED: AtomicU64 = AtomicU64::new(0);
/// What the guest read from inside the notifier (the change has not
/// happened yet, so the old value; u64::MAX if the load faulted).
static SEEN_IN_NOTIFIER: AtomicU64 = AtomicU64::new(0);

fn record_notify(_gmap: u64, start: u64, end: u64) {
    if start == G + 0x1000 && end == G + 0x2000 {
        NOTIFIED.fetch_add(1, Ordering::Relaxed);
        // Still inside the warm window: CR7 holds the gmap.
        let v = crate::arch::s390x::dat::secondary_load_u64(start).unwrap_or(u64::MAX);
        SEEN_IN_NOTIFIER.store(v, Ordering::Relaxed);
    }
}

/// The PTE notifier runs before the host change, once: the change is a
/// remap to a zeroed frame, so a notifier that ran after it would read 0,
/// not the guest's 0x7777, from inside. After the change the loaded gmap
/// reads the new frame, and a second change (protect) calls no notifier:
/// the bit was consumed; the store after it faults.
pub(super) fn notifier_runs_before_the_change() -> KResult {
    let (h, g) = linked_gmap()?;
    kassert_eq!(g.gmap_protect_range(G + 0x1000, 0x1000), Ok(()));
    notify::gmap_register_pte_notifier(record_notify);
    NOTIFIED.store(0, Ordering::Relaxed);
    SEEN_IN_NOTIFIER.store(0, Ordering::Relaxed);
    let hh = h.clone();
    // SAFETY: as above.
    let r = unsafe {
        warm_ipte(&g.asce_ref(), |w| {
            let s1 = w.store(G + 0x1000, 0x7777);
            let r = hh.lock().remap(VM + 0x1000);
            let l = w.load(G + 0x1000);
            let p = hh.lock().protect(VM + 0x1000, Prot::ReadOnly);
            (s1, r, l, p, w.store(G + 0x1000, 0x8888))
        })
    };
    notify::gmap_unregister_pte_notifier(record_notify);
    let (s1, r, l, p, s2) = r?;
    kassert_eq!(s1, Ok(()));
    kassert!(r.is_ok(), "remap: {:?}", r);
    kassert_eq!(NOTIFIED.load(Ordering::Relaxed), 1);
    kassert_eq!(SEEN_IN_NOTIFIER.load(Ordering::Relaxed), 0x7777);
    kassert_eq!(l, Ok(0));
    kassert_eq!(p, Ok(()));
    faulted(st(s2), code::PROTECTION, G + 0x1000, TeidAccess::Store)?;
    drop(g);
    drop(h);
    Ok(())
}

/// Clearing by ASCE for a gmap: a gmap removed while loaded leaves no
/// translation; the next gmap gets the same top table and ASCE, and the
/// next load sees its (empty) tables.
pub(super) fn removed_gmap_leaves_no_translation() -> KResult {
    let (h, g) = linked_gmap()?;
    let gref = g.asce_ref();
    let asce = gref.asce();
    let mut g = Some(g);
    let hh = h.clone();
    let mut next = None;
    // SAFETY: the gmap's tables are freed inside the window and replaced
    // by the next gmap's (same top table, asserted); the purge on removal
    // is what makes the last load walk the new one.
    let (l1, l2) = unsafe {
        warm(&gref, |w| {
            let l1 = w.load(G + 0x1000);
            let rm = g.take().map(crate::gmap::gmap_remove);
            let n = gmap_create(&hh, (1 << 31) - 1);
            let l2 = match n {
                Ok(n) if n.asce() == asce => {
                    next = Some(n);
                    Some((rm, w.load(G + 0x1000)))
                }
                Ok(n) => {
                    next = Some(n);
                    None
                }
                Err(_) => None,
            };
            (l1, l2)
        })
    }?;
    kassert_eq!(l1, Ok(0));
    let Some((rm, l2)) = l2 else {
        return kfail!(
            "the next gmap did not reuse the top table: {:?}",
            next.map(|n| n.asce())
        );
    };
    kassert_matches!(rm, Some(Ok(())));
    faulted(l2, code::SEGMENT_TRANSLATION, G + 0x1000, TeidAccess::Fetch)?;
    drop(next);
    drop(h);
    Ok(())
}

/// gmap link: an unlinked guest segment faults (segment translation);
/// after `gmap_fault` links it (invalid to valid: no purge needed) the next
/// access through the still-loaded gmap translates.
pub(super) fn gmap_link_takes_effect_on_the_next_access() -> KResult {
    let h = host()?;
    let g = gmap_create(&h, (1 << 31) - 1).or_else(|e| kfail!("gmap_create: {e:?}"))?;
    kassert_eq!(g.gmap_map_segment(VM, G, SEGMENT_SIZE), Ok(()));
    let gg = &g;
    // SAFETY: the gmap and host live across the window.
    let (l1, f, l2) = unsafe {
        warm(&g.asce_ref(), |w| {
            let l1 = w.load(G + 0x3000);
            let f = gg.gmap_fault(G + 0x3000, Access::Read);
            (l1, f, w.load(G + 0x3000))
        })
    }?;
    faulted(l1, code::SEGMENT_TRANSLATION, G + 0x3000, TeidAccess::Fetch)?;
    kassert_eq!(f, Ok(VM + 0x3000));
    kassert_eq!(l2, Ok(0));
    kassert_eq!(g.check(), Ok(1));
    drop(g);
    drop(h);
    Ok(())
}
