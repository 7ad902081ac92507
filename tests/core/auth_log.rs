//! Passwords never reach the log. Alone in its binary: a `with_default` capture must not race
//! other test threads registering the same tracing callsites.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhole::auth::{load_users, user_add, Authenticator};
use keyhole::config::{AuthConfig, Dur, Positive};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn setup(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("users.toml");
    user_add(&path, "alice", &[], "pw-alice").unwrap();
    user_add(&path, "bob", &[], "pw-bob").unwrap();
    path
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
fn passwords_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(dir.path());
    let c = AuthConfig {
        max_failed_logins: Positive(2),
        lockout: Dur(Duration::from_secs(60)),
        ..AuthConfig::default()
    };
    let a = Authenticator::new(&c, &path, load_users(&path).unwrap());
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        a.verify_basic("alice", "Tr0ub4dor-wrong", ip("10.8.0.1"));
        a.verify_basic("alice", "Tr0ub4dor-wrong2", ip("10.8.0.1"));
        a.verify_basic("alice", "pw-alice", ip("10.8.0.1")); // locked out
        a.verify_basic("ghost", "Tr0ub4dor-ghost", ip("10.8.0.2"));
        a.verify_basic("bob", "pw-bob", ip("10.8.0.3"));
    });
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("authentication refused"),
        "nothing was logged: {log}"
    );
    assert!(log.contains("wrong password"), "{log}");
    assert!(log.contains("locked out"), "{log}");
    assert!(log.contains("unknown user"), "{log}");
    for secret in ["Tr0ub4dor", "pw-alice", "pw-bob"] {
        assert!(!log.contains(secret), "the log contains a password: {log}");
    }
}
