//! Changes and their invalidation (the tlb and mmu_gather suites): a PTE
//! rewritten without IPTE stays stale in the TLB while changes through the
//! API never do, unmapped tables are freed only after the flush, and a
//! partial unmap counts one IPTE per page.

use alloc::vec::Vec;

use super::{give_back, load_lctlg, space};
use crate::arch::pgm::code;
use crate::arch::s390x::dat as hw;
use crate::dat::entry::{Prot, Pte, SEGMENT_SIZE};
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::tlb;
use crate::ktest::fixtures::tagged_frame as frame;
use crate::ktest::KResult;
use crate::mm::addr::{PhysAddr, PAGE_SIZE};
use crate::mm::{self, ptdesc, AllocFlags};
use crate::{kassert, kassert_eq, kassert_matches};

pub(super) fn change_without_invalidation_is_stale() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let (a, b) = (frame(0xaa)?, frame(0xbb)?);
    let va = 0x50_0000;
    kassert_eq!(s.map(va, a.phys(), Prot::ReadWrite), Ok(()));
    let pb = Pte::new(b.phys(), Prot::ReadWrite).unwrap_or(Pte::empty());
    // One CR7 load for the whole sequence: QEMU flushes its TLB on LCTLG.
    let sp = &mut s;
    let asce = sp.asce_ref();
    // SAFETY: the space lives across the closure; both frames are ours.
    let (before, stale, r) = unsafe {
        with_secondary_lctlg(&asce, || {
            let before = hw::secondary_load_u64(va);
            let r = sp.set_pte_without_invalidation(va, pb);
            let stale = hw::secondary_load_u64(va);
            (before, stale, r)
        })
    };
    kassert_eq!(r, Ok(()));
    kassert_eq!(before, Ok(0xaa << 32));
    // The TLB still holds the old translation: the change is invisible.
    kassert_eq!(stale, Ok(0xaa << 32));
    crate::ktest::diag(format_args!(
        "a PTE rewritten without IPTE kept translating to the old frame"
    ));
    drop(s);
    give_back(a);
    give_back(b);
    Ok(())
}

pub(super) fn changes_through_the_api_are_never_stale() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let (a, b) = (frame(0xaa)?, frame(0xbb)?);
    let va = 0x60_0000;
    kassert_eq!(s.map(va, a.phys(), Prot::ReadWrite), Ok(()));
    let asce = s.asce_ref();
    let sp = &mut s;
    let (pa, pb) = (a.phys(), b.phys());
    // SAFETY: the space lives across the closure; both frames are ours.
    let r = unsafe {
        with_secondary_lctlg(&asce, || {
            let mut seen = Vec::new();
            for round in 0..4 {
                seen.push(hw::secondary_load_u64(va));
                let _ = sp.unmap(va);
                // After the unmap returned, the next access faults.
                seen.push(hw::secondary_load_u64(va));
                let _ = sp.map(va, if round % 2 == 0 { pb } else { pa }, Prot::ReadWrite);
            }
            seen.push(hw::secondary_load_u64(va));
            seen
        })
    };
    let want_frames = [0xaau64, 0xbb, 0xaa, 0xbb, 0xaa];
    for (i, v) in r.iter().enumerate() {
        if i % 2 == 1 {
            kassert_matches!(v, Err(pc) if pc.code == code::SEGMENT_TRANSLATION || pc.code == code::PAGE_TRANSLATION);
        } else {
            kassert_eq!(*v, Ok(want_frames[i / 2] << 32));
        }
    }
    drop(s);
    give_back(a);
    give_back(b);
    Ok(())
}

pub(super) fn unmap_frees_tables_only_after_the_flush() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    let base = 0x1000_0000u64;
    let len = 64 << 20;
    kassert_eq!(s.map_range(base, PhysAddr(0), len, Prot::ReadOnly), Ok(()));
    let t_mapped = ptdesc::nr_pagetable();
    let (i0, d0, _) = tlb::flush_counts();
    let st = s.unmap_range(base, len);
    let (i1, d1, _) = tlb::flush_counts();
    kassert!(st.is_ok());
    let st = st.unwrap_or_default();
    // 64 whole segments: one IDTE each, no IPTE at all.
    kassert_eq!(
        (st.pages, st.flushes, st.tables_freed),
        (len / PAGE_SIZE, 64, 64)
    );
    kassert_eq!((i1 - i0, d1 - d0), (0, 64));
    kassert_eq!(t_mapped - ptdesc::nr_pagetable(), 32);
    // Reads through the old range fault now.
    for off in [0, len / 2, len - 8] {
        kassert_matches!(load_lctlg(&s, base + off), Err(pc) if pc.code == code::SEGMENT_TRANSLATION);
    }
    // The freed table pages come back from the allocator (per-CPU list is
    // LIFO); garbage that looks like valid PTEs must not matter.
    let g = frame(0x99)?;
    let fake = Pte::new(g.phys(), Prot::ReadWrite)
        .unwrap_or(Pte::empty())
        .raw();
    let mut reused = Vec::new();
    for _ in 0..64 {
        let Ok(mut p) = mm::alloc_pages(0, AllocFlags::empty()) else {
            break;
        };
        for w in p.as_mut_slice().chunks_exact_mut(8) {
            w.copy_from_slice(&fake.to_be_bytes());
        }
        reused.push(p);
    }
    for off in [0, 0x1000, len / 2, len - 8] {
        kassert_matches!(load_lctlg(&s, base + off), Err(pc) if pc.code == code::SEGMENT_TRANSLATION);
    }
    crate::ktest::diag(format_args!(
        "unmapping 64 MiB: {} flushes (IDTE per segment) instead of {} IPTEs; {} tables freed after them",
        st.flushes,
        len / PAGE_SIZE,
        st.tables_freed
    ));
    for p in reused {
        give_back(p);
    }
    give_back(g);
    drop(s);
    Ok(())
}

pub(super) fn partial_unmap_counts_ipte_per_page() -> KResult {
    let mut s = space(1 << 31, 1 << 31)?;
    kassert_eq!(
        s.map_range(0x20_0000, PhysAddr(0), 3 * SEGMENT_SIZE, Prot::ReadOnly),
        Ok(())
    );
    // Half of the middle segment: one IPTE per page, the table stays.
    let st = s.unmap_range(0x30_0000, SEGMENT_SIZE / 2);
    kassert_eq!(
        st.map(|st| (st.pages, st.flushes, st.tables_freed)),
        Ok((128, 128, 0))
    );
    kassert_matches!(load_lctlg(&s, 0x30_0000), Err(pc) if pc.code == code::PAGE_TRANSLATION);
    kassert!(load_lctlg(&s, 0x38_0000).is_ok());
    drop(s);
    Ok(())
}
