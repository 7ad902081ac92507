//! `sandbox` is the only module with `unsafe`: spawning a program as the run-as account,
//! dropping capabilities, no-new-privs, limits, killing the process group and every descendant.
//!
//! How a program runs (SPEC §4.4): [`run`] resolves the run-as account (once per [`RunAs`],
//! i.e. per session) and everything else before the child exists ([`privileges::prepare`]);
//! the child is created in the command's cgroup ([`spawn`]: `clone3`), gets its own process
//! group and resource limits and drops to the account with only the declared capabilities
//! ([`privileges::set_target_user`]) before `exec` — by absolute path, never a shell,
//! environment exactly `PATH`, `LANG` and what the entry declares, cwd `/`, stdin `/dev/null`
//! unless bytes are given. The parent waits in one `poll` on stdout, stderr, the program's
//! pidfd and the cancellation token's eventfd, with the earliest deadline as its timeout: the
//! program's exit, its output, a cancel and a deadline each wake it at once, and nothing on
//! the path sleeps. Output is read under a combined cap; whatever the program leaves behind is
//! killed when it ends ([`contain`]).
#![allow(unsafe_code)]

pub mod contain;
mod privileges;
pub mod spawn;

pub use privileges::{
    parse_capability, Account, RLIMIT_AS_MAX, RLIMIT_CORE_MAX, RLIMIT_NOFILE_MAX, RLIMIT_NPROC_MAX,
};
#[cfg(any(test, feature = "test-util"))]
pub use spawn::force_fork_path;
pub use spawn::{started_counts, SpawnPath};

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Everything needed to run one program. Never a shell: `program` is absolute, `args` are argv[1..].
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the fixed environment (PATH, LANG).
    pub env: Vec<(String, String)>,
    /// Unix account to run as (resolved once per [`RunAs`] value and its clones).
    pub run_as: RunAs,
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

/// The account programs run as: its name, and the account looked up the first time a program
/// runs, shared by every clone (a session's programs look `/etc/passwd` and `/etc/group` up
/// once, not per command). A failed look-up is not kept: the next program tries again.
#[derive(Clone)]
pub struct RunAs(Arc<RunAsInner>);

struct RunAsInner {
    name: String,
    account: OnceLock<Account>,
}

impl RunAs {
    pub fn new(name: impl Into<String>) -> RunAs {
        RunAs(Arc::new(RunAsInner {
            name: name.into(),
            account: OnceLock::new(),
        }))
    }
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The account, looked up on first use.
    pub fn account(&self) -> Result<&Account, SandboxError> {
        if let Some(a) = self.0.account.get() {
            return Ok(a);
        }
        let found = privileges::lookup_account(&self.0.name)?;
        Ok(self.0.account.get_or_init(|| found))
    }
}

impl std::fmt::Debug for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0.name, f)
    }
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.name)
    }
}

impl From<&str> for RunAs {
    fn from(s: &str) -> RunAs {
        RunAs::new(s)
    }
}

impl From<String> for RunAs {
    fn from(s: String) -> RunAs {
        RunAs::new(s)
    }
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
///
/// While a program runs, the token also has an eventfd that [`CancelToken::cancel`] writes
/// to: the sandbox polls it with the program's pipes and pidfd, so a cancel stops the program
/// at once, without a polling interval.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    deadline: OnceLock<Instant>,
    /// Created by the first program that runs under this token.
    waker: OnceLock<OwnedFd>,
    /// Bytes the line's programs have written so far (`max_output_bytes` is per pipeline).
    output: std::sync::atomic::AtomicU64,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        if let Some(fd) = self.0.waker.get() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live stack buffer to an eventfd owned by the token.
            let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }
    /// The eventfd a cancel writes to (created on first use; None if eventfd fails, and then
    /// the run loop still sees the flag at its next wake-up: a deadline or output).
    fn waker(&self) -> Option<BorrowedFd<'_>> {
        if self.0.waker.get().is_none() {
            // SAFETY: eventfd takes an initial value and flags and returns a new descriptor.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by the kernel and nobody else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                let _ = self.0.waker.set(owned); // lost a race: ours is closed
            }
        }
        self.0.waker.get().map(|fd| fd.as_fd())
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
/// Kernels without pidfds (Linux < 5.3) cannot wake the run loop when the program exits: there
/// it looks (waitid WNOHANG) at least this often.
const NO_PIDFD_RECHECK: Duration = Duration::from_millis(25);
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

/// The earliest deadline: the program's timeout or the pipeline's.
fn next_deadline(cancel: &CancelToken, started: Instant, timeout: Duration) -> Option<Instant> {
    let own = started.checked_add(timeout);
    match (own, cancel.deadline()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A poll timeout that ends at `deadline` (rounded up to the next millisecond), capped.
fn poll_timeout(deadline: Option<Instant>, cap: Option<Duration>) -> PollTimeout {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let wait = match (left, cap) {
        (Some(l), Some(c)) => Some(l.min(c)),
        (l, c) => l.or(c),
    };
    match wait {
        None => PollTimeout::NONE,
        Some(w) => {
            let ms = w.as_micros().div_ceil(1000);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
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
    stdout: Option<File>,
    stderr: Option<File>,
    buf: Vec<u8>,
}

/// What one wait of the run loop saw.
enum Wake {
    /// Output was read, a deadline came, a cancel, or nothing (EINTR): look again.
    Again,
    /// The output cap was exceeded.
    OverLimit,
    /// The program itself has exited (its pidfd is readable).
    Exited,
}

impl Pipes {
    fn open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// One `poll` on the open pipes, the pidfd and the cancel eventfd, until one of them is
    /// ready or `timeout`; then read what is there.
    fn wait(
        &mut self,
        pidfd: Option<&OwnedFd>,
        waker: Option<BorrowedFd<'_>>,
        timeout: PollTimeout,
        sink: &mut Collector<'_>,
    ) -> Wake {
        // Slots: 0 stdout, 1 stderr, 2 pidfd, 3 waker (only the present ones are polled).
        let mut which: [usize; 4] = [0; 4];
        let mut polls: Vec<PollFd<'_>> = Vec::with_capacity(4);
        let candidates: [Option<BorrowedFd<'_>>; 4] = [
            self.stdout.as_ref().map(|f| f.as_fd()),
            self.stderr.as_ref().map(|f| f.as_fd()),
            pidfd.map(|f| f.as_fd()),
            waker,
        ];
        for (slot, fd) in candidates.into_iter().enumerate() {
            if let Some(fd) = fd {
                if let Some(w) = which.get_mut(polls.len()) {
                    *w = slot;
                }
                polls.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        if nix::poll::poll(&mut polls, timeout).is_err() {
            return Wake::Again; // EINTR: look again
        }
        let mut ready = [false; 4];
        for (i, p) in polls.iter().enumerate() {
            if p.revents().is_some_and(|r| !r.is_empty()) {
                if let Some(slot) = which.get(i).and_then(|s| ready.get_mut(*s)) {
                    *slot = true;
                }
            }
        }
        drop(polls);
        let [out_ready, err_ready, exited, _cancelled] = ready;
        if out_ready && !self.read_one(true, sink) {
            return Wake::OverLimit;
        }
        if err_ready && !self.read_one(false, sink) {
            return Wake::OverLimit;
        }
        if exited {
            Wake::Exited
        } else {
            Wake::Again
        }
    }

    /// Read once from one pipe; false when the output cap was exceeded.
    fn read_one(&mut self, is_stdout: bool, sink: &mut Collector<'_>) -> bool {
        let pipe = if is_stdout {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        let Some(f) = pipe.as_mut() else {
            return true;
        };
        match f.read(&mut self.buf) {
            Ok(0) => {
                *pipe = None;
                true
            }
            Ok(n) => sink.push(is_stdout, self.buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            Err(_) => {
                *pipe = None;
                true
            }
        }
    }
}

/// Has the program itself ended? Looks without reaping, so that its pid — which is also the
/// process group id — stays reserved until the group has been killed. (Only for kernels
/// without pidfds.)
fn main_exited(pid: Pid) -> bool {
    matches!(
        waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
        ),
        Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_)
    )
}

/// Reap the program (it has exited, or was just killed with everything it started).
fn reap(pid: Pid) -> Result<Termination, std::io::Error> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Termination::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Termination::Signaled(sig as i32)),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
}

/// A pipe (read end, write end), both CLOEXEC and numbered above 2 (see [`above_stdio`]).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// The child puts its descriptors on 0, 1 and 2 in that order; none of them may already be one
/// of those numbers (possible only when keyhole was started with a standard descriptor closed).
fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// The program's environment: PATH, LANG, then the declared variables (a declared one of the
/// same name replaces the fixed one, as before), then the fallback's marker; sorted.
fn environment(spec: &ProgramSpec, marker: Option<(String, String)>) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), BASE_PATH.into());
    env.insert("LANG".into(), BASE_LANG.into());
    for (k, v) in &spec.env {
        env.insert(k.clone(), v.clone());
    }
    if let Some((k, v)) = marker {
        env.insert(k, v);
    }
    env.into_iter().collect()
}

/// Start the program: clone3 into its cgroup, or (where the kernel refuses) fork.
fn start(
    spec: &ProgramSpec,
    env: &[(String, String)],
    containment: &contain::Containment,
    mut prepared: privileges::Prepared,
    fds: spawn::ChildFds,
) -> Result<spawn::Started, SandboxError> {
    let program = spec.program.display().to_string();
    let spawn_error = |source: std::io::Error| SandboxError::Spawn {
        program: program.clone(),
        source,
    };
    if spawn::clone3_wanted() {
        let exec = spawn::Exec::new(&program, &spec.args, env)
            .ok_or_else(|| SandboxError::NulInArgument(program.clone()))?;
        match spawn::clone3_spawn(&prepared, &exec, &fds, containment.cgroup_fd()) {
            Ok(s) => {
                spawn::count(spawn::SpawnPath::Clone3);
                return Ok(s);
            }
            Err(spawn::Clone3Error::Failed(e)) => return Err(spawn_error(e)),
            Err(spawn::Clone3Error::Refused(e)) => spawn::note_refusal(&e),
        }
    }
    // The fork path: the child writes itself into cgroup.procs before anything else.
    if let Some(procs) = containment.open_procs() {
        prepared.cgroup_procs = Some(procs.map_err(spawn_error)?);
    }
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .stdin(Stdio::from(fds.stdin))
        .stdout(Stdio::from(fds.stdout))
        .stderr(Stdio::from(fds.stderr));
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // `privileges::child_setup`, which makes async-signal-safe system calls (write, setpgid,
    // setrlimit, prctl, setgroups, setresgid, setresuid, capset, getppid) on data computed
    // before the fork and owned by the closure; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || privileges::child_setup(&prepared));
    }
    let spawned = cmd.spawn();
    drop(cmd); // closes the parent's copies of cgroup.procs and of the child's descriptors
    let child = spawned.map_err(spawn_error)?;
    spawn::count(spawn::SpawnPath::Fork);
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // `child` is not waited through std: `reap` collects it by pid.
    drop(child);
    Ok(spawn::Started {
        pid,
        pidfd: spawn::pidfd_open(pid),
    })
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
    let account = match spec.run_as.account() {
        Ok(a) => a,
        Err(e) => return spawn_failed(e),
    };
    let containment = contain::Containment::create();
    let result = run_contained(spec, account, &containment, cancel, on_stdout);
    containment.cleanup();
    result
}

fn run_contained(
    spec: &ProgramSpec,
    account: &Account,
    containment: &contain::Containment,
    cancel: &CancelToken,
    on_stdout: &mut dyn FnMut(&[u8]),
) -> Result<ProgramResult, SandboxError> {
    let program = spec.program.display().to_string();
    let spawn_error = |source: std::io::Error| SandboxError::Spawn {
        program: program.clone(),
        source,
    };
    // Every failure before the program runs is counted in `keyhole_program_spawns_total`.
    let failed = |e: SandboxError| {
        SPAWNS_FAILED.fetch_add(1, Ordering::Relaxed);
        e
    };
    let spawn_error = |source: std::io::Error| failed(spawn_error(source));
    let prepared = privileges::prepare(account, &spec.capabilities, None).map_err(failed)?;
    let env = environment(spec, containment.marker());

    let (out_r, out_w) = pipe().map_err(spawn_error)?;
    let (err_r, err_w) = pipe().map_err(spawn_error)?;
    let (stdin_child, stdin_parent) = match &spec.stdin {
        Some(_) => {
            let (r, w) = pipe().map_err(spawn_error)?;
            (r, Some(w))
        }
        None => {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .open("/dev/null")
                .map_err(spawn_error)?;
            (above_stdio(OwnedFd::from(null)).map_err(spawn_error)?, None)
        }
    };
    let fds = spawn::ChildFds {
        stdin: stdin_child,
        stdout: out_w,
        stderr: err_w,
    };
    // `start` consumes the child's ends (closed in the parent once the child has them).
    let started = start(spec, &env, containment, prepared, fds).map_err(failed)?;
    SPAWNS_STARTED.fetch_add(1, Ordering::Relaxed);
    let pid = started.pid;

    if let (Some(stdin), Some(data)) = (stdin_parent, spec.stdin.clone()) {
        // Detached: ends with EPIPE at the latest when the program's processes are killed.
        let mut stdin = File::from(stdin);
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }

    let mut pipes = Pipes {
        stdout: Some(File::from(out_r)),
        stderr: Some(File::from(err_r)),
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
    let began = Instant::now();
    let waker = cancel.waker();
    let deadline = next_deadline(cancel, began, spec.timeout);
    // Without a pidfd the loop must look at the program now and then.
    let recheck = started.pidfd.is_none().then_some(NO_PIDFD_RECHECK);

    let reason = loop {
        if let Some(r) = stop_reason(cancel, began, spec.timeout) {
            break Some(r);
        }
        let timeout = poll_timeout(deadline, recheck);
        match pipes.wait(started.pidfd.as_ref(), waker, timeout, &mut sink) {
            Wake::OverLimit => break Some(Termination::OutputLimit),
            Wake::Exited => break None,
            Wake::Again => {}
        }
        if recheck.is_some() && main_exited(pid) {
            break None;
        }
    };

    // Whatever happened, nothing the command started survives it.
    containment.kill_all(pid);
    let status = reap(pid);
    containment.kill_again(pid);

    if reason != Some(Termination::OutputLimit) {
        // What the program wrote before it ended is still in the pipes; everything that could
        // write more is dead, so they reach end-of-file (a bound all the same).
        let drain_until = Instant::now() + DRAIN_DEADLINE;
        while pipes.open() && Instant::now() < drain_until {
            let timeout = poll_timeout(Some(drain_until), None);
            if let Wake::OverLimit = pipes.wait(None, None, timeout, &mut sink) {
                break;
            }
        }
    }
    drop(pipes);

    let termination = match reason {
        Some(r) => r,
        None => status.map_err(|source| SandboxError::Wait {
            program: spec.program.display().to_string(),
            source,
        })?,
    };
    Ok(ProgramResult {
        termination,
        stdout: sink.stdout,
        stderr: sink.stderr,
        output_bytes: sink.total,
    })
}
