//! tlb_warm on process spaces: IPTE (protect, unmap, remap of a page),
//! IDTE (a whole segment unmapped or protected), a region entry
//! invalidated, clearing by ASCE when a space is dropped, an ASCE upgrade
//! while the old top is loaded, and what mmu_gather refuses to free.

use super::{faulted, space, st, VA};
use crate::arch::pgm::{code, TeidAccess};
use crate::dat::entry::{Level, Prot, RegionEntry, SEGMENT_SIZE};
use crate::dat::space::AddressSpace;
use crate::ktest::fixtures::{free_frame, tagged_frame, warm, warm_ipte};
use crate::ktest::KResult;
use crate::mm;
use crate::{kassert, kassert_eq, kassert_matches, kassert_ne, kfail};

/// IPTE: a page made read-only faults on the next store.
pub(super) fn protect_faults_next_store() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xa1)?;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    let sp = &s;
    // SAFETY: `s` lives across the window; the frame is the case's.
    let (st1, prot, st2, ld) = unsafe {
        warm_ipte(&s.asce_ref(), |w| {
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
pub(super) fn unmap_page_faults_next_load() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let (a, b) = (tagged_frame(0xa2)?, tagged_frame(0xb2)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.map(VA + 0x1000, b.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce_ref();
    let sp = &mut s;
    // SAFETY: the space lives across the window (its page table stays: the
    // other page keeps it).
    let (l1, un, l2, l3) = unsafe {
        warm_ipte(&asce, |w| {
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
pub(super) fn remap_serves_new_frame() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let (a, b) = (tagged_frame(0xa3)?, tagged_frame(0xb3)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    let sp = &s;
    let pb = b.phys();
    // SAFETY: the space lives across the window; both frames are the case's.
    let (l1, r, l2) = unsafe {
        warm_ipte(&s.asce_ref(), |w| {
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
pub(super) fn unmap_segment_faults_next_load() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xa4)?;
    let seg = 0x30_0000;
    for i in 0..4 {
        kassert_eq!(s.map(seg + i * 0x4000, f.phys(), Prot::ReadWrite), Ok(()));
    }
    let asce = s.asce_ref();
    let sp = &mut s;
    let ipte_before = crate::dat::tlb::flush_counts().0;
    // SAFETY: the space lives across the window; the freed page table is
    // unreachable once the segment entry is invalid.
    let (l1, un, l2) = unsafe {
        warm(&asce, |w| {
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
pub(super) fn protect_segment_faults_next_store() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let f = tagged_frame(0xa5)?;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce_ref();
    let sp = &mut s;
    // SAFETY: the space lives across the window; the frame is the case's.
    let (s1, p, s2, un, s3) = unsafe {
        warm(&asce, |w| {
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
pub(super) fn region_entry_invalidation_faults_next_load() -> KResult {
    let mut s = space(1 << 42, 1 << 42, false)?;
    let f = tagged_frame(0xa6)?;
    let va = 0x2_0000_0000u64 + VA;
    kassert_eq!(s.map(va, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.asce().level(), Level::Region3);
    let asce = s.asce_ref();
    let sp = &mut s;
    let empty = RegionEntry::empty(Level::Region3);
    let mut old = None;
    // SAFETY: the space lives across the window; the entry is put back
    // below, so the segment table it pointed at is not lost.
    let (l1, r, l2) = unsafe {
        warm(&asce, |w| {
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
pub(super) fn dropped_space_leaves_no_translation() -> KResult {
    let mut s = space(1 << 31, 1 << 31, false)?;
    let (a, b) = (tagged_frame(0xa7)?, tagged_frame(0xb7)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    let sref = s.asce_ref();
    let asce = sref.asce();
    let pb = b.phys();
    let mut s = Some(s);
    let mut again = None;
    // SAFETY: the tables `asce` designates are freed inside the window and
    // replaced by the new space's (the same top table, asserted below); the
    // purge on drop is what makes the last load walk the new ones.
    let (l1, l2) = unsafe {
        warm(&sref, |w| {
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

/// ASCE upgrade: a space grown while its old ASCE is loaded keeps the old
/// top table (it becomes entry 0 of the new top), so the CPU that has the
/// old ASCE goes on translating the old range, and the new range is an
/// ASCE-type exception through it until that CPU loads the new ASCE.
pub(super) fn upgrade_keeps_the_loaded_top() -> KResult {
    let mut s = space(1 << 31, 1 << 42, false)?;
    let (a, b) = (tagged_frame(0xa9)?, tagged_frame(0xb9)?);
    kassert_eq!(s.map(VA, a.phys(), Prot::ReadWrite), Ok(()));
    let old = s.asce_ref();
    let va2 = (1u64 << 31) + VA;
    let pb = b.phys();
    let sp = &mut s;
    // SAFETY: the old top stays allocated (that is what is judged) and
    // the space lives across the window.
    let (l1, m, l2, l3) = unsafe {
        warm(&old, |w| {
            let l1 = w.load(VA);
            let m = sp.map(va2, pb, Prot::ReadWrite);
            (l1, m, w.load(VA), w.load(va2))
        })
    }?;
    kassert_eq!(l1, Ok(0xa9 << 32));
    kassert_eq!(m, Ok(()));
    kassert_eq!(s.asce().level(), Level::Region3);
    kassert_ne!(s.asce(), old.asce());
    kassert_eq!(l2, Ok(0xa9 << 32));
    kassert_matches!(l3, Err(pc) if pc.code == code::ASCE_TYPE);
    // Through the new ASCE (loading it purges QEMU's TLB; that is fine for
    // checking a mapping): both ranges.
    // SAFETY: the space lives across the call.
    let (n1, n2) = unsafe {
        crate::dat::kernel::with_secondary_lctlg(&s.asce_ref(), || {
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

/// mmu_gather refuses a table the entry still points at, one whose entry
/// it did not invalidate, and a table twice; nothing is gathered on a
/// refusal (the table comes back), and what was gathered is freed. (A
/// gmap table or any other page cannot even be offered: `GatheredTable`
/// takes only process page-table handles, see the compile-fail tests.)
pub(super) fn mmu_gather_refuses_what_the_tlb_may_reach() -> KResult {
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
    let mut g = tlb_gather_mmu(s.id(), s.context().clone());
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
