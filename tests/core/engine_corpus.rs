//! Every line of `tests/corpus/engine_refused.txt` must be refused before anything runs, with
//! the expected FullyQualifiedErrorId or a message containing the expected text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::engine_support as support;

use keyhole::engine::RunOutcome;
use support::*;

#[test]
fn refused_corpus() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/engine_refused.txt"
    ))
    .unwrap();
    let cases: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split_once('\t')
                .unwrap_or_else(|| panic!("no tab in corpus line {l:?}"))
        })
        .collect();
    assert!(cases.len() >= 40, "the corpus needs at least 40 lines");
    let mut failures = Vec::new();
    for (expected, line_text) in cases {
        let (mut s, rec) = session();
        let (outcome, events) = line(&mut s, line_text);
        let ok = match &outcome {
            RunOutcome::Refused(r) => r.id.contains(expected) || r.message.contains(expected),
            _ => false,
        };
        if !ok || !events.is_empty() || !rec.lock().unwrap().commands.is_empty() {
            failures.push(format!(
                "{line_text:?}: expected {expected:?}, got {outcome:?} with {} events",
                events.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus lines not refused as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
