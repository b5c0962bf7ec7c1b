//! SMP stress (KTAP, run by x.py at -smp 2 and 4): every CPU works on the
//! shared allocator, address space and gmap at once, with fixed operation
//! counts and deterministic seeds per CPU.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::ktest::KResult;
use crate::smp::{self, run_on_all};
use crate::{kassert_eq, kskip, ktest_suite};

mod allocator;
mod attach;
mod gmaps;
mod shared_space;
mod warm;

use allocator::all_cpus_allocate_and_free_concurrently;
use attach::{
    attach_mask_follows_loads_and_purges, remote_cpu_with_the_space_loaded_sees_the_change,
};
use gmaps::{
    concurrent_gmap_faults_link_a_segment_once,
    guest_store_faults_after_a_host_protect_on_another_cpu,
};
use shared_space::{
    cpus_update_ptes_of_shared_tables_in_parallel, map_unmap_while_another_cpu_reads,
    shared_space_refuses_to_grow,
};
pub(crate) use shared_space::{shared_tables_space, shared_tables_work};
use warm::{cpus_race_map_protect_unmap_of_one_address, remap_and_protect_of_one_pte_lose_nothing};

fn need_smp() -> KResult {
    if smp::nr_online() < 2 {
        kskip!("one CPU: run with --smp 2 or more");
    }
    Ok(())
}

static RAN: [AtomicU64; crate::sclp::info::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::sclp::info::MAX_CPUS];

fn every_cpu_runs_work() -> KResult {
    need_smp()?;
    kassert_eq!(smp::nr_online(), smp::nr_cpus());
    let before: Vec<u64> = RAN.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    run_on_all(|cpu| {
        RAN[cpu].fetch_add(1, Ordering::Relaxed);
    });
    for cpu in 0..smp::nr_online() {
        kassert_eq!(RAN[cpu].load(Ordering::Relaxed), before[cpu] + 1);
    }
    Ok(())
}

ktest_suite!(
    SMP,
    "smp",
    [
        every_cpu_runs_work,
        all_cpus_allocate_and_free_concurrently,
        cpus_update_ptes_of_shared_tables_in_parallel,
        map_unmap_while_another_cpu_reads,
        concurrent_gmap_faults_link_a_segment_once,
        cpus_race_map_protect_unmap_of_one_address,
        remap_and_protect_of_one_pte_lose_nothing,
        shared_space_refuses_to_grow,
        guest_store_faults_after_a_host_protect_on_another_cpu,
        remote_cpu_with_the_space_loaded_sees_the_change,
        attach_mask_follows_loads_and_purges,
    ]
);

fn crash_on_a_secondary_cpu() -> KResult {
    need_smp()?;
    run_on_all(|cpu| {
        if cpu == 1 {
            // SAFETY: deliberately crashes the run from CPU 1; the dump must
            // name that CPU and the run must end with a failing status.
            unsafe { core::arch::asm!(".short 0x0000") };
        }
    });
    Ok(())
}

ktest_suite!(SELFTEST_SMP_CRASH, "selftest_smp_crash", [crash_on_a_secondary_cpu], explicit: true);
