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

use crate::dat::space::AddressSpace;
use crate::ktest::fixtures::{faulted, st};
use crate::ktest::Outcome;
use crate::{kfail, ktest_suite};

mod gmaps;
mod local;
mod spaces;

use gmaps::{
    gmap_link_takes_effect_on_the_next_access, gmap_unmap_segment_faults_next_load,
    host_protect_seen_by_loaded_gmap, host_remap_seen_by_loaded_gmap,
    host_segment_protection_reaches_loaded_gmap, host_unmap_page_seen_by_loaded_gmap,
    host_unmap_segment_unlinks_loaded_gmap, notifier_runs_before_the_change,
    removed_gmap_leaves_no_translation,
};
use local::{
    protect_of_a_space_loaded_here_clears_locally,
    segment_protect_of_a_space_loaded_here_clears_locally,
    unmap_of_a_space_loaded_here_clears_locally,
};
use spaces::{
    dropped_space_leaves_no_translation, mmu_gather_refuses_what_the_tlb_may_reach,
    protect_faults_next_store, protect_segment_faults_next_store,
    region_entry_invalidation_faults_next_load, remap_serves_new_frame,
    unmap_page_faults_next_load, unmap_segment_faults_next_load, upgrade_keeps_the_loaded_top,
};

fn space(limit: u128, max: u128, pgste: bool) -> Result<AddressSpace, Outcome> {
    AddressSpace::new(limit, max, pgste).or_else(|e| kfail!("AddressSpace::new: {e:?}"))
}

// Addresses at or above 1 MiB: QEMU's IPTE purges everything when the
// address has no bits above the page index (its "no valid virtual address"
// case), which would hide a missing purge.
const VA: u64 = 0x50_0000;

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
        protect_of_a_space_loaded_here_clears_locally,
        unmap_of_a_space_loaded_here_clears_locally,
        segment_protect_of_a_space_loaded_here_clears_locally,
    ]
);
