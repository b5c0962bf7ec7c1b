//! The vsie suites: guest-2 tables built by guest-1 stores in guest-1
//! memory, shadowed on fault, run on by a problem-state guest-2, changed
//! under a warm TLB, malformed, and compared with a two-stage software
//! walk at random addresses.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;

use crate::sync::Mutex;

use super::shadow::{gmap_shadow, ShadowGmap};
use super::{gmap_create, Gmap, HostMm};
use crate::dat::entry::{Asce, Level, Prot, Pte, RegionEntry, SegmentEntry, SEGMENT_SIZE};
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::{kfail, ktest_suite};

mod bad_input;
mod differential;
mod runs;
mod smp;
mod warm;

/// The host's address space, and where guest-1 memory starts in it.
const HOST_LIMIT: u64 = 1 << 31;
const VM_BASE: u64 = 0x1000_0000;
/// Guest-1 memory: 64 MiB at guest-1 address 0.
const G1_SIZE: u64 = 64 * SEGMENT_SIZE;
/// Guest-1 addresses: guest-2's code, data pages, tables.
const G1_CODE: u64 = 0x1000;
pub(crate) const G1_DATA: u64 = 0x0080_0000;
const G1_CRST: u64 = 0x0100_0000;
const G1_PT: u64 = 0x0300_0000;

/// A host with guest-1's memory mapped in a gmap.
pub(crate) struct World {
    pub(crate) h: Arc<Mutex<HostMm>>,
    pub(crate) g: Gmap,
}

pub(crate) fn world() -> Result<World, Outcome> {
    let h = HostMm::new(HOST_LIMIT).or_else(|e| kfail!("HostMm::new: {e:?}"))?;
    let g = gmap_create(&h, (1 << 31) - 1).or_else(|e| kfail!("gmap_create: {e:?}"))?;
    if let Err(e) = g.gmap_map_segment(VM_BASE, 0, G1_SIZE) {
        return kfail!("gmap_map_segment: {e:?}");
    }
    Ok(World { h, g })
}

impl World {
    pub(crate) fn w(&self, g1: u64, v: u64) -> KResult {
        self.g
            .guest_write_u64(g1, v)
            .or_else(|e| kfail!("guest-1 store at {g1:#x}: {e:?}"))
    }

    fn r(&self, g1: u64) -> Result<u64, Outcome> {
        self.g
            .guest_read_u64(g1)
            .or_else(|e| kfail!("guest-1 load at {g1:#x}: {e:?}"))
    }

    /// The host address of guest-1 address `g1`.
    fn vm(&self, g1: u64) -> u64 {
        VM_BASE + g1
    }

    pub(crate) fn shadow(&self, asce: Asce) -> Result<ShadowGmap, Outcome> {
        gmap_shadow(&self.g, asce, 0).or_else(|e| kfail!("gmap_shadow: {e:?}"))
    }
}

/// Guest-2's DAT tables, in guest-1 memory, written by guest-1 stores.
pub(crate) struct G2Tables {
    top: Level,
    top_g1: u64,
    next_crst: u64,
    next_pt: u64,
}

fn empty_of(level: Level) -> u64 {
    match level {
        Level::Segment => SegmentEntry::empty().raw(),
        l => RegionEntry::empty(l).raw(),
    }
}

impl G2Tables {
    pub(crate) fn new(w: &World, top: Level) -> Result<Self, Outcome> {
        let mut t = G2Tables {
            top,
            top_g1: 0,
            next_crst: G1_CRST,
            next_pt: G1_PT,
        };
        t.top_g1 = t.alloc_crst(w, top)?;
        Ok(t)
    }

    pub(crate) fn asce(&self) -> Asce {
        // Cannot fail: the bump keeps tables 16 KiB aligned.
        Asce::new(PhysAddr(self.top_g1), self.top).unwrap_or(Asce::from_raw(0))
    }

    fn alloc_crst(&mut self, w: &World, level: Level) -> Result<u64, Outcome> {
        let a = self.next_crst;
        self.next_crst += 0x4000;
        for i in 0..2048 {
            w.w(a + i * 8, empty_of(level))?;
        }
        Ok(a)
    }

    fn alloc_pt(&mut self, w: &World) -> Result<u64, Outcome> {
        let a = self.next_pt;
        self.next_pt += 0x800;
        for i in 0..256 {
            w.w(a + i * 8, Pte::empty().raw())?;
        }
        Ok(a)
    }

    /// Rewrite the top table empty at its place (after the host lost it).
    fn clear_top(&self, w: &World) -> KResult {
        for i in 0..2048 {
            w.w(self.top_g1 + i * 8, empty_of(self.top))?;
        }
        Ok(())
    }

    /// The guest-1 address of guest-2's entry for `g2` in its table of
    /// `level` (`None`: the page table), making missing tables if `make`.
    fn entry_g1(
        &mut self,
        w: &World,
        g2: u64,
        level: Option<Level>,
        make: bool,
    ) -> Result<Option<u64>, Outcome> {
        let mut l = self.top;
        let mut tbl = self.top_g1;
        loop {
            let ea = tbl + l.index(g2) as u64 * 8;
            if level == Some(l) {
                return Ok(Some(ea));
            }
            let raw = w.r(ea)?;
            match l.lower() {
                Some(lower) => {
                    let e = RegionEntry::from_raw(raw);
                    tbl = if e.is_invalid() {
                        if !make {
                            return Ok(None);
                        }
                        let t = self.alloc_crst(w, lower)?;
                        let e = RegionEntry::table(l, PhysAddr(t)).or_else(|e| kfail!("{e:?}"))?;
                        w.w(ea, e.raw())?;
                        t
                    } else {
                        e.next_origin().0
                    };
                    l = lower;
                }
                None => {
                    let s = SegmentEntry::from_raw(raw);
                    let pt = if s.is_invalid() {
                        if !make {
                            return Ok(None);
                        }
                        let t = self.alloc_pt(w)?;
                        let e =
                            SegmentEntry::table(PhysAddr(t), false).or_else(|e| kfail!("{e:?}"))?;
                        w.w(ea, e.raw())?;
                        t
                    } else {
                        s.page_table().0
                    };
                    return Ok(Some(pt + crate::dat::entry::pte_index(g2) as u64 * 8));
                }
            }
        }
    }

    /// The guest-1 address of guest-2's PTE for `g2`, if its tables exist.
    pub(crate) fn pte_g1(&mut self, w: &World, g2: u64) -> Option<u64> {
        self.entry_g1(w, g2, None, false).ok().flatten()
    }

    /// Map guest-2 page `g2` to guest-1 page `g1`.
    pub(crate) fn map(&mut self, w: &World, g2: u64, g1: u64, prot: Prot) -> KResult {
        let Some(ea) = self.entry_g1(w, g2, None, true)? else {
            return kfail!("no PTE slot for {g2:#x}");
        };
        let p = Pte::new(PhysAddr(g1 & !0xfff), prot).or_else(|e| kfail!("{e:?}"))?;
        w.w(ea, p.raw())
    }

    /// Store `raw` into guest-2's entry for `g2` at `level`.
    fn set(&mut self, w: &World, g2: u64, level: Option<Level>, raw: u64) -> KResult {
        let Some(ea) = self.entry_g1(w, g2, level, true)? else {
            return kfail!("no entry for {g2:#x} at {level:?}");
        };
        w.w(ea, raw)
    }
}

/// Guest-1's hypervisor for the run cases: maps guest-2 pages on demand
/// from a list, declines anything else.
struct LazyGuest1<'a> {
    w: &'a World,
    t: &'a mut G2Tables,
    /// Guest-2 page → (guest-1 page, protection).
    pages: BTreeMap<u64, (u64, Prot)>,
    /// Interruptions seen: (code, guest-2 address).
    seen: alloc::vec::Vec<(u16, u64)>,
    failed: bool,
}

impl super::vsie::Guest1 for LazyGuest1<'_> {
    fn program_interrupt(&mut self, _v: &mut super::guest::Vcpu, code: u16, teid: u64) -> bool {
        let g2 = crate::arch::pgm::Teid(teid).address();
        self.seen.push((code, g2));
        if !super::guest::is_translation(code) {
            return false;
        }
        let Some(&(g1, prot)) = self.pages.get(&g2) else {
            return false;
        };
        if self.t.map(self.w, g2, g1, prot).is_err() {
            self.failed = true;
            return false;
        }
        true
    }
}

use bad_input::{
    checker_catches_a_shadow_entry_whose_source_is_writable,
    every_shadow_allocation_failure_leaves_a_clean_shadow,
    host_store_through_frame_bytes_unshadows_first,
    malformed_guest2_tables_are_reflected_and_change_no_host_table,
    teardown_with_live_shadows_returns_every_page,
};
use differential::random_guest2_addresses_agree_with_a_two_stage_walk;
use runs::{
    edat1_large_guest2_segment_and_region_protection, guest2_protection_is_reflected_to_guest1,
    guest2_sees_guest1_remap_its_page_between_runs,
    guest2_store_through_its_own_page_table_stops_cleanly,
    guest2_store_to_its_own_table_page_lifts_the_protection,
    guest2_sums_an_array_over_tables_guest1_fills_lazily,
    real_space_guest2_runs_on_fake_tables_of_one_shadow,
    shadow_is_reused_while_valid_and_its_tables_say_what_they_shadow,
    top_table_page_lost_drops_the_shadow_and_it_is_rebuilt,
};
use smp::{
    guest2_on_another_cpu_sees_guest1_change_its_mapping,
    two_cpus_faulting_one_segment_shadow_it_once,
    unshadow_while_another_cpu_uses_the_shadow_leaves_nothing_stale,
    whole_shadow_dropped_while_another_cpu_uses_it_leaves_nothing_stale,
};
use warm::{
    guest1_changing_a_guest2_pte_is_seen_by_the_next_access,
    guest1_changing_a_guest2_segment_entry_is_seen,
    host_forgets_its_read_only_choice_when_it_unmaps,
    host_losing_the_top_table_page_drops_the_whole_shadow,
    host_protect_of_a_guest2_page_is_seen_and_refused,
    host_remap_of_a_guest2_page_invalidates_its_shadow_pte,
    host_segment_protection_reaches_the_shadow,
    parent_unmapping_the_guest1_segment_drops_the_shadow_part,
};

ktest_suite!(
    VSIE,
    "vsie",
    [
        shadow_is_reused_while_valid_and_its_tables_say_what_they_shadow,
        guest2_sums_an_array_over_tables_guest1_fills_lazily,
        guest2_sees_guest1_remap_its_page_between_runs,
        top_table_page_lost_drops_the_shadow_and_it_is_rebuilt,
        guest2_protection_is_reflected_to_guest1,
        guest2_store_to_its_own_table_page_lifts_the_protection,
        real_space_guest2_runs_on_fake_tables_of_one_shadow,
        edat1_large_guest2_segment_and_region_protection,
        guest1_changing_a_guest2_pte_is_seen_by_the_next_access,
        guest1_changing_a_guest2_segment_entry_is_seen,
        host_remap_of_a_guest2_page_invalidates_its_shadow_pte,
        host_protect_of_a_guest2_page_is_seen_and_refused,
        parent_unmapping_the_guest1_segment_drops_the_shadow_part,
        host_losing_the_top_table_page_drops_the_whole_shadow,
        host_segment_protection_reaches_the_shadow,
        host_forgets_its_read_only_choice_when_it_unmaps,
        guest2_store_through_its_own_page_table_stops_cleanly,
        malformed_guest2_tables_are_reflected_and_change_no_host_table,
        checker_catches_a_shadow_entry_whose_source_is_writable,
        host_store_through_frame_bytes_unshadows_first,
        every_shadow_allocation_failure_leaves_a_clean_shadow,
        teardown_with_live_shadows_returns_every_page,
        random_guest2_addresses_agree_with_a_two_stage_walk,
    ]
);

ktest_suite!(
    VSIE_SMP,
    "vsie_smp",
    [
        two_cpus_faulting_one_segment_shadow_it_once,
        unshadow_while_another_cpu_uses_the_shadow_leaves_nothing_stale,
        whole_shadow_dropped_while_another_cpu_uses_it_leaves_nothing_stale,
        guest2_on_another_cpu_sees_guest1_change_its_mapping,
    ]
);
