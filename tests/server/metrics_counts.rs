//! What phase A counts (authentication failures and lock-outs in `auth`; reloads in `daemon`)
//! and how `keyhole check` validates `[metrics] listen`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyhole::auth::{load_users, user_add, AuthResult, Authenticator};
use keyhole::config::{self, AuthConfig, Dur, Positive};
use keyhole::metrics::Metrics;

use crate::shipped;

fn line(text: &str, prefix: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .to_string()
}

#[test]
fn auth_failures_and_lockouts_are_counted_by_reason_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    user_add(&path, "alice", &[], "pw-alice").unwrap();
    let cfg = AuthConfig {
        max_failed_logins: Positive(2),
        lockout: Dur(Duration::from_secs(300)),
        ..AuthConfig::default()
    };
    let auth = Authenticator::new(&cfg, &path, load_users(&path).unwrap());
    let metrics = Arc::new(Metrics::new());
    auth.attach_metrics(metrics.clone());
    let src: IpAddr = "192.0.2.7".parse().unwrap();

    assert!(matches!(
        auth.verify_basic("alice", "pw-alice", src),
        AuthResult::Ok(_)
    ));
    assert!(matches!(
        auth.verify_basic("alice", "wrong", src),
        AuthResult::Denied(_)
    ));
    // The second failure starts a lock-out of (alice, this address) and of the address.
    assert!(matches!(
        auth.verify_basic("alice", "wrong", src),
        AuthResult::Denied(_)
    ));
    // Another guess from there is refused unverified (the credential verified earlier from this
    // address would still work: a lock-out never cuts open sessions).
    assert!(matches!(
        auth.verify_basic("alice", "another-guess", src),
        AuthResult::Denied(_)
    ));
    assert!(matches!(
        auth.verify_basic("nobody", "x", "192.0.2.8".parse().unwrap()),
        AuthResult::Denied(_)
    ));

    let text = metrics.render();
    assert_eq!(
        line(
            &text,
            "keyhole_auth_failures_total{reason=\"wrong_password\"}"
        ),
        "keyhole_auth_failures_total{reason=\"wrong_password\"} 2"
    );
    assert_eq!(
        line(
            &text,
            "keyhole_auth_failures_total{reason=\"locked_out_user\"}"
        ),
        "keyhole_auth_failures_total{reason=\"locked_out_user\"} 1"
    );
    assert_eq!(
        line(
            &text,
            "keyhole_auth_failures_total{reason=\"unknown_user\"}"
        ),
        "keyhole_auth_failures_total{reason=\"unknown_user\"} 1"
    );
    assert_eq!(
        line(&text, "keyhole_auth_lockouts_total{scope=\"user_source\"}"),
        "keyhole_auth_lockouts_total{scope=\"user_source\"} 1"
    );
    assert_eq!(
        line(&text, "keyhole_auth_lockouts_total{scope=\"source\"}"),
        "keyhole_auth_lockouts_total{scope=\"source\"} 1"
    );
    // User names never become label values.
    assert!(
        !text.contains("alice") && !text.contains("nobody"),
        "{text}"
    );
}

#[test]
fn reloads_are_counted_with_their_result() {
    let d = shipped::shipped_copy();
    let path = d.path().join("keyhole.toml");
    let cfg = config::load(&path).unwrap();
    let gates = keyhole::gates::Gates::new(cfg).unwrap();
    let metrics = Metrics::new();
    assert!(keyhole::daemon::reload(&gates, &path, &metrics));
    std::fs::write(d.path().join("endpoints/Broken.toml"), "name = 1\n").unwrap();
    assert!(!keyhole::daemon::reload(&gates, &path, &metrics));
    let text = metrics.render();
    assert!(
        text.contains("keyhole_config_reloads_total{result=\"success\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("keyhole_config_reloads_total{result=\"failure\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("keyhole_config_last_reload_successful 0\n"),
        "{text}"
    );
}

fn check_errors(dir: &Path) -> Vec<config::Diagnostic> {
    match config::load(&dir.join("keyhole.toml")) {
        Ok(c) => c.warnings,
        Err(d) => d,
    }
}

#[test]
fn check_validates_the_metrics_address() {
    let d = shipped::shipped_copy();
    shipped::append(
        d.path(),
        "keyhole.toml",
        "\n[metrics]\nlisten = \"localhost:9465\"\n",
    );
    let diags = check_errors(d.path());
    let e = diags
        .iter()
        .find(|x| x.message.contains("metrics.listen"))
        .unwrap_or_else(|| panic!("{diags:?}"));
    assert_eq!(e.severity, config::Severity::Error);
    assert!(e.message.contains("not an address:port"), "{}", e.message);
    assert!(
        e.line > 0 && e.rendered.contains("keyhole.toml:"),
        "{}",
        e.rendered
    );

    let d = shipped::shipped_copy();
    shipped::append(
        d.path(),
        "keyhole.toml",
        "\n[metrics]\nlisten = \"127.0.0.1:5986\"\n",
    );
    let diags = check_errors(d.path());
    assert!(
        diags.iter().any(|x| x.severity == config::Severity::Error
            && x.message.contains("is also listener.https")),
        "{diags:?}"
    );

    let d = shipped::shipped_copy();
    shipped::append(
        d.path(),
        "keyhole.toml",
        "\n[metrics]\nlisten = \"0.0.0.0:9465\"\n",
    );
    let diags = check_errors(d.path());
    assert!(
        diags.iter().any(|x| x.severity == config::Severity::Warning
            && x.message.contains("without authentication")),
        "{diags:?}"
    );

    let d = shipped::shipped_copy();
    shipped::append(
        d.path(),
        "keyhole.toml",
        "\n[metrics]\nlisten = \"127.0.0.1:9465\"\nport = 1\n",
    );
    assert!(
        config::load(&d.path().join("keyhole.toml")).is_err(),
        "unknown key accepted"
    );
}
