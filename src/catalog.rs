//! `catalog`: the names every layer agrees on, and nothing else — the cmdlets keyhole provides,
//! the restricted defaults, the default aliases, the names never provided (SPEC §4.3) and the
//! common parameters (SPEC §4.1). `config`, `capability` and `engine` read names here; the
//! commands themselves live in `commands`, which a test holds to exactly this list.
//!
//! The only import is `lang::wildcard` (the never-provided list holds name-mode wildcards).
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use crate::lang::wildcard::{Mode, Wildcard};

/// Every cmdlet keyhole itself provides; role capabilities may grant these (and wildcards in
/// `visible_cmdlets` match only these). The first eight are the restricted defaults.
pub const BUILTIN_CMDLETS: &[&str] = &[
    // restricted proxies (always present in restricted-remote-server sessions)
    "Get-Command",
    "Get-Help",
    "Get-FormatData",
    "Out-Default",
    "Exit-PSSession",
    "Clear-Host",
    "Select-Object",
    "Measure-Object",
    // object cmdlets
    "Where-Object",
    "Sort-Object",
    "Format-Table",
    "Format-List",
    "Out-String",
    "ConvertTo-Json",
    "Get-Date",
    "Get-Member",
    "Write-Output",
    // Linux system cmdlets
    "Get-Service",
    "Start-Service",
    "Stop-Service",
    "Restart-Service",
    "Get-Process",
    "Stop-Process",
    "Get-Uptime",
    "Get-Journal",
    "Get-Volume",
    "Get-NetTCPConnection",
    "Test-Connection",
];

/// The restricted proxies every `restricted-remote-server` session has (SPEC §4.2).
pub const RESTRICTED_DEFAULTS: &[&str] = &[
    "Get-Command",
    "Get-Help",
    "Get-FormatData",
    "Out-Default",
    "Exit-PSSession",
    "Clear-Host",
    "Select-Object",
    "Measure-Object",
];

/// An alias of every restricted-remote-server session (present when its target is visible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultAlias {
    pub alias: &'static str,
    pub target: &'static str,
}

/// Aliases present in every restricted-remote-server session (target must be visible).
pub const DEFAULT_ALIASES: &[DefaultAlias] = &[
    DefaultAlias {
        alias: "cls",
        target: "Clear-Host",
    },
    DefaultAlias {
        alias: "clear",
        target: "Clear-Host",
    },
    DefaultAlias {
        alias: "exsn",
        target: "Exit-PSSession",
    },
    DefaultAlias {
        alias: "gcm",
        target: "Get-Command",
    },
    DefaultAlias {
        alias: "measure",
        target: "Measure-Object",
    },
    DefaultAlias {
        alias: "select",
        target: "Select-Object",
    },
];

/// Names keyhole never provides, whatever a file says (SPEC §4.3); name-mode wildcards.
pub const NEVER_PROVIDED: &[&str] = &[
    "Import-Module",
    "ipmo",
    "Install-Module",
    "Add-PSSnapin",
    "*-Module",
    "*-PSSnapin",
    "*-Job",
    "Start-Process",
    "saps",
    "start",
    "Invoke-Expression",
    "iex",
    "Invoke-Command",
    "icm",
    "New-PSSession",
    "Enter-PSSession",
    "etsn",
    "*-PSSession",
    "Connect-PSSession",
    "Receive-PSSession",
    "Add-Type",
    "New-Object",
    "Trace-Command",
    "Set-PSDebug",
    "*-PSBreakpoint",
    "Debug-*",
    "Wait-Debugger",
    "Register-*Event",
    "*-PSDrive",
    "*-Item",
    "*-ItemProperty",
    "*-Content",
    "Set-Location",
    "Push-Location",
    "Pop-Location",
    "*-Variable",
    "Get-ChildItem",
    "*-PSProvider",
    "*-RunspaceDebug",
    "*-Runspace",
    "New-PSSessionConfigurationFile",
    "Register-PSSessionConfiguration",
    "Update-TypeData",
    "Remove-TypeData",
    "Update-FormatData",
    "*-TypeData",
    "Invoke-Item",
    "Invoke-RestMethod",
    "Invoke-WebRequest",
    "ForEach-Object",
    "%",
    "Invoke-Script",
];

/// True when `name` is never provided (SPEC §4.3), compared as command names are.
pub fn is_never_provided(name: &str) -> bool {
    // Compiled once per process: configuration validation asks this for every name.
    static COMPILED: OnceLock<Vec<Wildcard>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            NEVER_PROVIDED
                .iter()
                .filter_map(|p| Wildcard::new(p, Mode::Name).ok())
                .collect()
        })
        .iter()
        .any(|w| w.is_match(name))
}

/// What a common parameter does in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonUse {
    /// A switch (`-Verbose`, `-Debug`, `-WhatIf`, `-Confirm`).
    Switch,
    /// An ActionPreference (`-ErrorAction` and its siblings).
    Action,
    /// An integer with no effect here (`-OutBuffer`).
    Count,
    /// Sets a variable: refused, the session has none (NoLanguage).
    SetsVariable,
}

/// One of PowerShell's common parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonParameter {
    pub name: &'static str,
    pub alias: &'static str,
    pub use_: CommonUse,
    /// Only on commands that change state (`-WhatIf`, `-Confirm`).
    pub state_changing_only: bool,
}

impl CommonParameter {
    /// Accepted on a command (SPEC §4.1), as opposed to refused.
    pub fn accepted(&self) -> bool {
        self.use_ != CommonUse::SetsVariable
    }
}

const fn common(
    name: &'static str,
    alias: &'static str,
    use_: CommonUse,
    state_changing_only: bool,
) -> CommonParameter {
    CommonParameter {
        name,
        alias,
        use_,
        state_changing_only,
    }
}

/// PowerShell's common parameters (SPEC §4.1): every command accepts the first seven
/// (`-WhatIf`/`-Confirm` only on commands that change state) plus `-ProgressAction` and
/// `-OutBuffer`, which PowerShell accepts everywhere and which change nothing here; the five
/// variable-setting ones are refused with a message that says why.
pub const COMMON_PARAMETERS: &[CommonParameter] = &[
    common("Verbose", "vb", CommonUse::Switch, false),
    common("Debug", "db", CommonUse::Switch, false),
    common("ErrorAction", "ea", CommonUse::Action, false),
    common("WarningAction", "wa", CommonUse::Action, false),
    common("InformationAction", "infa", CommonUse::Action, false),
    common("ProgressAction", "proga", CommonUse::Action, false),
    common("ErrorVariable", "ev", CommonUse::SetsVariable, false),
    common("WarningVariable", "wv", CommonUse::SetsVariable, false),
    common("InformationVariable", "iv", CommonUse::SetsVariable, false),
    common("OutVariable", "ov", CommonUse::SetsVariable, false),
    common("OutBuffer", "ob", CommonUse::Count, false),
    common("PipelineVariable", "pv", CommonUse::SetsVariable, false),
    common("WhatIf", "wi", CommonUse::Switch, true),
    common("Confirm", "cf", CommonUse::Switch, true),
];

/// The common parameter named `name` (its name or alias, ASCII case-insensitive).
pub fn common_parameter(name: &str) -> Option<&'static CommonParameter> {
    COMMON_PARAMETERS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name) || c.alias.eq_ignore_ascii_case(name))
}

/// True when `name` is one of the cmdlets keyhole provides (ASCII case-insensitive).
pub fn is_builtin(name: &str) -> bool {
    BUILTIN_CMDLETS.iter().any(|b| b.eq_ignore_ascii_case(name))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_aliases_name_builtins() {
        for d in RESTRICTED_DEFAULTS {
            assert!(is_builtin(d), "{d}");
        }
        for a in DEFAULT_ALIASES {
            assert!(RESTRICTED_DEFAULTS.contains(&a.target), "{a:?}");
            assert!(!is_builtin(a.alias));
        }
        // Only Exit-PSSession (a restricted default, never granted by a role) matches a
        // never-provided wildcard (`*-PSSession`).
        let both: Vec<&str> = BUILTIN_CMDLETS
            .iter()
            .copied()
            .filter(|b| is_never_provided(b))
            .collect();
        assert_eq!(both, vec!["Exit-PSSession"]);
    }

    #[test]
    fn never_provided() {
        assert_eq!(
            NEVER_PROVIDED
                .iter()
                .filter(|p| Wildcard::new(p, Mode::Name).is_ok())
                .count(),
            NEVER_PROVIDED.len(),
            "every pattern compiles"
        );
        assert!(is_never_provided("invoke-expression"));
        assert!(is_never_provided("Start-Job"));
        assert!(is_never_provided("Register-ObjectEvent"));
        assert!(!is_never_provided("Get-Service"));
        // Name mode: ASCII case only, as the command table resolves names.
        assert!(!is_never_provided("Invo\u{212A}e-Expression"));
    }

    /// SPEC §4.1 names seven accepted and five refused common parameters; keyhole also
    /// accepts -ProgressAction and -OutBuffer (PowerShell's, no effect here).
    #[test]
    fn common_parameters_follow_spec() {
        let accepted: Vec<&str> = COMMON_PARAMETERS
            .iter()
            .filter(|c| c.accepted())
            .map(|c| c.name)
            .collect();
        for n in [
            "ErrorAction",
            "WarningAction",
            "InformationAction",
            "Verbose",
            "Debug",
            "WhatIf",
            "Confirm",
        ] {
            assert!(accepted.contains(&n), "{n}");
        }
        let refused: Vec<&str> = COMMON_PARAMETERS
            .iter()
            .filter(|c| !c.accepted())
            .map(|c| c.name)
            .collect();
        assert_eq!(
            refused,
            vec![
                "ErrorVariable",
                "WarningVariable",
                "InformationVariable",
                "OutVariable",
                "PipelineVariable"
            ]
        );
        assert_eq!(common_parameter("EA").map(|c| c.name), Some("ErrorAction"));
        assert_eq!(
            common_parameter("whatif").map(|c| c.state_changing_only),
            Some(true)
        );
    }
}
