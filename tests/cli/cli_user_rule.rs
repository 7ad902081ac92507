//! `keyhole user` and `keyhole rule` through the binary: files written 0600, ids, test outcomes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

fn keyhole(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyhole"));
    cmd.args(args)
        .arg("--config")
        .arg(dir.join("keyhole.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            si.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn user_add_list_passwd_remove() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyhole(
        dir.path(),
        &[
            "user", "add", "alice", "--group", "helpdesk", "--group", "staff",
        ],
        Some("s3cret-pass\n"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = dir.path().join("users.toml");
    let body = std::fs::read_to_string(&file).unwrap();
    assert!(
        body.contains("$argon2id$"),
        "password must be stored as an argon2id hash"
    );
    assert!(
        !body.contains("s3cret-pass"),
        "the password itself is never stored"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let o = keyhole(dir.path(), &["user", "list"], None);
    assert!(text(&o).contains("alice"));
    assert!(text(&o).contains("helpdesk, staff"));

    // adding the same user again fails and leaves the file as it was
    let o = keyhole(dir.path(), &["user", "add", "ALICE"], Some("x\n"));
    assert!(!o.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), body);

    let o = keyhole(
        dir.path(),
        &["user", "passwd", "alice"],
        Some("another-pass\n"),
    );
    assert!(o.status.success());
    assert_ne!(std::fs::read_to_string(&file).unwrap(), body);

    let o = keyhole(dir.path(), &["user", "remove", "alice"], None);
    assert!(o.status.success());
    let o = keyhole(dir.path(), &["user", "list"], None);
    assert!(!text(&o).contains("alice"));
}

#[test]
fn password_is_never_an_argument() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyhole(dir.path(), &["user", "add", "bob", "--password", "x"], None);
    assert!(!o.status.success());
    assert!(!dir.path().join("users.toml").exists());
}

#[test]
fn rule_add_list_test_remove() {
    let dir = tempfile::tempdir().unwrap();
    let o = keyhole(
        dir.path(),
        &["user", "add", "carol", "--group", "helpdesk"],
        Some("pw-carol\n"),
    );
    assert!(o.status.success());
    let o = keyhole(
        dir.path(),
        &[
            "rule",
            "add",
            "--user-group",
            "helpdesk",
            "--computer",
            "*",
            "--configuration",
            "Helpdesk",
            "--name",
            "helpdesk anywhere",
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text(&o).trim(), "1");
    let o = keyhole(
        dir.path(),
        &[
            "rule",
            "add",
            "--user",
            "dave",
            "--computer",
            "web01",
            "--configuration",
            "*",
        ],
        None,
    );
    assert_eq!(text(&o).trim(), "2");
    let rules = dir.path().join("authorization-rules.toml");
    assert_eq!(
        std::fs::metadata(&rules).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let o = keyhole(dir.path(), &["rule", "list"], None);
    assert!(text(&o).contains("helpdesk anywhere"));
    let o = keyhole(dir.path(), &["rule", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&text(&o)).unwrap();
    assert_eq!(v["rules"].as_array().unwrap().len(), 2);

    // carol's group comes from users.toml
    let o = keyhole(
        dir.path(),
        &[
            "rule",
            "test",
            "--user",
            "carol",
            "--computer",
            "srv9",
            "--configuration",
            "helpdesk",
        ],
        None,
    );
    assert!(o.status.success());
    assert!(text(&o).contains("allowed by rule 1"), "{}", text(&o));
    let o = keyhole(
        dir.path(),
        &[
            "rule",
            "test",
            "--user",
            "dave",
            "--computer",
            "web02",
            "--configuration",
            "Helpdesk",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(text(&o).starts_with("denied"));

    // both a user and a group: refused by the command line, file unchanged
    let before = std::fs::read_to_string(&rules).unwrap();
    let o = keyhole(
        dir.path(),
        &[
            "rule",
            "add",
            "--user",
            "a",
            "--user-group",
            "b",
            "--computer",
            "x",
            "--configuration",
            "E",
        ],
        None,
    );
    assert!(!o.status.success());
    assert_eq!(std::fs::read_to_string(&rules).unwrap(), before);

    let o = keyhole(dir.path(), &["rule", "remove", "1"], None);
    assert!(o.status.success());
    let o = keyhole(dir.path(), &["rule", "remove", "42"], None);
    assert!(!o.status.success(), "removing an unknown id is an error");
    let o = keyhole(
        dir.path(),
        &[
            "rule",
            "test",
            "--user",
            "carol",
            "--computer",
            "srv9",
            "--configuration",
            "Helpdesk",
        ],
        None,
    );
    assert!(!o.status.success());
}
