//! Helpers shared by the sandbox integration tests: throwaway accounts and survivor checks.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::{Duration, Instant};

use keyhole::engine::CancelToken;
use keyhole::sandbox::{self, ProgramResult, ProgramSpec};

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run as root (CI runs them as root too)"
    );
    // `sandbox_root::the_fork_path_passes_the_same_tests` re-runs the sandbox tests with
    // programs started through fork (the path taken where the kernel refuses clone3).
    if std::env::var_os(FORK_PATH_VAR).is_some() {
        sandbox::force_fork_path();
    }
}

/// Set in a re-run of the test binary whose programs must start through fork.
pub const FORK_PATH_VAR: &str = "KH_SANDBOX_FORK_PATH";

fn retry(cmd: &str, args: &[&str]) -> Result<(), String> {
    // useradd/groupadd take a lock on /etc/passwd; parallel tests may collide briefly.
    let mut last = String::new();
    for _ in 0..50 {
        match Command::new(cmd).args(args).output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                last = String::from_utf8_lossy(&o.stderr).into_owned();
                if !(o.status.code() == Some(10) || last.contains("lock")) {
                    return Err(format!("{cmd} {args:?} failed: {last}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("{cmd}: {e}")),
        }
    }
    Err(format!("{cmd} {args:?} kept failing: {last}"))
}

/// Kill every process of `uid` (only the throwaway test accounts), by pid.
fn kill_uid(uid: u32) {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if owner == Some(uid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A throwaway system account with one extra supplementary group; removed on drop, even when
/// the test fails.
pub struct Account {
    pub name: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub extra_gid: u32,
}

impl Account {
    pub fn create() -> Account {
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("khtest{suffix}");
        let group = format!("khgrp{suffix}");
        retry("groupadd", &["--system", &group]).unwrap();
        let mut acct = Account {
            name: name.clone(),
            group: group.clone(),
            uid: 0,
            gid: 0,
            extra_gid: 0,
        };
        if let Err(e) = retry(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "-G",
                &group,
                &name,
            ],
        ) {
            let _ = retry("groupdel", &[&group]);
            panic!("{e}");
        }
        let user = nix::unistd::User::from_name(&name).unwrap().unwrap();
        acct.uid = user.uid.as_raw();
        acct.gid = user.gid.as_raw();
        acct.extra_gid = nix::unistd::Group::from_name(&group)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        assert_ne!(acct.uid, 0);
        acct
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if self.uid != 0 {
            kill_uid(self.uid);
        }
        let _ = retry("userdel", &[&self.name]);
        let _ = retry("groupdel", &[&self.group]);
    }
}

pub fn spec(run_as: &str, program: &str, args: &[&str]) -> ProgramSpec {
    ProgramSpec {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        run_as: run_as.into(),
        capabilities: Vec::new(),
        timeout: Duration::from_secs(10),
        max_output_bytes: 1 << 20,
        stdin: None,
        keep_stdout: true,
    }
}

pub fn run_ok(s: &ProgramSpec) -> ProgramResult {
    sandbox::run(s, &CancelToken::new(), &mut |_| {}).unwrap()
}

/// Pids of live (non-zombie) processes whose command line is exactly `sleep <arg>`.
pub fn sleepers(arg: &str) -> Vec<i32> {
    let want = format!("sleep\0{arg}\0");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let name = String::from_utf8_lossy(&cmdline);
        if name == want || name.ends_with(&format!("/{want}")) {
            out.push(pid);
        }
    }
    out
}

/// No `sleep <arg>` may be alive (a short grace period for the kernel to finish SIGKILL).
pub fn assert_no_survivor(arg: &str) {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let left = sleepers(arg);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for p in &left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            panic!("sleep {arg} survived its command: pids {left:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
