//! Host tests of the ktest runner: the exact KTAP it prints for passing,
//! failing and skipped cases, filtering, explicit suites and the leak check.

use crate::console::capture;
use crate::ktest::{self, Filter, KResult, Suite, Summary};
use crate::{kassert, kassert_eq, kskip, ktest_suite};

fn ok_case() -> KResult {
    kassert!(1 < 2);
    Ok(())
}

/// The line of the failing assertion below (checked by the case itself).
const FAIL_LINE: u32 = line!() + 5;

fn failing_case() -> KResult {
    let x = 3;
    assert_eq!(FAIL_LINE, line!() + 1);
    kassert_eq!(x, 4);
    Ok(())
}

fn skipped_case() -> KResult {
    kskip!("not on this machine");
}

ktest_suite!(ALPHA, "alpha", [ok_case, failing_case, skipped_case]);
ktest_suite!(BETA, "beta", [ok_case]);
ktest_suite!(HIDDEN, "hidden", [ok_case], explicit: true);

/// The runner keeps the running case in a global; host tests run in
/// parallel threads, so the ones that run suites take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn suites() -> [&'static Suite; 3] {
    [ALPHA, BETA, HIDDEN]
}

#[test]
fn ktap_output_for_pass_fail_skip() {
    let _serial = SERIAL.lock().unwrap();
    let _ = capture::take();
    let sum = ktest::run(&suites(), &Filter::new(None));
    let out = capture::take();
    assert_eq!(
        sum,
        Summary {
            passed: 2,
            failed: 1,
            skipped: 1
        }
    );
    let expected = format!(
        "KTAP version 1
1..2
    KTAP version 1
    # Subtest: alpha
    1..3
    ok 1 ok_case
    # failing_case: ASSERTION FAILED at kernel/src/ktest_tests.rs:{}
    # Expected x == 4, but
    #     x == 3
    #     4 == 4
    not ok 2 failing_case
    ok 3 skipped_case # SKIP not on this machine
not ok 1 alpha
    KTAP version 1
    # Subtest: beta
    1..1
    ok 1 ok_case
ok 2 beta
# Totals: pass:2 fail:1 skip:1 total:4
",
        FAIL_LINE
    );
    assert_eq!(out, expected);
}

#[test]
fn filter_by_suite_and_case_globs() {
    let s = suites();
    let f = Filter::new(Some("alpha.ok*,be?a"));
    let _serial = SERIAL.lock().unwrap();
    let _ = capture::take();
    assert_eq!(ktest::list(&s, &f), 2);
    assert_eq!(capture::take(), "alpha.ok_case\nbeta.ok_case\n");
    let sum = ktest::run(&s, &f);
    assert_eq!(
        sum,
        Summary {
            passed: 2,
            failed: 0,
            skipped: 0
        }
    );
    let out = capture::take();
    assert!(out.starts_with("KTAP version 1\n1..2\n"));
    assert!(!out.contains("failing_case"));
}

#[test]
fn a_glob_that_selects_nothing_is_named() {
    let s = suites();
    assert_eq!(Filter::new(None).unmatched(&s), None);
    assert_eq!(Filter::new(Some("alpha,beta.ok*")).unmatched(&s), None);
    assert_eq!(
        Filter::new(Some("alpha,nosuch*")).unmatched(&s),
        Some("nosuch*")
    );
    assert_eq!(
        Filter::new(Some("alpha.nocase")).unmatched(&s),
        Some("alpha.nocase")
    );
    // An explicit suite needs its literal name: a wildcard reaches nothing.
    assert_eq!(Filter::new(Some("hid*")).unmatched(&s), Some("hid*"));
    assert_eq!(Filter::new(Some("hidden")).unmatched(&s), None);
}

#[test]
fn explicit_suites_need_their_literal_name() {
    let s = suites();
    let _serial = SERIAL.lock().unwrap();
    let _ = capture::take();
    assert_eq!(ktest::list(&s, &Filter::new(None)), 4);
    assert_eq!(ktest::list(&s, &Filter::new(Some("*"))), 4);
    assert_eq!(ktest::list(&s, &Filter::new(Some("hid*"))), 0);
    assert_eq!(ktest::list(&s, &Filter::new(Some("hidden"))), 1);
    assert_eq!(ktest::list(&s, &Filter::new(Some("hidden.ok_case"))), 1);
    let _ = capture::take();
}

#[test]
fn empty_selection_prints_empty_plan() {
    let _serial = SERIAL.lock().unwrap();
    let _ = capture::take();
    let sum = ktest::run(&suites(), &Filter::new(Some("nothing")));
    assert_eq!(sum, Summary::default());
    assert_eq!(
        capture::take(),
        "KTAP version 1\n1..0\n# Totals: pass:0 fail:0 skip:0 total:0\n"
    );
}

static EXIT_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn failing_init() -> KResult {
    kassert!(false);
    Ok(())
}

fn counting_exit() {
    EXIT_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

ktest_suite!(BROKEN_INIT, "broken_init", [ok_case, ok_case], init: failing_init, exit: counting_exit);
ktest_suite!(WITH_EXIT, "with_exit", [ok_case], init: || Ok(()), exit: counting_exit);

#[test]
fn init_failure_fails_every_case_and_skips_exit() {
    let _serial = SERIAL.lock().unwrap();
    let _ = capture::take();
    EXIT_CALLS.store(0, std::sync::atomic::Ordering::SeqCst);
    let sum = ktest::run(&[BROKEN_INIT, WITH_EXIT], &Filter::new(None));
    let out = capture::take();
    assert_eq!(
        sum,
        Summary {
            passed: 1,
            failed: 2,
            skipped: 0
        }
    );
    // exit runs only for the suite whose init succeeded.
    assert_eq!(EXIT_CALLS.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(out.contains("    # ok_case: suite init failed, case not run\n    not ok 1 ok_case\n"));
    assert!(out.contains("not ok 1 broken_init\n"));
    assert!(out.contains("ok 2 with_exit\n"));
}

static FREE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);

fn leaks_a_page() -> KResult {
    FREE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

ktest_suite!(LEAKY, "leaky", [leaks_a_page]);
ktest_suite!(KEEPER, "keeper", [leaks_a_page], keeps_memory: true);

fn fails_silently() -> KResult {
    Err(crate::ktest::Outcome::Fail)
}

fn fails_with_a_message() -> KResult {
    let n = 3;
    crate::kassert_eq!(n, 4, "after {} rounds", n);
    Ok(())
}

ktest_suite!(QUIET, "quiet", [fails_silently, fails_with_a_message]);

#[test]
fn a_failure_always_says_why() {
    let _serial = SERIAL.lock().unwrap();
    let _ = capture::take();
    let sum = ktest::run(&[QUIET], &Filter::new(None));
    let out = capture::take();
    assert_eq!(sum.failed, 2);
    assert!(
        out.contains("fails_silently: failed without saying why"),
        "{out}"
    );
    assert!(out.contains("    #     after 3 rounds\n"), "{out}");
    assert!(
        !out.contains("fails_with_a_message: failed without saying why"),
        "{out}"
    );
}

#[test]
fn leak_check_fails_the_suite_unless_it_keeps_memory() {
    let _serial = SERIAL.lock().unwrap();
    let _ = capture::take();
    ktest::set_leak_counter("free pages", || {
        FREE.load(std::sync::atomic::Ordering::SeqCst)
    });
    let sum = ktest::run(&[LEAKY, KEEPER], &Filter::new(None));
    let out = capture::take();
    // Both cases pass; the leaky suite fails as a whole.
    assert_eq!(
        sum,
        Summary {
            passed: 2,
            failed: 1,
            skipped: 0
        }
    );
    assert!(out.contains(
        "    # leaky: LEAK: free pages 100 before the suite, 99 after\n    \
         # leaky: free pages changed by -1 during case leaks_a_page\nnot ok 1 leaky\n"
    ));
    assert!(out.contains("    # keeper: keeps 1 free pages on purpose\nok 2 keeper\n"));
}
