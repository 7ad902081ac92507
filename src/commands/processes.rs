//! `Get-Process` (read from /proc directly, no program runs) and `Stop-Process` (`kill` run
//! through the sandbox as the endpoint's `run_as`, so it can only stop what that account may
//! signal). Objects are `System.Diagnostics.Process` with the properties PowerShell users know.
#![forbid(unsafe_code)]
// The engine's Invocation interface returns ErrorRecord by value; helpers follow it.
#![allow(clippy::result_large_err)]

use super::{name_filters, NameFilter};
use std::path::Path;
use std::sync::Arc;

use super::system::{
    find_program, local_time, program_said, read_bounded, run_program, termination_text,
    typed_object, FnCommand, MODULE,
};
use crate::engine::{
    BoundArgs, Command, CommandDecl, Ctx, ErrorCategory, ErrorRecord, ParamDecl, ParamType, Value,
};
use crate::sandbox::Termination;

/// Most processes read from /proc in one call.
pub const MAX_PROCESSES: usize = 65_536;
/// Clock ticks per second when /proc/self/auxv does not say (USER_HZ on nearly every arch).
const DEFAULT_CLK_TCK: u64 = 100;
/// auxv key for the clock tick rate.
const AT_CLKTCK: u64 = 17;

/// The fields of /proc/<pid>/stat keyhole uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i64,
    pub comm: String,
    pub state: char,
    pub ppid: i64,
    pub session: i64,
    pub utime: u64,
    pub stime: u64,
    pub priority: i64,
    pub nice: i64,
    pub threads: i64,
    pub start_ticks: u64,
    pub vsize: u64,
}

/// Parse /proc/<pid>/stat. The command name sits between the first `(` and the LAST `)`, since
/// it may itself contain spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid: i64 = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let num = |i: usize| -> Option<i64> { rest.get(i)?.parse().ok() };
    let unum = |i: usize| -> Option<u64> { rest.get(i)?.parse().ok() };
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: num(1)?,
        session: num(3)?,
        utime: unum(11)?,
        stime: unum(12)?,
        priority: num(15)?,
        nice: num(16)?,
        threads: num(17)?,
        start_ticks: unum(19)?,
        vsize: unum(20)?,
    })
}

/// From /proc/<pid>/status: (VmRSS bytes, real uid, VmData bytes).
pub fn parse_status(text: &str) -> (Option<u64>, Option<u32>, Option<u64>) {
    let mut rss = None;
    let mut uid = None;
    let mut data = None;
    let kb = |v: &str| {
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .map(|k| k.saturating_mul(1024))
    };
    for line in text.lines().take(200) {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            rss = kb(v);
        } else if let Some(v) = line.strip_prefix("VmData:") {
            data = kb(v);
        } else if let Some(v) = line.strip_prefix("Uid:") {
            uid = v.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    (rss, uid, data)
}

/// Boot time (Unix seconds) from /proc/stat's `btime` line.
pub fn parse_btime(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

/// AT_CLKTCK from the bytes of /proc/self/auxv (pairs of native-endian machine words).
pub fn parse_auxv_clktck(bytes: &[u8]) -> Option<u64> {
    const W: usize = std::mem::size_of::<usize>();
    let word = |c: &[u8]| -> Option<u64> {
        let arr: [u8; W] = c.try_into().ok()?;
        u64::try_from(usize::from_ne_bytes(arr)).ok()
    };
    bytes.chunks_exact(2 * W).find_map(|pair| {
        let key = word(pair.get(..W)?)?;
        let val = word(pair.get(W..)?)?;
        (key == AT_CLKTCK && val > 0).then_some(val)
    })
}

fn clk_tck() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|b| parse_auxv_clktck(&b))
        .unwrap_or(DEFAULT_CLK_TCK)
}

/// What a process snapshot needs besides the process itself.
pub(crate) struct ProcEnv {
    clk_tck: u64,
    btime: Option<i64>,
}

impl ProcEnv {
    pub(crate) fn read() -> ProcEnv {
        ProcEnv {
            clk_tck: clk_tck(),
            btime: read_bounded(Path::new("/proc/stat"))
                .ok()
                .as_deref()
                .and_then(parse_btime),
        }
    }
}

/// One process, read from /proc.
#[derive(Debug, Clone)]
pub(crate) struct ProcInfo {
    pub stat: ProcStat,
    pub value: Value,
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Read one process; None when it vanished or /proc has odd content.
pub(crate) fn read_process(env: &ProcEnv, pid: i64) -> Option<ProcInfo> {
    let dir = format!("/proc/{pid}");
    let stat = parse_stat(&read_bounded(Path::new(&format!("{dir}/stat"))).ok()?)?;
    let (rss, uid, data) = read_bounded(Path::new(&format!("{dir}/status")))
        .ok()
        .map(|s| parse_status(&s))
        .unwrap_or_default();
    let tck = env.clk_tck.max(1);
    let cpu = stat.utime.saturating_add(stat.stime) as f64 / tck as f64;
    let start = env.btime.and_then(|b| {
        let secs = b.checked_add(i64::try_from(stat.start_ticks / tck).ok()?)?;
        let nanos = u32::try_from((stat.start_ticks % tck) * 1_000_000_000 / tck).ok()?;
        local_time(secs, nanos)
    });
    let path = std::fs::read_link(format!("{dir}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let ws = rss.unwrap_or(0);
    let mut o = typed_object(&[
        "System.Diagnostics.Process",
        "System.ComponentModel.Component",
        "System.MarshalByRefObject",
    ]);
    o.push("Id", stat.pid);
    o.push("ProcessName", stat.comm.as_str());
    o.push("Name", stat.comm.as_str());
    o.push("CPU", cpu);
    // .NET's processor times (TimeSpans); CPU is TotalProcessorTime in seconds.
    let times = |ticks: u64| {
        let nanos = u32::try_from((ticks % tck) * 1_000_000_000 / tck).unwrap_or(0);
        Value::TimeSpan(std::time::Duration::new(ticks / tck, nanos))
    };
    o.push(
        "TotalProcessorTime",
        times(stat.utime.saturating_add(stat.stime)),
    );
    o.push("UserProcessorTime", times(stat.utime));
    o.push("PrivilegedProcessorTime", times(stat.stime));
    o.push("WorkingSet", ws);
    o.push("WorkingSet64", ws);
    o.push("WS", ws);
    o.push("VirtualMemorySize64", stat.vsize);
    o.push("VM", stat.vsize);
    o.push("PrivateMemorySize64", data.unwrap_or(0));
    o.push(
        "StartTime",
        start.map(Value::DateTime).unwrap_or(Value::Null),
    );
    o.push(
        "UserName",
        uid.and_then(user_name)
            .or_else(|| uid.map(|u| u.to_string())),
    );
    o.push("Path", path);
    o.push("SessionId", stat.session);
    o.push("SI", stat.session);
    o.push("ParentProcessId", stat.ppid);
    o.push("BasePriority", stat.priority);
    o.push("Nice", stat.nice);
    o.push("ThreadCount", stat.threads);
    o.push("State", stat.state.to_string());
    o.display = vec![
        "Id".into(),
        "ProcessName".into(),
        "CPU".into(),
        "WorkingSet".into(),
    ];
    o.to_string = Some(format!("System.Diagnostics.Process ({})", stat.comm));
    Some(ProcInfo {
        stat,
        value: o.into_value(),
    })
}

/// Every readable process, sorted by name then id (as PowerShell lists them).
pub(crate) fn all_processes(ctx: &Ctx<'_>) -> Vec<ProcInfo> {
    let env = ProcEnv::read();
    let mut pids: Vec<i64> = match std::fs::read_dir("/proc") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
            .take(MAX_PROCESSES)
            .collect(),
        Err(_) => Vec::new(),
    };
    pids.sort_unstable();
    let mut out = Vec::new();
    for pid in pids {
        if ctx.cancelled() {
            break;
        }
        if let Some(p) = read_process(&env, pid) {
            out.push(p);
        }
    }
    out.sort_by(|a, b| {
        a.stat
            .comm
            .to_lowercase()
            .cmp(&b.stat.comm.to_lowercase())
            .then(a.stat.pid.cmp(&b.stat.pid))
    });
    out
}

/// Select processes by -Id or -Name; writes PowerShell's "cannot find" errors for each literal
/// name or id that matches nothing.
fn select(ctx: &mut Ctx<'_>, ids: &[i64], names: &[NameFilter], ps_cmd: &str) -> Vec<ProcInfo> {
    let mut out = Vec::new();
    if !ids.is_empty() {
        let env = ProcEnv::read();
        for &id in ids {
            match (id > 0).then(|| read_process(&env, id)).flatten() {
                Some(p) => out.push(p),
                None => ctx.write_error(
                    ErrorRecord::new(
                        format!("Cannot find a process with the process identifier {id}."),
                        format!("NoProcessFoundForGivenId,Microsoft.PowerShell.Commands.{ps_cmd}"),
                        ErrorCategory::ObjectNotFound,
                    )
                    .target(id),
                ),
            }
        }
        return out;
    }
    let all = all_processes(ctx);
    if names.is_empty() {
        return all;
    }
    let mut hit = vec![false; names.len()];
    for p in all {
        let mut any = false;
        for (i, n) in names.iter().enumerate() {
            if n.matches(&p.stat.comm) {
                any = true;
                if let Some(h) = hit.get_mut(i) {
                    *h = true;
                }
            }
        }
        if any {
            out.push(p);
        }
    }
    for (n, h) in names.iter().zip(hit) {
        if !h && !n.has_wildcards() {
            let n = &n.text;
            ctx.write_error(
                ErrorRecord::new(
                    format!("Cannot find a process with the name \"{n}\". Verify the process name and call the cmdlet again."),
                    format!("NoProcessFoundForGivenName,Microsoft.PowerShell.Commands.{ps_cmd}"),
                    ErrorCategory::ObjectNotFound,
                )
                .target(n.as_str()),
            );
        }
    }
    out
}

fn get_process(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    let ids = args.ints("Id");
    let names = name_filters(args, "Name");
    for p in select(ctx, &ids, &names, "GetProcessCommand") {
        if ctx.cancelled() {
            break;
        }
        ctx.output(p.value);
    }
    Ok(())
}

fn stop_process(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    const PS: &str = "StopProcessCommand";
    let mut ids = args.ints("Id");
    let names = name_filters(args, "Name");
    // -InputObject: process objects give their Id, numbers are ids.
    let items = match args.get("InputObject") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => vec![v.clone()],
    };
    for it in items {
        match it.property("Id").unwrap_or(&it) {
            Value::Int(id) if !ids.contains(id) => ids.push(*id),
            Value::Int(_) => {}
            other => ctx.write_error(
                ErrorRecord::new(
                    format!(
                        "Stop-Process: {:?} is not a process object or id",
                        other.to_ps_string()
                    ),
                    format!("InvalidInputObject,Microsoft.PowerShell.Commands.{PS}"),
                    ErrorCategory::InvalidArgument,
                )
                .target(other.clone()),
            ),
        }
    }
    if ids.is_empty() && names.is_empty() && args.has("InputObject") {
        return Ok(());
    }
    if ids.is_empty() && names.is_empty() {
        return Err(ErrorRecord::new(
            "Stop-Process: give the processes with -Id or -Name",
            format!("MissingProcess,Microsoft.PowerShell.Commands.{PS}"),
            ErrorCategory::InvalidArgument,
        ));
    }
    if !ids.is_empty() && !names.is_empty() && input.is_none() {
        return Err(ErrorRecord::new(
            "Parameter set cannot be resolved using the specified named parameters: give -Id or -Name, not both.",
            format!("AmbiguousParameterSet,Microsoft.PowerShell.Commands.{PS}"),
            ErrorCategory::InvalidArgument,
        ));
    }
    // A Process object from the pipeline binds both Id and Name: its Id decides.
    let names = if ids.is_empty() { names } else { Vec::new() };
    let targets = select(ctx, &ids, &names, PS);
    let own = i64::from(std::process::id());
    for p in targets {
        if ctx.cancelled() {
            break;
        }
        let pid = p.stat.pid;
        let label = format!("{} ({pid})", p.stat.comm);
        if pid <= 1 || pid == own {
            ctx.write_error(
                ErrorRecord::new(
                    format!(
                        "Cannot stop process \"{label}\": keyhole never stops process 1 or itself."
                    ),
                    format!("CouldNotStopProcess,Microsoft.PowerShell.Commands.{PS}"),
                    ErrorCategory::PermissionDenied,
                )
                .target(pid),
            );
            continue;
        }
        let kill = find_program(&["/usr/bin/kill", "/bin/kill"]).ok_or_else(|| {
            ErrorRecord::new(
                "Stop-Process needs the kill program (/usr/bin/kill or /bin/kill from procps or util-linux); install it",
                format!("KillNotInstalled,Microsoft.PowerShell.Commands.{PS}"),
                ErrorCategory::NotInstalled,
            )
        })?;
        let signal = if args.switch("Force") { "KILL" } else { "TERM" };
        ctx.verbose(format!(
            "Performing the operation \"Stop-Process\" on target \"{label}\" (SIG{signal})."
        ));
        let argv = vec![
            "-s".to_string(),
            signal.to_string(),
            "--".to_string(),
            pid.to_string(),
        ];
        let res = run_program(ctx, "Stop-Process", &kill, argv, Vec::new())?;
        if res.termination != Termination::Exited(0) {
            ctx.write_error(
                ErrorRecord::new(
                    format!(
                        "Cannot stop process \"{label}\" because of the following error: kill {}: {}",
                        termination_text(res.termination),
                        program_said(&res)
                    ),
                    format!("CouldNotStopProcess,Microsoft.PowerShell.Commands.{PS}"),
                    ErrorCategory::CloseError,
                )
                .target(pid),
            );
            continue;
        }
        if args.switch("PassThru") {
            ctx.output(p.value);
        }
    }
    Ok(())
}

/// Get-Process and Stop-Process.
pub fn commands() -> Vec<Arc<dyn Command>> {
    vec![
        FnCommand::arc(
            CommandDecl::cmdlet("Get-Process", MODULE, "Gets the processes running on the host (from /proc).")
                .param(
                    ParamDecl::new("Name", ParamType::StringArray)
                        .position(0)
                        .by_property_name()
                        .alias("ProcessName")
                        .help("Process names (the kernel's comm, as in ps); wildcards allowed."),
                )
                .param(
                    ParamDecl::new("Id", ParamType::IntArray)
                        .by_property_name()
                        .alias("PID")
                        .help("Process identifiers."),
                )
                .outputs("System.Diagnostics.Process"),
            get_process,
        ),
        FnCommand::arc(
            CommandDecl::cmdlet(
                "Stop-Process",
                MODULE,
                "Stops processes (SIGTERM, or SIGKILL with -Force), as the endpoint's run_as account.",
            )
            .param(
                ParamDecl::new("Id", ParamType::IntArray)
                    .position(0)
                    .by_property_name()
                    .alias("PID")
                    .help("Process identifiers of the processes to stop."),
            )
            .param(
                ParamDecl::new("Name", ParamType::StringArray)
                    .by_property_name()
                    .alias("ProcessName")
                    .help("Names of the processes to stop; wildcards allowed."),
            )
            .param(
                ParamDecl::new("InputObject", ParamType::ObjectArray)
                    .by_value()
                    .help("Process objects (from Get-Process) to stop."),
            )
            .param(ParamDecl::new("Force", ParamType::Switch).help("Send SIGKILL instead of SIGTERM."))
            .param(ParamDecl::new("PassThru", ParamType::Switch).help("Write the process objects that were stopped."))
            .changes_state()
            .outputs("System.Diagnostics.Process"),
            stop_process,
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::commands::system::tests::{find, invoke};
    use crate::engine::Event;

    #[test]
    fn stat_with_odd_comm() {
        let text = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 123456 10485760 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "my (odd) proc");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.session, 4242);
        assert_eq!((s.utime, s.stime), (250, 50));
        assert_eq!((s.priority, s.nice, s.threads), (20, 0, 3));
        assert_eq!(s.start_ticks, 123456);
        assert_eq!(s.vsize, 10485760);
        let s = parse_stat("7 (a) b) c) R 0 0 0 0 0 0 0 0 0 0 1 2 0 0 20 0 1 0 5 6 7").unwrap();
        assert_eq!(s.comm, "a) b) c");
        for bad in [
            "",
            "12",
            "12 (x",
            "x) 12 (",
            "12 (x) S",
            "abc (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
        ] {
            assert!(parse_stat(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn status_btime_auxv() {
        let st =
            "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nVmData:\t  2048 kB\nVmRSS:\t    5120 kB\n";
        assert_eq!(
            parse_status(st),
            (Some(5120 * 1024), Some(1000), Some(2048 * 1024))
        );
        assert_eq!(parse_status("garbage"), (None, None, None));
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1"), None);
        let mut aux = Vec::new();
        for (k, v) in [(6usize, 4096usize), (17, 250), (0, 0)] {
            aux.extend_from_slice(&k.to_ne_bytes());
            aux.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(parse_auxv_clktck(&aux), Some(250));
        assert_eq!(parse_auxv_clktck(&aux[..5]), None);
        assert!(clk_tck() > 0);
    }

    #[test]
    fn live_own_process() {
        let cmds = commands();
        let me = i64::from(std::process::id());
        let mut a = BoundArgs::default();
        a.set("Id", Value::Array(vec![Value::Int(me)]));
        let (out, ev) = invoke(&find(&cmds, "Get-Process"), &a, vec![]);
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].property("Id"), Some(&Value::Int(me)));
        assert_eq!(out[0].type_name(), "System.Diagnostics.Process");
        assert!(matches!(
            out[0].property("StartTime"),
            Some(Value::DateTime(_))
        ));
        assert!(matches!(out[0].property("WorkingSet"), Some(Value::Int(n)) if *n > 0));
        // The processor times are TimeSpans adding up as .NET's do.
        let span = |n: &str| match out[0].property(n) {
            Some(Value::TimeSpan(t)) => *t,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(
            span("TotalProcessorTime"),
            span("UserProcessorTime") + span("PrivilegedProcessorTime")
        );

        let mut a = BoundArgs::default();
        a.set("Name", Value::from("no-such-process-xyz"));
        let (out, ev) = invoke(&find(&cmds, "Get-Process"), &a, vec![]);
        assert!(out.is_empty());
        match &ev[..] {
            [Event::Error(e)] => {
                assert_eq!(
                    e.fully_qualified_error_id,
                    "NoProcessFoundForGivenName,Microsoft.PowerShell.Commands.GetProcessCommand"
                );
                assert_eq!(e.message, "Cannot find a process with the name \"no-such-process-xyz\". Verify the process name and call the cmdlet again.");
            }
            other => panic!("{other:?}"),
        }
        // Wildcards that match nothing are not an error.
        a.set("Name", Value::from("no-such-*-xyz"));
        let (_, ev) = invoke(&find(&cmds, "Get-Process"), &a, vec![]);
        assert!(ev.is_empty());
    }

    #[test]
    fn stop_refuses_itself_and_pid1() {
        let cmds = commands();
        let mut a = BoundArgs::default();
        a.set(
            "Id",
            Value::Array(vec![Value::Int(i64::from(std::process::id()))]),
        );
        let (out, ev) = invoke(&find(&cmds, "Stop-Process"), &a, vec![]);
        assert!(out.is_empty());
        assert!(
            matches!(&ev[..], [Event::Error(e)] if e.category == ErrorCategory::PermissionDenied)
        );
        let (_, ev) = invoke(&find(&cmds, "Stop-Process"), &BoundArgs::default(), vec![]);
        assert!(
            matches!(&ev[..], [Event::Error(e)] if e.category == ErrorCategory::InvalidArgument)
        );
    }
}
