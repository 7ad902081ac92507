//! `polkit`: the polkit rule that lets each endpoint's `run_as` account start, stop or restart
//! exactly the systemd services its roles grant (`keyhole polkit`, SPEC §3), and the check that
//! such a rule is installed (`keyhole check`).
//!
//! keyhole's Start-/Stop-/Restart-Service run `systemctl VERB --no-ask-password -- UNIT` as the
//! endpoint's `run_as` account (`commands/services.rs`); systemd asks polkit for
//! `org.freedesktop.systemd1.manage-units` with `unit` = the unit's id (`nginx.service`) and
//! `verb` = `start`/`stop`/`restart`. The rule grants, per account and verb, the union of what
//! each `[[role]]` entry of each endpoint using that account grants (JEA's merge rules are not
//! monotone — a pattern next to a set drops the set — so merging every role at once would not
//! be the union; the union of the single entries is what some user can reach).
//!
//! How a role's `-Name` constraint becomes unit ids (the same steps keyhole takes):
//! - a `validate_set` member without wildcards names `member.service` (or `member` when it ends
//!   in `.service`), compared ASCII-case-insensitively (keyhole finds units case-insensitively);
//!   when systemd runs, each is also resolved through systemd's aliases (`sshd` → `ssh.service`),
//!   because systemd reports the canonical id to polkit;
//! - a member with `*`/`?` is a wildcard over the unit's name or id, as keyhole expands it;
//! - a `validate_pattern` is translated to a JavaScript regular expression with the same
//!   meaning (anchored to the whole value, case-insensitive) and tested on the unit's name and id.
//!   Only a safe subset is translated: ASCII literals, `.`, `\d \w \s`, bracket classes of ASCII
//!   literals and ranges, groups, alternation, repetition, `^ $ \A \z \b \B`. Anything else
//!   (inline flags, Unicode classes, non-ASCII characters, POSIX classes, class set operations)
//!   is refused with the reason, because the two engines could disagree on it.
//! - every parameter allowed (a plain grant), or `-Name`/`-InputObject`/`-DisplayName` without a
//!   constraint, grants every unit; a constrained `-DisplayName` cannot be translated (polkit
//!   does not know unit descriptions) and is refused.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use regex_syntax::ast::{self, Ast};

use crate::capability::{merge, ParamsGrant, ValueConstraint};
use crate::commands::services::{SERVICE_NAME_PATTERN, STATE_CHANGES};
use crate::config::LoadedConfig;

/// Where `keyhole polkit --write` puts the rule.
pub const RULES_PATH: &str = "/etc/polkit-1/rules.d/50-keyhole.rules";
/// The polkit action systemd checks for unit jobs.
pub const ACTION_ID: &str = "org.freedesktop.systemd1.manage-units";
/// Longest pattern translated (characters).
pub const MAX_TRANSLATED_PATTERN: usize = 4096;

/// One way a unit can be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// Every service unit.
    Any,
    /// Exact unit ids, lower-case (ASCII).
    Ids(Vec<String>),
    /// A keyhole wildcard (`acme-*`), as a JavaScript regex source, tested on name and id.
    Wildcard { wildcard: String, js: String },
    /// A `validate_pattern`, as a JavaScript regex source, tested on name and id.
    Pattern { pattern: String, js: String },
}

/// A matcher and where it comes from (for the comments in the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub matcher: Matcher,
    pub origin: String,
}

/// Everything one account may do, by verb (`start`, `stop`, `restart`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountGrants {
    pub endpoints: Vec<String>,
    pub verbs: BTreeMap<String, Vec<Granted>>,
}

/// What the rule says, and what it leaves out.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub accounts: BTreeMap<String, AccountGrants>,
    /// Endpoints or grants that need no rule, said in the rule's header.
    pub notes: Vec<String>,
}

impl Plan {
    /// True when some account is granted something.
    pub fn grants_anything(&self) -> bool {
        self.accounts.values().any(|a| !a.verbs.is_empty())
    }
}

/// A grant that cannot be translated faithfully.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct Untranslatable {
    pub origin: String,
    pub reason: String,
}

/// Resolves a unit id through systemd's aliases (`sshd.service` → `ssh.service`); `None` when
/// unknown or unchanged.
pub type AliasResolver<'a> = &'a dyn Fn(&str) -> Option<String>;

/// No alias resolution (tests, or systemd not running).
pub fn no_aliases(_: &str) -> Option<String> {
    None
}

/// Resolve through `systemctl show --property=Id --value` when systemd is running.
pub fn systemd_aliases(unit: &str) -> Option<String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let systemctl = ["/usr/bin/systemctl", "/bin/systemctl"]
        .into_iter()
        .find(|p| Path::new(p).is_file())?;
    let out = std::process::Command::new(systemctl)
        .args(["show", "--property=Id", "--value", "--", unit])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !id.is_empty() && id != unit && id.is_ascii()).then_some(id)
}

/// Build the plan from a validated configuration.
pub fn plan(cfg: &LoadedConfig, aliases: AliasResolver<'_>) -> Result<Plan, Vec<Untranslatable>> {
    let mut out = Plan::default();
    let mut errors = Vec::new();
    for ep in &cfg.endpoints {
        let e = &ep.config;
        if e.run_as == "root" {
            let grants_any = e.roles.iter().any(|r| {
                let caps: Vec<_> = r
                    .role_capabilities
                    .iter()
                    .filter_map(|n| cfg.capabilities.get(&n.to_lowercase()))
                    .collect();
                let eff = merge(cfg, ep, &caps);
                STATE_CHANGES
                    .iter()
                    .any(|(c, _)| eff.cmdlets.contains_key(&c.to_lowercase()))
            });
            if grants_any {
                out.notes.push(format!(
                    "endpoint {} runs as root: systemd needs no polkit rule for it",
                    e.name
                ));
            }
            continue;
        }
        for (i, role) in e.roles.iter().enumerate() {
            let caps: Vec<_> = role
                .role_capabilities
                .iter()
                .filter_map(|n| cfg.capabilities.get(&n.to_lowercase()))
                .collect();
            let eff = merge(cfg, ep, &caps);
            let who = match (&role.user, &role.group) {
                (Some(u), _) => format!("user {u}"),
                (None, Some(g)) => format!("group {g}"),
                (None, None) => format!("role #{}", i + 1),
            };
            for (cmdlet, verb) in STATE_CHANGES {
                let Some(grant) = eff.cmdlets.get(&cmdlet.to_lowercase()) else {
                    continue;
                };
                let origin = format!(
                    "endpoint {} ({who}: {}) {cmdlet}",
                    e.name,
                    role.role_capabilities.join(", ")
                );
                match matchers_for(&grant.params, &origin, aliases) {
                    Ok(ms) if ms.is_empty() => {}
                    Ok(ms) => {
                        let acct = out.accounts.entry(e.run_as.clone()).or_default();
                        if !acct.endpoints.contains(&e.name) {
                            acct.endpoints.push(e.name.clone());
                        }
                        let list = acct.verbs.entry((*verb).to_string()).or_default();
                        for m in ms {
                            if !list.iter().any(|g| g.matcher == m.matcher) {
                                list.push(m);
                            }
                        }
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The matchers one merged grant of a state-changing cmdlet gives.
fn matchers_for(
    params: &ParamsGrant,
    origin: &str,
    aliases: AliasResolver<'_>,
) -> Result<Vec<Granted>, Vec<Untranslatable>> {
    let granted = |matcher: Matcher, what: &str| Granted {
        matcher,
        origin: format!("{origin} {what}"),
    };
    let map = match params {
        ParamsGrant::All => return Ok(vec![granted(Matcher::Any, "with every parameter")]),
        ParamsGrant::Only(m) => m,
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if let Some(p) = map.get("displayname") {
        match &p.constraint {
            ValueConstraint::Any => out.push(granted(Matcher::Any, "-DisplayName (any)")),
            _ => errors.push(Untranslatable {
                origin: format!("{origin} -DisplayName"),
                reason: "a constrained -DisplayName selects units by description, which polkit does not see; constrain -Name instead".into(),
            }),
        }
    }
    for key in ["name", "inputobject"] {
        let Some(p) = map.get(key) else { continue };
        let what = format!("-{}", p.name);
        match &p.constraint {
            ValueConstraint::Any => out.push(granted(Matcher::Any, &format!("{what} (any)"))),
            ValueConstraint::Set(values) => {
                let mut ids: Vec<String> = Vec::new();
                for v in values {
                    if !is_service_name(v) {
                        // keyhole refuses such a value before any unit is looked up.
                        continue;
                    }
                    if v.contains(['*', '?']) {
                        out.push(granted(
                            Matcher::Wildcard {
                                wildcard: v.clone(),
                                js: wildcard_to_js(v),
                            },
                            &format!("{what} wildcard"),
                        ));
                        continue;
                    }
                    let lower = v.to_ascii_lowercase();
                    let id = if lower.ends_with(".service") {
                        lower
                    } else {
                        format!("{lower}.service")
                    };
                    let canonical = aliases(&id).map(|c| c.to_ascii_lowercase());
                    for x in std::iter::once(id).chain(canonical) {
                        if !ids.contains(&x) {
                            ids.push(x);
                        }
                    }
                }
                if !ids.is_empty() {
                    out.push(granted(Matcher::Ids(ids), &format!("{what} set")));
                }
            }
            ValueConstraint::Patterns(pats) => {
                for pat in pats {
                    match pattern_to_js(pat) {
                        Ok(js) => out.push(granted(
                            Matcher::Pattern {
                                pattern: pat.clone(),
                                js,
                            },
                            &format!("{what} pattern"),
                        )),
                        Err(reason) => errors.push(Untranslatable {
                            origin: format!("{origin} {what} pattern {pat:?}"),
                            reason,
                        }),
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Would keyhole's Start-/Stop-/Restart-Service accept this -Name value at all?
fn is_service_name(v: &str) -> bool {
    regex::Regex::new(SERVICE_NAME_PATTERN).is_ok_and(|re| re.is_match(v))
}

/// A character as a JavaScript regex atom: letters and digits as they are, everything else as
/// `\xHH` (only ASCII reaches here), which means the same inside and outside classes and never
/// ends a regex literal.
fn js_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{:02x}", c as u32);
    }
}

/// keyhole's wildcard (`*` any run, `?` one character, case-insensitive) as an anchored
/// JavaScript regex source (used with the `i` flag).
pub fn wildcard_to_js(w: &str) -> String {
    let mut s = String::from("^");
    for c in w.chars() {
        match c {
            '*' => s.push_str("[\\s\\S]*"),
            '?' => s.push_str("[\\s\\S]"),
            c => js_char(c, &mut s),
        }
    }
    s.push('$');
    s
}

/// A `validate_pattern` as keyhole applies it (`^(?:P)$`, case-insensitive) translated to a
/// JavaScript regex source with the same meaning on ASCII text (used with the `i` flag), or why
/// it cannot be.
pub fn pattern_to_js(pattern: &str) -> Result<String, String> {
    if pattern.chars().count() > MAX_TRANSLATED_PATTERN {
        return Err(format!("longer than {MAX_TRANSLATED_PATTERN} characters"));
    }
    let ast = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| format!("not a valid pattern: {}", e.kind()))?;
    let mut body = String::new();
    translate(&ast, &mut body)?;
    Ok(format!("^(?:{body})$"))
}

fn translate(a: &Ast, out: &mut String) -> Result<(), String> {
    match a {
        Ast::Empty(_) => Ok(()),
        Ast::Flags(_) => Err("inline flags like (?i) or (?x) are not translated; write the pattern without them (keyhole already matches case-insensitively)".into()),
        Ast::Literal(l) => literal(l.c, out),
        // The regex crate's `.` is any character but `\n`; JavaScript's also excludes `\r`,
        // U+2028 and U+2029, so spell it out.
        Ast::Dot(_) => {
            out.push_str("[^\\n]");
            Ok(())
        }
        Ast::Assertion(x) => {
            use ast::AssertionKind as K;
            out.push_str(match x.kind {
                K::StartLine | K::StartText => "^",
                K::EndLine | K::EndText => "$",
                K::WordBoundary => "\\b",
                K::NotWordBoundary => "\\B",
                _ => return Err("word-boundary forms like \\b{start} have no JavaScript equivalent".into()),
            });
            Ok(())
        }
        Ast::ClassUnicode(_) => Err("Unicode classes (\\p{…}) are not translated; list the ASCII characters".into()),
        Ast::ClassPerl(p) => {
            out.push('[');
            if p.negated {
                out.push('^');
            }
            out.push_str(perl_class(&p.kind));
            out.push(']');
            Ok(())
        }
        Ast::ClassBracketed(b) => bracketed(b, out),
        Ast::Repetition(r) => {
            out.push_str("(?:");
            translate(&r.ast, out)?;
            out.push(')');
            use ast::{RepetitionKind as R, RepetitionRange as N};
            match &r.op.kind {
                R::ZeroOrOne => out.push('?'),
                R::ZeroOrMore => out.push('*'),
                R::OneOrMore => out.push('+'),
                R::Range(N::Exactly(n)) => {
                    let _ = write!(out, "{{{n}}}");
                }
                R::Range(N::AtLeast(n)) => {
                    let _ = write!(out, "{{{n},}}");
                }
                R::Range(N::Bounded(m, n)) => {
                    let _ = write!(out, "{{{m},{n}}}");
                }
            }
            if !r.greedy {
                out.push('?');
            }
            Ok(())
        }
        Ast::Group(g) => {
            if let ast::GroupKind::NonCapturing(flags) = &g.kind {
                if !flags.items.is_empty() {
                    return Err("groups with flags like (?i:…) are not translated".into());
                }
            }
            out.push_str("(?:");
            translate(&g.ast, out)?;
            out.push(')');
            Ok(())
        }
        Ast::Alternation(alt) => {
            for (i, x) in alt.asts.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                translate(x, out)?;
            }
            Ok(())
        }
        Ast::Concat(c) => {
            for x in &c.asts {
                translate(x, out)?;
            }
            Ok(())
        }
    }
}

fn literal(c: char, out: &mut String) -> Result<(), String> {
    if !c.is_ascii() {
        return Err(format!(
            "the non-ASCII character {c:?} is not translated (case folding differs between the engines)"
        ));
    }
    js_char(c, out);
    Ok(())
}

/// ASCII contents of `\d`, `\w`, `\s` (on ASCII text the regex crate's Unicode classes mean
/// exactly these).
fn perl_class(k: &ast::ClassPerlKind) -> &'static str {
    match k {
        ast::ClassPerlKind::Digit => "0-9",
        ast::ClassPerlKind::Word => "0-9A-Za-z_",
        ast::ClassPerlKind::Space => "\\x09-\\x0d\\x20",
    }
}

fn bracketed(b: &ast::ClassBracketed, out: &mut String) -> Result<(), String> {
    let item = match &b.kind {
        ast::ClassSet::Item(i) => i,
        ast::ClassSet::BinaryOp(_) => {
            return Err("class set operations (&&, --, ~~) are not translated".into())
        }
    };
    out.push('[');
    if b.negated {
        out.push('^');
    }
    class_item(item, out)?;
    out.push(']');
    Ok(())
}

fn class_item(i: &ast::ClassSetItem, out: &mut String) -> Result<(), String> {
    use ast::ClassSetItem as I;
    match i {
        I::Empty(_) => Ok(()),
        I::Literal(l) => literal(l.c, out),
        I::Range(r) => {
            literal(r.start.c, out)?;
            out.push('-');
            literal(r.end.c, out)
        }
        I::Perl(p) if !p.negated => {
            out.push_str(perl_class(&p.kind));
            Ok(())
        }
        I::Perl(_) => {
            Err("a negated class (\\D, \\W, \\S) inside brackets is not translated".into())
        }
        I::Ascii(_) => {
            Err("POSIX classes like [[:alpha:]] are not translated; write the range (a-z)".into())
        }
        I::Unicode(_) => {
            Err("Unicode classes (\\p{…}) are not translated; list the ASCII characters".into())
        }
        I::Bracketed(_) => Err("nested classes are not translated".into()),
        I::Union(u) => {
            for x in &u.items {
                class_item(x, out)?;
            }
            Ok(())
        }
    }
}

fn js_string(s: &str) -> String {
    // Account names and unit ids are ASCII; serde_json escapes quotes and controls.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The rule file for `plan`.
pub fn render(plan: &Plan) -> String {
    let mut s = String::new();
    s.push_str("// polkit rule generated by `keyhole polkit` (keyhole ");
    s.push_str(env!("CARGO_PKG_VERSION"));
    s.push_str(").\n// Do not edit: change the role capabilities, then run `keyhole polkit --write` again;\n");
    s.push_str("// `keyhole check` warns when this file no longer matches them.\n//\n");
    s.push_str("// It lets each keyhole endpoint's run_as account start, stop or restart exactly the systemd\n");
    s.push_str("// services its roles grant (what keyhole's Start-/Stop-/Restart-Service ask systemd for) and\n");
    s.push_str("// leaves every other request to the other rules.\n//\n");
    if !plan.grants_anything() {
        s.push_str("// No endpoint grants Start-Service, Stop-Service or Restart-Service to a non-root account.\n");
    }
    for (account, g) in &plan.accounts {
        let _ = writeln!(s, "// {account} (endpoints {}):", g.endpoints.join(", "));
        for (verb, list) in &g.verbs {
            for m in list {
                let what = match &m.matcher {
                    Matcher::Any => "every service".to_string(),
                    Matcher::Ids(ids) => ids.join(", "),
                    Matcher::Wildcard { wildcard, .. } => format!("wildcard {wildcard}"),
                    Matcher::Pattern { pattern, .. } => format!("pattern {pattern}"),
                };
                let _ = writeln!(s, "//   {verb}: {what}   [{}]", m.origin.replace('\n', " "));
            }
        }
    }
    for n in &plan.notes {
        let _ = writeln!(s, "// note: {n}");
    }
    s.push_str("\npolkit.addRule((function () {\n    \"use strict\";\n");
    s.push_str("    var grants = {\n");
    let accounts: Vec<String> = plan
        .accounts
        .iter()
        .filter(|(_, g)| !g.verbs.is_empty())
        .map(|(account, g)| {
            let verbs: Vec<String> = g
                .verbs
                .iter()
                .map(|(verb, list)| {
                    let ms: Vec<String> = list
                        .iter()
                        .map(|m| match &m.matcher {
                            Matcher::Any => "{ any: true }".to_string(),
                            Matcher::Ids(ids) => {
                                let ids: Vec<String> = ids.iter().map(|i| js_string(i)).collect();
                                format!("{{ ids: [{}] }}", ids.join(", "))
                            }
                            Matcher::Wildcard { js, .. } => format!("{{ wildcard: /{js}/i }}"),
                            Matcher::Pattern { js, .. } => format!("{{ pattern: /{js}/i }}"),
                        })
                        .collect();
                    format!(
                        "            {}: [\n                {}\n            ]",
                        js_string(verb),
                        ms.join(",\n                ")
                    )
                })
                .collect();
            format!(
                "        {}: {{\n{}\n        }}",
                js_string(account),
                verbs.join(",\n")
            )
        })
        .collect();
    s.push_str(&accounts.join(",\n"));
    if !accounts.is_empty() {
        s.push('\n');
    }
    s.push_str("    };\n");
    let name_re = pattern_to_js(SERVICE_NAME_PATTERN).unwrap_or_else(|_| "^$".into());
    let _ = writeln!(
        s,
        "    // A value keyhole accepts for -Name (its SERVICE_NAME_PATTERN).\n    var serviceName = /{name_re}/;"
    );
    s.push_str(
        r#"    var own = Object.prototype.hasOwnProperty;
    function lowerAscii(s) {
        return s.replace(/[A-Z]/g, function (c) {
            return String.fromCharCode(c.charCodeAt(0) + 32);
        });
    }
    function allowed(list, unit) {
        var id = lowerAscii(unit);
        // What a user could have typed: the unit's id, or its name without ".service".
        var typed = [unit, unit.slice(0, -8)];
        for (var i = 0; i < list.length; i++) {
            var m = list[i];
            if (m.any) {
                return true;
            }
            if (m.ids && m.ids.indexOf(id) >= 0) {
                return true;
            }
            for (var j = 0; j < typed.length; j++) {
                if (m.wildcard && m.wildcard.test(typed[j])) {
                    return true;
                }
                if (m.pattern && serviceName.test(typed[j]) && m.pattern.test(typed[j])) {
                    return true;
                }
            }
        }
        return false;
    }
    return function (action, subject) {
        if (action.id !== "org.freedesktop.systemd1.manage-units" ||
            typeof subject.user !== "string" || !own.call(grants, subject.user)) {
            return polkit.Result.NOT_HANDLED;
        }
        var verb = action.lookup("verb");
        var unit = action.lookup("unit");
        if (typeof verb !== "string" || typeof unit !== "string" ||
            !own.call(grants[subject.user], verb) ||
            unit.length <= 8 || unit.slice(-8) !== ".service") {
            return polkit.Result.NOT_HANDLED;
        }
        return allowed(grants[subject.user][verb], unit) ? polkit.Result.YES : polkit.Result.NOT_HANDLED;
    };
})());
"#,
    );
    s
}

/// Write `text` to `path` atomically (a temporary file in the same directory, fsync, rename),
/// mode 0644 (polkitd reads it as its own user).
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} does not exist: is polkit installed (Debian package polkitd)?",
                dir.display()
            ),
        ));
    }
    let tmp = dir.join(format!(
        ".{}.keyhole-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What `keyhole check` says about the installed rule: nothing when the configuration grants no
/// service changes to a non-root account or the file at `path` is what `keyhole polkit` would
/// write now; otherwise one warning saying what to do.
pub fn installed_rule_warnings(
    cfg: &LoadedConfig,
    path: &Path,
    aliases: AliasResolver<'_>,
) -> Vec<String> {
    let plan = match plan(cfg, aliases) {
        Ok(p) => p,
        Err(errors) => {
            return errors
                .iter()
                .map(|e| format!("no polkit rule can be generated for {e}; `keyhole polkit` refuses it, so Start/Stop/Restart-Service will fail for that endpoint's run_as account"))
                .collect()
        }
    };
    if !plan.grants_anything() {
        return Vec::new();
    }
    let summary: Vec<String> = plan
        .accounts
        .iter()
        .map(|(a, g)| {
            let verbs: Vec<&str> = g.verbs.keys().map(String::as_str).collect();
            format!("{a} ({})", verbs.join("/"))
        })
        .collect();
    let want = render(&plan);
    match std::fs::read_to_string(path) {
        Ok(have) if have == want => Vec::new(),
        Ok(_) => vec![format!(
            "{} does not match the role capabilities: roles grant service changes to {} that it may not allow; run `keyhole polkit --write` (as root) to update it",
            path.display(),
            summary.join(", ")
        )],
        Err(_) => vec![format!(
            "roles grant service changes (Start/Stop/Restart-Service) to {}, but no polkit rule allows them ({} is missing), so systemd will refuse them; run `keyhole polkit --write` (as root) to install it",
            summary.join(", "),
            path.display()
        )],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn translation_of_the_safe_subset() {
        assert_eq!(
            pattern_to_js("acme-.*").unwrap(),
            "^(?:acme\\x2d(?:[^\\n])*)$"
        );
        assert_eq!(pattern_to_js("a|b").unwrap(), "^(?:a|b)$");
        assert_eq!(
            pattern_to_js("[a-z0-9_]{2,5}").unwrap(),
            "^(?:(?:[a-z0-9\\x5f]){2,5})$"
        );
        assert_eq!(pattern_to_js("\\d+").unwrap(), "^(?:(?:[0-9])+)$");
        assert_eq!(pattern_to_js("(x)(?:y)").unwrap(), "^(?:(?:x)(?:y))$");
        assert_eq!(pattern_to_js("a/b").unwrap(), "^(?:a\\x2fb)$");
    }

    #[test]
    fn untranslatable_patterns_are_refused_with_a_reason() {
        for (p, why) in [
            ("(?i)nginx", "inline flags"),
            ("(?-i:N)ginx", "groups with flags"),
            ("\\pL+", "Unicode classes"),
            ("[\\pL]", "Unicode classes"),
            ("ngïnx", "non-ASCII"),
            ("[[:alpha:]]+", "POSIX classes"),
            ("[a-z&&[^x]]", "class set operations"),
            ("[\\D]", "negated class"),
            ("\\b{start}x", "word-boundary"),
            ("(", "not a valid pattern"),
        ] {
            let e = pattern_to_js(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
    }

    #[test]
    fn wildcards() {
        assert_eq!(wildcard_to_js("acme-*"), "^acme\\x2d[\\s\\S]*$");
        assert_eq!(wildcard_to_js("a?c"), "^a[\\s\\S]c$");
    }
}
