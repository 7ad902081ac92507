//! `commands` are the built-ins, one file per family. Each declares its parameters once; help,
//! Get-Command, command metadata and binding all read that one declaration.
#![forbid(unsafe_code)]

pub mod journal;
pub mod network;
pub mod processes;
pub mod services;
pub mod system;

pub mod objects;
pub mod programs;
pub mod proxies;

use std::sync::{Arc, OnceLock};

use crate::config::{ExternalCommandDef, ResolvedFunction};
use crate::engine::{BoundArgs, Command, CommandSource};
use crate::lang::wildcard::{self, Mode};

/// One name a Linux cmdlet filters on (a service, process, mount point, address): a wildcard
/// pattern ([`Mode::Name`]), or the exact name when the engine marked the parameter literal —
/// its values passed a set or pattern ([`BoundArgs::literal`]). A value validated against the
/// pattern `ng.nx` may be `ng*nx`; read as a wildcard it would reach units the constraint
/// never allowed, so it is only ever the name `ng*nx` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameFilter {
    pub text: String,
    pub literal: bool,
}

impl NameFilter {
    /// An exact name (ASCII case-insensitive, as names are matched).
    pub fn exact(text: impl Into<String>) -> NameFilter {
        NameFilter {
            text: text.into(),
            literal: true,
        }
    }

    /// Does `name` match?
    pub fn matches(&self, name: &str) -> bool {
        if self.literal {
            self.text.eq_ignore_ascii_case(name)
        } else {
            wildcard::matches(&self.text, name, Mode::Name)
        }
    }

    /// Is it a pattern that may match several names (so matching none is not an error)?
    pub fn has_wildcards(&self) -> bool {
        !self.literal && wildcard::has_wildcards(&self.text, Mode::Name)
    }
}

/// The values of string[] parameter `param` as name filters (literal when it is constrained).
pub(crate) fn name_filters(args: &BoundArgs, param: &str) -> Vec<NameFilter> {
    let literal = args.is_literal(param);
    args.strings(param)
        .into_iter()
        .map(|text| NameFilter { text, literal })
        .collect()
}

/// Every built-in command object, built anew (the catalogue's cmdlets, in family order).
fn build_all() -> Vec<Arc<dyn Command>> {
    let mut v: Vec<Arc<dyn Command>> = Vec::new();
    v.extend(proxies::commands());
    v.extend(objects::commands());
    v.extend(services::commands());
    v.extend(processes::commands());
    v.extend(journal::commands());
    v.extend(system::commands());
    v.extend(network::commands());
    v
}

/// The built-ins, built once per process, and the constructors of declared commands: what
/// every session's command table is built from.
pub struct Builtins {
    all: Vec<Arc<dyn Command>>,
}

impl CommandSource for Builtins {
    fn builtin(&self, name: &str) -> Option<Arc<dyn Command>> {
        self.all
            .iter()
            .find(|c| c.decl().name.eq_ignore_ascii_case(name))
            .cloned()
    }
    fn builtins(&self) -> &[Arc<dyn Command>] {
        &self.all
    }
    fn function(&self, f: &ResolvedFunction) -> Arc<dyn Command> {
        programs::function_command(f)
    }
    fn external(&self, def: &ExternalCommandDef) -> Arc<dyn Command> {
        programs::external_command(def)
    }
}

/// The process's command source (the built-ins are built on first use, then shared).
pub fn source() -> Arc<dyn CommandSource> {
    static BUILTINS: OnceLock<Arc<Builtins>> = OnceLock::new();
    let b = BUILTINS.get_or_init(|| Arc::new(Builtins { all: build_all() }));
    Arc::clone(b) as Arc<dyn CommandSource>
}

/// The built-in command of that name (case-insensitive), from [`source`].
pub fn builtin(name: &str) -> Option<Arc<dyn Command>> {
    source().builtin(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::catalog;

    /// Every catalogue name has exactly one built-in declaration here, and every built-in is in
    /// the catalogue: the names other layers read are the commands that exist.
    #[test]
    fn catalogue_and_builtins_agree() {
        let all = build_all();
        for name in catalog::BUILTIN_CMDLETS {
            let n = all
                .iter()
                .filter(|c| c.decl().name.eq_ignore_ascii_case(name))
                .count();
            assert_eq!(n, 1, "{name} is declared {n} times");
        }
        for c in &all {
            assert!(
                catalog::BUILTIN_CMDLETS.contains(&c.decl().name.as_str()),
                "{} is not in the catalogue (or is spelled differently)",
                c.decl().name
            );
        }
        assert_eq!(all.len(), catalog::BUILTIN_CMDLETS.len());
    }

    /// Every parameter a built-in reads by literal name (`args.strings("Name")` and the other
    /// `BoundArgs` accessors) is declared by a built-in of the same family file: a misspelt or
    /// undeclared name would silently read nothing. Reads through a variable are not seen here;
    /// the families read by literal name (ARCHITECTURE.md, "Parameters").
    #[test]
    fn every_literal_parameter_read_is_declared() {
        type Family = (&'static str, &'static str, Vec<Arc<dyn Command>>);
        let families: Vec<Family> = vec![
            (
                "proxies.rs",
                include_str!("proxies.rs"),
                proxies::commands(),
            ),
            (
                "objects.rs",
                include_str!("objects.rs"),
                objects::commands(),
            ),
            (
                "services.rs",
                include_str!("services.rs"),
                services::commands(),
            ),
            (
                "processes.rs",
                include_str!("processes.rs"),
                processes::commands(),
            ),
            (
                "journal.rs",
                include_str!("journal.rs"),
                journal::commands(),
            ),
            ("system.rs", include_str!("system.rs"), system::commands()),
            (
                "network.rs",
                include_str!("network.rs"),
                network::commands(),
            ),
        ];
        let accessor = regex::Regex::new(
            r#"(?:\.(?:strings|string|switch|int|ints|has|is_literal)\(|\bargs\s*\.\s*get\(|\bname_filters\(\s*\w+\s*,)\s*"([A-Za-z]+)"\s*\)"#,
        )
        .unwrap();
        let mut reads = 0;
        let mut undeclared = Vec::new();
        for (file, src, cmds) in &families {
            // The tests of a file may read what they like.
            let body = src.split("#[cfg(test)]").next().unwrap();
            for cap in accessor.captures_iter(body) {
                let name = &cap[1];
                reads += 1;
                let declared = cmds.iter().any(|c| {
                    c.decl()
                        .params
                        .iter()
                        .any(|p| p.name == name || p.aliases.iter().any(|a| a == name))
                });
                if !declared {
                    undeclared.push(format!("{file}: {}", &cap[0]));
                }
            }
        }
        assert!(
            undeclared.is_empty(),
            "reads of undeclared parameters: {undeclared:#?}"
        );
        assert!(
            reads >= 70,
            "only {reads} literal reads found: has the accessor changed?"
        );
    }

    #[test]
    fn built_once() {
        let a = source().builtin("Get-Service").unwrap();
        let b = source().builtin("get-service").unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "the same object: built once, not per lookup"
        );
    }
}
