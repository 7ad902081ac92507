//! `capability` merges the role capabilities that apply to a user into one effective
//! capability (JEA's seven documented merge rules, SPEC §2.3).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::catalog::{BUILTIN_CMDLETS, DEFAULT_ALIASES};
use crate::config::{ExternalCommandDef, ResolvedFunction};
use crate::config::{
    ExternalCommandEntry, GroupCondition, GroupTree, LoadedCapability, LoadedConfig,
    LoadedEndpoint, ParameterConstraint, VisibleCommandEntry,
};
use crate::lang::fold::eq_simple_fold;
use crate::lang::wildcard::{self, Mode, Wildcard};

/// Constraint on a parameter's values after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueConstraint {
    /// Any value.
    Any,
    /// One of these (case-insensitive, simple case folding).
    Set(Vec<String>),
    /// Matches one of these patterns, each anchored to the whole value, case-insensitive.
    Patterns(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamGrant {
    /// As written in the role capability (display).
    pub name: String,
    pub constraint: ValueConstraint,
}

/// Which parameters of a granted command exist for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamsGrant {
    /// Every parameter of the command, unconstrained.
    All,
    /// Only these (plus the common parameters), keyed by lower-case name.
    Only(BTreeMap<String, ParamGrant>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandGrant {
    /// Canonical name of the built-in command (as keyhole spells it).
    pub name: String,
    pub params: ParamsGrant,
}

/// A visible alias after merging: `alias` (as written) resolves to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasGrant {
    pub alias: String,
    pub target: String,
}

/// A visible external command after merging.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalGrant {
    pub def: ExternalCommandDef,
}

/// What one user may run in one endpoint.
#[derive(Debug, Clone, Default)]
pub struct EffectiveCapability {
    /// Built-in cmdlets, keyed by lower-case name (wildcards already expanded).
    pub cmdlets: BTreeMap<String, CommandGrant>,
    /// Declared functions that are visible, keyed by lower-case name.
    pub functions: BTreeMap<String, FunctionGrant>,
    /// Keyed by absolute path.
    pub external: BTreeMap<String, ExternalGrant>,
    /// Visible aliases, keyed by lower-case alias.
    pub aliases: BTreeMap<String, AliasGrant>,
    /// The names of the role capabilities that were merged, for display.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FunctionGrant {
    pub function: ResolvedFunction,
    /// visible_functions may constrain a function's parameters as for cmdlets.
    pub params: ParamsGrant,
}

/// Gate 4 refused the caller (logged with the gate and reason; the client sees a generic 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gate {gate} refused: {reason}")]
pub struct GateRefusal {
    pub gate: u8,
    pub reason: String,
}

fn refuse(reason: String) -> GateRefusal {
    GateRefusal { gate: 4, reason }
}

fn in_groups(g: &str, groups: &[String]) -> bool {
    groups.iter().any(|x| x.eq_ignore_ascii_case(g))
}

/// Evaluate a `required_groups` tree against the caller's groups (case-insensitive).
pub fn groups_satisfy(cond: &GroupCondition, groups: &[String]) -> bool {
    match cond {
        GroupCondition::Group(g) => in_groups(g, groups),
        GroupCondition::Tree(GroupTree::And(v)) => v.iter().all(|c| groups_satisfy(c, groups)),
        GroupCondition::Tree(GroupTree::Or(v)) => {
            !v.is_empty() && v.iter().any(|c| groups_satisfy(c, groups))
        }
    }
}

/// Human-readable form of a `required_groups` tree: `staff and (smartcard or otp)`.
pub fn describe_condition(cond: &GroupCondition) -> String {
    match cond {
        GroupCondition::Group(g) => g.clone(),
        GroupCondition::Tree(GroupTree::And(v)) => join_cond(v, " and "),
        GroupCondition::Tree(GroupTree::Or(v)) => join_cond(v, " or "),
    }
}

fn join_cond(v: &[GroupCondition], sep: &str) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|c| match c {
            GroupCondition::Group(g) => g.clone(),
            other => format!("({})", describe_condition(other)),
        })
        .collect();
    parts.join(sep)
}

/// One role's grant of one command, before merging.
#[derive(Debug, Clone)]
struct RoleGrant {
    /// None: all parameters.
    params: Option<Vec<ParameterConstraint>>,
}

/// Merge the grants of one command from several roles (JEA's seven documented rules).
fn merge_grants(grants: &[RoleGrant]) -> ParamsGrant {
    // Rule 3 (second half): a role that lists no parameters allows all of them.
    if grants.iter().any(|g| g.params.is_none()) {
        return ParamsGrant::All;
    }
    // Per parameter: every constraint any role gives it, in order of appearance.
    let mut per: BTreeMap<String, (String, Vec<ValueConstraint>)> = BTreeMap::new();
    for g in grants {
        for p in g.params.iter().flatten() {
            let c = match (&p.validate_set, &p.validate_pattern) {
                // Validation refuses both in one entry; if it happens anyway the pattern wins (rule 7).
                (_, Some(pat)) => ValueConstraint::Patterns(vec![pat.clone()]),
                (Some(set), None) => ValueConstraint::Set(set.clone()),
                (None, None) => ValueConstraint::Any,
            };
            per.entry(p.name.to_lowercase())
                .or_insert_with(|| (p.name.clone(), Vec::new()))
                .1
                .push(c);
        }
    }
    let mut out = BTreeMap::new();
    for (key, (name, cs)) in per {
        let constraint = if cs.contains(&ValueConstraint::Any) {
            // Rule 4: an unconstrained grant drops the others' sets and patterns.
            ValueConstraint::Any
        } else if cs.iter().any(|c| matches!(c, ValueConstraint::Patterns(_))) {
            // Rules 6 and 7: patterns are alternatives; sets are ignored next to a pattern.
            let mut pats: Vec<String> = Vec::new();
            for c in &cs {
                if let ValueConstraint::Patterns(p) = c {
                    for x in p {
                        if !pats.contains(x) {
                            pats.push(x.clone());
                        }
                    }
                }
            }
            ValueConstraint::Patterns(pats)
        } else {
            // Rule 5: sets are unioned (case-insensitive; the first spelling is kept).
            let mut vals: Vec<String> = Vec::new();
            for c in &cs {
                if let ValueConstraint::Set(s) = c {
                    for v in s {
                        if !vals.iter().any(|x| eq_simple_fold(x, v)) {
                            vals.push(v.clone());
                        }
                    }
                }
            }
            ValueConstraint::Set(vals)
        };
        out.insert(key, ParamGrant { name, constraint });
    }
    ParamsGrant::Only(out)
}

fn entry_grant(e: &VisibleCommandEntry) -> RoleGrant {
    match e {
        VisibleCommandEntry::Name(_) => RoleGrant { params: None },
        VisibleCommandEntry::Constrained(c) => RoleGrant {
            params: c.parameters.clone(),
        },
    }
}

/// The role capabilities of `endpoint` that apply to `user` with `groups`, in role order
/// (each once), or the refusal.
pub fn applicable_roles<'a>(
    cfg: &'a LoadedConfig,
    endpoint: &LoadedEndpoint,
    user: &str,
    groups: &[String],
) -> Result<Vec<&'a LoadedCapability>, GateRefusal> {
    let ep = &endpoint.config;
    if let Some(req) = &ep.required_groups {
        if !groups_satisfy(req, groups) {
            return Err(refuse(format!(
                "required_groups not satisfied: needs {} (user {user} has groups: {})",
                describe_condition(req),
                if groups.is_empty() {
                    "none".to_string()
                } else {
                    groups.join(", ")
                }
            )));
        }
    }
    let mut caps: Vec<&LoadedCapability> = Vec::new();
    let mut any_role = false;
    for r in &ep.roles {
        let applies = r
            .user
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(user))
            || r.group.as_deref().is_some_and(|g| in_groups(g, groups));
        if !applies {
            continue;
        }
        any_role = true;
        for name in &r.role_capabilities {
            match cfg.capabilities.get(&name.to_lowercase()) {
                Some(c) => {
                    if !caps.iter().any(|x| x.name.eq_ignore_ascii_case(&c.name)) {
                        caps.push(c);
                    }
                }
                None => {
                    return Err(refuse(format!(
                        "role capability {name} of endpoint {} is not loaded",
                        ep.name
                    )));
                }
            }
        }
    }
    if !any_role {
        return Err(refuse(format!(
            "no role applies to user {user} in endpoint {}",
            ep.name
        )));
    }
    Ok(caps)
}

/// What `user` (member of `groups`) may run in `endpoint`: gate 4 (required_groups, roles) and
/// the merge of every applicable role capability.
pub fn effective_capability(
    cfg: &LoadedConfig,
    endpoint: &LoadedEndpoint,
    user: &str,
    groups: &[String],
) -> Result<EffectiveCapability, GateRefusal> {
    let caps = applicable_roles(cfg, endpoint, user, groups)?;
    Ok(merge(cfg, endpoint, &caps))
}

/// Merge the given role capabilities as seen from `endpoint` (functions and aliases resolve
/// against every capability the endpoint uses).
pub fn merge(
    cfg: &LoadedConfig,
    endpoint: &LoadedEndpoint,
    caps: &[&LoadedCapability],
) -> EffectiveCapability {
    // Everything the endpoint's capabilities declare (visible_functions resolve against these).
    let mut endpoint_caps: Vec<&LoadedCapability> = Vec::new();
    for r in &endpoint.config.roles {
        for n in &r.role_capabilities {
            if let Some(c) = cfg.capabilities.get(&n.to_lowercase()) {
                if !endpoint_caps.iter().any(|x| x.name == c.name) {
                    endpoint_caps.push(c);
                }
            }
        }
    }
    for c in caps {
        if !endpoint_caps.iter().any(|x| x.name == c.name) {
            endpoint_caps.push(c);
        }
    }
    let declared: Vec<&ResolvedFunction> = endpoint_caps
        .iter()
        .flat_map(|c| c.functions.iter())
        .collect();

    let mut cmd_grants: BTreeMap<String, (String, Vec<RoleGrant>)> = BTreeMap::new();
    let mut fn_grants: BTreeMap<String, (ResolvedFunction, Vec<RoleGrant>)> = BTreeMap::new();
    let mut out = EffectiveCapability {
        roles: caps.iter().map(|c| c.name.clone()).collect(),
        ..Default::default()
    };

    for cap in caps {
        let c = &cap.config;
        for e in &c.visible_cmdlets {
            let Ok(w) = Wildcard::new(e.name(), Mode::Name) else {
                continue;
            };
            for b in BUILTIN_CMDLETS.iter().filter(|b| w.is_match(b)) {
                cmd_grants
                    .entry(b.to_lowercase())
                    .or_insert_with(|| (b.to_string(), Vec::new()))
                    .1
                    .push(entry_grant(e));
            }
        }
        for e in &c.visible_functions {
            for f in declared
                .iter()
                .filter(|f| wildcard::matches(e.name(), &f.name, Mode::Name))
            {
                let key = f.name.to_lowercase();
                fn_grants
                    .entry(key)
                    .or_insert_with(|| ((*f).clone(), Vec::new()))
                    .1
                    .push(entry_grant(e));
            }
        }
        for e in &c.visible_external_commands {
            let def = match e {
                ExternalCommandEntry::Path(p) => crate::config::ExternalCommandDef {
                    path: p.clone(),
                    arguments: Vec::new(),
                    timeout: None,
                    capabilities: Vec::new(),
                    environment: BTreeMap::new(),
                    allow_unsafe: false,
                    synopsis: String::new(),
                },
                ExternalCommandEntry::Detailed(d) => d.clone(),
            };
            match out.external.get_mut(&def.path) {
                None => {
                    out.external.insert(def.path.clone(), ExternalGrant { def });
                }
                Some(g) => {
                    // Same program in several roles: the union of their argument patterns.
                    for a in def.arguments {
                        if !g.def.arguments.contains(&a) {
                            g.def.arguments.push(a);
                        }
                    }
                    for cp in def.capabilities {
                        if !g
                            .def
                            .capabilities
                            .iter()
                            .any(|x| x.eq_ignore_ascii_case(&cp))
                        {
                            g.def.capabilities.push(cp);
                        }
                    }
                    for (k, v) in def.environment {
                        g.def.environment.entry(k).or_insert(v);
                    }
                    g.def.timeout = match (g.def.timeout, def.timeout) {
                        (Some(a), Some(b)) => Some(if a.0 >= b.0 { a } else { b }),
                        _ => None,
                    };
                    if g.def.synopsis.is_empty() {
                        g.def.synopsis = def.synopsis;
                    }
                }
            }
        }
        for va in &c.visible_aliases {
            let defined = endpoint_caps
                .iter()
                .flat_map(|c| {
                    c.config.aliases.iter().map(|(a, t)| AliasGrant {
                        alias: a.clone(),
                        target: t.clone(),
                    })
                })
                .chain(DEFAULT_ALIASES.iter().map(|d| AliasGrant {
                    alias: d.alias.to_string(),
                    target: d.target.to_string(),
                }));
            for grant in defined {
                if wildcard::matches(va, &grant.alias, Mode::Name) {
                    out.aliases
                        .entry(grant.alias.to_lowercase())
                        .or_insert(grant);
                }
            }
        }
    }
    for (k, (name, grants)) in cmd_grants {
        out.cmdlets.insert(
            k,
            CommandGrant {
                name,
                params: merge_grants(&grants),
            },
        );
    }
    for (k, (function, grants)) in fn_grants {
        out.functions.insert(
            k,
            FunctionGrant {
                function,
                params: merge_grants(&grants),
            },
        );
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn p(name: &str, set: Option<&[&str]>, pat: Option<&str>) -> ParameterConstraint {
        ParameterConstraint {
            name: name.into(),
            validate_set: set.map(|s| s.iter().map(|x| x.to_string()).collect()),
            validate_pattern: pat.map(String::from),
        }
    }

    #[test]
    fn all_wins_and_sets_union() {
        let a = RoleGrant {
            params: Some(vec![p("Name", Some(&["a"]), None)]),
        };
        let b = RoleGrant {
            params: Some(vec![p("name", Some(&["A", "b"]), None)]),
        };
        let ParamsGrant::Only(m) = merge_grants(&[a.clone(), b]) else {
            panic!()
        };
        assert_eq!(
            m["name"].constraint,
            ValueConstraint::Set(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            merge_grants(&[a, RoleGrant { params: None }]),
            ParamsGrant::All
        );
    }

    #[test]
    fn group_trees() {
        let g = |s: &str| GroupCondition::Group(s.into());
        let t = GroupCondition::Tree(GroupTree::And(vec![
            g("staff"),
            GroupCondition::Tree(GroupTree::Or(vec![g("otp"), g("card")])),
        ]));
        assert!(groups_satisfy(&t, &["STAFF".into(), "card".into()]));
        assert!(!groups_satisfy(&t, &["staff".into()]));
        assert_eq!(describe_condition(&t), "staff and (otp or card)");
    }
}
