//! In-kernel tests of interruption handling and the TOD clock.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cr::{self, cr0};
use super::interrupt::{self, ext, InterruptFrame};
use super::{insn, probe, tod};
use crate::arch::lowcore::IntClass;
use crate::arch::pgm::code;
use crate::arch::psw::mask;
use crate::ktest::KResult;
use crate::{kassert, kassert_eq, kassert_matches, ktest_suite};

fn operation() -> KResult {
    let before = interrupt::count(IntClass::Program);
    let r = probe::invalid_opcode();
    kassert_matches!(r, Err(pc) if pc.code == code::OPERATION && pc.ilc == 2);
    // The run went on, and exactly one program check was taken.
    kassert_eq!(interrupt::count(IntClass::Program), before + 1);
    Ok(())
}

fn privileged_operation_in_problem_state() -> KResult {
    let r = probe::privileged_in_problem_state();
    // PTLB is a 4-byte instruction.
    kassert_matches!(r, Err(pc) if pc.code == code::PRIVILEGED_OPERATION && pc.ilc == 4);
    // The fixup brought us back to supervisor state.
    kassert_eq!(insn::psw_mask() & mask::PROBLEM, 0);
    Ok(())
}

fn specification() -> KResult {
    let r = probe::misaligned_csg();
    // CSG is a 6-byte RSY instruction.
    kassert_matches!(r, Err(pc) if pc.code == code::SPECIFICATION && pc.ilc == 6);
    Ok(())
}

fn probes_pass_through_valid_accesses() -> KResult {
    let mut cell: u64 = 0x1122_3344_5566_7788;
    let addr = core::ptr::addr_of_mut!(cell) as u64;
    kassert_eq!(probe::load_u64(addr), Ok(0x1122_3344_5566_7788));
    kassert_eq!(probe::load_u8(addr + 1), Ok(0x22));
    // SAFETY: `cell` is a local this function owns.
    let w = unsafe { probe::store_u64(addr, 42) };
    kassert_eq!(w, Ok(()));
    kassert_eq!(core::hint::black_box(cell), 42);
    Ok(())
}

static CKC_HITS: AtomicU64 = AtomicU64::new(0);
static CKC_LATE_BY: AtomicU64 = AtomicU64::new(0);
static CKC_TARGET: AtomicU64 = AtomicU64::new(0);

fn on_clock_comparator(_f: &mut InterruptFrame) {
    CKC_HITS.fetch_add(1, Ordering::Relaxed);
    let now = tod::stck();
    CKC_LATE_BY.store(
        now.wrapping_sub(CKC_TARGET.load(Ordering::Relaxed)),
        Ordering::Relaxed,
    );
    // The condition stays pending while TOD >= CKC: push it out of reach.
    tod::sckc(u64::MAX);
}

/// Wait (enabled) until `hits` is non-zero; at most `max_waits` interruptions.
fn wait_for(hits: &AtomicU64, max_waits: usize) -> u64 {
    for _ in 0..max_waits {
        if hits.load(Ordering::Relaxed) != 0 {
            break;
        }
        insn::enabled_wait(mask::EXT);
    }
    hits.load(Ordering::Relaxed)
}

fn clock_comparator_interrupt() -> KResult {
    CKC_HITS.store(0, Ordering::Relaxed);
    let before = interrupt::count(IntClass::External);
    kassert_eq!(
        interrupt::register_ext_handler(ext::CLOCK_COMPARATOR, on_clock_comparator),
        Ok(())
    );
    let target = tod::stck() + tod::usecs_to_tod(2000);
    CKC_TARGET.store(target, Ordering::Relaxed);
    tod::sckc(target);
    // SAFETY: the handler is registered; it disarms the comparator.
    unsafe { cr::cr0_set(cr0::CLOCK_COMPARATOR) };
    let hits = wait_for(&CKC_HITS, 16);
    // SAFETY: closing the subclass again is always safe.
    unsafe { cr::cr0_clear(cr0::CLOCK_COMPARATOR) };
    interrupt::unregister_ext_handler(ext::CLOCK_COMPARATOR);
    kassert_eq!(hits, 1);
    kassert!(interrupt::count(IntClass::External) > before);
    // It fired at or after its target, not before.
    kassert!(CKC_LATE_BY.load(Ordering::Relaxed) < (1 << 63));
    Ok(())
}

static TIMER_HITS: AtomicU64 = AtomicU64::new(0);

fn on_cpu_timer(_f: &mut InterruptFrame) {
    TIMER_HITS.fetch_add(1, Ordering::Relaxed);
    // Pending while the timer is negative: reload it far into the future.
    tod::spt(i64::MAX as u64);
}

fn cpu_timer_interrupt() -> KResult {
    TIMER_HITS.store(0, Ordering::Relaxed);
    kassert_eq!(
        interrupt::register_ext_handler(ext::CPU_TIMER, on_cpu_timer),
        Ok(())
    );
    tod::spt(tod::usecs_to_tod(1000));
    // SAFETY: the handler is registered; it reloads the timer.
    unsafe { cr::cr0_set(cr0::CPU_TIMER) };
    let hits = wait_for(&TIMER_HITS, 16);
    // SAFETY: closing the subclass again is always safe.
    unsafe { cr::cr0_clear(cr0::CPU_TIMER) };
    interrupt::unregister_ext_handler(ext::CPU_TIMER);
    kassert_eq!(hits, 1);
    kassert!(tod::stpt() > (1 << 62));
    Ok(())
}

fn ext_handler_registry_refuses_duplicates() -> KResult {
    kassert_eq!(
        interrupt::register_ext_handler(0x1234, on_cpu_timer),
        Ok(())
    );
    kassert_eq!(
        interrupt::register_ext_handler(0x1234, on_cpu_timer),
        Err(interrupt::RegisterError::Busy)
    );
    interrupt::unregister_ext_handler(0x1234);
    kassert_eq!(
        interrupt::register_ext_handler(0x1234, on_cpu_timer),
        Ok(())
    );
    interrupt::unregister_ext_handler(0x1234);
    Ok(())
}

ktest_suite!(
    INTERRUPTS,
    "interrupts",
    [
        operation,
        privileged_operation_in_problem_state,
        specification,
        probes_pass_through_valid_accesses,
        clock_comparator_interrupt,
        cpu_timer_interrupt,
        ext_handler_registry_refuses_duplicates,
    ]
);

fn tod_monotonic() -> KResult {
    let mut last = tod::stck();
    for _ in 0..1000 {
        let now = tod::stck();
        // STCK values are unique: strictly increasing on one CPU.
        kassert!(now > last, "stck went from {:#x} to {:#x}", last, now);
        last = now;
    }
    Ok(())
}

fn stckf_between_stcks() -> KResult {
    let a = tod::stck();
    let Some(b) = tod::stckf() else {
        crate::kskip!("no store-clock-fast facility (25)");
    };
    let c = tod::stck();
    kassert!(
        a <= b && b <= c,
        "stck {:#x}, stckf {:#x}, stck {:#x}",
        a,
        b,
        c
    );
    Ok(())
}

fn tod_advances() -> KResult {
    let a = tod::stck();
    let mut x = 0u64;
    for i in 0..100_000u64 {
        x = core::hint::black_box(x.wrapping_add(i));
    }
    let b = tod::stck();
    // The TOD clock counts real time: 100k iterations take at least 1 us.
    kassert!(
        b - a >= tod::TOD_PER_USEC,
        "stck advanced only {:#x}",
        b - a
    );
    Ok(())
}

ktest_suite!(
    CLOCK,
    "clock",
    [tod_monotonic, stckf_between_stcks, tod_advances]
);
