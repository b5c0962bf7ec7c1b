//! Ending the run: the status marker, the crash dump for unexpected
//! interruptions and panics, and the disabled wait QEMU turns into its exit
//! status.

use core::sync::atomic::{AtomicBool, Ordering};

/// How the run ended; printed as `EXIT: STATUS=n` and encoded in the
/// disabled-wait address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ExitStatus {
    Success = 0,
    TestsFailed = 1,
    Panic = 2,
    Crash = 3,
    BadConfig = 4,
}

/// Disabled-wait address for a clean end: QEMU exits 0.
const WAIT_SUCCESS: u64 = 0xfff;
/// Failure addresses carry the status: QEMU exits 1 and `-d guest_errors`
/// shows the address.
const WAIT_FAILURE_BASE: u64 = 0x0dea_d000;

/// Where a CPU that lost the race to end the run waits. QEMU never sees it
/// (the winner stops that CPU before its own wait), unless the winner died
/// on the way: then the run still fails.
#[cfg(target_arch = "s390x")]
const WAIT_LOST_EXIT: u64 = WAIT_FAILURE_BASE | 0xff;

fn wait_address(status: ExitStatus) -> u64 {
    match status {
        ExitStatus::Success => WAIT_SUCCESS,
        s => WAIT_FAILURE_BASE | s as u64,
    }
}

/// End the run with `status`: stop every other CPU, print the status
/// marker, stop the machine. If another CPU is already ending the run,
/// this one leaves it to that CPU (its status still counts) and waits.
pub fn exit(status: ExitStatus) -> ! {
    #[cfg(target_arch = "s390x")]
    owner::claim_for_exit(status);
    halt(status, true)
}

/// The owner's end of the run: every other CPU stopped (so nobody else
/// prints), the others' requests noted, one marker, the final wait.
#[cfg(target_arch = "s390x")]
fn halt(status: ExitStatus, marker: bool) -> ! {
    // The run ends only once every CPU has stopped; this one goes last and
    // its disabled-wait address becomes QEMU's exit status.
    crate::smp::stop_others();
    // SAFETY: every other CPU is stopped for good: one stopped while it
    // held a console lock never uses it again.
    unsafe { crate::console::force_unlock() };
    let status = owner::worst(status);
    if marker {
        owner::print_others();
        crate::kprintln!("EXIT: STATUS={}", status as u64);
    }
    crate::arch::s390x::insn::disabled_wait(wait_address(status))
}

#[cfg(not(target_arch = "s390x"))]
fn halt(status: ExitStatus, marker: bool) -> ! {
    if marker {
        crate::kprintln!("EXIT: STATUS={}", status as u64);
    }
    let _ = wait_address(status);
    panic!("kernel exit with {status:?}");
}

/// Exactly one CPU ends the run (Linux's panic_cpu): the one whose claim
/// on `OWNER` holds. Without it two CPUs ending the run at once each
/// printed a marker and stopped the other, and a passing end that started
/// first stopped a crashing CPU before its dump: QEMU exited 0.
///
/// A crash claims outright, even over a CPU that is ending the run
/// normally but has not begun to stop the others: a crash is never lost to
/// a passing end that happened to start first. A normal end claims softly
/// and first waits (at most `BUSY_WAIT_US`) until no other CPU runs work
/// (`smp::is_busy`) unless parked here; a CPU that crashes meanwhile takes
/// the run over. A CPU that loses records its status, which the winner's
/// marker includes, and waits disabled, signalling nobody: the winner
/// stops it.
#[cfg(target_arch = "s390x")]
mod owner {
    use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

    use super::{ExitStatus, WAIT_LOST_EXIT};
    use crate::arch::s390x::tod;
    use crate::sclp::info::MAX_CPUS;
    use crate::smp;

    const NOBODY: u64 = u64::MAX;
    /// Or'ed into `OWNER` once the owner's claim is final.
    const FINAL: u64 = 1 << 32;
    /// How long a normal end waits for busy CPUs.
    const BUSY_WAIT_US: u64 = 1_000_000;

    /// NOBODY, the CPU number of a normal end's claim, or a number | FINAL.
    static OWNER: AtomicU64 = AtomicU64::new(NOBODY);
    /// What each CPU asked to end the run with (status + 1; 0: nothing).
    static ASKED: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
    /// CPUs that lost and wait for the owner to stop them.
    static PARKED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

    fn this_cpu() -> usize {
        smp::cpu_nr().min(MAX_CPUS - 1)
    }

    /// Leave the end of the run to the owner.
    fn lose(me: usize) -> ! {
        PARKED[me].store(true, Ordering::Release);
        crate::arch::s390x::insn::disabled_wait(WAIT_LOST_EXIT)
    }

    /// A crash ends the run: returns on the CPU that ends it (this one, also
    /// if it was ending it already), never on the others.
    pub(super) fn claim_for_crash(status: ExitStatus) {
        let me = this_cpu();
        ASKED[me].fetch_max(status as u8 + 1, Ordering::AcqRel);
        let mine = me as u64 | FINAL;
        let mut cur = OWNER.load(Ordering::Acquire);
        loop {
            if cur == mine {
                return;
            }
            if cur != NOBODY && cur & FINAL != 0 {
                lose(me);
            }
            // Nobody, or a normal end still waiting (this CPU's or another's).
            match OWNER.compare_exchange(cur, mine, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// A normal end of the run: returns on the CPU that ends it, once no
    /// other CPU runs work (or the wait ran out), never on the others.
    pub(super) fn claim_for_exit(status: ExitStatus) {
        let me = this_cpu();
        ASKED[me].fetch_max(status as u8 + 1, Ordering::AcqRel);
        let soft = me as u64;
        match OWNER.compare_exchange(NOBODY, soft, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            // Ours for good already: the crash path's own end.
            Err(cur) if cur == soft | FINAL => return,
            Err(_) => lose(me),
        }
        let deadline = tod::stck() + tod::usecs_to_tod(BUSY_WAIT_US);
        loop {
            if OWNER.load(Ordering::Acquire) != soft {
                // A crash took the run over; it stops this CPU.
                lose(me);
            }
            let busy = (0..smp::nr_cpus())
                .any(|i| i != me && smp::is_busy(i) && !PARKED[i].load(Ordering::Acquire));
            if !busy || tod::stck() > deadline {
                break;
            }
            core::hint::spin_loop();
        }
        if OWNER
            .compare_exchange(soft, soft | FINAL, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            lose(me);
        }
    }

    /// The worst status asked for, `status` included (once the others are
    /// stopped, nobody adds to it).
    pub(super) fn worst(status: ExitStatus) -> ExitStatus {
        let asked = ASKED
            .iter()
            .map(|a| a.load(Ordering::Acquire).saturating_sub(1))
            .max()
            .unwrap_or(0);
        match asked.max(status as u8) {
            0 => ExitStatus::Success,
            1 => ExitStatus::TestsFailed,
            2 => ExitStatus::Panic,
            3 => ExitStatus::Crash,
            _ => ExitStatus::BadConfig,
        }
    }

    /// Say which other CPUs asked to end the run too, and which were still
    /// running work when they were stopped.
    pub(super) fn print_others() {
        let me = this_cpu();
        for (cpu, asked) in ASKED.iter().enumerate() {
            let a = asked.load(Ordering::Acquire);
            if cpu == me {
                continue;
            }
            if a != 0 {
                crate::kprintln!(
                    "zdat: CPU {} also asked to end the run (status {}); CPU {} ends it",
                    cpu,
                    a - 1,
                    me
                );
            } else if smp::is_busy(cpu) {
                crate::kprintln!("zdat: CPU {} was still running work when stopped", cpu);
            }
        }
    }
}

static IN_FATAL: AtomicBool = AtomicBool::new(false);

/// Enter the crash path: on the CPU that ends the run only (another CPU's
/// crash already doing so leaves this one waiting); a crash inside the
/// crash path stops at once. The other CPUs stop before the dump: one
/// printing meanwhile would fill the one SCCB and the line buffer with its
/// own text while the dump does.
fn enter_fatal(status: ExitStatus) {
    #[cfg(target_arch = "s390x")]
    owner::claim_for_crash(status);
    if IN_FATAL.swap(true, Ordering::SeqCst) {
        halt(ExitStatus::Crash, false);
    }
    let _ = status;
    #[cfg(target_arch = "s390x")]
    crate::smp::stop_others();
    // SAFETY: the crash path never returns, and every other CPU is stopped
    // for good: no holder of a console lock runs again.
    unsafe { crate::console::force_unlock() };
}

/// The kernel's panic handler (boot's `#[panic_handler]` calls this).
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    enter_fatal(ExitStatus::Panic);
    #[cfg(target_arch = "s390x")]
    crate::kprintln!(
        "zdat: KERNEL PANIC on CPU {}: {}",
        crate::smp::cpu_nr(),
        info
    );
    #[cfg(not(target_arch = "s390x"))]
    crate::kprintln!("zdat: KERNEL PANIC: {}", info);
    #[cfg(target_arch = "s390x")]
    dump::backtrace_here();
    exit(ExitStatus::Panic)
}

#[cfg(target_arch = "s390x")]
pub use dump::{backtrace_here, fatal_interrupt};

#[cfg(target_arch = "s390x")]
mod dump {
    use super::{enter_fatal, exit, ExitStatus};
    use crate::arch::lowcore::IntClass;
    use crate::arch::pgm;
    use crate::arch::s390x::cr::stctg;
    use crate::arch::s390x::interrupt::InterruptFrame;
    use crate::arch::s390x::probe;
    use crate::kprintln;

    /// Offset of the saved r14 in a standard (non-packed) s390x frame.
    const FRAME_R14: u64 = 112;
    const MAX_FRAMES: usize = 32;

    /// Print everything known about an interruption nobody expected, then
    /// end the run with a failing status.
    pub fn fatal_interrupt(frame: &InterruptFrame, class: IntClass, why: &str) -> ! {
        enter_fatal(ExitStatus::Crash);
        kprintln!(
            "zdat: {} ({} interruption) on CPU {}",
            why,
            class.name(),
            crate::smp::cpu_nr()
        );
        match class {
            IntClass::Program => {
                let pc = frame.program_check();
                kprintln!(
                    "  code {:#06x} ({}), ilc {}, teid {:#018x}{}",
                    pc.code,
                    pgm::code_name(pc.code),
                    pc.ilc,
                    pc.teid,
                    if pgm::stores_teid(pc.code) {
                        ""
                    } else {
                        " (not stored for this code)"
                    }
                );
                if pgm::stores_teid(pc.code) && crate::dat::kernel::is_stack_guard(pc.teid & !0xfff)
                {
                    kprintln!(
                        "  STACK OVERFLOW: the access hit the guard page at {:#x}",
                        pc.teid & !0xfff
                    );
                }
            }
            IntClass::External => kprintln!("  external code {:#06x}", frame.ext_code()),
            IntClass::Svc => kprintln!("  svc {:#x}", frame.svc_code()),
            IntClass::MachineCheck => kprintln!("  mcic {:#018x}", frame.mcck_code()),
            _ => {}
        }
        kprintln!(
            "  old PSW {:016x} {:016x}{}",
            frame.psw.mask,
            frame.psw.addr,
            if frame.psw.is_problem_state() {
                " (problem state)"
            } else {
                ""
            }
        );
        for row in 0..4 {
            let r = row * 4;
            kprintln!(
                "  r{:<2}-r{:<2} {:016x} {:016x} {:016x} {:016x}",
                r,
                r + 3,
                frame.gprs[r],
                frame.gprs[r + 1],
                frame.gprs[r + 2],
                frame.gprs[r + 3]
            );
        }
        kprintln!(
            "  cr0 {:016x} cr1 {:016x} cr7 {:016x} cr13 {:016x}",
            stctg::<0>(),
            stctg::<1>(),
            stctg::<7>(),
            stctg::<13>()
        );
        kprintln!("  Call Trace:");
        kprintln!("   [<{:016x}>] (psw)", frame.psw.addr);
        kprintln!("   [<{:016x}>] (r14)", frame.gprs[14]);
        walk(frame.gprs[15]);
        exit(ExitStatus::Crash)
    }

    /// Backtrace from the current frame (panics, and the allocation
    /// `fail.alloc=N` makes fail).
    pub fn backtrace_here() {
        let sp: u64;
        // SAFETY: reads r15 only.
        unsafe { core::arch::asm!("lgr {0},%r15", out(reg) sp, options(nomem, nostack)) };
        kprintln!("  Call Trace:");
        walk(sp);
    }

    /// Follow the back chain (built with -Ctarget-feature=+backchain): each
    /// frame's first word is its caller's frame, and the caller's frame
    /// holds the return address at offset 112. Every load is a probe, and a
    /// chain that does not strictly grow ends the walk, so a corrupt stack
    /// cannot crash the dump.
    fn walk(mut sp: u64) {
        for _ in 0..MAX_FRAMES {
            if sp == 0 || !sp.is_multiple_of(8) {
                return;
            }
            let Ok(caller) = probe::load_u64(sp) else {
                return;
            };
            if caller <= sp {
                return;
            }
            let Ok(ret) = probe::load_u64(caller + FRAME_R14) else {
                return;
            };
            kprintln!("   [<{:016x}>]", ret);
            sp = caller;
        }
    }
}
