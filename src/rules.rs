//! `rules`: gate 3, the authorization rules (user or group × computer or group × configuration),
//! and the atomic file operations behind `keyhole rule`.
//!
//! The rules are a whitelist in the manner of PowerShell Web Access: one matching rule suffices,
//! no rule means nobody gets in, and `*` is accepted only alone in a field. A rule that is
//! malformed (both or neither of `user`/`user_group`, a `*` inside a name, …) never matches:
//! evaluation fails closed whatever the file says. What "malformed" means is decided once, in
//! `config::validate` (`rules_file_problems`), which `keyhole check`, the server's load and
//! [`validate_rules`] all use.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use std::io;

use std::path::{Path, PathBuf};

use crate::config::edit::{lock_dir_of, read_bounded, render_preserving, write_atomic};
use crate::config::validate::{rule_field_problem, rule_problems, rules_file_problems, RuleSpot};
pub use crate::config::validate::{MAX_RULES, MAX_RULE_FIELD_LEN};
use crate::config::{Rule, RulesFile};

/// Largest rules file read (bytes).
pub const MAX_RULES_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The outcome of gate 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The lowest-id rule that matched.
    pub rule_id: Option<u64>,
    /// For the server log and the audit log (never for the client).
    pub reason: String,
}

/// Errors of the rule file operations.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read the authorization rules file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("the authorization rules file {path} is not valid: {message}; fix it (or run `keyhole check`) and try again")]
    Parse { path: PathBuf, message: String },
    #[error(
        "cannot write the authorization rules file {path}: {source}; the file was left unchanged"
    )]
    Write { path: PathBuf, source: io::Error },
    #[error("invalid rule: {0}")]
    Invalid(String),
    #[error(
        "no rule with id {ids} in {path}; `keyhole rule list` shows the ids; nothing was removed"
    )]
    UnknownIds { ids: String, path: PathBuf },
}

/// What `keyhole rule add` asks for. Exactly one of `user`/`user_group` and exactly one of
/// `computer`/`computer_group` must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSpec {
    pub user: Option<String>,
    pub user_group: Option<String>,
    pub computer: Option<String>,
    pub computer_group: Option<String>,
    pub configuration: String,
    pub name: String,
}

/// The outcome of `keyhole rule test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub allowed: bool,
    /// Every matching rule id, ascending.
    pub matching: Vec<u64>,
    /// "allowed by rule 3 (helpdesk on web servers)" or "denied: no rule matches …".
    pub message: String,
}

fn eq_ci(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

/// A field gate 3 may match on (the one rule-field check, from `config`).
fn field_ok(value: &str) -> bool {
    rule_field_problem("", value).is_none()
}

/// Every problem of a rules file, as "rule N: message" lines (empty when the file is fine).
/// Malformed rules never match in `evaluate`; this tells the administrator why.
pub fn validate_rules(rules: &RulesFile) -> Vec<String> {
    rules_file_problems(rules)
        .into_iter()
        .map(|p| match p.spot {
            RuleSpot::File => p.message,
            RuleSpot::Rule { index, .. } => {
                let id = rules.rules.get(index).map(|r| r.id).unwrap_or_default();
                format!("rule {id}: {}", p.message)
            }
            RuleSpot::ComputerGroup { .. } => format!("[computer_groups] {}", p.message),
        })
        .collect()
}

fn user_matches(rule: &Rule, user: &str, groups: &[String]) -> bool {
    match (&rule.user, &rule.user_group) {
        (Some(u), None) if field_ok(u) => u == "*" || eq_ci(u, user),
        (None, Some(g)) if field_ok(g) => g == "*" || groups.iter().any(|x| eq_ci(x, g)),
        _ => false,
    }
}

fn computer_matches(rules: &RulesFile, rule: &Rule, names: &[String]) -> bool {
    match (&rule.computer, &rule.computer_group) {
        (Some(c), None) if field_ok(c) => c == "*" || names.iter().any(|n| eq_ci(n, c)),
        (None, Some(g)) if field_ok(g) => rules
            .computer_groups
            .iter()
            .filter(|(name, _)| g == "*" || eq_ci(name, g))
            .flat_map(|(_, members)| members.iter())
            .any(|m| names.iter().any(|n| eq_ci(n, m))),
        _ => false,
    }
}

fn configuration_matches(rule: &Rule, configuration: Option<&str>) -> bool {
    if !field_ok(&rule.configuration) {
        return false;
    }
    match configuration {
        None => true,
        Some(c) => rule.configuration == "*" || eq_ci(&rule.configuration, c),
    }
}

/// Ids of every rule that matches, ascending. `configuration = None` ignores the field.
fn matching_ids(
    rules: &RulesFile,
    user: &str,
    groups: &[String],
    computer_names: &[String],
    configuration: Option<&str>,
) -> Vec<u64> {
    let mut ids: Vec<u64> = rules
        .rules
        .iter()
        .filter(|r| {
            user_matches(r, user, groups)
                && computer_matches(rules, r, computer_names)
                && configuration_matches(r, configuration)
        })
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn describe_rule(rules: &RulesFile, id: u64) -> String {
    match rules.rules.iter().find(|r| r.id == id) {
        Some(r) if !r.name.is_empty() => format!("rule {id} ({})", r.name),
        _ => format!("rule {id}"),
    }
}

/// Gate 3: may `user` (member of `groups`) open `configuration` on this computer, known by
/// `computer_names` (computer_name followed by its aliases)?
pub fn evaluate(
    rules: &RulesFile,
    user: &str,
    groups: &[String],
    computer_names: &[String],
    configuration: &str,
) -> Decision {
    if rules.rules.is_empty() {
        return Decision {
            allowed: false,
            rule_id: None,
            reason: "no authorization rules: nobody gets in".into(),
        };
    }
    let ids = matching_ids(rules, user, groups, computer_names, Some(configuration));
    match ids.first() {
        Some(&id) => Decision {
            allowed: true,
            rule_id: Some(id),
            reason: format!("allowed by {}", describe_rule(rules, id)),
        },
        None => Decision {
            allowed: false,
            rule_id: None,
            reason: format!(
                "denied: no rule matches user {user} on computer {} for configuration {configuration}",
                computer_names.first().map(String::as_str).unwrap_or("")
            ),
        },
    }
}

/// `keyhole rule test`: would `user` (with `groups`) get in on `computer`, for `configuration`
/// (any configuration when `None`)?
pub fn test_rule(
    rules: &RulesFile,
    user: &str,
    groups: &[String],
    computer: &str,
    configuration: Option<&str>,
) -> TestOutcome {
    let names = [computer.to_string()];
    let matching = matching_ids(rules, user, groups, &names, configuration);
    let message = match matching.first() {
        Some(&id) => {
            let mut m = format!("allowed by {}", describe_rule(rules, id));
            if matching.len() > 1 {
                let others: Vec<String> = matching.iter().skip(1).map(u64::to_string).collect();
                let _ = write!(m, "; also matched by rule {}", others.join(", "));
            }
            m
        }
        None if rules.rules.is_empty() => "denied: no authorization rules: nobody gets in".into(),
        None => match configuration {
            Some(c) => format!(
                "denied: no rule matches user {user} on computer {computer} for configuration {c}"
            ),
            None => format!("denied: no rule matches user {user} on computer {computer}"),
        },
    };
    TestOutcome {
        allowed: !matching.is_empty(),
        matching,
        message,
    }
}

/// Reads a rules file; a missing file is an empty rule set (which denies everyone).
pub fn load_rules(path: &Path) -> Result<RulesFile, RulesError> {
    load_rules_with_text(path).map(|(rules, _)| rules)
}

/// The parsed rules and the file's text (`None` when the file does not exist).
fn load_rules_with_text(path: &Path) -> Result<(RulesFile, Option<String>), RulesError> {
    let text = match read_bounded(path, MAX_RULES_FILE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((RulesFile::default(), None)),
        Err(source) => {
            return Err(RulesError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let rules = toml::from_str(&text).map_err(|e| RulesError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    Ok((rules, Some(text)))
}

const RULES_HEADER: &str =
    "# keyhole authorization rules (gate 3). Managed by `keyhole rule`; see SPEC §2.4.\n";

fn save_rules(
    path: &Path,
    old_text: Option<&str>,
    rules: &RulesFile,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Option<()>,
) -> Result<(), RulesError> {
    let text =
        render_preserving(old_text, rules, RULES_HEADER, edit).map_err(|e| RulesError::Write {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
    write_atomic(path, text.as_bytes()).map_err(|source| RulesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The `[[rule]]` table of `rule`, keys in the documented order.
fn rule_table(rule: &Rule) -> Option<toml_edit::Table> {
    let mut t = toml_edit::Table::new();
    t.insert("id", toml_edit::value(i64::try_from(rule.id).ok()?));
    if !rule.name.is_empty() {
        t.insert("name", toml_edit::value(rule.name.as_str()));
    }
    let fields = [
        ("user", &rule.user),
        ("user_group", &rule.user_group),
        ("computer", &rule.computer),
        ("computer_group", &rule.computer_group),
    ];
    for (key, v) in fields {
        if let Some(v) = v {
            t.insert(key, toml_edit::value(v.as_str()));
        }
    }
    t.insert(
        "configuration",
        toml_edit::value(rule.configuration.as_str()),
    );
    Some(t)
}

/// The id of one `[[rule]]` table, as written.
fn table_id(t: &toml_edit::Table) -> Option<u64> {
    t.get("id")
        .and_then(|v| v.as_integer())
        .and_then(|i| u64::try_from(i).ok())
}

/// `keyhole rule add`: validates, appends with id = max + 1, writes atomically; returns the id.
pub fn add_rule(path: &Path, spec: RuleSpec) -> Result<u64, RulesError> {
    let _lock = lock_dir_of(path).map_err(|source| RulesError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut rules, old_text) = load_rules_with_text(path)?;
    if let Some(p) = validate_rules(&rules).into_iter().next() {
        return Err(RulesError::Parse {
            path: path.to_path_buf(),
            message: p,
        });
    }
    if rules.rules.len() >= MAX_RULES {
        return Err(RulesError::Invalid(format!(
            "{} already holds {MAX_RULES} rules; remove some first",
            path.display()
        )));
    }
    let id = rules
        .rules
        .iter()
        .map(|r| r.id)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let rule = Rule {
        id,
        name: spec.name,
        user: spec.user,
        user_group: spec.user_group,
        computer: spec.computer,
        computer_group: spec.computer_group,
        configuration: spec.configuration,
    };
    let problems: Vec<String> = rule_problems(&rule, &rules)
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    if !problems.is_empty() {
        return Err(RulesError::Invalid(problems.join("; ")));
    }
    if let Some(dup) = rules.rules.iter().find(|r| {
        opt_eq(&r.user, &rule.user)
            && opt_eq(&r.user_group, &rule.user_group)
            && opt_eq(&r.computer, &rule.computer)
            && opt_eq(&r.computer_group, &rule.computer_group)
            && eq_ci(&r.configuration, &rule.configuration)
    }) {
        return Err(RulesError::Invalid(format!(
            "rule {} already allows exactly this; nothing was added",
            dup.id
        )));
    }
    let table = rule_table(&rule);
    rules.rules.push(rule);
    save_rules(path, old_text.as_deref(), &rules, |doc| {
        let item = doc
            .as_table_mut()
            .entry("rule")
            .or_insert(toml_edit::Item::ArrayOfTables(
                toml_edit::ArrayOfTables::new(),
            ));
        item.as_array_of_tables_mut()?.push(table?);
        Some(())
    })?;
    Ok(id)
}

fn opt_eq(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => eq_ci(x, y),
        (None, None) => true,
        _ => false,
    }
}

/// `keyhole rule remove`: removes every id or none (an unknown id is an error naming it).
pub fn remove_rules(path: &Path, ids: &[u64]) -> Result<Vec<u64>, RulesError> {
    let _lock = lock_dir_of(path).map_err(|source| RulesError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut rules, old_text) = load_rules_with_text(path)?;
    let unknown: Vec<String> = ids
        .iter()
        .filter(|id| !rules.rules.iter().any(|r| r.id == **id))
        .map(u64::to_string)
        .collect();
    if !unknown.is_empty() {
        return Err(RulesError::UnknownIds {
            ids: unknown.join(", "),
            path: path.to_path_buf(),
        });
    }
    let mut removed: Vec<u64> = rules
        .rules
        .iter()
        .filter(|r| ids.contains(&r.id))
        .map(|r| r.id)
        .collect();
    removed.sort_unstable();
    removed.dedup();
    rules.rules.retain(|r| !ids.contains(&r.id));
    save_rules(path, old_text.as_deref(), &rules, |doc| {
        let aot = doc.get_mut("rule")?.as_array_of_tables_mut()?;
        aot.retain(|t| !matches!(table_id(t), Some(id) if ids.contains(&id)));
        Some(())
    })?;
    Ok(removed)
}

/// `keyhole rule list`: the file's rules sorted by id (with its computer groups).
pub fn list_rules(path: &Path) -> Result<RulesFile, RulesError> {
    let mut rules = load_rules(path)?;
    rules.rules.sort_by_key(|r| r.id);
    Ok(rules)
}

fn rule_user(r: &Rule) -> String {
    match (&r.user, &r.user_group) {
        (Some(u), _) => u.clone(),
        (None, Some(g)) => format!("group:{g}"),
        (None, None) => String::new(),
    }
}

fn rule_computer(r: &Rule) -> String {
    match (&r.computer, &r.computer_group) {
        (Some(c), _) => c.clone(),
        (None, Some(g)) => format!("group:{g}"),
        (None, None) => String::new(),
    }
}

/// A text table (columns Id, Name, User, Computer, Configuration; groups shown as `group:NAME`),
/// then the computer groups. An empty rule set says that nobody gets in.
pub fn render_rules_table(rules: &RulesFile) -> String {
    let mut sorted: Vec<&Rule> = rules.rules.iter().collect();
    sorted.sort_by_key(|r| r.id);
    if sorted.is_empty() {
        return "no authorization rules: nobody gets in\n".into();
    }
    let header = ["Id", "Name", "User", "Computer", "Configuration"];
    let rows: Vec<[String; 5]> = sorted
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.name.clone(),
                rule_user(r),
                rule_computer(r),
                r.configuration.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(header.to_vec(), &mut out);
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
        &mut out,
    );
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    if !rules.computer_groups.is_empty() {
        out.push_str("\nComputer groups:\n");
        for (g, members) in &rules.computer_groups {
            let _ = writeln!(out, "  {g}: {}", members.join(", "));
        }
    }
    out
}

/// JSON for `keyhole rule list --json`: `{"rules": [...], "computer_groups": {...}}`.
pub fn render_rules_json(rules: &RulesFile) -> String {
    let mut sorted: Vec<&Rule> = rules.rules.iter().collect();
    sorted.sort_by_key(|r| r.id);
    let list: Vec<serde_json::Value> = sorted
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "name": r.name,
                "user": r.user,
                "user_group": r.user_group,
                "computer": r.computer,
                "computer_group": r.computer_group,
                "configuration": r.configuration,
            })
        })
        .collect();
    let v = serde_json::json!({ "rules": list, "computer_groups": rules.computer_groups });
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn rule(id: u64, user: Option<&str>, group: Option<&str>, computer: &str, conf: &str) -> Rule {
        Rule {
            id,
            name: String::new(),
            user: user.map(Into::into),
            user_group: group.map(Into::into),
            computer: Some(computer.into()),
            computer_group: None,
            configuration: conf.into(),
        }
    }

    #[test]
    fn field_check_rejects_inner_wildcard() {
        assert!(field_ok("*"));
        assert!(!field_ok("a*"));
        assert!(!field_ok(""));
        assert!(!field_ok("a\nb"));
        assert!(!field_ok(&"a".repeat(MAX_RULE_FIELD_LEN + 1)));
    }

    #[test]
    fn malformed_rule_never_matches() {
        let mut r = rule(1, Some("alice"), Some("staff"), "*", "*");
        let rules = RulesFile {
            rules: vec![r.clone()],
            ..Default::default()
        };
        let d = evaluate(&rules, "alice", &["staff".into()], &["web01".into()], "X");
        assert!(!d.allowed);
        r.user_group = None;
        r.user = Some("al*".into());
        let rules = RulesFile {
            rules: vec![r],
            ..Default::default()
        };
        assert!(!evaluate(&rules, "al*", &[], &["web01".into()], "X").allowed);
        assert!(!validate_rules(&rules).is_empty());
    }

    #[test]
    fn lowest_id_is_reported() {
        let rules = RulesFile {
            rules: vec![
                rule(7, Some("*"), None, "*", "*"),
                rule(2, Some("Bob"), None, "*", "*"),
            ],
            ..Default::default()
        };
        let d = evaluate(&rules, "bob", &[], &["h".into()], "E");
        assert_eq!(d.rule_id, Some(2));
        assert_eq!(d.reason, "allowed by rule 2");
    }
}
