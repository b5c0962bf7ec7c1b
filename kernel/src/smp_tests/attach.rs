//! smp and the attach masks (`dat::context`): an invalidation reaches
//! another CPU exactly when that CPU may hold the entry. CPU 1 holds the
//! space loaded with a warm TLB while CPU 0 changes it: CPU 0 must
//! broadcast, and CPU 1's next access must fault. And the masks follow the
//! rules: a CPU stays in `mm_cpumask` after it unloaded the space, leaves
//! it only through a purge of the space on every CPU, and never while it
//! has the space loaded.
//!
//! CPU 0 and CPU 1 go through numbered steps (`STEP`); CPU 1 waits inside
//! its warm window without printing or loading a control register, so its
//! TLB keeps what its accesses put there. Other CPUs stay idle.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::need_smp;
use crate::arch::pgm::{code, ProgramCheck, TeidAccess};
use crate::dat::entry::Prot;
use crate::dat::kernel::warm_secondary;
use crate::dat::shared::SharedSpace;
use crate::dat::space::AddressSpace;
use crate::dat::tlb::{self, FlushStats};
use crate::ktest::fixtures::{faulted, free_frame, st, tagged_frame};
use crate::ktest::{KResult, Outcome};
use crate::mm::addr::PhysAddr;
use crate::smp::run_on_all;
use crate::{kassert, kassert_eq, kfail};

const VA: u64 = 0x70_0000;
/// A second page in the same table: unmapping `VA` is then one IPTE.
const ANCHOR: u64 = VA + 0x1000;
const CPU1: u64 = 1 << 1;

/// (cpu_attach_mask, mm_cpumask).
type Masks = (u64, u64);
/// What CPU 0 saw at a step: the masks before its change, and the
/// flushes the change issued.
type Seen = (Masks, FlushStats);

static SPACE: Mutex<Option<Arc<SharedSpace>>> = Mutex::new(None);
/// The step CPU 0 has reached (CPU 1 waits for it), and CPU 1's.
static STEP: AtomicU64 = AtomicU64::new(0);
static STEP1: AtomicU64 = AtomicU64::new(0);

/// `at` reaches `n` within 20 s.
fn wait_for(at: &AtomicU64, n: u64) -> bool {
    super::wait_reaches(at, n, 20)
}

fn space_with_page(tag: u64) -> Result<(Arc<SharedSpace>, crate::mm::Pages), Outcome> {
    let mut s = AddressSpace::new(1 << 31, 1 << 31, false).map_err(|_| Outcome::Fail)?;
    let f = tagged_frame(tag)?;
    kassert_eq!(s.map(VA, f.phys(), Prot::ReadWrite), Ok(()));
    kassert_eq!(s.map(ANCHOR, PhysAddr(0), Prot::ReadOnly), Ok(()));
    Ok((Arc::new(SharedSpace::new(s)), f))
}

fn start(space: &Arc<SharedSpace>) {
    *SPACE.lock() = Some(space.clone());
    STEP.store(0, Ordering::Relaxed);
    STEP1.store(0, Ordering::Relaxed);
}

fn shared() -> Option<Arc<SharedSpace>> {
    SPACE.lock().clone()
}

// -- (b) a change from CPU 0 reaches CPU 1's warm TLB ----------------------

/// What CPU 1 saw: its store before the change, its store after the
/// protect, its load after the unmap.
type RemoteSeen = (
    Result<(), ProgramCheck>,
    Result<(), ProgramCheck>,
    Result<u64, ProgramCheck>,
);
static REMOTE: Mutex<Option<RemoteSeen>> = Mutex::new(None);
/// What CPU 0 saw: the masks while CPU 1 had the space loaded, and the
/// flushes the protect and the unmap issued.
static LOCAL: Mutex<Option<(Masks, FlushStats, FlushStats)>> = Mutex::new(None);

fn remote_sees_worker(cpu: usize) {
    let Some(space) = shared() else { return };
    match cpu {
        1 => {
            // SAFETY: the space lives until every CPU returned; VA maps the
            // case's frame.
            let r = unsafe {
                warm_secondary(&space.asce_ref(), |w| {
                    let before = w.store(VA + 8, 0x5eed);
                    STEP1.store(1, Ordering::Release);
                    wait_for(&STEP, 1);
                    let after_protect = w.store(VA + 8, 0xbad);
                    STEP1.store(2, Ordering::Release);
                    wait_for(&STEP, 2);
                    (before, after_protect, w.load(VA))
                })
            };
            STEP1.store(3, Ordering::Release);
            *REMOTE.lock() = r.ok();
        }
        0 => {
            let ok = wait_for(&STEP1, 1);
            let c = space.asce_ref();
            let masks = (c.context().cpu_attach_mask(), c.context().mm_cpumask());
            let f0 = tlb::flush_stats();
            let p = space.protect(VA, Prot::ReadOnly);
            let protect = tlb::flush_stats().since(f0);
            STEP.store(1, Ordering::Release);
            let ok = ok && p.is_ok() && wait_for(&STEP1, 2);
            let f0 = tlb::flush_stats();
            let u = space.unmap(VA);
            let unmap = tlb::flush_stats().since(f0);
            STEP.store(2, Ordering::Release);
            let ok = ok && u.is_ok() && wait_for(&STEP1, 3);
            *LOCAL.lock() = ok.then_some((masks, protect, unmap));
        }
        _ => {}
    }
}

/// CPU 1 has the space loaded and its TLB warm (it stored through the
/// page); CPU 0 makes the page read-only, then unmaps it. The mask has
/// CPU 1, so both IPTEs are broadcast, and CPU 1's next store faults
/// (protection), its next load too (page translation), each with the
/// page's address in the TEID.
pub(super) fn remote_cpu_with_the_space_loaded_sees_the_change() -> KResult {
    need_smp()?;
    let (space, f) = space_with_page(0xe1)?;
    start(&space);
    *REMOTE.lock() = None;
    *LOCAL.lock() = None;
    run_on_all(remote_sees_worker);
    *SPACE.lock() = None;
    let Some((masks, protect, unmap)) = LOCAL.lock().take() else {
        return kfail!(
            "CPU 0 and CPU 1 lost step (a CPU did not get going in 20 s, or a change failed)"
        );
    };
    let Some((before, after_protect, after_unmap)) = REMOTE.lock().take() else {
        return kfail!("CPU 1's warm window was cooled by a control-register load");
    };
    // The hardware's verdict first: CPU 1's TLB lost the entry.
    kassert_eq!(before, Ok(()));
    faulted(
        st(after_protect),
        code::PROTECTION,
        VA + 8,
        TeidAccess::Store,
    )?;
    faulted(after_unmap, code::PAGE_TRANSLATION, VA, TeidAccess::Fetch)?;
    // CPU 1 attached before it loaded the space...
    kassert!(
        masks.0 & CPU1 != 0 && masks.1 & CPU1 != 0,
        "masks {masks:#x?}"
    );
    // ...so both IPTEs were broadcast.
    kassert_eq!((protect.ipte_global, protect.ipte_local), (1, 0));
    kassert_eq!((unmap.ipte_global, unmap.ipte_local), (1, 0));
    drop(space);
    free_frame(f)
}

// -- the masks' life ----------------------------------------------------------

/// What each of CPU 0's steps saw: the masks, and the flushes of its
/// change.
static LIFE: Mutex<[Option<Seen>; 5]> = Mutex::new([None; 5]);
/// CPU 1's stores in step 4: before the purge, after it, after the protect.
type LifeRemote = (
    Result<(), ProgramCheck>,
    Result<(), ProgramCheck>,
    Result<(), ProgramCheck>,
);
static LIFE_REMOTE: Mutex<Option<LifeRemote>> = Mutex::new(None);

fn masks_of(space: &SharedSpace) -> Masks {
    let c = space.asce_ref();
    let ctx = c.context();
    (ctx.cpu_attach_mask(), ctx.mm_cpumask())
}

/// One protect on CPU 0: the masks before it, and its flushes.
fn flip(space: &SharedSpace, prot: Prot) -> Option<Seen> {
    let masks = masks_of(space);
    let f0 = tlb::flush_stats();
    space.protect(VA, prot).ok()?;
    Some((masks, tlb::flush_stats().since(f0)))
}

fn life_worker(cpu: usize) {
    let Some(space) = shared() else { return };
    match cpu {
        1 => {
            // Step 1: load the space, touch the page, unload it.
            if !wait_for(&STEP, 1) {
                return;
            }
            // SAFETY: the space lives until every CPU returned.
            let r = unsafe {
                warm_secondary(&space.asce_ref(), |w| {
                    let _ = w.load(VA);
                })
            };
            STEP1.store(1, Ordering::Release);
            if r.is_err() || !wait_for(&STEP, 3) {
                return;
            }
            // Step 4: load it again and keep it loaded, the TLB warm (a
            // store again after CPU 0's purge, which emptied QEMU's TLB),
            // while CPU 0 protects the page.
            // SAFETY: as above; VA maps the case's frame.
            let r = unsafe {
                warm_secondary(&space.asce_ref(), |w| {
                    let before = w.store(VA + 8, 1);
                    STEP1.store(2, Ordering::Release);
                    wait_for(&STEP, 4);
                    let rewarm = w.store(VA + 8, 2);
                    STEP1.store(3, Ordering::Release);
                    wait_for(&STEP, 5);
                    (before, rewarm, w.store(VA + 8, 3))
                })
            };
            *LIFE_REMOTE.lock() = r.ok();
            STEP1.store(4, Ordering::Release);
        }
        0 => {
            let mut life = [None; 5];
            // Step 0: nobody has loaded the space: local.
            life[0] = flip(&space, Prot::ReadOnly);
            STEP.store(1, Ordering::Release);
            // Step 1: CPU 1 loaded and unloaded it; it stays in
            // mm_cpumask, so the next change is broadcast.
            if wait_for(&STEP1, 1) {
                life[1] = flip(&space, Prot::ReadWrite);
            }
            // Step 2: a purge of the space on every CPU; CPU 1 is not
            // attached, so it leaves mm_cpumask...
            let f0 = tlb::flush_stats();
            space.flush_tlb_mm();
            life[2] = Some((masks_of(&space), tlb::flush_stats().since(f0)));
            // Step 3: ...and the next change is local again.
            life[3] = flip(&space, Prot::ReadWrite);
            STEP.store(3, Ordering::Release);
            // Step 4: CPU 1 has it loaded again: a purge keeps it in the
            // mask, and the protect must reach its warm TLB.
            if wait_for(&STEP1, 2) {
                space.flush_tlb_mm();
                STEP.store(4, Ordering::Release);
                if wait_for(&STEP1, 3) {
                    life[4] = flip(&space, Prot::ReadOnly);
                }
            }
            STEP.store(5, Ordering::Release);
            wait_for(&STEP1, 4);
            *LIFE.lock() = life;
        }
        _ => {}
    }
}

fn flushes(ipte_global: u64, ipte_local: u64) -> FlushStats {
    FlushStats {
        ipte_global,
        ipte_local,
        ..FlushStats::default()
    }
}

/// The masks' rules, step by step on CPU 0 while CPU 1 loads the space:
/// 0. nobody has it loaded: a protect clears locally;
/// 1. CPU 1 loaded it and unloaded it: it is still in `mm_cpumask` (its TLB
///    may keep the entries), so a protect is broadcast;
/// 2. a purge on every CPU (`flush_tlb_mm`) drops CPU 1 from the mask;
/// 3. so a protect is local again;
/// 4. CPU 1 has it loaded again: a purge keeps it in the mask, the protect
///    is broadcast, and CPU 1's next store through its warm TLB faults.
///
/// (QEMU purges its whole TLB on every control-register load, so a mask
/// that dropped CPU 1 when it unloaded the space would go unnoticed by the
/// hardware here: steps 1 and 2 judge the masks themselves.)
pub(super) fn attach_mask_follows_loads_and_purges() -> KResult {
    need_smp()?;
    if !tlb::local_clearing() {
        crate::kskip!("no local TLB clearing (facility 51 absent, or dat.local_clearing=0)");
    }
    let (space, f) = space_with_page(0xe2)?;
    start(&space);
    *LIFE.lock() = [None; 5];
    *LIFE_REMOTE.lock() = None;
    run_on_all(life_worker);
    *SPACE.lock() = None;
    let life = *LIFE.lock();
    let Some(remote) = LIFE_REMOTE.lock().take() else {
        return kfail!("CPU 1 did not get to step 4 (lost step, or its window was cooled)");
    };
    // Step 4 as the hardware judges it: CPU 1's warm entry was purged.
    kassert_eq!((remote.0, remote.1), (Ok(()), Ok(())));
    faulted(st(remote.2), code::PROTECTION, VA + 8, TeidAccess::Store)?;
    let step = |i: usize| life[i].ok_or(i);
    let bad = |i| kfail!("step {i} did not run");
    let (m0, f0) = step(0).or_else(bad)?;
    kassert_eq!((m0, f0), ((0, 0), flushes(0, 1)));
    let (m1, f1) = step(1).or_else(bad)?;
    kassert_eq!((m1, f1), ((0, CPU1), flushes(1, 0)));
    let (m2, f2) = step(2).or_else(bad)?;
    kassert_eq!(m2, (0, 0));
    kassert_eq!((f2.purge_global, f2.purge_local), (1, 0));
    let (m3, f3) = step(3).or_else(bad)?;
    kassert_eq!((m3, f3), ((0, 0), flushes(0, 1)));
    let (m4, f4) = step(4).or_else(bad)?;
    kassert_eq!((m4, f4), ((CPU1, CPU1), flushes(1, 0)));
    drop(space);
    free_frame(f)
}
