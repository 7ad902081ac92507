//! keyhole not running as root: the test binary re-runs itself through the sandbox as a
//! throwaway account (so with no capabilities and no-new-privs), and from there the sandbox
//! must run programs as that same account and refuse any other account or any capability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::sandbox_common;

use std::time::Duration;

use keyhole::engine::CancelToken;
use keyhole::sandbox::{self, Termination};
use sandbox_common::*;

/// Child half: only does something when started by `unprivileged_keyhole_keeps_its_account`.
#[test]
fn nonroot_child() {
    let Ok(own) = std::env::var("KH_NONROOT_ACCOUNT") else {
        return;
    };
    assert!(!nix::unistd::geteuid().is_root());
    let res = run_ok(&spec(&own, "/usr/bin/cat", &["/proc/self/status"]));
    assert_eq!(res.termination, Termination::Exited(0));
    let st = String::from_utf8(res.stdout).unwrap();
    let caps_zero = ["CapInh", "CapPrm", "CapEff", "CapAmb"].iter().all(|f| {
        st.lines()
            .any(|l| l.starts_with(f) && l.ends_with("0000000000000000"))
    });
    assert!(caps_zero, "{st}");
    assert!(st
        .lines()
        .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')));
    println!("OWN-ACCOUNT-OK");

    let e = sandbox::run(
        &spec("root", "/usr/bin/true", &[]),
        &CancelToken::new(),
        &mut |_| {},
    );
    assert!(e.is_err(), "another account must be refused when not root");
    println!("OTHER-ACCOUNT-REFUSED");

    let mut s = spec(&own, "/usr/bin/true", &[]);
    s.capabilities = vec!["CAP_NET_RAW".into()];
    assert!(sandbox::run(&s, &CancelToken::new(), &mut |_| {}).is_err());
    println!("CAPABILITY-REFUSED");
}

#[test]
fn unprivileged_keyhole_keeps_its_account() {
    require_root();
    let acct = Account::create();
    let exe = std::env::current_exe().unwrap();
    let mut s = spec(
        &acct.name,
        exe.to_str().unwrap(),
        &[
            "--exact",
            "sandbox_nonroot::nonroot_child",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    s.env = vec![("KH_NONROOT_ACCOUNT".into(), acct.name.clone())];
    s.timeout = Duration::from_secs(30);
    let res = run_ok(&s);
    let out = String::from_utf8_lossy(&res.stdout).into_owned();
    let err = String::from_utf8_lossy(&res.stderr).into_owned();
    assert_eq!(res.termination, Termination::Exited(0), "{out}\n{err}");
    for marker in [
        "OWN-ACCOUNT-OK",
        "OTHER-ACCOUNT-REFUSED",
        "CAPABILITY-REFUSED",
    ] {
        assert!(out.contains(marker), "{marker} missing:\n{out}\n{err}");
    }
}
