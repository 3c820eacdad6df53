//! Redis glob patterns (`KEYS`, `SCAN MATCH`): `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\x`.
//!
//! Matched with the two-pointer backtracking of a single remembered `*`, which takes
//! O(pattern x key) steps at worst: a client-supplied pattern like `*a*a*a*a*b` cannot make a
//! node spin the way naive recursion would.

/// Whether `text` matches the glob `pattern`, as Redis's `stringmatchlen` decides.
pub(super) fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: the pattern position after it, and the text position
    // it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pattern.get(p) == Some(&b'*') {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, t));
            continue;
        }
        let Some(&c) = text.get(t) else {
            return p == pattern.len();
        };
        match step(pattern, p, c) {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match star {
                Some((after_star, swallowed)) if swallowed < text.len() => {
                    star = Some((after_star, swallowed + 1));
                    p = after_star;
                    t = swallowed + 1;
                }
                _ => return false,
            },
        }
    }
}

/// Matches one pattern token at `p` (not `*`) against `c`: the position after the token, or
/// `None` when it does not match.
fn step(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match *pattern.get(p)? {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b'[' => {
            let mut i = p + 1;
            let negated = pattern.get(i) == Some(&b'^');
            if negated {
                i += 1;
            }
            let mut matched = false;
            // An unterminated class ends with the pattern, as in Redis.
            while let Some(&token) = pattern.get(i) {
                if token == b']' {
                    i += 1;
                    break;
                }
                if token == b'\\' && i + 1 < pattern.len() {
                    matched |= pattern[i + 1] == c;
                    i += 2;
                } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' {
                    let (low, high) = (token.min(pattern[i + 2]), token.max(pattern[i + 2]));
                    matched |= (low..=high).contains(&c);
                    i += 3;
                } else {
                    matched |= token == c;
                    i += 1;
                }
            }
            (matched != negated).then_some(i)
        }
        literal => (literal == c).then_some(p + 1),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn globs_match_as_in_redis() {
        let yes: &[(&str, &str)] = &[
            ("*", ""),
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("user:*:name", "user:42:name"),
            ("a\\*b", "a*b"),
            ("*a*a*b", "aaaaab"),
            ("[abc", "b"),
        ];
        for (pattern, text) in yes {
            assert!(
                matches(pattern.as_bytes(), text.as_bytes()),
                "{pattern} ~ {text}"
            );
        }
        let no: &[(&str, &str)] = &[
            ("h?llo", "hllo"),
            ("h[^e]llo", "hello"),
            ("h[a-b]llo", "hcllo"),
            ("a\\*b", "axb"),
            ("abc", "abcd"),
            ("*a*a*b", "aaaaaa"),
            ("a*", ""),
        ];
        for (pattern, text) in no {
            assert!(
                !matches(pattern.as_bytes(), text.as_bytes()),
                "{pattern} !~ {text}"
            );
        }
    }

    proptest! {
        #[test]
        fn a_key_matches_itself_and_star(text in "[a-z:]{0,12}") {
            prop_assert!(matches(text.as_bytes(), text.as_bytes()));
            prop_assert!(matches(b"*", text.as_bytes()));
        }

        #[test]
        fn arbitrary_patterns_never_panic(pattern in any::<Vec<u8>>(), text in any::<Vec<u8>>()) {
            let _ = matches(&pattern, &text);
        }
    }
}
