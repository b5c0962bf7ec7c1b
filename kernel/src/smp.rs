//! SMP: bring up every CPU SCLP reports (SIGP SET PREFIX to a lowcore of
//! its own, RESTART into zdat_secondary_entry), per-CPU data through the
//! lowcore's CPU number, work handed to CPUs with a SIGP external call, and
//! stopping every other CPU before the run ends.
//!
//! Linux: arch/s390/kernel/smp.c.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use spin::Mutex;

use crate::sync::ANY_TICKET;

use crate::arch::lowcore;
use crate::arch::psw::{mask, Psw};
use crate::arch::s390x::cr::{self, cr0};
use crate::arch::s390x::interrupt::{self, ext, InterruptFrame};
use crate::arch::s390x::sigp::{self, order, sigp_retry, STATUS_STOPPED};
use crate::arch::s390x::{insn, tod};
use crate::mm::addr::PAGE_SIZE;
use crate::mm::{self, AllocFlags};
use crate::pr_info;
use crate::sclp::info::{SclpInfo, MAX_CPUS};

struct CpuSlot {
    addr: AtomicU64,
    online: AtomicBool,
    /// Sent its SIGP RESTART: it may come online at any time, even after
    /// its bring-up timed out, so the end of the run stops it too.
    started: AtomicBool,
    work: Mutex<Option<fn(usize)>>,
    done: AtomicU64,
    /// Handed work it has not finished.
    busy: AtomicBool,
}

static CPUS: [CpuSlot; MAX_CPUS] = [const {
    CpuSlot {
        addr: AtomicU64::new(0),
        online: AtomicBool::new(false),
        started: AtomicBool::new(false),
        work: Mutex::new(None),
        done: AtomicU64::new(0),
        busy: AtomicBool::new(false),
    }
}; MAX_CPUS];
static NR_CPUS: AtomicUsize = AtomicUsize::new(1);
/// The restart new PSW every CPU uses once running (secondaries start with
/// another one).
static RESTART_PSW: Mutex<Psw> = Mutex::new(Psw { mask: 0, addr: 0 });

/// Errors bringing up a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpError {
    NoMemory,
    /// SIGP answered with this condition code and status.
    Sigp(u32, u64),
    /// The CPU did not report in.
    Timeout,
}

/// This CPU's number (0 = boot CPU).
pub fn cpu_nr() -> usize {
    insn::lowcore_read_u64(lowcore::CPU_NR) as usize
}

/// CPUs running zdat.
pub fn nr_online() -> usize {
    CPUS.iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}

/// Whether CPU `cpu` was handed work by `run_on_all` and has not finished
/// it (the end of the run waits for such CPUs).
pub fn is_busy(cpu: usize) -> bool {
    CPUS.get(cpu)
        .is_some_and(|c| c.busy.load(Ordering::Acquire))
}

/// CPUs SCLP reported (at most MAX_CPUS).
pub fn nr_cpus() -> usize {
    NR_CPUS.load(Ordering::Relaxed)
}

/// Lock waiters: CPU i sleeps in an enabled wait while `LOCK_WAIT[i]`
/// names the lock it waits for and `LOCK_TICKET[i]` its turn; the CPU that
/// passes the lock on kicks the one whose turn it is with an external call
/// (Linux's paravirt spinlocks: a vCPU that waits gives its host CPU back,
/// `arch_spin_lock_wait` with its directed yield). QEMU TCG halts a vCPU in
/// a wait state, so its thread sleeps until the kick; the DIAG 0x44 yield
/// Linux also uses is a no-op in TCG (target/s390x/tcg/misc_helper.c).
static LOCK_WAIT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static LOCK_TICKET: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Kicks sent, and waits entered by lock waiters (one per wake-up).
static LOCK_KICKS: AtomicU64 = AtomicU64::new(0);
static LOCK_SLEEPS: AtomicU64 = AtomicU64::new(0);

/// (kicks, waits) since boot: the smp suite reports them.
pub fn lock_wait_counts() -> (u64, u64) {
    (
        LOCK_KICKS.load(Ordering::Relaxed),
        LOCK_SLEEPS.load(Ordering::Relaxed),
    )
}

/// Sleep until `ready()` says the lock `key` is ours (our `ticket` came up).
/// Registered first, then checked: a kick sent after the registration
/// stays pending until the wait opens the external subclass, so none is
/// lost. With one CPU online nobody could pass the lock on: `ready` is
/// then only polled.
pub(crate) fn lock_sleep(key: u64, ticket: u64, ready: impl Fn() -> bool) {
    if nr_online() < 2 {
        while !ready() {
            core::hint::spin_loop();
        }
        return;
    }
    let me = cpu_nr() % MAX_CPUS;
    LOCK_TICKET[me].store(ticket, Ordering::Relaxed);
    LOCK_WAIT[me].store(key, Ordering::Relaxed);
    // The registration before the check of the lock word: a full fence,
    // paired with the one in `lock_kick` after the release (Dekker).
    core::sync::atomic::fence(Ordering::SeqCst);
    while !ready() {
        LOCK_SLEEPS.fetch_add(1, Ordering::Relaxed);
        // Any external interruption ends the wait (the external-call
        // subclass is open on every CPU); `ready` is checked again.
        insn::enabled_wait(mask::EXT);
    }
    LOCK_WAIT[me].store(0, Ordering::Relaxed);
}

/// Wait, asleep after a few spins, until `cond()` holds; whoever makes it
/// hold calls `wake(key)` afterwards. `key` names what is waited for (an
/// address). For waits on other CPUs' progress: a flag, a count, a
/// barrier generation.
pub fn wait_until(key: u64, cond: impl Fn() -> bool) {
    crate::sync::wait_for(key, ANY_TICKET, cond);
}

/// Kick every CPU in `wait_until(key, ..)`: call after the change that
/// makes its condition hold.
pub fn wake(key: u64) {
    crate::sync::kick(key, ANY_TICKET);
}

/// The lock `key` now serves `ticket`: kick the CPU sleeping for it, if
/// any (after the caller's release, ordered by the fence). `ANY_TICKET`
/// kicks every CPU sleeping for `key`.
pub(crate) fn lock_kick(key: u64, ticket: u64) {
    core::sync::atomic::fence(Ordering::SeqCst);
    let me = cpu_nr() % MAX_CPUS;
    for (i, w) in LOCK_WAIT.iter().enumerate() {
        if i != me
            && w.load(Ordering::Relaxed) == key
            && (ticket == ANY_TICKET || LOCK_TICKET[i].load(Ordering::Relaxed) == ticket)
        {
            LOCK_KICKS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: an external call only ends the target's wait.
            unsafe {
                sigp_retry(
                    CPUS[i].addr.load(Ordering::Relaxed) as u16,
                    order::EXTERNAL_CALL,
                    0,
                )
            };
        }
    }
}

/// The clock comparator during a bring-up wait: only a wake-up (the wait
/// loop checks the deadline); pushed out of reach, since the condition
/// stays pending while TOD >= CKC.
fn bring_up_deadline(_f: &mut InterruptFrame) {
    tod::sckc(u64::MAX);
}

fn external_call(_f: &mut InterruptFrame) {
    // Only a wake-up: the idle loop looks for work after every interruption.
}

fn cr0_for_cpus() {
    // SAFETY: the external-call handler is registered before any CPU opens
    // the subclass.
    unsafe { cr::cr0_set(cr0::EXTERNAL_CALL) };
}

/// Bring up every other CPU. Called once on the boot CPU with DAT on.
/// Each waited for `bringup_us` microseconds at most (`smp.bringup_us`).
/// Secondaries wait `late_us` before they report in (`smp.late_hello_us`).
pub(crate) fn init(info: &SclpInfo, bringup_us: u64, late_us: u64) {
    LATE_HELLO_TOD.store(tod::usecs_to_tod(late_us), Ordering::Relaxed);
    // SAFETY: CPU_NR is our software slot; 0 is the boot CPU.
    unsafe { insn::lowcore_write_u64(lowcore::CPU_NR, 0) };
    let me = insn::stap() as u64;
    CPUS[0].addr.store(me, Ordering::Relaxed);
    CPUS[0].online.store(true, Ordering::Release);
    let _ = interrupt::register_ext_handler(ext::EXTERNAL_CALL, external_call);
    cr0_for_cpus();
    *RESTART_PSW.lock() = Psw::new(
        insn::lowcore_read_u64(lowcore::NEW_PSW[0]),
        insn::lowcore_read_u64(lowcore::NEW_PSW[0] + 8),
    );
    let n = (info.cpus as usize).min(MAX_CPUS);
    NR_CPUS.store(n.max(1), Ordering::Relaxed);
    let mut next = 1;
    for &addr in info.cpu_addrs.iter().take(n) {
        if addr as u64 == me {
            continue;
        }
        match start_secondary(next, addr, bringup_us) {
            Ok(()) => {}
            Err(e) => pr_info!("smp: CPU address {} did not start: {:?}", addr, e),
        }
        next += 1;
    }
    pr_info!("smp: {} of {} CPUs online", nr_online(), n);
}

fn write_lc(base: u64, off: usize, v: u64) {
    // SAFETY: `base` is a lowcore page pair this module allocated for a CPU
    // that does not run yet; `off` is inside it.
    unsafe { core::ptr::write_volatile((base + off as u64) as *mut u64, v) };
}

fn start_secondary(i: usize, addr: u16, bringup_us: u64) -> Result<(), SmpError> {
    // The prefix register holds a 31-bit address: the lowcore must lie
    // below 2 GiB (SIGP SET PREFIX drops the higher bits; the CPU would
    // then run on whatever is there, and never report in).
    let lc = mm::alloc_pages_below(1, 1 << 31, AllocFlags::ZERO).map_err(|_| SmpError::NoMemory)?;
    let stack = mm::alloc_pages(5, AllocFlags::empty()).map_err(|_| SmpError::NoMemory)?;
    let irq = mm::alloc_pages(4, AllocFlags::empty()).map_err(|_| SmpError::NoMemory)?;
    let panic = mm::alloc_pages(3, AllocFlags::empty()).map_err(|_| SmpError::NoMemory)?;
    // These live as long as the CPU: for ever.
    let (lc, stack, irq, panic) = (
        lc.into_raw().0,
        stack.into_raw().0,
        irq.into_raw().0,
        panic.into_raw().0,
    );
    let lc = lc.0 * PAGE_SIZE;
    let stack = stack.0 * PAGE_SIZE;
    let stack_top = stack + (32 * PAGE_SIZE) - 160;
    // The stack's lowest page is its guard.
    if crate::dat::kernel::unmap_guard(stack).is_err() {
        return Err(SmpError::NoMemory);
    }
    // The boot CPU's lowcore is the template: new PSWs, software slots.
    for off in (0..0x2000).step_by(8) {
        write_lc(lc, off, insn::lowcore_read_u64(off));
    }
    write_lc(lc, lowcore::CPU_NR, i as u64);
    write_lc(lc, lowcore::PCP, mm::pcp_slot_value(i));
    write_lc(
        lc,
        lowcore::KERNEL_STACK,
        irq.0 * PAGE_SIZE + 16 * PAGE_SIZE - 160,
    );
    write_lc(
        lc,
        lowcore::PANIC_STACK,
        panic.0 * PAGE_SIZE + 8 * PAGE_SIZE - 160,
    );
    write_lc(lc, lowcore::STACK_GUARD_LOW, stack);
    write_lc(lc, lowcore::STACK_GUARD_HIGH, stack + PAGE_SIZE + 1024);
    write_lc(lc, lowcore::GUEST_CTX, 0);
    write_lc(lc, lowcore::SECONDARY_STACK, stack_top);
    let psw = Psw::new(
        insn::psw_mask() & (mask::DAT | mask::ASC | mask::BASE),
        sigp::secondary_dat(),
    );
    write_lc(lc, lowcore::SECONDARY_PSW, psw.mask);
    write_lc(lc, lowcore::SECONDARY_PSW + 8, psw.addr);
    let crs = [
        cr::stctg::<0>() & !cr0::SERVICE_SIGNAL & !cr0::CLOCK_COMPARATOR & !cr0::CPU_TIMER,
        cr::stctg::<1>(),
        cr::stctg::<2>(),
        cr::stctg::<3>(),
        cr::stctg::<4>(),
        cr::stctg::<5>(),
        cr::stctg::<6>(),
        cr::stctg::<7>(),
        cr::stctg::<8>(),
        cr::stctg::<9>(),
        cr::stctg::<10>(),
        cr::stctg::<11>(),
        cr::stctg::<12>(),
        cr::stctg::<13>(),
        cr::stctg::<14>(),
        cr::stctg::<15>(),
    ];
    for (n, v) in crs.iter().enumerate() {
        write_lc(lc, lowcore::CR_SAVE + n * 8, *v);
    }
    // It starts with DAT off at the secondary entry.
    write_lc(lc, lowcore::NEW_PSW[0], mask::BASE);
    write_lc(lc, lowcore::NEW_PSW[0] + 8, sigp::secondary_entry());
    CPUS[i].addr.store(addr as u64, Ordering::Relaxed);
    // SAFETY: the lowcore is prepared (8 KiB, aligned, ours for ever).
    let (cc, st) = unsafe { sigp_retry(addr, order::SET_PREFIX, lc) };
    if cc != 0 {
        return Err(SmpError::Sigp(cc, st));
    }
    CPUS[i].started.store(true, Ordering::Release);
    // SAFETY: its restart new PSW leads to zdat_secondary_entry.
    let (cc, st) = unsafe { sigp_retry(addr, order::RESTART, 0) };
    if cc != 0 {
        return Err(SmpError::Sigp(cc, st));
    }
    // Wait in an enabled wait, not a spin: the new CPU's hello is an
    // external call, and the clock comparator bounds the wait. A spinning
    // boot CPU would keep a round-robin TCG (one host thread, as under
    // -icount) from ever running the new one until the deadline.
    if bringup_us == 0 {
        // Not waited for at all: the CPU reports in whenever it does, as
        // one that timed out would (the selftest of the end-of-run stop).
        return Err(SmpError::Timeout);
    }
    let deadline = tod::stck() + tod::usecs_to_tod(bringup_us);
    let waited = interrupt::register_ext_handler(ext::CLOCK_COMPARATOR, bring_up_deadline).is_ok();
    if waited {
        tod::sckc(deadline);
        // SAFETY: the handler is registered; it disarms the comparator.
        unsafe { cr::cr0_set(cr0::CLOCK_COMPARATOR) };
    }
    let mut r = Ok(());
    while !CPUS[i].online.load(Ordering::Acquire) {
        if tod::stck() > deadline {
            r = Err(SmpError::Timeout);
            break;
        }
        if waited {
            insn::enabled_wait(mask::EXT);
        } else {
            core::hint::spin_loop();
        }
    }
    if waited {
        // SAFETY: closing the subclass is always safe.
        unsafe { cr::cr0_clear(cr0::CLOCK_COMPARATOR) };
        tod::sckc(u64::MAX);
        interrupt::unregister_ext_handler(ext::CLOCK_COMPARATOR);
    }
    r
}

/// How long a secondary waits before it reports in (TOD units).
static LATE_HELLO_TOD: AtomicU64 = AtomicU64::new(0);

/// A secondary CPU's first Rust code: say hello, then wait for work.
#[no_mangle]
pub extern "C" fn zdat_secondary_main(cpu: u64) -> ! {
    let cpu = cpu as usize;
    let rp = *RESTART_PSW.lock();
    // SAFETY: this CPU's own restart new PSW goes back to the common stub.
    unsafe {
        insn::lowcore_write_u64(lowcore::NEW_PSW[0], rp.mask);
        insn::lowcore_write_u64(lowcore::NEW_PSW[0] + 8, rp.addr);
    }
    cr0_for_cpus();
    let late = LATE_HELLO_TOD.load(Ordering::Relaxed);
    if late != 0 {
        let t0 = tod::stck();
        while tod::stck().wrapping_sub(t0) < late {
            core::hint::spin_loop();
        }
    }
    pr_info!("smp: CPU {} (address {}) says hello", cpu, insn::stap());
    CPUS[cpu].online.store(true, Ordering::Release);
    // Wake the boot CPU, which waits (enabled) for this.
    // SAFETY: an external call only ends the boot CPU's wait.
    unsafe {
        sigp_retry(
            CPUS[0].addr.load(Ordering::Relaxed) as u16,
            order::EXTERNAL_CALL,
            0,
        )
    };
    loop {
        let w = CPUS[cpu].work.lock().take();
        match w {
            Some(f) => {
                f(cpu);
                // Not busy before done: once run_on_all sees done move, it
                // may hand out the next work (and set busy) at once.
                CPUS[cpu].busy.store(false, Ordering::Release);
                CPUS[cpu].done.fetch_add(1, Ordering::AcqRel);
                wake(core::ptr::from_ref(&CPUS[cpu].done).addr() as u64);
            }
            None => insn::enabled_wait(mask::EXT),
        }
    }
}

/// Run `f(cpu)` on every online CPU, this one included, and wait for all.
///
/// It waits for exactly the CPUs it handed `f` to: a CPU that comes online
/// meanwhile (one that timed out at bring-up may report in at any moment)
/// got no work, and waiting for it would never end.
pub fn run_on_all(f: fn(usize)) {
    let me = cpu_nr();
    // The done count each CPU given `f` had before it; None: not given.
    let mut given = [None; MAX_CPUS];
    for (i, c) in CPUS.iter().enumerate() {
        if i == me || !c.online.load(Ordering::Acquire) {
            continue;
        }
        given[i] = Some(c.done.load(Ordering::Acquire));
        c.busy.store(true, Ordering::Release);
        *c.work.lock() = Some(f);
        // SAFETY: an external call only wakes the CPU's idle loop.
        unsafe {
            sigp_retry(
                c.addr.load(Ordering::Relaxed) as u16,
                order::EXTERNAL_CALL,
                0,
            )
        };
    }
    f(me);
    for (c, given) in CPUS.iter().zip(given) {
        let Some(started) = given else {
            continue;
        };
        wait_until(core::ptr::from_ref(&c.done).addr() as u64, || {
            c.done.load(Ordering::Acquire) != started
        });
    }
}

/// Test-only: what the CPU slots would show if a CPU came online late.
#[cfg(target_os = "none")]
pub(crate) mod testing {
    use core::sync::atomic::Ordering;

    use super::{nr_cpus, CPUS};

    /// Set the online flag of slot `cpu`, one SCLP did not report (so no
    /// CPU runs there): a CPU that timed out at bring-up and reported in
    /// later looks like this to the rest of zdat. Refuses the slots of
    /// real CPUs.
    pub(crate) fn set_online_of_unused_slot(cpu: usize, online: bool) -> Result<(), ()> {
        if cpu < nr_cpus() || cpu >= CPUS.len() {
            return Err(());
        }
        CPUS[cpu].online.store(online, Ordering::Release);
        Ok(())
    }
}

/// Stop every other CPU (SIGP STOP, retried when busy) and wait until each
/// reports stopped, so the run ends only when all have.
pub fn stop_others() {
    let me = cpu_nr();
    for (i, c) in CPUS.iter().enumerate() {
        // Online, or started and maybe about to be: a CPU whose bring-up
        // timed out may report in later, and would keep QEMU running.
        let live = i == 0 || c.online.load(Ordering::Acquire) || c.started.load(Ordering::Acquire);
        if i == me || !live {
            continue;
        }
        let addr = c.addr.load(Ordering::Relaxed) as u16;
        // SAFETY: stopping a CPU at the end of the run.
        unsafe { sigp_retry(addr, order::STOP, 0) };
        for _ in 0..1_000_000 {
            // SAFETY: SENSE only reads the CPU's state.
            let (cc, st) = unsafe { sigp_retry(addr, order::SENSE, 0) };
            if cc == 1 && st & STATUS_STOPPED != 0 {
                break;
            }
            core::hint::spin_loop();
        }
    }
}
