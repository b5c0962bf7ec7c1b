//! Shell-style globs for test selection: `*` matches any run of characters,
//! `?` exactly one; everything else matches itself.

pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` and the text index it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

pub fn has_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert!(glob_match("sclp", "sclp"));
        assert!(!glob_match("sclp", "sclpx"));
        assert!(!glob_match("sclp", "scl"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn stars_and_questions() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("buddy*", "buddy"));
        assert!(glob_match("buddy*", "buddy_storm"));
        assert!(glob_match("*storm", "buddy_storm"));
        assert!(glob_match("b*d*y", "buddy"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("s?lp", "sclp"));
        assert!(!glob_match("s?lp", "slp"));
        assert!(glob_match("**a", "a"));
        assert!(glob_match("*a*", "banana"));
        assert!(!glob_match("*x*", "banana"));
    }

    #[test]
    fn wildcard_detection() {
        assert!(has_wildcard("a*"));
        assert!(has_wildcard("a?"));
        assert!(!has_wildcard("selftest"));
    }
}
