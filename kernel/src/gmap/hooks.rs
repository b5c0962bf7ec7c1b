//! What the host space tells its gmaps (the `SpaceHooks`): a PTE table
//! is about to be unlinked (`gmap_unlink`), a PTE was invalidated and its
//! guest aliases must be purged (`tlb::IPTE_GUEST_ALIAS`), a segment
//! entry's bits changed; and the registry of live gmaps the hooks search.

use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use crate::sync::Mutex;

use super::{seg, table, GmapInner, GMAPS};
use crate::dat::entry::SegmentEntry;
use crate::dat::table::entry;
use crate::dat::tlb;
use crate::mm::addr::PhysAddr;

/// The gmaps of host space `space_id`.
pub(super) fn gmaps_of(space_id: u64) -> Vec<Arc<Mutex<GmapInner>>> {
    GMAPS
        .lock()
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|g| g.lock().parent_id == space_id)
        .collect()
}

/// `gmap_unlink`: the host is about to free the PTE table of the segment
/// at `vmaddr`: every gmap segment entry pointing at it is invalidated.
pub(super) fn gmap_unlink(space_id: u64, vmaddr: u64, pte_table: PhysAddr) {
    for g in gmaps_of(space_id) {
        let mut g = g.lock();
        let Some(gseg) = g.host_to_guest.get(&seg(vmaddr)).copied() else {
            continue;
        };
        if g.segment_entry(gseg, false)
            .ok()
            .flatten()
            .is_some_and(|ea| {
                // SAFETY: an entry of a live gmap segment table.
                SegmentEntry::from_raw(unsafe { entry(ea) }.load(Ordering::Acquire)).page_table()
                    == pte_table
            })
        {
            g.unlink_gaddr(gseg);
        }
        g.host_to_guest.remove(&seg(vmaddr));
    }
}

/// `tlb::IPTE_GUEST_ALIAS`: the host just invalidated its PTE for `vmaddr`
/// in the page table `pto` with IPTE at the host address; purge the same
/// PTE under every guest address of a gmap segment linked to that table,
/// on every CPU that may hold the gmap (its own context decides: the
/// host's IPTE was chosen for the host's CPUs).
pub(super) fn gmap_pte_alias_purge(space_id: u64, vmaddr: u64, pto: PhysAddr) {
    for g in gmaps_of(space_id) {
        let g = g.lock();
        let Some(gseg) = g.host_to_guest.get(&seg(vmaddr)).copied() else {
            continue;
        };
        let gaddr = gseg + (vmaddr - seg(vmaddr));
        // SAFETY: `pto` is the host's live page table, which this gmap's
        // segment for `gseg` points at (host_to_guest says so, and the host
        // lock the caller holds keeps it linked); its PTE for `gaddr` is the
        // one the host just invalidated (same index: segments are 1 MiB
        // aligned in both spaces), so IPTE only purges TLB entries.
        unsafe { tlb::ipte(&g.context, pto, gaddr) };
    }
}

/// The host changed the segment entry for `vmaddr` to `new` (same PTE
/// table, other bits, e.g. protection): every gmap segment entry linked to
/// it takes the new bits too, IDTE first (Linux keeps gmap segment entries
/// in step with the host's pmd in gmap_pmdp_*).
pub(super) fn gmap_segment_change(space_id: u64, vmaddr: u64, new: SegmentEntry) {
    for g in gmaps_of(space_id) {
        let mut g = g.lock();
        let Some(gseg) = g.host_to_guest.get(&seg(vmaddr)).copied() else {
            continue;
        };
        let Ok(Some(ea)) = g.segment_entry(gseg, false) else {
            continue;
        };
        // SAFETY: an entry of a live gmap segment table.
        let cur = SegmentEntry::from_raw(unsafe { entry(ea) }.load(Ordering::Acquire));
        if cur.page_table() != new.page_table() {
            continue;
        }
        g.replace_segment_entry(ea, gseg, SegmentEntry::from_raw(new.hardware_bits()));
    }
}

/// The guest addresses of every gmap of `space_id` linked to the host
/// segment of `vmaddr`: (gmap id, guest address of the page).
pub(crate) fn guests_of(space_id: u64, vmaddr: u64) -> Vec<(u64, u64)> {
    gmaps_of(space_id)
        .iter()
        .filter_map(|g| {
            let g = g.lock();
            g.host_to_guest
                .get(&seg(vmaddr))
                .map(|gs| (g.id, gs + (vmaddr - seg(vmaddr))))
        })
        .collect()
}

/// For tests: the guest address of the gmap segment entry at kernel
/// address `entry_va`, through the gmap table descriptor.
pub fn segment_gaddr_of_entry(
    entry_va: crate::mm::addr::VirtAddr,
) -> Result<u64, table::GmapTableError> {
    table::gmap_segment_gaddr(entry_va)
}
