//! Gate 2 through PAM with a real local account (needs root: useradd, chpasswd, /etc/pam.d).
//! Everything created is removed by a Drop guard, even when an assertion fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use keyhole::auth::{groups_of, AuthMethod, AuthResult, Authenticator, DenyReason};
use keyhole::config::{AuthConfig, UsersFile};

use crate::shipped;

/// A throwaway OS account in a throwaway group, with a PAM service file using pam_unix.
struct TempAccount {
    user: String,
    group: String,
    password: String,
    service: String,
    pam_file: PathBuf,
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

impl TempAccount {
    fn create() -> TempAccount {
        let tag = format!("{:08x}", rand::random::<u32>());
        let acct = TempAccount {
            user: format!("khpam{tag}"),
            group: format!("khgrp{tag}"),
            password: format!("Pw-{:016x}", rand::random::<u64>()),
            service: format!("keyhole-test-{tag}"),
            pam_file: PathBuf::from(format!("/etc/pam.d/keyhole-test-{tag}")),
        };
        std::fs::write(
            &acct.pam_file,
            "auth required pam_unix.so\naccount required pam_unix.so\n",
        )
        .unwrap();
        run("groupadd", &[&acct.group]);
        run("useradd", &["-m", &acct.user]);
        run("usermod", &["-a", "-G", &acct.group, &acct.user]);
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{}:{}\n", acct.user, acct.password).as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "chpasswd failed");
        acct
    }
}

impl Drop for TempAccount {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .args(["-r", &self.user])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("groupdel")
            .arg(&self.group)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.pam_file);
    }
}

/// The tests run one at a time: account creation takes the passwd lock, and a log capture
/// (`with_default`) must not race other threads registering the same tracing callsites.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ip() -> IpAddr {
    "192.0.2.10".parse().unwrap()
}

fn pam_auth(service: &str, users: UsersFile) -> Authenticator {
    let cfg = AuthConfig {
        pam_service: service.to_string(),
        ..AuthConfig::default()
    };
    Authenticator::new(&cfg, Path::new("/nonexistent/users.toml"), users)
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn pam_account_password_and_groups() {
    if !crate::prereq::root_or_skip("auth_pam: useradd, chpasswd, /etc/pam.d") {
        return;
    }
    let _serial = serial();
    let acct = TempAccount::create();
    let a = pam_auth(&acct.service, UsersFile::default());

    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let (good, bad, unknown) = tracing::subscriber::with_default(subscriber, || {
        (
            a.verify_basic(&acct.user, &acct.password, ip()),
            a.verify_basic(&acct.user, "not-the-password-xyzzy", ip()),
            a.verify_basic("khpamnosuchuser", "whatever-xyzzy", ip()),
        )
    });

    let id = good.identity().expect("the right password must pass PAM");
    assert_eq!(id.user, acct.user);
    assert_eq!(id.method, AuthMethod::Pam);
    assert!(
        id.groups.contains(&acct.group),
        "groups from the OS: {:?}",
        id.groups
    );
    assert_eq!(
        Some(id.groups.clone()),
        groups_of(&UsersFile::default(), true, &acct.user)
    );

    assert!(
        matches!(bad, AuthResult::Denied(DenyReason::Pam(_))),
        "{bad:?}"
    );
    assert!(
        matches!(unknown, AuthResult::Denied(DenyReason::Pam(_))),
        "{unknown:?}"
    );

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("authentication refused"), "{log}");
    assert!(
        !log.contains(&acct.password),
        "the log contains the password: {log}"
    );
    assert!(
        !log.contains("xyzzy"),
        "the log contains a wrong password: {log}"
    );

    // groups_of consults the OS for PAM users.
    assert!(a.groups_of(&acct.user).unwrap().contains(&acct.group));
}

#[test]
fn local_account_shadows_pam() {
    if !crate::prereq::root_or_skip("auth_pam: useradd, chpasswd, /etc/pam.d") {
        return;
    }
    let _serial = serial();
    let acct = TempAccount::create();
    // The same name in users.toml with another password: only the local password counts.
    let hash = keyhole::auth::hash_password("local-password").unwrap();
    let users: UsersFile = toml::from_str(&format!(
        "[users.{}]\npassword = \"{hash}\"\ngroups = [\"local\"]\n",
        acct.user
    ))
    .unwrap();
    let a = pam_auth(&acct.service, users);
    assert!(matches!(
        a.verify_basic(&acct.user, &acct.password, ip()),
        AuthResult::Denied(DenyReason::WrongPassword)
    ));
    let r = a.verify_basic(&acct.user, "local-password", ip());
    let id = r.identity().unwrap();
    assert_eq!(
        (id.method, id.groups.clone()),
        (AuthMethod::Basic, vec!["local".to_string()])
    );
}

#[test]
fn without_pam_service_os_accounts_are_unknown() {
    if !crate::prereq::root_or_skip("auth_pam: useradd, chpasswd, /etc/pam.d") {
        return;
    }
    let _serial = serial();
    let acct = TempAccount::create();
    let a = Authenticator::new(
        &AuthConfig::default(),
        Path::new("/nonexistent"),
        UsersFile::default(),
    );
    assert!(matches!(
        a.verify_basic(&acct.user, &acct.password, ip()),
        AuthResult::Denied(DenyReason::UnknownUser)
    ));
}

/// A shipped configuration in which the account's supplementary group has a role in Helpdesk
/// and a rule to reach it; PAM on or off.
fn group_config(acct: &TempAccount, pam: bool) -> tempfile::TempDir {
    let d = shipped::shipped_copy();
    if pam {
        shipped::append(
            d.path(),
            "keyhole.toml",
            &format!("\n[auth]\npam_service = \"{}\"\n", acct.service),
        );
    }
    shipped::append(
        d.path(),
        "endpoints/Helpdesk.toml",
        &format!(
            "\n[[role]]\ngroup = \"{}\"\nrole_capabilities = [\"Diagnostics\"]\n",
            acct.group
        ),
    );
    shipped::append(
        d.path(),
        "authorization-rules.toml",
        &format!(
            "\n[[rule]]\nid = 4\nuser_group = \"{}\"\ncomputer = \"*\"\nconfiguration = \"Helpdesk\"\n",
            acct.group
        ),
    );
    d
}

/// The `Groups:` line of the one transcript `keyhole run` wrote.
fn transcript_groups(dir: &Path) -> String {
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("transcripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Groups: "))
        .unwrap_or_else(|| panic!("no Groups line in {text}"))
        .to_string()
}

/// One `auth::groups_of`: for an OS account with a supplementary group, a live PAM login,
/// `keyhole rule test`, `keyhole capability` and `keyhole run` see the same groups. Without
/// PAM the account cannot log in, and the three commands agree that it has no groups (before,
/// `capability` and `run` read the OS groups anyway and let it in).
#[test]
fn cli_and_login_agree_on_groups() {
    if !crate::prereq::root_or_skip("auth_pam: useradd, chpasswd, /etc/pam.d") {
        return;
    }
    let _serial = serial();
    let acct = TempAccount::create();
    let u = acct.user.as_str();

    let d = group_config(&acct, true);
    let a = pam_auth(&acct.service, UsersFile::default());
    let r = a.verify_basic(u, &acct.password, ip());
    let groups = r.identity().expect("PAM login").groups.clone();
    assert!(groups.contains(&acct.group), "{groups:?}");
    assert_eq!(a.groups_of(u), Some(groups.clone()));

    let (code, out, err) = shipped::keyhole(
        d.path(),
        &[
            "rule",
            "test",
            "--user",
            u,
            "--computer",
            "localhost",
            "--configuration",
            "Helpdesk",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("allowed by rule 4"), "{out}");

    let (code, out, err) = shipped::keyhole(
        d.path(),
        &[
            "capability",
            "--endpoint",
            "Helpdesk",
            "--user",
            u,
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let shown: Vec<String> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, groups);

    let (code, out, err) = shipped::keyhole(
        d.path(),
        &["run", "--endpoint", "Helpdesk", "--user", u],
        Some("Get-Uptime"),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(transcript_groups(d.path()), groups.join(", "));

    // Without PAM nobody of that name logs in; the commands say the same.
    let d = group_config(&acct, false);
    let a = Authenticator::new(
        &AuthConfig::default(),
        Path::new("/nonexistent"),
        UsersFile::default(),
    );
    assert!(matches!(
        a.verify_basic(u, &acct.password, ip()),
        AuthResult::Denied(DenyReason::UnknownUser)
    ));
    assert_eq!(a.groups_of(u), None);
    let (code, out, _) = shipped::keyhole(
        d.path(),
        &[
            "rule",
            "test",
            "--user",
            u,
            "--computer",
            "localhost",
            "--configuration",
            "Helpdesk",
        ],
        None,
    );
    assert_eq!(code, 1, "{out}");
    let (code, _, err) = shipped::keyhole(
        d.path(),
        &["capability", "--endpoint", "Helpdesk", "--user", u],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no role applies"), "{err}");
    let (code, _, err) = shipped::keyhole(
        d.path(),
        &["run", "--endpoint", "Helpdesk", "--user", u],
        Some("Get-Uptime"),
    );
    assert_eq!(code, 2, "{err}");
}

#[test]
fn expired_account_is_refused_by_the_account_check() {
    if !crate::prereq::root_or_skip("auth_pam: useradd, chpasswd, chage, /etc/pam.d") {
        return;
    }
    let _serial = serial();
    let acct = TempAccount::create();
    let a = pam_auth(&acct.service, UsersFile::default());
    assert!(
        a.verify_basic(&acct.user, &acct.password, ip())
            .identity()
            .is_some(),
        "the right password passes before the account expires"
    );
    // Expired yesterday: pam_authenticate still accepts the password, pam_acct_mgmt must not.
    run("chage", &["-E", "1", &acct.user]);
    let b = pam_auth(&acct.service, UsersFile::default());
    match b.verify_basic(&acct.user, &acct.password, ip()) {
        AuthResult::Denied(DenyReason::Pam(m)) => {
            assert!(m.contains("account check"), "{m}");
            assert!(!m.contains(&acct.password), "{m}");
        }
        other => panic!("an expired account must be refused: {other:?}"),
    }
}
