//! `sandbox` is the only module with `unsafe`: spawning a program as the run-as account,
//! dropping capabilities, no-new-privs, limits, killing the process group and every descendant.
#![allow(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::CancelToken;

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
    pub max_output_bytes: u64,
    /// Bytes for standard input; None: /dev/null.
    pub stdin: Option<Vec<u8>>,
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
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
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
    #[error("{0}")]
    Other(String),
}

/// Run a program under the sandbox. `on_stdout` receives output chunks as they arrive (for
/// streaming); the full output is also returned.
///
/// PLACEHOLDER until the sandbox lands: spawns without dropping privileges. Not for release.
pub fn run(
    spec: &ProgramSpec,
    _cancel: &CancelToken,
    on_stdout: &mut dyn FnMut(&[u8]),
) -> Result<ProgramResult, SandboxError> {
    let out = std::process::Command::new(&spec.program)
        .args(&spec.args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| SandboxError::Spawn {
            program: spec.program.display().to_string(),
            source: e,
        })?;
    on_stdout(&out.stdout);
    Ok(ProgramResult {
        termination: match out.status.code() {
            Some(c) => Termination::Exited(c),
            None => Termination::Signaled(0),
        },
        stdout: out.stdout,
        stderr: out.stderr,
    })
}
