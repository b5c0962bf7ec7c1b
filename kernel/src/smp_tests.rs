//! SMP stress (KTAP, run by x.py at -smp 2 and 4): every CPU works on the
//! shared allocator, address space and gmap at once, with fixed operation
//! counts and deterministic seeds per CPU.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use spin::Mutex;

use crate::arch::s390x::dat as hw;
use crate::dat::entry::{Asce, Prot};
use crate::dat::kernel::with_secondary_lctlg;
use crate::dat::shared::SharedSpace;
use crate::dat::space::AddressSpace;
use crate::gmap::{self, Access, Gmap, HostMm};
use crate::ktest::{KResult, Outcome, Rng};
use crate::mm::{self, AllocFlags};
use crate::smp::{self, run_on_all};
use crate::{kassert, kassert_eq, kskip, ktest_suite};

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

/// One byte per frame: 1 while some CPU holds it.
static OWNED: Mutex<Option<Arc<Vec<AtomicU8>>>> = Mutex::new(None);
static DOUBLE: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);
static OPS: AtomicU64 = AtomicU64::new(0);
const ALLOC_OPS_PER_CPU: u64 = 20_000;

fn claim(owned: &[AtomicU8], pfn: u64, order: u32, take: bool) {
    for p in pfn..pfn + (1 << order) {
        let was = owned[p as usize].swap(take as u8, Ordering::AcqRel);
        if take && was != 0 {
            DOUBLE.fetch_add(1, Ordering::Relaxed);
        }
        if !take && was != 1 {
            LOST.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn alloc_worker(cpu: usize) {
    // Hold no lock over the work: each worker keeps its own reference.
    let Some(owned) = OWNED.lock().clone() else {
        return;
    };
    let owned: &[AtomicU8] = &owned;
    let mut rng = Rng(0x5eed_0000 + cpu as u64 * 7919);
    let mut live: [(u64, u32); 64] = [(0, 0); 64];
    let mut n = 0;
    for _ in 0..ALLOC_OPS_PER_CPU {
        let r = rng.next_u64();
        if n < live.len() && (n == 0 || !r.is_multiple_of(3)) {
            let order = (r >> 8) as u32 % 4;
            if let Ok(mut p) = mm::alloc_pages(order, AllocFlags::empty()) {
                let tag = ((cpu as u64) << 48) | p.pfn().0;
                let s = p.as_mut_slice();
                let len = s.len();
                s[..8].copy_from_slice(&tag.to_be_bytes());
                s[len - 8..].copy_from_slice(&tag.to_be_bytes());
                let (pfn, order) = p.into_raw();
                claim(owned, pfn.0, order, true);
                live[n] = (pfn.0, order);
                n += 1;
            }
        } else {
            let i = (r >> 16) as usize % n;
            let (pfn, order) = live[i];
            live[i] = live[n - 1];
            n -= 1;
            // SAFETY: the block is this worker's, from into_raw above.
            let mut p = unsafe { mm::Pages::from_raw(mm::addr::Pfn(pfn), order) };
            let tag = ((cpu as u64) << 48) | pfn;
            let s = p.as_mut_slice();
            let len = s.len();
            if s[..8] != tag.to_be_bytes() || s[len - 8..] != tag.to_be_bytes() {
                DOUBLE.fetch_add(1, Ordering::Relaxed);
            }
            claim(owned, pfn, order, false);
            let _ = mm::free_pages(p);
        }
        OPS.fetch_add(1, Ordering::Relaxed);
    }
    for &(pfn, order) in &live[..n] {
        claim(owned, pfn, order, false);
        // SAFETY: as above.
        let _ = mm::free_pages(unsafe { mm::Pages::from_raw(mm::addr::Pfn(pfn), order) });
    }
    mm::drain_pcp();
}

fn all_cpus_allocate_and_free_concurrently() -> KResult {
    need_smp()?;
    run_on_all(|_| mm::drain_pcp());
    let start = mm::nr_free_pages();
    *OWNED.lock() = Some(Arc::new(
        (0..mm::memmap().nr_pages())
            .map(|_| AtomicU8::new(0))
            .collect(),
    ));
    DOUBLE.store(0, Ordering::Relaxed);
    LOST.store(0, Ordering::Relaxed);
    OPS.store(0, Ordering::Relaxed);
    run_on_all(alloc_worker);
    *OWNED.lock() = None;
    kassert_eq!(DOUBLE.load(Ordering::Relaxed), 0);
    kassert_eq!(LOST.load(Ordering::Relaxed), 0);
    kassert_eq!(
        OPS.load(Ordering::Relaxed),
        ALLOC_OPS_PER_CPU * smp::nr_online() as u64
    );
    run_on_all(|_| mm::drain_pcp());
    kassert_eq!(mm::nr_free_pages(), start);
    kassert!(mm::check().is_ok(), "{:?}", mm::check());
    crate::ktest::diag(format_args!(
        "{} CPUs x {} alloc/free operations: no page handed out twice, none lost",
        smp::nr_online(),
        ALLOC_OPS_PER_CPU
    ));
    Ok(())
}

static SPACE: Mutex<Option<Arc<SharedSpace>>> = Mutex::new(None);
static SPACE_ASCE: AtomicU64 = AtomicU64::new(0);
static FRAME_PA: AtomicU64 = AtomicU64::new(0);
/// Sequence (odd while a change is in flight) and whether the page is mapped.
static SEQ: AtomicU64 = AtomicU64::new(0);
static MAPPED: AtomicBool = AtomicBool::new(false);
static STOP_READERS: AtomicBool = AtomicBool::new(false);
static STALE: AtomicU64 = AtomicU64::new(0);
static CHECKED_FAULTS: AtomicU64 = AtomicU64::new(0);
static CHECKED_READS: AtomicU64 = AtomicU64::new(0);
const MAP_ROUNDS: u64 = 1_000;
const TEST_VA: u64 = 0x40_0000;
const MAGIC: u64 = 0x5ca1_ab1e_0000_0042;

/// Spin until `counter` moves (bounded: the reader may be slow to start).
fn wait_for(counter: &AtomicU64) {
    let c = counter.load(Ordering::Acquire);
    for _ in 0..200_000 {
        if counter.load(Ordering::Acquire) != c {
            return;
        }
        core::hint::spin_loop();
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
            wait_for(&CHECKED_READS);
            SEQ.fetch_add(1, Ordering::AcqRel);
            // Unmap the whole segment now and then: the page table goes too.
            let len = if round % 4 == 0 { 1 << 20 } else { 0x1000 };
            let _ = space.unmap_range(TEST_VA, len);
            MAPPED.store(false, Ordering::Release);
            SEQ.fetch_add(1, Ordering::AcqRel);
            wait_for(&CHECKED_FAULTS);
        } else {
            // Other CPUs map and unmap their own pages of the same segment.
            let va = TEST_VA + 0x1000 * (cpu as u64 + 1);
            let _ = space.map(va, pa, Prot::ReadOnly);
            let _ = space.unmap_range(va, 0x1000);
        }
    }
}

fn reader() {
    let asce = Asce::from_raw(SPACE_ASCE.load(Ordering::Relaxed));
    // SAFETY: the space lives until every CPU is done.
    unsafe {
        with_secondary_lctlg(asce, || {
            while !STOP_READERS.load(Ordering::Acquire) {
                let s1 = SEQ.load(Ordering::Acquire);
                let m = MAPPED.load(Ordering::Acquire);
                let r = hw::secondary_load_u64(TEST_VA);
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
            }
        })
    }
}

fn map_unmap_while_another_cpu_reads() -> KResult {
    need_smp()?;
    let mut f = mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| Outcome::Fail)?;
    f.as_mut_slice()[..8].copy_from_slice(&MAGIC.to_be_bytes());
    FRAME_PA.store(f.phys().0, Ordering::Relaxed);
    let s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    SPACE_ASCE.store(s.asce().raw(), Ordering::Relaxed);
    *SPACE.lock() = Some(Arc::new(SharedSpace::new(s)));
    for a in [&STALE, &CHECKED_FAULTS, &CHECKED_READS] {
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
    *SPACE.lock() = None;
    let _ = mm::free_pages(f);
    run_on_all(|_| mm::drain_pcp());
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

type SharedGmap = (Arc<Gmap>, Arc<Mutex<HostMm>>);

static GMAP: Mutex<Option<SharedGmap>> = Mutex::new(None);
static FAULT_ERRORS: AtomicU64 = AtomicU64::new(0);
const G_BASE: u64 = 0x800_0000;

fn concurrent_gmap_faults_link_a_segment_once() -> KResult {
    need_smp()?;
    let h = HostMm::new(1 << 31).map_err(|_| Outcome::Fail)?;
    let g = gmap::gmap_create(&h, (1 << 31) - 1).map_err(|_| Outcome::Fail)?;
    kassert_eq!(g.gmap_map_segment(0x1000_0000, G_BASE, 1 << 20), Ok(()));
    let (links0, _) = g.link_counts();
    *GMAP.lock() = Some((Arc::new(g), h));
    FAULT_ERRORS.store(0, Ordering::Relaxed);
    run_on_all(|cpu| {
        let g = GMAP.lock().as_ref().map(|(g, _)| g.clone());
        if let Some(g) = g {
            for i in 0..16u64 {
                let gaddr = G_BASE + ((cpu as u64 * 16 + i) % 256) * 0x1000;
                if g.gmap_fault(gaddr, Access::Write).is_err() {
                    FAULT_ERRORS.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let (g, h) = GMAP.lock().take().ok_or(Outcome::Fail)?;
    kassert_eq!(FAULT_ERRORS.load(Ordering::Relaxed), 0);
    kassert_eq!(g.link_counts().0, links0 + 1);
    kassert_eq!(g.check(), Ok(1));
    drop(g);
    drop(h);
    run_on_all(|_| mm::drain_pcp());
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
    PTE_ERRORS.fetch_add(err, Ordering::Relaxed);
}

fn cpus_update_ptes_of_shared_tables_in_parallel() -> KResult {
    need_smp()?;
    let s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    let shared = Arc::new(SharedSpace::new(s));
    // One page per segment first: the tables every CPU then shares.
    for seg in 0..SEGMENTS {
        kassert_eq!(
            shared.map(
                PT_BASE + seg * (1 << 20),
                mm::addr::PhysAddr(0),
                Prot::ReadOnly
            ),
            Ok(())
        );
    }
    *TABLES.lock() = Some(shared.clone());
    PTE_ERRORS.store(0, Ordering::Relaxed);
    run_on_all(pte_worker);
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
    drop(shared);
    run_on_all(|_| mm::drain_pcp());
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
