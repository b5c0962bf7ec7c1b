//! Host and gmap through DAT: guest addresses reach the host's frames for
//! each ASCE type, host changes reach every linked gmap, freeing a host PTE
//! table unlinks and the next fault relinks, one gmap never links two
//! guest segments to one host segment, and the PTE notifier sees the exact
//! range once, before the change.

use alloc::vec::Vec;

use spin::Mutex;

use super::{
    g_load_lctlg, g_store_lctlg, gmap, h_load_lctlg, h_store_lctlg, host, snapshot, VM_BASE,
};
use crate::arch::pgm::{code, ProgramCheck};
use crate::arch::s390x::dat as hw;
use crate::dat::context::AsceRef;
use crate::dat::entry::{Level, Prot, SEGMENT_SIZE};
use crate::dat::kernel::with_secondary_lctlg;
use crate::gmap::{gmap_remove, Access, GmapError};
use crate::ktest::KResult;
use crate::{kassert, kassert_eq, kassert_matches};

/// Guest addresses read and write the host's frames, for a gmap of each
/// ASCE type.
pub(super) fn hardware_translation_for_each_asce_type() -> KResult {
    let h = host()?;
    for (limit, gbase, level) in [
        ((1u64 << 31) - 1, 0x4000_0000u64, Level::Segment),
        ((1 << 42) - 1, 0x123_0000_0000, Level::Region3),
        ((1 << 53) - 1, 0x10_0000_0000_0000, Level::Region2),
        (u64::MAX, 0xfff0_0000_0000_0000, Level::Region1),
    ] {
        let g = gmap(&h, limit)?;
        kassert_eq!(g.asce().level(), level);
        kassert_eq!(g.gmap_map_segment(VM_BASE, gbase, 2 * SEGMENT_SIZE), Ok(()));
        for off in [0u64, 0x1000, SEGMENT_SIZE + 0x5000] {
            kassert_eq!(g.gmap_fault(gbase + off, Access::Write), Ok(VM_BASE + off));
            let v = 0x6000_0000 + off + level as u64;
            kassert_eq!(h_store_lctlg(&h, VM_BASE + off + 8, v), Ok(()));
            kassert_eq!(g_load_lctlg(&g, gbase + off + 8), Ok(v));
            kassert_eq!(g_store_lctlg(&g, gbase + off + 16, !v), Ok(()));
            kassert_eq!(h_load_lctlg(&h, VM_BASE + off + 16), Ok(!v));
        }
        kassert_eq!(gmap_remove(g), Ok(()));
    }
    drop(h);
    Ok(())
}

pub(super) fn host_changes_are_seen_by_every_linked_gmap() -> KResult {
    let h = host()?;
    let (g1, g2) = (gmap(&h, (1 << 31) - 1)?, gmap(&h, (1 << 42) - 1)?);
    let (a1, a2) = (0x20_0000u64, 0x200_0000_0000u64);
    kassert_eq!(g1.gmap_map_segment(VM_BASE, a1, SEGMENT_SIZE), Ok(()));
    kassert_eq!(g2.gmap_map_segment(VM_BASE, a2, SEGMENT_SIZE), Ok(()));
    for p in 0..4u64 {
        kassert!(g1.gmap_fault(a1 + p * 0x1000, Access::Write).is_ok());
        kassert!(g2.gmap_fault(a2 + p * 0x1000, Access::Write).is_ok());
    }
    // Both gmap segments point at the host's one PTE table.
    let host_pt = h.lock().space().pte_table(VM_BASE);
    kassert_eq!(Some(g1.segment_entry_value(a1).page_table()), host_pt);
    kassert_eq!(Some(g2.segment_entry_value(a2).page_table()), host_pt);
    kassert_eq!(h_store_lctlg(&h, VM_BASE + 0x1000, 41), Ok(()));
    kassert_eq!(
        (
            g_load_lctlg(&g1, a1 + 0x1000),
            g_load_lctlg(&g2, a2 + 0x1000)
        ),
        (Ok(41), Ok(41))
    );
    // Protect in the host: both guests' stores are refused.
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadOnly), Ok(()));
    kassert_matches!(g_store_lctlg(&g1, a1 + 0x1000, 1), Err(pc) if pc.code == code::PROTECTION);
    kassert_matches!(g_store_lctlg(&g2, a2 + 0x1000, 1), Err(pc) if pc.code == code::PROTECTION);
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadWrite), Ok(()));
    kassert_eq!(g_store_lctlg(&g1, a1 + 0x1000, 42), Ok(()));
    kassert_eq!(g_load_lctlg(&g2, a2 + 0x1000), Ok(42));
    // Remap in the host (a new, zeroed frame): both guests see it at once.
    let r = h.lock().remap(VM_BASE + 0x2000);
    kassert!(r.is_ok());
    kassert_eq!(
        (
            g_load_lctlg(&g1, a1 + 0x2000),
            g_load_lctlg(&g2, a2 + 0x2000)
        ),
        (Ok(0), Ok(0))
    );
    // Unmap one page in the host (IPTE): both guests fault on it.
    kassert_eq!(h.lock().unmap_range(VM_BASE + 0x3000, 0x1000), Ok(1));
    kassert_matches!(g_load_lctlg(&g1, a1 + 0x3000), Err(pc) if pc.code == code::PAGE_TRANSLATION);
    kassert_matches!(g_load_lctlg(&g2, a2 + 0x3000), Err(pc) if pc.code == code::PAGE_TRANSLATION);
    kassert_eq!(gmap_remove(g1), Ok(()));
    kassert_eq!(gmap_remove(g2), Ok(()));
    drop(h);
    Ok(())
}

pub(super) fn freeing_a_host_pte_table_unlinks_and_fault_relinks() -> KResult {
    let h = host()?;
    let g = gmap(&h, (1 << 31) - 1)?;
    let ga = 0x300_0000u64;
    kassert_eq!(g.gmap_map_segment(VM_BASE, ga, SEGMENT_SIZE), Ok(()));
    kassert!(g.gmap_fault(ga, Access::Write).is_ok());
    kassert_eq!(g_store_lctlg(&g, ga, 5), Ok(()));
    kassert!(!g.segment_entry_value(ga).is_invalid());
    let (links, unlinks) = g.link_counts();
    // The host unmaps the whole segment: its PTE table is freed, and the
    // gmap entry pointing at it is invalidated first.
    kassert_eq!(h.lock().unmap_range(VM_BASE, SEGMENT_SIZE), Ok(1));
    kassert!(g.segment_entry_value(ga).is_invalid());
    kassert_eq!(g.link_counts(), (links, unlinks + 1));
    kassert_matches!(g_load_lctlg(&g, ga), Err(pc) if pc.code == code::SEGMENT_TRANSLATION);
    // gmap_fault repopulates the host and relinks.
    kassert!(g.gmap_fault(ga, Access::Read).is_ok());
    kassert_eq!(g_load_lctlg(&g, ga), Ok(0));
    kassert_eq!(g.link_counts().0, links + 1);
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

/// One gmap never maps or links two guest segments to one host segment
/// (Linux __gmap_link: -EEXIST): host_to_guest is single-valued, so freeing
/// the host's PTE table could unlink only one of them and leave the other
/// pointing at the freed table. Other gmaps may share the host segment.
pub(super) fn host_aliasing_within_a_gmap_is_refused() -> KResult {
    let h = host()?;
    let g = gmap(&h, (1 << 31) - 1)?;
    let s = SEGMENT_SIZE;
    let (ga, other) = (0x100_0000u64, 0x400_0000u64);
    kassert_eq!(g.gmap_map_segment(VM_BASE, ga, 2 * s), Ok(()));
    kassert_eq!(g.gmap_fault(ga, Access::Write), Ok(VM_BASE));
    let watch = [ga, ga + s, other, other + s, other + 2 * s, other + 3 * s];
    let before = snapshot(&h, &g, &watch);
    kassert_eq!(before.check, Ok(1));
    // The same host segment; host ranges overlapping the mapped one at its
    // start, its end, and around it.
    for (from, len) in [
        (VM_BASE, s),
        (VM_BASE + s, s),
        (VM_BASE - s, 2 * s),
        (VM_BASE + s, 2 * s),
        (VM_BASE - s, 4 * s),
    ] {
        let r = g.gmap_map_segment(from, other, len);
        kassert!(
            r == Err(GmapError::HostAliased),
            "host {:#x} + {:#x}: {:?}",
            from,
            len,
            r
        );
    }
    // Adjacent host ranges are not aliases.
    kassert_eq!(g.gmap_map_segment(VM_BASE + 2 * s, other, s), Ok(()));
    kassert_eq!(g.gmap_unmap_segment(other, s), Ok(()));
    // Linking the host segment linked already to `ga` to another guest
    // segment of this gmap, mapped to it or not.
    kassert_eq!(g.gmap_link(other, VM_BASE), Err(GmapError::HostAliased));
    kassert_eq!(
        g.gmap_link(other + 0x5000, VM_BASE + 0x5000),
        Err(GmapError::HostAliased)
    );
    kassert_eq!(snapshot(&h, &g, &watch), before);
    // A second gmap may map and link the same host segment.
    let g2 = gmap(&h, (1 << 31) - 1)?;
    kassert_eq!(g2.gmap_map_segment(VM_BASE, other, s), Ok(()));
    kassert_eq!(g2.gmap_fault(other, Access::Read), Ok(VM_BASE));
    // The host frees the PTE table: every link to it goes, in both gmaps.
    kassert_eq!(h.lock().unmap_range(VM_BASE, s), Ok(1));
    kassert_eq!((g.check(), g2.check()), (Ok(0), Ok(0)));
    kassert!(g.segment_entry_value(ga).is_invalid());
    kassert!(g2.segment_entry_value(other).is_invalid());
    kassert_eq!(gmap_remove(g2), Ok(()));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

/// A notifier call: (gmap, start, end, what the guest saw at that moment).
type Note = (u64, u64, u64, Result<u64, ProgramCheck>);

static NOTES: Mutex<Vec<Note>> = Mutex::new(Vec::new());
static WATCHED: Mutex<Option<AsceRef>> = Mutex::new(None);

fn record(gmap: u64, start: u64, end: u64) {
    // Read the guest page now: the change must not be visible yet.
    let Some(gref) = WATCHED.lock().clone() else {
        return;
    };
    // SAFETY: the test's gmap is live while its host changes.
    let v = unsafe { with_secondary_lctlg(&gref, || hw::secondary_load_u64(start)) };
    NOTES.lock().push((gmap, start, end, v));
}

pub(super) fn notifier_sees_exact_range_once_before_the_change() -> KResult {
    let h = host()?;
    let g = gmap(&h, (1 << 31) - 1)?;
    let ga = 0x500_0000u64;
    kassert_eq!(g.gmap_map_segment(VM_BASE, ga, SEGMENT_SIZE), Ok(()));
    for p in 0..3u64 {
        kassert!(g.gmap_fault(ga + p * 0x1000, Access::Write).is_ok());
        kassert_eq!(g_store_lctlg(&g, ga + p * 0x1000, 0x100 + p), Ok(()));
    }
    *WATCHED.lock() = Some(g.asce_ref());
    NOTES.lock().clear();
    crate::gmap::notify::gmap_register_pte_notifier(record);
    kassert_eq!(g.gmap_protect_range(ga + 0x1000, 0x1000), Ok(()));
    // Pages not covered change without a call.
    kassert_eq!(h.lock().protect(VM_BASE, Prot::ReadOnly), Ok(()));
    kassert_eq!(NOTES.lock().len(), 0);
    // The covered page: protect, then remap, then unmap.
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadOnly), Ok(()));
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!(notes[0].0, g.id());
    kassert_eq!((notes[0].1, notes[0].2), (ga + 0x1000, ga + 0x2000));
    kassert_eq!(notes[0].3, Ok(0x101));
    // The notify bit is one-shot: the next change is silent.
    kassert_eq!(h.lock().protect(VM_BASE + 0x1000, Prot::ReadWrite), Ok(()));
    kassert_eq!(NOTES.lock().len(), 0);
    kassert_eq!(g.gmap_protect_range(ga + 0x1000, 0x1000), Ok(()));
    let r = h.lock().remap(VM_BASE + 0x1000);
    kassert!(r.is_ok());
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!((notes[0].1, notes[0].3), (ga + 0x1000, Ok(0x101)));
    kassert!(g.gmap_fault(ga + 0x1000, Access::Read).is_ok());
    kassert_eq!(g.gmap_protect_range(ga + 0x1000, 0x1000), Ok(()));
    kassert_eq!(h.lock().unmap_range(VM_BASE + 0x1000, 0x1000), Ok(1));
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!(
        (notes[0].1, notes[0].2, notes[0].3),
        (ga + 0x1000, ga + 0x2000, Ok(0))
    );
    crate::gmap::notify::gmap_unregister_pte_notifier(record);
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}

/// The notifier's exclusive end of the last page of a region-first gmap
/// does not fit in 64 bits: it saturates (it used to overflow).
pub(super) fn notifier_at_the_top_of_the_address_space() -> KResult {
    let h = host()?;
    let g = gmap(&h, u64::MAX)?;
    let top = 0u64.wrapping_sub(SEGMENT_SIZE);
    let page = 0u64.wrapping_sub(0x1000);
    let vm = VM_BASE + SEGMENT_SIZE - 0x1000;
    kassert_eq!(g.gmap_map_segment(VM_BASE, top, SEGMENT_SIZE), Ok(()));
    kassert_eq!(g.gmap_fault(page, Access::Write), Ok(vm));
    kassert_eq!(g_store_lctlg(&g, page, 0x5151), Ok(()));
    kassert_eq!(g.gmap_protect_range(page, 0x1000), Ok(()));
    *WATCHED.lock() = Some(g.asce_ref());
    NOTES.lock().clear();
    crate::gmap::notify::gmap_register_pte_notifier(record);
    let r = h.lock().protect(vm, Prot::ReadOnly);
    crate::gmap::notify::gmap_unregister_pte_notifier(record);
    kassert_eq!(r, Ok(()));
    let notes = core::mem::take(&mut *NOTES.lock());
    kassert_eq!(notes.len(), 1);
    kassert_eq!(notes[0], (g.id(), page, u64::MAX, Ok(0x5151)));
    kassert_eq!(gmap_remove(g), Ok(()));
    drop(h);
    Ok(())
}
