//! SMP stress (KTAP, run by x.py at -smp 2 and 4): every CPU works on the
//! shared allocator, address space and gmap at once, with fixed operation
//! counts and deterministic seeds per CPU.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::arch::s390x::tod;
use crate::ktest::KResult;
use crate::smp::{self, run_on_all};
use crate::{kassert_eq, kskip, ktest_suite};

mod allocator;
mod attach;
mod gmaps;
mod ptlock;
mod shared_space;
mod warm;

use allocator::{all_cpus_allocate_and_free_concurrently, mm_check_while_other_cpus_allocate};
use attach::{
    attach_mask_follows_loads_and_purges, remote_cpu_with_the_space_loaded_sees_the_change,
};
use gmaps::{
    concurrent_gmap_faults_link_a_segment_once,
    guest_store_faults_after_a_host_protect_on_another_cpu,
};
use ptlock::pte_writers_wait_for_a_held_page_table_lock;
use shared_space::{
    cpus_update_ptes_of_shared_tables_in_parallel, map_unmap_while_another_cpu_reads,
    shared_space_refuses_to_grow,
};
pub(crate) use shared_space::{shared_tables_space, shared_tables_work};
use warm::{
    cpus_race_map_protect_unmap_of_one_address, flush_asce_purges_the_tlb_of_every_cpu,
    remap_and_protect_of_one_pte_lose_nothing,
};

/// Spin until `at` reaches `n`, for at most `secs` seconds of TOD (a vCPU
/// may be slow to get going on a busy host); false if it did not. No
/// control-register load, no print: safe inside a warm-TLB window.
fn wait_reaches(at: &AtomicU64, n: u64, secs: u64) -> bool {
    let deadline = tod::stck() + tod::usecs_to_tod(secs * 1_000_000);
    while at.load(Ordering::Acquire) < n {
        if tod::stck() > deadline {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

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

/// The unused CPU slot the next case brings online in the middle of a
/// `run_on_all`.
static LATE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A CPU that timed out at bring-up may still report in later, at any
/// moment: here between `run_on_all`'s two loops (its own `f` runs there).
/// It was given no work, so `run_on_all` must not wait for it; the CPUs it
/// did give work to must each run it once. Runs with one CPU too.
fn run_on_all_ignores_a_cpu_that_comes_online_late() -> KResult {
    let late = smp::nr_cpus();
    if late >= RAN.len() {
        kskip!("every CPU slot holds a real CPU");
    }
    LATE.store(late, Ordering::Relaxed);
    let online = smp::nr_online();
    let before: Vec<u64> = RAN.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let caller = smp::cpu_nr();
    CALLER.store(caller, Ordering::Relaxed);
    run_on_all(|cpu| {
        RAN[cpu].fetch_add(1, Ordering::Relaxed);
        if cpu == CALLER.load(Ordering::Relaxed) {
            let _ = smp::testing::set_online_of_unused_slot(LATE.load(Ordering::Relaxed), true);
        }
    });
    let came = smp::nr_online();
    kassert_eq!(smp::testing::set_online_of_unused_slot(late, false), Ok(()));
    kassert_eq!(came, online + 1);
    kassert_eq!(smp::nr_online(), online);
    for cpu in 0..online {
        kassert_eq!(RAN[cpu].load(Ordering::Relaxed), before[cpu] + 1);
    }
    kassert_eq!(RAN[late].load(Ordering::Relaxed), before[late]);
    Ok(())
}

static CALLER: AtomicUsize = AtomicUsize::new(0);

ktest_suite!(
    SMP,
    "smp",
    [
        every_cpu_runs_work,
        run_on_all_ignores_a_cpu_that_comes_online_late,
        all_cpus_allocate_and_free_concurrently,
        mm_check_while_other_cpus_allocate,
        cpus_update_ptes_of_shared_tables_in_parallel,
        map_unmap_while_another_cpu_reads,
        concurrent_gmap_faults_link_a_segment_once,
        cpus_race_map_protect_unmap_of_one_address,
        remap_and_protect_of_one_pte_lose_nothing,
        pte_writers_wait_for_a_held_page_table_lock,
        flush_asce_purges_the_tlb_of_every_cpu,
        shared_space_refuses_to_grow,
        guest_store_faults_after_a_host_protect_on_another_cpu,
        remote_cpu_with_the_space_loaded_sees_the_change,
        attach_mask_follows_loads_and_purges,
    ]
);

fn crash_on_a_secondary_cpu() -> KResult {
    need_smp()?;
    // The dump must name CPU 1 and the run end with a failing status.
    run_on_all(|cpu| {
        if cpu == 1 {
            crash_here();
        }
    });
    Ok(())
}

ktest_suite!(SELFTEST_SMP_CRASH, "selftest_smp_crash", [crash_on_a_secondary_cpu], explicit: true);

/// Until `f` is true or 10 s have passed; false on the timeout.
fn wait_until(f: impl Fn() -> bool) -> bool {
    let deadline = tod::stck() + tod::usecs_to_tod(10_000_000);
    while !f() {
        if tod::stck() > deadline {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

fn crash_here() {
    // SAFETY: deliberately crashes the run on this CPU (an operation
    // exception outside any exception-table entry).
    unsafe { core::arch::asm!(".short 0x0000") };
}

/// CPUs 0 and 1 meet here (for the first time in a run: each selftest
/// suite ends it).
static MET: AtomicU64 = AtomicU64::new(0);

fn meet() -> bool {
    MET.fetch_add(1, Ordering::AcqRel);
    wait_until(|| MET.load(Ordering::Acquire) >= 2)
}

/// At the same moment CPU 1 crashes and CPU 0 ends the run as a passing
/// run does. One of them may end it, promptly, with one status marker, and
/// the crash must not be lost: its dump and its status.
fn crash_while_another_cpu_ends_the_run() -> KResult {
    need_smp()?;
    run_on_all(|cpu| match cpu {
        0 if meet() => crate::panic::exit(crate::panic::ExitStatus::Success),
        1 if meet() => crash_here(),
        _ => {}
    });
    Ok(())
}

ktest_suite!(
    SELFTEST_SMP_CRASH_AND_EXIT,
    "selftest_smp_crash_and_exit",
    [crash_while_another_cpu_ends_the_run],
    explicit: true,
);

/// At the same moment CPU 1 crashes and CPU 0 panics: one of them ends the
/// run, promptly, with one complete report and one status marker.
fn crash_while_another_cpu_panics() -> KResult {
    need_smp()?;
    run_on_all(|cpu| match cpu {
        0 if meet() => panic!("selftest panic on CPU 0, on purpose, as CPU 1 crashes"),
        1 if meet() => crash_here(),
        _ => {}
    });
    Ok(())
}

ktest_suite!(
    SELFTEST_SMP_CRASH_AND_PANIC,
    "selftest_smp_crash_and_panic",
    [crash_while_another_cpu_panics],
    explicit: true,
);

static CHATTER: AtomicU64 = AtomicU64::new(0);

/// CPU 0 prints line after line while CPU 1 crashes: the crash dump must
/// come out whole, with none of CPU 0's lines inside it.
fn crash_while_another_cpu_prints() -> KResult {
    need_smp()?;
    run_on_all(|cpu| match cpu {
        0 => {
            // Until CPU 1's crash stops this CPU (10 s: it did not).
            let deadline = tod::stck() + tod::usecs_to_tod(10_000_000);
            while tod::stck() < deadline {
                let n = CHATTER.fetch_add(1, Ordering::AcqRel);
                crate::pr_info!("selftest: chatter line {} from CPU 0", n);
            }
        }
        1 if wait_until(|| CHATTER.load(Ordering::Acquire) >= 3) => crash_here(),
        _ => {}
    });
    Ok(())
}

ktest_suite!(
    SELFTEST_SMP_CRASH_PRINTING,
    "selftest_smp_crash_while_printing",
    [crash_while_another_cpu_prints],
    explicit: true,
);
