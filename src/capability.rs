//! `capability` merges the role capabilities that apply to a user into one effective
//! capability (JEA's seven documented merge rules, SPEC §2.3).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::config::{ExternalCommandDef, ResolvedFunction};

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
    /// Visible aliases: lower-case alias → target command name.
    pub aliases: BTreeMap<String, (String, String)>,
    /// The names of the role capabilities that were merged, for display.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FunctionGrant {
    pub function: ResolvedFunction,
    /// visible_functions may constrain a function's parameters as for cmdlets.
    pub params: ParamsGrant,
}
