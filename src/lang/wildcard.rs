//! The one wildcard matcher (PowerShell's `WildcardPattern`), in two documented modes.
//!
//! Syntax, the same in both modes: `*` matches any run of characters (also none), `?` exactly
//! one character, `[abc]` one of the listed characters and `[a-z]` one in the range (a `-` first
//! or last in the brackets is itself; a reversed range matches nothing). A `[` opens a class only
//! when a `]` closes it with at least one member inside; otherwise it is an ordinary character
//! (`[a` and `[]` match themselves). There is no negation (`[!a]` lists `!` and `a`), as in
//! PowerShell.
//!
//! - [`Mode::Name`] — command names (Get-Command, GET_COMMAND_METADATA, role grants, the
//!   never-provided list) and the names the Linux cmdlets filter on (services, processes, mount
//!   points, addresses). Case-insensitive for ASCII letters only, exactly as the command table
//!   resolves names (`eq_ignore_ascii_case`); the backtick is an ordinary character (no name
//!   keyhole matches contains a wildcard character).
//! - [`Mode::Like`] — `-like`/`-notlike` (and `-clike`) and property-name wildcards
//!   (`Select-Object -Property`, `Format-Table -Property`). A backtick makes the next character
//!   literal (`` `* `` is a star, `` `[ `` a bracket, also inside a class; a trailing backtick is
//!   itself). Case-insensitive under simple Unicode case folding ([`super::fold`]) unless
//!   `case_sensitive`.
//!
//! Cost: a pattern is at most [`MAX_WILDCARD_CHARS`] characters and compiles to m ≤ that many
//! tokens (runs of `*` count once). Matching is a Thompson simulation of the pattern's NFA with
//! one bit per token: per text character one binary search for the character's class and
//! 2·⌈(m+1)/64⌉ word operations. A match of n characters therefore costs at most
//! `2·⌈(m+1)/64⌉·(n+1)` word steps ([`Wildcard::step_bound`]), never text × pattern: a 1 MiB
//! text against `*a*a*…*b` (m ≈ 1000) is about 2^25 steps.
#![forbid(unsafe_code)]

use super::fold::simple_fold;

/// Longest wildcard pattern (characters) keyhole compiles; longer ones are refused.
pub const MAX_WILDCARD_CHARS: usize = 1024;
/// [`Wildcard::is_match_until`] asks whether to stop once per this many text characters.
pub const STOP_CHECK_CHARS: usize = 4096;

/// Which rules a pattern follows (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Names: ASCII case-insensitive, no escape character.
    Name,
    /// `-like`: backtick escapes; simple Unicode case folding unless `case_sensitive`.
    Like { case_sensitive: bool },
}

impl Mode {
    /// `-like` (case-insensitive).
    pub const LIKE: Mode = Mode::Like {
        case_sensitive: false,
    };

    fn fold(self, c: char) -> char {
        match self {
            Mode::Name => c.to_ascii_lowercase(),
            Mode::Like {
                case_sensitive: false,
            } => simple_fold(c),
            Mode::Like {
                case_sensitive: true,
            } => c,
        }
    }
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WildcardError {
    #[error("the wildcard pattern is {chars} characters long; keyhole accepts at most {MAX_WILDCARD_CHARS}")]
    TooLong { chars: usize },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `*`
    Star,
    /// `?`
    Any,
    /// A literal character (folded).
    Char(char),
    /// A class: inclusive ranges of folded characters.
    Set(Vec<(char, char)>),
}

/// A compiled wildcard pattern.
#[derive(Debug, Clone)]
pub struct Wildcard {
    mode: Mode,
    /// Number of tokens; the accepting state is `m`.
    m: usize,
    /// u64 words per state set: ⌈(m+1)/64⌉.
    words: usize,
    /// Bit s: token s is `*`.
    star: Vec<u64>,
    /// Bit s: token s is `?`.
    any: Vec<u64>,
    /// Starts of the character intervals (sorted, first is NUL); every character of one
    /// interval is in exactly the same classes.
    bounds: Vec<char>,
    /// `words` words per interval: bit s when token s accepts the interval's characters.
    masks: Vec<u64>,
    /// The pattern is only literal characters: matching is a comparison.
    literal: Option<Vec<char>>,
}

fn next_char(c: char) -> Option<char> {
    match c {
        '\u{D7FF}' => Some('\u{E000}'),
        _ => char::from_u32(u32::from(c) + 1),
    }
}

/// Parse `pattern` into tokens (folded), runs of `*` collapsed.
fn tokens(pattern: &[char], mode: Mode) -> Vec<Token> {
    let escapes = matches!(mode, Mode::Like { .. });
    let mut out: Vec<Token> = Vec::new();
    let lit = |c: char| Token::Char(mode.fold(c));
    let mut i = 0;
    while let Some(&c) = pattern.get(i) {
        match c {
            '`' if escapes => {
                match pattern.get(i + 1) {
                    Some(&n) => {
                        out.push(lit(n));
                        i += 2;
                    }
                    None => {
                        out.push(lit('`'));
                        i += 1;
                    }
                }
                continue;
            }
            '*' => {
                if out.last() != Some(&Token::Star) {
                    out.push(Token::Star);
                }
            }
            '?' => out.push(Token::Any),
            '[' => {
                if let Some((set, used)) = class(pattern.get(i + 1..).unwrap_or(&[]), mode) {
                    out.push(Token::Set(set));
                    i += 1 + used;
                    continue;
                }
                out.push(lit('['));
            }
            _ => out.push(lit(c)),
        }
        i += 1;
    }
    out
}

/// A class starting right after `[`: its folded ranges and the characters used (through `]`),
/// or None when no `]` closes a non-empty class.
fn class(p: &[char], mode: Mode) -> Option<(Vec<(char, char)>, usize)> {
    let escapes = matches!(mode, Mode::Like { .. });
    // Members, each (character, escaped).
    let mut members: Vec<(char, bool)> = Vec::new();
    let mut i = 0;
    let end = loop {
        let c = *p.get(i)?;
        if escapes && c == '`' {
            if let Some(&n) = p.get(i + 1) {
                members.push((n, true));
                i += 2;
                continue;
            }
        }
        if c == ']' {
            if members.is_empty() {
                return None;
            }
            break i + 1;
        }
        members.push((c, false));
        i += 1;
    };
    let mut ranges = Vec::new();
    let mut j = 0;
    while let Some(&(a, _)) = members.get(j) {
        let dash = matches!(members.get(j + 1), Some(('-', false)));
        match (dash, members.get(j + 2)) {
            (true, Some(&(b, _))) => {
                let (lo, hi) = (mode.fold(a), mode.fold(b));
                if lo <= hi {
                    ranges.push((lo, hi));
                }
                j += 3;
            }
            _ => {
                let f = mode.fold(a);
                ranges.push((f, f));
                j += 1;
            }
        }
    }
    Some((ranges, end))
}

impl Wildcard {
    /// Compile `pattern` for `mode`.
    pub fn new(pattern: &str, mode: Mode) -> Result<Wildcard, WildcardError> {
        let chars: Vec<char> = pattern.chars().collect();
        if chars.len() > MAX_WILDCARD_CHARS {
            return Err(WildcardError::TooLong { chars: chars.len() });
        }
        let toks = tokens(&chars, mode);
        let literal = toks
            .iter()
            .map(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect::<Option<Vec<char>>>();
        if literal.is_some() {
            // A comparison needs no automaton.
            return Ok(Wildcard {
                mode,
                m: toks.len(),
                words: 0,
                star: Vec::new(),
                any: Vec::new(),
                bounds: Vec::new(),
                masks: Vec::new(),
                literal,
            });
        }
        let m = toks.len();
        let words = (m + 1).div_ceil(64);
        let mut star = vec![0u64; words];
        let mut any = vec![0u64; words];
        let mut bounds: Vec<char> = vec!['\0'];
        for (s, t) in toks.iter().enumerate() {
            let bit = 1u64 << (s % 64);
            match t {
                Token::Star => {
                    if let Some(w) = star.get_mut(s / 64) {
                        *w |= bit;
                    }
                }
                Token::Any => {
                    if let Some(w) = any.get_mut(s / 64) {
                        *w |= bit;
                    }
                }
                Token::Char(c) => {
                    bounds.push(*c);
                    bounds.extend(next_char(*c));
                }
                Token::Set(ranges) => {
                    for &(lo, hi) in ranges {
                        bounds.push(lo);
                        bounds.extend(next_char(hi));
                    }
                }
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut masks = vec![0u64; bounds.len() * words];
        for (iv, &start) in bounds.iter().enumerate() {
            for (s, t) in toks.iter().enumerate() {
                let hit = match t {
                    Token::Char(c) => *c == start,
                    Token::Set(ranges) => ranges.iter().any(|&(lo, hi)| lo <= start && start <= hi),
                    Token::Star | Token::Any => false,
                };
                if hit {
                    if let Some(w) = masks.get_mut(iv * words + s / 64) {
                        *w |= 1u64 << (s % 64);
                    }
                }
            }
        }
        Ok(Wildcard {
            mode,
            m,
            words,
            star,
            any,
            bounds,
            masks,
            literal,
        })
    }

    /// True when the pattern has no wildcard (it matches one text only, up to case).
    pub fn is_literal(&self) -> bool {
        self.literal.is_some()
    }

    /// The most word steps [`Wildcard::is_match_counted`] takes on a text of `chars` characters.
    pub fn step_bound(&self, chars: usize) -> u64 {
        let per_char = 2 * self.words as u64;
        per_char.saturating_mul(chars as u64 + 1)
    }

    /// True when the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        let mut steps = 0;
        self.is_match_counted(text, &mut steps)
    }

    /// [`Wildcard::is_match`], adding the word steps taken to `steps` (for the cost bound).
    pub fn is_match_counted(&self, text: &str, steps: &mut u64) -> bool {
        self.run(text, steps, &|| false).unwrap_or(false)
    }

    /// [`Wildcard::is_match`] that asks `stop` every [`STOP_CHECK_CHARS`] characters and gives
    /// up (None) when it says so: a deadline or a Ctrl+C ends even one long match.
    pub fn is_match_until(&self, text: &str, stop: &dyn Fn() -> bool) -> Option<bool> {
        let mut steps = 0;
        self.run(text, &mut steps, stop)
    }

    fn run(&self, text: &str, steps: &mut u64, stop: &dyn Fn() -> bool) -> Option<bool> {
        if let Some(lit) = &self.literal {
            let mut t = text.chars();
            for &p in lit {
                *steps += 1;
                match t.next() {
                    Some(c) if self.mode.fold(c) == p => {}
                    _ => return Some(false),
                }
            }
            return Some(t.next().is_none());
        }
        let words = self.words;
        let mut cur = vec![0u64; words];
        let mut next = vec![0u64; words];
        if let Some(w) = cur.first_mut() {
            *w = 1;
        }
        self.close(&mut cur);
        for (i, c) in text.chars().enumerate() {
            if i % STOP_CHECK_CHARS == STOP_CHECK_CHARS - 1 && stop() {
                return None;
            }
            let f = self.mode.fold(c);
            let iv = self.bounds.partition_point(|b| *b <= f).saturating_sub(1);
            let mask = self.masks.get(iv * words..(iv + 1) * words).unwrap_or(&[]);
            let mut carry = 0u64;
            let mut alive = 0u64;
            for w in 0..words {
                let d = cur.get(w).copied().unwrap_or(0);
                let accept =
                    mask.get(w).copied().unwrap_or(0) | self.any.get(w).copied().unwrap_or(0);
                let moved = d & accept;
                let stay = d & self.star.get(w).copied().unwrap_or(0);
                let v = (moved << 1) | carry | stay;
                carry = moved >> 63;
                if let Some(slot) = next.get_mut(w) {
                    *slot = v;
                }
                alive |= v;
            }
            *steps += words as u64;
            if alive == 0 {
                return Some(false);
            }
            self.close(&mut next);
            *steps += words as u64;
            std::mem::swap(&mut cur, &mut next);
        }
        Some(
            cur.get(self.m / 64)
                .is_some_and(|w| w & (1u64 << (self.m % 64)) != 0),
        )
    }

    /// A `*` may match nothing: being before a star means being after it too.
    fn close(&self, set: &mut [u64]) {
        let mut carry = 0u64;
        for (w, slot) in set.iter_mut().enumerate() {
            let at_star = *slot & self.star.get(w).copied().unwrap_or(0);
            *slot |= (at_star << 1) | carry;
            carry = at_star >> 63;
        }
    }
}

/// True when `text` matches `pattern` in `mode`; a pattern keyhole refuses (too long)
/// matches nothing.
pub fn matches(pattern: &str, text: &str, mode: Mode) -> bool {
    Wildcard::new(pattern, mode).is_ok_and(|w| w.is_match(text))
}

/// True when `pattern` holds a wildcard in `mode` (`*`, `?` or a class; an over-long pattern
/// counts as one).
pub fn has_wildcards(pattern: &str, mode: Mode) -> bool {
    Wildcard::new(pattern, mode).map_or(true, |w| !w.is_literal())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod stop_tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_long_match_stops_when_asked() {
        let w = Wildcard::new("*a*a*a*b", Mode::LIKE).unwrap();
        let text = "a".repeat(100_000);
        let asked = Cell::new(0usize);
        let r = w.is_match_until(&text, &|| {
            asked.set(asked.get() + 1);
            asked.get() >= 3
        });
        assert_eq!(r, None, "stopped");
        assert_eq!(
            asked.get(),
            3,
            "asked once per {STOP_CHECK_CHARS} characters"
        );
        assert_eq!(w.is_match_until(&text, &|| false), Some(false));
        assert_eq!(w.is_match_until(&format!("{text}b"), &|| false), Some(true));
        assert_eq!(
            Wildcard::new("aaa", Mode::LIKE)
                .unwrap()
                .is_match_until("AAA", &|| true),
            Some(true),
            "a literal compare is short: it never asks"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn name(p: &str, t: &str) -> bool {
        matches(p, t, Mode::Name)
    }
    fn like(p: &str, t: &str) -> bool {
        matches(p, t, Mode::LIKE)
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(name("Get-*", "get-service"));
        assert!(name("*-Job", "Start-Job"));
        assert!(!name("Get-*", "Stop-Service"));
        assert!(name("Register-*Event", "Register-ObjectEvent"));
        assert!(name("*", ""));
        assert!(name("**", "x"));
        assert!(name("g?t-s*e", "Get-Service"));
        assert!(!name("get-s", "Get-Service"));
        assert!(name("*-*ice", "Get-Service"));
        assert!(like("a*b*c", "aXbYc"));
        assert!(!like("a*b", "ac"));
        assert!(!like("?", ""));
        assert!(like("*a", "aaa"));
        assert!(!like("*a*b", "aaaa"));
    }

    #[test]
    fn classes() {
        assert!(name("[gs]et-*", "Set-Thing"));
        assert!(!name("[a-c]*", "Get"));
        assert!(name("Get-[SP]*", "Get-Process"));
        assert!(name("Get-[SP]*", "get-service"));
        assert!(!name("Get-[SP]*", "Get-Uptime"));
        assert!(like("[a-c]at", "bat"));
        assert!(!like("[a-c]at", "rat"));
        assert!(like("[-x]", "-"), "a dash first is itself");
        assert!(like("[x-]", "-"), "a dash last is itself");
        assert!(!like("[z-a]", "m"), "a reversed range matches nothing");
        assert!(like("[!a]", "!"), "no negation: ! is a member");
        // Unclosed or empty brackets are ordinary characters.
        assert!(like("[a", "[a"));
        assert!(!like("[a", "a"));
        assert!(like("[]", "[]"));
        assert!(like("a[]*", "a[]b"));
    }

    #[test]
    fn escapes_in_like_mode_only() {
        assert!(like("a`*", "a*"));
        assert!(!like("a`*", "ab"));
        assert!(like("`[a]", "[a]"));
        assert!(!like("`[a]", "a"));
        assert!(like("[`]a]", "]"), "an escaped ] inside a class");
        assert!(like("a`", "a`"), "a trailing backtick is itself");
        // Name mode: the backtick is an ordinary character.
        assert!(name("a`*", "a`bc"));
        assert!(!name("a`*", "a*x"));
    }

    #[test]
    fn case_rules_per_mode() {
        assert!(like("ngin*", "NGINX"));
        assert!(!matches(
            "ngin*",
            "NGINX",
            Mode::Like {
                case_sensitive: true
            }
        ));
        assert!(like("ſshd", "SSHD"), "-like folds simply (as validate_set)");
        assert!(!name("ſ*", "Set-Thing"), "names fold ASCII letters only");
        assert!(!name("Invo\u{212A}e-*", "Invoke-Expression"));
        assert!(name("INVOKE-*", "invoke-expression"));
        assert!(like("[A-Z]", "q"));
    }

    #[test]
    fn literal_detection() {
        assert!(!has_wildcards("nginx", Mode::Name));
        assert!(has_wildcards("ngin*", Mode::Name));
        assert!(has_wildcards("ngin[x]", Mode::Name));
        assert!(!has_wildcards("ngin[x", Mode::Name));
        assert!(!has_wildcards("ngin`*", Mode::LIKE));
        assert!(has_wildcards("ngin`*", Mode::Name));
    }

    #[test]
    fn over_long_patterns_are_refused() {
        let p = "a".repeat(MAX_WILDCARD_CHARS + 1);
        assert!(Wildcard::new(&p, Mode::LIKE).is_err());
        assert!(!like(&p, &p));
        assert!(has_wildcards(&p, Mode::Name));
    }

    /// Issue 9 finding 3: `-like` over client text cost text × pattern. A 1 MiB text against
    /// the pathological `*a*a*…*a*b` finishes within the documented step bound.
    #[test]
    fn pathological_pattern_is_linear() {
        let text = "a".repeat(1 << 20);
        let pattern = format!("{}*b", "*a".repeat(500));
        let w = Wildcard::new(&pattern, Mode::LIKE).unwrap();
        let mut steps = 0;
        assert!(!w.is_match_counted(&text, &mut steps));
        let bound = w.step_bound(text.chars().count());
        assert!(steps <= bound, "{steps} steps > bound {bound}");
        // m = 1002 tokens: 16 words, 2 passes per character.
        assert!(bound <= 33 * (1 << 20) + 64, "bound {bound}");
        let mut steps = 0;
        let text_b = format!("{text}b");
        assert!(w.is_match_counted(&text_b, &mut steps));
        assert!(steps <= w.step_bound(text_b.chars().count()));
        // A long segment against a near miss (the worst case for backtracking matchers).
        let seg = format!("*{}b", "a".repeat(1000));
        let w = Wildcard::new(&seg, Mode::LIKE).unwrap();
        let mut steps = 0;
        assert!(!w.is_match_counted(&text, &mut steps));
        assert!(steps <= w.step_bound(text.len()));
    }
}
