//! The one anchored-pattern compiler: every `validate_pattern`, every external command's
//! `arguments` pattern and every pattern a built-in declares goes through [`AnchoredPattern`].
//!
//! Rules (SPEC §2.3):
//! - A pattern must match the **whole** value: the patterns are joined as alternatives and
//!   compiled as `\A(?:(?:p1)|(?:p2)…)\z`.
//! - [`Case::AsciiInsensitive`] folds ASCII letters only: `s` matches `S` but not `ſ` (U+017F),
//!   `k` matches `K` but not the Kelvin sign (U+212A), `é` does not match `É`. The `regex`
//!   crate's own case-insensitivity applies Unicode simple case folding, so it is never used:
//!   the pattern is parsed, every ASCII letter and every class is widened by its ASCII case
//!   partners (a class before its negation, so `[^a-z]` refuses `A` too), and the result is
//!   compiled case-sensitively. An inline `(?i)` follows the same ASCII rule (also in
//!   case-sensitive patterns, where it is the way to ask for ASCII case-insensitivity).
//! - The inline flag `u` is refused (it would change what `\w`, `.` and classes mean).
//! - Limits: [`MAX_PATTERN_CHARS`] per pattern, [`MAX_PATTERN_NEST`] levels of nesting and
//!   [`MAX_COMPILED_PATTERN_BYTES`] of compiled program; matching is linear (the `regex` crate).
#![forbid(unsafe_code)]

use regex::{Regex, RegexBuilder};
use regex_syntax::ast::{
    self, Ast, ClassBracketed, ClassSet, ClassSetBinaryOpKind, ClassSetItem, ClassSetRange,
    ClassSetUnion, Flag, Flags, FlagsItemKind, GroupKind, HexLiteralKind, Literal, LiteralKind,
    Span,
};
use regex_syntax::hir::{self, ClassUnicode, ClassUnicodeRange, HirKind};

/// Longest pattern text (characters) accepted.
pub const MAX_PATTERN_CHARS: usize = 4096;
/// Deepest nesting of groups and classes in one pattern.
pub const MAX_PATTERN_NEST: u32 = 64;
/// Largest compiled program of one anchored pattern (the `regex` crate's size limit, bytes).
pub const MAX_COMPILED_PATTERN_BYTES: usize = 1 << 20;

/// How letters compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// PowerShell's ValidatePattern: ASCII letters in either case (parameters).
    AsciiInsensitive,
    /// Exactly (external commands' `arguments`).
    Sensitive,
}

/// Why a pattern cannot be used; the text says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is longer than {MAX_PATTERN_CHARS} characters")]
    TooLong,
    #[error("{0}")]
    Syntax(String),
    #[error("the inline flag `u` is not supported: patterns are always Unicode-aware")]
    UnicodeFlag,
    #[error("the pattern compiles to more than {MAX_COMPILED_PATTERN_BYTES} bytes (keyhole's limit); simplify it (fewer repetitions or alternatives)")]
    TooBig,
}

/// One or more patterns, anchored, compiled once.
#[derive(Debug, Clone)]
pub struct AnchoredPattern {
    /// The patterns as written (for messages and display).
    sources: Vec<String>,
    re: Regex,
}

impl AnchoredPattern {
    /// Compile `patterns` as alternatives, each anchored to the whole value. No pattern at all
    /// matches nothing (not even the empty value).
    pub fn new<S: AsRef<str>>(patterns: &[S], case: Case) -> Result<Self, PatternError> {
        let mut parts = Vec::new();
        for p in patterns {
            parts.push(format!("(?:{})", rewrite(p.as_ref(), case)?));
        }
        let src = if parts.is_empty() {
            // The empty class: nothing matches.
            r"[^\x{0}-\x{10FFFF}]".to_string()
        } else {
            format!(r"\A(?:{})\z", parts.join("|"))
        };
        let re = RegexBuilder::new(&src)
            .size_limit(MAX_COMPILED_PATTERN_BYTES)
            .nest_limit(MAX_PATTERN_NEST * 2 + 8)
            .build()
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(_) => PatternError::TooBig,
                other => PatternError::Syntax(other.to_string()),
            })?;
        Ok(AnchoredPattern {
            sources: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
            re,
        })
    }

    /// Check one pattern as configuration validation does (the same compiler, alone).
    pub fn check(pattern: &str, case: Case) -> Result<(), PatternError> {
        AnchoredPattern::new(&[pattern], case).map(|_| ())
    }

    /// True when the whole `value` matches one of the patterns.
    pub fn is_match(&self, value: &str) -> bool {
        self.re.is_match(value)
    }

    /// The patterns as written.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The patterns as written, joined with `|` (for messages).
    pub fn shown(&self) -> String {
        self.sources.join("|")
    }
}

/// The pattern, checked and rewritten so that a case-sensitive compile gives ASCII-only case
/// folding wherever it applies.
fn rewrite(pattern: &str, case: Case) -> Result<String, PatternError> {
    if pattern.chars().count() > MAX_PATTERN_CHARS {
        return Err(PatternError::TooLong);
    }
    let mut ast = ast::parse::ParserBuilder::new()
        .nest_limit(MAX_PATTERN_NEST)
        .build()
        .parse(pattern)
        .map_err(|e| PatternError::Syntax(e.kind().to_string()))?;
    // Every error (unknown property, invalid range, ...) is found on the pattern as written.
    hir::translate::Translator::new()
        .translate(pattern, &ast)
        .map_err(|e| PatternError::Syntax(e.kind().to_string()))?;
    let mut fold = case == Case::AsciiInsensitive;
    walk(&mut ast, &mut fold, pattern)?;
    let mut out = String::new();
    ast::print::Printer::new()
        .print(&ast, &mut out)
        .map_err(|e| PatternError::Syntax(e.to_string()))?;
    Ok(out)
}

/// Apply a flag group: the `i` flag is removed (its effect is `fold`), `u` is refused.
fn take_flags(flags: &mut Flags, fold: &mut bool) -> Result<(), PatternError> {
    let mut negated = false;
    for item in &flags.items {
        match item.kind {
            FlagsItemKind::Negation => negated = true,
            FlagsItemKind::Flag(Flag::CaseInsensitive) => *fold = !negated,
            FlagsItemKind::Flag(Flag::Unicode) => return Err(PatternError::UnicodeFlag),
            FlagsItemKind::Flag(_) => {}
        }
    }
    flags
        .items
        .retain(|i| i.kind != FlagsItemKind::Flag(Flag::CaseInsensitive));
    // `(?-)` is not valid: drop a negation with nothing after it.
    if flags.items.last().is_some_and(|i| i.kind.is_negation()) {
        flags.items.pop();
    }
    Ok(())
}

/// Walk the pattern in order, tracking the `i` flag as the regex crate scopes it (to the end of
/// the enclosing group), and widen letters and classes where it is on.
fn walk(node: &mut Ast, fold: &mut bool, pattern: &str) -> Result<(), PatternError> {
    match node {
        Ast::Empty(_) | Ast::Dot(_) | Ast::Assertion(_) => {}
        Ast::Flags(set) => {
            take_flags(&mut set.flags, fold)?;
            if set.flags.items.is_empty() {
                let span = set.span;
                *node = Ast::empty(span);
            }
        }
        Ast::Literal(lit) => {
            if *fold && lit.c.is_ascii_alphabetic() {
                let set = class_of(&[lit.c.to_ascii_lowercase(), lit.c.to_ascii_uppercase()]);
                *node = bracket(lit.span, &set);
            }
        }
        Ast::ClassUnicode(_) | Ast::ClassPerl(_) | Ast::ClassBracketed(_) => {
            if *fold {
                let set = folded_class(node, pattern)?;
                *node = bracket(*node.span(), &set);
            }
        }
        Ast::Repetition(r) => walk(&mut r.ast, fold, pattern)?,
        Ast::Group(g) => {
            let outer = *fold;
            if let GroupKind::NonCapturing(flags) = &mut g.kind {
                take_flags(flags, fold)?;
            }
            walk(&mut g.ast, fold, pattern)?;
            *fold = outer;
        }
        Ast::Alternation(a) => {
            for x in a.asts.iter_mut() {
                walk(x, fold, pattern)?;
            }
        }
        Ast::Concat(c) => {
            for x in c.asts.iter_mut() {
                walk(x, fold, pattern)?;
            }
        }
    }
    Ok(())
}

fn class_of(chars: &[char]) -> ClassUnicode {
    ClassUnicode::new(chars.iter().map(|c| ClassUnicodeRange::new(*c, *c)))
}

/// `set` widened by the ASCII case partners of its ASCII letters.
fn ascii_fold(mut set: ClassUnicode) -> ClassUnicode {
    let mut letters = ClassUnicode::new([
        ClassUnicodeRange::new('A', 'Z'),
        ClassUnicodeRange::new('a', 'z'),
    ]);
    letters.intersect(&set);
    let partners = ClassUnicode::new(letters.ranges().iter().map(|r| {
        let flip = |c: char| {
            if c.is_ascii_uppercase() {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        };
        ClassUnicodeRange::new(flip(r.start()), flip(r.end()))
    }));
    set.union(&partners);
    set
}

/// The set of characters a standalone class expression matches, case-sensitively.
fn translate_leaf(node: &Ast, pattern: &str) -> Result<ClassUnicode, PatternError> {
    let h = hir::translate::Translator::new()
        .translate(pattern, node)
        .map_err(|e| PatternError::Syntax(e.kind().to_string()))?;
    match h.kind() {
        HirKind::Class(hir::Class::Unicode(c)) => Ok(c.clone()),
        HirKind::Literal(hir::Literal(bytes)) => {
            let s = std::str::from_utf8(bytes)
                .map_err(|_| PatternError::Syntax("a class is not valid UTF-8".into()))?;
            Ok(class_of(&s.chars().collect::<Vec<_>>()))
        }
        _ => Err(PatternError::Syntax(
            "a character class could not be read".into(),
        )),
    }
}

/// A class at the top of the pattern, ASCII-folded before its negation.
fn folded_class(node: &Ast, pattern: &str) -> Result<ClassUnicode, PatternError> {
    let (mut set, negated) = match node {
        Ast::ClassBracketed(b) => (fold_set(&b.kind, pattern)?, b.negated),
        Ast::ClassUnicode(u) => {
            let mut positive = (**u).clone();
            let negated = u.is_negated();
            if negated {
                positive.negated = !positive.negated;
            }
            (
                ascii_fold(translate_leaf(&Ast::class_unicode(positive), pattern)?),
                negated,
            )
        }
        Ast::ClassPerl(p) => {
            let mut positive = (**p).clone();
            positive.negated = false;
            (
                ascii_fold(translate_leaf(&Ast::class_perl(positive), pattern)?),
                p.negated,
            )
        }
        _ => return Err(PatternError::Syntax("not a class".into())),
    };
    if negated {
        set.negate();
    }
    Ok(set)
}

/// The folded set of a bracketed class's contents (nested classes folded, then negated, as the
/// `regex` crate does with its own folding).
fn fold_set(set: &ClassSet, pattern: &str) -> Result<ClassUnicode, PatternError> {
    match set {
        ClassSet::Item(item) => fold_item(item, pattern),
        ClassSet::BinaryOp(op) => {
            let mut lhs = fold_set(&op.lhs, pattern)?;
            let rhs = fold_set(&op.rhs, pattern)?;
            match op.kind {
                ClassSetBinaryOpKind::Intersection => lhs.intersect(&rhs),
                ClassSetBinaryOpKind::Difference => lhs.difference(&rhs),
                ClassSetBinaryOpKind::SymmetricDifference => lhs.symmetric_difference(&rhs),
            }
            Ok(lhs)
        }
    }
}

fn fold_item(item: &ClassSetItem, pattern: &str) -> Result<ClassUnicode, PatternError> {
    let leaf = |negated: bool, positive: ClassSetItem| -> Result<ClassUnicode, PatternError> {
        let span = *positive.span();
        let wrapped = Ast::class_bracketed(ClassBracketed {
            span,
            negated: false,
            kind: ClassSet::Item(positive),
        });
        let mut s = ascii_fold(translate_leaf(&wrapped, pattern)?);
        if negated {
            s.negate();
        }
        Ok(s)
    };
    match item {
        ClassSetItem::Empty(_) => Ok(ClassUnicode::empty()),
        ClassSetItem::Literal(l) => Ok(ascii_fold(class_of(&[l.c]))),
        ClassSetItem::Range(r) => Ok(ascii_fold(ClassUnicode::new([ClassUnicodeRange::new(
            r.start.c, r.end.c,
        )]))),
        ClassSetItem::Ascii(a) => {
            let mut positive = a.clone();
            positive.negated = false;
            leaf(a.negated, ClassSetItem::Ascii(positive))
        }
        ClassSetItem::Unicode(u) => {
            let negated = u.is_negated();
            let mut positive = u.clone();
            if negated {
                positive.negated = !positive.negated;
            }
            leaf(negated, ClassSetItem::Unicode(positive))
        }
        ClassSetItem::Perl(p) => {
            let mut positive = p.clone();
            positive.negated = false;
            leaf(p.negated, ClassSetItem::Perl(positive))
        }
        ClassSetItem::Bracketed(b) => {
            let mut s = fold_set(&b.kind, pattern)?;
            if b.negated {
                s.negate();
            }
            Ok(s)
        }
        ClassSetItem::Union(u) => {
            let mut all = ClassUnicode::empty();
            for i in &u.items {
                all.union(&fold_item(i, pattern)?);
            }
            Ok(all)
        }
    }
}

/// A bracketed class listing exactly `set` (every character written as `\x{…}`).
fn bracket(span: Span, set: &ClassUnicode) -> Ast {
    let lit = |c: char| Literal {
        span,
        kind: LiteralKind::HexBrace(HexLiteralKind::X),
        c,
    };
    if set.ranges().is_empty() {
        // Nothing matches: the negation of every character.
        return Ast::class_bracketed(ClassBracketed {
            span,
            negated: true,
            kind: ClassSet::Item(ClassSetItem::Range(ClassSetRange {
                span,
                start: lit('\0'),
                end: lit(char::MAX),
            })),
        });
    }
    let items = set
        .ranges()
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                ClassSetItem::Literal(lit(r.start()))
            } else {
                ClassSetItem::Range(ClassSetRange {
                    span,
                    start: lit(r.start()),
                    end: lit(r.end()),
                })
            }
        })
        .collect();
    Ast::class_bracketed(ClassBracketed {
        span,
        negated: false,
        kind: ClassSet::Item(ClassSetItem::Union(ClassSetUnion { span, items })),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ok(p: &str, case: Case, value: &str) -> bool {
        AnchoredPattern::new(&[p], case).unwrap().is_match(value)
    }
    fn ci(p: &str, value: &str) -> bool {
        ok(p, Case::AsciiInsensitive, value)
    }

    #[test]
    fn anchored_to_the_whole_value() {
        assert!(ci("acme-[a-z]+", "acme-web"));
        assert!(ci("acme-[a-z]+", "ACME-WEB"));
        assert!(!ci("acme-[a-z]+", "acme-web; rm"));
        assert!(!ci("acme-[a-z]+", "xacme-web"));
        assert!(!ci("a|b", "ab"));
        assert!(ci("a|b", "b"));
        assert!(
            !ci("acme", "acme\n"),
            "$ never matches before a final newline"
        );
        assert!(
            !ci("(?m)acme$", "acme\nx"),
            "multi-line stays inside the pattern"
        );
        let two = AnchoredPattern::new(&["x", "acme-.*"], Case::AsciiInsensitive).unwrap();
        assert!(two.is_match("x") && two.is_match("acme-1") && !two.is_match("xx"));
        let none = AnchoredPattern::new::<&str>(&[], Case::Sensitive).unwrap();
        assert!(!none.is_match("") && !none.is_match("a"));
    }

    /// Issue 9 finding 9: `/ſrv` passed `/(srv|var)(/[a-z0-9_-]+)*` through Unicode folding.
    #[test]
    fn ascii_letters_only_fold() {
        let p = "/|/(srv|var)(/[a-z0-9_-]+)*";
        assert!(ci(p, "/srv/www"));
        assert!(ci(p, "/SRV/WWW"));
        assert!(!ci(p, "/ſrv"), "long s is not s");
        assert!(!ci(p, "/srv/\u{17F}"), "long s is not in [a-z]");
        assert!(
            !ci("[a-z0-9@._-]+\\.service", "\u{212A}vm.service"),
            "Kelvin sign is not k"
        );
        assert!(!ci("k", "\u{212A}"));
        assert!(ci("K", "k"));
        assert!(!ci("é", "É"), "no case folding beyond ASCII");
        // Negated classes refuse both cases of what they list.
        assert!(!ci("[^a-z]", "A"));
        assert!(!ci("[^a]", "A"));
        assert!(ci("[^a]", "b"));
        assert!(!ci("[^[^a]]", "b"), "nested negations");
        assert!(ci("[^[^a]]", "A"));
        assert!(ci("\\p{Lu}", "a"), "a class widens by ASCII partners");
        assert!(!ci("\\P{Lu}", "a"));
        assert!(ci("[[:upper:]]x", "aX"));
        assert!(!ci("[a-z&&[^m]]", "M"));
        assert!(ci("[a-z--m]", "N"));
    }

    #[test]
    fn case_sensitive_and_inline_flags() {
        assert!(ok("blame", Case::Sensitive, "blame"));
        assert!(!ok("blame", Case::Sensitive, "BLAME"));
        assert!(ok("(?i)blame", Case::Sensitive, "BLAME"));
        assert!(
            !ok("(?i)s", Case::Sensitive, "ſ"),
            "an inline (?i) folds ASCII only"
        );
        assert!(ok("a(?i)b", Case::Sensitive, "aB"));
        assert!(!ok("a(?i)b", Case::Sensitive, "AB"));
        assert!(ok("(?i:a)b", Case::Sensitive, "Ab"));
        assert!(!ok("(?i:a)b", Case::Sensitive, "AB"));
        assert!(!ci("(?-i)abc", "ABC"));
        assert!(ci("(?-i:a)bc", "aBC"));
        assert!(!ci("(?-i:a)bc", "ABC"));
        assert!(ci("(?x) a b c ", "ABC"));
        assert!(ci("(?is)a.b", "A\nB"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(
            AnchoredPattern::check("(", Case::AsciiInsensitive),
            Err(PatternError::Syntax(m)) if m.contains("unclosed group")
        ));
        assert!(matches!(
            AnchoredPattern::check("\\p{Nope}", Case::AsciiInsensitive),
            Err(PatternError::Syntax(_))
        ));
        assert_eq!(
            AnchoredPattern::check("(?-u)a", Case::Sensitive),
            Err(PatternError::UnicodeFlag)
        );
        assert_eq!(
            AnchoredPattern::check("(\\w{100}){100}", Case::AsciiInsensitive),
            Err(PatternError::TooBig)
        );
        assert_eq!(
            AnchoredPattern::check(&"a".repeat(MAX_PATTERN_CHARS + 1), Case::Sensitive),
            Err(PatternError::TooLong)
        );
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(AnchoredPattern::check(&deep, Case::Sensitive).is_err());
    }

    proptest::proptest! {
        /// Any text is either refused or compiled; nothing panics.
        #[test]
        fn never_panics(p in "[a-zA-Z\\[\\]^\\-(?:)|*+{}0-9\\\\pLuwdsſ&~.]{0,40}", v in "[a-zA-Zſ\u{212A}0-9]{0,10}") {
            if let Ok(re) = AnchoredPattern::new(&[p.as_str()], Case::AsciiInsensitive) {
                let _ = re.is_match(&v);
            }
        }

        /// ASCII-only folding agrees with the regex crate's own folding on ASCII text.
        #[test]
        fn agrees_with_regex_on_ascii(p in "[a-zA-Z\\[\\]^\\-|*+.]{1,12}", v in "[a-zA-Z.\\-]{0,8}") {
            let ours = AnchoredPattern::new(&[p.as_str()], Case::AsciiInsensitive);
            let theirs = RegexBuilder::new(&format!(r"\A(?:(?:{p}))\z")).case_insensitive(true).build();
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                proptest::prop_assert_eq!(a.is_match(&v), b.is_match(&v), "pattern {:?} value {:?}", p, v);
            }
        }
    }
}
