//! smp judged by the hardware: every CPU has the shared space loaded (a
//! warm TLB) while they race to map, protect and unmap one address, or one
//! CPU remaps a page while the others flip its protection.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;

use super::need_smp;
use crate::arch::pgm::code;
use crate::dat::entry::Prot;
use crate::dat::entry::{Asce, Pte};
use crate::dat::kernel::warm_secondary;
use crate::dat::shared::SharedSpace;
use crate::dat::space::AddressSpace;
use crate::dat::tlb;
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::mm::{self, AllocFlags};
use crate::smp::{self, run_on_all};
use crate::{kassert, kassert_eq};

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
        let key = core::ptr::from_ref(&self.generation).addr() as u64;
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == n {
            self.count.store(0, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
            smp::wake(key);
        } else {
            // Asleep: a spinning vCPU would take the host core from the
            // ones still on their way here.
            smp::wait_until(key, || self.generation.load(Ordering::Acquire) != g);
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
    let asce = space.asce_ref();
    // SAFETY: the space lives until every CPU returned; every frame mapped
    // writable is one of the case's frames.
    let r = unsafe {
        warm_secondary(&asce, |w| {
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
pub(super) fn cpus_race_map_protect_unmap_of_one_address() -> KResult {
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
        warm_secondary(&space.asce_ref(), |w| {
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
pub(super) fn remap_and_protect_of_one_pte_lose_nothing() -> KResult {
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
    let (kicks, waits) = smp::lock_wait_counts();
    run_on_all(remap_worker);
    let (k, w) = smp::lock_wait_counts();
    crate::ktest::diag(format_args!(
        "page-table lock: {} waiters kicked, {} waits",
        k - kicks,
        w - waits
    ));
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

/// The flush case's space (CPU 0 changes it) and its ASCE (CPU 1 loads it).
static FLUSH: Mutex<Option<AddressSpace>> = Mutex::new(None);
static FLUSH_ASCE: AtomicU64 = AtomicU64::new(0);
static FLUSH_FRAMES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// 2 * round + 1: CPU 1 has loaded the page; 2 * round + 2: CPU 0 changed
/// the PTE and did the round's purge.
static FLUSH_STEP: AtomicU64 = AtomicU64::new(0);
/// What CPU 1 read after each round's purge (a tag, or u64::MAX for none).
static FLUSH_SEEN: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
const FLUSH_VA: u64 = 0x70_0000;

fn flush_wait(step: u64) -> bool {
    super::wait_reaches(&FLUSH_STEP, step, 10)
}

/// Round r: CPU 0 points the PTE at frame `FLUSH_NEXT[r]` without IPTE
/// (or leaves it), then purges as the round says.
const FLUSH_NEXT: [usize; 3] = [1, 1, 0];

fn flush_worker(cpu: usize) {
    let asce = Asce::from_raw(FLUSH_ASCE.load(Ordering::Relaxed));
    match cpu {
        1 => {
            // The space's ASCE with its attach context (CPU 0 set FLUSH up
            // before any CPU runs this).
            let Some(aref) = FLUSH.lock().as_ref().map(|s| s.asce_ref()) else {
                FLUSH_SEEN[0].store(u64::MAX - 1, Ordering::Relaxed);
                FLUSH_STEP.store(u64::MAX, Ordering::Release);
                return;
            };
            // SAFETY: the space lives until every CPU returned; nothing is
            // stored through it.
            let r = unsafe {
                warm_secondary(&aref, |w| {
                    for (round, seen) in FLUSH_SEEN.iter().enumerate() {
                        let _ = w.load(FLUSH_VA);
                        FLUSH_STEP.store(2 * round as u64 + 1, Ordering::Release);
                        if !flush_wait(2 * round as u64 + 2) {
                            return;
                        }
                        seen.store(w.load(FLUSH_VA).unwrap_or(u64::MAX), Ordering::Relaxed);
                    }
                })
            };
            if r.is_err() {
                FLUSH_SEEN[0].store(u64::MAX - 1, Ordering::Relaxed);
            }
            // Let CPU 0 go on if this side gave up.
            FLUSH_STEP.store(u64::MAX, Ordering::Release);
        }
        0 => {
            for (round, next) in FLUSH_NEXT.iter().enumerate() {
                if !flush_wait(2 * round as u64 + 1) {
                    return;
                }
                let pa = PhysAddr(FLUSH_FRAMES[*next].load(Ordering::Relaxed));
                let pte = Pte::new(pa, Prot::ReadWrite).unwrap_or(Pte::empty());
                if let Some(s) = FLUSH.lock().as_mut() {
                    // SAFETY: both frames are the case's; the stale
                    // translation is what the case looks for.
                    let _ = unsafe { s.set_pte_without_invalidation(FLUSH_VA, pte) };
                }
                match round {
                    0 => {}
                    1 => tlb::flush_asce(asce),
                    _ => tlb::flush_asce_without_idte(),
                }
                FLUSH_STEP.store(2 * round as u64 + 2, Ordering::Release);
            }
        }
        _ => {}
    }
}

/// `flush_asce` on one CPU purges what another CPU's TLB holds for the
/// space, on both of its paths: IDTE clearing by ASCE, and the purge it
/// falls back to on a machine without IDTE (reached directly here, QEMU
/// has IDTE). CPU 1 keeps the space loaded (a warm TLB) while CPU 0
/// rewrites the PTE without IPTE; first with no purge at all, which shows
/// CPU 1's TLB really holds the old translation, then with each purge,
/// after which CPU 1 must read the new frame.
pub(super) fn flush_asce_purges_the_tlb_of_every_cpu() -> KResult {
    need_smp()?;
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    let mut frames = Vec::new();
    for (i, slot) in FLUSH_FRAMES.iter().enumerate() {
        let mut f = mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| Outcome::Fail)?;
        f.as_mut_slice()[..8].copy_from_slice(&(0xa0 + i as u64).to_be_bytes());
        slot.store(f.phys().0, Ordering::Relaxed);
        frames.push(f);
    }
    kassert_eq!(s.map(FLUSH_VA, frames[0].phys(), Prot::ReadWrite), Ok(()));
    FLUSH_ASCE.store(s.asce().raw(), Ordering::Relaxed);
    *FLUSH.lock() = Some(s);
    FLUSH_STEP.store(0, Ordering::Relaxed);
    for seen in &FLUSH_SEEN {
        seen.store(0, Ordering::Relaxed);
    }
    run_on_all(flush_worker);
    let s = FLUSH.lock().take();
    let seen: Vec<u64> = FLUSH_SEEN
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .collect();
    // No purge: CPU 1 still reads the old frame (its TLB is warm).
    kassert_eq!(seen[0], 0xa0);
    // IDTE clearing by ASCE reached CPU 1's TLB.
    kassert_eq!(seen[1], 0xa1);
    // So did the purge for machines without IDTE.
    kassert_eq!(seen[2], 0xa0);
    drop(s);
    for f in frames {
        kassert!(mm::free_pages(f).is_ok());
    }
    Ok(())
}
