//! systemd services as PowerShell's `Get-Service`, `Start-Service`, `Stop-Service` and
//! `Restart-Service` see them: `System.ServiceProcess.ServiceController` objects from
//! `systemctl show`, and state changes through `systemctl start|stop|restart`, every call run
//! through the sandbox as the endpoint's `run_as`.
//!
//! Changing services as an unprivileged `run_as` needs systemd's permission: a polkit rule
//! granting `org.freedesktop.systemd1.manage-units` for the named units to that account, or
//! `run_as = "root"` on an endpoint whose roles only grant those commands. systemctl asks systemd
//! over D-Bus and systemd asks polkit (details `unit` = the unit id passed below, `verb` = the
//! verb of [`STATE_CHANGES`]), so this works under no-new-privs with no capability kept.
//! `keyhole polkit --write` generates that rule from the roles (`src/polkit.rs`).
//!
//! Without such a rule systemctl fails with "Access denied" / "Interactive authentication
//! required" and the cmdlet writes that as an error record (`--no-ask-password` is always given,
//! so nothing waits for a password).
#![forbid(unsafe_code)]
// The engine's Invocation interface returns ErrorRecord by value; helpers follow it.
#![allow(clippy::result_large_err)]

use super::{name_filters, NameFilter};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::system::{
    enum_value, find_program, program_said, run_program, termination_text, typed_object,
    with_pattern, FnCommand, MODULE,
};
use crate::engine::{
    BoundArgs, Command, CommandDecl, Ctx, ErrorCategory, ErrorRecord, Event, ParamDecl, ParamType,
    Value,
};
use crate::sandbox::Termination;

/// Most services Get-Service handles in one call.
pub const MAX_SERVICES: usize = 10_000;
/// Units per `systemctl show` call.
const SHOW_BATCH: usize = 200;
/// Most lines read from one systemctl output.
const MAX_LINES: usize = 200_000;

/// Service names: systemd unit name characters and PowerShell wildcards; never a leading dash.
pub const SERVICE_NAME_PATTERN: &str = r"^[A-Za-z0-9@:_.\\*?][A-Za-z0-9@:_.\\*?-]{0,254}$";
/// The state-changing cmdlets and the systemctl verb each runs; systemd hands polkit the same
/// verb (`keyhole polkit` reads this table).
pub const STATE_CHANGES: &[(&str, &str)] = &[
    ("Start-Service", "start"),
    ("Stop-Service", "stop"),
    ("Restart-Service", "restart"),
];

const STATUS_TYPE: &str = "System.ServiceProcess.ServiceControllerStatus";
const START_TYPE: &str = "System.ServiceProcess.ServiceStartMode";
const SHOW_PROPS: &str =
    "--property=Id,Description,LoadState,ActiveState,SubState,UnitFileState,MainPID";

/// One service as `systemctl show` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitInfo {
    pub id: String,
    pub description: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub unit_file_state: String,
    pub main_pid: i64,
}

impl UnitInfo {
    /// The service name PowerShell users see: the unit id without `.service`.
    pub fn name(&self) -> &str {
        self.id.strip_suffix(".service").unwrap_or(&self.id)
    }
    /// Does the unit exist (loaded, or known to systemd in some state)?
    pub fn exists(&self) -> bool {
        let gone =
            self.load_state == "not-found" && matches!(self.active_state.as_str(), "inactive" | "");
        !self.id.is_empty() && !gone
    }
}

/// Parse `systemctl show` output: blocks of `Key=Value` lines separated by blank lines.
pub fn parse_show(text: &str) -> Vec<UnitInfo> {
    let mut units = Vec::new();
    let mut cur = UnitInfo::default();
    let mut any = false;
    for line in text.lines().take(MAX_LINES) {
        if line.trim().is_empty() {
            if any {
                units.push(std::mem::take(&mut cur));
                any = false;
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        any = true;
        let v = v.to_string();
        match k {
            "Id" => cur.id = v,
            "Description" => cur.description = v,
            "LoadState" => cur.load_state = v,
            "ActiveState" => cur.active_state = v,
            "SubState" => cur.sub_state = v,
            "UnitFileState" => cur.unit_file_state = v,
            "MainPID" => cur.main_pid = v.trim().parse().unwrap_or(0),
            _ => {}
        }
        if units.len() >= MAX_SERVICES {
            break;
        }
    }
    if any && units.len() < MAX_SERVICES {
        units.push(cur);
    }
    units
}

/// Unit names from `systemctl list-units --plain --no-legend` or `list-unit-files --no-legend`:
/// the first column of each line, service units only, templates (`x@.service`) left out.
pub fn parse_unit_list(text: &str) -> Vec<String> {
    text.lines()
        .take(MAX_LINES)
        .filter_map(|l| {
            // list-units may prefix a failed unit with a bullet ("●") when --plain is missing.
            let first = l.split_whitespace().find(|w| *w != "●" && *w != "*")?;
            (first.ends_with(".service") && !first.ends_with("@.service"))
                .then(|| first.to_string())
        })
        .collect()
}

/// PowerShell's ServiceControllerStatus for a systemd ActiveState.
pub fn status_of(active_state: &str) -> (&'static str, i64) {
    match active_state {
        "active" | "reloading" | "refreshing" => ("Running", 4),
        "activating" => ("StartPending", 2),
        "deactivating" => ("StopPending", 3),
        _ => ("Stopped", 1),
    }
}

/// PowerShell's ServiceStartMode for a systemd UnitFileState.
pub fn start_type_of(unit_file_state: &str) -> (&'static str, i64) {
    match unit_file_state {
        "enabled" | "enabled-runtime" | "alias" => ("Automatic", 2),
        "disabled" | "masked" | "masked-runtime" | "bad" => ("Disabled", 4),
        _ => ("Manual", 3),
    }
}

/// The ServiceController object for a unit.
pub fn service_object(u: &UnitInfo) -> Value {
    let mut o = typed_object(&[
        "System.ServiceProcess.ServiceController",
        "System.ComponentModel.Component",
        "System.MarshalByRefObject",
    ]);
    let (sname, sval) = status_of(&u.active_state);
    let (tname, tval) = start_type_of(&u.unit_file_state);
    o.push("Name", u.name());
    o.push("DisplayName", u.description.as_str());
    o.push("Status", enum_value(STATUS_TYPE, sname, sval));
    o.push("StartType", enum_value(START_TYPE, tname, tval));
    o.push("ServiceName", u.name());
    o.push("CanStop", sval == 4);
    // ServiceController's other flags: systemd units are never paused; "." is this machine.
    o.push("CanPauseAndContinue", false);
    o.push("CanShutdown", false);
    o.push("MachineName", ".");
    o.push("UnitName", u.id.as_str());
    o.push("ActiveState", u.active_state.as_str());
    o.push("SubState", u.sub_state.as_str());
    o.push("UnitFileState", u.unit_file_state.as_str());
    o.push("MainPID", u.main_pid);
    o.display = vec!["Status".into(), "Name".into(), "DisplayName".into()];
    o.to_string = Some("System.ServiceProcess.ServiceController".into());
    o.into_value()
}

#[cfg(test)]
thread_local! {
    /// Unit tests point this at a fake systemctl (a fixture script); never set outside tests.
    static FAKE_SYSTEMCTL: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

fn systemctl() -> Option<PathBuf> {
    #[cfg(test)]
    if let Some(p) = FAKE_SYSTEMCTL.with(|f| f.borrow().clone()) {
        return Some(p);
    }
    find_program(&["/usr/bin/systemctl", "/bin/systemctl"])
}

/// The unit id systemctl is given for a service name.
fn unit_id(name: &str) -> String {
    if name.ends_with(".service") {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

fn manager_error(cmd: &str, ps_cmd: &str, what: &str) -> ErrorRecord {
    ErrorRecord::new(
        format!("{cmd}: the service manager is not available on this host: {what}"),
        format!("ServiceManagerUnavailable,Microsoft.PowerShell.Commands.{ps_cmd}"),
        ErrorCategory::ResourceUnavailable,
    )
}

/// Run systemctl with `args`; non-zero exit is an error naming what systemctl said.
fn systemctl_output(
    ctx: &mut Ctx<'_>,
    cmd: &str,
    ps_cmd: &str,
    args: Vec<String>,
) -> Result<String, ErrorRecord> {
    let prog = systemctl().ok_or_else(|| {
        manager_error(
            cmd,
            ps_cmd,
            "systemctl is not installed (/usr/bin/systemctl)",
        )
    })?;
    let res = run_program(ctx, cmd, &prog, args, Vec::new())?;
    if res.termination != Termination::Exited(0) {
        return Err(manager_error(
            cmd,
            ps_cmd,
            &format!(
                "systemctl {}: {}",
                termination_text(res.termination),
                program_said(&res)
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&res.stdout).into_owned())
}

/// `systemctl show` for these unit ids, in batches.
fn show_units(
    ctx: &mut Ctx<'_>,
    cmd: &str,
    ps_cmd: &str,
    ids: &[String],
) -> Result<Vec<UnitInfo>, ErrorRecord> {
    let mut out = Vec::new();
    for chunk in ids.chunks(SHOW_BATCH) {
        if ctx.cancelled() {
            break;
        }
        let mut args = vec![
            "show".to_string(),
            "--no-pager".to_string(),
            SHOW_PROPS.to_string(),
            "--".to_string(),
        ];
        args.extend(chunk.iter().cloned());
        let text = systemctl_output(ctx, cmd, ps_cmd, args)?;
        out.extend(parse_show(&text));
    }
    Ok(out)
}

/// Every service unit systemd knows (loaded units and installed unit files), described.
fn all_units(ctx: &mut Ctx<'_>, cmd: &str, ps_cmd: &str) -> Result<Vec<UnitInfo>, ErrorRecord> {
    let loaded = systemctl_output(
        ctx,
        cmd,
        ps_cmd,
        [
            "list-units",
            "--type=service",
            "--all",
            "--no-pager",
            "--plain",
            "--no-legend",
        ]
        .map(String::from)
        .to_vec(),
    )?;
    let files = systemctl_output(
        ctx,
        cmd,
        ps_cmd,
        [
            "list-unit-files",
            "--type=service",
            "--no-pager",
            "--no-legend",
        ]
        .map(String::from)
        .to_vec(),
    )?;
    let mut ids: Vec<String> = parse_unit_list(&loaded);
    ids.extend(parse_unit_list(&files));
    ids.sort();
    ids.dedup();
    ids.truncate(MAX_SERVICES);
    let units = show_units(ctx, cmd, ps_cmd, &ids)?;
    // Aliases resolve to their target's Id: keep one object per real unit.
    let mut by_id: BTreeMap<String, UnitInfo> = BTreeMap::new();
    for u in units {
        if u.exists() {
            by_id.entry(u.id.clone()).or_insert(u);
        }
    }
    Ok(by_id.into_values().collect())
}

/// Resolve Get-Service style -Name/-DisplayName/-Include/-Exclude into units, writing the
/// PowerShell "cannot find" errors for literal names that match nothing.
fn select_units(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    names: Vec<NameFilter>,
    cmd: &str,
    ps_cmd: &str,
) -> Result<Vec<UnitInfo>, ErrorRecord> {
    // Each filter is a wildcard, or the exact name when the role constrained the parameter
    // (a value that passed `ng.nx` is never expanded as the wildcard `ng*nx`).
    let display = name_filters(args, "DisplayName");
    let include = name_filters(args, "Include");
    let exclude = name_filters(args, "Exclude");
    let literal_only =
        !names.is_empty() && display.is_empty() && names.iter().all(|n| !n.has_wildcards());
    let mut selected: Vec<UnitInfo> = Vec::new();
    if literal_only {
        let ids: Vec<String> = names.iter().map(|n| unit_id(&n.text)).collect();
        let units = show_units(ctx, cmd, ps_cmd, &ids)?;
        // Service names are case-insensitive in PowerShell but not in systemd: a name systemd
        // does not know exactly is looked up once more, case-insensitively, among all units.
        let mut all: Option<Vec<UnitInfo>> = None;
        for (n, u) in names
            .iter()
            .zip(units.iter().map(Some).chain(std::iter::repeat(None)))
        {
            match u {
                Some(u) if u.exists() => selected.push(u.clone()),
                _ => {
                    if all.is_none() {
                        all = Some(all_units(ctx, cmd, ps_cmd)?);
                    }
                    let found = all.iter().flatten().find(|a| {
                        a.name().eq_ignore_ascii_case(&n.text) || a.id.eq_ignore_ascii_case(&n.text)
                    });
                    match found {
                        Some(a) => selected.push(a.clone()),
                        None => not_found(ctx, ps_cmd, &n.text),
                    }
                }
            }
        }
    } else {
        let all = all_units(ctx, cmd, ps_cmd)?;
        let mut hit = vec![false; names.len()];
        for u in all {
            let name_hits: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, p)| p.matches(u.name()) || p.matches(&u.id))
                .map(|(i, _)| i)
                .collect();
            if !names.is_empty() && name_hits.is_empty() {
                continue;
            }
            for i in name_hits {
                if let Some(h) = hit.get_mut(i) {
                    *h = true;
                }
            }
            if !display.is_empty() && !display.iter().any(|p| p.matches(&u.description)) {
                continue;
            }
            selected.push(u);
        }
        for (n, h) in names.iter().zip(hit) {
            if !h && !n.has_wildcards() {
                not_found(ctx, ps_cmd, &n.text);
            }
        }
        if names.is_empty() {
            for d in &display {
                if !d.has_wildcards()
                    && !selected
                        .iter()
                        .any(|u| u.description.eq_ignore_ascii_case(&d.text))
                {
                    let d = &d.text;
                    ctx.write_error(
                        ErrorRecord::new(
                            format!("Cannot find any service with display name '{d}'."),
                            format!("NoServiceFoundForGivenDisplayName,Microsoft.PowerShell.Commands.{ps_cmd}"),
                            ErrorCategory::ObjectNotFound,
                        )
                        .target(d.as_str()),
                    );
                }
            }
        }
    }
    selected.retain(|u| {
        (include.is_empty() || include.iter().any(|p| p.matches(u.name())))
            && !exclude.iter().any(|p| p.matches(u.name()))
    });
    Ok(selected)
}

fn not_found(ctx: &mut Ctx<'_>, ps_cmd: &str, name: &str) {
    ctx.write_error(
        ErrorRecord::new(
            format!("Cannot find any service with service name '{name}'."),
            format!("NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.{ps_cmd}"),
            ErrorCategory::ObjectNotFound,
        )
        .target(name),
    );
}

fn get_service(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    let units = select_units(
        ctx,
        args,
        name_filters(args, "Name"),
        "Get-Service",
        "GetServiceCommand",
    )?;
    for u in &units {
        if ctx.cancelled() {
            break;
        }
        ctx.output(service_object(u));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }
    fn cmd(self) -> &'static str {
        match self {
            Action::Start => "Start-Service",
            Action::Stop => "Stop-Service",
            Action::Restart => "Restart-Service",
        }
    }
    fn ps_cmd(self) -> &'static str {
        match self {
            Action::Start => "StartServiceCommand",
            Action::Stop => "StopServiceCommand",
            Action::Restart => "RestartServiceCommand",
        }
    }
    fn error_id(self) -> &'static str {
        match self {
            Action::Start => "CouldNotStartService",
            Action::Stop => "CouldNotStopService",
            Action::Restart => "CouldNotRestartService",
        }
    }
}

/// -Name plus -InputObject: service objects give their Name, other values their text. Names
/// that are not service names are reported and left out.
fn names_with_input(ctx: &mut Ctx<'_>, args: &BoundArgs, ps_cmd: &str) -> Vec<NameFilter> {
    // Names from -InputObject (a service object's Name, or a value's text) are exact names.
    let mut names = name_filters(args, "Name");
    let items = match args.get("InputObject") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => vec![v.clone()],
    };
    let re = regex::Regex::new(SERVICE_NAME_PATTERN).ok();
    for it in items {
        let n = it
            .property("Name")
            .map(Value::to_ps_string)
            .unwrap_or_else(|| it.to_ps_string());
        if !re.as_ref().is_some_and(|r| r.is_match(&n)) {
            ctx.write_error(
                ErrorRecord::new(
                    format!("Cannot find any service with service name '{n}'."),
                    format!("NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.{ps_cmd}"),
                    ErrorCategory::ObjectNotFound,
                )
                .target(n.as_str()),
            );
            continue;
        }
        if !names.iter().any(|f| f.text == n) {
            names.push(NameFilter::exact(n));
        }
    }
    names
}

fn change_service(ctx: &mut Ctx<'_>, args: &BoundArgs, action: Action) -> Result<(), ErrorRecord> {
    let (cmd, ps_cmd) = (action.cmd(), action.ps_cmd());
    let names = names_with_input(ctx, args, ps_cmd);
    if names.is_empty() && args.strings("DisplayName").is_empty() {
        return Err(ErrorRecord::new(
            format!("{cmd}: give the service with -Name (or -DisplayName)"),
            format!("MissingServiceName,Microsoft.PowerShell.Commands.{ps_cmd}"),
            ErrorCategory::InvalidArgument,
        ));
    }
    let units = select_units(ctx, args, names, cmd, ps_cmd)?;
    for u in units {
        if ctx.cancelled() {
            break;
        }
        let target = format!("{} ({})", u.description, u.name());
        if args.switch("WhatIf") {
            ctx.events.event(Event::Information(format!(
                "What if: Performing the operation \"{cmd}\" on target \"{target}\"."
            )));
            continue;
        }
        let prog = systemctl().ok_or_else(|| {
            manager_error(
                cmd,
                ps_cmd,
                "systemctl is not installed (/usr/bin/systemctl)",
            )
        })?;
        ctx.verbose(format!(
            "Performing the operation \"{cmd}\" on target \"{target}\"."
        ));
        let argv = vec![
            action.verb().to_string(),
            "--no-ask-password".to_string(),
            "--".to_string(),
            u.id.clone(),
        ];
        let res = run_program(ctx, cmd, &prog, argv, Vec::new())?;
        if res.termination != Termination::Exited(0) {
            ctx.write_error(
                ErrorRecord::new(
                    format!(
                        "Service '{target}' cannot be {}ed: systemctl {} {}: {}",
                        if matches!(action, Action::Stop) {
                            "stopp"
                        } else {
                            action.verb()
                        },
                        action.verb(),
                        termination_text(res.termination),
                        program_said(&res)
                    ),
                    format!(
                        "{},Microsoft.PowerShell.Commands.{ps_cmd}",
                        action.error_id()
                    ),
                    ErrorCategory::OpenError,
                )
                .target(u.name()),
            );
            continue;
        }
        if args.switch("PassThru") {
            let now = show_units(ctx, cmd, ps_cmd, std::slice::from_ref(&u.id))?;
            match now.first() {
                Some(n) => ctx.output(service_object(n)),
                None => ctx.output(service_object(&u)),
            }
        }
    }
    Ok(())
}

fn start_service(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    change_service(ctx, args, Action::Start)
}
fn stop_service(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    change_service(ctx, args, Action::Stop)
}
fn restart_service(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    change_service(ctx, args, Action::Restart)
}

fn name_param(help: &str) -> ParamDecl {
    with_pattern(
        ParamDecl::new("Name", ParamType::StringArray)
            .position(0)
            .by_value()
            .by_property_name()
            .alias("ServiceName")
            .help(help),
        SERVICE_NAME_PATTERN,
    )
}

fn common_filters(d: CommandDecl) -> CommandDecl {
    d.param(
        ParamDecl::new("DisplayName", ParamType::StringArray)
            .help("Display names (unit descriptions) of the services; wildcards allowed."),
    )
    .param(
        ParamDecl::new("Include", ParamType::StringArray)
            .help("Only services whose name matches one of these; wildcards allowed."),
    )
    .param(
        ParamDecl::new("Exclude", ParamType::StringArray)
            .help("Leave out services whose name matches one of these; wildcards allowed."),
    )
}

fn change_decl(action: Action, synopsis: &str) -> CommandDecl {
    let d = CommandDecl::cmdlet(action.cmd(), MODULE, synopsis).param(name_param(
        "Names of the services (systemd units, with or without .service); wildcards allowed.",
    ));
    let mut d = common_filters(d)
        .param(
            ParamDecl::new("InputObject", ParamType::ObjectArray)
                .by_value()
                .help("Service objects (from Get-Service) to act on."),
        )
        .param(
            ParamDecl::new("Force", ParamType::Switch)
                .help("Accepted for compatibility; systemd handles dependent units itself."),
        )
        .param(
            ParamDecl::new("PassThru", ParamType::Switch)
                .help("Write the service object after the operation."),
        )
        .changes_state()
        .outputs("System.ServiceProcess.ServiceController");
    if matches!(action, Action::Start) {
        d.params.retain(|p| p.name != "Force");
    }
    d
}

/// Get-Service, Start-Service, Stop-Service, Restart-Service.
pub fn commands() -> Vec<Arc<dyn Command>> {
    let get = common_filters(
        CommandDecl::cmdlet("Get-Service", MODULE, "Gets the systemd services on the host.")
            .param(name_param("Names of the services to get (systemd units, with or without .service); wildcards allowed.")),
    )
    .outputs("System.ServiceProcess.ServiceController");
    vec![
        FnCommand::arc(get, get_service),
        FnCommand::arc(
            change_decl(
                Action::Start,
                "Starts one or more systemd services (systemctl start).",
            ),
            start_service,
        ),
        FnCommand::arc(
            change_decl(
                Action::Stop,
                "Stops one or more systemd services (systemctl stop).",
            ),
            stop_service,
        ),
        FnCommand::arc(
            change_decl(
                Action::Restart,
                "Stops and then starts one or more systemd services (systemctl restart).",
            ),
            restart_service,
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::commands::system::tests::{find, invoke};

    const SHOW: &str = "Id=ssh.service\nDescription=OpenBSD Secure Shell server\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=812\n\n\
Id=nosuch.service\nDescription=nosuch.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nMainPID=0\n\n\
Id=cron.service\nDescription=Regular background program processing daemon=with equals\nLoadState=loaded\nActiveState=failed\nSubState=failed\nUnitFileState=disabled\nMainPID=x\n";

    #[test]
    fn show_parser() {
        let u = parse_show(SHOW);
        assert_eq!(u.len(), 3);
        assert_eq!(u[0].name(), "ssh");
        assert_eq!(u[0].main_pid, 812);
        assert!(u[0].exists());
        assert!(!u[1].exists());
        assert_eq!(
            u[2].description,
            "Regular background program processing daemon=with equals"
        );
        assert_eq!(u[2].main_pid, 0);
        assert!(parse_show("").is_empty());
        assert!(parse_show("\n\nnonsense\n\n").is_empty());
    }

    #[test]
    fn objects() {
        let u = parse_show(SHOW);
        let v = service_object(&u[0]);
        assert_eq!(v.type_name(), "System.ServiceProcess.ServiceController");
        assert_eq!(v.property("Name"), Some(&Value::from("ssh")));
        assert_eq!(v.property("CanPauseAndContinue"), Some(&Value::Bool(false)));
        assert_eq!(v.property("MachineName"), Some(&Value::from(".")));
        assert_eq!(
            v.property("DisplayName"),
            Some(&Value::from("OpenBSD Secure Shell server"))
        );
        match v.property("Status") {
            Some(Value::Enum(e)) => {
                assert_eq!((e.name.as_str(), e.value), ("Running", 4));
                assert_eq!(e.type_names[0], STATUS_TYPE);
            }
            other => panic!("{other:?}"),
        }
        match v.property("StartType") {
            Some(Value::Enum(e)) => assert_eq!((e.name.as_str(), e.value), ("Automatic", 2)),
            other => panic!("{other:?}"),
        }
        let v = service_object(&u[2]);
        assert_eq!(
            v.property("Status").map(Value::to_ps_string).as_deref(),
            Some("Stopped")
        );
        assert_eq!(
            v.property("StartType").map(Value::to_ps_string).as_deref(),
            Some("Disabled")
        );
        if let Value::Object(o) = &v {
            assert_eq!(o.display, vec!["Status", "Name", "DisplayName"]);
        }
        assert_eq!(status_of("activating").0, "StartPending");
        assert_eq!(status_of("deactivating").0, "StopPending");
        assert_eq!(start_type_of("static").0, "Manual");
        assert_eq!(start_type_of("masked").0, "Disabled");
    }

    #[test]
    fn unit_lists() {
        let units = "ssh.service loaded active running OpenBSD Secure Shell server\n\
                     ● failed.service loaded failed failed Broken\n\
                     getty@tty1.service loaded active running Getty on tty1\n";
        assert_eq!(
            parse_unit_list(units),
            vec!["ssh.service", "failed.service", "getty@tty1.service"]
        );
        let files = "apt-daily.service                      static   -\nautovt@.service alias -\ndbus.socket static -\n\n";
        assert_eq!(parse_unit_list(files), vec!["apt-daily.service"]);
    }

    #[test]
    fn name_pattern() {
        let re = regex::Regex::new(SERVICE_NAME_PATTERN).unwrap();
        for ok in ["ssh", "getty@tty1.service", "sys*", "a?c", "dbus-broker"] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in ["-ssh", "--all", "a b", "x;y", "", "$(x)"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn decls() {
        let cmds = commands();
        let get = find(&cmds, "Get-Service");
        let n = get.decl().find_param("Name").unwrap();
        assert_eq!(n.position, Some(0));
        assert!(n.pipeline.by_value && n.pipeline.by_property_name);
        assert!(!get.decl().changes_state);
        for c in ["Start-Service", "Stop-Service", "Restart-Service"] {
            let d = find(&cmds, c);
            assert!(d.decl().changes_state, "{c}");
            assert!(d.decl().find_param("PassThru").is_some());
        }
    }

    /// A fake systemctl knowing ssh (alias sshd), cron (failed), nginx (disabled; start fails);
    /// start/stop/restart calls are logged to `calls` beside it.
    const FAKE: &str = r#"#!/bin/sh
dir=$(dirname "$0")
show() {
  case "$1" in
    ssh.service|sshd.service) printf 'Id=ssh.service\nDescription=OpenBSD Secure Shell server\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=812\n' ;;
    cron.service) printf 'Id=cron.service\nDescription=Regular background program processing daemon\nLoadState=loaded\nActiveState=failed\nSubState=failed\nUnitFileState=enabled\nMainPID=0\n' ;;
    nginx.service) printf 'Id=nginx.service\nDescription=A high performance web server\nLoadState=loaded\nActiveState=inactive\nSubState=dead\nUnitFileState=disabled\nMainPID=0\n' ;;
    *) printf 'Id=%s\nDescription=%s\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nMainPID=0\n' "$1" "$1" ;;
  esac
}
case "$1" in
  list-units) printf 'ssh.service loaded active running OpenBSD Secure Shell server\ncron.service loaded failed failed Cron\n' ;;
  list-unit-files) printf 'ssh.service enabled enabled\nsshd.service alias -\nnginx.service disabled enabled\ngetty@.service static -\n' ;;
  show)
    shift; shift; shift; shift
    first=1
    for u in "$@"; do
      [ $first = 1 ] || printf '\n'
      first=0
      show "$u"
    done ;;
  start|stop|restart)
    echo "$1 $2 $3 $4" >> "$dir/calls"
    if [ "$4" = nginx.service ]; then echo "Job for nginx.service failed." >&2; exit 1; fi ;;
  *) exit 2 ;;
esac
"#;

    fn with_fake<T>(f: impl FnOnce(&std::path::Path) -> T) -> T {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("systemctl");
        std::fs::write(&path, FAKE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        FAKE_SYSTEMCTL.with(|p| *p.borrow_mut() = Some(path));
        let r = f(dir.path());
        FAKE_SYSTEMCTL.with(|p| *p.borrow_mut() = None);
        r
    }

    fn names(out: &[Value]) -> Vec<String> {
        out.iter()
            .map(|v| v.property("Name").unwrap().to_ps_string())
            .collect()
    }

    fn errors(ev: &[Event]) -> Vec<&ErrorRecord> {
        ev.iter()
            .filter_map(|e| {
                if let Event::Error(r) = e {
                    Some(r)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn get_service_with_fake_systemctl() {
        with_fake(|_| {
            let cmds = commands();
            let get = find(&cmds, "Get-Service");
            // Everything: loaded units and unit files, alias folded into its target, template left out.
            let (out, ev) = invoke(&get, &BoundArgs::default(), vec![]);
            assert!(ev.is_empty(), "{ev:?}");
            assert_eq!(names(&out), vec!["cron", "nginx", "ssh"]);
            // Literal names, an alias, a case-insensitive name and a missing one.
            let mut a = BoundArgs::default();
            a.set(
                "Name",
                Value::Array(vec!["sshd".into(), "CRON".into(), "nosuch".into()]),
            );
            let (out, ev) = invoke(&get, &a, vec![]);
            assert_eq!(names(&out), vec!["ssh", "cron"]);
            let errs = errors(&ev);
            assert_eq!(errs.len(), 1);
            assert_eq!(
                errs[0].message,
                "Cannot find any service with service name 'nosuch'."
            );
            assert_eq!(
                errs[0].fully_qualified_error_id,
                "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand"
            );
            assert_eq!(errs[0].category, ErrorCategory::ObjectNotFound);
            // Wildcards, -Exclude, -DisplayName.
            let mut a = BoundArgs::default();
            a.set("Name", Value::from("*n*"));
            a.set("Exclude", Value::from("cron"));
            let (out, ev) = invoke(&get, &a, vec![]);
            assert!(ev.is_empty());
            assert_eq!(names(&out), vec!["nginx"]);
            let mut a = BoundArgs::default();
            a.set("DisplayName", Value::from("*web*"));
            let (out, _) = invoke(&get, &a, vec![]);
            assert_eq!(names(&out), vec!["nginx"]);
            assert_eq!(
                out[0].property("StartType").unwrap().to_ps_string(),
                "Disabled"
            );
            // A wildcard that matches nothing is silent.
            let mut a = BoundArgs::default();
            a.set("Name", Value::from("zz*"));
            let (out, ev) = invoke(&get, &a, vec![]);
            assert!(out.is_empty() && ev.is_empty());
        });
    }

    /// A value that passed the role's set or pattern is one name, never a wildcard: `n*x`
    /// (which the pattern `n.x` admits) restarts no `nginx`.
    #[test]
    fn constrained_names_are_never_expanded_as_wildcards() {
        with_fake(|dir| {
            let cmds = commands();
            let calls = || std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
            let mut a = BoundArgs::default();
            a.set("Name", Value::from("n*x"));
            // Unconstrained, it is a wildcard (as PowerShell has it).
            let (out, _) = invoke(&find(&cmds, "Get-Service"), &a, vec![]);
            assert_eq!(names(&out), vec!["nginx"]);
            // Constrained (the engine marks it), it is the name "n*x", which does not exist.
            a.mark_literal("Name");
            let (out, ev) = invoke(&find(&cmds, "Get-Service"), &a, vec![]);
            assert!(out.is_empty(), "{out:?}");
            assert_eq!(
                errors(&ev)[0].message,
                "Cannot find any service with service name 'n*x'."
            );
            let (_, ev) = invoke(&find(&cmds, "Restart-Service"), &a, vec![]);
            assert_eq!(
                calls(),
                "",
                "systemctl was asked to restart something: {ev:?}"
            );
            for p in ["DisplayName", "Include", "Exclude"] {
                let mut a = BoundArgs::default();
                a.set(p, Value::from("*"));
                a.mark_literal(p);
                let (out, _) = invoke(&find(&cmds, "Get-Service"), &a, vec![]);
                assert!(
                    p == "Exclude" && names(&out) == vec!["cron", "nginx", "ssh"]
                        || p != "Exclude" && out.is_empty(),
                    "-{p} '*' taken as a wildcard: {out:?}"
                );
            }
        });
    }

    #[test]
    fn change_service_with_fake_systemctl() {
        with_fake(|dir| {
            let cmds = commands();
            let calls = || std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
            // Restart by name with -PassThru.
            let mut a = BoundArgs::default();
            a.set("Name", Value::from("ssh"));
            a.set("PassThru", Value::Bool(true));
            let (out, ev) = invoke(&find(&cmds, "Restart-Service"), &a, vec![]);
            assert!(ev.iter().all(|e| !matches!(e, Event::Error(_))), "{ev:?}");
            assert_eq!(names(&out), vec!["ssh"]);
            assert_eq!(calls(), "restart --no-ask-password -- ssh.service\n");
            // -WhatIf runs nothing.
            let mut a = BoundArgs::default();
            a.set("Name", Value::from("cron"));
            a.set("WhatIf", Value::Bool(true));
            let (out, ev) = invoke(&find(&cmds, "Stop-Service"), &a, vec![]);
            assert!(out.is_empty());
            assert!(matches!(&ev[..], [Event::Information(m)] if m.starts_with("What if:")));
            assert_eq!(calls().lines().count(), 1);
            // A failing start is an error record carrying systemctl's message.
            let mut a = BoundArgs::default();
            a.set("Name", Value::from("nginx"));
            let (out, ev) = invoke(&find(&cmds, "Start-Service"), &a, vec![]);
            assert!(out.is_empty());
            let errs = errors(&ev);
            assert_eq!(errs.len(), 1);
            assert!(
                errs[0].message.contains("Job for nginx.service failed."),
                "{}",
                errs[0].message
            );
            assert_eq!(
                errs[0].fully_qualified_error_id,
                "CouldNotStartService,Microsoft.PowerShell.Commands.StartServiceCommand"
            );
            // Service objects through -InputObject; a bogus name never reaches systemctl.
            let (objs, _) = invoke(&find(&cmds, "Get-Service"), &BoundArgs::default(), vec![]);
            let mut a = BoundArgs::default();
            a.set(
                "InputObject",
                Value::Array(vec![objs[0].clone(), Value::from("--all")]),
            );
            let (_, ev) = invoke(&find(&cmds, "Stop-Service"), &a, vec![]);
            assert_eq!(errors(&ev).len(), 1);
            assert!(
                calls().ends_with("stop --no-ask-password -- cron.service\n"),
                "{}",
                calls()
            );
            assert!(!calls().contains("--all"));
        });
    }

    #[test]
    fn state_changes_table_matches_the_verbs_run() {
        for a in [Action::Start, Action::Stop, Action::Restart] {
            assert!(STATE_CHANGES.contains(&(a.cmd(), a.verb())), "{}", a.cmd());
        }
        assert_eq!(STATE_CHANGES.len(), 3);
    }

    #[test]
    fn change_without_name_is_an_error() {
        let cmds = commands();
        let (out, ev) = invoke(
            &find(&cmds, "Restart-Service"),
            &BoundArgs::default(),
            vec![],
        );
        assert!(out.is_empty());
        assert!(
            matches!(&ev[..], [Event::Error(e)] if e.category == ErrorCategory::InvalidArgument)
        );
    }
}
