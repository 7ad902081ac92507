//! Runs every fuzz target's logic (fuzz/src/lib.rs) over its seed corpus in fuzz/corpus/<target>/
//! and over the inputs kept in fuzz/artifacts-found/<target>/, on stable Rust, so that what
//! fuzzing found stays fixed. Findings not fixed yet wait in fuzz/artifacts-found/<target>/open/:
//! `cargo test --test core fuzz_corpus::` fails on them; once fixed, move the file up one
//! directory. (Fuzzing itself: fuzz/README.md.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_logic;

use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn run_corpus(target: &str, run: impl Fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("artifacts-found").join(target),
    ] {
        for file in files_in(&dir) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} fails on {} (reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 \
                 cargo fuzz run {target} {})",
                file.display(),
                file.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn every_target_has_seeds_and_a_test() {
    let names: Vec<&str> = fuzz_logic::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "lang_parse",
            "config_toml",
            "proc_parsers",
            "basic_header",
            "wsman_envelope",
            "psrp_fragments",
            "psrp_message",
            "clixml_read",
            "winrs_command"
        ]
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for name in names {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz/fuzz_targets/{name}.rs"
        );
        assert!(
            files_in(&root.join("corpus").join(name)).len() >= 5,
            "fewer than 5 seeds in fuzz/corpus/{name}"
        );
    }
}

#[test]
fn lang_parse_corpus() {
    assert!(run_corpus("lang_parse", fuzz_logic::lang_parse) >= 5);
}

#[test]
fn lang_parse_checks_can_fail() {
    // The invariant checker must reject what the parser refuses, were it ever accepted: feed it
    // a hand-made script whose "literal" is a variable.
    use keyhole::lang::{
        CommandCall, CommandElement, Literal, LiteralValue, Pipeline, Script, Span, Statement,
    };
    let src = "Write-Output $env:PATH";
    let forged = Script {
        statements: vec![Statement::Pipeline(Pipeline {
            span: Span::new(0, src.len()),
            commands: vec![CommandCall {
                name: "Write-Output".into(),
                name_span: Span::new(0, 12),
                span: Span::new(0, src.len()),
                elements: vec![CommandElement::Argument(Literal {
                    value: LiteralValue::Bare("PATH".into()),
                    span: Span::new(13, src.len()),
                })],
            }],
        })],
    };
    let outcome = std::panic::catch_unwind(|| fuzz_logic::check_script(src, &forged));
    assert!(outcome.is_err(), "a variable passed as a literal");
    // And the real parser refuses the line.
    assert!(keyhole::lang::parse(src).is_err());
}

#[test]
fn config_toml_corpus() {
    let dir = tempfile::tempdir().unwrap();
    fuzz_logic::write_config_tree(dir.path()).unwrap();
    // The untouched shipped tree loads.
    let loaded = keyhole::config::load(&dir.path().join("keyhole.toml"));
    assert!(loaded.is_ok(), "{:?}", loaded.err());
    let n = run_corpus("config_toml", |d| fuzz_logic::config_toml_in(dir.path(), d));
    assert!(n >= 5);
    // Every input restored the tree.
    assert!(keyhole::config::load(&dir.path().join("keyhole.toml")).is_ok());
    assert!(!dir.path().join("endpoints/Fuzz.toml").exists());
}

#[test]
fn proc_parsers_corpus() {
    assert!(run_corpus("proc_parsers", fuzz_logic::proc_parsers) >= 5);
}

#[test]
fn basic_header_corpus() {
    assert!(run_corpus("basic_header", fuzz_logic::basic_header) >= 5);
}

#[test]
fn wsman_envelope_corpus() {
    assert!(run_corpus("wsman_envelope", fuzz_logic::wsman_envelope) >= 5);
}

#[test]
fn psrp_fragments_corpus() {
    assert!(run_corpus("psrp_fragments", fuzz_logic::psrp_fragments) >= 5);
}

#[test]
fn psrp_message_corpus() {
    assert!(run_corpus("psrp_message", fuzz_logic::psrp_message) >= 5);
}

#[test]
fn clixml_read_corpus() {
    assert!(run_corpus("clixml_read", fuzz_logic::clixml_read) >= 5);
}

#[test]
fn winrs_command_corpus() {
    assert!(run_corpus("winrs_command", fuzz_logic::winrs_command) >= 5);
}

/// The seeds copied from real clients' traffic are valid inputs, so fuzzing starts deep in each
/// decoder rather than at its first check.
#[test]
fn protocol_seeds_are_valid_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for f in files_in(&root.join("wsman_envelope")) {
        let data = std::fs::read(&f).unwrap();
        keyhole::wsman::envelope::Envelope::parse(&data)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    for f in files_in(&root.join("psrp_message")) {
        let data = std::fs::read(&f).unwrap();
        let m = keyhole::psrp::message::Message::decode(&data)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if !m.data.is_empty() {
            keyhole::psrp::clixml::read::parse_default(m.text().unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }
    for f in files_in(&root.join("clixml_read")) {
        let text = std::fs::read_to_string(&f).unwrap();
        keyhole::psrp::clixml::read::parse_default(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
    let mut complete = 0;
    for f in files_in(&root.join("psrp_fragments")) {
        let data = std::fs::read(&f).unwrap();
        let mut r = keyhole::psrp::fragment::Reassembler::new();
        complete += r
            .push_bytes(&data[1..])
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .len();
    }
    assert!(
        complete >= 5,
        "{complete} complete messages in the fragment seeds"
    );
}

/// The budget checks of the CLIXML target can fail: a value holding more than the reader
/// counted is caught.
#[test]
fn clixml_budget_check_can_fail() {
    use keyhole::engine::Value;
    let v = Value::Array(vec![Value::from("x".repeat(1000))]);
    assert!(fuzz_logic::value_bytes(&v, 0) > 1000);
    let outcome = std::panic::catch_unwind(|| fuzz_logic::value_bytes(&nest(200), 0));
    assert!(outcome.is_err(), "a value nested 200 deep passed");
}

fn nest(n: usize) -> keyhole::engine::Value {
    let mut v = keyhole::engine::Value::Null;
    for _ in 0..n {
        v = keyhole::engine::Value::Array(vec![v]);
    }
    v
}

/// The findings in fuzz/artifacts-found/*/open/ are bugs outside fuzz/ not fixed yet: this test
/// reproduces them: it fails while any is open (none is now).
#[test]
fn open_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/artifacts-found");
    let tree = tempfile::tempdir().unwrap();
    fuzz_logic::write_config_tree(tree.path()).unwrap();
    let mut failing = Vec::new();
    for (name, run) in fuzz_logic::TARGETS {
        for file in files_in(&root.join(name).join("open")) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if *name == "config_toml" {
                    fuzz_logic::config_toml_in(tree.path(), &data);
                } else {
                    run(&data);
                }
            }));
            if outcome.is_err() {
                failing.push(file.display().to_string());
            }
        }
    }
    assert!(failing.is_empty(), "still failing: {failing:#?}");
}
