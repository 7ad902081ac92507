//! The command table of a session: built from the effective capability and nothing else, with
//! each parameter's value checks (the command's own set/patterns plus the role's constraint).
#![forbid(unsafe_code)]

use std::sync::Arc;

use super::command::{
    Command, CommandDecl, CommandKind, CommandSource, ErrorCategory, ParamDecl, VisibleCommand,
};
use super::Refusal;
use crate::capability::{EffectiveCapability, ParamsGrant, ValueConstraint};
use crate::catalog;
use crate::config::SessionType;
use crate::lang::fold::eq_simple_fold;
use crate::lang::pattern::{AnchoredPattern, Case};

/// Longest value (characters) shown back in a validation message.
const MAX_SHOWN_VALUE: usize = 200;

/// One check on a parameter's values.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// Membership under simple case folding of the exact characters (SPEC §2.3).
    Set(Vec<String>),
    /// Whole-value match of any pattern (ASCII letters in either case).
    Pattern(AnchoredPattern),
    /// A pattern that could not be compiled: every value fails (fail closed).
    Broken { shown: String, why: String },
    /// The value must not begin with `-` (after leading white space): it fills a program's
    /// argument, and the program would take it as an option (SPEC §2.3 `allow_leading_dash`).
    NoLeadingDash,
}

/// Would a program take this argument for an option? (Leading white space is skipped, as
/// `strtol` and some option parsers do.)
pub fn begins_with_dash(value: &str) -> bool {
    value.trim_start().starts_with('-')
}

/// The patterns as messages show them: anchored, as keyhole applies them.
fn anchored_text(patterns: &[String]) -> String {
    let joined = patterns
        .iter()
        .map(|p| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    format!("^(?:{joined})$")
}

impl Check {
    pub(crate) fn set(values: &[String]) -> Check {
        Check::Set(values.to_vec())
    }

    /// The patterns as alternatives, anchored, through the one pattern compiler.
    pub(crate) fn patterns(patterns: &[String], case: Case) -> Check {
        match AnchoredPattern::new(patterns, case) {
            Ok(p) => Check::Pattern(p),
            Err(e) => Check::Broken {
                shown: anchored_text(patterns),
                why: e.to_string(),
            },
        }
    }

    /// None when `value` passes; else the reason in PowerShell's words.
    pub(crate) fn failure(&self, param: &str, value: &str) -> Option<String> {
        let shown_value = show_value(value);
        match self {
            Check::Set(set) => {
                if set.iter().any(|s| eq_simple_fold(s, value)) {
                    None
                } else {
                    Some(format!(
                        "Cannot validate argument on parameter '{param}'. The argument \"{shown_value}\" does not belong to the set \"{}\" specified by the ValidateSet attribute. Supply an argument that is in the set and then try the command again.",
                        set.join(",")
                    ))
                }
            }
            Check::Pattern(p) => {
                if p.is_match(value) {
                    None
                } else {
                    let shown = anchored_text(p.sources());
                    Some(format!(
                        "Cannot validate argument on parameter '{param}'. The argument \"{shown_value}\" does not match the \"{shown}\" pattern. Supply an argument that matches \"{shown}\" and try the command again."
                    ))
                }
            }
            Check::Broken { shown, why } => Some(format!(
                "Cannot validate argument on parameter '{param}'. The pattern \"{shown}\" is not usable ({why}); every value is refused until the role capability is fixed."
            )),
            Check::NoLeadingDash => begins_with_dash(value).then(|| format!(
                "Cannot validate argument on parameter '{param}'. The argument \"{shown_value}\" begins with '-', which the program would read as an option. Supply a value that does not begin with '-' (the role capability can set allow_leading_dash = true on this parameter)."
            )),
        }
    }
}

/// What an application (external command) accepts as arguments.
#[derive(Debug, Clone)]
pub(crate) enum ArgumentPolicy {
    /// The entry lists no `arguments`: the program takes none.
    NoArguments,
    /// Each argument must fully match one pattern (case-sensitive).
    Patterns(AnchoredPattern),
    /// The patterns could not be compiled: every argument is refused.
    Broken(String),
}

impl ArgumentPolicy {
    pub(crate) fn new(patterns: &[String]) -> ArgumentPolicy {
        if patterns.is_empty() {
            return ArgumentPolicy::NoArguments;
        }
        match AnchoredPattern::new(patterns, Case::Sensitive) {
            Ok(p) => ArgumentPolicy::Patterns(p),
            Err(e) => ArgumentPolicy::Broken(e.to_string()),
        }
    }

    /// None when `arg` is allowed; else why not (for the refusal message).
    pub(crate) fn refusal(&self, arg: &str) -> Option<String> {
        match self {
            ArgumentPolicy::NoArguments => {
                Some("this program takes no arguments in this session".to_string())
            }
            ArgumentPolicy::Patterns(p) if p.is_match(arg) => None,
            ArgumentPolicy::Patterns(_) => Some(
                "it does not fully match any argument pattern the role capability allows"
                    .to_string(),
            ),
            ArgumentPolicy::Broken(why) => Some(format!(
                "the role capability's argument patterns are not usable ({why})"
            )),
        }
    }
}

/// A value as shown back in a message: control and invisible characters escaped, length capped.
pub(crate) fn show_value(v: &str) -> String {
    let mut out = String::new();
    for (i, c) in v.chars().enumerate() {
        if i >= MAX_SHOWN_VALUE {
            out.push('…');
            break;
        }
        let invisible = c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{00AD}');
        if invisible {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// A parameter as this session sees it.
#[derive(Debug, Clone)]
pub(crate) struct ParamSpec {
    pub decl: ParamDecl,
    pub checks: Vec<Check>,
}

/// One command of the table.
#[derive(Clone)]
pub(crate) struct Entry {
    /// The declaration with only the granted parameters.
    pub decl: CommandDecl,
    pub params: Vec<ParamSpec>,
    pub cmd: Arc<dyn Command>,
    /// Applications: what their arguments may be.
    pub arguments: Option<ArgumentPolicy>,
}

impl Entry {
    pub(crate) fn param(&self, canonical: &str) -> Option<&ParamSpec> {
        self.params
            .iter()
            .find(|p| p.decl.name.eq_ignore_ascii_case(canonical))
    }
}

pub(crate) struct CommandTable {
    /// Shared: a line's stages hold the entry without copying its declaration and checks.
    pub entries: Vec<Arc<Entry>>,
    /// (alias as written, index of the target entry).
    pub aliases: Vec<(String, usize)>,
    pub visible: Vec<VisibleCommand>,
}

pub(crate) fn apply_grant(cmd: Arc<dyn Command>, grant: &ParamsGrant) -> Entry {
    let mut decl = cmd.decl().clone();
    let mut params = Vec::new();
    for p in &decl.params {
        let mut checks = Vec::new();
        if !p.set.is_empty() {
            checks.push(Check::set(&p.set));
        }
        if !p.patterns.is_empty() {
            checks.push(Check::patterns(&p.patterns, Case::AsciiInsensitive));
        }
        if p.no_leading_dash {
            checks.push(Check::NoLeadingDash);
        }
        let mut shown = p.clone();
        match grant {
            ParamsGrant::All => {}
            ParamsGrant::Only(map) => {
                let Some(g) = map.get(&p.name.to_lowercase()) else {
                    continue;
                };
                match &g.constraint {
                    ValueConstraint::Any => {}
                    ValueConstraint::Set(values) => {
                        checks.push(Check::set(values));
                        shown.set = if shown.set.is_empty() {
                            values.clone()
                        } else {
                            shown
                                .set
                                .iter()
                                .filter(|v| values.iter().any(|w| eq_simple_fold(w, v)))
                                .cloned()
                                .collect()
                        };
                    }
                    ValueConstraint::Patterns(pats) => {
                        checks.push(Check::patterns(pats, Case::AsciiInsensitive));
                        shown.patterns.extend(pats.iter().cloned());
                    }
                }
            }
        }
        params.push(ParamSpec {
            decl: shown,
            checks,
        });
    }
    decl.params = params.iter().map(|p| p.decl.clone()).collect();
    Entry {
        decl,
        params,
        cmd,
        arguments: None,
    }
}

impl CommandTable {
    pub(crate) fn build(
        cap: &EffectiveCapability,
        session_type: SessionType,
        source: &dyn CommandSource,
    ) -> CommandTable {
        let mut entries: Vec<Entry> = Vec::new();
        let push = |e: Entry, entries: &mut Vec<Entry>| {
            if !entries.iter().any(|x| {
                x.decl.name.eq_ignore_ascii_case(&e.decl.name) && x.decl.path == e.decl.path
            }) {
                entries.push(e);
            }
        };
        if session_type == SessionType::RestrictedRemoteServer {
            for name in catalog::RESTRICTED_DEFAULTS {
                // The defaults are fixed, as JEA's proxies are: a role grant of the same name
                // (possibly constrained) is ignored here (`push` keeps the first entry), so
                // implicit remoting and Exit-PSSession always work.
                if let Some(c) = source.builtin(name) {
                    push(apply_grant(c, &ParamsGrant::All), &mut entries);
                }
            }
        }
        for g in cap.cmdlets.values() {
            if catalog::is_never_provided(&g.name) {
                continue;
            }
            if let Some(c) = source.builtin(&g.name) {
                push(apply_grant(c, &g.params), &mut entries);
            }
        }
        for f in cap.functions.values() {
            if catalog::is_never_provided(&f.function.name) {
                continue;
            }
            let c = source.function(&f.function);
            push(apply_grant(c, &f.params), &mut entries);
        }
        for x in cap.external.values() {
            let c = source.external(&x.def);
            let mut e = apply_grant(c, &ParamsGrant::All);
            e.decl.kind = CommandKind::Application;
            if e.decl.path.is_none() {
                e.decl.path = Some(x.def.path.clone());
            }
            e.arguments = Some(ArgumentPolicy::new(&x.def.arguments));
            push(e, &mut entries);
        }
        let mut aliases: Vec<(String, usize)> = Vec::new();
        let find = |entries: &[Entry], target: &str| {
            entries
                .iter()
                .position(|e| e.decl.name.eq_ignore_ascii_case(target))
        };
        if session_type == SessionType::RestrictedRemoteServer {
            for d in catalog::DEFAULT_ALIASES {
                if let Some(i) = find(&entries, d.target) {
                    aliases.push((d.alias.to_string(), i));
                }
            }
        }
        for grant in cap.aliases.values() {
            let shown = grant.alias.clone();
            if catalog::is_never_provided(&shown)
                || aliases.iter().any(|(a, _)| a.eq_ignore_ascii_case(&shown))
            {
                continue;
            }
            if let Some(i) = find(&entries, &grant.target) {
                if !entries
                    .iter()
                    .any(|e| e.decl.name.eq_ignore_ascii_case(&shown))
                {
                    aliases.push((shown, i));
                }
            }
        }
        let mut visible: Vec<VisibleCommand> = entries
            .iter()
            .map(|e| VisibleCommand {
                decl: e.decl.clone(),
                resolved: None,
            })
            .collect();
        for (a, i) in &aliases {
            if let Some(e) = entries.get(*i) {
                let mut d = CommandDecl::cmdlet(a, &e.decl.module, &e.decl.synopsis);
                d.kind = CommandKind::Alias;
                d.params = e.decl.params.clone();
                visible.push(VisibleCommand {
                    decl: d,
                    resolved: Some(e.decl.name.clone()),
                });
            }
        }
        CommandTable {
            entries: entries.into_iter().map(Arc::new).collect(),
            aliases,
            visible,
        }
    }

    /// Resolve a command name as written (case-insensitive; aliases; applications by full path
    /// or file name). Module-qualified names are never resolved.
    pub(crate) fn lookup(&self, name: &str, column: Option<usize>) -> Result<&Arc<Entry>, Refusal> {
        let found = if name.contains('\\') || name.is_empty() {
            None
        } else {
            self.entries
                .iter()
                .find(|e| {
                    e.decl.kind != CommandKind::Application
                        && e.decl.name.eq_ignore_ascii_case(name)
                })
                .or_else(|| {
                    self.aliases
                        .iter()
                        .find(|(a, _)| a.eq_ignore_ascii_case(name))
                        .and_then(|(_, i)| self.entries.get(*i))
                })
                .or_else(|| {
                    self.entries.iter().find(|e| {
                        e.decl.kind == CommandKind::Application
                            && e.decl.path.as_deref().is_some_and(|p| {
                                p == name
                                    || (!name.contains('/') && p.rsplit('/').next() == Some(name))
                            })
                    })
                })
        };
        found.ok_or_else(|| Refusal {
            message: with_column(
                &format!(
                    "The term '{}' is not recognized as a name of a cmdlet, function, script file, or executable program. Check the spelling of the name, or if a path was included, verify that the path is correct and try again.",
                    show_value(name)
                ),
                column,
            ),
            id: "CommandNotFoundException".into(),
            category: ErrorCategory::ObjectNotFound,
            column,
        })
    }
}

/// Append the column to a refusal message.
pub(crate) fn with_column(msg: &str, column: Option<usize>) -> String {
    match column {
        Some(c) => format!("{msg} (at column {c})"),
        None => msg.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn check(c: &Check, v: &str, ok: bool) {
        assert_eq!(c.failure("Name", v).is_none(), ok, "value {v:?}");
    }

    #[test]
    fn set_is_case_insensitive_exact() {
        let c = Check::set(&["nginx".to_string(), "cups".to_string()]);
        check(&c, "nginx", true);
        check(&c, "NGINX", true);
        check(&c, "nginx ", false);
        check(&c, "nginx\n", false);
        check(&c, "ngin*", false);
        check(&c, "nginx\u{200B}", false);
        check(&c, "sshd", false);
        let m = c.failure("Name", "sshd").unwrap();
        assert!(
            m.contains("does not belong to the set \"nginx,cups\""),
            "{m}"
        );
    }

    #[test]
    fn patterns_are_anchored() {
        let c = Check::patterns(
            &["acme-[a-z]+".to_string(), "x".to_string()],
            Case::AsciiInsensitive,
        );
        check(&c, "acme-web", true);
        check(&c, "ACME-WEB", true);
        check(&c, "acme-web; rm", false);
        check(&c, "xx", false);
        check(&c, "x", true);
        let b = Check::patterns(&["(".to_string()], Case::AsciiInsensitive);
        check(&b, "(", false);
        // SPEC §2.3: ASCII letters only (issue 9 finding 9).
        let d = Check::patterns(
            &["/|/(srv|var)(/[a-z0-9_-]+)*".to_string()],
            Case::AsciiInsensitive,
        );
        check(&d, "/SRV/www", true);
        check(&d, "/\u{17F}rv", false);
        check(&d, "/var/\u{212A}", false);
    }

    #[test]
    fn set_folds_simply() {
        // SPEC §2.3: simple case folding of the exact characters (ſ folds to s).
        let c = Check::set(&["sshd".to_string()]);
        check(&c, "SSHD", true);
        check(&c, "\u{17F}\u{17F}hd", true);
        check(&c, "sshd\u{200B}", false);
        check(&c, "ssh", false);
    }

    #[test]
    fn argument_policy() {
        let none = ArgumentPolicy::new(&[]);
        assert!(none.refusal("").unwrap().contains("takes no arguments"));
        let p = ArgumentPolicy::new(&["blame".to_string(), "time".to_string()]);
        assert!(p.refusal("blame").is_none());
        assert!(p.refusal("BLAME").is_some(), "arguments are case-sensitive");
        assert!(p.refusal("blame x").is_some());
        let b = ArgumentPolicy::new(&["(".to_string()]);
        assert!(b.refusal("(").unwrap().contains("not usable"));
    }

    #[test]
    fn show_value_escapes_invisible() {
        assert_eq!(show_value("a\nb\u{200B}"), "a\\u{a}b\\u{200b}");
    }
}
