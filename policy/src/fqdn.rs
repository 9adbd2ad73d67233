//! DNS names in policy: the selectors of `toFQDNs` and of `rules: dns`
//! (`matchName` / `matchPattern`), with Cilium's semantics.
//!
//! - Names are compared ASCII case-insensitively and without their trailing dot
//!   (`Example.COM.` is `example.com`).
//! - `matchName` is one exact name.
//! - `matchPattern` is a name where `*` stands for zero or more characters *within one label*
//!   (letters, digits, `-`, `_`; never a dot), as Cilium's `^[-a-zA-Z0-9_]*` translation:
//!   `*.example.com` matches `www.example.com` but neither `example.com` nor
//!   `a.b.example.com`; `api-*.example.com` matches `api-1.example.com`. The pattern `*` alone
//!   matches every name.
//!
//! [`FqdnSelector::matches`] allocates nothing: the fast path runs it on a new flow to an
//! address outside the cluster and on DNS queries the endpoint sends.

use std::fmt;

use serde::Serialize;

/// The longest DNS name (RFC 1035), in its dotted text form.
pub const MAX_NAME: usize = 253;

/// A `matchName` or `matchPattern`, normalised (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum FqdnSelector {
    /// `matchName`: exactly this name.
    MatchName(String),
    /// `matchPattern`: `*` within a label; `*` alone: every name.
    MatchPattern(String),
}

/// Why a selector cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FqdnError {
    /// Empty (or only a dot).
    #[error("empty DNS name")]
    Empty,
    /// Longer than [`MAX_NAME`].
    #[error("DNS name longer than {MAX_NAME} characters")]
    TooLong,
    /// A character no DNS name (or pattern) has.
    #[error("character {0:?} is not allowed in a DNS name (letters, digits, '-', '_', '.'{1})")]
    BadChar(char, &'static str),
}

/// `name` lower-cased without its trailing dot, checked.
fn normalise(name: &str, pattern: bool) -> Result<String, FqdnError> {
    let n = name.trim();
    let n = n.strip_suffix('.').unwrap_or(n);
    if n.is_empty() {
        return Err(FqdnError::Empty);
    }
    if n.len() > MAX_NAME {
        return Err(FqdnError::TooLong);
    }
    for c in n.chars() {
        let ok = c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (pattern && c == '*');
        if !ok {
            return Err(FqdnError::BadChar(c, if pattern { ", '*'" } else { "" }));
        }
    }
    Ok(n.to_ascii_lowercase())
}

/// `name` without one trailing dot.
#[inline]
fn strip_dot(name: &[u8]) -> &[u8] {
    name.strip_suffix(b".").unwrap_or(name)
}

/// Whether `c` is a character `*` may stand for (within a label).
#[inline]
fn in_label(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Glob match of a lower-case `pat` against `name` (any case), `*` within a label. Iterative
/// with one backtrack point, so it is linear-ish and never recurses.
fn glob(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    // The last star: (its index in pat, where in name it started).
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let c = name[n].to_ascii_lowercase();
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, n));
            p += 1;
            continue;
        }
        if p < pat.len() && pat[p] == c {
            p += 1;
            n += 1;
            continue;
        }
        // Let the last star eat one more character, if it may (not a dot).
        match star {
            Some((sp, sn)) if in_label(name[sn].to_ascii_lowercase()) => {
                star = Some((sp, sn + 1));
                p = sp + 1;
                n = sn + 1;
            }
            _ => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

impl FqdnSelector {
    /// `matchName: name`.
    pub fn name(name: &str) -> Result<FqdnSelector, FqdnError> {
        Ok(FqdnSelector::MatchName(normalise(name, false)?))
    }

    /// `matchPattern: pattern`.
    pub fn pattern(pattern: &str) -> Result<FqdnSelector, FqdnError> {
        Ok(FqdnSelector::MatchPattern(normalise(pattern, true)?))
    }

    /// Whether `name` (any case, with or without its trailing dot) is selected.
    #[inline]
    pub fn matches(&self, name: &str) -> bool {
        let name = strip_dot(name.as_bytes());
        match self {
            FqdnSelector::MatchName(n) => n.as_bytes().eq_ignore_ascii_case(name),
            FqdnSelector::MatchPattern(p) if p == "*" => !name.is_empty(),
            FqdnSelector::MatchPattern(p) => glob(p.as_bytes(), name),
        }
    }

    /// The name or pattern as written (normalised).
    pub fn as_str(&self) -> &str {
        match self {
            FqdnSelector::MatchName(s) | FqdnSelector::MatchPattern(s) => s,
        }
    }
}

impl fmt::Display for FqdnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FqdnSelector::MatchName(n) => write!(f, "matchName:{n}"),
            FqdnSelector::MatchPattern(p) => write!(f, "matchPattern:{p}"),
        }
    }
}

/// Whether any of `sels` selects `name`.
#[inline]
pub fn any_matches(sels: &[FqdnSelector], name: &str) -> bool {
    sels.iter().any(|s| s.matches(name))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pat(p: &str) -> FqdnSelector {
        FqdnSelector::pattern(p).unwrap()
    }

    #[test]
    fn match_name_is_exact_case_insensitive_and_ignores_the_trailing_dot() {
        let s = FqdnSelector::name("Cilium.IO.").unwrap();
        assert_eq!(s, FqdnSelector::MatchName("cilium.io".into()));
        for yes in ["cilium.io", "CILIUM.io.", "cilium.io."] {
            assert!(s.matches(yes), "{yes}");
        }
        for no in [
            "sub.cilium.io",
            "cilium.io.x",
            "ilium.io",
            "",
            ".",
            "cilium.io..",
        ] {
            assert!(!s.matches(no), "{no}");
        }
    }

    #[test]
    fn a_star_label_matches_subdomains_one_level_deep_not_the_domain_itself() {
        let s = pat("*.cilium.io");
        for yes in ["sub.cilium.io", "SUB.cilium.io.", "a-b_c.cilium.io"] {
            assert!(s.matches(yes), "{yes}");
        }
        for no in [
            "cilium.io",
            "a.b.cilium.io",
            "subcilium.io",
            "sub.cilium.io.evil",
        ] {
            assert!(!s.matches(no), "{no}");
        }
    }

    #[test]
    fn a_star_inside_a_label_stays_in_that_label() {
        let s = pat("special*service.api.cilium.io");
        assert!(s.matches("special-region1-service.api.cilium.io"));
        assert!(s.matches("specialservice.api.cilium.io"));
        assert!(!s.matches("special.x.service.api.cilium.io"));
        let s = pat("api-*.example.*");
        assert!(s.matches("api-1.example.com"));
        assert!(!s.matches("api-1.example.co.uk"));
        let s = pat("*cilium.io");
        assert!(s.matches("cilium.io") && s.matches("getcilium.io"));
        assert!(!s.matches("a.cilium.io"));
    }

    #[test]
    fn the_lone_star_matches_every_name() {
        let s = pat("*");
        for yes in ["a", "a.b.c.d", "X.Y."] {
            assert!(s.matches(yes));
        }
        assert!(!s.matches(""));
        // `**` is two stars within a label, not the lone star: one label only.
        assert!(pat("**").matches("a") && !pat("**").matches("a.b"));
    }

    #[test]
    fn bad_selectors_are_errors_not_panics() {
        assert_eq!(FqdnSelector::name(""), Err(FqdnError::Empty));
        assert_eq!(FqdnSelector::name("."), Err(FqdnError::Empty));
        assert!(matches!(
            FqdnSelector::name("a*.b"),
            Err(FqdnError::BadChar('*', _))
        ));
        assert!(matches!(
            FqdnSelector::pattern("[a-z].b"),
            Err(FqdnError::BadChar('[', _))
        ));
        assert_eq!(
            FqdnSelector::name(&"a".repeat(254)),
            Err(FqdnError::TooLong)
        );
    }

    /// The matcher against a regular-expression-free reference: expand each `*` over every
    /// split of the label.
    fn reference(pat: &[u8], name: &[u8]) -> bool {
        match pat.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len())
                .take_while(|&i| i == 0 || in_label(name[i - 1]))
                .any(|i| reference(rest, &name[i..])),
            Some((c, rest)) => name
                .split_first()
                .is_some_and(|(n, nr)| n.to_ascii_lowercase() == *c && reference(rest, nr)),
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_recursive_reference(
            p in "[ab.*-]{0,8}",
            n in "[aAb.-]{0,10}",
        ) {
            prop_assert_eq!(glob(p.as_bytes(), n.as_bytes()), reference(p.as_bytes(), n.as_bytes()));
        }
    }
}
