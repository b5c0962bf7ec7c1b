//! KTAP version 1 lines, as Linux's Documentation/dev-tools/ktap.rst and
//! KUnit print them: nested suites indented by four spaces, the subtest's
//! own version line, `# Subtest:` and plan, then results.

use core::fmt::{self, Write};

pub const INDENT: &str = "    ";

/// Writes KTAP lines at a nesting level to any `fmt::Write`.
pub struct Ktap<W: Write> {
    pub out: W,
}

/// The directive of a result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directive<'a> {
    None,
    Skip(&'a str),
}

impl<W: Write> Ktap<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    fn indent(&mut self, level: usize) -> fmt::Result {
        for _ in 0..level {
            self.out.write_str(INDENT)?;
        }
        Ok(())
    }

    pub fn version(&mut self, level: usize) -> fmt::Result {
        self.indent(level)?;
        self.out.write_str("KTAP version 1\n")
    }

    pub fn subtest(&mut self, level: usize, name: &str) -> fmt::Result {
        self.indent(level)?;
        writeln!(self.out, "# Subtest: {name}")
    }

    pub fn plan(&mut self, level: usize, n: usize) -> fmt::Result {
        self.indent(level)?;
        writeln!(self.out, "1..{n}")
    }

    pub fn result(
        &mut self,
        level: usize,
        number: usize,
        ok: bool,
        name: &str,
        directive: Directive<'_>,
    ) -> fmt::Result {
        self.indent(level)?;
        let status = if ok { "ok" } else { "not ok" };
        write!(self.out, "{status} {number} {name}")?;
        if let Directive::Skip(reason) = directive {
            // Upper-case SKIP: kunit.py counts only that as a skip.
            write!(self.out, " # SKIP {reason}")?;
        }
        self.out.write_char('\n')
    }

    /// A diagnostic: every line of `text` becomes a `# ` line.
    pub fn diag(&mut self, level: usize, text: &str) -> fmt::Result {
        for line in text.split('\n') {
            self.indent(level)?;
            if line.is_empty() {
                self.out.write_str("#\n")?;
            } else {
                writeln!(self.out, "# {line}")?;
            }
        }
        Ok(())
    }
}
