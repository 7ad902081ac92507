//! Gate 3: rule evaluation and the `keyhole rule` file operations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;

use keyhole::config::edit::write_atomic;
use keyhole::config::{Rule, RulesFile};
use keyhole::rules::{
    add_rule, evaluate, list_rules, load_rules, remove_rules, render_rules_json,
    render_rules_table, test_rule, validate_rules, RuleSpec, RulesError,
};

fn s(v: &str) -> String {
    v.to_string()
}

fn sample() -> RulesFile {
    toml::from_str(
        r#"
[[rule]]
id = 3
name = "helpdesk on web servers"
user_group = "helpdesk"
computer_group = "web"
configuration = "Helpdesk"

[[rule]]
id = 5
user = "alice"
computer = "db01"
configuration = "DBA"

[[rule]]
id = 8
name = "auditors everywhere"
user_group = "Auditors"
computer = "*"
configuration = "ReadOnly"

[[rule]]
id = 9
user = "root-like"
computer_group = "*"
configuration = "*"

[computer_groups]
web = ["web01", "web02.example.com"]
db = ["db01"]
"#,
    )
    .unwrap()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| s(x)).collect()
}

#[test]
fn no_rules_nobody_gets_in() {
    let d = evaluate(
        &RulesFile::default(),
        "alice",
        &[],
        &names(&["web01"]),
        "Helpdesk",
    );
    assert!(!d.allowed);
    assert_eq!(d.rule_id, None);
    assert_eq!(d.reason, "no authorization rules: nobody gets in");
}

#[test]
fn group_and_computer_group() {
    let r = sample();
    let d = evaluate(
        &r,
        "bob",
        &names(&["staff", "HelpDesk"]),
        &names(&["web01"]),
        "helpdesk",
    );
    assert!(d.allowed);
    assert_eq!(d.rule_id, Some(3));
    assert_eq!(d.reason, "allowed by rule 3 (helpdesk on web servers)");
    // Not in the group.
    let d = evaluate(
        &r,
        "bob",
        &names(&["staff"]),
        &names(&["web01"]),
        "Helpdesk",
    );
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "denied: no rule matches user bob on computer web01 for configuration Helpdesk"
    );
    // Computer not in the group.
    let d = evaluate(
        &r,
        "bob",
        &names(&["helpdesk"]),
        &names(&["db01"]),
        "Helpdesk",
    );
    assert!(!d.allowed);
    // Wrong configuration.
    let d = evaluate(&r, "bob", &names(&["helpdesk"]), &names(&["web01"]), "DBA");
    assert!(!d.allowed);
}

#[test]
fn aliases_match() {
    let r = sample();
    // The server is web02 under its FQDN alias only.
    let d = evaluate(
        &r,
        "bob",
        &names(&["helpdesk"]),
        &names(&["web02", "WEB02.example.com"]),
        "Helpdesk",
    );
    assert!(d.allowed);
    assert_eq!(d.rule_id, Some(3));
    let d = evaluate(&r, "ALICE", &[], &names(&["db-primary", "db01"]), "dba");
    assert_eq!(d.rule_id, Some(5));
}

#[test]
fn wildcards() {
    let r = sample();
    let d = evaluate(
        &r,
        "carol",
        &names(&["auditors"]),
        &names(&["anything"]),
        "ReadOnly",
    );
    assert_eq!(d.rule_id, Some(8));
    // computer_group "*": a member of any group, any configuration.
    let d = evaluate(&r, "root-like", &[], &names(&["db01"]), "Whatever");
    assert_eq!(d.rule_id, Some(9));
    let d = evaluate(&r, "root-like", &[], &names(&["unlisted"]), "Whatever");
    assert!(!d.allowed);
    // user "*" matches everyone.
    let all = RulesFile {
        rules: vec![Rule {
            id: 1,
            name: s(""),
            user: Some(s("*")),
            user_group: None,
            computer: Some(s("*")),
            computer_group: None,
            configuration: s("*"),
        }],
        ..Default::default()
    };
    assert!(evaluate(&all, "x", &[], &names(&["y"]), "z").allowed);
}

#[test]
fn lowest_matching_id_reported() {
    let mut r = sample();
    r.rules.push(Rule {
        id: 1,
        name: s("everyone"),
        user: Some(s("*")),
        user_group: None,
        computer: Some(s("*")),
        computer_group: None,
        configuration: s("*"),
    });
    let d = evaluate(
        &r,
        "bob",
        &names(&["helpdesk"]),
        &names(&["web01"]),
        "Helpdesk",
    );
    assert_eq!(d.rule_id, Some(1));
}

#[test]
fn test_rule_messages() {
    let r = sample();
    let t = test_rule(&r, "bob", &names(&["helpdesk"]), "web01", Some("Helpdesk"));
    assert!(t.allowed);
    assert_eq!(t.message, "allowed by rule 3 (helpdesk on web servers)");
    let t = test_rule(&r, "alice", &[], "web01", Some("Helpdesk"));
    assert!(!t.allowed);
    assert_eq!(
        t.message,
        "denied: no rule matches user alice on computer web01 for configuration Helpdesk"
    );
    // Without a configuration: any rule for the user and computer.
    let t = test_rule(&r, "alice", &[], "db01", None);
    assert!(t.allowed);
    assert_eq!(t.matching, vec![5]);
}

fn spec(
    user: Option<&str>,
    group: Option<&str>,
    computer: Option<&str>,
    cgroup: Option<&str>,
    conf: &str,
) -> RuleSpec {
    RuleSpec {
        user: user.map(s),
        user_group: group.map(s),
        computer: computer.map(s),
        computer_group: cgroup.map(s),
        configuration: s(conf),
        name: s("test"),
    }
}

#[test]
fn add_list_remove_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authorization-rules.toml");
    // Keep the computer groups of an existing file.
    std::fs::write(
        &path,
        "[computer_groups]\nweb = [\"web01\"]\n\n[[rule]]\nid = 4\nuser = \"a\"\ncomputer = \"*\"\nconfiguration = \"*\"\n",
    )
    .unwrap();
    let id = add_rule(
        &path,
        spec(None, Some("helpdesk"), None, Some("web"), "Helpdesk"),
    )
    .unwrap();
    assert_eq!(id, 5);
    let id2 = add_rule(&path, spec(Some("bob"), None, Some("web01"), None, "*")).unwrap();
    assert_eq!(id2, 6);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let rules = list_rules(&path).unwrap();
    assert_eq!(
        rules.rules.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(rules.computer_groups.get("web"), Some(&vec![s("web01")]));
    assert!(validate_rules(&rules).is_empty());

    let table = render_rules_table(&rules);
    assert!(table.starts_with("Id"), "{table}");
    assert!(table.contains("group:helpdesk"), "{table}");
    assert!(table.contains("group:web"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&render_rules_json(&rules)).unwrap();
    assert_eq!(json["rules"][1]["id"], 5);
    assert_eq!(json["rules"][1]["user_group"], "helpdesk");
    assert_eq!(json["computer_groups"]["web"][0], "web01");

    // The new rule works.
    let d = evaluate(
        &rules,
        "x",
        &names(&["helpdesk"]),
        &names(&["web01"]),
        "Helpdesk",
    );
    assert_eq!(d.rule_id, Some(5));

    // Unknown id: error naming it, nothing removed.
    let before = std::fs::read(&path).unwrap();
    match remove_rules(&path, &[5, 42]) {
        Err(RulesError::UnknownIds { ids, .. }) => assert_eq!(ids, "42"),
        other => panic!("expected UnknownIds, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);

    assert_eq!(remove_rules(&path, &[6, 4]).unwrap(), vec![4, 6]);
    let rules = load_rules(&path).unwrap();
    assert_eq!(
        rules.rules.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![5]
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Ids are never reused below the maximum.
    assert_eq!(
        add_rule(&path, spec(Some("c"), None, Some("*"), None, "X")).unwrap(),
        6
    );
}

#[test]
fn missing_file_is_empty_and_add_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    assert_eq!(load_rules(&path).unwrap(), RulesFile::default());
    assert_eq!(
        add_rule(&path, spec(Some("*"), None, Some("*"), None, "*")).unwrap(),
        1
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No leftover temporary files.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn invalid_specs_leave_the_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    add_rule(
        &path,
        spec(Some("alice"), None, Some("web01"), None, "Helpdesk"),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let bad = [
        spec(Some("a"), Some("g"), Some("c"), None, "E"), // both user and group
        spec(None, None, Some("c"), None, "E"),           // neither
        spec(Some("a"), None, Some("c"), Some("web"), "E"), // both computers
        spec(Some("a"), None, None, None, "E"),           // no computer
        spec(Some("a*"), None, Some("c"), None, "E"),     // wildcard inside
        spec(Some("a"), None, Some("*web"), None, "E"),
        spec(Some("a"), None, Some("c"), None, ""), // empty configuration
        spec(Some("a"), None, Some("c"), None, "Help*"),
        spec(Some("a"), None, None, Some("nogroup"), "E"), // undefined computer group
        spec(Some("alice"), None, Some("WEB01"), None, "helpdesk"), // duplicate
    ];
    for b in bad {
        let r = add_rule(&path, b.clone());
        assert!(r.is_err(), "{b:?} was accepted");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{b:?} changed the file"
        );
    }
}

#[test]
fn a_broken_file_is_reported_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, "[[rule]]\nid = \"x\"\n").unwrap();
    let err = add_rule(&path, spec(Some("a"), None, Some("c"), None, "E")).unwrap_err();
    assert!(matches!(err, RulesError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("rules.toml"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[[rule]]\nid = \"x\"\n"
    );
}

#[test]
fn write_atomic_replaces_and_sets_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_atomic(&path, b"new").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A symbolic link is kept; the file it points to is replaced.
    let shared = dir.path().join("shared.toml");
    std::fs::write(&shared, "old").unwrap();
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&shared, &link).unwrap();
    write_atomic(&link, b"via link").unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&shared).unwrap(), "via link");
    // A directory that does not exist: error, nothing created.
    assert!(write_atomic(&dir.path().join("nope/f"), b"x").is_err());
}

#[test]
fn malformed_rules_in_a_file_fail_closed() {
    let rules: RulesFile = toml::from_str(
        "[[rule]]\nid = 1\nuser = \"bob\"\nuser_group = \"staff\"\ncomputer = \"*\"\nconfiguration = \"*\"\n\
         [[rule]]\nid = 1\nuser = \"b*\"\ncomputer = \"*\"\nconfiguration = \"*\"\n",
    )
    .unwrap();
    assert!(!evaluate(&rules, "bob", &names(&["staff"]), &names(&["h"]), "E").allowed);
    assert!(!evaluate(&rules, "b*", &[], &names(&["h"]), "E").allowed);
    let problems = validate_rules(&rules);
    assert!(
        problems.iter().any(|p| p.contains("more than once")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("both user and user_group")),
        "{problems:?}"
    );
}

#[test]
fn comments_and_layout_survive_add_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    let original = "# Shared by every web server; ask #ops before editing.\n\
                    [computer_groups]\n\
                    web = [\"web01\", \"web02\"] # the front ends\n\
                    \n\
                    # The help desk restarts services.\n\
                    [[rule]]\n\
                    id = 1\n\
                    user_group = \"helpdesk\"\n\
                    computer_group = \"web\"\n\
                    configuration = \"Helpdesk\"\n";
    std::fs::write(&path, original).unwrap();
    let id = add_rule(&path, spec(Some("bob"), None, Some("db01"), None, "DBA")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(original), "{text}");
    assert!(text.contains("user = \"bob\""), "{text}");
    assert_eq!(load_rules(&path).unwrap().rules.len(), 2);
    remove_rules(&path, &[id]).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    remove_rules(&path, &[1]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("# the front ends"), "{text}");
    assert!(load_rules(&path).unwrap().rules.is_empty());
}

#[test]
fn concurrent_adds_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                add_rule(
                    &path,
                    spec(Some(&format!("user{i}")), None, Some("*"), None, "E"),
                )
                .unwrap()
            })
        })
        .collect();
    let mut ids: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=8).collect::<Vec<u64>>());
    assert_eq!(load_rules(&path).unwrap().rules.len(), 8);
}

/// A rule as `keyhole rule add` writes it.
fn rule_text(id: u64, group: &str, computer: &str, conf: &str) -> String {
    format!(
        "[[rule]]\nid = {id}\nname = \"generated rule {id}\"\nuser_group = \"{group}\"\ncomputer = \"{computer}\"\nconfiguration = \"{conf}\"\n\n"
    )
}

#[test]
fn rules_files_are_bounded_by_bytes_not_by_a_number_of_rules() {
    // 40,000 rules (4.5 MB): more than the 10,000 rules and the 4 MiB a rules file was once
    // limited to. It loads, validates and is served.
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("authorization-rules.toml");
    let mut text = String::new();
    for i in 1..40_000u64 {
        text.push_str(&rule_text(
            i,
            &format!("team{i}"),
            &format!("host{}", i % 97),
            "Ep",
        ));
    }
    text.push_str(&rule_text(40_000, "helpdesk", "web01", "Helpdesk"));
    assert!(text.len() > 4 * 1024 * 1024);
    std::fs::write(&path, &text).unwrap();
    let rules = load_rules(&path).unwrap();
    assert_eq!(rules.rules.len(), 40_000);
    assert!(
        validate_rules(&rules).is_empty(),
        "{:?}",
        validate_rules(&rules).first()
    );
    let ix = keyhole::rules::RuleIndex::new(&rules);
    assert_eq!(ix.len(), 40_000);
    let d3 = ix.evaluate(
        "alice",
        &[s("staff"), s("HelpDesk")],
        &[s("WEB01")],
        "helpdesk",
    );
    assert_eq!((d3.allowed, d3.rule_id), (true, Some(40_000)));
    // Beyond the byte bound the file is refused, with the reason.
    let big = "# padding\n".repeat((keyhole::rules::MAX_RULES_FILE_BYTES / 10 + 1) as usize);
    std::fs::write(&path, big).unwrap();
    let e = load_rules(&path).unwrap_err().to_string();
    assert!(e.contains("authorization rules file"), "{e}");
}
