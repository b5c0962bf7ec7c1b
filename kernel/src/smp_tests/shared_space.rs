//! smp on one shared space, as its tables see it: one CPU maps and unmaps
//! a page while another reads through it, every CPU updates PTEs of shared
//! page tables at once, and a shared space refuses to grow its top.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;

use super::need_smp;
use crate::arch::s390x::dat as hw;
use crate::dat::entry::Prot;
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::shared::SharedSpace;
use crate::dat::space::AddressSpace;
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::mm::{self, AllocFlags};
use crate::smp::{self, run_on_all};
use crate::{kassert, kassert_eq};

static SPACE: Mutex<Option<Arc<SharedSpace>>> = Mutex::new(None);
static FRAME_PA: AtomicU64 = AtomicU64::new(0);
/// Sequence (odd while a change is in flight) and whether the page is mapped.
static SEQ: AtomicU64 = AtomicU64::new(0);
static MAPPED: AtomicBool = AtomicBool::new(false);
static STOP_READERS: AtomicBool = AtomicBool::new(false);
static STALE: AtomicU64 = AtomicU64::new(0);
static CHECKED_FAULTS: AtomicU64 = AtomicU64::new(0);
static CHECKED_READS: AtomicU64 = AtomicU64::new(0);
static POISONED: AtomicU64 = AtomicU64::new(0);
/// The reader's verdicts on stable states, of any kind.
static JUDGED: AtomicU64 = AtomicU64::new(0);
const MAP_ROUNDS: u64 = 1_000;
const TEST_VA: u64 = 0x40_0000;
const MAGIC: u64 = 0x5ca1_ab1e_0000_0042;

/// The mapper sleeps in `wait_for`: the reader wakes it after a count.
static MAPPER_WAITS: AtomicBool = AtomicBool::new(false);

fn key(counter: &AtomicU64) -> u64 {
    core::ptr::from_ref(counter).addr() as u64
}

/// Wait (asleep) until the reader judged the state in place: every state
/// gets its look. A bounded spin here once gave up before the reader's
/// vCPU had run at all, on a busy host, and the case saw no unmapped page
/// in 1,000 rounds. The reader never blocks, so the wait ends.
fn wait_for(counter: &AtomicU64) {
    let c = counter.load(Ordering::Acquire);
    MAPPER_WAITS.store(true, Ordering::SeqCst);
    smp::wait_until(key(counter), || counter.load(Ordering::Acquire) != c);
    MAPPER_WAITS.store(false, Ordering::Relaxed);
}

/// The reader's count, and the mapper's wake-up if it waits: the count
/// and a fence before the flag is read, as `wait_for` sets the flag before
/// its wait checks the count (fenced), so one of them sees the other.
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
    core::sync::atomic::fence(Ordering::SeqCst);
    if MAPPER_WAITS.load(Ordering::Relaxed) {
        smp::wake(key(counter));
    }
}

fn mapper(cpu: usize) {
    let pa = mm::addr::PhysAddr(FRAME_PA.load(Ordering::Relaxed));
    let Some(space) = SPACE.lock().clone() else {
        return;
    };
    for round in 0..MAP_ROUNDS {
        if cpu == 0 {
            SEQ.fetch_add(1, Ordering::AcqRel);
            let _ = SPACE
                .lock()
                .as_mut()
                .map(|s| s.map(TEST_VA, pa, Prot::ReadOnly));
            MAPPED.store(true, Ordering::Release);
            SEQ.fetch_add(1, Ordering::AcqRel);
            // Give the reader a look at each state before it changes.
            wait_for(&JUDGED);
            SEQ.fetch_add(1, Ordering::AcqRel);
            // Unmap the whole segment now and then: the page table goes too.
            let len = if round % 4 == 0 { 1 << 20 } else { 0x1000 };
            let _ = space.unmap_range(TEST_VA, len);
            MAPPED.store(false, Ordering::Release);
            SEQ.fetch_add(1, Ordering::AcqRel);
            wait_for(&JUDGED);
        } else {
            // Other CPUs map and unmap their own pages of the same segment.
            let va = TEST_VA + 0x1000 * (cpu as u64 + 1);
            let _ = space.map(va, pa, Prot::ReadOnly);
            let _ = space.unmap_range(va, 0x1000);
        }
    }
}

fn reader() {
    let Some(asce) = SPACE.lock().as_ref().map(|s| s.asce_ref()) else {
        return;
    };
    // SAFETY: the space lives until every CPU is done.
    unsafe {
        with_secondary_lctlg(&asce, || {
            let mut n = 0u64;
            while !STOP_READERS.load(Ordering::Acquire) {
                // Every other read walks the tables afresh (PTLB purges
                // this CPU's TLB only, and loads no control register): a
                // table freed before the entry pointing at it was
                // invalidated reads as poison (debug builds).
                n += 1;
                if n.is_multiple_of(2) {
                    hw::ptlb();
                }
                let s1 = SEQ.load(Ordering::Acquire);
                let m = MAPPED.load(Ordering::Acquire);
                let r = hw::secondary_load_u64(TEST_VA);
                if r == Ok(crate::dat::table::POISON) {
                    POISONED.fetch_add(1, Ordering::Relaxed);
                }
                let s2 = SEQ.load(Ordering::Acquire);
                if s1 != s2 || s1 % 2 == 1 {
                    continue;
                }
                match (m, r) {
                    (false, Ok(_)) => {
                        STALE.fetch_add(1, Ordering::Relaxed);
                    }
                    (false, Err(_)) => {
                        CHECKED_FAULTS.fetch_add(1, Ordering::Relaxed);
                    }
                    (true, Ok(v)) if v == MAGIC => {
                        CHECKED_READS.fetch_add(1, Ordering::Relaxed);
                    }
                    (true, _) => {
                        STALE.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Judged, whatever the verdict: the mapper goes on.
                count(&JUDGED);
            }
        })
    }
}

pub(super) fn map_unmap_while_another_cpu_reads() -> KResult {
    need_smp()?;
    let mut f = mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| Outcome::Fail)?;
    f.as_mut_slice()[..8].copy_from_slice(&MAGIC.to_be_bytes());
    FRAME_PA.store(f.phys().0, Ordering::Relaxed);
    let s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    *SPACE.lock() = Some(Arc::new(SharedSpace::new(s)));
    for a in [&STALE, &CHECKED_FAULTS, &CHECKED_READS, &POISONED, &JUDGED] {
        a.store(0, Ordering::Relaxed);
    }
    STOP_READERS.store(false, Ordering::Relaxed);
    run_on_all(|cpu| {
        if cpu == 1 {
            reader();
        } else {
            mapper(cpu);
            if cpu == 0 {
                STOP_READERS.store(true, Ordering::Release);
            }
        }
    });
    let space = SPACE.lock().take().ok_or(Outcome::Fail)?;
    // What the mappers left: every page unmapped, the tables consistent.
    let c = space.check();
    kassert_eq!(c.map(|c| c.mapped_pages), Ok(0));
    drop(space);
    kassert!(mm::free_pages(f).is_ok());
    run_on_all(|_| mm::drain_pcp());
    kassert!(mm::check().is_ok(), "{:?}", mm::check());
    kassert_eq!(POISONED.load(Ordering::Relaxed), 0);
    kassert_eq!(STALE.load(Ordering::Relaxed), 0);
    kassert!(
        CHECKED_FAULTS.load(Ordering::Relaxed) > 0,
        "the reader never saw the page unmapped"
    );
    kassert!(
        CHECKED_READS.load(Ordering::Relaxed) > 0,
        "the reader never saw the page mapped"
    );
    crate::ktest::diag(format_args!(
        "{} map/unmap rounds; reader checked {} reads and {} faults, 0 stale",
        MAP_ROUNDS,
        CHECKED_READS.load(Ordering::Relaxed),
        CHECKED_FAULTS.load(Ordering::Relaxed)
    ));
    Ok(())
}

static TABLES: Mutex<Option<Arc<SharedSpace>>> = Mutex::new(None);
static PTE_ERRORS: AtomicU64 = AtomicU64::new(0);
const PTE_ROUNDS: u64 = 40;
const PAGES_PER_CPU: u64 = 16;
const SEGMENTS: u64 = 4;
const PT_BASE: u64 = 0x200_0000;

fn pte_worker(cpu: usize) {
    let Some(space) = TABLES.lock().clone() else {
        return;
    };
    let err = shared_tables_work(&space, cpu);
    PTE_ERRORS.fetch_add(err, Ordering::Relaxed);
}

/// The tables every CPU then shares: one page per segment.
pub(crate) fn shared_tables_space() -> Result<SharedSpace, crate::dat::space::SpaceError> {
    let s = AddressSpace::new(1 << 31, 1 << 31, false)?;
    let shared = SharedSpace::new(s);
    for seg in 0..SEGMENTS {
        shared.map(PT_BASE + seg * (1 << 20), PhysAddr(0), Prot::ReadOnly)?;
    }
    Ok(shared)
}

/// CPU `cpu`'s share of the shared-table stress: its own PTEs in every
/// shared page table, mapped, protected both ways, looked up, and now and
/// then unmapped and mapped again. Returns the operations that went wrong.
/// Also what `x.py bench` runs (all CPUs' shares on one CPU).
pub(crate) fn shared_tables_work(space: &SharedSpace, cpu: usize) -> u64 {
    let frame = mm::addr::PhysAddr(0x1000 * (cpu as u64 + 1));
    let mut err = 0;
    for round in 0..PTE_ROUNDS {
        for seg in 0..SEGMENTS {
            for p in 0..PAGES_PER_CPU {
                let va = PT_BASE + seg * (1 << 20) + (cpu as u64 * PAGES_PER_CPU + p + 1) * 0x1000;
                // Map (the table exists: shared lock + ptl), protect both
                // ways, and now and then unmap (exclusive).
                let r = space.map(va, frame, Prot::ReadWrite);
                // The first round maps; later rounds find the page mapped.
                let want = if round == 0 {
                    Ok(())
                } else {
                    Err(crate::dat::space::SpaceError::AlreadyMapped)
                };
                err += u64::from(r != want);
                err += u64::from(space.protect(va, Prot::ReadOnly).is_err());
                err += u64::from(space.lookup(va) != Some((frame, Prot::ReadOnly)));
                err += u64::from(space.protect(va, Prot::ReadWrite).is_err());
                if round % 10 == 9 {
                    err += u64::from(space.unmap(va).is_err());
                    err += u64::from(space.map(va, frame, Prot::ReadWrite).is_err());
                }
            }
        }
    }
    err
}

pub(super) fn cpus_update_ptes_of_shared_tables_in_parallel() -> KResult {
    need_smp()?;
    let shared = match shared_tables_space() {
        Ok(s) => Arc::new(s),
        Err(e) => return crate::kfail!("the shared tables: {e:?}"),
    };
    *TABLES.lock() = Some(shared.clone());
    PTE_ERRORS.store(0, Ordering::Relaxed);
    let f0 = crate::dat::tlb::flush_stats();
    run_on_all(pte_worker);
    let f = crate::dat::tlb::flush_stats().since(f0);
    *TABLES.lock() = None;
    kassert_eq!(PTE_ERRORS.load(Ordering::Relaxed), 0);
    for cpu in 0..smp::nr_online() {
        for seg in 0..SEGMENTS {
            for p in 0..PAGES_PER_CPU {
                let va = PT_BASE + seg * (1 << 20) + (cpu as u64 * PAGES_PER_CPU + p + 1) * 0x1000;
                kassert_eq!(
                    shared.lookup(va),
                    Some((
                        mm::addr::PhysAddr(0x1000 * (cpu as u64 + 1)),
                        Prot::ReadWrite
                    ))
                );
            }
        }
    }
    let c = shared.check();
    kassert!(c.is_ok(), "{:?}", c);
    kassert_eq!(
        c.map(|c| (c.pte_tables, c.mapped_pages))
            .unwrap_or_default(),
        (
            SEGMENTS,
            SEGMENTS * (1 + PAGES_PER_CPU * smp::nr_online() as u64)
        )
    );
    crate::ktest::diag(format_args!(
        "{} CPUs x {} rounds x {} PTEs of {} shared page tables: map, protect twice, look up",
        smp::nr_online(),
        PTE_ROUNDS,
        SEGMENTS * PAGES_PER_CPU,
        SEGMENTS
    ));
    // No CPU has the space loaded: every invalidation may clear locally,
    // where a broadcast would make each a rendezvous of all vCPUs in QEMU.
    crate::ktest::diag(format_args!(
        "IPTE {} broadcast, {} local; IDTE {} broadcast, {} local",
        f.ipte_global, f.ipte_local, f.idte_global, f.idte_local
    ));
    drop(shared);
    run_on_all(|_| mm::drain_pcp());
    Ok(())
}

/// A shared space never grows its top: other CPUs may have its ASCE loaded.
pub(super) fn shared_space_refuses_to_grow() -> KResult {
    let s = AddressSpace::new(1 << 31, 1 << 42, false).map_err(|_| Outcome::Fail)?;
    let shared = SharedSpace::new(s);
    let asce = shared.asce();
    kassert_eq!(
        shared.map(1 << 31, PhysAddr(0), Prot::ReadOnly),
        Err(crate::dat::space::SpaceError::OutOfRange)
    );
    kassert_eq!(shared.asce(), asce);
    kassert_eq!(
        shared.map((1 << 31) - 0x1000, PhysAddr(0), Prot::ReadOnly),
        Ok(())
    );
    kassert_eq!(shared.check().map(|c| c.mapped_pages), Ok(1));
    Ok(())
}
