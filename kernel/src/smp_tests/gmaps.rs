//! smp on gmaps: CPUs faulting in one guest segment at once link it once,
//! and a guest running on one CPU faults after another CPU protects its
//! page in the host.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sync::Mutex;

use super::need_smp;
use crate::arch::pgm::code;
use crate::dat::entry::Prot;
use crate::dat::kernel::warm_secondary;
use crate::gmap::{self, Access, Gmap, HostMm};
use crate::ktest::{KResult, Outcome};
use crate::mm;
use crate::smp::{self, run_on_all};
use crate::{kassert, kassert_eq};

type SharedGmap = (Arc<Gmap>, Arc<Mutex<HostMm>>);

static GMAP: Mutex<Option<SharedGmap>> = Mutex::new(None);
static FAULT_ERRORS: AtomicU64 = AtomicU64::new(0);
const G_BASE: u64 = 0x800_0000;

fn guest_tag(gaddr: u64) -> u64 {
    0x6a00_0000_0000_0000 | gaddr
}

pub(super) fn concurrent_gmap_faults_link_a_segment_once() -> KResult {
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
                warm_secondary(&g.asce_ref(), |w| {
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
/// How often CPU 0 read the counter before it protected (diagnostics).
static GUEST_POLLS: AtomicU64 = AtomicU64::new(0);
static GUEST_PROTECTED: AtomicBool = AtomicBool::new(false);
static GUEST_FLAGGED: AtomicBool = AtomicBool::new(false);
static GUEST_DATA_PA: AtomicU64 = AtomicU64::new(0);
/// While the guest ran on CPU 1: the gmap's and the host's
/// cpu_attach_mask, and the IPTEs of the host's protect (global, local).
static GUEST_MASKS: Mutex<Option<GuestMasks>> = Mutex::new(None);
type GuestMasks = ((u64, u64), (u64, u64));
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
    // Bounded by time, not iterations: how fast the guest gets going on
    // the other vCPU depends on the host's cores (TOD units: 4096 per us).
    let t0 = crate::arch::s390x::tod::stck();
    let limit = 20_000_000u64 << 12;
    let mut polls = 0u64;
    while crate::arch::s390x::tod::stck().wrapping_sub(t0) < limit {
        polls += 1;
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
    GUEST_POLLS.store(polls, Ordering::Relaxed);
    GUEST_WARM.store(moving > 100, Ordering::Relaxed);
    let masks = (
        g.context().cpu_attach_mask(),
        h.lock().space().context().cpu_attach_mask(),
    );
    let f0 = crate::dat::tlb::flush_stats();
    let p = h.lock().protect(GUEST_VM + GUEST_DATA, Prot::ReadOnly);
    let f = crate::dat::tlb::flush_stats().since(f0);
    *GUEST_MASKS.lock() = Some((masks, (f.ipte_global, f.ipte_local)));
    GUEST_PROTECTED.store(p.is_ok(), Ordering::Relaxed);
    // SAFETY: the flag page is the host frame this case populated.
    let f = unsafe { crate::arch::s390x::probe::store_u64(flag, 1) };
    GUEST_FLAGGED.store(f.is_ok(), Ordering::Relaxed);
}

/// A guest runs on CPU 1, storing in a loop, while CPU 0 makes the page
/// read-only in the host and then raises a flag the guest polls: the
/// guest's next store must fault. This is the QEMU IPTE deviation as a
/// running guest meets it (`tlb::IPTE_GUEST_ALIAS`).
pub(super) fn guest_store_faults_after_a_host_protect_on_another_cpu() -> KResult {
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
        let Ok(f) = hm.frame_bytes(GUEST_VM + GUEST_CODE) else {
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
    *GUEST_MASKS.lock() = None;
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
        "the guest was not seen storing in a loop before the protect ({} polls in 20 s; its run ended {})",
        GUEST_POLLS.load(Ordering::Relaxed),
        GUEST_END.load(Ordering::Acquire)
    );
    kassert!(GUEST_PROTECTED.load(Ordering::Relaxed));
    kassert!(GUEST_FLAGGED.load(Ordering::Relaxed));
    // The running guest attached CPU 1 to the gmap and to its host (its TLB
    // entries are formed through the host's PTE tables), so the host's
    // IPTE and the alias IPTE at the guest address were both broadcast.
    let Some((masks, iptes)) = *GUEST_MASKS.lock() else {
        return Err(Outcome::Fail);
    };
    kassert!(
        masks.0 & 2 != 0 && masks.1 & 2 != 0,
        "attach masks {masks:#x?}"
    );
    kassert_eq!(iptes, (2, 0));
    kassert_eq!(GUEST_END.load(Ordering::Acquire), 1);
    kassert_eq!(g.check(), Ok(2));
    drop(g);
    drop(h);
    run_on_all(|_| mm::drain_pcp());
    Ok(())
}
