//! SMP stress (KTAP, run by x.py at -smp 2 and 4): every CPU works on the
//! shared allocator, address space and gmap at once, with fixed operation
//! counts and deterministic seeds per CPU.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use spin::Mutex;

use crate::arch::pgm::code;
use crate::arch::s390x::dat as hw;
use crate::dat::entry::{Asce, Prot};
use crate::dat::kernel::{warm_secondary, with_secondary_lctlg};
use crate::dat::shared::SharedSpace;
use crate::dat::space::AddressSpace;
use crate::gmap::{self, Access, Gmap, HostMm};
use crate::ktest::{KResult, Outcome, Rng};
use crate::mm::addr::PhysAddr;
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
static POISONED: AtomicU64 = AtomicU64::new(0);
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
    for a in [&STALE, &CHECKED_FAULTS, &CHECKED_READS, &POISONED] {
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

type SharedGmap = (Arc<Gmap>, Arc<Mutex<HostMm>>);

static GMAP: Mutex<Option<SharedGmap>> = Mutex::new(None);
static FAULT_ERRORS: AtomicU64 = AtomicU64::new(0);
const G_BASE: u64 = 0x800_0000;

fn guest_tag(gaddr: u64) -> u64 {
    0x6a00_0000_0000_0000 | gaddr
}

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
            // Then through the gmap itself, on this CPU's own DAT: each CPU
            // stores a tag in its pages and reads it back.
            // SAFETY: the gmap and its host live until every CPU returned;
            // guest memory is the host's frames, populated above.
            let r = unsafe {
                warm_secondary(g.asce(), |w| {
                    for i in 0..16u64 {
                        let gaddr = G_BASE + ((cpu as u64 * 16 + i) % 256) * 0x1000;
                        let tag = guest_tag(gaddr);
                        if w.store(gaddr, tag).is_err() || w.load(gaddr) != Ok(tag) {
                            FAULT_ERRORS.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            };
            if r.is_err() {
                FAULT_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let (g, h) = GMAP.lock().take().ok_or(Outcome::Fail)?;
    kassert_eq!(FAULT_ERRORS.load(Ordering::Relaxed), 0);
    // The host's frames hold what every CPU stored through the gmap.
    for cpu in 0..smp::nr_online() as u64 {
        for i in 0..16u64 {
            let gaddr = G_BASE + ((cpu * 16 + i) % 256) * 0x1000;
            let pa = h
                .lock()
                .frame(0x1000_0000 + (gaddr - G_BASE))
                .map(|f| f.phys().0);
            let v = pa.map(crate::arch::s390x::probe::load_u64);
            kassert_eq!(v, Some(Ok(guest_tag(gaddr))));
        }
    }
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

// -- judged by the hardware: every CPU has the space loaded (warm) --------

/// A barrier for all online CPUs (generation counting).
struct Barrier {
    count: AtomicU64,
    generation: AtomicU64,
}

impl Barrier {
    const fn new() -> Self {
        Barrier {
            count: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    fn wait(&self) {
        let n = smp::nr_online() as u64;
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == n {
            self.count.store(0, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
        } else {
            while self.generation.load(Ordering::Acquire) == g {
                core::hint::spin_loop();
            }
        }
    }
}

static BARRIER: Barrier = Barrier::new();
static RACE: Mutex<Option<Arc<SharedSpace>>> = Mutex::new(None);
static RACE_FRAMES: [AtomicU64; crate::sclp::info::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::sclp::info::MAX_CPUS];
static MAP_WINS: AtomicU64 = AtomicU64::new(0);
static UNMAP_WINS: AtomicU64 = AtomicU64::new(0);
static WINNER: AtomicU64 = AtomicU64::new(0);
/// First wrong outcome seen: (round << 16 | phase << 8 | cpu) + 1, 0 = none.
static RACE_BAD: AtomicU64 = AtomicU64::new(0);
static RACE_BAD_COUNT: AtomicU64 = AtomicU64::new(0);
const RACE_ROUNDS: u64 = 300;
const RACE_VA: u64 = 0x60_0000;

fn race_bad(round: u64, phase: u64, cpu: usize) {
    RACE_BAD_COUNT.fetch_add(1, Ordering::Relaxed);
    let _ = RACE_BAD.compare_exchange(
        0,
        ((round << 16) | (phase << 8) | cpu as u64) + 1,
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
}

fn race_worker(cpu: usize) {
    let Some(space) = RACE.lock().clone() else {
        return;
    };
    let frame = PhysAddr(RACE_FRAMES[cpu].load(Ordering::Relaxed));
    let asce = space.asce();
    // SAFETY: the space lives until every CPU returned; every frame mapped
    // writable is one of the case's frames.
    let r = unsafe {
        warm_secondary(asce, |w| {
            for round in 0..RACE_ROUNDS {
                // Phase 0: all map the same address; exactly one wins.
                BARRIER.wait();
                if space.map(RACE_VA, frame, Prot::ReadWrite).is_ok() {
                    MAP_WINS.fetch_add(1, Ordering::AcqRel);
                    WINNER.store(cpu as u64, Ordering::Release);
                }
                BARRIER.wait();
                // Phase 1: every CPU reads the winner's frame and stores.
                let winner = WINNER.load(Ordering::Acquire);
                if w.load(RACE_VA) != Ok((winner + 1) << 32) {
                    race_bad(round, 1, cpu);
                }
                if w.store(RACE_VA + 8 * (cpu as u64 + 1), round).is_err() {
                    race_bad(round, 1, cpu);
                }
                BARRIER.wait();
                // Phase 2: one CPU protects it; every CPU's next store faults.
                if cpu == 0 && space.protect(RACE_VA, Prot::ReadOnly).is_err() {
                    race_bad(round, 2, cpu);
                }
                BARRIER.wait();
                match w.store(RACE_VA + 8 * (cpu as u64 + 1), !round) {
                    Err(pc) if pc.code == code::PROTECTION => {}
                    _ => race_bad(round, 2, cpu),
                }
                BARRIER.wait();
                // Phase 3: all unmap it; exactly one wins, and every CPU's
                // next load faults (the anchor page keeps the page table).
                if space.unmap(RACE_VA).is_ok() {
                    UNMAP_WINS.fetch_add(1, Ordering::AcqRel);
                }
                BARRIER.wait();
                match w.load(RACE_VA) {
                    Err(pc) if pc.code == code::PAGE_TRANSLATION => {}
                    _ => race_bad(round, 3, cpu),
                }
            }
        })
    };
    if r.is_err() {
        race_bad(RACE_ROUNDS, 9, cpu);
    }
}

/// All CPUs, each with the space loaded: race to map one address (exactly
/// one wins, and every CPU then reads its frame), store, see one CPU's
/// protect (every CPU's next store faults), and race to unmap (exactly one
/// wins, every CPU's next load faults). Judged by each CPU's own accesses
/// with a warm TLB: an IPTE that purged only locally fails it.
fn cpus_race_map_protect_unmap_of_one_address() -> KResult {
    need_smp()?;
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    let mut frames = Vec::new();
    for (cpu, slot) in RACE_FRAMES.iter().enumerate().take(smp::nr_online()) {
        let mut f = mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| Outcome::Fail)?;
        f.as_mut_slice()[..8].copy_from_slice(&((cpu as u64 + 1) << 32).to_be_bytes());
        slot.store(f.phys().0, Ordering::Relaxed);
        frames.push(f);
    }
    // The anchor keeps the page table, so the race runs on its PTE under
    // the shared lock and the ptlock.
    kassert_eq!(
        s.map(RACE_VA + 0x1000, frames[0].phys(), Prot::ReadOnly),
        Ok(())
    );
    *RACE.lock() = Some(Arc::new(SharedSpace::new(s)));
    for a in [&MAP_WINS, &UNMAP_WINS, &RACE_BAD, &RACE_BAD_COUNT] {
        a.store(0, Ordering::Relaxed);
    }
    run_on_all(race_worker);
    let shared = RACE.lock().take().ok_or(Outcome::Fail)?;
    let bad = RACE_BAD.load(Ordering::Relaxed);
    kassert!(
        bad == 0,
        "{} wrong outcomes; first: round {} phase {} cpu {}",
        RACE_BAD_COUNT.load(Ordering::Relaxed),
        (bad - 1) >> 16,
        ((bad - 1) >> 8) & 0xff,
        (bad - 1) & 0xff
    );
    kassert_eq!(MAP_WINS.load(Ordering::Relaxed), RACE_ROUNDS);
    kassert_eq!(UNMAP_WINS.load(Ordering::Relaxed), RACE_ROUNDS);
    let c = shared.check();
    kassert_eq!(c.map(|c| c.mapped_pages), Ok(1));
    drop(shared);
    for f in frames {
        kassert!(mm::free_pages(f).is_ok());
    }
    run_on_all(|_| mm::drain_pcp());
    crate::ktest::diag(format_args!(
        "{} CPUs x {} rounds of map/store/protect/unmap races, each judged by every CPU's warm TLB",
        smp::nr_online(),
        RACE_ROUNDS
    ));
    Ok(())
}

static REMAP: Mutex<Option<Arc<SharedSpace>>> = Mutex::new(None);
static REMAP_FRAMES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static REMAP_DONE: AtomicBool = AtomicBool::new(false);
static REMAP_BAD: AtomicU64 = AtomicU64::new(0);
/// Rounds of the remap race: enough at 2 CPUs that the race without the
/// ptlock loses an update (about one in a thousand rounds, measured), fewer
/// with more vCPUs than host cores, where each round is slower.
fn remap_rounds() -> u64 {
    if smp::nr_online() <= 2 {
        20_000
    } else {
        4_000
    }
}

fn remap_worker(cpu: usize) {
    let Some(space) = REMAP.lock().clone() else {
        return;
    };
    if cpu != 0 {
        // The others flip the protection of the same PTE as fast as they can.
        let mut i = 0u64;
        while !REMAP_DONE.load(Ordering::Acquire) {
            let p = if i.is_multiple_of(2) {
                Prot::ReadOnly
            } else {
                Prot::ReadWrite
            };
            if space.protect(RACE_VA, p).is_err() {
                REMAP_BAD.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
        }
        return;
    }
    // SAFETY: the space lives until every CPU returned; the case's frames.
    let r = unsafe {
        warm_secondary(space.asce(), |w| {
            for round in 0..remap_rounds() {
                let which = (round % 2) as usize;
                let pa = PhysAddr(REMAP_FRAMES[which].load(Ordering::Relaxed));
                if space.remap(RACE_VA, pa).is_err() {
                    REMAP_BAD.fetch_add(1, Ordering::Relaxed);
                }
                // A protect racing with the remap must not bring the old
                // frame back: the next load reads the new one. While another
                // CPU changes the PTE (IPTE, then the new entry) it is
                // invalid for a moment: such a load takes a page-translation
                // exception and is retried, as a fault handler would.
                // (A vCPU may be descheduled between its IPTE and its store,
                // so the bound is generous; the old frame is never right.)
                let mut v = w.load(RACE_VA);
                for _ in 0..50_000_000u64 {
                    match v {
                        Err(pc) if pc.code == code::PAGE_TRANSLATION => v = w.load(RACE_VA),
                        _ => break,
                    }
                }
                if v != Ok(0xf0 + which as u64) {
                    REMAP_BAD.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    if r.is_err() {
        REMAP_BAD.fetch_add(1, Ordering::Relaxed);
    }
    REMAP_DONE.store(true, Ordering::Release);
}

/// One CPU remaps a page back and forth while the others flip its
/// protection: each change is a read-modify-write of one PTE, so without
/// the ptlock a protect would write back the frame it read and undo the
/// remap. The remapping CPU reads through its warm TLB after every remap.
fn remap_and_protect_of_one_pte_lose_nothing() -> KResult {
    need_smp()?;
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    let mut frames = Vec::new();
    for i in 0..2u64 {
        let mut f = mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| Outcome::Fail)?;
        f.as_mut_slice()[..8].copy_from_slice(&(0xf0 + i).to_be_bytes());
        REMAP_FRAMES[i as usize].store(f.phys().0, Ordering::Relaxed);
        frames.push(f);
    }
    kassert_eq!(s.map(RACE_VA, frames[1].phys(), Prot::ReadWrite), Ok(()));
    *REMAP.lock() = Some(Arc::new(SharedSpace::new(s)));
    REMAP_BAD.store(0, Ordering::Relaxed);
    REMAP_DONE.store(false, Ordering::Relaxed);
    run_on_all(remap_worker);
    let shared = REMAP.lock().take().ok_or(Outcome::Fail)?;
    kassert_eq!(REMAP_BAD.load(Ordering::Relaxed), 0);
    let last = frames[((remap_rounds() - 1) % 2) as usize].phys();
    kassert_eq!(shared.lookup(RACE_VA).map(|(pa, _)| pa), Some(last));
    drop(shared);
    for f in frames {
        kassert!(mm::free_pages(f).is_ok());
    }
    run_on_all(|_| mm::drain_pcp());
    Ok(())
}

/// A shared space never grows its top: other CPUs may have its ASCE loaded.
fn shared_space_refuses_to_grow() -> KResult {
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

// -- a guest running on one CPU while another changes the host ------------

// The guest program: store a counting r5 at 0(r2) until the doubleword at
// 0(r3) is non-zero, then store once more and SVC 2. The host makes the
// page at r2 read-only before it sets the flag, so that last store must
// fault; SVC 2 means it went through a stale TLB entry.
core::arch::global_asm!(
    ".section .rodata.guest_store_loop,\"a\"",
    ".balign 8",
    ".globl zdat_guest_store_loop_start",
    "zdat_guest_store_loop_start:",
    "2:  stg %r5,0(%r2)",
    "    aghi %r5,1",
    "    lg %r6,0(%r3)",
    "    cghi %r6,0",
    "    je 2b",
    "    stg %r5,0(%r2)",
    "    svc 2",
    "    .short 0x0000",
    ".globl zdat_guest_store_loop_end",
    "zdat_guest_store_loop_end:",
);

extern "C" {
    static zdat_guest_store_loop_start: u8;
    static zdat_guest_store_loop_end: u8;
}

fn guest_store_loop() -> &'static [u8] {
    // SAFETY: the two symbols bracket the guest program in .rodata.
    unsafe {
        let s = core::ptr::addr_of!(zdat_guest_store_loop_start);
        let e = core::ptr::addr_of!(zdat_guest_store_loop_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

static GUEST: Mutex<Option<SharedGmap>> = Mutex::new(None);
/// What the guest run ended with: 1 = protection exit at the data page,
/// 2 = SVC 2 (the store after the flag went through), 3 = anything else.
static GUEST_END: AtomicU64 = AtomicU64::new(0);
static GUEST_RUNNING: AtomicBool = AtomicBool::new(false);
/// Whether CPU 0 saw the guest's counter move before it protected (else
/// the guest's TLB may not have been warm, and the case proves nothing).
static GUEST_WARM: AtomicBool = AtomicBool::new(false);
static GUEST_PROTECTED: AtomicBool = AtomicBool::new(false);
static GUEST_FLAGGED: AtomicBool = AtomicBool::new(false);
static GUEST_DATA_PA: AtomicU64 = AtomicU64::new(0);
static GUEST_FLAG_PA: AtomicU64 = AtomicU64::new(0);
const GUEST_VM: u64 = 0x1000_0000;
const GUEST_CODE: u64 = 0x1000;
const GUEST_DATA: u64 = 0x10_0000;
const GUEST_FLAG: u64 = 0x10_1000;

fn guest_cpu(cpu: usize) {
    let Some((g, h)) = GUEST.lock().clone() else {
        return;
    };
    if cpu == 1 {
        let mut v = gmap::guest::Vcpu::new(&g, GUEST_CODE);
        v.ctx.gprs[2] = GUEST_DATA;
        v.ctx.gprs[3] = GUEST_FLAG;
        GUEST_RUNNING.store(true, Ordering::Release);
        let end = match v.run(&g, 100) {
            Err(gmap::guest::GuestStop::Program(c, _)) if c == code::PROTECTION => 1,
            Ok(2) => 2,
            _ => 3,
        };
        GUEST_END.store(end, Ordering::Release);
        return;
    }
    if cpu != 0 {
        return;
    }
    // Wait until the guest stores in a loop with its TLB warm (its faults
    // resolved: the counter in the data page moves), then protect the page
    // in the host and raise the flag the guest polls. The flag is raised
    // whatever happened, so the guest always ends.
    let data = GUEST_DATA_PA.load(Ordering::Relaxed);
    let flag = GUEST_FLAG_PA.load(Ordering::Relaxed);
    let mut last = 0;
    let mut moving = 0;
    for _ in 0..50_000_000u64 {
        let c = crate::arch::s390x::probe::load_u64(data).unwrap_or(0);
        if GUEST_RUNNING.load(Ordering::Acquire) && c > 1000 && c != last {
            moving += 1;
            if moving > 100 {
                break;
            }
        }
        last = c;
        core::hint::spin_loop();
    }
    GUEST_WARM.store(moving > 100, Ordering::Relaxed);
    let p = h.lock().protect(GUEST_VM + GUEST_DATA, Prot::ReadOnly);
    GUEST_PROTECTED.store(p.is_ok(), Ordering::Relaxed);
    // SAFETY: the flag page is the host frame this case populated.
    let f = unsafe { crate::arch::s390x::probe::store_u64(flag, 1) };
    GUEST_FLAGGED.store(f.is_ok(), Ordering::Relaxed);
}

/// A guest runs on CPU 1, storing in a loop, while CPU 0 makes the page
/// read-only in the host and then raises a flag the guest polls: the
/// guest's next store must fault. This is the QEMU IPTE deviation as a
/// running guest meets it (`tlb::IPTE_GUEST_ALIAS`).
fn guest_store_faults_after_a_host_protect_on_another_cpu() -> KResult {
    need_smp()?;
    let h = HostMm::new(1 << 31).map_err(|_| Outcome::Fail)?;
    let g = gmap::gmap_create(&h, (1 << 31) - 1).map_err(|_| Outcome::Fail)?;
    kassert_eq!(g.gmap_map_segment(GUEST_VM, 0, 2 << 20), Ok(()));
    {
        let mut hm = h.lock();
        for a in [GUEST_CODE, GUEST_DATA, GUEST_FLAG] {
            kassert!(hm.populate(GUEST_VM + a, true).is_ok());
        }
        let code = guest_store_loop();
        let Some(f) = hm.frame_bytes(GUEST_VM + GUEST_CODE) else {
            return Err(Outcome::Fail);
        };
        f[..code.len()].copy_from_slice(code);
        for (a, slot) in [(GUEST_DATA, &GUEST_DATA_PA), (GUEST_FLAG, &GUEST_FLAG_PA)] {
            let Some(f) = hm.frame(GUEST_VM + a) else {
                return Err(Outcome::Fail);
            };
            slot.store(f.phys().0, Ordering::Relaxed);
        }
    }
    *GUEST.lock() = Some((Arc::new(g), h));
    GUEST_END.store(0, Ordering::Relaxed);
    for b in [
        &GUEST_RUNNING,
        &GUEST_WARM,
        &GUEST_PROTECTED,
        &GUEST_FLAGGED,
    ] {
        b.store(false, Ordering::Relaxed);
    }
    run_on_all(guest_cpu);
    let (g, h) = GUEST.lock().take().ok_or(Outcome::Fail)?;
    kassert!(
        GUEST_WARM.load(Ordering::Relaxed),
        "the guest was not seen storing in a loop before the protect"
    );
    kassert!(GUEST_PROTECTED.load(Ordering::Relaxed));
    kassert!(GUEST_FLAGGED.load(Ordering::Relaxed));
    kassert_eq!(GUEST_END.load(Ordering::Acquire), 1);
    kassert_eq!(g.check(), Ok(2));
    drop(g);
    drop(h);
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
        cpus_race_map_protect_unmap_of_one_address,
        remap_and_protect_of_one_pte_lose_nothing,
        shared_space_refuses_to_grow,
        guest_store_faults_after_a_host_protect_on_another_cpu,
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
