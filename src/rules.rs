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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use std::path::{Path, PathBuf};

use crate::config::edit::{lock_dir_of, read_bounded, render_preserving, write_atomic};
pub use crate::config::validate::MAX_RULE_FIELD_LEN;
use crate::config::validate::{rule_problems, rules_file_problems, RuleSpot};
pub use crate::config::MAX_RULES_FILE_BYTES;
use crate::config::{Rule, RulesFile};

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

/// Longest ASCII name lower-cased on the stack (longer or non-ASCII names allocate).
const FOLD_ON_STACK: usize = 128;

/// Call `f` with `s` lower-cased as `str::to_lowercase` does it, without allocating when `s` is
/// ASCII and short (the common case: account and group names).
fn with_folded<R>(s: &str, f: impl FnOnce(&str) -> R) -> R {
    if s.is_ascii() {
        if !s.bytes().any(|b| b.is_ascii_uppercase()) {
            return f(s);
        }
        let mut buf = [0u8; FOLD_ON_STACK];
        if let Some(b) = buf.get_mut(..s.len()) {
            b.copy_from_slice(s.as_bytes());
            b.make_ascii_lowercase();
            if let Ok(lower) = std::str::from_utf8(b) {
                return f(lower);
            }
        }
    }
    f(&s.to_lowercase())
}

/// `lower` (already lower-cased) equals `input` lower-cased; allocates only for non-ASCII input.
fn eq_folded(lower: &str, input: &str) -> bool {
    if input.is_ascii() {
        lower.len() == input.len()
            && lower
                .bytes()
                .zip(input.bytes())
                .all(|(l, i)| l == i.to_ascii_lowercase())
    } else {
        lower == input.to_lowercase()
    }
}

/// The computers a rule admits: every one, or these names (lower-cased; a computer group's
/// members, shared between the rules that name the group).
#[derive(Debug, Clone)]
enum Computers {
    Any,
    Names(Arc<[String]>),
}

impl Computers {
    fn admits(&self, names: &[String]) -> bool {
        match self {
            Computers::Any => true,
            Computers::Names(list) => list.iter().any(|m| names.iter().any(|n| eq_folded(m, n))),
        }
    }
}

/// One valid rule, ready to match: every field checked once, names lower-cased once.
#[derive(Debug, Clone)]
struct Compiled {
    id: u64,
    name: String,
    computers: Computers,
    /// None: `*` (every configuration).
    configuration: Option<String>,
}

impl Compiled {
    fn admits(&self, computer_names: &[String], configuration: Option<&str>) -> bool {
        let conf_ok = match (&self.configuration, configuration) {
            (None, _) | (_, None) => true,
            (Some(want), Some(c)) => eq_folded(want, c),
        };
        conf_ok && self.computers.admits(computer_names)
    }
}

/// Gate 3's rules, indexed once per rules file (at load and reload): rules validated once
/// (`config::validate::rules_file_problems`: a rule with any problem is left out, so it never
/// matches), names lower-cased once, and the rules grouped by user, by group and `*`, each group
/// in id order. A decision looks at the caller's rules only, stops at the first match of each
/// group, and allocates nothing when the names are ASCII (the reason text aside).
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    rules: Vec<Compiled>,
    /// Positions in `rules` (ascending id) by lower-cased user name.
    by_user: HashMap<String, Vec<u32>>,
    /// By lower-cased group name.
    by_group: HashMap<String, Vec<u32>>,
    /// `user = "*"` and `user_group = "*"`: everyone.
    anyone: Vec<u32>,
    /// The file holds no rule at all (its own message: nobody gets in).
    empty: bool,
}

impl RuleIndex {
    pub fn new(file: &RulesFile) -> RuleIndex {
        let mut bad = vec![false; file.rules.len()];
        for p in rules_file_problems(file) {
            if let RuleSpot::Rule { index, .. } = p.spot {
                if let Some(b) = bad.get_mut(index) {
                    *b = true;
                }
            }
        }
        let mut order: Vec<&Rule> = file
            .rules
            .iter()
            .zip(bad.iter())
            .filter(|(_, bad)| !**bad)
            .map(|(r, _)| r)
            .collect();
        order.sort_by_key(|r| r.id);
        // Members of the computer groups a rule may name, by lower-cased group name ("*": all).
        let mut groups: HashMap<String, Arc<[String]>> = HashMap::new();
        let mut members_of = |g: &str| -> Arc<[String]> {
            let key = if g == "*" {
                "*".to_string()
            } else {
                g.to_lowercase()
            };
            groups
                .entry(key)
                .or_insert_with(|| {
                    file.computer_groups
                        .iter()
                        .filter(|(name, _)| g == "*" || eq_ci(name, g))
                        .flat_map(|(_, members)| members.iter().map(|m| m.to_lowercase()))
                        .collect::<Vec<_>>()
                        .into()
                })
                .clone()
        };
        let mut ix = RuleIndex {
            empty: file.rules.is_empty(),
            ..RuleIndex::default()
        };
        for r in order {
            let computers = match (&r.computer, &r.computer_group) {
                (Some(c), None) if c == "*" => Computers::Any,
                (Some(c), None) => Computers::Names(vec![c.to_lowercase()].into()),
                (None, Some(g)) => Computers::Names(members_of(g)),
                _ => continue, // not valid: already left out
            };
            let Ok(pos) = u32::try_from(ix.rules.len()) else {
                break;
            };
            match (&r.user, &r.user_group) {
                (Some(u), None) if u == "*" => ix.anyone.push(pos),
                (Some(u), None) => ix.by_user.entry(u.to_lowercase()).or_default().push(pos),
                (None, Some(g)) if g == "*" => ix.anyone.push(pos),
                (None, Some(g)) => ix.by_group.entry(g.to_lowercase()).or_default().push(pos),
                _ => continue,
            }
            ix.rules.push(Compiled {
                id: r.id,
                name: r.name.clone(),
                computers,
                configuration: (r.configuration != "*").then(|| r.configuration.to_lowercase()),
            });
        }
        ix
    }

    /// How many rules can match (the valid ones).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every candidate list of the caller: their own rules, their groups' rules, everyone's.
    fn for_each_list(&self, user: &str, groups: &[String], mut f: impl FnMut(&[u32])) {
        f(&self.anyone);
        with_folded(user, |u| {
            if let Some(l) = self.by_user.get(u) {
                f(l)
            }
        });
        for g in groups {
            with_folded(g, |g| {
                if let Some(l) = self.by_group.get(g) {
                    f(l)
                }
            });
        }
    }

    /// The lowest-id rule that admits the caller (no allocation for ASCII names).
    fn first_match(
        &self,
        user: &str,
        groups: &[String],
        computer_names: &[String],
        configuration: Option<&str>,
    ) -> Option<&Compiled> {
        let mut best: Option<&Compiled> = None;
        self.for_each_list(user, groups, |list| {
            for pos in list {
                let Some(r) = self.rules.get(*pos as usize) else {
                    continue;
                };
                if best.is_some_and(|b| b.id <= r.id) {
                    break; // each list is in id order: nothing lower follows
                }
                if r.admits(computer_names, configuration) {
                    best = Some(r);
                    break;
                }
            }
        });
        best
    }

    /// Does any rule admit the caller on this computer (known by `computer_names`), for some
    /// configuration? (Asked for every authenticated request; no allocation for ASCII names.)
    pub fn admits_anywhere(
        &self,
        user: &str,
        groups: &[String],
        computer_names: &[String],
    ) -> bool {
        self.first_match(user, groups, computer_names, None)
            .is_some()
    }

    /// Ids of every rule that admits the caller, ascending.
    fn matching_ids(
        &self,
        user: &str,
        groups: &[String],
        computer_names: &[String],
        configuration: Option<&str>,
    ) -> Vec<u64> {
        let mut ids = Vec::new();
        self.for_each_list(user, groups, |list| {
            for pos in list {
                if let Some(r) = self.rules.get(*pos as usize) {
                    if r.admits(computer_names, configuration) {
                        ids.push(r.id);
                    }
                }
            }
        });
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn describe(&self, id: u64) -> String {
        match self.rules.iter().find(|r| r.id == id) {
            Some(r) if !r.name.is_empty() => format!("rule {id} ({})", r.name),
            _ => format!("rule {id}"),
        }
    }

    /// Gate 3: may `user` (member of `groups`) open `configuration` on this computer, known by
    /// `computer_names` (computer_name followed by its aliases)?
    pub fn evaluate(
        &self,
        user: &str,
        groups: &[String],
        computer_names: &[String],
        configuration: &str,
    ) -> Decision {
        if self.empty {
            return Decision {
                allowed: false,
                rule_id: None,
                reason: "no authorization rules: nobody gets in".into(),
            };
        }
        match self.first_match(user, groups, computer_names, Some(configuration)) {
            Some(r) => Decision {
                allowed: true,
                rule_id: Some(r.id),
                reason: if r.name.is_empty() {
                    format!("allowed by rule {}", r.id)
                } else {
                    format!("allowed by rule {} ({})", r.id, r.name)
                },
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

    /// `keyhole rule test`: would `user` (with `groups`) get in on `computer`, for
    /// `configuration` (any configuration when `None`)?
    pub fn test(
        &self,
        user: &str,
        groups: &[String],
        computer: &str,
        configuration: Option<&str>,
    ) -> TestOutcome {
        let names = [computer.to_string()];
        let matching = self.matching_ids(user, groups, &names, configuration);
        let message = match matching.first() {
            Some(&id) => {
                let mut m = format!("allowed by {}", self.describe(id));
                if matching.len() > 1 {
                    let others: Vec<String> =
                        matching.iter().skip(1).map(u64::to_string).collect();
                    let _ = write!(m, "; also matched by rule {}", others.join(", "));
                }
                m
            }
            None if self.empty => "denied: no authorization rules: nobody gets in".into(),
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
}

/// Gate 3 over a rules file not indexed yet: indexes it and decides (the server keeps a
/// [`RuleIndex`] per configuration instead; this is for one-off decisions).
pub fn evaluate(
    rules: &RulesFile,
    user: &str,
    groups: &[String],
    computer_names: &[String],
    configuration: &str,
) -> Decision {
    RuleIndex::new(rules).evaluate(user, groups, computer_names, configuration)
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
    RuleIndex::new(rules).test(user, groups, computer, configuration)
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
    if text.len() as u64 > MAX_RULES_FILE_BYTES {
        return Err(RulesError::Invalid(format!(
            "{} would grow to {} bytes, more than the {MAX_RULES_FILE_BYTES} a rules file may hold; remove some rules first (or merge them: a user_group rule covers many users)",
            path.display(),
            text.len()
        )));
    }
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

    fn field_ok(value: &str) -> bool {
        crate::config::validate::rule_field_problem("", value).is_none()
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

    /// Gate 3 as it was before the index: every rule, every field checked and compared
    /// case-insensitively on each call. The index must decide exactly as this does.
    fn linear(
        rules: &RulesFile,
        user: &str,
        groups: &[String],
        names: &[String],
        conf: Option<&str>,
    ) -> Vec<u64> {
        let user_ok = |r: &Rule| match (&r.user, &r.user_group) {
            (Some(u), None) if field_ok(u) => u == "*" || eq_ci(u, user),
            (None, Some(g)) if field_ok(g) => g == "*" || groups.iter().any(|x| eq_ci(x, g)),
            _ => false,
        };
        let computer_ok = |r: &Rule| match (&r.computer, &r.computer_group) {
            (Some(c), None) if field_ok(c) => c == "*" || names.iter().any(|n| eq_ci(n, c)),
            (None, Some(g)) if field_ok(g) => rules
                .computer_groups
                .iter()
                .filter(|(name, _)| g == "*" || eq_ci(name, g))
                .flat_map(|(_, members)| members.iter())
                .any(|m| names.iter().any(|n| eq_ci(n, m))),
            _ => false,
        };
        let conf_ok = |r: &Rule| {
            field_ok(&r.configuration)
                && match conf {
                    None => true,
                    Some(c) => r.configuration == "*" || eq_ci(&r.configuration, c),
                }
        };
        let mut ids: Vec<u64> = rules
            .rules
            .iter()
            .filter(|r| user_ok(r) && computer_ok(r) && conf_ok(r))
            .map(|r| r.id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    const NAMES: &[&str] = &[
        "alice",
        "Alice",
        "ALICE",
        "bob",
        "*",
        "al*",
        "",
        "staff",
        "Staff",
        "web01",
        "WEB01",
        "Helpdesk",
        "helpdesk",
        "\u{212A}elvin",
        "kelvin",
        "Stra\u{df}e",
        "STRASSE",
        "\u{c4}rger",
        "\u{e4}rger",
        "\u{39f}\u{394}\u{3a5}\u{3a3}\u{3a3}\u{395}\u{3a5}\u{3a3}",
        "a\nb",
        "db",
    ];

    fn name() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::sample::select(NAMES).prop_map(str::to_string)
    }

    use proptest::prelude::*;

    prop_compose! {
        fn a_rule(id: u64)(
            by_group in any::<bool>(),
            who in name(),
            group_computer in any::<bool>(),
            computer in name(),
            conf in name(),
        ) -> Rule {
            Rule {
                id,
                name: format!("r{id}"),
                user: (!by_group).then(|| who.clone()),
                user_group: by_group.then(|| who.clone()),
                computer: (!group_computer).then(|| computer.clone()),
                computer_group: group_computer.then(|| computer.clone()),
                configuration: conf,
            }
        }
    }

    fn a_file() -> impl Strategy<Value = RulesFile> {
        (
            proptest::collection::vec(any::<u8>(), 0..12),
            proptest::collection::btree_map(name(), proptest::collection::vec(name(), 0..3), 0..3),
        )
            .prop_flat_map(|(ids, groups)| {
                let mut ids: Vec<u64> = ids.into_iter().map(u64::from).collect();
                ids.sort_unstable();
                ids.dedup();
                let rules: Vec<_> = ids.into_iter().map(a_rule).collect();
                (rules, Just(groups))
            })
            .prop_map(|(mut rules, groups)| {
                rules.reverse(); // file order is not id order
                RulesFile {
                    rules,
                    computer_groups: groups.into_iter().collect(),
                }
            })
    }

    proptest! {
        #[test]
        fn the_index_decides_as_the_linear_scan_did(
            file in a_file(),
            user in name(),
            groups in proptest::collection::vec(name(), 0..3),
            names in proptest::collection::vec(name(), 1..3),
            conf in proptest::option::of(name()),
        ) {
            let ix = RuleIndex::new(&file);
            let want = linear(&file, &user, &groups, &names, conf.as_deref());
            prop_assert_eq!(ix.matching_ids(&user, &groups, &names, conf.as_deref()), want.clone());
            prop_assert_eq!(
                ix.admits_anywhere(&user, &groups, &names),
                !linear(&file, &user, &groups, &names, None).is_empty()
            );
            if let Some(c) = conf.as_deref() {
                let d = ix.evaluate(&user, &groups, &names, c);
                prop_assert_eq!(d.allowed, !want.is_empty());
                prop_assert_eq!(d.rule_id, want.first().copied());
            }
        }
    }

    #[test]
    fn case_folding_matches_str_to_lowercase_without_allocating_for_ascii() {
        with_folded("Alice", |s| assert_eq!(s, "alice"));
        with_folded("alice", |s| assert_eq!(s, "alice"));
        with_folded("\u{212A}elvin", |s| assert_eq!(s, "kelvin"));
        let long = "A".repeat(FOLD_ON_STACK + 5);
        with_folded(&long, |s| assert_eq!(s, long.to_lowercase()));
        assert!(eq_folded("kelvin", "KELVIN"));
        assert!(eq_folded("kelvin", "\u{212A}elvin"));
        assert!(!eq_folded("kelvin", "kelvi"));
        assert!(eq_folded(&"ΟΔΥΣΣΕΥΣ".to_lowercase(), "ΟΔΥΣΣΕΥΣ"));
    }
}
