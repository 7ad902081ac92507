//! A real `keyhole serve` for the budget tests: the shipped configuration on a free loopback
//! port (plain HTTP), local users alice and bob (helpdesk), extra role functions and `[limits]`
//! as a test needs them; its log in a file; its memory read from /proc.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::shipped;

pub const ALICE_PW: &str = "alice-Pw-1";
pub const BOB_PW: &str = "bob-Pw-1";

/// Functions added to the Diagnostics role (visible to helpdesk): `Get-Numbers` (seq 1 500,
/// 1,892 bytes) and `Get-Line` (one line of 1,988,895 bytes: seq -s ' ' 1 300000).
pub const FUNCTIONS: &str = "
[functions.Get-Numbers]
synopsis = \"1 to 500\"
program = \"/usr/bin/seq\"
args = [\"1\", \"500\"]
output = \"lines\"

[functions.Get-Line]
synopsis = \"one long line\"
program = \"/usr/bin/seq\"
args = [\"-s\", \" \", \"1\", \"300000\"]
output = \"lines\"
";

pub struct Live {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Live {
    /// The server's resident memory now, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The transcript directory.
    pub fn transcripts(&self) -> PathBuf {
        self.dir.path().join("transcripts")
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Wait until `f` is stable (no change for `quiet`) or `max` has passed; returns its last value.
pub fn settle(mut f: impl FnMut() -> u64, quiet: Duration, max: Duration) -> u64 {
    let start = Instant::now();
    let mut last = f();
    let mut since = Instant::now();
    while start.elapsed() < max {
        std::thread::sleep(Duration::from_millis(200));
        let now = f();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

fn users_file(dir: &Path) {
    let a = keyhole::auth::hash_password(ALICE_PW).unwrap();
    let b = keyhole::auth::hash_password(BOB_PW).unwrap();
    std::fs::write(
        dir.join("users.toml"),
        format!(
            "[users.alice]\npassword = \"{a}\"\ngroups = [\"helpdesk\"]\n\n[users.bob]\npassword = \"{b}\"\ngroups = [\"helpdesk\"]\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("users.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// The configuration: shipped, HTTP on a free port, [`FUNCTIONS`] in Diagnostics, `limits` as
/// the `[limits]` table, `auth` as the `[auth]` table.
pub fn config(limits: &str, auth: &str) -> tempfile::TempDir {
    let d = shipped::shipped_copy();
    let role = d.path().join("role-capabilities/Diagnostics.toml");
    let text = std::fs::read_to_string(&role).unwrap().replace(
        "visible_functions = [\"Get-DiskUsage\"]",
        "visible_functions = [\"Get-DiskUsage\", \"Get-Numbers\", \"Get-Line\"]",
    );
    std::fs::write(&role, format!("{text}\n{FUNCTIONS}")).unwrap();
    let toml = d.path().join("keyhole.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("https = \"127.0.0.1:5986\"", "https = \"\"")
        .replace("http = \"127.0.0.1:5985\"", "http = \"127.0.0.1:0\"");
    assert!(text.contains("http = \"127.0.0.1:0\""), "{text}");
    std::fs::write(
        &toml,
        format!(
            "transcript_directory = \"transcripts\"\n{text}\n[limits]\n{limits}\n\n[auth]\n{auth}\n"
        ),
    )
    .unwrap();
    users_file(d.path());
    d
}

/// Start `keyhole serve` on `dir` and wait until it listens.
pub fn start(dir: tempfile::TempDir) -> Live {
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["serve", "--config"])
        .arg(dir.path().join("keyhole.toml"))
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("keyhole: listening on http://") {
            addr = Some(rest.trim_end_matches("/wsman").parse().unwrap());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let Some(addr) = addr else {
        let _ = child.kill();
        panic!(
            "keyhole serve did not listen:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    Live {
        child,
        addr,
        dir,
        log,
    }
}

/// Median and 99th percentile of `v` (sorted in place).
pub fn median_p99(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    if v.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99))
}
