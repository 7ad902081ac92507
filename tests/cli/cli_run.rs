//! `keyhole run`: one line as a remote session of that user would run it; exit 0 ran,
//! 1 failed, 2 refused.
//!
//! Tests named `engine_*` run lines through the real engine on the shipped examples.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::shipped;

use shipped::{keyhole, shipped_copy};

#[test]
fn gate_refusal_exits_2() {
    let d = shipped_copy();
    let (code, out, err) = keyhole(
        d.path(),
        &["run", "--endpoint", "Helpdesk", "--user", "mallory"],
        Some("Get-Service"),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no role applies to user mallory"), "{err}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn invalid_configuration_exits_1() {
    let d = shipped_copy();
    shipped::append(d.path(), "keyhole.toml", "bogus = 1\n");
    let (code, _, err) = keyhole(
        d.path(),
        &[
            "run",
            "--endpoint",
            "Helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
        ],
        Some("Get-Service"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown field `bogus`"), "{err}");
}

#[test]
fn line_is_required() {
    let d = shipped_copy();
    let (code, _, err) = keyhole(
        d.path(),
        &["run", "--endpoint", "Helpdesk", "--user", "alice"],
        None,
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn engine_visible_command_runs() {
    let d = shipped_copy();
    let (code, out, err) = keyhole(
        d.path(),
        &[
            "run",
            "--endpoint",
            "Helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
        ],
        Some("Get-Uptime"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.trim().is_empty(), "{out}");
}

#[test]
fn engine_invisible_and_language_refusals_exit_2() {
    let d = shipped_copy();
    for line in [
        "Stop-Service cron",
        "Invoke-Expression 'id'",
        "Get-Process; $x = 1",
        "Restart-Service -Name postgresql",
    ] {
        let (code, out, err) = keyhole(
            d.path(),
            &[
                "run",
                "--endpoint",
                "Helpdesk",
                "--user",
                "alice",
                "--group",
                "helpdesk",
            ],
            Some(line),
        );
        assert_eq!(code, 2, "{line}: {out}{err}");
        assert!(err.contains("FullyQualifiedErrorId"), "{line}: {err}");
        assert!(out.is_empty(), "{line}: {out}");
    }
}

#[test]
fn engine_vendor_function_output() {
    let d = shipped_copy();
    let (code, out, err) = keyhole(
        d.path(),
        &["run", "--endpoint", "Vendor", "--user", "acme-vendor"],
        Some("Get-OsRelease"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ID="), "{out}");
}

#[test]
fn engine_runtime_error_exits_1() {
    let d = shipped_copy();
    let (code, _, err) = keyhole(
        d.path(),
        &[
            "run",
            "--endpoint",
            "Helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
        ],
        Some("Get-Process -Name no-such-process-xyz"),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("    + CategoryInfo          : ObjectNotFound"),
        "{err}"
    );
}

fn audit_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `keyhole run` opens its session through the server's gates: the audit log gets the same
/// records (session start and end, refusals with gate and reason, source "local"), and a
/// refusal prints the text the server logs.
#[test]
fn run_writes_the_audit_log_and_refuses_with_the_servers_text() {
    let d = shipped_copy();
    let (code, out, err) = keyhole(
        d.path(),
        &[
            "run",
            "--endpoint",
            "Helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
        ],
        Some("Get-Uptime"),
    );
    assert_eq!(code, 0, "{out}{err}");
    let log = audit_records(d.path());
    let kinds: Vec<&str> = log.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["session_start", "session_end"], "{log:?}");
    for r in &log {
        assert_eq!(r["source"].as_str(), Some("local"));
        assert_eq!(r["user"].as_str(), Some("alice"));
        assert_eq!(r["endpoint"].as_str(), Some("Helpdesk"));
    }
    assert_eq!(log[0]["session_id"], log[1]["session_id"]);

    let (code, out, err) = keyhole(
        d.path(),
        &["run", "--endpoint", "Helpdesk", "--user", "mallory"],
        Some("Get-Service"),
    );
    assert_eq!(code, 2, "{out}{err}");
    let log = audit_records(d.path());
    let denied = log.last().unwrap();
    assert_eq!(denied["kind"].as_str(), Some("authorization"));
    assert_eq!(denied["gate"].as_str(), Some("endpoint"));
    assert_eq!(denied["decision"].as_str(), Some("deny"));
    assert_eq!(denied["source"].as_str(), Some("local"));
    let reason = denied["reason"].as_str().unwrap();
    assert!(
        reason.contains("no role applies to user mallory"),
        "{reason}"
    );
    assert_eq!(
        err.lines().next(),
        Some(format!("keyhole run: access denied at gate 4: {reason}").as_str()),
        "{err}"
    );
}

/// A Diagnostics role with `Stop-AppProcess` = `kill {Id}`, `Id` an `int[]` (issue 9, finding 8).
fn with_stop_app_process(dir: &std::path::Path, allow_leading_dash: bool) {
    let p = dir.join("role-capabilities/Diagnostics.toml");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "visible_functions = [\"Get-DiskUsage\"]",
        "visible_functions = [\"Get-DiskUsage\", \"Stop-AppProcess\"]",
    );
    assert!(text.contains("Stop-AppProcess"), "{text}");
    std::fs::write(
        &p,
        format!(
            "{text}\n[functions.Stop-AppProcess]\nsynopsis = \"Stop an application process\"\n\
             program = \"/usr/bin/kill\"\nargs = [\"{{Id}}\"]\n\n\
             [functions.Stop-AppProcess.parameters.Id]\ntype = \"int[]\"\nmandatory = true\n\
             position = 0\nallow_leading_dash = {allow_leading_dash}\n"
        ),
    )
    .unwrap();
}

/// A process of the Helpdesk endpoint's run_as account that `kill -9 -1` run as that account
/// would kill.
fn victim() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let acct = nix::unistd::User::from_name("keyhole-helpdesk")
        .unwrap()
        .expect("the shipped run_as account (created by shipped_copy as root)");
    std::process::Command::new("/usr/bin/sleep")
        .arg("120")
        .uid(acct.uid.as_raw())
        .gid(acct.gid.as_raw())
        .spawn()
        .unwrap()
}

const ALICE: &[&str] = &[
    "run",
    "--endpoint",
    "Helpdesk",
    "--user",
    "alice",
    "--group",
    "helpdesk",
];

#[test]
fn placeholder_values_beginning_with_a_dash_are_refused() {
    assert!(
        shipped::is_root(),
        "this test runs as root: it needs the shipped run_as account (CI runs as root)"
    );
    let d = shipped_copy();
    with_stop_app_process(d.path(), false);
    let (code, out, err) = keyhole(d.path(), &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !format!("{out}{err}").contains("still parses options"),
        "{out}{err}"
    );
    let mut v = victim();
    for line in [
        "Stop-AppProcess -Id -9,-1",
        "Stop-AppProcess -9,-1",
        "Stop-AppProcess -Id 1,-1",
        "Stop-AppProcess -Id -1",
    ] {
        let (code, out, err) = keyhole(d.path(), ALICE, Some(line));
        assert_eq!(code, 2, "{line}: {out}{err}");
        assert!(err.contains("begins with '-'"), "{line}: {err}");
    }
    assert!(
        v.try_wait().unwrap().is_none(),
        "a process of the run_as account was killed"
    );
    let _ = v.kill();
    let _ = v.wait();
}

#[test]
fn allow_leading_dash_binds_and_check_warns() {
    assert!(
        shipped::is_root(),
        "this test runs as root: it needs the shipped run_as account (CI runs as root)"
    );
    let d = shipped_copy();
    with_stop_app_process(d.path(), true);
    let (code, out, err) = keyhole(d.path(), &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains("{Id} stands where /usr/bin/kill still parses options"),
        "{all}"
    );
    // The value is an option now: `kill -9 <pid>` stops exactly that process.
    let mut v = victim();
    let (code, out, err) = keyhole(
        d.path(),
        ALICE,
        Some(&format!("Stop-AppProcess -Id -9,{}", v.id())),
    );
    assert_eq!(code, 0, "{out}{err}");
    let status = v.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    // With "--" before the placeholder, check is quiet.
    let p = d.path().join("role-capabilities/Diagnostics.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("args = [\"{Id}\"]", "args = [\"--\", \"{Id}\"]");
    std::fs::write(&p, text).unwrap();
    let (code, out, err) = keyhole(d.path(), &["check"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !format!("{out}{err}").contains("still parses options"),
        "{out}{err}"
    );
}
