//! The page-table lock judged directly: CPU 1 holds the lock of a PTE
//! table while CPU 0 changes a PTE of it. A writer that takes the lock
//! queues behind CPU 1 (its ticket shows) and changes nothing meanwhile;
//! one that skips it changes the PTE under CPU 1's lock. Once the writer
//! has queued, CPU 1 changes the PTE itself: a writer that read the PTE
//! before it took the lock builds on a stale entry, which the result
//! shows. No race window has to be hit by chance: the verdict is the same
//! on every run.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::need_smp;
use crate::arch::s390x::tod;
use crate::dat::entry::{pte_index, Prot, Pte};
use crate::dat::shared::SharedSpace;
use crate::dat::space::AddressSpace;
use crate::dat::table;
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::mm::ptdesc;
use crate::mm::{self, AllocFlags};
use crate::smp::run_on_all;
use crate::{kassert, kassert_eq, kfail};

const VA: u64 = 0x68_0000;

static SPACE: Mutex<Option<Arc<SharedSpace>>> = Mutex::new(None);
/// The page table of `VA` (both pages of the case are in it).
static PTO: AtomicU64 = AtomicU64::new(0);
/// The case's two frames.
static FRAMES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Per op: the PTE as CPU 0 found it right after the op returned.
static AFTER: [AtomicU64; OPS] = [const { AtomicU64::new(0) }; OPS];
/// The frame remap said the page had before (CPU 1's).
static REMAP_OLD: AtomicU64 = AtomicU64::new(0);
/// 3 * op + 1: CPU 1 holds the lock; + 2: CPU 0 calls the op; + 3: CPU 1
/// let the lock go and recorded what it saw.
static STEP: AtomicU64 = AtomicU64::new(0);
/// Per op: the op returned (CPU 0): 1 Ok, 2 AlreadyMapped, 3 another
/// error.
static DONE: [AtomicU64; OPS] = [const { AtomicU64::new(0) }; OPS];
/// Per op, what CPU 1 saw while it held the lock: 1 the writer queued,
/// 2 the writer returned first, 3 neither before the deadline.
static SEEN: [AtomicU64; OPS] = [const { AtomicU64::new(0) }; OPS];
/// Per op: the PTE changed while CPU 1 held its table's lock.
static CHANGED: [AtomicU64; OPS] = [const { AtomicU64::new(0) }; OPS];
const OPS: usize = 3;
const OP_NAMES: [&str; OPS] = ["protect", "remap", "map into the existing table"];

fn wait_step(step: u64) -> bool {
    super::wait_reaches(&STEP, step, 10)
}

/// The address each op changes.
fn op_va(op: usize) -> u64 {
    if op == 2 {
        VA + 0x1000
    } else {
        VA
    }
}

fn frame(i: usize) -> PhysAddr {
    PhysAddr(FRAMES[i].load(Ordering::Relaxed))
}

fn run_op(space: &SharedSpace, op: usize) -> u64 {
    let r = match op {
        0 => space.protect(VA, Prot::ReadOnly),
        1 => space.remap(VA, frame(1)).map(|old| {
            REMAP_OLD.store(old.0, Ordering::Relaxed);
        }),
        _ => space.map(VA + 0x1000, frame(1), Prot::ReadWrite),
    };
    match r {
        Ok(()) => 1,
        Err(crate::dat::space::SpaceError::AlreadyMapped) => 2,
        Err(_) => 3,
    }
}

/// What CPU 1 writes into the op's PTE under the lock, once the writer has
/// queued: protect then finds frame 1 (it started from frame 0), remap
/// finds frame 0 (from frame 1) and map finds a page where there was none.
fn holder_pte(op: usize) -> Pte {
    let (f, prot) = match op {
        0 => (frame(1), Prot::ReadWrite),
        1 => (frame(0), Prot::ReadOnly),
        _ => (frame(0), Prot::ReadWrite),
    };
    Pte::new(f, prot).unwrap_or(Pte::empty())
}

/// The PTE of `va` in the case's table, read or written by CPU 1 without
/// the space lock (it holds the table's lock, below the space lock in the
/// lock order: taking the space lock now could wait for a writer that
/// waits for this table's lock).
fn slot(va: u64) -> &'static AtomicU64 {
    let pa = PhysAddr(PTO.load(Ordering::Relaxed) + pte_index(va) as u64 * 8);
    // SAFETY: a PTE of the case's live page table (the space outlives the
    // workers and the segment keeps its table).
    unsafe { table::entry(pa) }
}

fn worker(cpu: usize) {
    let Some(space) = SPACE.lock().clone() else {
        return;
    };
    match cpu {
        0 => {
            for (op, done) in DONE.iter().enumerate() {
                if !wait_step(3 * op as u64 + 1) {
                    return;
                }
                STEP.store(3 * op as u64 + 2, Ordering::Release);
                let r = run_op(&space, op);
                AFTER[op].store(slot(op_va(op)).load(Ordering::Acquire), Ordering::Relaxed);
                done.store(r, Ordering::Release);
                if !wait_step(3 * op as u64 + 3) {
                    return;
                }
            }
        }
        1 => {
            let Some(pt) = table::table_ptdesc(PhysAddr(PTO.load(Ordering::Relaxed))) else {
                STEP.store(u64::MAX, Ordering::Release);
                return;
            };
            let ptl = ptdesc::ptlock_ptr(pt);
            for op in 0..OPS {
                let guard = ptl.lock();
                let before = slot(op_va(op)).load(Ordering::Acquire);
                STEP.store(3 * op as u64 + 1, Ordering::Release);
                let seen = if wait_step(3 * op as u64 + 2) {
                    let deadline = tod::stck() + tod::usecs_to_tod(10_000_000);
                    loop {
                        if ptl.is_contended() {
                            break 1;
                        }
                        if DONE[op].load(Ordering::Acquire) != 0 {
                            break 2;
                        }
                        if tod::stck() > deadline {
                            break 3;
                        }
                        core::hint::spin_loop();
                    }
                } else {
                    3
                };
                if slot(op_va(op)).load(Ordering::Acquire) != before {
                    CHANGED[op].store(1, Ordering::Relaxed);
                }
                if seen == 1 {
                    // The writer waits for this lock: a change now is one
                    // it must see. The space is loaded on no CPU, so no
                    // TLB holds the entry.
                    slot(op_va(op)).store(holder_pte(op).raw(), Ordering::Release);
                }
                SEEN[op].store(seen, Ordering::Relaxed);
                drop(guard);
                STEP.store(3 * op as u64 + 3, Ordering::Release);
            }
        }
        _ => {}
    }
}

/// protect, remap and a map into an existing page table each take the
/// table's lock before they read the PTE: with the lock held by another
/// CPU they queue (the ticket lock's next-ticket half moves on), the PTE
/// stays as it was until the lock is let go, and what they do is built on
/// the PTE the holder left: protect keeps the holder's frame, remap
/// reports it as the old one, map finds the page mapped.
pub(super) fn pte_writers_wait_for_a_held_page_table_lock() -> KResult {
    need_smp()?;
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    let frames = [
        mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| Outcome::Fail)?,
        mm::alloc_pages(0, AllocFlags::ZERO).map_err(|_| Outcome::Fail)?,
    ];
    kassert_eq!(s.map(VA, frames[0].phys(), Prot::ReadWrite), Ok(()));
    let Some(pto) = s.pte_table(VA) else {
        return kfail!("no page table after map");
    };
    kassert_eq!(s.pte_table(VA + 0x1000), Some(pto));
    PTO.store(pto.0, Ordering::Relaxed);
    for (i, f) in frames.iter().enumerate() {
        FRAMES[i].store(f.phys().0, Ordering::Relaxed);
    }
    REMAP_OLD.store(0, Ordering::Relaxed);
    STEP.store(0, Ordering::Relaxed);
    for a in DONE.iter().chain(&SEEN).chain(&CHANGED).chain(&AFTER) {
        a.store(0, Ordering::Relaxed);
    }
    *SPACE.lock() = Some(Arc::new(SharedSpace::new(s)));
    run_on_all(worker);
    let shared = SPACE.lock().take().ok_or(Outcome::Fail)?;
    for op in 0..OPS {
        let (name, seen) = (OP_NAMES[op], SEEN[op].load(Ordering::Relaxed));
        kassert!(
            CHANGED[op].load(Ordering::Relaxed) == 0,
            "{}: the PTE changed while another CPU held its table's lock",
            name
        );
        kassert!(
            seen == 1,
            "{}: {}",
            name,
            match seen {
                2 => "returned without waiting for the held lock",
                3 => "neither queued on the lock nor returned in 10 s",
                _ => "the holder never ran",
            }
        );
        // map finds the holder's page; protect and remap succeed.
        let want = if op == 2 { 2 } else { 1 };
        kassert!(
            DONE[op].load(Ordering::Relaxed) == want,
            "{}: result {} (1 Ok, 2 AlreadyMapped, 3 another error), expected {}",
            name,
            DONE[op].load(Ordering::Relaxed),
            want
        );
    }
    let (f0, f1) = (frames[0].phys(), frames[1].phys());
    // Each op's own result, built on the holder's PTE: protect kept frame
    // 1, remap replaced frame 0, map left the holder's page alone.
    for (op, (f, prot)) in [
        (f1, Prot::ReadOnly),
        (f1, Prot::ReadOnly),
        (f0, Prot::ReadWrite),
    ]
    .into_iter()
    .enumerate()
    {
        let got = Pte::from_raw(AFTER[op].load(Ordering::Relaxed));
        kassert!(
            got.is_present() && got.frame() == f && got.prot() == prot,
            "{}: left {:?}, expected {:?} {:?} (built on the PTE the lock holder left)",
            OP_NAMES[op],
            got,
            f,
            prot
        );
    }
    // remap read the holder's frame 0, not the frame 1 protect left.
    kassert_eq!(PhysAddr(REMAP_OLD.load(Ordering::Relaxed)), f0);
    kassert_eq!(shared.lookup(VA), Some((f1, Prot::ReadOnly)));
    kassert_eq!(shared.lookup(VA + 0x1000), Some((f0, Prot::ReadWrite)));
    kassert_eq!(shared.check().map(|c| c.mapped_pages), Ok(2));
    drop(shared);
    for f in frames {
        kassert!(mm::free_pages(f).is_ok());
    }
    run_on_all(|_| mm::drain_pcp());
    Ok(())
}
