//! Issue 9, finding 9: a descriptor keyhole inherited or opened without close-on-exec never
//! reaches a program (SPEC §4.4: only standard input, output and error). Runs as root (a
//! throwaway account) or not (as the current account).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::sandbox_common;

use keyhole::sandbox::Termination;
use sandbox_common::*;

#[test]
fn only_standard_descriptors_reach_a_program() {
    // A file opened without O_CLOEXEC, and a dup of it (dup never sets close-on-exec): what a
    // descriptor inherited from keyhole's own parent looks like.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("leaked-descriptor-target");
    std::fs::write(&secret, "x").unwrap();
    let fd = nix::fcntl::open(
        &secret,
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let dup = nix::unistd::dup(fd).unwrap();
    let flags = nix::fcntl::fcntl(dup, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_eq!(flags & libc::FD_CLOEXEC, 0);

    let root = nix::unistd::geteuid().is_root();
    let acct = root.then(Account::create);
    let run_as = match &acct {
        Some(a) => a.name.clone(),
        None => {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .unwrap()
                .unwrap()
                .name
        }
    };
    // (`ls -l` shows each descriptor's target; the count below does not depend on that.)
    let res = run_ok(&spec(&run_as, "/usr/bin/ls", &["-l", "/proc/self/fd"]));
    nix::unistd::close(fd).unwrap();
    nix::unistd::close(dup).unwrap();
    assert_eq!(res.termination, Termination::Exited(0), "{res:?}");
    let out = String::from_utf8(res.stdout).unwrap();
    let fds: Vec<i32> = out
        .lines()
        .filter(|l| l.contains(" -> "))
        .filter_map(|l| l.split(" -> ").next())
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(!out.contains("leaked-descriptor-target"), "{out}");
    // 0, 1, 2, and the directory `ls` itself opened to list /proc/self/fd.
    assert_eq!(fds.len(), 4, "{out}");
    assert_eq!(&fds[..3], &[0, 1, 2], "{out}");
}
