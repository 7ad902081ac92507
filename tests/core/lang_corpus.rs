//! Corpus tests for the restricted language: every refused line fails with its id and a column
//! inside the line; every allowed line parses, and some keep a known shape.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyhole::lang::{parse, CommandElement, LiteralValue, Script, Statement};

use crate::corpus_support;
use corpus_support::unescape;

const REFUSED: &str = include_str!("../corpus/lang_refused.txt");
const ALLOWED: &str = include_str!("../corpus/lang_allowed.txt");

fn corpus_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l))
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
}

#[test]
fn unescape_handles_corpus_escapes() {
    assert_eq!(unescape(r"a\nb\tc\u{41}\*{3}{x,}d\q"), "a\nb\tcAx,x,x,d\\q");
}

#[test]
fn every_refused_line_is_refused_with_its_id_and_column() {
    let mut count = 0;
    let mut failures = Vec::new();
    for (n, line) in corpus_lines(REFUSED) {
        let (id, text) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("lang_refused.txt:{n}: no tab between id and line"));
        let input = unescape(text);
        count += 1;
        match parse(&input) {
            Ok(script) => failures.push(format!("line {n}: {text:?} was accepted: {script:?}")),
            Err(e) => {
                let line_of_error = input.lines().nth(e.span.line(&input) - 1).unwrap_or("");
                let width = line_of_error.chars().count() + 1;
                if e.id != id {
                    failures.push(format!(
                        "line {n}: {text:?}: expected {id}, got {} ({e})",
                        e.id
                    ));
                } else if e.column < 1 || e.column > width {
                    failures.push(format!(
                        "line {n}: {text:?}: column {} outside the line",
                        e.column
                    ));
                } else if e.construct.is_empty() || e.hint.is_empty() {
                    failures.push(format!("line {n}: {text:?}: empty construct or hint"));
                }
            }
        }
    }
    assert!(count >= 120, "only {count} refused lines");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_allowed_line_parses() {
    let mut count = 0;
    let mut failures = Vec::new();
    for (n, line) in corpus_lines(ALLOWED) {
        count += 1;
        if let Err(e) = parse(&unescape(line)) {
            failures.push(format!("line {n}: {line:?}: {} {e}", e.id));
        }
    }
    assert!(count >= 40, "only {count} allowed lines");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn pipelines(script: &Script) -> Vec<&keyhole::lang::Pipeline> {
    script
        .statements
        .iter()
        .filter_map(|s| match s {
            Statement::Pipeline(p) => Some(p),
            Statement::Exit(_) => None,
        })
        .collect()
}

#[test]
fn shapes_of_typical_lines() {
    let s = parse("Get-Service -Name nginx,cups | Select-Object -First 2; Get-Date").unwrap();
    let p = pipelines(&s);
    assert_eq!(p.len(), 2);
    let names: Vec<&str> = p[0].commands.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Get-Service", "Select-Object"]);
    let gs = &p[0].commands[0].elements;
    assert!(
        matches!(&gs[0], CommandElement::Parameter { name, value: None, .. } if name == "Name")
    );
    match &gs[1] {
        CommandElement::Argument(l) => match &l.value {
            LiteralValue::List(items) => {
                let v: Vec<_> = items.iter().map(|i| i.value.clone()).collect();
                assert_eq!(
                    v,
                    [
                        LiteralValue::Bare("nginx".into()),
                        LiteralValue::Bare("cups".into())
                    ]
                );
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&p[0].commands[1].elements[1], CommandElement::Argument(l) if l.value == LiteralValue::Int(2))
    );
    assert_eq!(p[1].commands[0].name, "Get-Date");
    assert!(p[1].commands[0].elements.is_empty());

    let s = parse("Stop-Service -Name 'my service' -Confirm:$false").unwrap();
    let e = &pipelines(&s)[0].commands[0].elements;
    assert!(
        matches!(&e[1], CommandElement::Argument(l) if l.value == LiteralValue::Quoted("my service".into()))
    );
    assert!(
        matches!(&e[2], CommandElement::Parameter { name, value: Some(v), .. }
        if name == "Confirm" && v.value == LiteralValue::Bool(false))
    );

    let s = parse("Get-Date; exit").unwrap();
    assert!(matches!(s.statements[1], Statement::Exit(_)));

    let s = parse("\n\n  \n").unwrap();
    assert!(s.statements.is_empty());

    let s = parse("Write-Output \"a`$b\" 'it''s' a`$b 0x1F 1kb 1.5").unwrap();
    let values: Vec<LiteralValue> = pipelines(&s)[0].commands[0]
        .elements
        .iter()
        .map(|e| match e {
            CommandElement::Argument(l) => l.value.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        [
            LiteralValue::Quoted("a$b".into()),
            LiteralValue::Quoted("it's".into()),
            LiteralValue::Bare("a$b".into()),
            LiteralValue::Int(31),
            LiteralValue::Int(1024),
            LiteralValue::Double(1.5),
        ]
    );

    let s = parse("Microsoft.PowerShell.Utility\\Invoke-Expression -Command x").unwrap();
    assert_eq!(
        pipelines(&s)[0].commands[0].name,
        "Microsoft.PowerShell.Utility\\Invoke-Expression"
    );
}

#[test]
fn errors_on_later_lines_report_the_column_in_that_line() {
    let e = parse("Get-Date\n  Write-Output $x").unwrap_err();
    assert_eq!(e.id, "VariableNotAllowed");
    assert_eq!(e.column, 16);
    assert_eq!(e.span.line("Get-Date\n  Write-Output $x"), 2);
}
