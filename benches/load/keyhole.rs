//! The server under test: a throwaway configuration in a private temporary directory and the
//! real `keyhole serve` binary started on loopback ports, plus /proc readers for its memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::Res;

/// The benchmark's account.
pub const USER: &str = "bench";
/// Its endpoint (PSRP configuration name; WinRS lands in it too).
pub const ENDPOINT: &str = "Bench";

/// Limits raised so that the scale figures measure memory and latency, not the quotas.
pub struct Limits {
    pub sessions: u64,
}

/// A throwaway configuration directory, removed when dropped.
pub struct Config {
    pub dir: tempfile::TempDir,
    pub password: String,
    pub https: SocketAddr,
}

/// The account programs run as: `nobody` as root, else our own account (as `keyhole demo`).
pub fn run_as_account() -> String {
    if nix::unistd::geteuid().is_root() {
        return "nobody".into();
    }
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "nobody".into())
}

/// A loopback port nobody listens on right now.
fn free_port() -> Res<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

fn write(path: &Path, text: &str) -> Res<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Config {
    /// users.toml (an argon2id hash made by the library), one rule, one endpoint granting
    /// Get-Uptime, Get-Date and the programs /usr/bin/uptime and /usr/bin/true.
    pub fn write(limits: &Limits) -> Res<Config> {
        let dir = tempfile::Builder::new()
            .prefix("keyhole-load-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let password = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let hash = keyhole::auth::hash_password(&password).map_err(|e| e.to_string())?;
        let run_as = run_as_account();
        let https = free_port()?;
        let d = dir.path();
        write(
            &d.join("users.toml"),
            &format!("[users.{USER}]\npassword = \"{hash}\"\ngroups = [\"bench\"]\n"),
        )?;
        write(
            &d.join("authorization-rules.toml"),
            &format!("[[rule]]\nid = 1\nname = \"load benchmark\"\nuser = \"{USER}\"\ncomputer = \"*\"\nconfiguration = \"{ENDPOINT}\"\n"),
        )?;
        write(
            &d.join("role-capabilities/BenchRole.toml"),
            "description = \"load benchmark\"\nvisible_cmdlets = [\"Get-Uptime\", \"Get-Date\"]\nvisible_external_commands = [\"/usr/bin/uptime\", \"/usr/bin/true\"]\n",
        )?;
        write(
            &d.join("endpoints/Bench.toml"),
            &format!("name = \"{ENDPOINT}\"\nrun_as = \"{run_as}\"\n\n[[role]]\nuser = \"{USER}\"\nrole_capabilities = [\"BenchRole\"]\n"),
        )?;
        let n = limits.sessions;
        write(
            &d.join("keyhole.toml"),
            &format!(
                "computer_name = \"localhost\"\ncomputer_aliases = [\"127.0.0.1\"]\nwinrs_endpoint = \"{ENDPOINT}\"\n\n\
                 [listener]\nhttps = \"{https}\"\nhttp = \"\"\n\n\
                 [auth]\nmax_failed_logins = 1000\n\n\
                 [limits]\nmax_sessions_per_user = {n}\nmax_shells_per_user = {n}\nmax_concurrent_users = {n}\nidle_timeout = \"1h\"\n\
                 # every benchmark connection comes from 127.0.0.1\n\
                 max_connections = {n}\nmax_connections_per_address = {n}\n"
            ),
        )?;
        Ok(Config {
            dir,
            password,
            https,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("keyhole.toml")
    }

    /// The self-signed certificate keyhole generated at start.
    pub fn certificate(&self) -> PathBuf {
        self.dir.path().join("state").join("keyhole-tls-cert.pem")
    }
}

/// A running `keyhole serve`; SIGTERM and wait when dropped.
pub struct Server {
    pub child: Child,
    pub pid: u32,
    /// From spawn to the first accepted TCP connection.
    pub start_time: Duration,
    pub log: PathBuf,
}

impl Server {
    /// Start `bin serve --config …` (log on stderr into a file) and wait until it listens.
    pub fn start(bin: &Path, cfg: &Config) -> Res<Server> {
        let log = cfg.dir.path().join("keyhole.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(cfg.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "keyhole serve exited ({status}) before listening:\n{text}"
                ));
            }
            if std::net::TcpStream::connect_timeout(&cfg.https, Duration::from_millis(100)).is_ok()
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                return Err("keyhole serve did not listen within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Server {
            child,
            pid,
            start_time: t0.elapsed(),
            log,
        })
    }

    /// A line of /proc/PID/status in kB (VmRSS, VmHWM) or as a count (Threads).
    pub fn status(&self, key: &str) -> Option<u64> {
        proc_status(self.pid, key)
    }

    /// Open file descriptors.
    pub fn fds(&self) -> Option<u64> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .ok()
            .map(|d| d.count() as u64)
    }

    /// Resident memory by kind of mapping (KiB), from /proc/PID/smaps: the heap, anonymous
    /// mappings (malloc arenas of other threads, large allocations, thread stacks), stacks
    /// and file-backed mappings; and how many anonymous mappings there are.
    pub fn smaps(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid)).unwrap_or_default();
        let (mut heap, mut anon, mut stack, mut file, mut anon_maps) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut kind = 0u8;
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let first = parts.next().unwrap_or("");
            if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
                let name = line.split_whitespace().nth(5).unwrap_or("");
                kind = match name {
                    "[heap]" => 0,
                    "" => {
                        anon_maps += 1;
                        1
                    }
                    n if n.starts_with("[stack") => 2,
                    n if n.starts_with('[') => 4,
                    _ => 3,
                };
            } else if first == "Rss:" {
                let kb: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match kind {
                    0 => heap += kb,
                    1 => anon += kb,
                    2 => stack += kb,
                    3 => file += kb,
                    _ => {}
                }
            }
        }
        serde_json::json!({"heap_kib": heap, "anon_kib": anon, "stack_kib": stack, "file_kib": file, "anon_mappings": anon_maps})
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The containment keyhole chose (its "sandbox ready" log line).
    pub fn containment(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("sandbox ready"))
            .and_then(|l| l.split("containment=").nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key:` of /proc/PID/status, the number before any unit.
pub fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
