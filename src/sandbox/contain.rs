//! Containment: finding and killing every process a command started, even after `setsid` or a
//! double fork.
//!
//! Strongest mechanism first:
//! 1. **cgroup v2** (when a cgroup2 hierarchy is mounted and writable): each command gets its
//!    own cgroup `<keyhole's cgroup>/keyhole/<pid>-<uuid>`; the child is created in it
//!    (`clone3` with `CLONE_INTO_CGROUP`, see `spawn`) or, where the kernel refuses that, joins
//!    it before `exec` — no race either way: nothing it starts can be outside — and killing
//!    writes `1` to `cgroup.kill` (Linux ≥ 5.14; older kernels: freeze, SIGKILL every member,
//!    thaw, repeat). Waiting for a killed cgroup to empty watches its `cgroup.events` (no
//!    sleep). Under systemd give the unit `Delegate=yes` so systemd leaves keyhole's
//!    sub-cgroups alone.
//! 2. **Fallback** (no writable cgroup2, e.g. some containers): the process group is killed, and
//!    every process whose environment carries this command's marker `KEYHOLE_RUN=<uuid>` is
//!    found through `/proc/<pid>/environ` and killed through a pidfd (whose readiness says it
//!    is gone), repeatedly until none is left. A program
//!    that clears its own environment *and* leaves its process group escapes this fallback;
//!    the README says so and recommends cgroup v2.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Name of the environment marker used by the fallback.
pub const MARKER_VAR: &str = "KEYHOLE_RUN";
/// Rounds of /proc scanning in the fallback before giving up.
const MAX_KILL_ROUNDS: usize = 50;
/// How long to wait for a killed cgroup to empty before leaving it for later clean-up.
const CGROUP_DRAIN: Duration = Duration::from_secs(2);
/// How long one round of the fallback waits for the processes it killed to be gone.
const KILL_ROUND_WAIT: Duration = Duration::from_millis(200);
/// Most processes one command may have at once when the cgroup `pids` controller is available
/// (also bounds a fork bomb of a root run-as account, which RLIMIT_NPROC does not).
pub const CGROUP_PIDS_MAX: u32 = 1024;
/// Longest /proc/<pid>/environ read in the fallback.
const MAX_ENVIRON_BYTES: u64 = 256 * 1024;

/// Which mechanism this process uses, decided once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// Per-command cgroups are created under this directory.
    Cgroup(PathBuf),
    /// Process group plus environment marker.
    Fallback,
}

static MECHANISM: OnceLock<Mechanism> = OnceLock::new();

/// Decide the mechanism (once) and clean up empty leftovers of an earlier run.
pub fn mechanism() -> &'static Mechanism {
    MECHANISM.get_or_init(|| match detect_cgroup_parent() {
        Some(dir) => {
            cleanup_stale(&dir);
            tracing::info!(dir = %dir.display(), "sandbox: every command runs in its own cgroup v2");
            Mechanism::Cgroup(dir)
        }
        None => {
            tracing::warn!(
                "sandbox: no writable cgroup v2 hierarchy; falling back to process groups and an environment marker \
                 (a program that clears its environment and calls setsid can outlive its command)"
            );
            Mechanism::Fallback
        }
    })
}

/// Use the fallback in this process even where cgroups work (tests of the fallback). Only
/// effective before the first command; returns whether the fallback is now in use. Exists only
/// in test builds (the `test-util` feature, which only the tests' dev-dependency turns on).
#[cfg(any(test, feature = "test-util"))]
pub fn force_fallback() -> bool {
    MECHANISM.get_or_init(|| Mechanism::Fallback) == &Mechanism::Fallback
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in info.lines() {
        // fields ... " - " fstype source options
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype == "cgroup2" {
            let mount_point = left.split_whitespace().nth(4)?;
            return Some(PathBuf::from(unescape_mountinfo(mount_point)));
        }
    }
    None
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// keyhole's own cgroup v2 path, from /proc/self/cgroup ("0::/path").
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

fn detect_cgroup_parent() -> Option<PathBuf> {
    let mount = cgroup2_mount()?;
    let own = own_cgroup()?;
    let own_rel = own.trim_start_matches('/');
    let base = if own_rel.is_empty() {
        mount
    } else {
        mount.join(own_rel)
    };
    let dir = base.join("keyhole");
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    // Prove it works: a probe cgroup must be creatable and have cgroup.procs.
    let probe = dir.join(format!(
        "{}-probe-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let ok = fs::create_dir(&probe).is_ok() && probe.join("cgroup.procs").exists();
    let _ = fs::remove_dir(&probe);
    if ok {
        // Best effort: let per-command cgroups limit their number of processes.
        if fs::read_to_string(dir.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "pids"))
        {
            let _ = write_file(&dir.join("cgroup.subtree_control"), b"+pids");
        }
        Some(dir)
    } else {
        None
    }
}

/// Remove empty per-command cgroups a crashed keyhole left behind (populated ones are killed first).
fn cleanup_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        // "<pid>-<uuid>": only the cgroups of a keyhole process that no longer exists are
        // killed; another keyhole (the server and `keyhole run`) shares this directory.
        let owner = entry
            .file_name()
            .to_str()
            .and_then(|n| n.split('-').next().and_then(|p| p.parse::<u32>().ok()));
        if let Some(pid) = owner {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = write_file(&path.join("cgroup.kill"), b"1");
                let _ = fs::remove_dir(&path); // fails harmlessly while still populated
            }
        }
    }
}

fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(data)
}

/// One command's containment.
#[derive(Debug)]
pub struct Containment {
    /// Unique id: cgroup name and fallback marker value.
    pub id: String,
    cgroup: Option<PathBuf>,
    /// The cgroup's directory, open (what `clone3` creates the child in).
    dir_fd: Option<OwnedFd>,
}

impl Containment {
    /// Set up containment for a new command: with cgroups, its own cgroup, created and open.
    pub fn create() -> Containment {
        let id = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        if let Mechanism::Cgroup(parent) = mechanism() {
            let dir = parent.join(&id);
            match Self::make_cgroup(&dir) {
                Ok(fd) => {
                    return Containment {
                        id,
                        cgroup: Some(dir),
                        dir_fd: Some(fd),
                    }
                }
                Err(e) => {
                    let _ = fs::remove_dir(&dir);
                    tracing::warn!(dir = %dir.display(), error = %e, "sandbox: cannot set up a cgroup; using the fallback for this command");
                }
            }
        }
        Containment {
            id,
            cgroup: None,
            dir_fd: None,
        }
    }

    fn make_cgroup(dir: &Path) -> std::io::Result<OwnedFd> {
        fs::create_dir(dir)?;
        let pids_max = dir.join("pids.max");
        if let Err(e) = write_file(&pids_max, CGROUP_PIDS_MAX.to_string().as_bytes()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "sandbox: cannot set pids.max");
            }
        }
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(OwnedFd::from(f))
    }

    /// The open cgroup directory (for `clone3`'s `CLONE_INTO_CGROUP`).
    pub(crate) fn cgroup_fd(&self) -> Option<&OwnedFd> {
        self.dir_fd.as_ref()
    }

    /// The cgroup's `cgroup.procs`, open for writing (the fork path: the child writes itself
    /// into it). None without a cgroup.
    pub(crate) fn open_procs(&self) -> Option<std::io::Result<OwnedFd>> {
        let dir = self.cgroup.as_ref()?;
        Some(
            fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(dir.join("cgroup.procs"))
                .map(OwnedFd::from),
        )
    }

    /// The environment marker to add (fallback only).
    pub fn marker(&self) -> Option<(String, String)> {
        match self.cgroup {
            Some(_) => None,
            None => Some((MARKER_VAR.to_string(), self.id.clone())),
        }
    }

    /// SIGKILL the process group `pgid` and every process of the command.
    pub fn kill_all(&self, pgid: Pid) {
        let _ = killpg(pgid, Signal::SIGKILL);
        match &self.cgroup {
            Some(dir) => kill_cgroup(dir),
            None => kill_marked(&self.id),
        }
    }

    /// Once more after the program was reaped, for what forked while the first kill ran: the
    /// fallback's marker scan. (`cgroup.kill` already refuses new processes in a cgroup being
    /// killed, so with a cgroup nothing can have escaped the first; only the process group, whose
    /// id the reaped program no longer reserves, is not signalled again.)
    pub fn kill_again(&self, pgid: Pid) {
        if self.cgroup.is_none() {
            let _ = killpg(pgid, Signal::SIGKILL);
            kill_marked(&self.id);
        }
    }

    /// After everything is dead: remove the cgroup (waiting, without sleeping, for processes
    /// that were killed but are not gone yet).
    pub fn cleanup(&self) {
        if let Some(dir) = &self.cgroup {
            let deadline = Instant::now() + CGROUP_DRAIN;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => return,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                    Err(e) => {
                        if Instant::now() >= deadline {
                            tracing::warn!(dir = %dir.display(), error = %e, "sandbox: cgroup not empty after kill; left for clean-up at next start");
                            return;
                        }
                        kill_cgroup(dir);
                        wait_unpopulated(dir, deadline);
                    }
                }
            }
        }
    }
}

/// Wait until the cgroup has no process left (its `cgroup.events` says `populated 0`, and the
/// kernel signals every change of that file to `poll`), or the deadline. True when empty.
fn wait_unpopulated(dir: &Path, deadline: Instant) -> bool {
    let Ok(events) = fs::File::open(dir.join("cgroup.events")) else {
        return true; // the cgroup is gone
    };
    let mut buf = [0u8; 256];
    loop {
        let n = match events.read_at(&mut buf, 0) {
            Ok(n) => n,
            Err(_) => return true,
        };
        let text = buf.get(..n).unwrap_or_default();
        if text.split(|b| *b == b'\n').any(|l| l == b"populated 0") {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
        let timeout =
            PollTimeout::try_from(left.as_millis().saturating_add(1)).unwrap_or(PollTimeout::MAX);
        let _ = nix::poll::poll(&mut fds, timeout);
    }
}

fn cgroup_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_cgroup(dir: &Path) {
    if write_file(&dir.join("cgroup.kill"), b"1").is_ok() {
        return;
    }
    // Kernels before 5.14: freeze, kill every member, thaw; repeat while members remain,
    // waiting for the killed ones to be gone between rounds.
    let freeze = dir.join("cgroup.freeze");
    for _ in 0..MAX_KILL_ROUNDS {
        let _ = write_file(&freeze, b"1");
        let pids = cgroup_pids(dir);
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let _ = write_file(&freeze, b"0");
        if pids.is_empty() || wait_unpopulated(dir, Instant::now() + KILL_ROUND_WAIT) {
            return;
        }
    }
}

/// Pids whose environment holds `KEYHOLE_RUN=<id>`.
fn marked_pids(id: &str) -> Vec<i32> {
    use std::io::Read;
    let needle = format!("{MARKER_VAR}={id}");
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(f) = fs::File::open(entry.path().join("environ")) else {
            continue;
        };
        let mut buf = Vec::new();
        if f.take(MAX_ENVIRON_BYTES).read_to_end(&mut buf).is_err() {
            continue;
        }
        if buf.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

fn kill_marked(id: &str) {
    for _ in 0..MAX_KILL_ROUNDS {
        let pids = marked_pids(id);
        if pids.is_empty() {
            return;
        }
        // Through pidfds: no pid reuse race, and each one's readiness says the process is gone
        // (no sleep between rounds). Without pidfds (Linux < 5.3) the next scan paces it.
        let mut pidfds = Vec::with_capacity(pids.len());
        for pid in pids {
            match super::spawn::pidfd_open(Pid::from_raw(pid)) {
                Some(fd) => {
                    if super::spawn::pidfd_kill(&fd, libc::SIGKILL) {
                        pidfds.push(fd);
                    }
                }
                None => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + KILL_ROUND_WAIT;
        while !pidfds.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut polls: Vec<PollFd<'_>> = pidfds
                .iter()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            let timeout = PollTimeout::try_from(left.as_millis().saturating_add(1))
                .unwrap_or(PollTimeout::MAX);
            if nix::poll::poll(&mut polls, timeout).is_err() {
                continue;
            }
            let done: Vec<bool> = polls
                .iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(polls);
            let mut i = 0usize;
            pidfds.retain(|_| {
                let keep = !done.get(i).copied().unwrap_or(true);
                i += 1;
                keep
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }

    #[test]
    fn marker_only_without_cgroup() {
        let c = Containment {
            id: "x".into(),
            cgroup: None,
            dir_fd: None,
        };
        assert_eq!(c.marker(), Some((MARKER_VAR.to_string(), "x".to_string())));
        let c = Containment {
            id: "x".into(),
            cgroup: Some(PathBuf::from("/nonexistent")),
            dir_fd: None,
        };
        assert_eq!(c.marker(), None);
    }
}
