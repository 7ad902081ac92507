//! The two library figures: gate 3 with 100,000 authorization rules (`RuleIndex::evaluate`, the
//! index built once per rules file as the server does at load and reload), and
//! `config::load` of a configuration with 1,000 endpoints (generated files).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyhole::config::{Rule, RulesFile};
use serde_json::json;

use crate::net::Res;
use crate::stats::{us, Figure, Goal, Samples};

/// Per-call time: `op` repeated in batches of about 2 ms, `samples` batches.
fn per_call(samples: usize, mut op: impl FnMut()) -> Samples {
    op();
    let t = Instant::now();
    op();
    let one = t.elapsed().max(Duration::from_nanos(20));
    let batch = (Duration::from_millis(2).as_nanos() / one.as_nanos()).clamp(1, 1_000_000) as u32;
    let mut s = Samples::default();
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        s.push(t.elapsed() / batch);
    }
    s
}

fn rule(id: u64, user: Option<&str>, group: Option<&str>, computer: &str, conf: &str) -> Rule {
    Rule {
        id,
        name: format!("generated rule {id}"),
        user: user.map(str::to_string),
        user_group: group.map(str::to_string),
        computer: Some(computer.to_string()),
        computer_group: None,
        configuration: conf.to_string(),
    }
}

/// `n` rules of other groups, computers and configurations, and the one that admits the
/// caller last (the whole list is walked: the worst case of an admitted caller).
fn rules(n: usize) -> RulesFile {
    let mut r: Vec<Rule> = (1..n as u64)
        .map(|i| {
            rule(
                i,
                None,
                Some(&format!("team{i}")),
                &format!("host{}", i % 97),
                &format!("Ep{}", i % 1000),
            )
        })
        .collect();
    r.push(rule(n as u64, Some("alice"), None, "web01", "Helpdesk"));
    RulesFile {
        rules: r,
        computer_groups: Default::default(),
    }
}

pub fn gate3(n_rules: usize, samples: usize) -> Res<Figure> {
    let groups = vec!["staff".to_string(), "helpdesk".to_string()];
    let names = vec!["web01".to_string(), "web01.example.com".to_string()];
    let big = rules(n_rules);
    let one = rules(1);
    // The server indexes a rules file once, at load and reload; timed here for the record.
    let t = Instant::now();
    let big_ix = keyhole::rules::RuleIndex::new(&big);
    let index_build = t.elapsed();
    let one_ix = keyhole::rules::RuleIndex::new(&one);
    for (rf, ix) in [(&big, &big_ix), (&one, &one_ix)] {
        let d = ix.evaluate("alice", &groups, &names, "Helpdesk");
        if !d.allowed || d.rule_id != Some(rf.rules.len() as u64) {
            return Err(format!(
                "the benchmark's caller must be admitted by the last rule: {}",
                d.reason
            ));
        }
    }
    let eval = |ix: &keyhole::rules::RuleIndex| {
        black_box(black_box(ix).evaluate("alice", &groups, &names, "Helpdesk"));
    };
    let base = per_call(samples, || eval(&one_ix));
    let case = per_call(samples, || eval(&big_ix));
    Ok(Figure {
        id: "gate3_rules",
        title: format!("Gate 3 decision with {n_rules} rules (library RuleIndex::evaluate; the admitting rule is the last)"),
        keyhole_label: format!("evaluate, {n_rules} rules (median)"),
        baseline_label: "evaluate, 1 rule (median)".into(),
        value: us(case.median()),
        baseline: Some(us(base.median())),
        unit: "µs",
        goal: Goal::Absolute(10.0),
        goal_text: "≤ 10 µs",
        detail: json!({"rules": n_rules, "keyhole": case.json(), "baseline": base.json(), "index_build_ms": index_build.as_secs_f64() * 1e3}),
    })
}

/// Write a configuration with `n` endpoints (and 20 role capabilities they share).
fn write_config(dir: &Path, n: usize, run_as: &str) -> Res<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut put = |rel: String, text: String| -> Res<()> {
        let p = dir.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        files.push(p);
        Ok(())
    };
    put(
        "keyhole.toml".into(),
        "computer_name = \"web01\"\n[listener]\nhttps = \"127.0.0.1:5986\"\nhttp = \"\"\n".into(),
    )?;
    put(
        "authorization-rules.toml".into(),
        "[[rule]]\nid = 1\nuser_group = \"team1\"\ncomputer = \"*\"\nconfiguration = \"*\"\n"
            .into(),
    )?;
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$9Y2hVIx3a0JjTI8u8C3Y2Xc5yHV1HgAm2iS2yW2rj0w";
    put(
        "users.toml".into(),
        format!("[users.alice]\npassword = \"{hash}\"\ngroups = [\"team1\"]\n"),
    )?;
    for k in 0..20 {
        put(
            format!("role-capabilities/Role{k}.toml"),
            format!(
                "description = \"generated role {k}\"\n\
                 visible_cmdlets = [\"Get-Uptime\", \"Get-Date\",\n  \
                 {{ name = \"Get-Service\", parameters = [ {{ name = \"Name\", validate_set = [\"svc{k}a\", \"svc{k}b\", \"svc{k}c\"] }} ] }},\n  \
                 {{ name = \"Get-Process\", parameters = [ {{ name = \"Name\", validate_pattern = \"app{k}-[a-z]+\" }} ] }},\n]\n\
                 visible_external_commands = [\"/usr/bin/uptime\"]\n"
            ),
        )?;
    }
    for i in 0..n {
        put(
            format!("endpoints/Ep{i:04}.toml"),
            format!(
                "name = \"Ep{i:04}\"\ndescription = \"generated endpoint {i}\"\nrun_as = \"{run_as}\"\n\n\
                 [[role]]\ngroup = \"team{}\"\nrole_capabilities = [\"Role{}\", \"Role{}\"]\n",
                i % 50,
                i % 20,
                (i + 7) % 20
            ),
        )?;
    }
    Ok(files)
}

pub fn config_load(n: usize, samples: usize, run_as: &str) -> Res<Figure> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let files = write_config(dir.path(), n, run_as)?;
    let path = dir.path().join("keyhole.toml");
    let bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let mut base = Samples::default();
    let mut case = Samples::default();
    let mut endpoints = 0;
    for i in 0..samples + 1 {
        let t = Instant::now();
        for f in &files {
            black_box(std::fs::read(f).map_err(|e| e.to_string())?);
        }
        let b = t.elapsed();
        let t = Instant::now();
        let cfg = keyhole::config::load(&path).map_err(|diags| {
            let text: Vec<String> = diags.iter().map(|d| d.rendered.clone()).collect();
            format!(
                "the generated configuration does not load:\n{}",
                text.join("\n")
            )
        })?;
        let c = t.elapsed();
        endpoints = cfg.endpoints.len();
        drop(black_box(cfg));
        if i > 0 {
            base.push(b);
            case.push(c);
        }
    }
    if endpoints != n {
        return Err(format!(
            "config::load saw {endpoints} endpoints, expected {n}"
        ));
    }
    Ok(Figure {
        id: "config_load",
        title: format!(
            "Configuration load with {n} endpoints (library config::load; {} files, {bytes} bytes)",
            files.len()
        ),
        keyhole_label: "config::load (median)".into(),
        baseline_label: "read the same files' bytes (median)".into(),
        value: us(case.median()) / 1e3,
        baseline: Some(us(base.median()) / 1e3),
        unit: "ms",
        goal: Goal::Absolute(1000.0),
        goal_text: "≤ 1 s",
        detail: json!({"endpoints": n, "files": files.len(), "bytes": bytes, "keyhole": case.json(), "baseline": base.json()}),
    })
}
