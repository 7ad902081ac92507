//! Gate 2 with local accounts: argon2id, refusals, lock-outs, the success cache, certificates,
//! `keyhole user` file management. (Log hygiene: tests/auth_log.rs.)
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
    keyhole::gateway::write_atomic(&path, toml::to_string(&users).unwrap().as_bytes()).unwrap();
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
