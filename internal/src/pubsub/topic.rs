//! Topics and MQTT-style topic filters (pure).
//!
//! Topics are UTF-8, 1–512 bytes, `/`-separated levels (empty levels allowed), no NUL, no `+` or
//! `#`. A filter may use `+` for exactly one whole level and `#` as the whole last level for zero
//! or more levels (`a/#` also matches `a`). As in MQTT, a filter starting with a wildcard does not
//! match topics starting with `$`.

pub const MAX_TOPIC_BYTES: usize = 512;

pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(format!("topic must be 1 to {MAX_TOPIC_BYTES} bytes"));
    }
    if topic.contains('\0') {
        return Err("topic must not contain NUL".into());
    }
    if topic.contains(['+', '#']) {
        return Err("a published topic must not contain '+' or '#'".into());
    }
    Ok(())
}

pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() || filter.len() > MAX_TOPIC_BYTES {
        return Err(format!("topic filter must be 1 to {MAX_TOPIC_BYTES} bytes"));
    }
    if filter.contains('\0') {
        return Err("topic filter must not contain NUL".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err("'#' must be the whole last level of a filter".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level of a filter".into());
        }
    }
    Ok(())
}

/// Whether a (valid) filter matches a (valid) topic. Runs for every message and subscriber
/// in the fan-out, so it walks the bytes level by level without building anything.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    // End of the level starting at `from`.
    let level_end = |s: &[u8], from: usize| {
        s[from..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(s.len(), |p| from + p)
    };
    let (mut fi, mut ti) = (0, 0);
    loop {
        let fe = level_end(f, fi);
        let level = &f[fi..fe];
        if level == b"#" {
            return true;
        }
        let te = level_end(t, ti);
        if level != b"+" && level != &t[ti..te] {
            return false;
        }
        match (fe == f.len(), te == t.len()) {
            (true, true) => return true,
            (true, false) => return false,
            // The topic ended first: only a last `#` matches nothing more (`a/#` matches `a`).
            (false, true) => return &f[fe + 1..] == b"#",
            (false, false) => {}
        }
        fi = fe + 1;
        ti = te + 1;
    }
}

/// The literal part of a filter before its first wildcard level (the whole filter if it has
/// none). Every topic the filter matches starts with it (apart from `a` for `a/#`).
pub fn literal_prefix(filter: &str) -> &str {
    let mut end = 0;
    for level in filter.split_inclusive('/') {
        if level.trim_end_matches('/') == "+" || level == "#" {
            return &filter[..end];
        }
        end += level.len();
    }
    filter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_table() {
        let cases = [
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+/c", "a/b/c/d", false),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "a/b", true),
            ("#", "/", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+", "", true),
            ("+/+", "/", true),
            ("/+", "/x", true),
            ("a//b", "a//b", true),
            ("a/b", "a/b/", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a", "a", true),
            ("a", "A", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn validation() {
        for ok in ["a", "a/b", "/", "a//b", "é/ü", "$SYS/x"] {
            validate_topic(ok).unwrap();
        }
        for bad in ["", "a/+", "a/#", "a\0b", &"x".repeat(513)] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "a"] {
            validate_filter(ok).unwrap();
        }
        for bad in ["a#", "a/#/b", "a+", "a/b+/c", "#/a", ""] {
            assert!(validate_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("chat/#"), "chat/");
        assert_eq!(literal_prefix("chat/+/x"), "chat/");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/a"), "");
        assert_eq!(literal_prefix("a/b"), "a/b");
    }

    /// Reference matcher: regular-expression-free recursive definition over level lists.
    fn reference(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.first(), topic.first()) {
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => reference(&filter[1..], &topic[1..]),
            (Some(f), Some(t)) => f == t && reference(&filter[1..], &topic[1..]),
            (None, None) => true,
            _ => false,
        }
    }

    #[test]
    fn property_matches_reference() {
        // A deterministic pseudo-random sweep over small alphabets (levels from {"", a, b}),
        // so every shape of empty levels, wildcards and lengths is covered.
        let levels = ["", "a", "b"];
        let filter_levels = ["", "a", "b", "+", "#"];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..20_000 {
            let tl = 1 + next(4);
            let topic: Vec<&str> = (0..tl).map(|_| levels[next(levels.len())]).collect();
            let fl = 1 + next(4);
            let mut filter: Vec<&str> = (0..fl)
                .map(|_| filter_levels[next(filter_levels.len())])
                .collect();
            // Keep filters valid: '#' only last.
            for i in 0..filter.len().saturating_sub(1) {
                if filter[i] == "#" {
                    filter[i] = "+";
                }
            }
            let (f, t) = (filter.join("/"), topic.join("/"));
            if f.is_empty() || t.is_empty() {
                continue; // not valid filters/topics (1 byte at least)
            }
            assert!(validate_filter(&f).is_ok(), "{f}");
            assert_eq!(matches(&f, &t), reference(&filter, &topic), "{f} vs {t}");
        }
    }
}
