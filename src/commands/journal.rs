//! `Get-Journal`: systemd journal entries as `Keyhole.JournalEntry` objects, newest first, from
//! `journalctl -o json` run through the sandbox as the endpoint's `run_as` (which therefore needs
//! the `systemd-journal` or `adm` group to see system messages). Every argument is its own argv
//! element of the form `--option=value`, so no value can become an option.
#![forbid(unsafe_code)]
// The engine's Invocation interface returns ErrorRecord by value; helpers follow it.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, TimeZone};

use super::system::{
    find_program, local_time, program_said, run_program, termination_text, typed_object,
    with_pattern, FnCommand, MODULE,
};
use crate::engine::{
    BoundArgs, Command, CommandDecl, Ctx, ErrorCategory, ErrorRecord, ParamDecl, ParamType, Value,
};
use crate::sandbox::Termination;

/// Entries returned when -Newest is not given.
pub const DEFAULT_NEWEST: i64 = 1000;
/// Most entries one call may return.
pub const MAX_NEWEST: i64 = 10_000;
/// Longest journal line parsed (bytes); longer lines are skipped with a warning.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest message kept (characters); longer ones are cut and marked.
pub const MAX_MESSAGE_CHARS: usize = 65_536;

/// Unit names as journalctl -u takes them (globs allowed); never a leading dash.
pub const UNIT_PATTERN: &str = r"^[A-Za-z0-9@:_.\\*?][A-Za-z0-9@:_.\\*?-]{0,254}$";

const PRIORITY_NAMES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// One journal entry, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// Microseconds since the Unix epoch.
    pub realtime_us: Option<i64>,
    pub unit: Option<String>,
    pub priority: Option<i64>,
    pub identifier: Option<String>,
    pub pid: Option<i64>,
    pub host: Option<String>,
    pub message: String,
}

/// A journal JSON field as text: strings as they are, byte arrays (non-UTF-8 or binary fields)
/// decoded lossily, multi-valued fields (arrays of those) as their first value.
pub fn field_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Array(items) => {
            if !items.is_empty() && items.iter().all(serde_json::Value::is_u64) {
                let bytes: Vec<u8> = items
                    .iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                Some(String::from_utf8_lossy(&bytes).into_owned())
            } else {
                items.iter().find_map(field_text)
            }
        }
        _ => None,
    }
}

/// Parse one line of `journalctl -o json`.
pub fn parse_entry(line: &str) -> Option<JournalEntry> {
    if line.len() > MAX_LINE_BYTES {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let text = |k: &str| obj.get(k).and_then(field_text);
    let mut message = text("MESSAGE").unwrap_or_default();
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + " [...]";
    }
    Some(JournalEntry {
        realtime_us: text("__REALTIME_TIMESTAMP").and_then(|s| s.trim().parse().ok()),
        unit: text("_SYSTEMD_UNIT")
            .or_else(|| text("UNIT"))
            .or_else(|| text("_SYSTEMD_USER_UNIT")),
        priority: text("PRIORITY").and_then(|s| s.trim().parse().ok()),
        identifier: text("SYSLOG_IDENTIFIER").or_else(|| text("_COMM")),
        pid: text("_PID").and_then(|s| s.trim().parse().ok()),
        host: text("_HOSTNAME"),
        message,
    })
}

/// PowerShell-style level name for a syslog priority (as Get-WinEvent's LevelDisplayName).
fn level_name(p: i64) -> &'static str {
    match p {
        0..=2 => "Critical",
        3 => "Error",
        4 => "Warning",
        5 | 6 => "Information",
        _ => "Verbose",
    }
}

fn entry_object(e: &JournalEntry) -> Value {
    let mut o = typed_object(&["Keyhole.JournalEntry"]);
    let time = e.realtime_us.and_then(|us| {
        let secs = us.div_euclid(1_000_000);
        let nanos = u32::try_from(us.rem_euclid(1_000_000) * 1000).ok()?;
        local_time(secs, nanos)
    });
    o.push(
        "TimeCreated",
        time.map(Value::DateTime).unwrap_or(Value::Null),
    );
    o.push("Unit", e.unit.clone());
    o.push("Priority", e.priority);
    o.push(
        "PriorityName",
        e.priority
            .and_then(|p| usize::try_from(p).ok())
            .and_then(|p| PRIORITY_NAMES.get(p))
            .map(|s| s.to_string()),
    );
    o.push("LevelDisplayName", e.priority.map(level_name));
    o.push("Identifier", e.identifier.clone());
    o.push("ProcessId", e.pid);
    o.push("MachineName", e.host.clone());
    o.push("Message", e.message.as_str());
    o.display = vec![
        "TimeCreated".into(),
        "Unit".into(),
        "Priority".into(),
        "Message".into(),
    ];
    o.to_string = Some(e.message.clone());
    o.into_value()
}

/// -Since as a DateTime, or as text: RFC 3339, `yyyy-MM-dd HH:mm[:ss]` or `yyyy-MM-dd` (local).
pub fn parse_since(v: &Value) -> Option<DateTime<FixedOffset>> {
    match v {
        Value::DateTime(d) => Some(*d),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(d) = DateTime::parse_from_rfc3339(s) {
                return Some(d);
            }
            let naive = [
                "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M",
                "%m/%d/%Y %H:%M:%S",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .or_else(|| {
                ["%Y-%m-%d", "%m/%d/%Y"]
                    .iter()
                    .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })?;
            Local
                .from_local_datetime(&naive)
                .earliest()
                .map(|d| d.fixed_offset())
        }
        _ => None,
    }
}

/// True when journal files exist in the standard places (read as keyhole: directory names only).
fn journal_files_exist() -> bool {
    ["/var/log/journal", "/run/log/journal"].iter().any(|root| {
        let Ok(rd) = std::fs::read_dir(root) else {
            return false;
        };
        rd.filter_map(Result::ok).take(1000).any(|e| {
            let p = e.path();
            if p.extension()
                .is_some_and(|x| x == "journal" || x == "journal~")
            {
                return true;
            }
            std::fs::read_dir(&p)
                .map(|sub| {
                    sub.filter_map(Result::ok).take(10_000).any(|f| {
                        f.path()
                            .extension()
                            .is_some_and(|x| x == "journal" || x == "journal~")
                    })
                })
                .unwrap_or(false)
        })
    })
}

#[cfg(test)]
thread_local! {
    /// Unit tests point this at a fake journalctl (a fixture script); never set outside tests.
    static FAKE_JOURNALCTL: std::cell::RefCell<Option<std::path::PathBuf>> = const { std::cell::RefCell::new(None) };
}

fn journalctl() -> Option<std::path::PathBuf> {
    #[cfg(test)]
    if let Some(p) = FAKE_JOURNALCTL.with(|f| f.borrow().clone()) {
        return Some(p);
    }
    find_program(&["/usr/bin/journalctl", "/bin/journalctl"])
}

fn unavailable(what: &str) -> ErrorRecord {
    ErrorRecord::new(
        format!("Get-Journal: the journal is not available on this host: {what}"),
        "JournalUnavailable,Keyhole.GetJournalCommand",
        ErrorCategory::ResourceUnavailable,
    )
}

fn get_journal(
    ctx: &mut Ctx<'_>,
    args: &BoundArgs,
    _input: Option<&Value>,
) -> Result<(), ErrorRecord> {
    let invalid = |msg: String| {
        ErrorRecord::new(
            msg,
            "InvalidArgument,Keyhole.GetJournalCommand",
            ErrorCategory::InvalidArgument,
        )
    };
    let newest = args.int("Newest");
    let n = newest.unwrap_or(DEFAULT_NEWEST);
    if !(1..=MAX_NEWEST).contains(&n) {
        return Err(invalid(format!(
            "Get-Journal: -Newest must be between 1 and {MAX_NEWEST}, not {n}"
        )));
    }
    let mut argv = vec![
        "--output=json".to_string(),
        "--no-pager".to_string(),
        "--reverse".to_string(),
        format!("--lines={n}"),
    ];
    if let Some(unit) = args.string("Unit") {
        if unit.starts_with('-') || unit.is_empty() {
            return Err(invalid(format!("Get-Journal: {unit:?} is not a unit name")));
        }
        argv.push(format!("--unit={unit}"));
    }
    if let Some(v) = args.get("Since").filter(|v| !v.is_null()) {
        let since = parse_since(v).ok_or_else(|| {
            invalid(format!(
                "Get-Journal: cannot read -Since {:?} as a date; use yyyy-MM-dd HH:mm:ss or a DateTime",
                v.to_ps_string()
            ))
        })?;
        argv.push(format!("--since=@{}", since.timestamp()));
    }
    if let Some(p) = args.string("Priority") {
        let p = p.to_lowercase();
        let ok = PRIORITY_NAMES.contains(&p.as_str())
            || (p.len() == 1 && p.chars().all(|c| ('0'..='7').contains(&c)));
        if !ok {
            return Err(invalid(format!(
                "Get-Journal: -Priority must be one of {} or 0-7, not {p:?}",
                PRIORITY_NAMES.join(", ")
            )));
        }
        argv.push(format!("--priority={p}"));
    }
    let prog = journalctl()
        .ok_or_else(|| unavailable("journalctl is not installed (/usr/bin/journalctl)"))?;
    let res = run_program(ctx, "Get-Journal", &prog, argv, Vec::new())?;
    if res.termination != Termination::Exited(0) {
        return Err(unavailable(&format!(
            "journalctl {}: {}",
            termination_text(res.termination),
            program_said(&res)
        )));
    }
    let stdout = String::from_utf8_lossy(&res.stdout);
    let mut count = 0i64;
    let mut skipped = 0usize;
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if count >= n || ctx.cancelled() {
            break;
        }
        match parse_entry(line) {
            Some(e) => {
                ctx.output(entry_object(&e));
                count += 1;
            }
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        ctx.warning(format!(
            "Get-Journal: skipped {skipped} journal lines that were not valid JSON or too long"
        ));
    }
    let stderr = String::from_utf8_lossy(&res.stderr);
    for l in stderr.lines().filter(|l| !l.trim().is_empty()).take(5) {
        ctx.warning(format!("journalctl: {}", l.trim()));
    }
    if count == 0 && !journal_files_exist() {
        let said = String::from_utf8_lossy(&res.stderr)
            .trim()
            .chars()
            .take(2000)
            .collect::<String>();
        let said = if said.is_empty() {
            "journalctl found no entries".to_string()
        } else {
            format!("journalctl said: {said}")
        };
        return Err(unavailable(&format!(
            "no journal files in /var/log/journal or /run/log/journal (is systemd-journald running?); {said}"
        )));
    }
    if newest.is_none() && count >= DEFAULT_NEWEST {
        ctx.warning(format!(
            "Get-Journal returned the newest {DEFAULT_NEWEST} entries (the default); use -Newest to see up to {MAX_NEWEST}"
        ));
    }
    Ok(())
}

/// Get-Journal.
pub fn commands() -> Vec<Arc<dyn Command>> {
    vec![FnCommand::arc(
        CommandDecl::cmdlet("Get-Journal", MODULE, "Gets systemd journal entries, newest first (journalctl).")
            .param(with_pattern(
                ParamDecl::new("Unit", ParamType::String)
                    .position(0)
                    .by_property_name()
                    .help("Only entries of this systemd unit (ssh or ssh.service; globs allowed)."),
                UNIT_PATTERN,
            ))
            .param(
                ParamDecl::new("Newest", ParamType::Int)
                    .alias("MaxEvents")
                    .help("How many of the newest entries to get (1-10000; default 1000)."),
            )
            .param(ParamDecl::new("Since", ParamType::DateTime).alias("After").help("Only entries written at or after this time."))
            .param(
                ParamDecl::new("Priority", ParamType::String)
                    .set(&[
                        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug", "0", "1", "2", "3", "4", "5",
                        "6", "7",
                    ])
                    .help("Only entries of this priority or more important (err, warning, info, ... or 0-7)."),
            )
            .outputs("Keyhole.JournalEntry"),
        get_journal,
    )]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let line = r#"{"__CURSOR":"s=1","__REALTIME_TIMESTAMP":"1700000000123456","PRIORITY":"3","_SYSTEMD_UNIT":"ssh.service","SYSLOG_IDENTIFIER":"sshd","_PID":"812","_HOSTNAME":"web1","MESSAGE":"Failed password for root"}"#;
        let e = parse_entry(line).unwrap();
        assert_eq!(e.realtime_us, Some(1_700_000_000_123_456));
        assert_eq!(e.priority, Some(3));
        assert_eq!(e.unit.as_deref(), Some("ssh.service"));
        assert_eq!(e.pid, Some(812));
        assert_eq!(e.message, "Failed password for root");
        let v = entry_object(&e);
        assert_eq!(v.type_name(), "Keyhole.JournalEntry");
        assert_eq!(v.property("PriorityName"), Some(&Value::from("err")));
        assert_eq!(v.property("LevelDisplayName"), Some(&Value::from("Error")));
        match v.property("TimeCreated") {
            Some(Value::DateTime(d)) => {
                assert_eq!(d.timestamp(), 1_700_000_000);
                assert_eq!(d.timestamp_subsec_micros(), 123_456);
            }
            other => panic!("{other:?}"),
        }
        // MESSAGE as bytes (non-UTF-8 content), UNIT instead of _SYSTEMD_UNIT, no priority.
        let line =
            r#"{"__REALTIME_TIMESTAMP":"1","UNIT":"cron.service","MESSAGE":[104,105,255,10,33]}"#;
        let e = parse_entry(line).unwrap();
        assert_eq!(e.message, "hi\u{fffd}\n!");
        assert_eq!(e.unit.as_deref(), Some("cron.service"));
        assert_eq!(e.priority, None);
        // Multi-valued field; null message.
        let e =
            parse_entry(r#"{"MESSAGE":null,"_SYSTEMD_UNIT":["a.service","b.service"]}"#).unwrap();
        assert_eq!(e.message, "");
        assert_eq!(e.unit.as_deref(), Some("a.service"));
        let e = parse_entry(r#"{"MESSAGE":[[111,107],[110,111]]}"#).unwrap();
        assert_eq!(e.message, "ok");
        for bad in ["", "not json", "[1,2]", "{", r#"{"MESSAGE":"x""#] {
            assert!(parse_entry(bad).is_none(), "{bad}");
        }
        let huge = format!(r#"{{"MESSAGE":"{}"}}"#, "x".repeat(MAX_MESSAGE_CHARS + 10));
        assert!(parse_entry(&huge).unwrap().message.ends_with(" [...]"));
    }

    const FAKE: &str = r#"#!/bin/sh
dir=$(dirname "$0")
for a in "$@"; do echo "$a" >> "$dir/args"; done
case "$*" in
  *--unit=broken*) echo "Failed to add filter for units: No data available" >&2; exit 1 ;;
esac
echo '{"__REALTIME_TIMESTAMP":"1700000002000000","PRIORITY":"6","_SYSTEMD_UNIT":"ssh.service","MESSAGE":"second"}'
echo 'not json'
echo '{"__REALTIME_TIMESTAMP":"1700000001000000","PRIORITY":"3","_SYSTEMD_UNIT":"ssh.service","MESSAGE":[102,105,114,115,116]}'
echo "Hint: You are currently not seeing messages from other users and the system." >&2
"#;

    #[test]
    fn get_journal_with_fake_journalctl() {
        use crate::commands::system::tests::invoke;
        use crate::engine::Event;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journalctl");
        std::fs::write(&path, FAKE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        FAKE_JOURNALCTL.with(|p| *p.borrow_mut() = Some(path));
        let cmd = commands().remove(0);
        let mut a = BoundArgs::default();
        a.set("Unit", Value::from("ssh"));
        a.set("Newest", Value::Int(20));
        a.set("Since", Value::from("2023-11-14T22:13:20+00:00"));
        a.set("Priority", Value::from("info"));
        let (out, ev) = invoke(&cmd, &a, vec![]);
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            vec![
                "--output=json",
                "--no-pager",
                "--reverse",
                "--lines=20",
                "--unit=ssh",
                "--since=@1700000000",
                "--priority=info"
            ]
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].property("Message"), Some(&Value::from("second")));
        assert_eq!(out[1].property("Message"), Some(&Value::from("first")));
        assert_eq!(out[1].property("Priority"), Some(&Value::Int(3)));
        let warnings: Vec<&String> = ev
            .iter()
            .filter_map(|e| {
                if let Event::Warning(w) = e {
                    Some(w)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(warnings.len(), 2, "{ev:?}");
        assert!(warnings[0].contains("skipped 1"));
        assert!(warnings[1].starts_with("journalctl: Hint"));
        assert!(ev.iter().all(|e| !matches!(e, Event::Error(_))));

        // journalctl failing is the clear "not available" error with its message.
        let mut a = BoundArgs::default();
        a.set("Unit", Value::from("broken"));
        let (out, ev) = invoke(&cmd, &a, vec![]);
        assert!(out.is_empty());
        match &ev[..] {
            [Event::Error(e)] => {
                assert!(e.message.starts_with("Get-Journal: the journal is not available on this host: journalctl exited with status 1: Failed to add filter"), "{}", e.message);
                assert_eq!(e.category, ErrorCategory::ResourceUnavailable);
            }
            other => panic!("{other:?}"),
        }
        // Option-looking values never become options.
        let mut a = BoundArgs::default();
        a.set("Unit", Value::from("--all"));
        let (_, ev) = invoke(&cmd, &a, vec![]);
        assert!(
            matches!(&ev[..], [Event::Error(e)] if e.category == ErrorCategory::InvalidArgument)
        );
        a.set("Unit", Value::from("x"));
        a.set("Priority", Value::from("--merge"));
        let (_, ev) = invoke(&cmd, &a, vec![]);
        assert!(
            matches!(&ev[..], [Event::Error(e)] if e.category == ErrorCategory::InvalidArgument)
        );
        FAKE_JOURNALCTL.with(|p| *p.borrow_mut() = None);
    }

    #[test]
    fn since() {
        let d = parse_since(&Value::from("2024-05-01T10:00:00+02:00")).unwrap();
        assert_eq!(d.timestamp(), 1_714_550_400);
        assert!(parse_since(&Value::from("2024-05-01 10:00:00")).is_some());
        assert!(parse_since(&Value::from("2024-05-01")).is_some());
        assert!(parse_since(&Value::from("yesterday; rm -rf /")).is_none());
        assert!(parse_since(&Value::Int(5)).is_none());
    }

    #[test]
    fn unit_pattern() {
        let re = regex::Regex::new(UNIT_PATTERN).unwrap();
        assert!(re.is_match("ssh.service"));
        assert!(!re.is_match("--since=x"));
        assert!(!re.is_match("a b"));
    }
}
