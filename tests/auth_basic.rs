//! Gate 2 with local accounts: argon2id, refusals, lock-outs, the success cache, certificates,
//! `keyhole user` file management. (Log hygiene: tests/core/auth_log.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyhole::auth::{
    load_users, parse_fingerprint, user_add, user_list, user_passwd, user_remove, AuthError,
    AuthMethod, AuthResult, Authenticator, DenyReason,
};
use keyhole::config::{AuthConfig, Dur, Positive, UsersFile};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cfg(max: u64, lockout: Duration) -> AuthConfig {
    AuthConfig {
        max_failed_logins: Positive(max),
        lockout: Dur(lockout),
        ..AuthConfig::default()
    }
}

/// A users file with alice (helpdesk, staff), bob and a disabled carol, all with password "pw-<name>".
fn setup(dir: &Path) -> PathBuf {
    let path = dir.join("users.toml");
    user_add(
        &path,
        "alice",
        &["helpdesk".into(), "staff".into()],
        "pw-alice",
    )
    .unwrap();
    user_add(&path, "bob", &[], "pw-bob").unwrap();
    user_add(&path, "carol", &[], "pw-carol").unwrap();
    let mut users = load_users(&path).unwrap();
    users.users.get_mut("carol").unwrap().disabled = true;
    keyhole::config::edit::write_atomic(&path, toml::to_string(&users).unwrap().as_bytes())
        .unwrap();
    path
}

fn auth_for(path: &Path, cfg: &AuthConfig) -> Authenticator {
    Authenticator::new(cfg, path, load_users(path).unwrap())
}

fn denied(r: &AuthResult) -> DenyReason {
    match r {
        AuthResult::Denied(d) => d.clone(),
        AuthResult::Ok(i) => panic!("expected a refusal, got {i:?}"),
    }
}

#[test]
fn authenticator_is_shareable() {
    fn check<T: Send + Sync>() {}
    check::<Authenticator>();
}

#[test]
fn argon2_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("$argon2id$"), "{text}");
    assert!(
        !text.contains("pw-alice"),
        "the password is stored in clear"
    );

    let a = auth_for(&path, &AuthConfig::default());
    let r = a.verify_basic("alice", "pw-alice", ip("10.0.0.1"));
    let id = r.identity().expect("alice should get in");
    assert_eq!(id.user, "alice");
    assert_eq!(id.groups, vec!["helpdesk".to_string(), "staff".to_string()]);
    assert_eq!(id.method, AuthMethod::Basic);
    // Names are case-insensitive; the canonical name is reported.
    let r = a.verify_basic("ALICE", "pw-alice", ip("10.0.0.1"));
    assert_eq!(r.identity().unwrap().user, "alice");

    assert_eq!(
        denied(&a.verify_basic("alice", "pw-bob", ip("10.0.0.1"))),
        DenyReason::WrongPassword
    );
    assert_eq!(
        denied(&a.verify_basic("alice", "PW-ALICE", ip("10.0.0.1"))),
        DenyReason::WrongPassword
    );
    assert_eq!(
        denied(&a.verify_basic("carol", "pw-carol", ip("10.0.0.1"))),
        DenyReason::Disabled
    );
    assert_eq!(
        denied(&a.verify_basic("alice", "", ip("10.0.0.1"))),
        DenyReason::Malformed
    );
}

#[test]
fn unknown_user_still_costs_a_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &AuthConfig::default());
    let before = a.verification_count();
    assert_eq!(
        denied(&a.verify_basic("mallory", "x", ip("10.0.0.2"))),
        DenyReason::UnknownUser
    );
    assert_eq!(a.verification_count(), before + 1);
}

#[test]
fn basic_disabled_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let c = AuthConfig {
        basic: false,
        ..AuthConfig::default()
    };
    let a = auth_for(&path, &c);
    assert_eq!(
        denied(&a.verify_basic("alice", "pw-alice", ip("10.0.0.1"))),
        DenyReason::BasicDisabled
    );
}

#[test]
fn lockout_per_user_and_source_then_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &cfg(3, Duration::from_secs(1)));
    // Three failures from three addresses lock nothing: no address reached the limit, and a
    // user is never locked out everywhere at once.
    for i in 1..=3 {
        let r = a.verify_basic("alice", "wrong", ip(&format!("10.1.0.{i}")));
        assert_eq!(denied(&r), DenyReason::WrongPassword);
    }
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.1.0.1"))
        .identity()
        .is_some());
    // Three failures from one address lock alice there (and that address).
    for _ in 0..3 {
        let r = a.verify_basic("alice", "wrong", ip("10.1.1.1"));
        assert_eq!(denied(&r), DenyReason::WrongPassword);
    }
    let r = a.verify_basic("alice", "pw-alice", ip("10.1.1.1"));
    assert_eq!(denied(&r), DenyReason::LockedOutUser);
    // Elsewhere alice gets in, and so does another user.
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.1.0.9"))
        .identity()
        .is_some());
    assert!(a
        .verify_basic("bob", "pw-bob", ip("10.1.0.9"))
        .identity()
        .is_some());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.1.1.1"))
        .identity()
        .is_some());
}

#[test]
fn lockout_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &cfg(3, Duration::from_secs(1)));
    for user in ["u1", "u2", "u3"] {
        assert_eq!(
            denied(&a.verify_basic(user, "x", ip("10.2.0.1"))),
            DenyReason::UnknownUser
        );
    }
    // The right password from the locked address is refused; from elsewhere it works.
    assert_eq!(
        denied(&a.verify_basic("alice", "pw-alice", ip("10.2.0.1"))),
        DenyReason::LockedOutSource
    );
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.2.0.2"))
        .identity()
        .is_some());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.2.0.1"))
        .identity()
        .is_some());
}

#[test]
fn success_resets_the_pair_counter_not_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &cfg(3, Duration::from_secs(60)));
    for _ in 0..2 {
        a.verify_basic("bob", "wrong", ip("10.3.0.1"));
    }
    assert!(a
        .verify_basic("bob", "pw-bob", ip("10.3.0.1"))
        .identity()
        .is_some());
    // bob's failures there were cleared; the address's were not: one more failure from it
    // (any user) locks the address, not bob at the address.
    assert_eq!(
        denied(&a.verify_basic("bob", "wrong", ip("10.3.0.1"))),
        DenyReason::WrongPassword
    );
    assert_eq!(
        denied(&a.verify_basic("bob", "pw-bob-new", ip("10.3.0.1"))),
        DenyReason::LockedOutSource
    );
}

/// Issue 9, finding 7: five requests with an empty password from another address locked alice
/// out everywhere. An empty password is not a guess: nothing is counted.
#[test]
fn empty_passwords_from_another_address_lock_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &cfg(5, Duration::from_secs(300)));
    let (home, attacker) = (ip("10.8.0.1"), ip("10.8.0.2"));
    for _ in 0..10 {
        assert_eq!(
            denied(&a.verify_basic("alice", "", attacker)),
            DenyReason::Malformed
        );
    }
    assert!(a
        .verify_basic("alice", "pw-alice", home)
        .identity()
        .is_some());
    // Not even the attacker's address is locked.
    assert!(a
        .verify_basic("alice", "pw-alice", attacker)
        .identity()
        .is_some());
}

/// Five wrong passwords from address B lock (alice, B) and B, never (alice, A).
#[test]
fn wrong_passwords_from_another_address_lock_only_that_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &cfg(5, Duration::from_secs(300)));
    let (home, attacker) = (ip("10.8.1.1"), ip("10.8.1.2"));
    for _ in 0..5 {
        assert_eq!(
            denied(&a.verify_basic("alice", "guess", attacker)),
            DenyReason::WrongPassword
        );
    }
    assert_eq!(
        denied(&a.verify_basic("alice", "pw-alice", attacker)),
        DenyReason::LockedOutUser
    );
    assert_eq!(
        denied(&a.verify_basic("bob", "pw-bob", attacker)),
        DenyReason::LockedOutSource
    );
    assert!(a
        .verify_basic("alice", "pw-alice", home)
        .identity()
        .is_some());
    // IPv6: the whole /64 is one source.
    let (v6a, v6b) = (ip("2001:db8:0:1::a"), ip("2001:db8:0:1::b"));
    for _ in 0..5 {
        a.verify_basic("bob", "guess", v6a);
    }
    assert_eq!(
        denied(&a.verify_basic("bob", "pw-bob", v6b)),
        DenyReason::LockedOutUser
    );
    assert!(a
        .verify_basic("bob", "pw-bob", ip("2001:db8:0:2::b"))
        .identity()
        .is_some());
}

/// A lock-out of the very address an open session uses (someone there guessing) does not cut
/// that session: the credential it verified keeps working there; guesses during the lock-out
/// are refused unverified and, past the limit, not even a remembered credential is honoured
/// (so the cache cannot be used to test passwords during a lock-out).
#[test]
fn a_lockout_does_not_cut_an_open_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &cfg(3, Duration::from_secs(300)));
    let office = ip("10.8.2.1");
    assert!(a
        .verify_basic("alice", "pw-alice", office)
        .identity()
        .is_some());
    let verified = a.verification_count();
    for _ in 0..3 {
        assert_eq!(
            denied(&a.verify_basic("alice", "guess", office)),
            DenyReason::WrongPassword
        );
    }
    // Her session's requests keep working, without verifying again.
    for _ in 0..3 {
        assert!(a
            .verify_basic("alice", "pw-alice", office)
            .identity()
            .is_some());
    }
    assert_eq!(a.verification_count(), verified + 3);
    // A reload of an unchanged users file does not make her verify again either.
    a.reload_users().unwrap();
    assert!(a
        .verify_basic("alice", "pw-alice", office)
        .identity()
        .is_some());
    assert_eq!(a.verification_count(), verified + 3);
    // Guesses while locked are refused without a verification...
    for _ in 0..2 {
        assert_eq!(
            denied(&a.verify_basic("alice", "guess2", office)),
            DenyReason::LockedOutUser
        );
    }
    assert_eq!(a.verification_count(), verified + 3);
    assert!(a
        .verify_basic("alice", "pw-alice", office)
        .identity()
        .is_some());
    // ...and once the guessing budget of the lock-out is spent, nothing from there gets in.
    assert_eq!(
        denied(&a.verify_basic("alice", "guess3", office)),
        DenyReason::LockedOutUser
    );
    assert_eq!(
        denied(&a.verify_basic("alice", "pw-alice", office)),
        DenyReason::LockedOutUser
    );
    // A credential remembered at one address is not honoured at another.
    let n = a.verification_count();
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.8.2.2"))
        .identity()
        .is_some());
    assert_eq!(a.verification_count(), n + 1);
}

#[test]
fn cache_hit_avoids_rehashing() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &AuthConfig::default());
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.4.0.1"))
        .identity()
        .is_some());
    let after_first = a.verification_count();
    for _ in 0..5 {
        assert!(a
            .verify_basic("alice", "pw-alice", ip("10.4.0.1"))
            .identity()
            .is_some());
    }
    assert_eq!(
        a.verification_count(),
        after_first,
        "cached logins must not hash again"
    );
    // A wrong password is never served from the cache.
    assert!(a
        .verify_basic("alice", "pw-alicf", ip("10.4.0.1"))
        .identity()
        .is_none());
    assert_eq!(a.verification_count(), after_first + 1);
}

#[test]
fn cache_dropped_when_the_entry_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &AuthConfig::default());
    assert!(a
        .verify_basic("alice", "pw-alice", ip("10.5.0.1"))
        .identity()
        .is_some());
    let n = a.verification_count();

    // New groups: the next login verifies again and sees them.
    let mut users = load_users(&path).unwrap();
    users.users.get_mut("alice").unwrap().groups = vec!["admins".into()];
    a.replace_users(users.clone());
    let r = a.verify_basic("alice", "pw-alice", ip("10.5.0.1"));
    assert_eq!(r.identity().unwrap().groups, vec!["admins".to_string()]);
    assert_eq!(a.verification_count(), n + 1);

    // Disabled while cached: refused at once.
    users.users.get_mut("alice").unwrap().disabled = true;
    a.replace_users(users);
    assert_eq!(
        denied(&a.verify_basic("alice", "pw-alice", ip("10.5.0.1"))),
        DenyReason::Disabled
    );

    // A password change through the file: the old password no longer works.
    user_passwd(&path, "alice", "new-secret").unwrap();
    let mut users = load_users(&path).unwrap();
    users.users.get_mut("alice").unwrap().disabled = false;
    a.replace_users(users);
    assert_eq!(
        denied(&a.verify_basic("alice", "pw-alice", ip("10.5.0.2"))),
        DenyReason::WrongPassword
    );
    assert!(a
        .verify_basic("alice", "new-secret", ip("10.5.0.2"))
        .identity()
        .is_some());
}

#[test]
fn reload_users_reads_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let a = auth_for(&path, &AuthConfig::default());
    user_add(&path, "dave", &["ops".into()], "pw-dave").unwrap();
    assert_eq!(
        denied(&a.verify_basic("dave", "pw-dave", ip("10.6.0.1"))),
        DenyReason::UnknownUser
    );
    a.reload_users().unwrap();
    assert_eq!(
        a.verify_basic("dave", "pw-dave", ip("10.6.0.1"))
            .identity()
            .unwrap()
            .groups,
        vec!["ops"]
    );
    assert_eq!(a.groups_of("DAVE"), Some(vec!["ops".to_string()]));
    assert_eq!(a.groups_of("nobody-here"), None);
}

#[test]
fn client_certificate_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let fp = [0x5a_u8; 32];
    let with_colons: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
    let mut users = load_users(&path).unwrap();
    users.users.get_mut("bob").unwrap().client_certificates =
        vec![format!("SHA256:{}", with_colons.join(":"))];
    users.users.get_mut("carol").unwrap().client_certificates =
        vec![format!("sha256:{}", "11".repeat(32))];
    let a = Authenticator::new(&AuthConfig::default(), &path, users);
    let r = a.verify_certificate_fingerprint(&fp);
    let id = r.identity().unwrap();
    assert_eq!(
        (id.user.as_str(), id.method),
        ("bob", AuthMethod::Certificate)
    );
    assert_eq!(
        denied(&a.verify_certificate_fingerprint(&[0x11; 32])),
        DenyReason::Disabled
    );
    assert_eq!(
        denied(&a.verify_certificate_fingerprint(&[0; 32])),
        DenyReason::UnknownCertificate
    );
    assert_eq!(
        parse_fingerprint(&format!("sha256:{}", "5a".repeat(32))),
        Some(fp)
    );
}

#[test]
fn user_file_management() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    assert!(user_list(&path).unwrap().is_empty());
    user_add(&path, "Alice", &["g1".into()], "p1").unwrap();
    assert!(matches!(
        user_add(&path, "alice", &[], "p2"),
        Err(AuthError::UserExists { .. })
    ));
    assert!(matches!(
        user_add(&path, "bad name", &[], "p"),
        Err(AuthError::InvalidName(_))
    ));
    assert!(matches!(
        user_add(&path, "x", &[], ""),
        Err(AuthError::EmptyPassword)
    ));
    assert!(matches!(
        user_add(&path, "x", &["".into()], "p"),
        Err(AuthError::InvalidGroup(_))
    ));
    assert!(matches!(
        user_passwd(&path, "zed", "p"),
        Err(AuthError::NoSuchUser { .. })
    ));
    assert!(matches!(
        user_remove(&path, "zed"),
        Err(AuthError::NoSuchUser { .. })
    ));
    user_add(&path, "bob", &[], "p3").unwrap();
    assert_eq!(
        user_list(&path).unwrap(),
        vec![
            ("Alice".to_string(), vec!["g1".to_string()], false),
            ("bob".to_string(), vec![], false)
        ]
    );
    let before = std::fs::read_to_string(&path).unwrap();
    user_passwd(&path, "ALICE", "p9").unwrap();
    assert_ne!(std::fs::read_to_string(&path).unwrap(), before);
    user_remove(&path, "alice").unwrap();
    assert_eq!(user_list(&path).unwrap().len(), 1);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A broken file is reported, not overwritten.
    std::fs::write(&path, "[users.x]\npassword = 3\n").unwrap();
    assert!(matches!(
        user_add(&path, "y", &[], "p"),
        Err(AuthError::Parse { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[users.x]\npassword = 3\n"
    );
}

#[test]
fn stored_hash_that_is_not_argon2id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let users: UsersFile = toml::from_str("[users.old]\npassword = \"$6$salt$abcdef\"\n").unwrap();
    let a = Authenticator::new(&AuthConfig::default(), &path, users);
    assert!(matches!(
        denied(&a.verify_basic("old", "whatever", ip("10.7.0.1"))),
        DenyReason::BadStoredHash(_)
    ));
}

#[test]
fn comments_survive_user_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    std::fs::write(&path, "# Accounts for the help desk.\n").unwrap();
    user_add(&path, "alice", &["helpdesk".into()], "p1").unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    // A file of comments only: they stay (toml_edit keeps them after the tables).
    assert!(text.contains("# Accounts for the help desk.\n"), "{text}");
    assert!(text.contains("[users.alice]"), "{text}");
    text.push_str(
        "\n# Vendor notes follow.\n[users.zed]\n\
         password = \"$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaA\" # kept on purpose\n\
         disabled = true\n",
    );
    std::fs::write(&path, &text).unwrap();
    user_add(&path, "vendor", &[], "p2").unwrap();
    user_passwd(&path, "alice", "p3").unwrap();
    user_remove(&path, "vendor").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("# Accounts for the help desk."), "{text}");
    assert!(text.contains("# Vendor notes follow."), "{text}");
    assert!(text.contains("# kept on purpose"), "{text}");
    assert!(!text.contains("vendor"), "{text}");
    let users = load_users(&path).unwrap();
    assert_eq!(users.users.len(), 2);
    let a = Authenticator::new(&AuthConfig::default(), &path, users);
    assert!(a
        .verify_basic("alice", "p3", ip("10.9.0.1"))
        .identity()
        .is_some());
}

// ---- Negotiate (issue 12): Kerberos against a real KDC, NTLM against the real pyspnego ----------
//
// Kerberos: tests/krb/realm.sh makes a throwaway realm on loopback (its own krb5.conf, kdc.conf,
// database, keytab and ccache in a temporary directory, removed afterwards); the initiator is the
// same system GSSAPI, driven through keyhole's FFI with alice's ticket from `kinit`. NTLM: the
// client is pyspnego (what pypsrp and pywinrm use) and pypsrp's WinRMEncryption, through
// tests/krb/pyspnego_client.py. Without krb5kdc or the venv these skip, except under CI (CI=true),
// where tests/run.sh has installed them and a skip would hide a failure.

mod negotiate_support {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::path::{Path, PathBuf};
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

    pub fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// `None` (after saying why) when the prerequisite is missing outside CI.
    pub fn require(what: &str, present: bool) -> bool {
        if present {
            return true;
        }
        if std::env::var_os("CI").is_some() {
            panic!("{what} is missing under CI: tests/run.sh should have installed it");
        }
        eprintln!("SKIPPED: {what} is not installed (tests/run.sh installs it)");
        false
    }

    pub fn on_path(program: &str) -> bool {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(program).exists())
    }

    /// A running throwaway realm; stopped and removed on drop.
    pub struct Realm {
        pub dir: PathBuf,
        pub keytab: PathBuf,
        pub ccache: String,
    }

    impl Realm {
        pub fn start() -> Option<Realm> {
            if !require(
                "the MIT KDC (krb5-kdc, krb5-admin-server, krb5-user)",
                on_path("krb5kdc") && on_path("kadmin.local") && on_path("kinit"),
            ) {
                return None;
            }
            let dir = std::env::temp_dir().join(format!("keyhole-realm-{}", std::process::id()));
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            let out = Command::new(repo().join("tests/krb/realm.sh"))
                .arg("start")
                .arg(&dir)
                .arg(port.to_string())
                .output()
                .unwrap();
            let realm = Realm {
                keytab: dir.join("keytab"),
                ccache: format!("FILE:{}", dir.join("ccache").display()),
                dir,
            };
            assert!(
                out.status.success(),
                "realm.sh start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The initiator finds the KDC through this krb5.conf; the acceptor's replay cache
            // lives in the realm directory too. (This binary's other tests do not use Kerberos.)
            std::env::set_var("KRB5_CONFIG", realm.dir.join("krb5.conf"));
            std::env::set_var("KRB5RCACHEDIR", &realm.dir);
            Some(realm)
        }
    }

    impl Drop for Realm {
        fn drop(&mut self) {
            let _ = Command::new(repo().join("tests/krb/realm.sh"))
                .arg("stop")
                .arg(&self.dir)
                .status();
        }
    }

    /// tests/krb/pyspnego_client.py under the venv's python.
    pub struct PyClient {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    }

    impl PyClient {
        pub fn python() -> Option<PathBuf> {
            let p = std::env::var_os("KEYHOLE_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join(".venv/bin/python"));
            let ok = p.exists()
                && Command::new(&p)
                    .args(["-c", "import spnego, pypsrp"])
                    .status()
                    .is_ok_and(|s| s.success());
            require("the test venv with pyspnego and pypsrp (.venv)", ok).then_some(p)
        }

        /// The venv's python when it also has python-gssapi (pyspnego's Kerberos).
        pub fn python_with_gssapi() -> Option<PathBuf> {
            let p = Self::python()?;
            let ok = Command::new(&p)
                .args(["-c", "import gssapi, krb5"])
                .status()
                .is_ok_and(|s| s.success());
            require(
                "python-gssapi and krb5 in the test venv (pyspnego[kerberos])",
                ok,
            )
            .then_some(p)
        }

        pub fn start(python: &Path, args: &[&str]) -> PyClient {
            let mut child = Command::new(python)
                .arg(repo().join("tests/krb/pyspnego_client.py"))
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            PyClient {
                child,
                stdin,
                stdout,
            }
        }

        pub fn send(&mut self, line: &str) {
            writeln!(self.stdin, "{line}").unwrap();
            self.stdin.flush().unwrap();
        }

        pub fn recv(&mut self) -> String {
            let mut l = String::new();
            self.stdout.read_line(&mut l).unwrap();
            assert!(!l.is_empty(), "the python client ended early");
            l.trim().to_string()
        }
    }

    impl Drop for PyClient {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

use base64::Engine as _;
use keyhole::auth::encryption::{decrypt_body, encrypt_body, PROTOCOL_SPNEGO};
use keyhole::auth::negotiate::{
    ConnectionAuth, Mechanism, NegotiateError, NegotiateSettings, Negotiated, Outcome, Scheme,
    SecurityContext,
};
use keyhole::auth::ntlm::nt_hash;
use keyhole::config::ChannelBinding;
use keyhole::sys::gssapi::{self, InitiatorCred, Mech};
use negotiate_support::{PyClient, Realm};

fn b64e(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}
fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
fn token_of(www: &str) -> Vec<u8> {
    b64d(www.split_once(' ').unwrap().1)
}

fn krb_settings(realm: &Realm, realms: &[&str], cb: ChannelBinding) -> NegotiateSettings {
    let auth = AuthConfig {
        negotiate: true,
        keytab: realm.keytab.display().to_string(),
        realms: realms.iter().map(|s| s.to_string()).collect(),
        channel_binding: cb,
        ..AuthConfig::default()
    };
    NegotiateSettings::from_config(&auth, Some(&realm.keytab), "localhost").unwrap()
}

/// Runs a whole Kerberos exchange: keyhole's acceptor against a GSSAPI initiator with alice's
/// ticket. Returns the acceptor's outcome and the initiator's context.
fn kerberos_exchange(
    realm: &Realm,
    settings: &NegotiateSettings,
    mech: Mech,
    target: &str,
    client_bindings: Option<&[u8]>,
    server_bindings: Option<&[u8]>,
) -> (Result<Box<Negotiated>, NegotiateError>, gssapi::Context) {
    let cred = InitiatorCred::from_ccache(&realm.ccache).unwrap();
    let mut client = gssapi::Context::initiator(target, mech).unwrap();
    let flags =
        gssapi::FLAG_MUTUAL | gssapi::FLAG_CONF | gssapi::FLAG_INTEG | gssapi::FLAG_SEQUENCE;
    let scheme = match mech {
        Mech::Kerberos => Scheme::Kerberos,
        Mech::Spnego => Scheme::Negotiate,
    };
    let mut conn = ConnectionAuth::new();
    let mut token = match client
        .initiate(&cred, None, flags, client_bindings)
        .unwrap()
    {
        gssapi::Step::Continue(t) => t,
        other => panic!("initiator completed at once: {other:?}"),
    };
    for _ in 0..4 {
        match conn.step(settings, scheme, &token, server_bindings, &|_| None) {
            Ok(Outcome::Continue { www_authenticate }) => {
                assert!(www_authenticate.starts_with(scheme.as_str()));
                match client
                    .initiate(
                        &cred,
                        Some(&token_of(&www_authenticate)),
                        flags,
                        client_bindings,
                    )
                    .unwrap()
                {
                    gssapi::Step::Continue(t) => token = t,
                    other => panic!("initiator done before the acceptor: {other:?}"),
                }
            }
            Ok(Outcome::Complete(done)) => {
                // Mutual authentication: the acceptor's last token completes the initiator.
                let www = done.www_authenticate.clone().expect("a mutual-auth token");
                assert!(www.starts_with(scheme.as_str()));
                let step = client
                    .initiate(&cred, Some(&token_of(&www)), flags, client_bindings)
                    .unwrap();
                assert!(matches!(step, gssapi::Step::Complete { .. }), "{step:?}");
                return (Ok(done), client);
            }
            Err(e) => return (Err(e), client),
        }
    }
    panic!("no completion in 4 legs");
}

#[test]
fn negotiate_kerberos_against_a_real_kdc() {
    let Some(realm) = Realm::start() else { return };

    // Raw Kerberos (`Kerberos` scheme) to HTTP/localhost; realms = [] means the keytab's realm.
    let settings = krb_settings(&realm, &[], ChannelBinding::WhenOffered);
    assert_eq!(settings.realms(), ["KEYHOLE.TEST"]);
    assert_eq!(settings.challenge_headers(), ["Negotiate", "Kerberos"]);
    let (done, client) = kerberos_exchange(
        &realm,
        &settings,
        Mech::Kerberos,
        "HTTP@localhost",
        None,
        None,
    );
    let done = done.unwrap();
    assert_eq!(done.user, "alice");
    assert_eq!(done.principal, "alice@KEYHOLE.TEST");
    assert_eq!(done.mechanism, Mechanism::Kerberos);

    // Message encryption both ways with the established contexts (wrap_iov/unwrap_iov).
    let mut server = done.security;
    let mut client = SecurityContext::Kerberos(client);
    let soap = b"<s:Envelope><s:Body>Get-Service</s:Body></s:Envelope>";
    let body = encrypt_body(&mut client, PROTOCOL_SPNEGO, soap).unwrap();
    assert!(
        !body.windows(soap.len()).any(|w| w == soap),
        "plaintext leaked"
    );
    assert_eq!(decrypt_body(&mut server, &body, 1 << 20).unwrap(), soap);
    let reply = encrypt_body(&mut server, PROTOCOL_SPNEGO, b"<reply/>").unwrap();
    assert_eq!(
        decrypt_body(&mut client, &reply, 1 << 20).unwrap(),
        b"<reply/>"
    );
    // A replayed request is refused by the acceptor.
    assert!(decrypt_body(&mut server, &body, 1 << 20).is_err());

    // SPNEGO (`Negotiate`) to WSMAN/localhost goes through the system's SPNEGO.
    let (done, _) = kerberos_exchange(
        &realm,
        &settings,
        Mech::Spnego,
        "WSMAN@localhost",
        None,
        None,
    );
    let done = done.unwrap();
    assert_eq!(
        (done.user.as_str(), done.scheme),
        ("alice", Scheme::Negotiate)
    );

    // A principal of a realm not listed in [auth] realms is refused.
    let other = krb_settings(&realm, &["OTHER.TEST"], ChannelBinding::WhenOffered);
    let (res, _) = kerberos_exchange(&realm, &other, Mech::Spnego, "HTTP@localhost", None, None);
    assert!(
        matches!(res, Err(NegotiateError::Realm { .. })),
        "{:?}",
        res.map(|d| d.user)
    );

    // Channel bindings (HTTPS): matching ones pass and are reported; other ones are refused;
    // none at all pass with "when-offered" and are refused with "required".
    let cb = b"tls-server-end-point:0123456789abcdef0123456789abcdef";
    let wrong = b"tls-server-end-point:ffffffffffffffffffffffffffffffff";
    let (res, _) = kerberos_exchange(
        &realm,
        &settings,
        Mech::Kerberos,
        "HTTP@localhost",
        Some(cb),
        Some(cb),
    );
    assert!(res.unwrap().channel_bound);
    let (res, _) = kerberos_exchange(
        &realm,
        &settings,
        Mech::Kerberos,
        "HTTP@localhost",
        Some(wrong),
        Some(cb),
    );
    assert!(
        matches!(res, Err(NegotiateError::Kerberos(_))),
        "mismatched bindings accepted"
    );
    let (res, _) = kerberos_exchange(
        &realm,
        &settings,
        Mech::Kerberos,
        "HTTP@localhost",
        None,
        Some(cb),
    );
    assert!(!res.unwrap().channel_bound);
    let required = krb_settings(&realm, &[], ChannelBinding::Required);
    let (res, _) = kerberos_exchange(
        &realm,
        &required,
        Mech::Spnego,
        "HTTP@localhost",
        None,
        Some(cb),
    );
    assert!(matches!(res, Err(NegotiateError::ChannelBinding(_))));
    let (res, _) = kerberos_exchange(
        &realm,
        &required,
        Mech::Spnego,
        "HTTP@localhost",
        Some(cb),
        Some(cb),
    );
    assert!(res.unwrap().channel_bound);

    // Gate 2: the principal is a local account (users.toml here) with its groups; without one
    // (and no OS account of that name) it is refused as an unknown user.
    let (res, _) = kerberos_exchange(
        &realm,
        &settings,
        Mech::Kerberos,
        "HTTP@localhost",
        None,
        None,
    );
    let done = res.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let gate = Authenticator::new(&AuthConfig::default(), &users, UsersFile::default());
    if nix::unistd::User::from_name("alice")
        .ok()
        .flatten()
        .is_none()
    {
        assert_eq!(
            gate.verify_negotiated(Ok(&done), ip("127.0.0.1")),
            AuthResult::Denied(DenyReason::UnknownUser)
        );
    }
    user_add(&users, "alice", &["helpdesk".into()], "unused-for-kerberos").unwrap();
    gate.reload_users().unwrap();
    let AuthResult::Ok(id) = gate.verify_negotiated(Ok(&done), ip("127.0.0.1")) else {
        panic!("alice refused")
    };
    assert_eq!(
        (id.user.as_str(), id.method),
        ("alice", AuthMethod::Kerberos)
    );
    assert_eq!(id.groups, vec!["helpdesk".to_string()]);

    // The real client: pyspnego's Kerberos (python-gssapi over the same ccache) as pypsrp and
    // pywinrm use it, raw (`Kerberos` scheme) and in SPNEGO, and pypsrp's WinRMEncryption
    // framing of the GSS wrap_iov header/data/padding layout, both ways.
    if let Some(py) = PyClient::python_with_gssapi() {
        std::env::set_var("KRB5CCNAME", &realm.ccache);
        for (protocol, scheme, service, wire) in [
            (
                "kerberos",
                Scheme::Kerberos,
                "HTTP",
                keyhole::auth::encryption::PROTOCOL_KERBEROS,
            ),
            ("negotiate", Scheme::Negotiate, "WSMAN", PROTOCOL_SPNEGO),
        ] {
            let (done, mut client) = py_exchange(
                &py,
                &settings,
                scheme,
                &["-", "-", protocol, service],
                Some(cb),
            );
            let done = done.unwrap_or_else(|e| panic!("{protocol}: {e}"));
            assert_eq!(
                (done.user.as_str(), done.mechanism),
                ("alice", Mechanism::Kerberos)
            );
            assert!(done.channel_bound, "pyspnego sent the channel bindings");
            assert_eq!(done.encryption_protocol(), wire);
            let mut sec = done.security;
            for i in 0..3 {
                let soap = format!(
                    "<s:Envelope>{protocol} {i} {}</s:Envelope>",
                    "x".repeat(i * 1000)
                );
                client.send(&format!("ENCRYPT {}", b64e(soap.as_bytes())));
                let body = b64d(&client.recv());
                assert_eq!(
                    decrypt_body(&mut sec, &body, 1 << 20).unwrap(),
                    soap.as_bytes()
                );
                let reply = format!("<r>{i}</r>");
                let enc = encrypt_body(&mut sec, wire, reply.as_bytes()).unwrap();
                client.send(&format!("DECRYPT {}", b64e(&enc)));
                assert_eq!(b64d(&client.recv()), reply.as_bytes());
            }
        }
        let (res, _) = py_exchange(
            &py,
            &other,
            Scheme::Negotiate,
            &["-", "-", "negotiate", "HTTP"],
            None,
        );
        assert!(matches!(res, Err(NegotiateError::Realm { .. })));
        std::env::remove_var("KRB5CCNAME");
    }

    drop(realm);
}

/// One NTLM exchange against pyspnego; the outcome of keyhole's last step.
fn ntlm_exchange(
    py: &std::path::Path,
    settings: &NegotiateSettings,
    user: &str,
    password: &str,
    protocol: &str,
    bindings: Option<&[u8]>,
) -> (Result<Box<Negotiated>, NegotiateError>, PyClient) {
    py_exchange(
        py,
        settings,
        Scheme::Negotiate,
        &[user, password, protocol, "HTTP"],
        bindings,
    )
}

/// One exchange against pyspnego (`args` as tests/krb/pyspnego_client.py takes them).
fn py_exchange(
    py: &std::path::Path,
    settings: &NegotiateSettings,
    scheme: Scheme,
    args: &[&str],
    bindings: Option<&[u8]>,
) -> (Result<Box<Negotiated>, NegotiateError>, PyClient) {
    // The client binds to `bindings` too, unless `args` already names its own (5th argument).
    let cb_arg = bindings.map(b64e);
    let mut args = args.to_vec();
    if let (Some(a), 4) = (cb_arg.as_deref(), args.len()) {
        args.push(a);
    }
    let mut client = PyClient::start(py, &args);
    let lookup = |name: &str| {
        name.eq_ignore_ascii_case("alice")
            .then(|| nt_hash("alice-ntlm-pw"))
    };
    let mut conn = ConnectionAuth::new();
    let mut token = b64d(&client.recv());
    loop {
        match conn.step(settings, scheme, &token, bindings, &lookup) {
            Ok(Outcome::Continue { www_authenticate }) => {
                client.send(&b64e(&token_of(&www_authenticate)));
                let line = client.recv();
                assert_ne!(line, "DONE", "pyspnego completed before keyhole");
                token = b64d(&line);
            }
            Ok(Outcome::Complete(done)) => {
                if let Some(www) = &done.www_authenticate {
                    client.send(&b64e(&token_of(www)));
                }
                assert_eq!(client.recv(), "DONE");
                return (Ok(done), client);
            }
            Err(e) => {
                client.send("ERROR");
                return (Err(e), client);
            }
        }
    }
}

#[test]
fn negotiate_ntlm_against_pyspnego_and_pypsrp_encryption() {
    let Some(py) = PyClient::python() else { return };
    let settings = NegotiateSettings::ntlm_only(ChannelBinding::WhenOffered, "localhost");
    for protocol in ["ntlm", "negotiate"] {
        // Right hash: authenticated, then pypsrp-framed encryption both ways, twice.
        let (done, mut client) =
            ntlm_exchange(&py, &settings, "alice", "alice-ntlm-pw", protocol, None);
        let done = done.unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(done.user, "alice");
        assert_eq!(done.mechanism, Mechanism::Ntlm);
        assert_eq!(done.www_authenticate.is_some(), protocol == "negotiate");
        assert!(!done.channel_bound, "plain HTTP: nothing to bind to");
        let mut sec = done.security;
        for i in 0..2 {
            let soap = format!("<s:Envelope>{protocol} {i}</s:Envelope>");
            client.send(&format!("ENCRYPT {}", b64e(soap.as_bytes())));
            let body = b64d(&client.recv());
            assert_eq!(
                decrypt_body(&mut sec, &body, 1 << 20).unwrap(),
                soap.as_bytes()
            );
            let reply =
                encrypt_body(&mut sec, PROTOCOL_SPNEGO, format!("<r>{i}</r>").as_bytes()).unwrap();
            client.send(&format!("DECRYPT {}", b64e(&reply)));
            assert_eq!(b64d(&client.recv()), format!("<r>{i}</r>").as_bytes());
        }

        // Wrong password (so a wrong NT response) and an unknown user: refused, user named.
        let (res, _) = ntlm_exchange(&py, &settings, "alice", "guess", protocol, None);
        let err = res.unwrap_err();
        assert_eq!(err.failed_user(), Some("alice"), "{err}");
        let (res, _) = ntlm_exchange(&py, &settings, "mallory", "alice-ntlm-pw", protocol, None);
        assert_eq!(res.unwrap_err().failed_user(), Some("mallory"));
    }

    // Channel bindings as pypsrp sends them over HTTPS.
    let cb = b"tls-server-end-point:0123456789abcdef0123456789abcdef";
    let required = NegotiateSettings::ntlm_only(ChannelBinding::Required, "localhost");
    let (res, _) = ntlm_exchange(
        &py,
        &required,
        "alice",
        "alice-ntlm-pw",
        "negotiate",
        Some(cb),
    );
    assert!(res.unwrap().channel_bound);
    // A client that binds to another TLS channel (a relay) is refused even with "when-offered".
    let offered = NegotiateSettings::ntlm_only(ChannelBinding::WhenOffered, "localhost");
    let other = b"tls-server-end-point:ffffffffffffffffffffffffffffffff";
    let (res, _) = py_exchange(
        &py,
        &offered,
        Scheme::Negotiate,
        &["alice", "alice-ntlm-pw", "negotiate", "HTTP", &b64e(other)],
        Some(cb),
    );
    assert!(matches!(res, Err(NegotiateError::Ntlm(_))));
    // A client that sends no bindings to a TLS server: accepted (unbound) with "when-offered",
    // refused with "required".
    let mut client = PyClient::start(&py, &["alice", "alice-ntlm-pw", "ntlm", "HTTP"]);
    let mut conn = ConnectionAuth::new();
    let lookup = |_: &str| Some(nt_hash("alice-ntlm-pw"));
    let first = b64d(&client.recv());
    let Ok(Outcome::Continue { www_authenticate }) =
        conn.step(&required, Scheme::Negotiate, &first, Some(cb), &lookup)
    else {
        panic!("no challenge")
    };
    client.send(&b64e(&token_of(&www_authenticate)));
    let auth = b64d(&client.recv());
    let err = conn
        .step(&required, Scheme::Negotiate, &auth, Some(cb), &lookup)
        .unwrap_err();
    assert!(matches!(err, NegotiateError::Ntlm(_)), "{err}");
    let mut client = PyClient::start(&py, &["alice", "alice-ntlm-pw", "ntlm", "HTTP"]);
    let mut conn = ConnectionAuth::new();
    let first = b64d(&client.recv());
    let Ok(Outcome::Continue { www_authenticate }) =
        conn.step(&offered, Scheme::Negotiate, &first, Some(cb), &lookup)
    else {
        panic!("no challenge")
    };
    client.send(&b64e(&token_of(&www_authenticate)));
    let auth = b64d(&client.recv());
    let Ok(Outcome::Complete(done)) =
        conn.step(&offered, Scheme::Negotiate, &auth, Some(cb), &lookup)
    else {
        panic!("when-offered refused a client without bindings")
    };
    assert!(!done.channel_bound);
}

/// `keyhole user add/passwd` with `[auth] ntlm = true` store the password's NT hash; a password
/// change without it removes the old hash (it would still admit the old password via NTLM).
#[test]
fn nt_hash_follows_the_password_and_the_ntlm_setting() {
    use keyhole::auth::{user_add_ntlm, user_passwd_ntlm};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    user_add_ntlm(&path, "alice", &["helpdesk".into()], "first-pw", true).unwrap();
    user_add(&path, "bob", &[], "pw-bob").unwrap();
    let users = load_users(&path).unwrap();
    assert_eq!(
        users.users["alice"].nt_hash,
        Some(keyhole::auth::ntlm::nt_hash_hex("first-pw"))
    );
    assert_eq!(users.users["bob"].nt_hash, None);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("first-pw"));

    user_passwd_ntlm(&path, "alice", "second-pw", true).unwrap();
    let users = load_users(&path).unwrap();
    assert_eq!(
        users.users["alice"].nt_hash,
        Some(keyhole::auth::ntlm::nt_hash_hex("second-pw"))
    );

    user_passwd(&path, "alice", "third-pw").unwrap();
    let users = load_users(&path).unwrap();
    assert_eq!(users.users["alice"].nt_hash, None);
    assert!(!std::fs::read_to_string(&path).unwrap().contains("nt_hash"));
    assert_eq!(users.users["alice"].groups, vec!["helpdesk".to_string()]);
}

#[test]
fn nt_hash_lookup_respects_ntlm_disabled_accounts_and_case() {
    use keyhole::auth::{ntlm, user_add_ntlm};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    user_add_ntlm(&path, "Alice", &[], "pw-a", true).unwrap();
    user_add_ntlm(&path, "carol", &[], "pw-c", true).unwrap();
    user_add(&path, "bob", &[], "pw-b").unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "disabled = false\nnt_hash = \"",
            "disabled = true\nnt_hash = \"",
        )
        .replacen("disabled = true", "disabled = false", 1);
    std::fs::write(&path, text).unwrap();
    let users = load_users(&path).unwrap();
    assert!(users.users["carol"].disabled && !users.users["Alice"].disabled);
    let on = AuthConfig {
        negotiate: true,
        ntlm: true,
        ..AuthConfig::default()
    };
    let a = Authenticator::new(&on, &path, users.clone());
    assert_eq!(a.nt_hash_of("alice"), Some(ntlm::nt_hash("pw-a")));
    assert_eq!(a.nt_hash_of("bob"), None, "no hash stored");
    assert_eq!(a.nt_hash_of("carol"), None, "disabled");
    assert_eq!(a.nt_hash_of("nobody"), None);
    let off = Authenticator::new(&AuthConfig::default(), &path, users);
    assert_eq!(off.nt_hash_of("alice"), None, "ntlm = false");
}

/// One NTLM exchange with keyhole's test client; keyhole's final outcome.
fn ntlm_with(
    settings: &NegotiateSettings,
    auth: &Authenticator,
    user: &str,
    password: &str,
) -> Result<Box<Negotiated>, NegotiateError> {
    use keyhole::auth::ntlm::client;
    let mut conn = ConnectionAuth::new();
    let neg = client::negotiate();
    let lookup = |name: &str| auth.nt_hash_of(name);
    let Outcome::Continue { www_authenticate } =
        conn.step(settings, Scheme::Negotiate, &neg, None, &lookup)?
    else {
        panic!("no challenge")
    };
    let (msg, _) = client::authenticate(
        &neg,
        &token_of(&www_authenticate),
        user,
        "",
        &nt_hash(password),
        None,
    )
    .unwrap();
    match conn.step(settings, Scheme::Negotiate, &msg, None, &lookup)? {
        Outcome::Complete(d) => Ok(d),
        Outcome::Continue { .. } => panic!("no completion"),
    }
}

/// Negotiate outcomes go through gate 2 like Basic: NTLM failures count towards the lock-out,
/// a locked-out user is refused even with the right hash, disabled accounts are refused, and
/// the identity carries the users.toml name and groups.
#[test]
fn negotiate_outcomes_go_through_gate_2_with_lockouts() {
    use keyhole::auth::user_add_ntlm;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    user_add_ntlm(&path, "Alice", &["helpdesk".into()], "pw-a", true).unwrap();
    let cfg = AuthConfig {
        negotiate: true,
        keytab: String::new(),
        ntlm: true,
        max_failed_logins: Positive(3),
        lockout: Dur(Duration::from_secs(300)),
        ..AuthConfig::default()
    };
    let auth = Authenticator::new(&cfg, &path, load_users(&path).unwrap());
    let s = NegotiateSettings::ntlm_only(ChannelBinding::WhenOffered, "localhost");
    let src = ip("192.0.2.7");

    let done = ntlm_with(&s, &auth, "alice", "pw-a").unwrap();
    let AuthResult::Ok(id) = auth.verify_negotiated(Ok(&done), src) else {
        panic!("refused")
    };
    assert_eq!(
        (id.user.as_str(), id.groups.clone(), id.method),
        ("Alice", vec!["helpdesk".to_string()], AuthMethod::Ntlm)
    );

    for _ in 0..3 {
        let err = ntlm_with(&s, &auth, "alice", "guess").unwrap_err();
        assert_eq!(
            auth.verify_negotiated(Err(&err), src),
            AuthResult::Denied(DenyReason::WrongPassword)
        );
    }
    // Locked out at that address (the pair), even with the right hash; from another address
    // alice still gets in: failures never lock a user out elsewhere (issue 9, finding 7).
    let done = ntlm_with(&s, &auth, "alice", "pw-a").unwrap();
    assert_eq!(
        auth.verify_negotiated(Ok(&done), src),
        AuthResult::Denied(DenyReason::LockedOutUser)
    );
    let done = ntlm_with(&s, &auth, "alice", "pw-a").unwrap();
    assert!(matches!(
        auth.verify_negotiated(Ok(&done), ip("198.51.100.1")),
        AuthResult::Ok(_)
    ));

    // A malformed exchange is refused without counting against anyone.
    let mut conn = ConnectionAuth::new();
    let err = conn
        .step(&s, Scheme::Negotiate, b"garbage", None, &|_| None)
        .unwrap_err();
    assert!(matches!(
        auth.verify_negotiated(Err(&err), src),
        AuthResult::Denied(DenyReason::Negotiate(_))
    ));

    // Disabled accounts have no NT hash to offer, so their exchange fails as unknown.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("disabled = false", "disabled = true");
    std::fs::write(&path, text).unwrap();
    auth.reload_users().unwrap();
    assert!(auth.nt_hash_of("alice").is_none());
}
