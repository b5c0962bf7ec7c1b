//! smp on the allocator: every CPU allocates and frees at once, with a
//! byte per frame recording who holds it; no frame is handed out twice and
//! none is lost.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use spin::Mutex;

use super::need_smp;
use crate::ktest::{KResult, Rng};
use crate::mm::{self, AllocFlags};
use crate::smp::{self, run_on_all};
use crate::{kassert, kassert_eq};

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

pub(super) fn all_cpus_allocate_and_free_concurrently() -> KResult {
    need_smp()?;
    run_on_all(|_| mm::drain_pcp());
    let start = mm::nr_free_pages_and_desc_slabs();
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
    kassert_eq!(mm::nr_free_pages_and_desc_slabs(), start);
    kassert!(mm::check().is_ok(), "{:?}", mm::check());
    crate::ktest::diag(format_args!(
        "{} CPUs x {} alloc/free operations: no page handed out twice, none lost",
        smp::nr_online(),
        ALLOC_OPS_PER_CPU
    ));
    Ok(())
}

static CHURN_STOP: AtomicBool = AtomicBool::new(false);
/// Other CPUs that have started to allocate, and their operations so far.
static CHURNING: AtomicU64 = AtomicU64::new(0);
static CHURN_OPS: AtomicU64 = AtomicU64::new(0);
/// Checks that failed (u64::MAX: no allocation overlapped them).
static CHECK_FAILS: AtomicU64 = AtomicU64::new(0);
/// Checks CPU 0 made.
static CHECKS_DONE: AtomicU64 = AtomicU64::new(0);
/// At 4 CPUs about one in five of these failed before the lists had locks.
const CHECKS: u64 = 100;

/// The other CPUs allocate and free blocks of orders 0 to 3 (the per-CPU
/// lists' fast paths, their refills and drains) until CPU 0 is done.
fn churn(cpu: usize) {
    if cpu == 0 {
        // Check only once every other CPU is at work.
        while CHURNING.load(Ordering::Acquire) + 1 < smp::nr_online() as u64 {
            core::hint::spin_loop();
        }
        let ops = CHURN_OPS.load(Ordering::Relaxed);
        // At least CHECKS checks, and on until the others' work has
        // overlapped them (a busy host may not run their vCPUs for a
        // while), for at most 20 s.
        let deadline =
            crate::arch::s390x::tod::stck() + crate::arch::s390x::tod::usecs_to_tod(20_000_000);
        let mut done = 0;
        while done < CHECKS
            || (CHURN_OPS.load(Ordering::Relaxed) - ops < CHECKS
                && crate::arch::s390x::tod::stck() < deadline)
        {
            if let Err(e) = mm::check() {
                if CHECK_FAILS.fetch_add(1, Ordering::Relaxed) == 0 {
                    crate::ktest::diag(format_args!("first failed check: {e:?}"));
                }
            }
            done += 1;
        }
        CHECKS_DONE.store(done, Ordering::Relaxed);
        // The checks overlapped the others' work, or the case proves nothing.
        if CHURN_OPS.load(Ordering::Relaxed) == ops {
            CHECK_FAILS.store(u64::MAX, Ordering::Relaxed);
        }
        CHURN_STOP.store(true, Ordering::Release);
        return;
    }
    let mut rng = Rng(0xc4ec_0000 + cpu as u64);
    let mut live: Vec<mm::Pages> = Vec::with_capacity(64);
    CHURNING.fetch_add(1, Ordering::AcqRel);
    while !CHURN_STOP.load(Ordering::Acquire) {
        let r = rng.next_u64();
        if live.len() < 64 && (live.is_empty() || !r.is_multiple_of(3)) {
            if let Ok(p) = mm::alloc_pages((r >> 8) as u32 % 4, AllocFlags::empty()) {
                live.push(p);
            }
        } else {
            let p = live.swap_remove((r >> 16) as usize % live.len());
            let _ = mm::free_pages(p);
        }
        CHURN_OPS.fetch_add(1, Ordering::Relaxed);
    }
    for p in live {
        let _ = mm::free_pages(p);
    }
}

/// `mm::check` on one CPU while the others allocate and free: it must not
/// report a mismatch between the per-CPU lists' counts and the memmap
/// that only the others' work in flight made.
pub(super) fn mm_check_while_other_cpus_allocate() -> KResult {
    need_smp()?;
    CHURN_STOP.store(false, Ordering::Relaxed);
    CHURNING.store(0, Ordering::Relaxed);
    CHECK_FAILS.store(0, Ordering::Relaxed);
    run_on_all(churn);
    run_on_all(|_| mm::drain_pcp());
    let fails = CHECK_FAILS.load(Ordering::Relaxed);
    kassert!(fails != u64::MAX, "no allocation ran while CPU 0 checked");
    kassert_eq!(fails, 0);
    kassert!(mm::check().is_ok(), "{:?}", mm::check());
    crate::ktest::diag(format_args!(
        "{} checks while {} other CPUs made {} allocations and frees",
        CHECKS_DONE.load(Ordering::Relaxed),
        smp::nr_online() - 1,
        CHURN_OPS.load(Ordering::Relaxed)
    ));
    Ok(())
}
