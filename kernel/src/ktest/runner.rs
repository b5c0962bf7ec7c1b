//! Selecting and running suites, printing KTAP.

use core::fmt::{self, Write};

use spin::Mutex;

use crate::fmtbuf::FixedBuf;

use super::glob::{glob_match, has_wildcard};
use super::ktap::{Directive, Ktap};
use super::{Case, Outcome, Suite};

/// Which suites and cases run: comma-separated globs, each `suite` or
/// `suite.case` (as KUnit's `kunit.filter_glob`). No filter selects every
/// suite that is not `explicit`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    globs: Option<&'a str>,
}

impl<'a> Filter<'a> {
    pub fn new(globs: Option<&'a str>) -> Self {
        Self {
            globs: globs.filter(|g| !g.is_empty()),
        }
    }

    /// The first glob of the filter that selects no case of `suites` (a
    /// typo, say): a selection that runs nothing is an error, not a pass.
    pub fn unmatched(&self, suites: &[&Suite]) -> Option<&'a str> {
        let globs = self.globs?;
        globs.split(',').filter(|g| !g.is_empty()).find(|g| {
            let one = Filter { globs: Some(g) };
            !suites
                .iter()
                .any(|s| s.cases.iter().any(|c| one.selects(s, c)))
        })
    }

    pub fn selects(&self, suite: &Suite, case: &Case) -> bool {
        let Some(globs) = self.globs else {
            return !suite.explicit;
        };
        globs.split(',').filter(|g| !g.is_empty()).any(|g| {
            let (sg, cg) = match g.split_once('.') {
                Some((s, c)) => (s, Some(c)),
                None => (g, None),
            };
            let suite_ok = if suite.explicit {
                !has_wildcard(sg) && sg == suite.name
            } else {
                glob_match(sg, suite.name)
            };
            suite_ok && cg.is_none_or(|cg| glob_match(cg, case.name))
        })
    }
}

/// Counts of case results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// State of the running case, for diagnostics printed by assertions.
struct Current {
    case: &'static str,
    level: usize,
    /// Whether the running case printed a failure diagnostic.
    reported: bool,
}

static CURRENT: Mutex<Current> = Mutex::new(Current {
    case: "",
    level: 1,
    reported: false,
});
/// Counters sampled around each suite: what the runner reads from mm and
/// dat itself (free pages, page-table and gmap-table pages, BUG reports),
/// plus any a host test installs.
type Counter = (&'static str, fn() -> u64);

/// The kernel's own counters, read once the subsystems are up (`ready`
/// says whether a counter can be read yet: mm before `mm::init`, say).
#[cfg(target_os = "none")]
const KERNEL_COUNTERS: [(Counter, fn() -> bool); 4 + cfg!(feature = "memdesc") as usize] = [
    (
        ("free pages", crate::mm::nr_free_pages_and_desc_slabs),
        || crate::mm::layout().is_some(),
    ),
    (
        ("page-table pages", crate::mm::ptdesc::nr_pagetable),
        || true,
    ),
    (
        ("gmap-table pages", crate::mm::gtdesc::nr_gmap_table_pages),
        || true,
    ),
    // Not a leak but a bug count: a suite during which the kernel reported
    // a BUG (`crate::bug`) fails.
    (("BUG reports", crate::bug::nr_reports), || true),
    // memdesc: descriptors in use (a ctor without its dtor leaks one).
    #[cfg(feature = "memdesc")]
    (("descriptors", crate::mm::desc::nr_desc), || true),
];

static EXTRA_COUNTERS: Mutex<[Option<Counter>; 2]> = Mutex::new([None; 2]);

#[cfg(test)]
pub(super) fn set_leak_counter(name: &'static str, f: fn() -> u64) {
    let mut c = EXTRA_COUNTERS.lock();
    if let Some(slot) = c.iter_mut().find(|s| s.is_none_or(|(n, _)| n == name)) {
        *slot = Some((name, f));
    }
}

/// Every counter readable now.
fn leak_counters() -> impl Iterator<Item = Counter> {
    #[cfg(target_os = "none")]
    let kernel = KERNEL_COUNTERS
        .into_iter()
        .filter(|(_, ready)| ready())
        .map(|(c, _)| c);
    #[cfg(not(target_os = "none"))]
    let kernel = core::iter::empty();
    kernel.chain(EXTRA_COUNTERS.lock().into_iter().flatten())
}

/// Where the failure of `fail.alloc=N` from the command line fired:
/// (suite, case or `(init)`/`(exit)`).
static FAIL_ALLOC_FIRED_IN: Mutex<Option<(&'static str, &'static str)>> = Mutex::new(None);

/// The suite and case (or `(init)`, `(exit)`) in which the failure of
/// `fail.alloc=N` from the command line fired, if it fired in one.
pub fn fail_alloc_fired_in() -> Option<(&'static str, &'static str)> {
    *FAIL_ALLOC_FIRED_IN.lock()
}

/// `fail.alloc=N` from the command line, watched around a case (or a
/// suite's init or exit): which of the run's allocations it made, so that
/// x.py can aim N at every case, and whether the failure fired in it.
/// Reads the countdown only: nothing is added to the allocator.
struct FailWatch {
    allocs: Option<u64>,
    fired: bool,
}

impl FailWatch {
    fn start() -> Self {
        Self {
            allocs: crate::mm::fail::cmdline_allocations(),
            fired: crate::mm::fail::cmdline_fired(),
        }
    }

    fn end(self, suite: &'static str, what: &'static str) {
        use crate::mm::fail;
        if fail::cmdline_fired() && !self.fired {
            *FAIL_ALLOC_FIRED_IN.lock() = Some((suite, what));
            if let Some((n, _)) = fail::cmdline_report() {
                let from = self.allocs.map_or(0, |a| a + 1);
                diag(format_args!(
                    "fail.alloc={n}: injected in {suite}.{what} (allocations {from}-{n})"
                ));
            }
        } else if let (Some(a), Some(b)) = (self.allocs, fail::cmdline_allocations()) {
            if b > a {
                diag(format_args!(
                    "fail.alloc: allocations {}-{} in {}.{}",
                    a + 1,
                    b,
                    suite,
                    what
                ));
            }
        }
    }
}

/// Format KTAP lines into one buffer and print them with one console write.
fn emit(f: impl FnOnce(&mut Ktap<&mut FixedBuf<1536>>) -> fmt::Result) {
    let mut out = FixedBuf::<1536>::new();
    let _ = f(&mut Ktap::new(&mut out));
    crate::kprint!("{}", out.as_str());
}

type MsgBuf = FixedBuf<768>;

pub(super) fn diag(what: fmt::Arguments<'_>) {
    let level = CURRENT.lock().level;
    let mut m = MsgBuf::new();
    let _ = m.write_fmt(what);
    emit(|k| k.diag(level, m.as_str()));
}

pub(super) fn report_failure(file: &str, line: u32, what: fmt::Arguments<'_>) {
    let (case, level) = {
        let mut c = CURRENT.lock();
        c.reported = true;
        (c.case, c.level)
    };
    let mut m = MsgBuf::new();
    let _ = write!(m, "{case}: ASSERTION FAILED at {file}:{line}\n{what}");
    emit(|k| k.diag(level, m.as_str()));
}

/// Print `suite.case` for every selected case.
pub fn list(suites: &[&Suite], filter: &Filter<'_>) -> usize {
    let mut n = 0;
    for s in suites {
        for c in s.cases.iter().filter(|c| filter.selects(s, c)) {
            crate::kprintln!("{}.{}", s.name, c.name);
            n += 1;
        }
    }
    // With no filter, also show the suites that run only when named (not
    // counted: they are not selected).
    if filter.globs.is_none() {
        for s in suites.iter().filter(|s| s.explicit) {
            for c in s.cases {
                crate::kprintln!(
                    "{}.{}  (explicit: runs only as ktest.filter={})",
                    s.name,
                    c.name,
                    s.name
                );
            }
        }
    }
    n
}

/// Run the selected cases of `suites`, printing KTAP version 1.
pub fn run(suites: &[&Suite], filter: &Filter<'_>) -> Summary {
    let selected = suites
        .iter()
        .filter(|s| s.cases.iter().any(|c| filter.selects(s, c)))
        .count();
    emit(|k| {
        k.version(0)?;
        k.plan(0, selected)
    });
    let mut total = Summary::default();
    let mut number = 0;
    for suite in suites {
        let n = suite
            .cases
            .iter()
            .filter(|c| filter.selects(suite, c))
            .count();
        if n == 0 {
            continue;
        }
        number += 1;
        let s = run_suite(suite, filter, n);
        total.passed += s.passed;
        total.failed += s.failed;
        total.skipped += s.skipped;
        emit(|k| k.result(0, number, s.ok(), suite.name, Directive::None));
    }
    emit(|k| {
        let mut m = MsgBuf::new();
        let _ = write!(
            m,
            "Totals: pass:{} fail:{} skip:{} total:{}",
            total.passed,
            total.failed,
            total.skipped,
            total.passed + total.failed + total.skipped
        );
        k.diag(0, m.as_str())
    });
    total
}

fn run_suite(suite: &Suite, filter: &Filter<'_>, n: usize) -> Summary {
    emit(|k| {
        k.version(1)?;
        k.subtest(1, suite.name)?;
        k.plan(1, n)
    });
    let mut counters: [Option<Counter>; 6] = [None; 6];
    for (slot, c) in counters.iter_mut().zip(leak_counters()) {
        *slot = Some(c);
    }
    let before = counters.map(|c| c.map(|(_, f)| f()));
    set_current(suite.name, 1);
    let watch = FailWatch::start();
    let init = suite.init.map_or(Ok(()), |f| f());
    watch.end(suite.name, "(init)");
    let mut sum = Summary::default();
    // Per counter, the first cases that changed it: (case, by how much).
    let mut moved: [[Option<(&str, i128)>; 3]; 6] = [[None; 3]; 6];
    for (i, case) in suite
        .cases
        .iter()
        .filter(|c| filter.selects(suite, c))
        .enumerate()
    {
        set_current(case.name, 1);
        let case_before = counters.map(|c| c.map(|(_, f)| f()));
        let result = match init {
            Ok(()) => {
                let watch = FailWatch::start();
                let r = (case.run)();
                watch.end(suite.name, case.name);
                // A case's announcement of expected refusals ends with it.
                crate::mm::expect_refusals(false);
                r
            }
            Err(_) => {
                diag(format_args!(
                    "{}: suite init failed, case not run",
                    case.name
                ));
                Err(Outcome::Fail)
            }
        };
        let (ok, directive) = match result {
            Ok(()) => {
                sum.passed += 1;
                (true, Directive::None)
            }
            Err(Outcome::Skip(reason)) => {
                sum.skipped += 1;
                (true, Directive::Skip(reason))
            }
            Err(Outcome::Fail) => {
                sum.failed += 1;
                if init.is_ok() && !CURRENT.lock().reported {
                    diag(format_args!(
                        "{}: failed without saying why (return kfail!(\"reason\") instead of Err(Outcome::Fail))",
                        case.name
                    ));
                }
                (false, Directive::None)
            }
        };
        // Which case moved a leak counter, for the suite's LEAK line.
        let after = counters.map(|c| c.map(|(_, f)| f()));
        for (slots, (a, b)) in moved.iter_mut().zip(after.iter().zip(case_before.iter())) {
            if let (Some(a), Some(b)) = (a, b) {
                if a != b {
                    if let Some(slot) = slots.iter_mut().find(|s| s.is_none()) {
                        *slot = Some((case.name, *a as i128 - *b as i128));
                    }
                }
            }
        }
        emit(|k| k.result(1, i + 1, ok, case.name, directive));
    }
    if init.is_ok() {
        if let Some(exit) = suite.exit {
            let watch = FailWatch::start();
            exit();
            watch.end(suite.name, "(exit)");
        }
    }
    for (i, (c, before)) in counters.iter().zip(before).enumerate() {
        let (Some((name, f)), Some(before)) = (c, before) else {
            continue;
        };
        let after = f();
        if after == before {
            continue;
        }
        set_current(suite.name, 1);
        if suite.keeps_memory {
            diag(format_args!(
                "{}: keeps {} {} on purpose",
                suite.name,
                before.abs_diff(after),
                name
            ));
        } else {
            diag(format_args!(
                "{}: LEAK: {} {} before the suite, {} after",
                suite.name, name, before, after
            ));
            for (case, by) in moved[i].iter().flatten() {
                diag(format_args!(
                    "{}: {} changed by {:+} during case {}",
                    suite.name, name, by, case
                ));
            }
            sum.failed += 1;
        }
    }
    sum
}

fn set_current(case: &'static str, level: usize) {
    let mut c = CURRENT.lock();
    c.case = case;
    c.level = level;
    c.reported = false;
}
