//! The kernel command line (QEMU `-append`): space-separated words, each a
//! `key=value` pair or a bare flag, as Linux's. Quotes are not supported;
//! values cannot contain spaces.

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
