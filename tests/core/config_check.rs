//! `keyhole check` on the shipped examples and on broken copies of them: every error is
//! reported with its message and its `file:line:col`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use keyhole::config::{self, Diagnostic, Severity};

use crate::shipped;

use shipped::{is_root, me, prepare_accounts, shipped_copy};

fn edit(dir: &Path, rel: &str, from: &str, to: &str) {
    let p = dir.join(rel);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{rel} does not contain {from:?}");
    std::fs::write(p, text.replacen(from, to, 1)).unwrap();
}

fn append(dir: &Path, rel: &str, extra: &str) {
    let p = dir.join(rel);
    let mut text = std::fs::read_to_string(&p).unwrap_or_default();
    text.push_str(extra);
    std::fs::write(p, text).unwrap();
}

/// `rel:line:col` of the first occurrence of `needle` in the file (after `after`, if given).
fn loc(dir: &Path, rel: &str, needle: &str) -> String {
    let text = std::fs::read_to_string(dir.join(rel)).unwrap();
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {rel}"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
    format!("{rel}:{line}:{col}")
}

/// Like `loc`, for the first `needle` after the first `after`.
fn loc_after(dir: &Path, rel: &str, after: &str, needle: &str) -> String {
    let text = std::fs::read_to_string(dir.join(rel)).unwrap();
    let start = text.find(after).unwrap();
    let at = start + text[start..].find(needle).unwrap();
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
    format!("{rel}:{line}:{col}")
}

/// What the server and `keyhole check` load: `config` plus the checks against the commands.
fn load(dir: &Path) -> Result<config::LoadedConfig, Vec<Diagnostic>> {
    keyhole::check::load(&dir.join("keyhole.toml"))
}

fn errors(dir: &Path) -> Vec<Diagnostic> {
    match load(dir) {
        Ok(_) => panic!("configuration in {} unexpectedly valid", dir.display()),
        Err(d) => d
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect(),
    }
}

/// Assert one error has `msg` and is located at `location` (`rel:line:col`, or `rel:` for a
/// whole-file error).
fn expect_error(dir: &Path, location: &str, msg: &str) {
    let errs = errors(dir);
    let all: String = errs.iter().map(|d| d.rendered.clone()).collect();
    let hit = errs
        .iter()
        .find(|d| d.message.contains(msg))
        .unwrap_or_else(|| panic!("no error containing {msg:?}; got:\n{all}"));
    let head = hit.rendered.lines().next().unwrap();
    let want = format!("{}/{location}", dir.display());
    assert!(
        head.starts_with(&want),
        "expected at {location}, got:\n{}",
        hit.rendered
    );
    assert!(
        hit.line == 0 || hit.rendered.contains('^'),
        "no caret excerpt:\n{}",
        hit.rendered
    );
}

fn expect_warning(dir: &Path, msg: &str) {
    let cfg = load(dir).unwrap_or_else(|d| {
        panic!(
            "{}",
            d.iter().map(|x| x.rendered.clone()).collect::<String>()
        )
    });
    assert!(
        cfg.warnings.iter().any(|w| w.message.contains(msg)),
        "no warning {msg:?}: {:?}",
        cfg.warnings
    );
}

fn check_bin(dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .arg("check")
        .arg("--config")
        .arg(dir.join("keyhole.toml"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn shipped_examples_pass_check() {
    let d = shipped_copy();
    let (code, out, err) = check_bin(d.path());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    // Helpdesk grants Restart/Start-Service to a non-root run_as: `check` also says whether
    // the polkit rule for it is installed on this machine (see tests/core/polkit_rules.rs).
    let cfg = config::load(&d.path().join("keyhole.toml")).unwrap();
    let polkit = keyhole::polkit::installed_rule_warnings(
        &cfg,
        Path::new(keyhole::polkit::RULES_PATH),
        &keyhole::polkit::systemd_aliases,
    );
    let want = if polkit.is_empty() {
        "(1 warning)"
    } else {
        "(2 warnings)"
    };
    assert!(
        out.starts_with(&format!(
            "keyhole.toml: OK — 2 endpoints, 3 role capabilities, 3 rules, 0 users {want}"
        )),
        "{out}"
    );
    assert!(out.contains("no local accounts"), "{out}");
    if !polkit.is_empty() {
        assert!(out.contains("keyhole polkit --write"), "{out}");
    }
}

#[test]
fn shipped_files_in_repo_pass_library_check_when_accounts_exist() {
    prepare_accounts();
    if !is_root() {
        return; // run_as accounts differ from the current user: covered by the copy above
    }
    let cfg = config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("keyhole.toml"))
        .unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter().map(|x| x.rendered.clone()).collect::<String>()
            )
        });
    assert_eq!(cfg.endpoints.len(), 2);
    assert_eq!(cfg.server.winrs_endpoint, "Helpdesk");
}

#[test]
fn check_binary_reports_every_error_and_exits_1() {
    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Helpdesk.toml",
        "language_mode = \"no-language\"",
        "language_mode = \"full-language\"",
    );
    edit(
        d.path(),
        "role-capabilities/Diagnostics.toml",
        "\"Get-Uptime\"",
        "\"Get-Uptme\"",
    );
    edit(d.path(), "authorization-rules.toml", "id = 2", "id = 1");
    append(d.path(), "keyhole.toml", "colour = \"red\"\n");
    let (code, out, err) = check_bin(d.path());
    assert_eq!(code, 1, "{out}{err}");
    for (rel, needle, msg) in [
        (
            "endpoints/Helpdesk.toml",
            "\"full-language\"",
            "is not supported",
        ),
        (
            "role-capabilities/Diagnostics.toml",
            "\"Get-Uptme\"",
            "did you mean Get-Uptime?",
        ),
        (
            "authorization-rules.toml",
            "1\nname = \"ACME vendor to",
            "used more than once",
        ),
        ("keyhole.toml", "colour", "unknown field `colour`"),
    ] {
        let l = loc(d.path(), rel, needle);
        let line = err
            .lines()
            .find(|x| x.contains(msg))
            .unwrap_or_else(|| panic!("{msg:?} missing in:\n{err}"));
        assert!(line.contains(&l), "{msg:?} should be at {l}: {line}");
    }
    assert!(err.contains("keyhole check: 4 errors"), "{err}");
}

#[test]
fn unknown_key_and_wrong_type() {
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", "colour = \"red\"\n");
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "colour"),
        "unknown field `colour`",
    );
    let d = shipped_copy();
    edit(
        d.path(),
        "keyhole.toml",
        "computer_aliases = [\"127.0.0.1\"]",
        "computer_aliases = 5",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "5\n"),
        "invalid type",
    );
}

#[test]
fn untagged_entries_show_the_real_error() {
    let d = shipped_copy();
    edit(
        d.path(),
        "role-capabilities/Diagnostics.toml",
        "\"Get-Volume\",",
        "{ name = \"Get-Volume\", paramters = [] },",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "role-capabilities/Diagnostics.toml", "paramters"),
        "unknown field `paramters`",
    );
    let d = shipped_copy();
    edit(
        d.path(),
        "role-capabilities/Diagnostics.toml",
        "[\"/usr/bin/uptime\"]",
        "[{ path = \"/usr/bin/uptime\", args = [] }]",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "role-capabilities/Diagnostics.toml", "args = []"),
        "unknown field `args`",
    );
    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Helpdesk.toml",
        "# required_groups =",
        "required_groups = { and = [\"helpdesk\", { xor = [\"otp\"] }] }\n#",
    );
    expect_error(d.path(), "endpoints/Helpdesk.toml:", "xor");
}

#[test]
fn durations_and_counts() {
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[limits]\nidle_timeout = \"20 parsecs\"\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"20 parsecs\""),
        "invalid duration",
    );
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[limits]\nidle_timeout = \"0s\"\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"0s\""),
        "greater than zero",
    );
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[limits]\nmax_sessions_per_user = 0\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "0\n"),
        "positive integer",
    );
    let d = shipped_copy();
    append(d.path(), "endpoints/Vendor.toml", "");
    edit(
        d.path(),
        "endpoints/Vendor.toml",
        "run_as =",
        "idle_timeout = \"-5m\"\nrun_as =",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "endpoints/Vendor.toml", "\"-5m\""),
        "invalid duration",
    );
}

#[test]
fn endpoints() {
    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Vendor.toml",
        "name = \"Vendor\"",
        "name = \"helpdesk\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "endpoints/Vendor.toml", "\"helpdesk\""),
        "already used by",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Helpdesk.toml",
        "\"Diagnostics\"]",
        "\"Diagnostic\"]",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "endpoints/Helpdesk.toml", "\"Diagnostic\""),
        "role capability Diagnostic does not exist",
    );
    let errs = errors(d.path());
    assert!(
        errs.iter().any(|e| e
            .message
            .contains("available: Diagnostics, ServiceOperator, VendorReadOnly")),
        "{errs:?}"
    );

    let d = shipped_copy();
    edit(d.path(), "endpoints/Helpdesk.toml", "[[role]]\ngroup = \"helpdesk\"\nrole_capabilities = [\"ServiceOperator\", \"Diagnostics\"]\n", "");
    expect_error(d.path(), "endpoints/Helpdesk.toml:", "has no [[role]]");

    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Helpdesk.toml",
        "group = \"helpdesk\"",
        "group = \"helpdesk\"\nuser = \"bob\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "endpoints/Helpdesk.toml", "[[role]]"),
        "both user and group",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Helpdesk.toml",
        "group = \"helpdesk\"",
        "",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "endpoints/Helpdesk.toml", "[[role]]"),
        "needs user = ",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Helpdesk.toml",
        "\"no-language\"",
        "\"constrained-language\"",
    );
    expect_error(
        d.path(),
        &loc(
            d.path(),
            "endpoints/Helpdesk.toml",
            "\"constrained-language\"",
        ),
        "only runs \"no-language\" sessions",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        "endpoints/Helpdesk.toml",
        "\nrun_as =",
        "\n#run_as =",
    );
    expect_error(
        d.path(),
        "endpoints/Helpdesk.toml:",
        "missing field `run_as`",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        "keyhole.toml",
        "winrs_endpoint = \"Helpdesk\"",
        "winrs_endpoint = \"Helpdsk\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"Helpdsk\""),
        "names no endpoint",
    );
}

#[test]
fn run_as_accounts() {
    let d = shipped_copy();
    if is_root() {
        edit(
            d.path(),
            "endpoints/Vendor.toml",
            "run_as = \"keyhole-vendor\"",
            "run_as = \"root\"",
        );
        expect_warning(d.path(), "full control of the machine");
        let d = shipped_copy();
        edit(
            d.path(),
            "endpoints/Vendor.toml",
            "run_as = \"keyhole-vendor\"",
            "run_as = \"no-such-account-xyz\"",
        );
        expect_error(
            d.path(),
            &loc(d.path(), "endpoints/Vendor.toml", "\"no-such-account-xyz\""),
            "useradd --system",
        );
    } else {
        let line = format!("run_as = {:?}", me());
        let text = std::fs::read_to_string(d.path().join("endpoints/Vendor.toml")).unwrap();
        let replaced = text.replacen(&line, "run_as = \"root\"", 1);
        std::fs::write(d.path().join("endpoints/Vendor.toml"), replaced).unwrap();
        expect_error(
            d.path(),
            &loc(d.path(), "endpoints/Vendor.toml", "\"root\""),
            "not running as root",
        );
    }
}

#[test]
fn parameter_constraints() {
    let so = "role-capabilities/ServiceOperator.toml";
    let d = shipped_copy();
    edit(
        d.path(),
        so,
        "\"[a-z0-9@._-]+\\\\.service\"",
        "\"[a-z0-9@._-+\\\\.service\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), so, "\"[a-z0-9@._-+"),
        "not a valid regex",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        so,
        "\"[a-z0-9@._-]+\\\\.service\"",
        "\"(\\\\w{100}){100}\"",
    );
    expect_error(d.path(), &loc(d.path(), so, "\"(\\\\w{100})"), "simplify");

    let d = shipped_copy();
    edit(
        d.path(),
        so,
        "validate_set = [\"cron\", \"ssh\", \"nginx\"] } ] },\n  { name = \"Start",
        "validate_set = [\"cron\"], validate_pattern = \"x\" } ] },\n  { name = \"Start",
    );
    expect_error(
        d.path(),
        &loc(d.path(), so, "\"x\""),
        "both validate_set and validate_pattern",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        so,
        "validate_set = [\"cron\", \"ssh\", \"nginx\"]",
        "validate_set = []",
    );
    expect_error(d.path(), &loc(d.path(), so, "[] }"), "would allow nothing");
}

/// A constrained built-in lists only parameters it declares (checked by `check`, which knows
/// the commands); common parameters follow SPEC §4.1 (one list, in `catalog`).
#[test]
fn parameter_names_of_builtins() {
    let so = "role-capabilities/ServiceOperator.toml";
    let with_param = |name: &str| {
        let d = shipped_copy();
        edit(
            d.path(),
            so,
            "{ name = \"Name\", validate_set = [\"cron\", \"ssh\", \"nginx\"] }",
            &format!(
                "{{ name = \"Name\", validate_set = [\"cron\", \"ssh\", \"nginx\"] }}, {{ name = \"{name}\" }}"
            ),
        );
        d
    };
    let d = with_param("Nmae");
    expect_error(
        d.path(),
        &loc(d.path(), so, "\"Nmae\""),
        "Restart-Service has no parameter Nmae",
    );
    // `config::load` alone knows names only: the same file passes it.
    config::load(&d.path().join("keyhole.toml")).unwrap_or_else(|e| panic!("{e:?}"));
    // The accepted common parameters may be listed (ProgressAction and OutBuffer included:
    // the old list of seven refused them although every command accepts them) ...
    for ok in ["ErrorAction", "WhatIf", "ProgressAction", "OutBuffer"] {
        let d = with_param(ok);
        load(d.path()).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    // ... the variable-setting ones are refused, saying why.
    let d = with_param("ErrorVariable");
    expect_error(
        d.path(),
        &loc(d.path(), so, "\"ErrorVariable\""),
        "sets a variable",
    );
}

/// Names use the one wildcard SPEC §2.3 allows, `*`: `?` and brackets (which the name-mode
/// matcher would honour) are refused.
#[test]
fn names_use_only_the_star_wildcard() {
    let dg = "role-capabilities/Diagnostics.toml";
    for bad in ["Get-Uptim?", "Get-[SU]*"] {
        let d = shipped_copy();
        edit(d.path(), dg, "\"Get-Uptime\"", &format!("{bad:?}"));
        expect_error(
            d.path(),
            &loc(d.path(), dg, &format!("{bad:?}")),
            "a name may use only the `*` wildcard",
        );
    }
}

#[test]
fn command_names() {
    let dg = "role-capabilities/Diagnostics.toml";
    let d = shipped_copy();
    edit(d.path(), dg, "\"Get-Uptime\"", "\"Get-Servce\"");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"Get-Servce\""),
        "did you mean Get-Service?",
    );

    let d = shipped_copy();
    edit(d.path(), dg, "\"Get-Uptime\"", "\"Get-*\"");
    load(d.path()).unwrap_or_else(|e| panic!("{e:?}"));

    let d = shipped_copy();
    edit(d.path(), dg, "\"Get-Uptime\"", "\"Invoke-Expr*\"");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"Invoke-Expr*\""),
        "matches no cmdlet",
    );

    let d = shipped_copy();
    edit(d.path(), dg, "\"Get-Uptime\"", "\"Get-*-*\"");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"Get-*-*\""),
        "more than one `*`",
    );

    let d = shipped_copy();
    edit(d.path(), dg, "\"Get-Uptime\"", "\"Start-Process\"");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"Start-Process\""),
        "never provided",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        dg,
        "[functions.Get-DiskUsage]",
        "[aliases]\nx = \"Invoke-Expression\"\n\n[functions.Get-DiskUsage]",
    );
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"Invoke-Expression\""),
        "Invoke-Expression is never provided",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        dg,
        "visible_functions = [\"Get-DiskUsage\"]",
        "visible_functions = [\"Get-DiskUsage\", \"Get-Nothing\"]",
    );
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"Get-Nothing\""),
        "declared by no role capability that endpoint Helpdesk uses",
    );

    // A function declared only in a capability the endpoint does not use is not visible.
    let d = shipped_copy();
    edit(
        d.path(),
        dg,
        "visible_functions = [\"Get-DiskUsage\"]",
        "visible_functions = [\"Get-DiskUsage\", \"Get-OsRelease\"]",
    );
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"Get-OsRelease\""),
        "endpoint Helpdesk",
    );

    let d = shipped_copy();
    append(d.path(), dg, "");
    edit(
        d.path(),
        dg,
        "visible_functions =",
        "visible_providers = [\"FileSystem\"]\nvisible_functions =",
    );
    expect_error(
        d.path(),
        &loc(d.path(), dg, "visible_providers"),
        "no providers",
    );
}

fn with_function(extra_args: &str, program: &str) -> (tempfile::TempDir, &'static str) {
    let dg = "role-capabilities/Diagnostics.toml";
    let d = shipped_copy();
    edit(
        d.path(),
        dg,
        "program = \"/usr/bin/df\"",
        &format!("program = \"{program}\""),
    );
    edit(
        d.path(),
        dg,
        "args = [\"--output=source,size,used,avail,pcent,target\", \"{Mount}\"]",
        extra_args,
    );
    (d, dg)
}

#[test]
fn programs() {
    let (d, dg) = with_function("args = [\"{Mount}\"]", "df");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"df\""),
        "must be an absolute path",
    );

    let (d, dg) = with_function("args = [\"{Mount}\"]", "/usr/bin/no-such-program");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"/usr/bin/no-such-program\""),
        "cannot be used",
    );

    let d = shipped_copy();
    let link = d.path().join("df-link");
    std::os::unix::fs::symlink("/usr/bin/df", &link).unwrap();
    let dg = "role-capabilities/Diagnostics.toml";
    edit(
        d.path(),
        dg,
        "program = \"/usr/bin/df\"",
        &format!("program = \"{}\"", link.display()),
    );
    expect_error(
        d.path(),
        &loc(d.path(), dg, &format!("\"{}\"", link.display())),
        "is a symbolic link",
    );

    let d = shipped_copy();
    let copy = d.path().join("df-copy");
    std::fs::copy("/usr/bin/df", &copy).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    edit(
        d.path(),
        dg,
        "program = \"/usr/bin/df\"",
        &format!("program = \"{}\"", copy.display()),
    );
    expect_error(
        d.path(),
        &loc(d.path(), dg, &format!("\"{}\"", copy.display())),
        "writable by group or others",
    );
    if !is_root() {
        expect_error(
            d.path(),
            &loc(d.path(), dg, &format!("\"{}\"", copy.display())),
            "not root",
        );
    }

    let d = shipped_copy();
    edit(
        d.path(),
        dg,
        "timeout = \"30s\"",
        "timeout = \"30s\"\ncapabilities = [\"net_bind_service\", \"CAP_FLY\"]",
    );
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"CAP_FLY\""),
        "unknown Linux capability",
    );
}

#[test]
fn function_declarations() {
    let (d, dg) = with_function("args = [\"--mount={Mount}\"]", "/usr/bin/df");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"--mount={Mount}\""),
        "a placeholder must be a whole argument",
    );

    let (d, dg) = with_function("args = [\"{Mnt}\"]", "/usr/bin/df");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"{Mnt}\""),
        "names no declared parameter",
    );

    let d = shipped_copy();
    let dg = "role-capabilities/Diagnostics.toml";
    append(
        d.path(),
        dg,
        "\n[functions.Get-DiskUsage.parameters.Other]\ntype = \"string\"\nposition = 0\n",
    );
    expect_error(
        d.path(),
        &loc_after(d.path(), dg, "parameters.Other", "0"),
        "position 0 is used by both",
    );

    let d = shipped_copy();
    edit(d.path(), dg, "type = \"string\"", "type = \"strin\"");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"strin\""),
        "unknown variant `strin`",
    );

    let d = shipped_copy();
    edit(d.path(), dg, "output = \"table\"", "output = \"xml\"");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"xml\""),
        "unknown variant `xml`",
    );

    let d = shipped_copy();
    edit(d.path(), dg, "help = ", "colour = 1\nhelp = ");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "colour"),
        "unknown field `colour`",
    );
}

#[test]
fn dangerous_programs() {
    let (d, dg) = with_function("args = [\"-c\", \"{Mount}\"]", "/usr/bin/bash");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"/usr/bin/bash\""),
        "bash runs arbitrary commands (shell escape)",
    );

    let d = shipped_copy();
    let dg = "role-capabilities/Diagnostics.toml";
    edit(d.path(), dg, "[\"/usr/bin/uptime\"]", "[\"/usr/bin/uptime\", { path = \"/usr/bin/find\", arguments = [\"/srv\", \"-name\", \".*\"] }]");
    expect_error(
        d.path(),
        &loc(d.path(), dg, "\"/usr/bin/find\""),
        "find can execute programs with -exec",
    );

    // allow_unsafe turns the refusal into a warning.
    let d = shipped_copy();
    edit(d.path(), dg, "[\"/usr/bin/uptime\"]", "[\"/usr/bin/uptime\", { path = \"/usr/bin/find\", arguments = [\"/srv\"], allow_unsafe = true }]");
    expect_warning(d.path(), "find can execute programs with -exec");

    // Fixed arguments never trigger the check (the shipped Get-OsRelease runs cat).
    let d = shipped_copy();
    edit(
        d.path(),
        dg,
        "[\"/usr/bin/uptime\"]",
        "[\"/usr/bin/uptime\", \"/usr/bin/find\"]",
    );
    load(d.path()).unwrap_or_else(|e| panic!("{e:?}"));
}

#[test]
fn tls_files() {
    let d = shipped_copy();
    edit(
        d.path(),
        "keyhole.toml",
        "[listener]",
        "[listener]\ntls_certificate = \"cert.pem\"\ntls_private_key = \"key.pem\"",
    );
    std::fs::write(d.path().join("cert.pem"), "not pem at all\n").unwrap();
    let errs = errors(d.path());
    assert!(
        errs.iter()
            .any(|e| e.message.contains("holds no PEM certificate")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.message.contains("key.pem cannot be read")),
        "{errs:?}"
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"cert.pem\""),
        "holds no PEM certificate",
    );
}

#[test]
fn users_file() {
    let d = shipped_copy();
    expect_warning(d.path(), "no local accounts");
    std::fs::write(
        d.path().join("users.toml"),
        "[users.alice]\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\"\ngroups = [\"helpdesk\"]\nclient_certificates = [\"sha256:1234\"]\n\n[users.bob]\npassword = \"hunter2\"\n",
    )
    .unwrap();
    expect_error(
        d.path(),
        &loc(d.path(), "users.toml", "\"sha256:1234\""),
        "is not a certificate fingerprint",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "users.toml", "\"hunter2\""),
        "not an argon2 hash",
    );
}

#[test]
fn rules_file() {
    let r = "authorization-rules.toml";
    let d = shipped_copy();
    std::fs::write(d.path().join(r), "").unwrap();
    expect_warning(d.path(), "nobody gets in");
    let d = shipped_copy();
    std::fs::remove_file(d.path().join(r)).unwrap();
    expect_warning(d.path(), "nobody gets in");

    let d = shipped_copy();
    edit(d.path(), r, "id = 2", "id = 1");
    expect_error(
        d.path(),
        &loc(d.path(), r, "1\nname = \"ACME vendor to"),
        "used more than once",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        r,
        "user_group = \"helpdesk\"",
        "user_group = \"helpdesk\"\nuser = \"alice\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), r, "[[rule]]"),
        "exactly one of user or user_group",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        r,
        "computer = \"*\"\nconfiguration = \"Helpdesk\"",
        "computer = \"*\"\ncomputer_group = \"web\"\nconfiguration = \"Helpdesk\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), r, "[[rule]]"),
        "exactly one of computer or computer_group",
    );

    let d = shipped_copy();
    edit(
        d.path(),
        r,
        "user_group = \"helpdesk\"",
        "user_group = \"help*\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), r, "\"help*\""),
        "allowed only alone",
    );

    let d = shipped_copy();
    edit(d.path(), r, "computer = \"*\"", "computer_group = \"web\"");
    expect_error(
        d.path(),
        &loc(d.path(), r, "\"web\""),
        "is not defined under [computer_groups]",
    );

    // The limits gate 3 applies (one rule-field check, shared with `keyhole rule`): a field
    // over 256 bytes or with a control character never matches, so check refuses it (before,
    // the file loaded and the rule was silently dead).
    let d = shipped_copy();
    let long = "h".repeat(300);
    edit(
        d.path(),
        r,
        "user_group = \"helpdesk\"",
        &format!("user_group = \"{long}\""),
    );
    expect_error(
        d.path(),
        &loc(d.path(), r, &format!("\"{long}\"")),
        "longer than 256 bytes",
    );
    let d = shipped_copy();
    edit(
        d.path(),
        r,
        "user_group = \"helpdesk\"",
        "user_group = \"help\\tdesk\"",
    );
    expect_error(
        d.path(),
        &loc(d.path(), r, "\"help\\tdesk\""),
        "control characters",
    );
    let d = shipped_copy();
    append(d.path(), r, "\n[computer_groups]\nweb = [\"web*\"]\n");
    expect_error(
        d.path(),
        &loc(d.path(), r, "\"web*\""),
        "allowed only alone",
    );
}

#[test]
fn every_error_across_files_is_reported() {
    let d = shipped_copy();
    edit(
        d.path(),
        "role-capabilities/VendorReadOnly.toml",
        "\"acme-.*\"",
        "\"acme-(\"",
    );
    edit(
        d.path(),
        "role-capabilities/ServiceOperator.toml",
        "validate_set = [\"cron\", \"ssh\", \"nginx\"]",
        "validate_set = []",
    );
    edit(
        d.path(),
        "endpoints/Vendor.toml",
        "name = \"Vendor\"",
        "name = \"Helpdesk\"",
    );
    edit(
        d.path(),
        "authorization-rules.toml",
        "computer = \"*\"",
        "computer = \"web*\"",
    );
    let errs = errors(d.path());
    let files: std::collections::BTreeSet<PathBuf> = errs.iter().map(|e| e.file.clone()).collect();
    assert!(files.len() >= 4, "{errs:#?}");
}

#[test]
fn a_broken_capability_file_is_reported_once() {
    let d = shipped_copy();
    append(
        d.path(),
        "role-capabilities/VendorReadOnly.toml",
        "\nvisible_things = []\n",
    );
    let errs = errors(d.path());
    assert_eq!(errs.len(), 1, "{errs:#?}");
    expect_error(
        d.path(),
        &loc(
            d.path(),
            "role-capabilities/VendorReadOnly.toml",
            "visible_things",
        ),
        "unknown field `visible_things`",
    );
}

#[test]
fn a_cmdlet_listed_as_function_gets_a_hint() {
    let d = shipped_copy();
    edit(
        d.path(),
        "role-capabilities/Diagnostics.toml",
        "visible_functions = [\"Get-DiskUsage\"]",
        "visible_functions = [\"Get-DiskUsage\", \"Get-Service\"]",
    );
    expect_error(
        d.path(),
        &loc(
            d.path(),
            "role-capabilities/Diagnostics.toml",
            "\"Get-Service\"",
        ),
        "it is a cmdlet: list it in visible_cmdlets",
    );
}

/// Found by fuzzing: a configured path naming a device or a FIFO must be refused, not read
/// forever (`/dev/zero` exhausted memory; a FIFO blocked `check`, `serve` and reload).
#[test]
fn configured_paths_must_be_regular_files() {
    /// Point `key` (a top-level setting of the shipped keyhole.toml) at `value`.
    fn set(dir: &Path, key: &str, value: &str) {
        let path = dir.join("keyhole.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
        doc.insert(key, toml_edit::value(value));
        std::fs::write(&path, doc.to_string()).unwrap();
    }
    for (key, value) in [
        ("users", "/dev/zero"),
        ("authorization_rules", "/dev/urandom"),
    ] {
        let d = shipped_copy();
        set(d.path(), key, value);
        let all: String = errors(d.path())
            .iter()
            .map(|d| d.rendered.clone())
            .collect();
        assert!(all.contains("not a regular file"), "{key} = {value}: {all}");
    }
    let d = shipped_copy();
    let fifo = d.path().join("users-fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    set(d.path(), "users", &fifo.display().to_string());
    let all: String = errors(d.path())
        .iter()
        .map(|d| d.rendered.clone())
        .collect();
    assert!(all.contains("not a regular file"), "{all}");
}

/// Found by fuzzing: a NUL in a TOML comment gave a diagnostic with an empty message.
#[test]
fn control_character_in_a_comment_has_a_message() {
    let d = shipped_copy();
    let ep = d.path().join("endpoints/Helpdesk.toml");
    let text = std::fs::read_to_string(&ep).unwrap();
    std::fs::write(&ep, format!("# a\0b\n{text}")).unwrap();
    let errs = errors(d.path());
    assert!(!errs.is_empty());
    for e in &errs {
        assert!(
            !e.message.trim().is_empty(),
            "empty message: {}",
            e.rendered
        );
    }
    assert!(
        errs.iter().any(|e| e.message.contains("control character")),
        "{errs:?}"
    );
}

/// `[auth] negotiate` (issue 12): the keytab exists, is private and holds an HTTP/ or WSMAN/ key
/// for a name this server answers to; the other Negotiate keys are consistent.
#[test]
fn negotiate_keytab_and_ntlm() {
    use keyhole::config::keytab::encode_keytab;
    use std::os::unix::fs::PermissionsExt;

    let write_keytab =
        |dir: &Path, entries: &[keyhole::config::keytab::KeytabSpec<'_>], mode: u32| {
            let p = dir.join("http.keytab");
            std::fs::write(&p, encode_keytab(entries)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
    let negotiate = "\n[auth]\nnegotiate = true\nkeytab = \"http.keytab\"\n";

    // Missing keytab: says what to run.
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", negotiate);
    let at = loc(d.path(), "keyhole.toml", "\"http.keytab\"");
    expect_error(d.path(), &at, "does not exist");
    expect_error(d.path(), &at, "net ads keytab add HTTP");

    // A keytab for other names only (host/ keys, another host).
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", negotiate);
    write_keytab(
        d.path(),
        &[
            (&["host", "localhost"], "EXAMPLE.COM", 2, 18, &[1; 32]),
            (
                &["HTTP", "elsewhere.example.com"],
                "EXAMPLE.COM",
                2,
                18,
                &[1; 32],
            ),
        ],
        0o600,
    );
    expect_error(
        d.path(),
        &at,
        "holds no HTTP/ or WSMAN/ key for a name this server answers to (localhost, 127.0.0.1)",
    );
    expect_error(d.path(), &at, "HTTP/elsewhere.example.com@EXAMPLE.COM");

    // Readable by others.
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", negotiate);
    write_keytab(
        d.path(),
        &[(&["HTTP", "localhost"], "EXAMPLE.COM", 2, 18, &[1; 32])],
        0o644,
    );
    expect_error(d.path(), &at, "chmod 600");

    // Not a keytab.
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", negotiate);
    std::fs::write(
        d.path().join("http.keytab"),
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::set_permissions(
        d.path().join("http.keytab"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    expect_error(d.path(), &at, "not a keytab");

    // An empty keytab: the system's library refuses it, as `serve` would at start.
    if keyhole::sys::gssapi::available().is_ok() {
        let d = shipped_copy();
        append(d.path(), "keyhole.toml", negotiate);
        write_keytab(d.path(), &[], 0o600);
        expect_error(
            d.path(),
            &at,
            "the system's Kerberos library cannot use the keytab",
        );
    }

    // A good one (WSMAN/ for an alias, names compared without case) passes.
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", negotiate);
    write_keytab(
        d.path(),
        &[(&["WSMAN", "LOCALHOST"], "EXAMPLE.COM", 2, 18, &[1; 32])],
        0o600,
    );
    if keyhole::sys::gssapi::available().is_ok() {
        let cfg = load(d.path()).unwrap_or_else(|e| {
            panic!(
                "{}",
                e.iter().map(|x| x.rendered.clone()).collect::<String>()
            )
        });
        assert!(cfg.server.auth.negotiate);
        // The listener offers it (phase B): no warning says otherwise.
        assert!(
            !cfg.warnings.iter().any(|w| w.message.contains("negotiate")),
            "{:?}",
            cfg.warnings.iter().map(|w| &w.message).collect::<Vec<_>>()
        );
    }

    // ntlm without negotiate; negotiate with nothing to offer; a bad realm.
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", "\n[auth]\nntlm = true\n");
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "true\n"),
        "needs negotiate = true",
    );
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[auth]\nnegotiate = true\nkeytab = \"\"\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "true\n"),
        "offers no mechanism",
    );
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[auth]\nrealms = [\"alice@EXAMPLE.COM\"]\nchannel_binding = \"when-offered\"\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"alice@"),
        "not a Kerberos realm name",
    );
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[auth]\nchannel_binding = \"sometimes\"\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"sometimes\""),
        "unknown variant",
    );

    // NTLM only with an account that has an NT hash: fine; a malformed hash is an error, and an
    // unused one a warning.
    let hash = keyhole::auth::hash_password("pw").unwrap();
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[auth]\nnegotiate = true\nkeytab = \"\"\nntlm = true\n",
    );
    std::fs::write(
        d.path().join("users.toml"),
        format!("[users.alice]\npassword = \"{hash}\"\nnt_hash = \"0123\"\n"),
    )
    .unwrap();
    expect_error(
        d.path(),
        &loc(d.path(), "users.toml", "\"0123\""),
        "not 32 hexadecimal digits",
    );
    let d = shipped_copy();
    std::fs::write(
        d.path().join("users.toml"),
        format!(
            "[users.alice]\npassword = \"{hash}\"\nnt_hash = \"{}\"\n",
            keyhole::auth::ntlm::nt_hash_hex("pw")
        ),
    )
    .unwrap();
    expect_warning(
        d.path(),
        "nt_hash of alice is unused while [auth] ntlm = false",
    );
}

#[test]
fn console_settings() {
    // Valid: an alias of this server and an endpoint in another case.
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[console]\nenabled = true\nmax_sessions_per_user = 2\nidle_timeout = \"5m\"\ndefault_computer = \"127.0.0.1\"\ndefault_configuration = \"helpdesk\"\n",
    );
    let cfg = load(d.path()).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter().map(|x| x.rendered.clone()).collect::<String>()
        )
    });
    assert!(cfg.server.console.enabled);
    assert_eq!(cfg.server.console.max_sessions_per_user.0, 2);
    assert_eq!(
        cfg.server.console.idle_timeout.0,
        std::time::Duration::from_secs(300)
    );

    // On, with no HTTPS listener: located at `enabled`.
    let d = shipped_copy();
    edit(
        d.path(),
        "keyhole.toml",
        "https = \"127.0.0.1:5986\"",
        "https = \"\"",
    );
    append(d.path(), "keyhole.toml", "\n[console]\nenabled = true\n");
    expect_error(
        d.path(),
        &loc_after(d.path(), "keyhole.toml", "[console]", "true"),
        "served on the HTTPS listener only",
    );

    // Defaults that name another computer or no endpoint.
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[console]\nenabled = true\ndefault_computer = \"elsewhere\"\ndefault_configuration = \"Helpdsk\"\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"elsewhere\""),
        "is neither computer_name",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"Helpdsk\""),
        "console.default_configuration \"Helpdsk\" names no endpoint",
    );

    // Unknown keys and zero durations, as everywhere.
    let d = shipped_copy();
    append(d.path(), "keyhole.toml", "\n[console]\nidle = \"5m\"\n");
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "idle"),
        "unknown field `idle`",
    );
    let d = shipped_copy();
    append(
        d.path(),
        "keyhole.toml",
        "\n[console]\nidle_timeout = \"0s\"\n",
    );
    expect_error(
        d.path(),
        &loc(d.path(), "keyhole.toml", "\"0s\""),
        "greater than zero",
    );
}
