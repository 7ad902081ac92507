//! `gateway`: gate 3, the authorization rules (user or group × computer or group × configuration),
//! and the atomic file operations behind `keyhole rule`.
//!
//! The rules are a whitelist in the manner of PowerShell Web Access: one matching rule suffices,
//! no rule means nobody gets in, and `*` is accepted only alone in a field. A rule that is
//! malformed (both or neither of `user`/`user_group`, a `*` inside a name, …) never matches:
//! evaluation fails closed whatever the file says; `validate_rules` reports such rules.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Rule, RulesFile};

/// Longest accepted value of a rule field (user, group, computer, configuration, name).
pub const MAX_RULE_FIELD_LEN: usize = 256;
/// Largest rules file read (bytes).
pub const MAX_RULES_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most rules a file may hold.
pub const MAX_RULES: usize = 10_000;

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
pub enum GatewayError {
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

/// Checks one field value: non-empty, bounded, no control characters, `*` only alone.
fn check_field(what: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_RULE_FIELD_LEN {
        return Err(format!("{what} is longer than {MAX_RULE_FIELD_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} {value:?} contains control characters"));
    }
    if value != "*" && value.contains('*') {
        return Err(format!(
            "{what} {value:?}: a wildcard is only accepted alone (\"*\"), not inside a name"
        ));
    }
    Ok(())
}

/// The problems of one rule, empty when it is well formed.
fn rule_problems(rule: &Rule, rules: &RulesFile) -> Vec<String> {
    let mut out = Vec::new();
    match (&rule.user, &rule.user_group) {
        (Some(u), None) => out.extend(check_field("user", u).err()),
        (None, Some(g)) => out.extend(check_field("user_group", g).err()),
        (Some(_), Some(_)) => out.push("has both user and user_group; keep exactly one".into()),
        (None, None) => out.push("has neither user nor user_group; set exactly one".into()),
    }
    match (&rule.computer, &rule.computer_group) {
        (Some(c), None) => out.extend(check_field("computer", c).err()),
        (None, Some(g)) => {
            if let Err(e) = check_field("computer_group", g) {
                out.push(e);
            } else if g != "*" && !rules.computer_groups.keys().any(|k| eq_ci(k, g)) {
                out.push(format!(
                    "computer_group {g:?} is not defined in [computer_groups]; define it there"
                ));
            }
        }
        (Some(_), Some(_)) => {
            out.push("has both computer and computer_group; keep exactly one".into())
        }
        (None, None) => out.push("has neither computer nor computer_group; set exactly one".into()),
    }
    out.extend(check_field("configuration", &rule.configuration).err());
    if rule.name.len() > MAX_RULE_FIELD_LEN || rule.name.chars().any(char::is_control) {
        out.push(format!(
            "name is longer than {MAX_RULE_FIELD_LEN} bytes or has control characters"
        ));
    }
    out
}

/// Every problem of a rules file, as "rule N: message" lines (empty when the file is fine).
/// Malformed rules never match in `evaluate`; this tells the administrator why.
pub fn validate_rules(rules: &RulesFile) -> Vec<String> {
    let mut out = Vec::new();
    if rules.rules.len() > MAX_RULES {
        out.push(format!("more than {MAX_RULES} rules"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for rule in &rules.rules {
        if !seen.insert(rule.id) {
            out.push(format!(
                "rule {}: the id is used more than once; ids must be unique",
                rule.id
            ));
        }
        for p in rule_problems(rule, rules) {
            out.push(format!("rule {}: {p}", rule.id));
        }
    }
    for (group, members) in &rules.computer_groups {
        if let Err(e) = check_field("computer group name", group) {
            out.push(format!("[computer_groups] {e}"));
        }
        for m in members {
            if let Err(e) = check_field(&format!("member of computer group {group:?}"), m) {
                out.push(format!("[computer_groups] {e}"));
            }
        }
    }
    out
}

fn user_matches(rule: &Rule, user: &str, groups: &[String]) -> bool {
    match (&rule.user, &rule.user_group) {
        (Some(u), None) if check_field("", u).is_ok() => u == "*" || eq_ci(u, user),
        (None, Some(g)) if check_field("", g).is_ok() => {
            g == "*" || groups.iter().any(|x| eq_ci(x, g))
        }
        _ => false,
    }
}

fn computer_matches(rules: &RulesFile, rule: &Rule, names: &[String]) -> bool {
    match (&rule.computer, &rule.computer_group) {
        (Some(c), None) if check_field("", c).is_ok() => {
            c == "*" || names.iter().any(|n| eq_ci(n, c))
        }
        (None, Some(g)) if check_field("", g).is_ok() => rules
            .computer_groups
            .iter()
            .filter(|(name, _)| g == "*" || eq_ci(name, g))
            .flat_map(|(_, members)| members.iter())
            .any(|m| names.iter().any(|n| eq_ci(n, m))),
        _ => false,
    }
}

fn configuration_matches(rule: &Rule, configuration: Option<&str>) -> bool {
    if check_field("", &rule.configuration).is_err() {
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
pub fn load_rules(path: &Path) -> Result<RulesFile, GatewayError> {
    load_rules_with_text(path).map(|(rules, _)| rules)
}

/// The parsed rules and the file's text (`None` when the file does not exist).
fn load_rules_with_text(path: &Path) -> Result<(RulesFile, Option<String>), GatewayError> {
    let text = match read_bounded(path, MAX_RULES_FILE_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((RulesFile::default(), None)),
        Err(source) => {
            return Err(GatewayError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let rules = toml::from_str(&text).map_err(|e| GatewayError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', " "),
    })?;
    Ok((rules, Some(text)))
}

/// The new text of a managed file holding `expected`: the old text edited in place by `edit`
/// (comments and layout kept) when that edit parses back to exactly `expected`; otherwise
/// `expected` serialized afresh under `header`.
pub(crate) fn render_preserving<T>(
    old_text: Option<&str>,
    expected: &T,
    header: &str,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Option<()>,
) -> Result<String, String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq,
{
    if let Some(old) = old_text {
        if let Ok(mut doc) = old.parse::<toml_edit::DocumentMut>() {
            if edit(&mut doc).is_some() {
                let text = doc.to_string();
                if toml::from_str::<T>(&text).ok().as_ref() == Some(expected) {
                    return Ok(text);
                }
            }
        }
    }
    toml::to_string(expected)
        .map(|t| format!("{header}{t}"))
        .map_err(|e| e.to_string())
}

/// Reads a whole UTF-8 file of at most `max` bytes (`InvalidData` beyond).
pub(crate) fn read_bounded(path: &Path, max: u64) -> io::Result<String> {
    let buf = crate::config::read_regular_file(path, max)?
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text"))
}

const RULES_HEADER: &str =
    "# keyhole authorization rules (gate 3). Managed by `keyhole rule`; see SPEC §2.4.\n";

fn save_rules(
    path: &Path,
    old_text: Option<&str>,
    rules: &RulesFile,
    edit: impl FnOnce(&mut toml_edit::DocumentMut) -> Option<()>,
) -> Result<(), GatewayError> {
    let text = render_preserving(old_text, rules, RULES_HEADER, edit).map_err(|e| {
        GatewayError::Write {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }
    })?;
    write_atomic(path, text.as_bytes()).map_err(|source| GatewayError::Write {
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
pub fn add_rule(path: &Path, spec: RuleSpec) -> Result<u64, GatewayError> {
    let _lock = lock_dir_of(path).map_err(|source| GatewayError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut rules, old_text) = load_rules_with_text(path)?;
    if let Some(p) = validate_rules(&rules).into_iter().next() {
        return Err(GatewayError::Parse {
            path: path.to_path_buf(),
            message: p,
        });
    }
    if rules.rules.len() >= MAX_RULES {
        return Err(GatewayError::Invalid(format!(
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
    let problems = rule_problems(&rule, &rules);
    if !problems.is_empty() {
        return Err(GatewayError::Invalid(problems.join("; ")));
    }
    if let Some(dup) = rules.rules.iter().find(|r| {
        opt_eq(&r.user, &rule.user)
            && opt_eq(&r.user_group, &rule.user_group)
            && opt_eq(&r.computer, &rule.computer)
            && opt_eq(&r.computer_group, &rule.computer_group)
            && eq_ci(&r.configuration, &rule.configuration)
    }) {
        return Err(GatewayError::Invalid(format!(
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
pub fn remove_rules(path: &Path, ids: &[u64]) -> Result<Vec<u64>, GatewayError> {
    let _lock = lock_dir_of(path).map_err(|source| GatewayError::Write {
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
        return Err(GatewayError::UnknownIds {
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
pub fn list_rules(path: &Path) -> Result<RulesFile, GatewayError> {
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

/// The file a write to `path` replaces (a symbolic link is followed) and its directory.
fn resolve_target(path: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let path = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path)?,
        _ => path.to_path_buf(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((path, dir))
}

/// An exclusive advisory lock (flock) on the directory of `path`, held while a managed file is
/// read, changed and replaced, so that two concurrent `keyhole rule`/`keyhole user` runs
/// cannot lose each other's change. Released when dropped.
pub(crate) fn lock_dir_of(path: &Path) -> io::Result<nix::fcntl::Flock<fs::File>> {
    let (_, dir) = resolve_target(path)?;
    let f = fs::File::open(&dir)?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))
}

/// Replaces `path` atomically with `contents`, mode 0600: a temporary file in the same
/// directory (created 0600), written and fsynced, renamed over `path`, then the directory
/// fsynced. A reader sees the old file or the new one, never a mix; on error `path` is intact.
///
/// When `path` is a symbolic link (a rules file shared between servers, say), the file it
/// points to is replaced and the link is kept.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let (path, dir) = resolve_target(path)?;
    let path = path.as_path();
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{:016x}",
        file_name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only remove bits; make the mode exact.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
    fn check_field_rejects_inner_wildcard() {
        assert!(check_field("user", "*").is_ok());
        assert!(check_field("user", "a*").is_err());
        assert!(check_field("user", "").is_err());
        assert!(check_field("user", "a\nb").is_err());
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
