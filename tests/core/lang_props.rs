//! Property tests for the restricted language parser: it never panics, what it accepts is only
//! commands and literals, and scripts built from a small valid grammar parse back to what built them.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyhole::lang::{parse, CommandElement, Literal, LiteralValue, Script, Statement};
use proptest::prelude::*;

fn is_squote(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}')
}

fn is_dquote(c: char) -> bool {
    matches!(c, '"' | '\u{201C}' | '\u{201D}' | '\u{201E}')
}

/// Skips what follows a backtick: one character, or a whole `u{…}`.
fn skip_escape(chars: &mut std::str::Chars<'_>) {
    if chars.next() == Some('u') && chars.as_str().starts_with('{') {
        for c in chars.by_ref() {
            if c == '}' {
                break;
            }
        }
    }
}

/// Independent check of raw source text of one accepted token: outside single quotes, every `$`
/// is escaped by a backtick; outside any quotes no character with a language meaning appears.
/// `dollar_ok` allows the whole token to be `$true`/`$false`/`$null`.
fn raw_is_literal(raw: &str, dollar_ok: bool) -> Result<(), String> {
    #[derive(PartialEq)]
    enum Mode {
        Bare,
        Single,
        Double,
    }
    let mut mode = Mode::Bare;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match mode {
            Mode::Single => {
                if is_squote(c) {
                    mode = Mode::Bare;
                }
            }
            Mode::Double => {
                if c == '`' {
                    skip_escape(&mut chars);
                } else if is_dquote(c) {
                    mode = Mode::Bare;
                } else if c == '$' {
                    return Err(format!("unescaped $ inside double quotes in {raw:?}"));
                }
            }
            Mode::Bare => {
                if c == '`' {
                    skip_escape(&mut chars);
                } else if is_squote(c) {
                    mode = Mode::Single;
                } else if is_dquote(c) {
                    mode = Mode::Double;
                } else if c == '$' && !dollar_ok {
                    return Err(format!("unescaped $ in {raw:?}"));
                } else if matches!(c, '(' | ')' | '{' | '}' | ';' | '|' | '&' | '<' | '>')
                    || (c.is_whitespace() && c != '\n' && c != '\r')
                {
                    return Err(format!("{c:?} outside quotes in {raw:?}"));
                }
            }
        }
    }
    Ok(())
}

fn check_literal(src: &str, lit: &Literal) -> Result<(), String> {
    match &lit.value {
        LiteralValue::List(items) => {
            if items.len() < 2 {
                return Err(format!("list of {} items", items.len()));
            }
            for item in items {
                if matches!(item.value, LiteralValue::List(_)) {
                    return Err("nested list".into());
                }
                check_literal(src, item)?;
            }
            Ok(())
        }
        value => {
            let raw = src
                .get(lit.span.start..lit.span.end)
                .ok_or_else(|| format!("span {:?} outside the source", lit.span))?;
            if raw.is_empty() {
                return Err("empty literal span".into());
            }
            if let LiteralValue::Bare(s) = value {
                if s.starts_with(['@', '[', '#', '$']) && raw.starts_with(['@', '[', '#', '$']) {
                    return Err(format!("bareword starts with a sigil: {raw:?}"));
                }
            }
            raw_is_literal(
                raw,
                matches!(value, LiteralValue::Bool(_) | LiteralValue::Null),
            )
        }
    }
}

/// Walks an accepted script and checks it holds only commands and literals.
fn check_script(src: &str, script: &Script) -> Result<(), String> {
    for st in &script.statements {
        let Statement::Pipeline(p) = st else { continue };
        if p.commands.is_empty() {
            return Err("empty pipeline".into());
        }
        for c in &p.commands {
            let raw = src
                .get(c.name_span.start..c.name_span.end)
                .ok_or("name span outside source")?;
            let quoted = raw.contains(|ch: char| ch == '`' || is_squote(ch) || is_dquote(ch));
            if !quoted {
                if c.name.contains(['$', '(', '{', ';', '|', '&', '<', '>'])
                    || c.name.contains(char::is_whitespace)
                    || c.name.starts_with('@')
                    || c.name.is_empty()
                {
                    return Err(format!("command name {:?}", c.name));
                }
                if raw != c.name {
                    return Err(format!("plain name {raw:?} changed to {:?}", c.name));
                }
            }
            raw_is_literal(raw, false)?;
            for e in &c.elements {
                match e {
                    CommandElement::Parameter { name, value, .. } => {
                        if name.contains(|ch: char| {
                            matches!(
                                ch,
                                '$' | '('
                                    | ')'
                                    | '{'
                                    | '}'
                                    | ';'
                                    | '|'
                                    | '&'
                                    | '<'
                                    | '>'
                                    | ':'
                                    | '`'
                            ) || ch.is_whitespace()
                                || is_squote(ch)
                                || is_dquote(ch)
                        }) {
                            return Err(format!("parameter name {name:?}"));
                        }
                        if let Some(v) = value {
                            check_literal(src, v)?;
                        }
                    }
                    CommandElement::Argument(l) => check_literal(src, l)?,
                }
            }
        }
    }
    Ok(())
}

/// Pieces that make interesting soups of PowerShell syntax.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            " ", "\n", ";", "|", "||", "&", "&&", ",", "$", "$x", "$true", "$(", "${", "@", "@(",
            "@{", "@'", "@\"", "(", ")", "{", "}", "[", "]", "'", "\"", "`", "``", "`$", "`u{",
            "`u{41}", "#", "<#", "#>", "<", ">", "2>&1", "=", "+=", "-", "--", "--%", "-Name",
            "-Name:", ":", "::", ".", "..", "0x", "1kb", "-5", "1.5", "e", "exit", "if",
            "function", "Get-Date", "a", "\u{2013}", "\u{2018}", "\u{201C}", "\u{202E}", "\u{0}",
            "\r", "\t", "é", "☺", "\u{a0}",
        ])
        .prop_map(String::from),
        "[a-z]{1,4}",
    ]
}

/// A small grammar of valid commands, rendered to text and to the expected (name, values).
#[derive(Debug, Clone)]
enum Arg {
    Bare(String),
    Single(String),
    Double(String),
    Int(i64),
    Param(String),
    ParamColon(String, String),
    List(Vec<String>),
    Bool(bool),
}

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        "[a-z][a-z0-9._@/=]{0,8}".prop_map(Arg::Bare),
        "\\PC{0,10}"
            .prop_filter("no controls", |s| s
                .chars()
                .all(|c| !c.is_control() && !('\u{200e}'..='\u{2069}').contains(&c)))
            .prop_map(Arg::Single),
        "[ -~]{0,10}".prop_map(Arg::Double),
        any::<i32>().prop_map(|n| Arg::Int(i64::from(n))),
        "[A-Z][a-zA-Z]{0,8}".prop_map(Arg::Param),
        ("[A-Z][a-zA-Z]{0,8}", "[a-z][a-z0-9]{0,5}").prop_map(|(n, v)| Arg::ParamColon(n, v)),
        prop::collection::vec("[a-z][a-z0-9]{0,5}", 2..5).prop_map(Arg::List),
        any::<bool>().prop_map(Arg::Bool),
    ]
}

fn render_arg(a: &Arg) -> String {
    match a {
        Arg::Bare(s) => s.clone(),
        Arg::Single(s) => format!(
            "'{}'",
            s.replace('\'', "''")
                .replace('\u{2018}', "\u{2018}\u{2018}")
                .replace('\u{2019}', "\u{2019}\u{2019}")
                .replace('\u{201A}', "\u{201A}\u{201A}")
                .replace('\u{201B}', "\u{201B}\u{201B}")
        ),
        Arg::Double(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                if matches!(c, '$' | '`' | '"') {
                    out.push('`');
                }
                out.push(c);
            }
            out.push('"');
            out
        }
        Arg::Int(n) => n.to_string(),
        Arg::Param(n) => format!("-{n}"),
        Arg::ParamColon(n, v) => format!("-{n}:{v}"),
        Arg::List(items) => items.join(", "),
        Arg::Bool(b) => format!("${b}"),
    }
}

fn expected_arg(a: &Arg) -> String {
    match a {
        Arg::Bare(s) => format!("B{s}"),
        Arg::Single(s) | Arg::Double(s) => format!("Q{s}"),
        Arg::Int(n) => format!("I{n}"),
        Arg::Param(n) => format!("-{n}"),
        Arg::ParamColon(n, v) => format!("-{n}:B{v}"),
        Arg::List(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| format!("B{i}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Arg::Bool(b) => format!("T{b}"),
    }
}

fn describe_lit(l: &Literal) -> String {
    match &l.value {
        LiteralValue::Bare(s) => format!("B{s}"),
        LiteralValue::Quoted(s) => format!("Q{s}"),
        LiteralValue::Int(n) => format!("I{n}"),
        LiteralValue::Double(f) => format!("D{f}"),
        LiteralValue::Bool(b) => format!("T{b}"),
        LiteralValue::Null => "N".into(),
        LiteralValue::List(items) => format!(
            "[{}]",
            items.iter().map(describe_lit).collect::<Vec<_>>().join(",")
        ),
    }
}

fn describe(script: &Script) -> Vec<Vec<(String, Vec<String>)>> {
    script
        .statements
        .iter()
        .map(|st| match st {
            Statement::Exit(_) => vec![("exit".to_string(), vec![])],
            Statement::Pipeline(p) => p
                .commands
                .iter()
                .map(|c| {
                    let els = c
                        .elements
                        .iter()
                        .map(|e| match e {
                            CommandElement::Parameter {
                                name, value: None, ..
                            } => format!("-{name}"),
                            CommandElement::Parameter {
                                name,
                                value: Some(v),
                                ..
                            } => {
                                format!("-{name}:{}", describe_lit(v))
                            }
                            CommandElement::Argument(l) => describe_lit(l),
                        })
                        .collect();
                    (c.name.clone(), els)
                })
                .collect(),
        })
        .collect()
}

type Cmd = (String, Vec<Arg>);

fn command() -> impl Strategy<Value = Cmd> {
    (
        prop_oneof!["[A-Z][a-z]{1,6}-[A-Z][a-z]{1,6}", "/usr/bin/[a-z]{1,6}"],
        prop::collection::vec(arg(), 0..5),
    )
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_strings(s in any::<String>()) {
        let _ = parse(&s);
    }

    #[test]
    fn never_panics_on_lossy_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let s = String::from_utf8_lossy(&bytes);
        let _ = parse(&s);
    }

    #[test]
    fn syntax_soup_is_parsed_safely(pieces in prop::collection::vec(piece(), 0..24)) {
        let src: String = pieces.concat();
        match parse(&src) {
            Ok(script) => {
                if let Err(why) = check_script(&src, &script) {
                    return Err(TestCaseError::fail(format!("{src:?} accepted but {why}")));
                }
            }
            Err(e) => {
                prop_assert!(e.column >= 1);
                prop_assert!(e.span.start <= src.len() && src.is_char_boundary(e.span.start));
                prop_assert!(!e.construct.is_empty() && !e.hint.is_empty());
                prop_assert!(!e.id.is_empty());
            }
        }
    }

    #[test]
    fn accepted_unicode_is_only_commands_and_literals(s in "\\PC{0,40}") {
        if let Ok(script) = parse(&s) {
            if let Err(why) = check_script(&s, &script) {
                return Err(TestCaseError::fail(format!("{s:?} accepted but {why}")));
            }
        }
    }

    #[test]
    fn generated_scripts_round_trip(
        statements in prop::collection::vec(prop::collection::vec(command(), 1..4), 0..4),
        use_newlines in any::<bool>(),
    ) {
        let text = statements
            .iter()
            .map(|pipeline| {
                pipeline
                    .iter()
                    .map(|(name, args)| {
                        let mut parts = vec![name.clone()];
                        parts.extend(args.iter().map(render_arg));
                        parts.join(" ")
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect::<Vec<_>>()
            .join(if use_newlines { "\n" } else { "; " });
        let script = parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let expected: Vec<Vec<(String, Vec<String>)>> = statements
            .iter()
            .map(|pipeline| {
                pipeline
                    .iter()
                    .map(|(name, args)| (name.clone(), args.iter().map(expected_arg).collect()))
                    .collect()
            })
            .collect();
        prop_assert_eq!(describe(&script), expected, "script: {:?}", text);
        if let Err(why) = check_script(&text, &script) {
            return Err(TestCaseError::fail(format!("{text:?}: {why}")));
        }
    }
}
