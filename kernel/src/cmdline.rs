//! The kernel command line (QEMU `-append`): space-separated words, each a
//! `key=value` pair or a bare flag, as Linux's. Quotes are not supported;
//! values cannot contain spaces.

/// What a parameter's value must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A bare flag, or `=1/0/on/off/yes/no/true/false`.
    Flag,
    /// A number or size (`parse_size`).
    Size,
    /// Any text (a glob list, say).
    Text,
}

/// Every parameter the kernel reads: (key, kind, what it does). A word on
/// the command line that is not here, or whose value does not fit its
/// kind, is reported at boot (`Cmdline::problems`).
pub const PARAMS: &[(&str, Kind, &str)] = &[
    (
        "ktest.filter",
        Kind::Text,
        "suite or suite.case globs, comma-separated",
    ),
    (
        "ktest.list",
        Kind::Flag,
        "list the selected cases instead of running them",
    ),
    (
        "ktest.expect_mem",
        Kind::Size,
        "memory size SCLP must report (sclp suite)",
    ),
    (
        "ktest.expect_cpus",
        Kind::Size,
        "CPU count SCLP must report (sclp suite)",
    ),
    (
        "mm.check",
        Kind::Flag,
        "run the allocator and page-table checkers before and after the tests",
    ),
    (
        "mm.dump",
        Kind::Flag,
        "print the memory map and free lists at boot",
    ),
    (
        "fail.alloc",
        Kind::Size,
        "make the N-th page allocation after boot fail (for the whole run)",
    ),
    (
        "bench",
        Kind::Flag,
        "run the benchmarks instead of the tests",
    ),
    (
        "smp.bringup_us",
        Kind::Size,
        "how long the boot CPU waits for each other CPU to report in (default 5000000; 0: not at all)",
    ),
    (
        "smp.late_hello_us",
        Kind::Size,
        "each other CPU waits this long before it reports in (to test a late CPU)",
    ),
    (
        "bench.boot",
        Kind::Flag,
        "with bench: only the boot figures (instructions, memmap and page tables), for x.py bench --sweep",
    ),
    (
        "bench.locks",
        Kind::Flag,
        "with bench: only the lock hand-off figures (boot with 2 CPUs for the contended one)",
    ),
    (
        "dat.local_clearing",
        Kind::Flag,
        "0: every IPTE and IDTE clears all CPUs' TLBs, as without facility 51 (default 1)",
    ),
    (
        "dat.walk",
        Kind::Text,
        "ADDR[,kernel|demo]: print the translation of ADDR level by level, then stop",
    ),
];

/// A word of the command line the kernel cannot use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem<'a> {
    /// No parameter of that name (a typo, say).
    Unknown(&'a str),
    /// The value does not fit the parameter: (key, value, what it wants).
    Invalid(&'a str, &'a str, &'static str),
}

/// A parsed view of the command line; it borrows the string.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a> {
    text: &'a str,
}

/// Errors of typed lookups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// The value is not a number (or size) of the expected form.
    Invalid,
}

impl<'a> Cmdline<'a> {
    pub const fn new(text: &'a str) -> Self {
        Self { text }
    }

    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// Every word as (key, value); a bare flag has value `None`.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        self.text
            .split_ascii_whitespace()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (w, None),
            })
    }

    /// The value of the last `key=value` (later words override earlier ones,
    /// as on Linux).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.params()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, v)| v)
            .last()
    }

    /// Whether `key` appears, as a flag or with any value but 0/off/no/false.
    pub fn flag(&self, key: &str) -> bool {
        match self.params().filter(|(k, _)| *k == key).last() {
            None => false,
            Some((_, None)) => true,
            Some((_, Some(v))) => !matches!(v, "0" | "off" | "no" | "false"),
        }
    }

    /// Every word that names no parameter of `PARAMS`, or whose value does
    /// not fit its kind.
    pub fn problems(&self) -> impl Iterator<Item = Problem<'a>> {
        self.params().filter_map(|(k, v)| {
            let Some(&(_, kind, _)) = PARAMS.iter().find(|(name, _, _)| *name == k) else {
                return Some(Problem::Unknown(k));
            };
            match (kind, v) {
                (Kind::Flag, Some(v))
                    if !matches!(
                        v,
                        "1" | "0" | "on" | "off" | "yes" | "no" | "true" | "false"
                    ) =>
                {
                    Some(Problem::Invalid(
                        k,
                        v,
                        "a flag: 1/0, on/off, yes/no or true/false",
                    ))
                }
                (Kind::Size, None) => Some(Problem::Invalid(k, "", "a number, e.g. 128M")),
                (Kind::Size, Some(v)) if parse_size(v).is_err() => {
                    Some(Problem::Invalid(k, v, "a number, e.g. 42, 0x1000 or 128M"))
                }
                (Kind::Text, None) => Some(Problem::Invalid(k, "", "a value")),
                _ => None,
            }
        })
    }

    /// `key=NUMBER` with an optional K/M/G/T suffix (binary units), or
    /// `None` if absent.
    pub fn size(&self, key: &str) -> Result<Option<u64>, ParamError> {
        self.get(key).map(parse_size).transpose()
    }
}

/// Parse `123`, `0x1000`, `64K`, `128M`, `16G`, `1T`.
pub fn parse_size(s: &str) -> Result<u64, ParamError> {
    let (num, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        Some(b't' | b'T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n = if let Some(hex) = num.strip_prefix("0x") {
        u64::from_str_radix(hex, 16)
    } else {
        num.parse::<u64>()
    }
    .map_err(|_| ParamError::Invalid)?;
    n.checked_mul(1u64 << shift).ok_or(ParamError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_and_flags() {
        let c = Cmdline::new("  ktest.filter=buddy*,sclp.mem ktest.list  mm.dump=0 x=1 x=2 ");
        assert_eq!(c.get("ktest.filter"), Some("buddy*,sclp.mem"));
        assert!(c.flag("ktest.list"));
        assert!(!c.flag("mm.dump"));
        assert!(!c.flag("absent"));
        assert_eq!(c.get("x"), Some("2"));
        assert_eq!(c.get("ktest.list"), None);
        assert_eq!(c.params().count(), 5);
    }

    #[test]
    fn empty_line() {
        let c = Cmdline::new("");
        assert_eq!(c.params().count(), 0);
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn unknown_and_malformed_words_are_problems() {
        let c =
            Cmdline::new("mm.check mm.dmup fail.alloc=notanumber mm.dump=maybe ktest.filter=a*");
        let p: std::vec::Vec<_> = c.problems().collect();
        assert_eq!(
            p,
            [
                Problem::Unknown("mm.dmup"),
                Problem::Invalid(
                    "fail.alloc",
                    "notanumber",
                    "a number, e.g. 42, 0x1000 or 128M"
                ),
                Problem::Invalid(
                    "mm.dump",
                    "maybe",
                    "a flag: 1/0, on/off, yes/no or true/false"
                ),
            ]
        );
        assert_eq!(
            Cmdline::new("fail.alloc=10 mm.dump=0 ktest.list")
                .problems()
                .count(),
            0
        );
        assert_eq!(
            Cmdline::new("fail.alloc ktest.filter").problems().count(),
            2
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("M"), Err(ParamError::Invalid));
        assert_eq!(parse_size("12Q"), Err(ParamError::Invalid));
        assert_eq!(parse_size("99999999999T"), Err(ParamError::Invalid));
        let c = Cmdline::new("mem=1G bad=zz");
        assert_eq!(c.size("mem"), Ok(Some(1 << 30)));
        assert_eq!(c.size("bad"), Err(ParamError::Invalid));
        assert_eq!(c.size("none"), Ok(None));
    }
}
