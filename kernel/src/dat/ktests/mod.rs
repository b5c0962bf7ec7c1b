//! DAT on the CPU's own translation (QEMU's emulation): test spaces are
//! loaded as the secondary space (CR7) and probed with secondary-space
//! loads, stores and LRAG while the kernel runs in home-space mode. The
//! software walker is checked against what the hardware does.

use super::kernel::with_secondary_lctlg;
use super::space::AddressSpace;
use super::walk::Facilities;
use crate::arch::pgm::ProgramCheck;
use crate::arch::s390x::dat as hw;
use crate::ktest::Outcome;
use crate::mm::{self, Pages};
use crate::{kfail, ktest_suite};

mod differential;
mod invalidation;
mod tables;
mod translation;

use differential::hardware_matches_software_walker;
use invalidation::{
    change_without_invalidation_is_stale, changes_through_the_api_are_never_stale,
    partial_unmap_counts_ipte_per_page, unmap_frees_tables_only_after_the_flush,
};
use tables::{
    accessors_round_trip, map_and_unmap_1gib_leaves_no_table, two_pte_tables_share_one_page,
};
use translation::{
    addressing_beyond_memory, alias_region1_space, alias_region2_space, alias_region3_space,
    alias_segment_space, asce_type_exception, edat1_large_segment, edat2_large_region,
    kernel_runs_with_dat_in_home_space, protection_exceptions,
    translation_exceptions_with_code_and_teid, translation_specification_exception,
};

const NONE: Facilities = Facilities {
    edat1: false,
    edat2: false,
};
const R1_LIMIT: u128 = 1 << 64;

fn space(limit: u128, max: u128) -> Result<AddressSpace, Outcome> {
    AddressSpace::new(limit, max, false).or_else(|e| kfail!("AddressSpace::new: {e:?}"))
}

fn give_back(p: Pages) {
    let _ = mm::free_pages(p);
}

/// Run `f` with `s` as the secondary space.
fn in_space_lctlg<R>(s: &AddressSpace, f: impl FnOnce() -> R) -> R {
    // SAFETY: `s` is borrowed for the whole call, so its tables stay live.
    unsafe { with_secondary_lctlg(&s.asce_ref(), f) }
}

fn load_lctlg(s: &AddressSpace, va: u64) -> Result<u64, ProgramCheck> {
    in_space_lctlg(s, || hw::secondary_load_u64(va))
}

/// Store `v` at `va` of `s`; the frames tests map are their own.
fn store_lctlg(s: &AddressSpace, va: u64, v: u64) -> Result<(), ProgramCheck> {
    // SAFETY: every frame the tests map writable is a page they allocated.
    in_space_lctlg(s, || unsafe { hw::secondary_store_u64(va, v) })
}

ktest_suite!(
    DAT,
    "dat",
    [
        kernel_runs_with_dat_in_home_space,
        alias_segment_space,
        alias_region3_space,
        alias_region2_space,
        alias_region1_space,
        translation_exceptions_with_code_and_teid,
        asce_type_exception,
        protection_exceptions,
        translation_specification_exception,
        addressing_beyond_memory,
    ]
);

ktest_suite!(
    TLB,
    "tlb",
    [
        change_without_invalidation_is_stale,
        changes_through_the_api_are_never_stale
    ]
);

ktest_suite!(
    DAT_DIFF,
    "dat_differential",
    [hardware_matches_software_walker]
);

ktest_suite!(
    FRAGMENTS,
    "pte_fragments",
    [
        two_pte_tables_share_one_page,
        map_and_unmap_1gib_leaves_no_table
    ]
);

ktest_suite!(
    GATHER,
    "mmu_gather",
    [
        unmap_frees_tables_only_after_the_flush,
        partial_unmap_counts_ipte_per_page
    ]
);

ktest_suite!(PTDESC, "ptdesc", [accessors_round_trip]);
ktest_suite!(EDAT, "dat_edat", [edat1_large_segment, edat2_large_region]);
