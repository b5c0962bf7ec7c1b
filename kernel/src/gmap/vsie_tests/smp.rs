//! vsie on several CPUs: concurrent shadow faults on one guest-2 segment
//! shadow it once, and an unshadow while another CPU keeps the shadow
//! loaded (its TLB warm) leaves that CPU no stale translation.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Mutex;

use super::{world, G2Tables, World, G1_DATA};
use crate::arch::pgm::code;
use crate::dat::entry::{Level, Prot};
use crate::dat::kernel::warm_secondary;
use crate::gmap::shadow::ShadowGmap;
use crate::ktest::{KResult, Outcome};
use crate::smp::{self, run_on_all};
use crate::{kassert_eq, kskip};

/// One guest-2 segment of 64 pages, each page holding its own tag.
const SEG: u64 = (2u64 << 31) | (3 << 20);
const PAGES: u64 = 64;

fn tag(p: u64) -> u64 {
    0x7a00_0000_0000_0000 | p
}

struct Shared {
    w: World,
    s: ShadowGmap,
}

static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
static ERRORS: AtomicU64 = AtomicU64::new(0);
/// The first error a CPU met, for the diagnostic.
static FIRST_ERROR: Mutex<Option<(usize, u64, alloc::string::String)>> = Mutex::new(None);

fn need_smp() -> KResult {
    if smp::nr_online() < 2 {
        kskip!("one CPU: run with --smp 2 or more");
    }
    Ok(())
}

fn setup() -> Result<(World, G2Tables), Outcome> {
    let w = world()?;
    let mut t = G2Tables::new(&w, Level::Region3)?;
    for p in 0..PAGES {
        w.w(G1_DATA + p * 0x1000, tag(p))?;
        t.map(&w, SEG + p * 0x1000, G1_DATA + p * 0x1000, Prot::ReadWrite)?;
    }
    Ok((w, t))
}

fn shadow_of_shared() -> Option<ShadowGmap> {
    SHARED.lock().as_ref().map(|s| s.s.clone())
}

/// Every CPU faults in all 64 pages of one guest-2 segment, in its own
/// order, at once, then reads each tag through the shadow on its own DAT:
/// the segment's shadow page table and segment table were made exactly
/// once, and the checker passes. (Shadow faults serialize on the host
/// lock, so this shows that a fault finding its work done by another CPU
/// makes nothing twice and breaks no entry; it cannot find a race inside
/// one fault.)
pub(super) fn two_cpus_faulting_one_segment_shadow_it_once() -> KResult {
    need_smp()?;
    let (w, t) = setup()?;
    let s = w.shadow(t.asce())?;
    *SHARED.lock() = Some(Shared { w, s: s.clone() });
    ERRORS.store(0, Ordering::Relaxed);
    run_on_all(|cpu| {
        let Some(s) = shadow_of_shared() else {
            return;
        };
        for i in 0..PAGES {
            let p = (i * (2 * cpu as u64 + 1) + cpu as u64 * 7) % PAGES;
            if let Err(e) = s.shadow_fault(SEG + p * 0x1000, false) {
                ERRORS.fetch_add(1, Ordering::Relaxed);
                *FIRST_ERROR.lock() = Some((cpu, p, alloc::format!("{e:?}")));
            }
        }
        // SAFETY: the shadow lives until every CPU returned.
        let r = unsafe {
            warm_secondary(&s.asce_ref(), |wm| {
                (0..PAGES)
                    .filter(|&p| wm.load(SEG + p * 0x1000) != Ok(tag(p)))
                    .count() as u64
            })
        };
        match r {
            Ok(0) => {}
            Ok(n) => {
                ERRORS.fetch_add(n, Ordering::Relaxed);
                *FIRST_ERROR.lock() = Some((cpu, n, "tags wrong through the shadow".into()));
            }
            Err(c) => {
                ERRORS.fetch_add(1, Ordering::Relaxed);
                *FIRST_ERROR.lock() = Some((cpu, c.0, "warm window cooled".into()));
            }
        }
    });
    let shared = SHARED.lock().take().ok_or(Outcome::Fail)?;
    kassert_eq!(
        ERRORS.load(Ordering::Relaxed),
        0,
        "(cpu, page or count, what): {:?}",
        FIRST_ERROR.lock().take()
    );
    // Segment table and page table: two shadow tables, made once each.
    kassert_eq!(s.stats().tables_made, 2);
    kassert_eq!(s.check(), Ok(PAGES));
    drop(shared);
    run_on_all(|_| crate::mm::drain_pcp());
    Ok(())
}

static READER_WARM: AtomicBool = AtomicBool::new(false);
static CHANGED: AtomicBool = AtomicBool::new(false);
/// What the reader's first load after the change gave: 1 the fault the
/// architecture requires, 2 the old tag (stale), 3 anything else
/// (including never warm).
static AFTER: AtomicU64 = AtomicU64::new(0);
/// Whether CPU 0 saw the reader warm before it changed the mapping, and
/// whether its guest-1 store went through.
static CHANGER: AtomicU64 = AtomicU64::new(0);
static TABLES: Mutex<Option<G2Tables>> = Mutex::new(None);
/// What the changer does: 0 point guest-2's PTE elsewhere (the shadow
/// page table goes), 1 store into guest-2's top table (the whole shadow
/// goes). And the code the reader's next load must take for it.
static MODE: AtomicU64 = AtomicU64::new(0);
static WANT: AtomicU64 = AtomicU64::new(0);

/// 20 s in TOD units (4096 per microsecond): how long either side waits.
const PATIENCE: u64 = 20_000_000u64 << 12;

fn reader() {
    let Some(s) = shadow_of_shared() else {
        return;
    };
    // SAFETY: the shadow lives until every CPU returned.
    let r = unsafe {
        warm_secondary(&s.asce_ref(), |wm| {
            let t0 = crate::arch::s390x::tod::stck();
            let mut good = 0u64;
            while crate::arch::s390x::tod::stck().wrapping_sub(t0) < PATIENCE {
                if CHANGED.load(Ordering::Acquire) {
                    let want = WANT.load(Ordering::Acquire) as u16;
                    return match wm.load(SEG) {
                        Err(pc) if pc.code == want => 1,
                        Ok(v) if v == tag(0) => 2,
                        _ => 3,
                    };
                }
                if wm.load(SEG) == Ok(tag(0)) {
                    good += 1;
                    if good == 100 {
                        READER_WARM.store(true, Ordering::Release);
                    }
                }
                core::hint::spin_loop();
            }
            3
        })
    };
    AFTER.store(r.unwrap_or(3), Ordering::Release);
}

fn changer() {
    let t0 = crate::arch::s390x::tod::stck();
    while !READER_WARM.load(Ordering::Acquire)
        && crate::arch::s390x::tod::stck().wrapping_sub(t0) < PATIENCE
    {
        core::hint::spin_loop();
    }
    let warm = READER_WARM.load(Ordering::Acquire);
    let shared = SHARED.lock();
    let mut tables = TABLES.lock();
    let ok = match (shared.as_ref(), tables.as_mut()) {
        (Some(sh), Some(t)) if MODE.load(Ordering::Acquire) == 0 => t
            .map(&sh.w, SEG, G1_DATA + PAGES * 0x1000, Prot::ReadWrite)
            .is_ok(),
        // An unused entry in the page of the top table the shadow uses.
        (Some(sh), Some(t)) => {
            let e = t.top_g1 + 8 * 100;
            sh.w.r(e).and_then(|v| sh.w.w(e, v)).is_ok()
        }
        _ => false,
    };
    drop(tables);
    drop(shared);
    CHANGER.store(u64::from(warm) | (u64::from(ok) << 1), Ordering::Release);
    // Raised whatever happened, so the reader always ends.
    CHANGED.store(true, Ordering::Release);
}

/// CPU 1 keeps the shadow loaded and reads a guest-2 page in a loop;
/// CPU 0, once CPU 1's loads succeed, has guest-1 point that page
/// elsewhere (the shadow page table goes, its IDTE reaching CPU 1, which
/// has the shadow attached) and raises a flag; CPU 1's first load after
/// the flag must fault.
pub(super) fn unshadow_while_another_cpu_uses_the_shadow_leaves_nothing_stale() -> KResult {
    change_under_a_warm_reader(0, code::SEGMENT_TRANSLATION)
}

/// The same with the whole shadow dropped (guest-1 stores into guest-2's
/// top table): its top is emptied before the purge that reaches CPU 1,
/// so CPU 1's next load faults at the top instead of walking the freed
/// tables below.
pub(super) fn whole_shadow_dropped_while_another_cpu_uses_it_leaves_nothing_stale() -> KResult {
    change_under_a_warm_reader(1, code::REGION_THIRD_TRANSLATION)
}

fn change_under_a_warm_reader(mode: u64, want: u16) -> KResult {
    need_smp()?;
    MODE.store(mode, Ordering::Release);
    WANT.store(want as u64, Ordering::Release);
    let (w, t) = setup()?;
    let s = w.shadow(t.asce())?;
    kassert_eq!(s.shadow_fault(SEG, false), Ok(()));
    *SHARED.lock() = Some(Shared { w, s: s.clone() });
    *TABLES.lock() = Some(t);
    READER_WARM.store(false, Ordering::Relaxed);
    CHANGED.store(false, Ordering::Relaxed);
    AFTER.store(0, Ordering::Relaxed);
    CHANGER.store(0, Ordering::Relaxed);
    run_on_all(|cpu| match cpu {
        0 => changer(),
        1 => reader(),
        _ => {}
    });
    let tables = TABLES.lock().take();
    let shared = SHARED.lock().take();
    kassert_eq!(
        CHANGER.load(Ordering::Acquire),
        3,
        "1: reader warm, 2: store done"
    );
    kassert_eq!(
        AFTER.load(Ordering::Acquire),
        1,
        "1: faulted, 2: stale, 3: other"
    );
    // The one page shadowed went with its page table (or the shadow).
    kassert_eq!(s.check(), Ok(0));
    kassert_eq!(s.is_removed(), mode == 1);
    drop((tables, shared));
    run_on_all(|_| crate::mm::drain_pcp());
    Ok(())
}

// Guest-2 for the nested case: load 0(r2) until it differs from r5, at
// most r3 times; SVC 1 when it changed, SVC 2 when it never did.
core::arch::global_asm!(
    ".section .rodata.guest2_poll,\"a\"",
    ".balign 8",
    ".globl zdat_guest2_poll_start",
    "zdat_guest2_poll_start:",
    "2:  lg %r4,0(%r2)",
    "    cgr %r4,%r5",
    "    jne 3f",
    "    brctg %r3,2b",
    "    svc 2",
    "3:  svc 1",
    ".globl zdat_guest2_poll_end",
    "zdat_guest2_poll_end:",
);

extern "C" {
    static zdat_guest2_poll_start: u8;
    static zdat_guest2_poll_end: u8;
}

/// Guest-2's code page, its data page, and the poll program's result.
const G2_CODE: u64 = (2u64 << 31) | (9 << 20);
static NESTED_ASCE: AtomicU64 = AtomicU64::new(0);
/// 1: SVC 1 (saw the change), 2: SVC 2 (polled out on the old value: a
/// stale translation), 3: anything else.
static NESTED_END: AtomicU64 = AtomicU64::new(0);

struct Decline;

impl crate::gmap::vsie::Guest1 for Decline {
    fn program_interrupt(&mut self, _: &mut crate::gmap::guest::Vcpu, _: u16, _: u64) -> bool {
        false
    }
}

static NESTED_WORLD: Mutex<Option<alloc::sync::Arc<World>>> = Mutex::new(None);
static NESTED_SHADOW: Mutex<Option<ShadowGmap>> = Mutex::new(None);
/// Whether the changer saw guest-2 running on the shadow (its code and
/// data pages shadowed) before it changed the mapping, and whether the
/// change went through.
static NESTED_CHANGER: AtomicU64 = AtomicU64::new(0);

fn nested_runner() {
    let asce = crate::dat::entry::Asce::from_raw(NESTED_ASCE.load(Ordering::Acquire));
    let Some(w) = NESTED_WORLD.lock().clone() else {
        return;
    };
    let mut v = crate::gmap::guest::Vcpu::new(&w.g, G2_CODE);
    v.ctx.gprs[2] = SEG;
    v.ctx.gprs[3] = 1 << 31;
    v.ctx.gprs[5] = tag(0);
    let mut stats = crate::gmap::vsie::NestedStats::default();
    let r = crate::gmap::vsie::run_nested(&mut v, &w.g, asce, 0, &mut Decline, 1000, &mut stats);
    NESTED_END.store(
        match r {
            Ok(1) => 1,
            Ok(2) => 2,
            _ => 3,
        },
        Ordering::Release,
    );
}

fn nested_changer() {
    let t0 = crate::arch::s390x::tod::stck();
    let s = NESTED_SHADOW.lock().clone();
    let mut warm = false;
    while let Some(s) = &s {
        if s.stats().faults >= 2 {
            warm = true;
            break;
        }
        if crate::arch::s390x::tod::stck().wrapping_sub(t0) >= PATIENCE {
            break;
        }
        core::hint::spin_loop();
    }
    // Let guest-2 poll on a warm TLB a little (TOD: 4096 per us).
    let t1 = crate::arch::s390x::tod::stck();
    while crate::arch::s390x::tod::stck().wrapping_sub(t1) < (2_000u64 << 12) {
        core::hint::spin_loop();
    }
    let w = NESTED_WORLD.lock().clone();
    let ok = match (w, TABLES.lock().as_mut()) {
        (Some(w), Some(t)) => t
            .map(&w, SEG, G1_DATA + PAGES * 0x1000, Prot::ReadWrite)
            .is_ok(),
        _ => false,
    };
    NESTED_CHANGER.store(u64::from(warm) | (u64::from(ok) << 1), Ordering::Release);
}

/// Guest-2 runs on CPU 1 (`run_nested`), polling a page on a warm TLB
/// until its value changes; CPU 0, once guest-2's pages are shadowed,
/// has guest-1 point that page at another one. The shadow page table goes
/// with an IDTE that reaches CPU 1, guest-2's next load faults, is
/// shadowed again and sees the new value: SVC 1. A stale translation
/// would keep it polling the old value until its counter runs out: SVC 2.
pub(super) fn guest2_on_another_cpu_sees_guest1_change_its_mapping() -> KResult {
    need_smp()?;
    let (w, mut t) = setup()?;
    // Guest-2's code page: the poll program, in guest-1 page 0x2000.
    // SAFETY: the symbols bracket the program in .rodata.
    let code = unsafe {
        let a = core::ptr::addr_of!(zdat_guest2_poll_start);
        let e = core::ptr::addr_of!(zdat_guest2_poll_end);
        core::slice::from_raw_parts(a, e as usize - a as usize)
    };
    for (i, c) in code.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        w.w(0x2000 + i as u64 * 8, u64::from_be_bytes(b))?;
    }
    t.map(&w, G2_CODE, 0x2000, Prot::ReadOnly)?;
    w.w(G1_DATA + PAGES * 0x1000, 0x600d)?;
    let s = w.shadow(t.asce())?;
    NESTED_ASCE.store(t.asce().raw(), Ordering::Release);
    NESTED_END.store(0, Ordering::Relaxed);
    NESTED_CHANGER.store(0, Ordering::Relaxed);
    *NESTED_SHADOW.lock() = Some(s.clone());
    *NESTED_WORLD.lock() = Some(alloc::sync::Arc::new(w));
    *TABLES.lock() = Some(t);
    run_on_all(|cpu| match cpu {
        0 => nested_changer(),
        1 => nested_runner(),
        _ => {}
    });
    let tables = TABLES.lock().take();
    let world = NESTED_WORLD.lock().take();
    NESTED_SHADOW.lock().take();
    kassert_eq!(
        NESTED_CHANGER.load(Ordering::Acquire),
        3,
        "1: guest-2 was running, 2: mapping changed"
    );
    kassert_eq!(
        NESTED_END.load(Ordering::Acquire),
        1,
        "1: saw the change, 2: stale, 3: other"
    );
    kassert_eq!(s.check().map(|_| ()), Ok(()));
    drop((tables, world, s));
    run_on_all(|_| crate::mm::drain_pcp());
    Ok(())
}
