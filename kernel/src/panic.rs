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

/// Print the status marker and stop the machine.
pub fn exit(status: ExitStatus) -> ! {
    crate::kprintln!("EXIT: STATUS={}", status as u64);
    stop(status)
}

#[cfg(target_arch = "s390x")]
fn stop(status: ExitStatus) -> ! {
    // The run ends only once every CPU has stopped; this one goes last and
    // its disabled-wait address becomes QEMU's exit status.
    crate::smp::stop_others();
    let addr = match status {
        ExitStatus::Success => WAIT_SUCCESS,
        s => WAIT_FAILURE_BASE | s as u64,
    };
    crate::arch::s390x::insn::disabled_wait(addr)
}

#[cfg(not(target_arch = "s390x"))]
fn stop(status: ExitStatus) -> ! {
    let _ = (WAIT_SUCCESS, WAIT_FAILURE_BASE);
    panic!("kernel exit with {status:?}");
}

static IN_FATAL: AtomicBool = AtomicBool::new(false);

/// Enter the crash path once; a crash inside the crash path stops at once.
fn enter_fatal() {
    if IN_FATAL.swap(true, Ordering::SeqCst) {
        stop(ExitStatus::Crash);
    }
    // SAFETY: the crash path never returns, so breaking the console locks
    // cannot let their previous holders continue with a broken invariant.
    unsafe { crate::console::force_unlock() };
}

/// The kernel's panic handler (boot's `#[panic_handler]` calls this).
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    enter_fatal();
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
        enter_fatal();
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
