//! The refusal corpora through `keyhole run`, exactly as an administrator (or a remote session)
//! would meet them: every line of `corpus/lang_refused.txt` and `corpus/shipped_refused.txt`
//! exits 2 and names its reason; every line of `corpus/shipped_allowed.txt` exits 0 and prints
//! what it should. Runs on a copy of the shipped examples.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::shipped;

use shipped::{keyhole, shipped_copy};

use crate::corpus_support;
use corpus_support::unescape;

fn lines(text: &str) -> Vec<(usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        .map(|(n, l)| (n + 1, l.split('\t').collect()))
        .collect()
}

fn run_as(dir: &std::path::Path, endpoint: &str, line: &str) -> (i32, String, String) {
    let (user, group) = match endpoint {
        "Vendor" => ("acme-vendor", "acme-vendor"),
        _ => ("alice", "helpdesk"),
    };
    keyhole(
        dir,
        &[
            "run",
            "--endpoint",
            endpoint,
            "--user",
            user,
            "--group",
            group,
        ],
        Some(line),
    )
}

#[test]
fn language_corpus_is_refused_by_keyhole_run() {
    let d = shipped_copy();
    let mut failures = Vec::new();
    let mut count = 0;
    for (n, fields) in lines(include_str!("../corpus/lang_refused.txt")) {
        let (id, line) = (fields[0], unescape(&fields[1..].join("\t")));
        // A line with NUL cannot be passed as a process argument; the parser tests cover it.
        if line.contains('\0') {
            continue;
        }
        count += 1;
        let (code, out, err) = run_as(d.path(), "Helpdesk", &line);
        if code != 2 || !err.contains(&format!("FullyQualifiedErrorId : {id}")) || !out.is_empty() {
            failures.push(format!("line {n}: {line:?}: exit {code}, stderr {err:?}"));
        }
    }
    assert!(count >= 150, "the language corpus shrank to {count} lines");
    assert!(
        failures.is_empty(),
        "{} of {count} lines not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn shipped_corpus_is_refused_with_its_reason() {
    let d = shipped_copy();
    let mut failures = Vec::new();
    let all = lines(include_str!("../corpus/shipped_refused.txt"));
    for (n, fields) in &all {
        let (endpoint, want, line) = (fields[0], fields[1], unescape(&fields[2..].join("\t")));
        let (code, out, err) = run_as(d.path(), endpoint, &line);
        if code != 2 || !err.contains(want) || !out.is_empty() {
            failures.push(format!(
                "line {n}: [{endpoint}] {line:?}: exit {code}, stdout {out:?}, stderr {err:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} lines not refused as expected:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn shipped_allowed_lines_run() {
    let d = shipped_copy();
    let mut failures = Vec::new();
    let all = lines(include_str!("../corpus/shipped_allowed.txt"));
    for (n, fields) in &all {
        let (endpoint, want, line) = (fields[0], fields[1], unescape(&fields[2..].join("\t")));
        let (code, out, err) = run_as(d.path(), endpoint, &line);
        let want = unescape(want);
        let found = match want.strip_prefix("stderr:") {
            Some(w) => err.contains(w),
            None => out.contains(&want),
        };
        if code != 0 || !found {
            failures.push(format!(
                "line {n}: [{endpoint}] {line:?}: exit {code}, stdout {out:?}, stderr {err:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} lines did not run as expected:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
