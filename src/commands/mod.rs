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

use std::sync::Arc;

use crate::engine::Command;

/// Every cmdlet keyhole itself provides; role capabilities may grant these (and wildcards match
/// only these). The restricted proxies are present in every restricted-remote-server session.
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

/// The restricted proxies every `restricted-remote-server` session has.
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

/// Aliases present in every restricted-remote-server session (target must be visible).
pub const DEFAULT_ALIASES: &[(&str, &str)] = &[
    ("cls", "Clear-Host"),
    ("clear", "Clear-Host"),
    ("exsn", "Exit-PSSession"),
    ("gcm", "Get-Command"),
    ("measure", "Measure-Object"),
    ("select", "Select-Object"),
];

/// Names keyhole never provides, whatever a file says (SPEC §4.3). Wildcards: `*` matches any run.
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

/// Every built-in command object.
pub fn all_builtins() -> Vec<Arc<dyn Command>> {
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

/// The built-in command of that name (case-insensitive).
pub fn builtin(name: &str) -> Option<Arc<dyn Command>> {
    all_builtins()
        .into_iter()
        .find(|c| c.decl().name.eq_ignore_ascii_case(name))
}

/// Case-insensitive wildcard match with `*` (any run) and `?` (one char); used for names.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        match (p.get(pi), t.get(ti)) {
            (Some('?'), Some(_)) => {
                pi += 1;
                ti += 1;
            }
            (Some('*'), _) => {
                star = Some(pi);
                mark = ti;
                pi += 1;
            }
            (Some(a), Some(b)) if a == b => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ti = mark;
                }
                None => return false,
            },
        }
    }
    while p.get(pi) == Some(&'*') {
        pi += 1;
    }
    pi == p.len()
}

/// True when `name` is never provided (SPEC §4.3).
pub fn is_never_provided(name: &str) -> bool {
    NEVER_PROVIDED.iter().any(|p| wildcard_match(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard() {
        assert!(wildcard_match("Get-*", "get-service"));
        assert!(wildcard_match("*-Job", "Start-Job"));
        assert!(!wildcard_match("Get-*", "Stop-Service"));
        assert!(wildcard_match("Register-*Event", "Register-ObjectEvent"));
        assert!(is_never_provided("invoke-expression"));
        assert!(!is_never_provided("Get-Service"));
    }
}
