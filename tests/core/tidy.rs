//! Tidy: the import structure ARCHITECTURE.md draws, held against `src/` (rust-analyzer's
//! `tidy.rs` is the model). Every `crate::` path in a module is an arrow from its top-level
//! module to another; an arrow the table below does not allow, a cycle between top-level
//! modules, a thread or tokio in the sans-IO `psrp`, or a test double in the library fails the
//! test with the file and line to look at.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import (ARCHITECTURE.md "Imports point down").
/// Bottom first; a module may only name modules listed before it.
const ALLOWED: &[(&str, &[&str])] = &[
    // the floor: depend on nothing in the crate
    ("lang", &[]),
    ("sandbox", &[]),
    ("sys", &[]),
    ("metrics", &[]),
    ("systemd", &[]),
    ("wsman", &[]),
    // names, configuration, pure policy
    ("catalog", &["lang"]),
    ("config", &["lang", "catalog", "metrics", "sys"]),
    ("capability", &["lang", "catalog", "config"]),
    ("rules", &["config"]),
    ("auth", &["config", "metrics", "sys"]),
    // the interpreter and what it runs
    (
        "engine",
        &["lang", "catalog", "config", "capability", "sandbox"],
    ),
    (
        "commands",
        &[
            "lang",
            "catalog",
            "config",
            "capability",
            "engine",
            "sandbox",
        ],
    ),
    ("audit", &["engine"]),
    ("psrp", &["lang", "engine"]),
    ("check", &["catalog", "config", "engine", "commands"]),
    ("polkit", &["lang", "config", "capability", "commands"]),
    // sessions, shells, listeners
    ("sessions", &["metrics", "wsman"]),
    (
        "gates",
        &[
            "config",
            "capability",
            "rules",
            "auth",
            "engine",
            "commands",
            "audit",
            "metrics",
            "wsman",
            "sessions",
        ],
    ),
    ("control", &["sessions", "gates", "wsman"]),
    (
        "shells",
        &[
            "engine", "psrp", "wsman", "gates", "sandbox", "metrics", "config",
        ],
    ),
    ("http", &["config", "wsman", "auth", "metrics", "sys"]),
    ("init", &["config", "http", "sandbox"]),
    // the web console: routes on the HTTPS listener (http's WebRoutes), sessions through gates,
    // its shell on the shared runtime, the session list's close through the shell contract
    // (wsman::shell::ShellControl)
    (
        "console",
        &[
            "catalog", "config", "engine", "gates", "http", "shells", "wsman",
        ],
    ),
    // the composition root and the command line
    (
        "daemon",
        &[
            "check", "config", "console", "gates", "http", "shells", "wsman", "sandbox", "metrics",
            "systemd", "auth", "control",
        ],
    ),
    (
        "demo",
        &["auth", "config", "check", "daemon", "http", "sandbox"],
    ),
    (
        "cli",
        &[
            "auth",
            "capability",
            "catalog",
            "check",
            "config",
            "daemon",
            "demo",
            "engine",
            "gates",
            "init",
            "polkit",
            "rules",
            "shells",
            "wsman",
            "sandbox",
            "metrics",
            "control",
            "sessions",
        ],
    ),
];

/// Arrows that must never appear, whatever the table says, with the reason (DESIGN/ARCHITECTURE).
const NEVER: &[(&str, &str, &str)] = &[
    (
        "engine",
        "commands",
        "the engine gets its commands through CommandSource",
    ),
    (
        "config",
        "commands",
        "configuration knows names (catalog), not commands",
    ),
    ("capability", "commands", "merging roles is pure policy"),
    (
        "wsman",
        "engine",
        "wsman knows only its contract, wsman::shell",
    ),
    (
        "wsman",
        "shells",
        "wsman knows only its contract, wsman::shell",
    ),
    (
        "wsman",
        "http",
        "wsman knows only its contract, wsman::shell",
    ),
    ("psrp", "wsman", "psrp is sans-IO"),
    ("http", "engine", "the listener knows nothing of sessions"),
    (
        "http",
        "gates",
        "the listener reaches gate 2 through wsman::shell::Authenticate",
    ),
    (
        "http",
        "console",
        "the listener serves the console through http::WebRoutes, registered by daemon",
    ),
    (
        "gates",
        "console",
        "the console opens its sessions through gates, never the reverse",
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/engine/bind.rs` → `engine`).
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" => None,
        n => Some(n.to_string()),
    }
}

/// Code without comments and string literals (so that docs and messages don't count).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                if b[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        if c == '"' {
            // a string literal (raw strings are rare in imports; their contents are text anyway)
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                } else if b[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push('"');
            i += 1;
            continue;
        }
        if c == '\'' && next.is_some() && b.get(i + 2) == Some(&'\'') {
            // a char literal such as '{'
            out.push_str("' '");
            i += 3;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Every top-level module named after `crate::` in `code`, with its line: `crate::a::b`,
/// `crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(pos) = code[at..].find("crate::") {
        let start = at + pos;
        let line = code[..start].matches('\n').count() + 1;
        let preceded_ok = start == 0 || {
            let p = bytes[start - 1] as char;
            !(p.is_alphanumeric() || p == '_')
        };
        let mut i = start + "crate::".len();
        at = i;
        if !preceded_ok {
            continue;
        }
        if bytes.get(i) == Some(&b'{') {
            // a group: the first identifier of each item at depth 1
            let mut depth = 0usize;
            let mut item_start = true;
            while i < bytes.len() {
                let ch = bytes[i] as char;
                match ch {
                    '{' => {
                        depth += 1;
                        if depth == 1 {
                            item_start = true;
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if depth == 1 && item_start && (c.is_alphabetic() || c == '_') => {
                        let ident: String = code[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        i += ident.len();
                        found.push((ident, line));
                        item_start = false;
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            let ident: String = code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.push((ident, line));
            }
        }
    }
    found
}

struct Arrow {
    from: String,
    to: String,
    at: String,
}

fn arrows() -> (Vec<Arrow>, BTreeSet<String>) {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut modules = BTreeSet::new();
    for f in &files {
        if let Some(m) = top_module(f.strip_prefix(&root).unwrap()) {
            modules.insert(m);
        }
    }
    let mut out = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let Some(from) = top_module(rel) else {
            continue;
        };
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        for (to, line) in crate_paths(&code) {
            if to != from && modules.contains(&to) {
                out.push(Arrow {
                    from: from.clone(),
                    to,
                    at: format!("src/{}:{line}", rel.display()),
                });
            }
        }
    }
    (out, modules)
}

#[test]
fn every_module_is_in_the_table_and_the_table_points_down() {
    let (_, modules) = arrows();
    let mut seen: Vec<&str> = Vec::new();
    for (m, allowed) in ALLOWED {
        for a in *allowed {
            assert!(
                seen.contains(a),
                "tidy table: {m} may import {a}, which is not listed before it (the table must point down)"
            );
        }
        seen.push(m);
    }
    for m in &modules {
        assert!(
            seen.contains(&m.as_str()),
            "src/{m}: a top-level module the tidy table (tests/core/tidy.rs) and ARCHITECTURE.md do not place; add it where it belongs"
        );
    }
    for (from, to, why) in NEVER {
        let allowed = ALLOWED
            .iter()
            .find(|(m, _)| m == from)
            .map(|(_, a)| a.contains(to))
            .unwrap_or(false);
        assert!(
            !allowed,
            "tidy table allows {from} -> {to}, which must never be: {why}"
        );
    }
}

#[test]
fn imports_point_down_only() {
    let (arrows, _) = arrows();
    let table: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut bad = Vec::new();
    for a in &arrows {
        if let Some((_, _, why)) = NEVER.iter().find(|(f, t, _)| *f == a.from && *t == a.to) {
            bad.push(format!(
                "{}: {} -> {} must never be: {why}",
                a.at, a.from, a.to
            ));
            continue;
        }
        let ok = table
            .get(a.from.as_str())
            .is_some_and(|allowed| allowed.contains(&a.to.as_str()));
        if !ok {
            bad.push(format!(
                "{}: {} -> {} is not an arrow ARCHITECTURE.md allows (tests/core/tidy.rs ALLOWED)",
                a.at, a.from, a.to
            ));
        }
    }
    assert!(bad.is_empty(), "forbidden imports:\n{}", bad.join("\n"));
}

#[test]
fn no_cycle_between_top_level_modules() {
    let (arrows, modules) = arrows();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in &arrows {
        graph
            .entry(a.from.clone())
            .or_default()
            .insert(a.to.clone());
    }
    // Depth-first search with colours; report the first cycle found as a path.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in &modules {
        if state.get(m).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(m, &graph, &mut state, &mut stack) {
                panic!("a cycle between top-level modules: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn psrp_is_sans_io() {
    let root = src().join("psrp");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let forbidden = [
        "tokio",
        "std::thread",
        "thread::spawn",
        "thread::sleep",
        "std::net",
        "hyper",
    ];
    let mut bad = Vec::new();
    for f in files {
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        for (i, line) in code.lines().enumerate() {
            for w in forbidden {
                if line.contains(w) {
                    bad.push(format!("{}:{}: {w}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "psrp must stay sans-IO (no threads, sockets, tokio):\n{}",
        bad.join("\n")
    );
}

/// Issue 10: a program's exit wakes the sandbox (pidfd), a cancel wakes it (eventfd), and killed
/// processes are waited for through pidfds and `cgroup.events`: nothing on the path of a
/// program or a built-in sleeps or polls on an interval (unit tests aside).
#[test]
fn nothing_sleeps_on_the_path_of_a_command() {
    let mut files = Vec::new();
    rust_files(&src().join("sandbox"), &mut files);
    rust_files(&src().join("commands"), &mut files);
    let forbidden = ["thread::sleep", "POLL_INTERVAL", "sleep("];
    let mut bad = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // The unit tests at the end of a file may sleep.
        let library = text.split("#[cfg(test)]\n").next().unwrap_or("");
        let code = code_of(library);
        for (i, line) in code.lines().enumerate() {
            for w in forbidden {
                if line.contains(w) {
                    bad.push(format!("{}:{}: {w}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "a command's path must not sleep:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_test_doubles_in_the_library() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !matches!(
                name.as_str(),
                "testing.rs" | "fakes.rs" | "mocks.rs" | "test_util.rs"
            ),
            "{}: test doubles live in tests/*/, not in the library",
            f.display()
        );
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        for (i, line) in code.lines().enumerate() {
            assert!(
                !line.contains("pub mod testing"),
                "{}:{}: test doubles live in tests/*/, not in the library",
                f.display(),
                i + 1
            );
        }
    }
}

/// The checker itself: a forbidden arrow, a group import and a commented-out one.
#[test]
fn the_checker_sees_plain_and_grouped_paths_but_not_comments() {
    let code = code_of(
        "use crate::engine::Value;\n// use crate::commands;\nuse crate::{config::X, lang};\nlet s = \"crate::http\";\n",
    );
    let found: Vec<String> = crate_paths(&code).into_iter().map(|(m, _)| m).collect();
    assert_eq!(found, vec!["engine", "config", "lang"]);
}
