//! Case-insensitive comparison, decided once for every rule that compares names or values.
//!
//! Three foldings exist, each with one owner and one use:
//! - [`simple_fold`]: Unicode *simple* case folding of the exact characters (CaseFolding.txt,
//!   statuses C and S) — no culture rules, no normalization, one character stays one character.
//!   `validate_set` values (SPEC §2.3), `-like`/`-eq` comparisons and the merge of role sets use it.
//!   Under it `ſ` is `s` and the Kelvin sign is `K`, as in PowerShell's ordinal-ignore-case.
//! - ASCII-only folding (`eq_ignore_ascii_case`): command names (lookup and name-mode wildcards)
//!   and `validate_pattern` (SPEC §2.3: "case-insensitive for ASCII letters only").
//! - None: external-command argument patterns.
#![forbid(unsafe_code)]

use regex_syntax::hir::{ClassUnicode, ClassUnicodeRange};

/// The canonical member of `c`'s simple-case-folding class: the lower-case ASCII letter when
/// the class holds one (`S`, `s` and `ſ` all give `s`), else the smallest character of the
/// class (`É` and `é` both give `É`). Two characters fold together exactly when their canonical
/// members are equal.
pub fn simple_fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut class = ClassUnicode::new([ClassUnicodeRange::new(c, c)]);
    class.case_fold_simple();
    let mut smallest = c;
    for r in class.ranges() {
        for member in r.start()..=r.end() {
            if member.is_ascii() {
                return member.to_ascii_lowercase();
            }
            smallest = smallest.min(member);
        }
    }
    smallest
}

/// True when `a` and `b` are equal under simple case folding, character by character.
pub fn eq_simple_fold(a: &str, b: &str) -> bool {
    let mut x = a.chars();
    let mut y = b.chars();
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if p == q || simple_fold(p) == simple_fold(q) => {}
            _ => return false,
        }
    }
}

/// `s` with every character replaced by its canonical member (a key for sets and maps whose
/// members compare under simple case folding).
pub fn fold_key(s: &str) -> String {
    s.chars().map(simple_fold).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn simple_folding_of_exact_characters() {
        assert!(eq_simple_fold("nginx", "NGINX"));
        assert!(
            eq_simple_fold("ſſhd", "SSHD"),
            "long s folds to s (simple folding)"
        );
        assert!(
            eq_simple_fold("\u{212A}vm", "kvm"),
            "Kelvin sign folds to k"
        );
        assert!(eq_simple_fold("ÉTÉ", "été"));
        assert!(eq_simple_fold("σ", "ς"), "final sigma folds with sigma");
        assert!(
            !eq_simple_fold("nginx", "nginx\u{200B}"),
            "no invisible characters"
        );
        assert!(!eq_simple_fold("nginx", "nginx "));
        assert!(
            !eq_simple_fold("straße", "STRASSE"),
            "no full (multi-character) folding"
        );
        assert!(
            !eq_simple_fold("İ", "i"),
            "dotted capital I has no simple folding"
        );
        assert!(
            !eq_simple_fold("e\u{301}", "é"),
            "no normalization: decomposed e-acute is not é"
        );
        assert_eq!(fold_key("Get-ſervice"), "get-service");
    }
}
