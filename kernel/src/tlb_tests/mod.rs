//! tlb_warm: every invalidation judged by the hardware with a warm TLB.
//!
//! Each case loads the space (or gmap) as the secondary space once, touches
//! the address so the TLB holds its translation, makes the change through
//! the public API, and accesses again with no control-register load in
//! between (QEMU purges its whole TLB on every LCTLG, so a reload would hide
//! a missing invalidation). `warm_secondary` checks that no LCTLG happened
//! on this CPU inside the window; nothing inside may print. The outcome
//! asserted is the one the Principles of Operation require after the
//! change: the new frame, or the fault with its interruption code and TEID
//! (page address, fetch or store, secondary space). The exception-access
//! identification is meaningful only in access-register mode, which zdat
//! cannot use under QEMU (PLATFORM.md), so it is not asserted. `x.py
//! mutants` shows which case fails when each piece of the discipline is
//! removed.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use crate::arch::pgm::{code, ProgramCheck, Teid, TeidAccess};
use crate::arch::s390x::facility;
use crate::dat::entry::{Level, Prot, RegionEntry, SEGMENT_SIZE};

use crate::dat::space::AddressSpace;
use crate::gmap::{gmap_create, notify, Access, Gmap, HostMm};
use crate::ktest::fixtures::{free_frame, tagged_frame, warm, warm_ipte};
use crate::ktest::{KResult, Outcome};
use crate::mm;
use crate::{kassert, kassert_eq, kassert_matches, kassert_ne, kfail, ktest_suite};

fn space(limit: u128, max: u128, pgste: bool) -> Result<AddressSpace, Outcome> {
    AddressSpace::new(limit, max, pgste).or_else(|e| kfail!("AddressSpace::new: {e:?}"))
}

/// The fault the architecture requires: `code`, and a TEID naming the page
/// of `va`, the access and the secondary space.
fn faulted(r: Result<u64, ProgramCheck>, want: u16, va: u64, access: TeidAccess) -> KResult {
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
fn st(r: Result<(), ProgramCheck>) -> Result<u64, ProgramCheck> {
    r.map(|()| 0)
}

// Addresses at or above 1 MiB: QEMU's IPTE purges everything when the
// address has no bits above the page index (its "no valid virtual address"
// case), which would hide a missing purge.
const VA: u64 = 0x50_0000;

/// IPTE: a page made read-only faults on the next store.
fn protect_faults_next_store() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xa1)?;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    let sp = &s;
    // SAFETY: `s` lives across the window; the frame is the case's.
    let (st1, prot, st2, ld) = unsafe {
        warm_ipte(s.asce(), |w| {
            let st1 = w.store(VA + 8, 1);
            let prot = sp.protect(VA, Prot::ReadOnly);
            let st2 = w.store(VA + 8, 2);
            (st1, prot, st2, w.load(VA + 8))
        })
    }?;
    kassert_eq!(st1, Ok(()));
    kassert_eq!(prot, Ok(()));
    faulted(st(st2), code::PROTECTION, VA + 8, TeidAccess::Store)?;
    kassert_eq!(ld, Ok(1));
    drop(s);
    free_frame(f)
}

/// IPTE: one page unmapped from a table that keeps others faults on the
/// next load; its neighbour still translates.
fn unmap_page_faults_next_load() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let (a, b) = (tagged_frame(0xa2)?, tagged_frame(0xb2)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.map(VA + 0x1000, b.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce();
    let sp = &mut s;
    // SAFETY: the space lives across the window (its page table stays: the
    // other page keeps it).
    let (l1, un, l2, l3) = unsafe {
        warm_ipte(asce, |w| {
            let l1 = w.load(VA);
            let _ = w.load(VA + 0x1000);
            let un = sp.unmap(VA);
            (l1, un, w.load(VA), w.load(VA + 0x1000))
        })
    }?;
    kassert_eq!(l1, Ok(0xa2 << 32));
    kassert_eq!(un, Ok(a.phys()));
    faulted(l2, code::PAGE_TRANSLATION, VA, TeidAccess::Fetch)?;
    kassert_eq!(l3, Ok(0xb2 << 32));
    drop(s);
    free_frame(a)?;
    free_frame(b)
}

/// IPTE: a remapped page serves the new frame on the next load.
fn remap_serves_new_frame() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let (a, b) = (tagged_frame(0xa3)?, tagged_frame(0xb3)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    let sp = &s;
    let pb = b.phys();
    // SAFETY: the space lives across the window; both frames are the case's.
    let (l1, r, l2) = unsafe {
        warm_ipte(s.asce(), |w| {
            let l1 = w.load(VA + 16);
            let r = sp.remap(VA, pb);
            (l1, r, w.load(VA + 16))
        })
    }?;
    kassert_eq!(l1, Ok((0xa3 << 32) | 16));
    kassert_eq!(r, Ok(a.phys()));
    kassert_eq!(l2, Ok((0xb3 << 32) | 16));
    drop(s);
    free_frame(a)?;
    free_frame(b)
}

/// IDTE: unmapping a whole segment invalidates its segment entry (no IPTE
/// per page) and the next load takes a segment-translation exception.
fn unmap_segment_faults_next_load() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xa4)?;
    let seg = 0x30_0000;
    for i in 0..4 {
        kassert_eq!(s.map(seg + i * 0x4000, f.phys(), Prot::ReadWrite), Ok(()));
    }
    let asce = s.asce();
    let sp = &mut s;
    let ipte_before = crate::dat::tlb::flush_counts().0;
    // SAFETY: the space lives across the window; the freed page table is
    // unreachable once the segment entry is invalid.
    let (l1, un, l2) = unsafe {
        warm(asce, |w| {
            let l1 = w.load(seg + 0x4000);
            let un = sp.unmap_range(seg, SEGMENT_SIZE);
            (l1, un, w.load(seg + 0x4000))
        })
    }?;
    kassert_eq!(l1, Ok(0xa4 << 32));
    kassert_matches!(un, Ok(st) if st.pages == 4 && st.tables_freed == 1);
    // The whole segment went with one IDTE, not an IPTE per page.
    kassert_eq!(crate::dat::tlb::flush_counts().0, ipte_before);
    faulted(
        l2,
        code::SEGMENT_TRANSLATION,
        seg + 0x4000,
        TeidAccess::Fetch,
    )?;
    drop(s);
    free_frame(f)
}

/// IDTE: segment protection applies to the next store of every page.
fn protect_segment_faults_next_store() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xa5)?;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce();
    let sp = &mut s;
    // SAFETY: the space lives across the window; the frame is the case's.
    let (s1, p, s2, un, s3) = unsafe {
        warm(asce, |w| {
            let s1 = w.store(VA, 1);
            let p = sp.protect_segment(VA, true);
            let s2 = w.store(VA, 2);
            let un = sp.protect_segment(VA, false);
            (s1, p, s2, un, w.store(VA, 3))
        })
    }?;
    kassert_eq!(s1, Ok(()));
    kassert_eq!(p, Ok(()));
    faulted(st(s2), code::PROTECTION, VA, TeidAccess::Store)?;
    kassert_eq!(un, Ok(()));
    kassert_eq!(s3, Ok(()));
    drop(s);
    free_frame(f)
}

/// A region entry invalidated (IDTE for regions, or CSPG where the CPU has
/// no IDTE for regions, as under QEMU) faults the next load below it.
fn region_entry_invalidation_faults_next_load() -> KResult {
    let mut s = space(1 << 42, 1 << 42, false)?;
    let f = tagged_frame(0xa6)?;
    let va = 0x2_0000_0000u64 + VA;
    kassert_eq!(s.map(va, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.asce().level(), Level::Region3);
    let asce = s.asce();
    let sp = &mut s;
    let empty = RegionEntry::empty(Level::Region3);
    let mut old = None;
    // SAFETY: the space lives across the window; the entry is put back
    // below, so the segment table it pointed at is not lost.
    let (l1, r, l2) = unsafe {
        warm(asce, |w| {
            let l1 = w.load(va);
            old = sp.region_entry(va, Level::Region3);
            let r = sp.replace_region_entry(va, Level::Region3, empty);
            (l1, r, w.load(va))
        })
    }?;
    kassert_eq!(l1, Ok(0xa6 << 32));
    kassert_eq!(r, Ok(()));
    faulted(l2, code::REGION_THIRD_TRANSLATION, va, TeidAccess::Fetch)?;
    let Some(old) = old else {
        return kfail!("no region-third entry for {va:#x}");
    };
    // SAFETY: the original entry back (IDTE/CSPG first; it is invalid).
    let back = unsafe { s.replace_region_entry(va, Level::Region3, old) };
    kassert_eq!(back, Ok(()));
    drop(s);
    free_frame(f)
}

/// Clearing by ASCE: a space dropped while its ASCE is still in CR7 leaves
/// no translation behind. The next space gets the same top table from the
/// allocator (LIFO per-CPU lists), so the same ASCE now designates new
/// tables: the next load must see them, not the old frame.
fn dropped_space_leaves_no_translation() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let (a, b) = (tagged_frame(0xa7)?, tagged_frame(0xb7)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce();
    let pb = b.phys();
    let mut s = Some(s);
    let mut again = None;
    // SAFETY: the tables `asce` designates are freed inside the window and
    // replaced by the new space's (the same top table, asserted below); the
    // purge on drop is what makes the last load walk the new ones.
    let (l1, l2) = unsafe {
        warm(asce, |w| {
            let l1 = w.load(VA);
            drop(s.take());
            let n = AddressSpace::new(1 << 31, 1 << 31, false);
            let l2 = match n {
                Ok(mut n) if n.asce() == asce => {
                    let m = n.map(VA + 0x1000, pb, Prot::ReadWrite);
                    let l2 = (m, w.load(VA), w.load(VA + 0x1000));
                    again = Some(n);
                    Some(l2)
                }
                Ok(n) => {
                    again = Some(n);
                    None
                }
                Err(_) => None,
            };
            (l1, l2)
        })
    }?;
    kassert_eq!(l1, Ok(0xa7 << 32));
    let Some((m, old_va, new_va)) = l2 else {
        return kfail!(
            "the new space did not reuse the top table: {:?}",
            again.map(|n| n.asce())
        );
    };
    kassert_eq!(m, Ok(()));
    faulted(old_va, code::PAGE_TRANSLATION, VA, TeidAccess::Fetch)?;
    kassert_eq!(new_va, Ok(0xb7 << 32));
    drop(again);
    free_frame(a)?;
    free_frame(b)
}

// -- gmaps: host changes as a loaded gmap sees them --------------------------

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
fn host_protect_seen_by_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: the gmap and host live across the window; guest memory is
    // the host's frames, populated for this case.
    let (s1, p, s2, l) = unsafe {
        warm_ipte(g.asce(), |w| {
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
fn host_unmap_page_seen_by_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above; the host's page table stays (the other page).
    let (l1, un, l2, l3) = unsafe {
        warm_ipte(g.asce(), |w| {
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
fn host_remap_seen_by_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above.
    let (s1, r, l2) = unsafe {
        warm_ipte(g.asce(), |w| {
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
fn host_unmap_segment_unlinks_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above; the unlink makes the freed table unreachable.
    let (l1, un, l2) = unsafe {
        warm(g.asce(), |w| {
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
fn host_segment_protection_reaches_loaded_gmap() -> KResult {
    let (h, g) = linked_gmap()?;
    let hh = h.clone();
    // SAFETY: as above.
    let (s1, p, s2, u, s3) = unsafe {
        warm(g.asce(), |w| {
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
fn gmap_unmap_segment_faults_next_load() -> KResult {
    let (h, g) = linked_gmap()?;
    let gg = &g;
    // SAFETY: as above.
    let (l1, u, l2) = unsafe {
        warm(g.asce(), |w| {
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
fn notifier_runs_before_the_change() -> KResult {
    let (h, g) = linked_gmap()?;
    kassert_eq!(g.gmap_protect_range(G + 0x1000, 0x1000), Ok(()));
    notify::gmap_register_pte_notifier(record_notify);
    NOTIFIED.store(0, Ordering::Relaxed);
    SEEN_IN_NOTIFIER.store(0, Ordering::Relaxed);
    let hh = h.clone();
    // SAFETY: as above.
    let r = unsafe {
        warm_ipte(g.asce(), |w| {
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
fn removed_gmap_leaves_no_translation() -> KResult {
    let (h, g) = linked_gmap()?;
    let asce = g.asce();
    let mut g = Some(g);
    let hh = h.clone();
    let mut next = None;
    // SAFETY: the gmap's tables are freed inside the window and replaced
    // by the next gmap's (same top table, asserted); the purge on removal
    // is what makes the last load walk the new one.
    let (l1, l2) = unsafe {
        warm(asce, |w| {
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

/// ASCE upgrade: a space grown while its old ASCE is loaded keeps the old
/// top table (it becomes entry 0 of the new top), so the CPU that has the
/// old ASCE goes on translating the old range, and the new range is an
/// ASCE-type exception through it until that CPU loads the new ASCE.
fn upgrade_keeps_the_loaded_top() -> KResult {
    let mut s = space(1 << 31, 1 << 42, false)?;
    let (a, b) = (tagged_frame(0xa9)?, tagged_frame(0xb9)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    let old = s.asce();
    let va2 = (1u64 << 31) + VA;
    let pb = b.phys();
    let sp = &mut s;
    // SAFETY: the old top stays allocated (that is what is judged) and
    // the space lives across the window.
    let (l1, m, l2, l3) = unsafe {
        warm(old, |w| {
            let l1 = w.load(VA);
            let m = sp.map(va2, pb, Prot::ReadWrite);
            (l1, m, w.load(VA), w.load(va2))
        })
    }?;
    kassert_eq!(l1, Ok(0xa9 << 32));
    kassert_eq!(m, Ok(()));
    kassert_eq!(s.asce().level(), Level::Region3);
    kassert_ne!(s.asce(), old);
    kassert_eq!(l2, Ok(0xa9 << 32));
    kassert_matches!(l3, Err(pc) if pc.code == code::ASCE_TYPE);
    // Through the new ASCE (loading it purges QEMU's TLB; that is fine for
    // checking a mapping): both ranges.
    // SAFETY: the space lives across the call.
    let (n1, n2) = unsafe {
        crate::dat::kernel::with_secondary_lctlg(s.asce(), || {
            (
                crate::arch::s390x::dat::secondary_load_u64(VA),
                crate::arch::s390x::dat::secondary_load_u64(va2),
            )
        })
    };
    kassert_eq!(n1, Ok(0xa9 << 32));
    kassert_eq!(n2, Ok(0xb9 << 32));
    drop(s);
    free_frame(a)?;
    free_frame(b)
}

/// gmap link: an unlinked guest segment faults (segment translation);
/// after `gmap_fault` links it (invalid to valid: no purge needed) the next
/// access through the still-loaded gmap translates.
fn gmap_link_takes_effect_on_the_next_access() -> KResult {
    let h = host()?;
    let g = gmap_create(&h, (1 << 31) - 1).or_else(|e| kfail!("gmap_create: {e:?}"))?;
    kassert_eq!(g.gmap_map_segment(VM, G, SEGMENT_SIZE), Ok(()));
    let gg = &g;
    // SAFETY: the gmap and host live across the window.
    let (l1, f, l2) = unsafe {
        warm(g.asce(), |w| {
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

/// mmu_gather refuses a table the entry still points at, one whose entry
/// it did not invalidate, and a table twice; nothing is gathered on a
/// refusal (the table comes back), and what was gathered is freed. (A
/// gmap table or any other page cannot even be offered: `GatheredTable`
/// takes only process page-table handles, see the compile-fail tests.)
fn mmu_gather_refuses_what_the_tlb_may_reach() -> KResult {
    use crate::dat::frag::PteTable;
    use crate::dat::gather::{tlb_gather_mmu, GatherError, GatheredTable};
    use crate::dat::table;
    /// A refusal hands the table back: give it up again (it is linked, or
    /// gathered under another handle) and check the reason.
    fn refused(r: Result<(), (GatheredTable, GatherError)>, want: GatherError) -> KResult {
        match r {
            Ok(()) => kfail!("gathered; expected {want:?}"),
            Err((t, e)) => {
                let _ = t.into_raw();
                kassert_eq!(e, want);
                Ok(())
            }
        }
    }
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xa8)?;
    let va2 = VA + SEGMENT_SIZE;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.map(va2, f.phys(), Prot::ReadWrite), Ok(()));
    let (Some(pto), Some(pto2), Some(ea), Some(ea2)) = (
        s.pte_table(VA),
        s.pte_table(va2),
        s.segment_entry_addr(VA),
        s.segment_entry_addr(va2),
    ) else {
        return kfail!("no page tables at {VA:#x} and {va2:#x}");
    };
    let seg_table = crate::dat::table::table_of_entry(ea);
    let mut g = tlb_gather_mmu(s.id());
    // SAFETY: `ea` and `ea2` are the entries of the space's live segment
    // table that point at (or pointed at) `pto` and `pto2`; the case owns
    // the space. The handles made here break `from_raw`'s contract on
    // purpose (the table is linked, or has a handle already): the gather
    // must refuse them, and each comes back and is given up again.
    unsafe {
        let handle = |pa| PteTable::from_raw(pa, false).map(GatheredTable::Pte);
        let t = handle(pto).or_else(|e| kfail!("{pto:?}: {e:?}"))?;
        // Still linked, and not invalidated by this gather.
        refused(g.tlb_remove_table(t, ea), GatherError::StillLinked)?;
        kassert_eq!(g.pending(), 0);
        // The second segment's entry invalidated by the gather itself: its
        // table may go, once.
        let e = g.invalidate_entry(seg_table, Level::Segment, va2);
        kassert_eq!(e, ea2);
        let t2 = handle(pto2).or_else(|e| kfail!("{pto2:?}: {e:?}"))?;
        kassert!(g.tlb_remove_table(t2, ea2).is_ok());
        let again = handle(pto2).or_else(|e| kfail!("{pto2:?}: {e:?}"))?;
        refused(g.tlb_remove_table(again, ea2), GatherError::Duplicate)?;
        // The first table's entry is unlinked by hand, without the gather:
        // not invalidated for it, so refused.
        let r = s.replace_segment_entry(VA, crate::dat::entry::SegmentEntry::empty());
        kassert_eq!(r, Ok(()));
        let t = handle(pto).or_else(|e| kfail!("{pto:?}: {e:?}"))?;
        refused(g.tlb_remove_table(t, ea), GatherError::NotInvalidated)?;
    }
    kassert_eq!(g.pending(), 1);
    g.tlb_finish_mmu(&mut s);
    mm::drain_pcp();
    kassert!(table::table_ptdesc(pto2).map(|p| p.frag_count()) != Some(2));
    kassert_eq!(s.lookup(va2), None);
    // The first table, unlinked by hand above, goes back the proper way:
    // its entry again, then an unmap.
    // SAFETY: the table `ea` pointed at, unchanged since.
    let back = unsafe {
        s.replace_segment_entry(
            VA,
            crate::dat::entry::SegmentEntry::table(pto, false)
                .unwrap_or(crate::dat::entry::SegmentEntry::empty()),
        )
    };
    kassert_eq!(back, Ok(()));
    kassert_eq!(s.lookup(VA).map(|(pa, _)| pa), Some(f.phys()));
    kassert!(s.check().is_ok(), "{:?}", s.check());
    drop(s);
    free_frame(f)
}

ktest_suite!(
    TLB_WARM,
    "tlb_warm",
    [
        protect_faults_next_store,
        unmap_page_faults_next_load,
        remap_serves_new_frame,
        unmap_segment_faults_next_load,
        protect_segment_faults_next_store,
        region_entry_invalidation_faults_next_load,
        dropped_space_leaves_no_translation,
        host_protect_seen_by_loaded_gmap,
        host_unmap_page_seen_by_loaded_gmap,
        host_remap_seen_by_loaded_gmap,
        host_unmap_segment_unlinks_loaded_gmap,
        host_segment_protection_reaches_loaded_gmap,
        gmap_unmap_segment_faults_next_load,
        notifier_runs_before_the_change,
        removed_gmap_leaves_no_translation,
        mmu_gather_refuses_what_the_tlb_may_reach,
        upgrade_keeps_the_loaded_top,
        gmap_link_takes_effect_on_the_next_access,
    ]
);
