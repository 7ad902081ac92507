//! `keyhole capability`: text and JSON show a two-role user's merged commands, parameters,
//! sets and patterns; `--help` lists every subcommand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::shipped;

use shipped::{append, keyhole, shipped_copy};

/// alice holds two roles in Helpdesk: the helpdesk group (ServiceOperator + Diagnostics) and,
/// by name, VendorReadOnly.
fn two_roles() -> tempfile::TempDir {
    let d = shipped_copy();
    append(
        d.path(),
        "endpoints/Helpdesk.toml",
        "\n[[role]]\nuser = \"alice\"\nrole_capabilities = [\"VendorReadOnly\"]\n",
    );
    d
}

#[test]
fn text_shows_merged_result() {
    let d = two_roles();
    let (code, out, err) = keyhole(
        d.path(),
        &[
            "capability",
            "--endpoint",
            "helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Role capabilities:  ServiceOperator, Diagnostics, VendorReadOnly"),
        "{out}"
    );
    // Get-Service: unrestricted in ServiceOperator, Name pattern in VendorReadOnly → all (rule 3).
    let gs = out.split("\n  Get-Service\n").nth(1).unwrap();
    assert!(gs.starts_with("      (all parameters)"), "{out}");
    // Get-Journal -Unit: two patterns, alternatives (rule 6).
    assert!(
        out.contains("[a-z0-9@._-]+\\.service  |  acme-[a-z0-9-]+\\.service"),
        "{out}"
    );
    assert!(
        out.contains("-Name                 one of: cron, ssh, nginx"),
        "{out}"
    );
    // Functions from both sides, and the external command.
    assert!(out.contains("Get-DiskUsage  → /usr/bin/df"), "{out}");
    assert!(
        out.contains("Get-OsRelease  → /usr/bin/cat /etc/os-release"),
        "{out}"
    );
    assert!(out.contains("/usr/bin/uptime  (no arguments)"), "{out}");
    assert!(out.contains("Session defaults:   Get-Command"), "{out}");
}

#[test]
fn json_shows_merged_result() {
    let d = two_roles();
    let (code, out, err) = keyhole(
        d.path(),
        &[
            "capability",
            "--endpoint",
            "Helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["endpoint"], "Helpdesk");
    assert_eq!(
        v["role_capabilities"],
        serde_json::json!(["ServiceOperator", "Diagnostics", "VendorReadOnly"])
    );
    let cmd = |n: &str| {
        v["cmdlets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(cmd("Get-Service")["parameters"], "all");
    let unit = cmd("Get-Journal")["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Unit")
        .cloned()
        .unwrap();
    assert_eq!(
        unit["validate_pattern"],
        serde_json::json!(["[a-z0-9@._-]+\\.service", "acme-[a-z0-9-]+\\.service"])
    );
    let name = cmd("Restart-Service")["parameters"][0].clone();
    assert_eq!(
        name["validate_set"],
        serde_json::json!(["cron", "ssh", "nginx"])
    );
    let funcs: Vec<&str> = v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(funcs, vec!["Get-DiskUsage", "Get-OsRelease"]);
    assert_eq!(v["external_commands"][0]["path"], "/usr/bin/uptime");
}

#[test]
fn vendor_sees_only_its_role() {
    let d = shipped_copy();
    let (code, out, err) = keyhole(
        d.path(),
        &[
            "capability",
            "--endpoint",
            "Vendor",
            "--user",
            "acme-vendor",
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["cmdlets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "Format-Table",
            "Get-Journal",
            "Get-Service",
            "Select-Object"
        ]
    );
    assert_eq!(
        v["cmdlets"][2]["parameters"][0]["validate_pattern"],
        serde_json::json!(["acme-.*"])
    );
}

#[test]
fn no_role_is_refused_with_exit_2() {
    let d = shipped_copy();
    let (code, out, err) = keyhole(
        d.path(),
        &["capability", "--endpoint", "Vendor", "--user", "mallory"],
        None,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("no role applies to user mallory"), "{err}");
    let (code, _, err) = keyhole(
        d.path(),
        &["capability", "--endpoint", "Nope", "--user", "alice"],
        None,
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("no endpoint named \"Nope\" (endpoints: Helpdesk, Vendor)"),
        "{err}"
    );
}

#[test]
fn help_lists_every_subcommand() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["check", "capability", "run", "sessions"] {
        assert!(
            text.contains(&format!("  {sub} ")),
            "{sub} missing:\n{text}"
        );
    }
}
