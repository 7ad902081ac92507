//! `keyhole polkit`: the generated rule is evaluated in a real JavaScript engine (node) against
//! polkit's API shape (`polkit.addRule`, `polkit.Result`, `action.id`, `action.lookup("unit")`,
//! `action.lookup("verb")`, `subject.user`) for allowed and refused (account, unit, verb)
//! triples; the regex translation is checked differentially against the regex crate that
//! keyhole's engine uses; `--write`, the refusal of untranslatable patterns and `check`'s
//! warning are exercised through the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keyhole::capability::{effective_capability, ParamsGrant, ValueConstraint};
use keyhole::config::{self, LoadedConfig};
use keyhole::lang::pattern::{AnchoredPattern, Case};
use keyhole::polkit::{self, no_aliases, pattern_to_js, wildcard_to_js};

use crate::shipped;

const HARNESS: &str = r#"
"use strict";
var fs = require("fs");
var vm = require("vm");
var input = JSON.parse(fs.readFileSync(0, "utf8"));
var out = { decisions: [], regexes: [] };
if (input.rules) {
    var rules = [];
    // polkit's JavaScript API (polkit(8), "AUTHORIZATION RULES"), as much as rules may use.
    var sandbox = {
        polkit: {
            Result: { NO: "no", YES: "yes", AUTH_SELF: "auth_self", AUTH_SELF_KEEP: "auth_self_keep",
                      AUTH_ADMIN: "auth_admin", AUTH_ADMIN_KEEP: "auth_admin_keep", NOT_HANDLED: null },
            addRule: function (f) { rules.push(f); },
            addAdminRule: function () {},
            log: function () {},
            spawn: function () { throw new Error("spawn is not expected"); }
        }
    };
    vm.createContext(sandbox);
    vm.runInContext(fs.readFileSync(input.rules, "utf8"), sandbox, { filename: input.rules });
    if (rules.length !== 1) { throw new Error("expected one rule, got " + rules.length); }
    input.triples.forEach(function (t) {
        var details = { unit: t.unit, verb: t.verb };
        var action = { id: t.action, lookup: function (k) { return details[k]; } };
        var subject = { user: t.user, groups: [], local: false, active: false, isInGroup: function () { return false; } };
        var r = null;
        for (var i = 0; i < rules.length && r === null; i++) {
            var v = rules[i](action, subject);
            r = (v === undefined) ? null : v;
        }
        out.decisions.push(r === null ? "not_handled" : r);
    });
}
(input.regexes || []).forEach(function (x) {
    var re = new RegExp(x.js, "i");
    out.regexes.push(x.strings.map(function (s) { return re.test(s); }));
});
process.stdout.write(JSON.stringify(out));
"#;

fn node() -> PathBuf {
    for p in ["/usr/bin/node", "/usr/bin/nodejs", "/usr/local/bin/node"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("node is needed to evaluate the polkit rule (tests/run.sh installs Debian's nodejs)");
}

/// Run the harness on `input` (JSON) and return its JSON output.
fn run_js(input: serde_json::Value) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("harness.js");
    std::fs::write(&script, HARNESS).unwrap();
    let mut child = Command::new(node())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Triple {
    user: String,
    unit: &'static str,
    verb: &'static str,
    action: &'static str,
    want: &'static str,
}

fn t(user: &str, unit: &'static str, verb: &'static str, want: &'static str) -> Triple {
    Triple {
        user: user.to_string(),
        unit,
        verb,
        action: polkit::ACTION_ID,
        want,
    }
}

/// Evaluate `rules` (the file's text) on the triples and compare with what each wants.
fn evaluate(rules: &str, triples: &[Triple]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("50-keyhole.rules");
    std::fs::write(&path, rules).unwrap();
    let input = serde_json::json!({
        "rules": path,
        "triples": triples.iter().map(|t| serde_json::json!({
            "user": t.user, "unit": t.unit, "verb": t.verb, "action": t.action
        })).collect::<Vec<_>>(),
    });
    let out = run_js(input);
    let got = out["decisions"].as_array().unwrap();
    let mut wrong = Vec::new();
    for (t, g) in triples.iter().zip(got) {
        if g.as_str() != Some(t.want) {
            wrong.push(format!(
                "({}, {}, {}, {}) → {g}, want {}",
                t.user, t.unit, t.verb, t.action, t.want
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong decisions:\n{}\n\nrules:\n{rules}",
        wrong.join("\n")
    );
}

/// The rule must be ES5 (polkitd's duktape), nothing newer.
fn assert_es5(rules: &str) {
    let code: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    for bad in ["=>", "let ", "const ", "`", "class ", "..."] {
        assert!(
            !code.iter().any(|l| l.contains(bad)),
            "the rule uses {bad:?}:\n{rules}"
        );
    }
}

#[test]
fn shipped_endpoints_rule_decides_as_the_roles_grant() {
    let d = shipped::shipped_copy();
    let cfg = config::load(&d.path().join("keyhole.toml")).unwrap();
    let plan = polkit::plan(&cfg, &no_aliases).unwrap();
    let rules = polkit::render(&plan);
    assert_es5(&rules);
    // The shipped copy's run_as is the current user when not root (the only account a non-root
    // keyhole may use), keyhole-helpdesk as root.
    let helpdesk = cfg.endpoint("Helpdesk").unwrap().config.run_as.clone();
    let vendor = cfg.endpoint("Vendor").unwrap().config.run_as.clone();
    let mut triples = vec![
        t(&helpdesk, "nginx.service", "restart", "yes"),
        t(&helpdesk, "cron.service", "restart", "yes"),
        t(&helpdesk, "ssh.service", "start", "yes"),
        t(&helpdesk, "nginx.service", "start", "yes"),
        // systemd ids are case-sensitive, keyhole's lookup is not.
        t(&helpdesk, "NGINX.service", "restart", "yes"),
        // Stop-Service is not granted; other verbs never come from keyhole.
        t(&helpdesk, "nginx.service", "stop", "not_handled"),
        t(
            &helpdesk,
            "nginx.service",
            "reload-or-restart",
            "not_handled",
        ),
        t(&helpdesk, "nginx.service", "reload", "not_handled"),
        // Not in the set, or not a service.
        t(&helpdesk, "sshd.service", "restart", "not_handled"),
        t(&helpdesk, "apache2.service", "restart", "not_handled"),
        t(&helpdesk, "nginx.socket", "restart", "not_handled"),
        t(&helpdesk, "nginx", "restart", "not_handled"),
        t(&helpdesk, "nginx.service.service", "restart", "not_handled"),
        t(&helpdesk, "xnginx.service", "restart", "not_handled"),
        // Other accounts, and names that are properties of every JS object.
        t("root", "nginx.service", "restart", "not_handled"),
        t("constructor", "nginx.service", "restart", "not_handled"),
        t("__proto__", "nginx.service", "restart", "not_handled"),
        t("toString", "nginx.service", "restart", "not_handled"),
        t(&helpdesk, "nginx.service", "constructor", "not_handled"),
    ];
    if vendor != helpdesk {
        // The vendor may look at acme-* services but change none.
        triples.push(t(&vendor, "acme-web.service", "restart", "not_handled"));
        triples.push(t(&vendor, "nginx.service", "restart", "not_handled"));
    }
    let mut other_action = t(&helpdesk, "nginx.service", "restart", "not_handled");
    other_action.action = "org.freedesktop.login1.reboot";
    triples.push(other_action);
    evaluate(&rules, &triples);
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A configuration with sets, wildcards, patterns, a plain grant, two endpoints sharing an
/// account and one role entry whose merge drops a set (a pattern next to it wins).
fn rich_config(a: &str, b: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "keyhole.toml",
        "[listener]\nhttps = \"\"\nhttp = \"127.0.0.1:0\"\n",
    );
    write(
        d.path(),
        "authorization-rules.toml",
        "[[rule]]\nid = 1\nuser_group = \"ops\"\ncomputer = \"*\"\nconfiguration = \"*\"\n",
    );
    write(
        d.path(),
        "role-capabilities/Web.toml",
        r#"visible_cmdlets = [
  { name = "Restart-Service", parameters = [ { name = "Name", validate_pattern = "acme-(web|db)[0-9]?" } ] },
  { name = "Stop-Service", parameters = [ { name = "Name", validate_set = ["legacy-*", "Foo.service", "bar", "not a name"] } ] },
]
"#,
    );
    write(
        d.path(),
        "role-capabilities/Starter.toml",
        "visible_cmdlets = [\"Start-Service\"]\n",
    );
    write(
        d.path(),
        "role-capabilities/SetOnly.toml",
        "visible_cmdlets = [ { name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_set = [\"nginx\"] } ] } ]\n",
    );
    write(
        d.path(),
        "role-capabilities/PatternOnly.toml",
        "visible_cmdlets = [ { name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_pattern = \"x\\\\d{2}\" } ] } ]\n",
    );
    write(
        d.path(),
        "role-capabilities/ReadOnly.toml",
        "visible_cmdlets = [\"Get-Service\", { name = \"Restart-Service\", parameters = [ { name = \"Force\" } ] }]\n",
    );
    write(
        d.path(),
        "endpoints/Ops.toml",
        &format!(
            r#"name = "Ops"
run_as = "{a}"
[[role]]
group = "ops"
role_capabilities = ["Web"]
[[role]]
user = "carol"
role_capabilities = ["Starter"]
"#
        ),
    );
    write(
        d.path(),
        "endpoints/Mixed.toml",
        &format!(
            r#"name = "Mixed"
run_as = "{b}"
[[role]]
group = "mixed"
role_capabilities = ["SetOnly", "PatternOnly"]
[[role]]
group = "readers"
role_capabilities = ["ReadOnly"]
"#
        ),
    );
    write(
        d.path(),
        "endpoints/Shared.toml",
        &format!(
            r#"name = "Shared"
run_as = "{a}"
[[role]]
group = "shared"
role_capabilities = ["PatternOnly"]
"#
        ),
    );
    d
}

fn accounts() -> Option<(String, String)> {
    if shipped::is_root() {
        Some(("daemon".into(), "bin".into()))
    } else {
        None
    }
}

#[test]
fn sets_wildcards_patterns_and_merges_are_translated_faithfully() {
    let Some((a, b)) = accounts() else {
        crate::prereq::skip("needs root (run_as accounts other than the current user)");
        return;
    };
    let d = rich_config(&a, &b);
    let cfg = config::load(&d.path().join("keyhole.toml")).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter().map(|d| d.rendered.clone()).collect::<String>()
        )
    });
    let plan = polkit::plan(&cfg, &no_aliases).unwrap();
    let rules = polkit::render(&plan);
    assert_es5(&rules);
    let triples = vec![
        // Ops, group ops: Restart-Service -Name pattern acme-(web|db)[0-9]?
        t(&a, "acme-web.service", "restart", "yes"),
        t(&a, "acme-db7.service", "restart", "yes"),
        t(&a, "ACME-WEB.service", "restart", "yes"),
        t(&a, "acme-web77.service", "restart", "not_handled"),
        t(&a, "acme-webx.service", "restart", "not_handled"),
        t(&a, "xacme-web.service", "restart", "not_handled"),
        t(&a, "acme-mail.service", "restart", "not_handled"),
        // Stop-Service set: a wildcard member, an id member, a plain member, an unusable one.
        t(&a, "legacy-app.service", "stop", "yes"),
        t(&a, "LEGACY-.service", "stop", "yes"),
        t(&a, "foo.service", "stop", "yes"),
        t(&a, "bar.service", "stop", "yes"),
        t(&a, "bar.service", "restart", "not_handled"),
        t(&a, "barx.service", "stop", "not_handled"),
        t(&a, "legacy.service", "stop", "not_handled"),
        t(&a, "not a name.service", "stop", "not_handled"),
        // carol's plain Start-Service grant: every service (and only services).
        t(&a, "anything.service", "start", "yes"),
        t(&a, "anything.timer", "start", "not_handled"),
        // Shared (same account): pattern x\d{2}.
        t(&a, "x12.service", "restart", "yes"),
        t(&a, "x1.service", "restart", "not_handled"),
        // Mixed: SetOnly + PatternOnly in one role entry merge to the pattern alone (JEA rule
        // 7), so "nginx" is not reachable there; ReadOnly lists only -Force: no unit at all.
        t(&b, "x99.service", "restart", "yes"),
        t(&b, "nginx.service", "restart", "not_handled"),
        t(&b, "anything.service", "restart", "not_handled"),
        t(&b, "x99.service", "start", "not_handled"),
    ];
    evaluate(&rules, &triples);

    // And the rule agrees with keyhole's own -Name check for what a user can reach: for each
    // endpoint and each group, every literal name keyhole accepts is allowed by the rule.
    let names = [
        "acme-web",
        "acme-db7",
        "acme-web77",
        "bar",
        "Foo.service",
        "nginx",
        "x12",
        "x1",
        "x99",
        "zzz",
    ];
    let mut cross = Vec::new();
    for (ep, user, group) in [
        ("Ops", "u1", "ops"),
        ("Ops", "carol", "none"),
        ("Shared", "u2", "shared"),
        ("Mixed", "u3", "mixed"),
        ("Mixed", "u4", "readers"),
    ] {
        let endpoint = cfg.endpoint(ep).unwrap();
        let cap = effective_capability(&cfg, endpoint, user, &[group.to_string()]).unwrap();
        for (cmdlet, verb) in keyhole::commands::services::STATE_CHANGES {
            for n in names {
                let accepted = keyhole_accepts(&cap, cmdlet, n);
                if accepted {
                    let unit: &'static str = Box::leak(
                        if n.ends_with(".service") {
                            n.to_lowercase()
                        } else {
                            format!("{n}.service")
                        }
                        .into_boxed_str(),
                    );
                    cross.push(t(&endpoint.config.run_as, unit, verb, "yes"));
                }
            }
        }
    }
    assert!(cross.len() >= 8, "too few accepted names: {}", cross.len());
    evaluate(&rules, &cross);
}

/// Would keyhole's engine accept `-Name name` for `cmdlet` under `cap`?
fn keyhole_accepts(
    cap: &keyhole::capability::EffectiveCapability,
    cmdlet: &str,
    name: &str,
) -> bool {
    let Some(g) = cap.cmdlets.get(&cmdlet.to_lowercase()) else {
        return false;
    };
    match &g.params {
        ParamsGrant::All => true,
        ParamsGrant::Only(m) => match m.get("name").map(|p| &p.constraint) {
            None => false,
            Some(ValueConstraint::Any) => true,
            Some(ValueConstraint::Set(s)) => {
                s.iter().any(|v| v.to_lowercase() == name.to_lowercase())
            }
            Some(ValueConstraint::Patterns(ps)) => ps.iter().any(|p| {
                AnchoredPattern::new(&[p], Case::AsciiInsensitive)
                    .unwrap()
                    .is_match(name)
            }),
        },
    }
}

#[test]
fn aliases_resolved_by_systemd_are_granted_too() {
    let d = shipped::shipped_copy();
    let cfg = config::load(&d.path().join("keyhole.toml")).unwrap();
    let resolve = |u: &str| (u == "ssh.service").then(|| "openssh-server.service".to_string());
    let plan = polkit::plan(&cfg, &resolve).unwrap();
    let rules = polkit::render(&plan);
    let helpdesk = cfg.endpoint("Helpdesk").unwrap().config.run_as.clone();
    evaluate(
        &rules,
        &[
            t(&helpdesk, "ssh.service", "restart", "yes"),
            t(&helpdesk, "openssh-server.service", "restart", "yes"),
            t(&helpdesk, "openssh-server.service", "stop", "not_handled"),
        ],
    );
}

/// Every string of length 0..=3 over a small alphabet with the characters that tell the two
/// engines apart (newline and carriage return for `.`, case for the `i` flag, `_` and `-` for
/// `\w` and `\b`, space and tab for `\s`).
fn strings() -> Vec<String> {
    let alphabet = [
        'a', 'B', 'c', '0', '9', '_', '-', '.', ' ', '\t', '\n', '\r', '*', '/',
    ];
    let mut out = vec![String::new()];
    let mut last = vec![String::new()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for s in &last {
            for c in alphabet {
                let mut x = s.clone();
                x.push(c);
                next.push(x);
            }
        }
        out.extend(next.iter().cloned());
        last = next;
    }
    out
}

#[test]
fn translated_patterns_match_exactly_what_keyhole_matches() {
    let patterns = [
        "a",
        "a.c",
        ".",
        ".*",
        "[a-c]+",
        "[^a]",
        "[^a-c0-9]*",
        "\\w+",
        "\\W",
        "\\d\\D",
        "\\s",
        "\\S+",
        "a|B",
        "a{2}",
        "a{1,2}c?",
        "(ab)*",
        "(?:a|c)+?",
        "\\ba",
        "a\\b",
        "a\\B.",
        "^a$",
        "\\Aa\\z",
        "[0-9_.-]+",
        "a-.*",
        "[\\w.]+",
        "[\\d_]",
        "\\.",
        "\\*",
        "[*]",
        "a/b",
        "\\x61",
        "[\\x41-\\x43]",
        "\\n",
        "[\\t ]+",
        "|a",
        "c{0}",
        "B+",
        "[b]",
    ];
    let strings = strings();
    let regexes: Vec<serde_json::Value> = patterns
        .iter()
        .map(|p| serde_json::json!({ "js": pattern_to_js(p).unwrap(), "strings": strings }))
        .collect();
    let out = run_js(serde_json::json!({ "regexes": regexes }));
    let mut wrong = Vec::new();
    for (p, got) in patterns.iter().zip(out["regexes"].as_array().unwrap()) {
        let re = AnchoredPattern::new(&[p], Case::AsciiInsensitive).unwrap();
        for (s, g) in strings.iter().zip(got.as_array().unwrap()) {
            let want = re.is_match(s);
            if g.as_bool() != Some(want) {
                wrong.push(format!("{p:?} on {s:?}: keyhole {want}, JavaScript {g}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} disagreements, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
}

#[test]
fn translated_wildcards_match_exactly_what_keyhole_matches() {
    let wildcards = ["a*", "*", "?", "a?c", "*.*", "B*c", "*-*", "a", ""];
    let strings = strings();
    let regexes: Vec<serde_json::Value> = wildcards
        .iter()
        .map(|w| serde_json::json!({ "js": wildcard_to_js(w), "strings": strings }))
        .collect();
    let out = run_js(serde_json::json!({ "regexes": regexes }));
    for (w, got) in wildcards.iter().zip(out["regexes"].as_array().unwrap()) {
        for (s, g) in strings.iter().zip(got.as_array().unwrap()) {
            assert_eq!(
                g.as_bool(),
                Some(keyhole::lang::wildcard::matches(
                    w,
                    s,
                    keyhole::lang::wildcard::Mode::Name
                )),
                "{w:?} on {s:?}"
            );
        }
    }
}

fn polkit_bin(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .arg("polkit")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn untranslatable_pattern_is_refused_with_its_reason_and_nothing_is_written() {
    let d = shipped::shipped_copy();
    let rc = d.path().join("role-capabilities/ServiceOperator.toml");
    let text = std::fs::read_to_string(&rc).unwrap().replacen(
        "{ name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_set = [\"cron\", \"ssh\", \"nginx\"] } ] }",
        "{ name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_pattern = \"\\\\p{Greek}+\" } ] }",
        1,
    );
    assert!(text.contains("Greek"));
    std::fs::write(&rc, text).unwrap();
    let out_file = d.path().join("out.rules");
    let (code, out, err) = polkit_bin(
        &d.path().join("keyhole.toml"),
        &["--write", "--rules-file", out_file.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("Restart-Service -Name pattern"), "{err}");
    assert!(err.contains("Unicode classes"), "{err}");
    assert!(!out_file.exists());
}

#[test]
fn write_is_atomic_and_check_warns_until_the_rule_matches() {
    let d = shipped::shipped_copy();
    let config_path = d.path().join("keyhole.toml");
    let rules_dir = d.path().join("rules.d");
    std::fs::create_dir(&rules_dir).unwrap();
    let rules_file = rules_dir.join("50-keyhole.rules");
    let cfg: LoadedConfig = config::load(&config_path).unwrap();

    let w = polkit::installed_rule_warnings(&cfg, &rules_file, &no_aliases);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("is missing") && w[0].contains("keyhole polkit --write"),
        "{w:?}"
    );

    // What `keyhole polkit` prints is what `--write` writes (no alias resolution differs here:
    // neither run resolves anything when systemd is not running).
    let (code, printed, err) = polkit_bin(&config_path, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = polkit_bin(
        &config_path,
        &["--write", "--rules-file", rules_file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("wrote"), "{out}");
    let written = std::fs::read_to_string(&rules_file).unwrap();
    assert_eq!(written, printed);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&rules_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let leftovers: Vec<_> = std::fs::read_dir(&rules_dir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary files left behind");

    if !Path::new("/run/systemd/system").is_dir() {
        assert!(polkit::installed_rule_warnings(&cfg, &rules_file, &no_aliases).is_empty());
    }

    // A role change makes the installed rule stale.
    let rc = d.path().join("role-capabilities/ServiceOperator.toml");
    let text = std::fs::read_to_string(&rc).unwrap().replacen(
        "\"nginx\"] } ] },\n  { name = \"Start-Service\"",
        "\"nginx\", \"apache2\"] } ] },\n  { name = \"Start-Service\"",
        1,
    );
    assert!(text.contains("apache2"));
    std::fs::write(&rc, text).unwrap();
    let cfg = config::load(&config_path).unwrap();
    let w = polkit::installed_rule_warnings(&cfg, &rules_file, &no_aliases);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("does not match"), "{w:?}");

    // --write refuses a directory that does not exist (polkit not installed).
    let (code, _, err) = polkit_bin(
        &config_path,
        &[
            "--write",
            "--rules-file",
            d.path().join("no/such/dir/x.rules").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("is polkit installed"), "{err}");
}
