//! gmap on QEMU's DAT: gmap ASCEs loaded as the secondary space, accesses
//! through guest addresses compared with the host's frames.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use super::table;
use super::{gmap_create, Gmap, GmapCheckError, GmapError, HostMm};
use crate::arch::pgm::ProgramCheck;
use crate::arch::s390x::dat as hw;
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::space::{SpaceCheck, SpaceCheckError};
use crate::ktest::{KResult, Outcome};
use crate::mm::{self, ptdesc};
use crate::{kfail, ktest_suite};

mod bad_input;
mod failures;
mod guest_runs;
mod linking;
mod tables;

use bad_input::bad_input_changes_nothing;
use failures::{
    gmap_drop_reports_a_refused_free_loudly, gmap_remove_names_the_tables_it_could_not_free,
    host_unmap_range_reports_a_refused_free, protect_range_at_the_top_of_the_address_space,
    protect_range_failure_changes_nothing, teardown_returns_every_page,
};
use guest_runs::{
    guest_cannot_reach_kernel_memory_by_changing_space, guest_past_its_limit_is_stopped_cleanly,
    guest_sums_an_array_over_lazily_linked_segments,
};
use linking::{
    freeing_a_host_pte_table_unlinks_and_fault_relinks, hardware_translation_for_each_asce_type,
    host_aliasing_within_a_gmap_is_refused, host_changes_are_seen_by_every_linked_gmap,
    notifier_at_the_top_of_the_address_space, notifier_sees_exact_range_once_before_the_change,
};
use tables::{
    descriptor_is_distinct_and_gaddr_cleared_before_free,
    entry_gaddr_at_every_level_of_each_asce_type,
    segment_gaddr_comes_from_the_gmap_table_descriptor, table_free_checks_owner_and_level,
};

const HOST_LIMIT: u64 = 1 << 31;
const VM_BASE: u64 = 0x1000_0000;

fn host() -> Result<Arc<Mutex<HostMm>>, Outcome> {
    HostMm::new(HOST_LIMIT).or_else(|e| kfail!("HostMm::new: {e:?}"))
}

fn gmap(h: &Arc<Mutex<HostMm>>, limit: u64) -> Result<Gmap, Outcome> {
    gmap_create(h, limit).or_else(|e| kfail!("gmap_create: {e:?}"))
}

fn g_load_lctlg(g: &Gmap, gaddr: u64) -> Result<u64, ProgramCheck> {
    // SAFETY: the gmap (and its host) outlive the call.
    unsafe { with_secondary_lctlg(&g.asce_ref(), || hw::secondary_load_u64(gaddr)) }
}

fn g_store_lctlg(g: &Gmap, gaddr: u64, v: u64) -> Result<(), ProgramCheck> {
    // SAFETY: guest memory is host frames the test populated.
    unsafe { with_secondary_lctlg(&g.asce_ref(), || hw::secondary_store_u64(gaddr, v)) }
}

/// The host's view of `vmaddr` (through the host space in CR7).
fn h_load_lctlg(h: &Arc<Mutex<HostMm>>, vmaddr: u64) -> Result<u64, ProgramCheck> {
    let asce = h.lock().space().asce_ref();
    // SAFETY: the host outlives the call.
    unsafe { with_secondary_lctlg(&asce, || hw::secondary_load_u64(vmaddr)) }
}

fn h_store_lctlg(h: &Arc<Mutex<HostMm>>, vmaddr: u64, v: u64) -> Result<(), ProgramCheck> {
    let asce = h.lock().space().asce_ref();
    // SAFETY: the host's frames are the test's.
    unsafe { with_secondary_lctlg(&asce, || hw::secondary_store_u64(vmaddr, v)) }
}

/// Everything a refused (or undone) operation must leave as it was: free
/// pages, page-table and gmap-table pages, the gmap's own check, link
/// counters and table pages, the host's check (mapped pages, tables) and
/// frames, and for each watched guest segment its gmap segment entry, its
/// translation and the PGSTE notify bits of its 256 host pages.
#[derive(Debug, PartialEq, Eq)]
struct State {
    free: u64,
    pagetables: u64,
    gmap_tables: u64,
    table_pages: u64,
    check: Result<u64, GmapCheckError>,
    links: (u64, u64),
    host: Result<SpaceCheck, SpaceCheckError>,
    frames: usize,
    /// (segment entry, translation, notify bits) per watched segment.
    segs: Vec<(u64, Result<u64, GmapError>, [u64; 4])>,
}

fn snapshot(h: &Arc<Mutex<HostMm>>, g: &Gmap, watch: &[u64]) -> State {
    let mut segs = Vec::with_capacity(watch.len());
    for &ga in watch {
        let tr = g.gmap_translate(ga);
        let mut bits = [0u64; 4];
        if let Ok(vm) = tr {
            let hm = h.lock();
            for p in 0..256u64 {
                if hm.space().pgste_notify(vm + p * 0x1000) {
                    bits[p as usize / 64] |= 1 << (p % 64);
                }
            }
        }
        segs.push((g.segment_entry_value(ga).raw(), tr, bits));
    }
    mm::drain_pcp();
    let hm = h.lock();
    let (host, frames) = (hm.space().check(), hm.nr_frames());
    drop(hm);
    State {
        free: mm::nr_free_pages_and_desc_slabs(),
        pagetables: ptdesc::nr_pagetable(),
        gmap_tables: table::nr_gmap_table_pages(),
        table_pages: g.table_pages(),
        check: g.check(),
        links: g.link_counts(),
        host,
        frames,
        segs,
    }
}

fn kassert_ok<E: core::fmt::Debug>(r: Result<(), E>) -> KResult {
    match r {
        Ok(()) => Ok(()),
        Err(e) => kfail!("{e:?}"),
    }
}

ktest_suite!(
    GMAP,
    "gmap",
    [
        descriptor_is_distinct_and_gaddr_cleared_before_free,
        table_free_checks_owner_and_level,
        hardware_translation_for_each_asce_type,
        host_changes_are_seen_by_every_linked_gmap,
        freeing_a_host_pte_table_unlinks_and_fault_relinks,
        host_aliasing_within_a_gmap_is_refused,
        segment_gaddr_comes_from_the_gmap_table_descriptor,
        entry_gaddr_at_every_level_of_each_asce_type,
        notifier_sees_exact_range_once_before_the_change,
        notifier_at_the_top_of_the_address_space,
        bad_input_changes_nothing,
        teardown_returns_every_page,
        gmap_remove_names_the_tables_it_could_not_free,
        gmap_drop_reports_a_refused_free_loudly,
        host_unmap_range_reports_a_refused_free,
        protect_range_failure_changes_nothing,
        protect_range_at_the_top_of_the_address_space,
    ]
);

ktest_suite!(
    GUEST,
    "gmap_guest",
    [
        guest_sums_an_array_over_lazily_linked_segments,
        guest_past_its_limit_is_stopped_cleanly,
        guest_cannot_reach_kernel_memory_by_changing_space
    ]
);
