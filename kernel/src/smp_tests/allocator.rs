//! smp on the allocator: every CPU allocates and frees at once, with a
//! byte per frame recording who holds it; no frame is handed out twice and
//! none is lost.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

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
