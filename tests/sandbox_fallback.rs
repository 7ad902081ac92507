//! The containment fallback (no cgroup v2): process group plus environment marker must still
//! leave no survivor after `setsid`, a double fork, a timeout or cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod sandbox_common;

use std::time::Duration;

use keyhole::engine::CancelToken;
use keyhole::sandbox::{self, contain, Termination};
use sandbox_common::*;

fn fallback() {
    assert!(
        contain::force_fallback(),
        "the fallback must be forced before any command runs"
    );
}

#[test]
fn fallback_setsid_and_double_fork_do_not_survive() {
    require_root();
    fallback();
    let acct = Account::create();
    let s = spec(
        &acct.name,
        "/bin/sh",
        &[
            "-c",
            "setsid sleep 2728 & (setsid sleep 2727 &) ; sleep 0.3; exit 0",
        ],
    );
    let res = run_ok(&s);
    assert_eq!(res.termination, Termination::Exited(0));
    assert_no_survivor("2728");
    assert_no_survivor("2727");
}

#[test]
fn fallback_timeout_and_cancel_kill_everything() {
    require_root();
    fallback();
    let acct = Account::create();
    let mut s = spec(
        &acct.name,
        "/bin/sh",
        &["-c", "setsid sleep 2729 & sleep 2729"],
    );
    s.timeout = Duration::from_millis(600);
    assert_eq!(run_ok(&s).termination, Termination::TimedOut);
    assert_no_survivor("2729");

    let s = spec(
        &acct.name,
        "/bin/sh",
        &["-c", "setsid sleep 2726 & sleep 2726"],
    );
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let res = sandbox::run(&s, &cancel, &mut |_| {}).unwrap();
    t.join().unwrap();
    assert_eq!(res.termination, Termination::Cancelled);
    assert_no_survivor("2726");
}

#[test]
fn fallback_marks_the_environment() {
    require_root();
    fallback();
    let res = run_ok(&spec("root", "/usr/bin/env", &[]));
    let text = String::from_utf8(res.stdout).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("KEYHOLE_RUN=")),
        "{text}"
    );
}
