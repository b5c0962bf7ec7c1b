//! Suites that fail on purpose, to prove the failure paths end-to-end
//! (`python3 x.py test --selftest`). They are `explicit`: only a filter that
//! names them runs them, never the default run.

use crate::ktest::KResult;
use crate::{kassert_eq, kskip, ktest_suite};

fn passes() -> KResult {
    kassert_eq!(1 + 1, 2);
    Ok(())
}

fn fails_on_purpose() -> KResult {
    let two = core::hint::black_box(2);
    kassert_eq!(two + 1, 4);
    Ok(())
}

fn skips_on_purpose() -> KResult {
    kskip!("selftest of the SKIP directive");
}

fn runs_after_a_failure() -> KResult {
    Ok(())
}

ktest_suite!(
    SELFTEST,
    "selftest",
    [passes, fails_on_purpose, skips_on_purpose, runs_after_a_failure],
    explicit: true,
);

#[cfg(target_arch = "s390x")]
fn unexpected_program_check() -> KResult {
    // An operation exception outside any exception-table entry: the kernel
    // must dump and end the run with a failing status.
    // SAFETY: deliberately crashes the run; nothing after it executes.
    unsafe { core::arch::asm!(".short 0x0000") };
    Ok(())
}

#[cfg(not(target_arch = "s390x"))]
fn unexpected_program_check() -> KResult {
    Ok(())
}

ktest_suite!(SELFTEST_CRASH, "selftest_crash", [unexpected_program_check], explicit: true);

fn panics() -> KResult {
    let v: Option<u32> = core::hint::black_box(None);
    if v.is_none() {
        panic!("selftest panic on purpose");
    }
    Ok(())
}

ktest_suite!(SELFTEST_PANIC, "selftest_panic", [panics], explicit: true);

fn hangs() -> KResult {
    // Never returns: x.py must kill QEMU at its timeout and report it.
    loop {
        core::hint::spin_loop();
    }
}

ktest_suite!(SELFTEST_HANG, "selftest_hang", [hangs], explicit: true);

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut buf = [0u64; 64];
    buf[(depth % 64) as usize] = depth;
    core::hint::black_box(&mut buf);
    core::hint::black_box(recurse(depth + 1)) + buf[0]
}

fn overflows_the_stack() -> KResult {
    // Unbounded recursion: the guard page below the stack must stop it
    // with a dump that says so, not corrupt memory below the stack.
    let r = recurse(core::hint::black_box(0));
    kassert_eq!(r, 0);
    Ok(())
}

ktest_suite!(SELFTEST_STACK, "selftest_stack_overflow", [overflows_the_stack], explicit: true);
