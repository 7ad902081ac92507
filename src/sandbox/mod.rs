//! `sandbox` is the only module with `unsafe`: spawning a program as the run-as account,
//! dropping capabilities, no-new-privs, limits, killing the process group and every descendant.
//!
//! How a program runs (SPEC §4.4): [`run`] resolves the run-as account and everything else
//! before `fork` ([`privileges::prepare`]); the child joins the command's cgroup, its own
//! process group, gets resource limits and drops to the account with only the declared
//! capabilities ([`privileges::set_target_user`]) before `exec` — by absolute path, never a
//! shell, environment exactly `PATH`, `LANG` and what the entry declares, cwd `/`, stdin
//! `/dev/null` unless bytes are given. The parent reads stdout and stderr with `poll` under a
//! combined output cap, and enforces the timeout and cancellation; whatever the program leaves
//! behind is killed when it ends ([`contain`]).
#![allow(unsafe_code)]

pub mod contain;
mod privileges;

pub use privileges::{
    parse_capability, RLIMIT_AS_MAX, RLIMIT_CORE_MAX, RLIMIT_NOFILE_MAX, RLIMIT_NPROC_MAX,
};

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Everything needed to run one program. Never a shell: `program` is absolute, `args` are argv[1..].
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the fixed environment (PATH, LANG).
    pub env: Vec<(String, String)>,
    /// Unix account to run as.
    pub run_as: String,
    /// Linux capabilities kept (names like "CAP_NET_RAW"); empty: none.
    pub capabilities: Vec<String>,
    pub timeout: Duration,
    /// Bytes of output (stdout and stderr together) this program may write; beyond them it is
    /// stopped ([`Termination::OutputLimit`]). Callers pass what is left of the pipeline's
    /// `max_output_bytes` ([`CancelToken::output_used`]).
    pub max_output_bytes: u64,
    /// Bytes for standard input; None: /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Keep the standard output in [`ProgramResult::stdout`] (for callers that parse it whole).
    /// False when the caller streams it through `on_stdout`: nothing is kept, so a program's
    /// output is held only where the client has not received it yet.
    pub keep_stdout: bool,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Cancelled,
    OutputLimit,
}

#[derive(Debug, Clone)]
pub struct ProgramResult {
    pub termination: Termination,
    /// Empty unless [`ProgramSpec::keep_stdout`].
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes read from the program (stdout and stderr, up to the cap), kept or not.
    pub output_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("unknown run-as account {0:?}: create it (useradd --system --no-create-home --shell /usr/sbin/nologin {0}) or change the endpoint's run_as")]
    UnknownUser(String),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("program {0:?} is not an absolute path; keyhole only runs programs by absolute path")]
    RelativeProgram(String),
    #[error("{program}: {count} arguments, more than the {MAX_ARGS} allowed")]
    TooManyArguments { program: String, count: usize },
    #[error("{0}: an argument contains a NUL character, which no program can receive")]
    NulInArgument(String),
    #[error("{0}: more than {MAX_ENV_VARS} environment variables declared")]
    TooManyEnvironmentVariables(String),
    #[error("{program}: invalid environment variable {name:?}: names must be non-empty without '=' or NUL, values without NUL")]
    InvalidEnvironmentVariable { program: String, name: String },
    #[error("cannot collect the exit status of {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error("unknown Linux capability {0:?}: use a name from capabilities(7) such as CAP_NET_BIND_SERVICE")]
    UnknownCapability(String),
    #[error("cannot look up run-as account {user:?}: {source}")]
    AccountLookup { user: String, source: nix::Error },
    #[error("{0} is declared for this program but keyhole itself does not hold it, so it cannot pass it on")]
    CapabilityNotHeld(String),
    #[error("keyhole runs as root but without {capability}, which it needs {why}; give the service that capability (systemd: do not remove it with CapabilityBoundingSet=)")]
    RootWithoutCapability {
        capability: String,
        why: &'static str,
    },
    #[error("run-as account name {0:?} contains a NUL byte")]
    NulInAccountName(String),
    #[error("cannot list the groups of run-as account {user:?}: {source}")]
    GroupList { user: String, source: nix::Error },
    #[error("run-as account {user:?} has {count} groups, more than the {max} keyhole accepts")]
    TooManyGroups {
        user: String,
        count: usize,
        max: usize,
    },
    #[error("keyhole is not running as root, so it cannot run programs as {0:?}: run keyhole as root or set the endpoint's run_as to the account keyhole runs as")]
    NotRoot(String),
    #[error("capabilities {0:?} can only be granted when keyhole runs as root")]
    CapabilitiesNeedRoot(Vec<String>),
}

/// Shared cancellation flag: set by Signal (Ctrl+C), session close or shutdown; [`run`] polls
/// it and kills the running program's process group. (Defined here so that `sandbox` depends
/// on nothing else in the crate; the engine re-exports it.)
///
/// It is also true by itself once the pipeline's deadline (`[limits] command_timeout`, armed by
/// the shell runtime when the line starts) has passed, so built-ins that check it in their loops
/// stop at the deadline too.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    deadline: std::sync::OnceLock<Instant>,
    /// Bytes the line's programs have written so far (`max_output_bytes` is per pipeline).
    output: std::sync::atomic::AtomicU64,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
    }
    /// Cancelled, or past the deadline.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst) || self.timed_out()
    }
    /// Arm the deadline; the first call wins (a token is armed once, when its line starts).
    pub fn set_deadline(&self, at: Instant) {
        let _ = self.0.deadline.set(at);
    }
    pub fn deadline(&self) -> Option<Instant> {
        self.0.deadline.get().copied()
    }
    /// The deadline has passed (whether or not someone also called [`CancelToken::cancel`]).
    pub fn timed_out(&self) -> bool {
        self.0.deadline.get().is_some_and(|d| Instant::now() >= *d)
    }
    /// Bytes of output the line's programs have written so far: the token is the one object
    /// every command of a line shares, so `max_output_bytes` is counted here, per pipeline.
    pub fn output_used(&self) -> u64 {
        self.0.output.load(Ordering::SeqCst)
    }
    /// Count `n` more bytes of program output.
    pub fn add_output(&self, n: u64) {
        let _ = self
            .0
            .output
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(n))
            });
    }
}

/// The fixed environment every program gets (SPEC §4.4).
pub const BASE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Programs [`run`] started in this process, and attempts that failed before the program ran.
static SPAWNS_STARTED: AtomicU64 = AtomicU64::new(0);
static SPAWNS_FAILED: AtomicU64 = AtomicU64::new(0);

/// Programs started through [`run`] in this process so far, and attempts that failed before
/// the program ran (a refused spec, the run_as account, exec): `(started, failed)`. Read by the
/// daemon for `keyhole_program_spawns_total`.
pub fn spawn_counts() -> (u64, u64) {
    (
        SPAWNS_STARTED.load(Ordering::Relaxed),
        SPAWNS_FAILED.load(Ordering::Relaxed),
    )
}

fn spawn_failed<T>(e: SandboxError) -> Result<T, SandboxError> {
    SPAWNS_FAILED.fetch_add(1, Ordering::Relaxed);
    Err(e)
}
pub const BASE_LANG: &str = "C.UTF-8";
/// How often the run loop wakes to check the timeout and cancellation.
const POLL_INTERVAL_MS: u16 = 25;
/// After the program is gone, how long to keep reading what is left in the pipes.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
/// One read from a pipe.
const READ_CHUNK: usize = 64 * 1024;
/// Most declared environment variables and arguments accepted (sanity bounds).
const MAX_ENV_VARS: usize = 256;
const MAX_ARGS: usize = 4096;

/// Decide the containment mechanism (cgroup v2 or fallback) once and clean up leftovers of a
/// previous run. The binary calls this at start; [`run`] calls it too (it is idempotent).
pub fn init() -> &'static contain::Mechanism {
    contain::mechanism()
}

fn validate(spec: &ProgramSpec) -> Result<(), SandboxError> {
    let program = spec.program.display().to_string();
    if !spec.program.is_absolute() {
        return Err(SandboxError::RelativeProgram(program));
    }
    if spec.args.len() > MAX_ARGS {
        return Err(SandboxError::TooManyArguments {
            program,
            count: spec.args.len(),
        });
    }
    if spec.args.iter().any(|a| a.contains('\0')) {
        return Err(SandboxError::NulInArgument(program));
    }
    if spec.env.len() > MAX_ENV_VARS {
        return Err(SandboxError::TooManyEnvironmentVariables(program));
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(SandboxError::InvalidEnvironmentVariable {
                program,
                name: k.clone(),
            });
        }
    }
    Ok(())
}

/// Why the parent stopped the program.
fn stop_reason(cancel: &CancelToken, started: Instant, timeout: Duration) -> Option<Termination> {
    if cancel.is_cancelled() {
        Some(Termination::Cancelled)
    } else if started.elapsed() >= timeout {
        Some(Termination::TimedOut)
    } else {
        None
    }
}

/// Output collected so far, under the combined cap.
struct Collector<'a> {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    keep_stdout: bool,
    total: u64,
    max: u64,
    on_stdout: &'a mut dyn FnMut(&[u8]),
}

impl Collector<'_> {
    /// Keep a chunk; false when the cap was reached (the excess is dropped).
    fn push(&mut self, is_stdout: bool, chunk: &[u8]) -> bool {
        let room = self.max.saturating_sub(self.total);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
        let kept = chunk.get(..take).unwrap_or_default();
        self.total = self.total.saturating_add(take as u64);
        if is_stdout {
            if self.keep_stdout {
                self.stdout.extend_from_slice(kept);
            }
            if !kept.is_empty() {
                (self.on_stdout)(kept);
            }
        } else {
            self.stderr.extend_from_slice(kept);
        }
        take == chunk.len()
    }
}

struct Pipes {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    buf: Vec<u8>,
}

enum PipeEvent {
    /// Nothing happened within the interval (or only some data was read).
    Idle,
    /// The output cap was exceeded.
    OverLimit,
}

impl Pipes {
    fn open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// Wait up to `POLL_INTERVAL_MS` for output and read what is there.
    fn pump(&mut self, sink: &mut Collector<'_>) -> PipeEvent {
        if !self.open() {
            std::thread::sleep(Duration::from_millis(u64::from(POLL_INTERVAL_MS)));
            return PipeEvent::Idle;
        }
        let (out_ready, err_ready) = {
            let mut fds = Vec::with_capacity(2);
            if let Some(o) = &self.stdout {
                fds.push((true, PollFd::new(o.as_fd(), PollFlags::POLLIN)));
            }
            if let Some(e) = &self.stderr {
                fds.push((false, PollFd::new(e.as_fd(), PollFlags::POLLIN)));
            }
            let mut polls: Vec<PollFd<'_>> = fds.iter().map(|(_, p)| *p).collect();
            match nix::poll::poll(&mut polls, PollTimeout::from(POLL_INTERVAL_MS)) {
                Ok(_) => {}
                Err(_) => return PipeEvent::Idle, // EINTR: try again next round
            }
            let ready = |want_stdout: bool| {
                fds.iter().zip(polls.iter()).any(|((is_out, _), p)| {
                    *is_out == want_stdout && p.revents().is_some_and(|r| !r.is_empty())
                })
            };
            (ready(true), ready(false))
        };
        let buf = &mut self.buf;
        if out_ready {
            if let Some(o) = self.stdout.as_mut() {
                match o.read(buf) {
                    Ok(0) | Err(_) => self.stdout = None,
                    Ok(n) => {
                        if !sink.push(true, buf.get(..n).unwrap_or_default()) {
                            return PipeEvent::OverLimit;
                        }
                    }
                }
            }
        }
        if err_ready {
            if let Some(e) = self.stderr.as_mut() {
                match e.read(buf) {
                    Ok(0) | Err(_) => self.stderr = None,
                    Ok(n) => {
                        if !sink.push(false, buf.get(..n).unwrap_or_default()) {
                            return PipeEvent::OverLimit;
                        }
                    }
                }
            }
        }
        PipeEvent::Idle
    }
}

/// Has the program itself ended? Looks without reaping, so that its pid — which is also the
/// process group id — stays reserved until the group has been killed.
fn main_exited(pid: Pid) -> bool {
    matches!(
        waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
        ),
        Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_)
    )
}

/// Run a program under the sandbox. `on_stdout` receives output chunks as they arrive (for
/// streaming); the full output (up to the cap) is also returned.
pub fn run(
    spec: &ProgramSpec,
    cancel: &CancelToken,
    on_stdout: &mut dyn FnMut(&[u8]),
) -> Result<ProgramResult, SandboxError> {
    if let Err(e) = validate(spec) {
        return spawn_failed(e);
    }
    init();
    let (containment, procs_fd) = contain::Containment::new();
    let prepared = match privileges::prepare(&spec.run_as, &spec.capabilities, procs_fd) {
        Ok(p) => p,
        Err(e) => {
            containment.cleanup();
            return spawn_failed(e);
        }
    };

    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .env("PATH", BASE_PATH)
        .env("LANG", BASE_LANG)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((k, v)) = containment.marker() {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // `privileges::child_setup`, which makes async-signal-safe system calls (write, setpgid,
    // setrlimit, prctl, setgroups, setresgid, setresuid, capset, getppid) on data computed
    // before the fork and owned by the closure; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || privileges::child_setup(&prepared));
    }
    let spawned = cmd.spawn();
    drop(cmd); // closes the parent's copy of cgroup.procs
    let mut child: Child = match spawned {
        Ok(c) => c,
        Err(e) => {
            containment.cleanup();
            return spawn_failed(SandboxError::Spawn {
                program: spec.program.display().to_string(),
                source: e,
            });
        }
    };
    SPAWNS_STARTED.fetch_add(1, Ordering::Relaxed);
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));

    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), spec.stdin.clone()) {
        // Detached: ends with EPIPE at the latest when the program's processes are killed.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }

    let mut pipes = Pipes {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        buf: vec![0u8; READ_CHUNK],
    };
    let mut sink = Collector {
        stdout: Vec::new(),
        stderr: Vec::new(),
        keep_stdout: spec.keep_stdout,
        total: 0,
        max: spec.max_output_bytes,
        on_stdout,
    };
    let started = Instant::now();

    let reason = loop {
        if let PipeEvent::OverLimit = pipes.pump(&mut sink) {
            break Some(Termination::OutputLimit);
        }
        if let Some(r) = stop_reason(cancel, started, spec.timeout) {
            break Some(r);
        }
        if main_exited(pid) {
            break None;
        }
    };

    // Whatever happened, nothing the command started survives it.
    containment.kill_all(pid);
    let status = child.wait();
    containment.kill_all(pid);

    if reason != Some(Termination::OutputLimit) {
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while pipes.open() && Instant::now() < deadline {
            if let PipeEvent::OverLimit = pipes.pump(&mut sink) {
                break;
            }
        }
    }
    drop(pipes);
    containment.cleanup();

    let termination = match reason {
        Some(r) => r,
        None => match status {
            Ok(st) => match (st.code(), st.signal()) {
                (Some(c), _) => Termination::Exited(c),
                (None, Some(s)) => Termination::Signaled(s),
                (None, None) => Termination::Signaled(0),
            },
            Err(source) => {
                return Err(SandboxError::Wait {
                    program: spec.program.display().to_string(),
                    source,
                })
            }
        },
    };
    Ok(ProgramResult {
        termination,
        stdout: sink.stdout,
        stderr: sink.stderr,
        output_bytes: sink.total,
    })
}
