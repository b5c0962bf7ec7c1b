//! ktest: the in-kernel test harness. Suites are registered next to their
//! code with `ktest_suite!`, which places a pointer in the `.ktest_suites`
//! linker section (like KUnit's suite list), so adding a suite needs no
//! central list. Cases return `KResult`; the assertion macros print a
//! diagnostic with file:line and both values and end only the current case.

#[cfg(target_os = "none")]
pub mod fixtures;
pub mod glob;
pub mod ktap;
mod runner;
mod selftest;

pub use runner::{fail_alloc_fired_in, list, run, Filter, Summary};

/// xorshift64*: a deterministic pseudo-random sequence for tests (fixed
/// seeds make every run the same).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Why a case did not pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An assertion failed (its diagnostic is already printed).
    Fail,
    /// The case does not apply here; the reason goes into `# SKIP`.
    Skip(&'static str),
}

pub type KResult = Result<(), Outcome>;

pub struct Case {
    pub name: &'static str,
    pub run: fn() -> KResult,
}

pub struct Suite {
    pub name: &'static str,
    pub cases: &'static [Case],
    /// Runs before the first case; an error fails every case of the suite.
    pub init: Option<fn() -> KResult>,
    /// Runs after the last case.
    pub exit: Option<fn()>,
    /// Runs only when a filter names it literally (`ktest.filter=selftest`),
    /// never as part of the default run or a wildcard.
    pub explicit: bool,
    /// The suite keeps memory on purpose: the leak check only reports it.
    pub keeps_memory: bool,
}

impl Suite {
    /// Defaults for the optional fields, for use in `ktest_suite!`.
    pub const DEFAULT: Suite = Suite {
        name: "",
        cases: &[],
        init: None,
        exit: None,
        explicit: false,
        keeps_memory: false,
    };
}

/// Register a suite:
/// `ktest_suite!(SCLP_SUITE, "sclp", [memory_size, cpu_count]);`
/// `ktest_suite!(S, "name", [cases...], init: f, exit: g, explicit: true);`
#[macro_export]
macro_rules! ktest_suite {
    ($ident:ident, $name:literal, [$($case:ident),* $(,)?] $(, $field:ident : $value:expr)* $(,)?) => {
        #[cfg_attr(target_os = "none", link_section = ".ktest_suites")]
        #[used]
        static $ident: &$crate::ktest::Suite = &$crate::ktest::Suite {
            name: $name,
            cases: &[$($crate::ktest::Case { name: stringify!($case), run: $case }),*],
            $($field: $crate::ktest::ktest_suite!(@field $field $value),)*
            ..$crate::ktest::Suite::DEFAULT
        };
    };
    (@field init $v:expr) => { Some($v) };
    (@field exit $v:expr) => { Some($v) };
    (@field $f:ident $v:expr) => { $v };
}
pub use ktest_suite;

/// Every registered suite, in link order.
#[cfg(target_os = "none")]
pub fn suites() -> &'static [&'static Suite] {
    extern "C" {
        static __start_ktest_suites: u8;
        static __stop_ktest_suites: u8;
    }
    // SAFETY: the linker script brackets .ktest_suites with these symbols;
    // `ktest_suite!` puts only `&'static Suite` values there (8 bytes,
    // 8-aligned, no padding between them).
    unsafe {
        let start = core::ptr::addr_of!(__start_ktest_suites) as *const &'static Suite;
        let stop = core::ptr::addr_of!(__stop_ktest_suites) as usize;
        let n = (stop - start as usize) / core::mem::size_of::<&Suite>();
        core::slice::from_raw_parts(start, n)
    }
}

/// Report a failed assertion of the running case (used by the macros).
pub fn report_failure(file: &str, line: u32, what: core::fmt::Arguments<'_>) {
    runner::report_failure(file, line, what);
}

/// Print a diagnostic line inside the running case.
pub fn diag(what: core::fmt::Arguments<'_>) {
    runner::diag(what);
}

/// An extra counter the runner samples before and after each suite, on
/// top of the kernel's own (free pages, page-table and gmap-table pages,
/// BUG reports, which the runner reads from mm, dat and bug itself); a
/// suite that changes one fails unless it keeps memory on purpose. For
/// host tests of the runner.
#[cfg(test)]
pub fn set_leak_counter(name: &'static str, f: fn() -> u64) {
    runner::set_leak_counter(name, f);
}

#[macro_export]
macro_rules! kassert {
    ($cond:expr $(,)?) => {
        if !$cond {
            $crate::ktest::report_failure(file!(), line!(),
                format_args!("Expected {} to be true, but is false", stringify!($cond)));
            return Err($crate::ktest::Outcome::Fail);
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            $crate::ktest::report_failure(file!(), line!(),
                format_args!("Expected {} to be true, but is false\n{}", stringify!($cond),
                    format_args!($($arg)+)));
            return Err($crate::ktest::Outcome::Fail);
        }
    };
}

/// Assert `left == right`; on failure print both (and the message, if
/// given: `kassert_eq!(a, b, "after {} rounds", n)`).
#[macro_export]
macro_rules! kassert_eq {
    ($left:expr, $right:expr $(,)?) => {
        $crate::kassert_eq!($left, $right, "")
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if !(*l == *r) {
                    $crate::ktest::report_failure(
                        file!(),
                        line!(),
                        format_args!(
                            "Expected {} == {}, but\n    {} == {:?}\n    {} == {:?}{}",
                            stringify!($left),
                            stringify!($right),
                            stringify!($left),
                            l,
                            stringify!($right),
                            r,
                            $crate::ktest::Message(format_args!($($arg)+))
                        ),
                    );
                    return Err($crate::ktest::Outcome::Fail);
                }
            }
        }
    };
}

/// Assert `left != right` (with an optional message, as `kassert_eq!`).
#[macro_export]
macro_rules! kassert_ne {
    ($left:expr, $right:expr $(,)?) => {
        $crate::kassert_ne!($left, $right, "")
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if *l == *r {
                    $crate::ktest::report_failure(
                        file!(),
                        line!(),
                        format_args!(
                            "Expected {} != {}, but both are {:?}{}",
                            stringify!($left),
                            stringify!($right),
                            l,
                            $crate::ktest::Message(format_args!($($arg)+))
                        ),
                    );
                    return Err($crate::ktest::Outcome::Fail);
                }
            }
        }
    };
}

/// Assert that a value matches a pattern; prints the value otherwise (and
/// the message, if given after the pattern: `kassert_matches!(r, Ok(_), "page {}", n)`).
#[macro_export]
macro_rules! kassert_matches {
    ($value:expr, $pat:pat $(if $guard:expr)? $(,)?) => {
        $crate::kassert_matches!($value, $pat $(if $guard)?, "")
    };
    ($value:expr, $pat:pat $(if $guard:expr)?, $($arg:tt)+) => {
        match $value {
            $pat $(if $guard)? => {}
            ref other => {
                $crate::ktest::report_failure(file!(), line!(), format_args!(
                    "Expected {} to match {}, but it is {:?}{}",
                    stringify!($value), stringify!($pat $(if $guard)?), other,
                    $crate::ktest::Message(format_args!($($arg)+))));
                return Err($crate::ktest::Outcome::Fail);
            }
        }
    };
}

/// An assertion's optional message: printed on a line of its own after
/// the values, nothing when empty.
pub struct Message<'a>(pub core::fmt::Arguments<'a>);

impl core::fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct AnyText(bool);
        impl core::fmt::Write for AnyText {
            fn write_str(&mut self, s: &str) -> core::fmt::Result {
                self.0 |= !s.is_empty();
                Ok(())
            }
        }
        let mut any = AnyText(false);
        let _ = core::fmt::write(&mut any, self.0);
        if !any.0 {
            return Ok(());
        }
        write!(f, "\n    {}", self.0)
    }
}

/// End the case as skipped.
#[macro_export]
macro_rules! kskip {
    ($reason:literal) => {
        return Err($crate::ktest::Outcome::Skip($reason))
    };
}

/// Report a failure of the running case at the caller's file:line, with a
/// message, and evaluate to `Err(Outcome::Fail)` (of any `Result` type):
/// `return kfail!("alloc: {e:?}");`, `.or_else(|e| kfail!("{e:?}"))`.
#[macro_export]
macro_rules! kfail {
    ($($arg:tt)+) => {{
        $crate::ktest::report_failure(file!(), line!(), format_args!($($arg)+));
        Err($crate::ktest::Outcome::Fail)
    }};
}
