//! `engine` owns the object model, the command table built from an effective capability,
//! parameter binding and validation, pipelines, and the text formatter. It knows nothing of
//! WS-Man, PSRP or HTTP; its output is a stream of [`Event`]s.
//!
//! Files: `table` (the command table: restricted defaults, granted cmdlets, functions, external
//! commands and aliases; role constraints compiled into per-parameter checks), `bind` (names,
//! prefixes, positions, types, common parameters, value checks, pipeline input), `pipeline`
//! (the push model: each object goes to the next stage as soon as it is written), `session`
//! (parse → resolve and bind every statement → run), `format` (Out-Default text).
//!
//! Choices worth knowing (PowerShell does not pin them down, or cannot apply here):
//! - A refusal emits nothing to the sink; the adapter shows [`RunOutcome::Refused`] itself.
//! - `-WhatIf` never calls the command; its "What if: ..." line is an [`Event::Information`].
//! - `-Confirm` is accepted on state-changing commands and ignored: there is no host to prompt.
//! - Errors dropped by `-ErrorAction SilentlyContinue`/`Ignore` do not make the line fail.
//! - A terminating error (or `-ErrorAction Stop`) ends the whole line: later statements do not run.
//! - In restricted-remote-server sessions the eight restricted defaults are fixed: a role
//!   grant of the same name does not constrain them (implicit remoting must keep working).
//! - An external command's arguments are bound verbatim as `Arguments` (a string array), each
//!   already checked against the entry's `arguments` patterns (anchored, case-sensitive).
//! - Pipeline input binds ByValue to a typed parameter first, then ByPropertyName, then ByValue
//!   to an object parameter, so a role-constrained `-Name` is what an object's Name binds to.
#![forbid(unsafe_code)]

pub mod command;
pub mod value;

pub(crate) mod bind;
pub mod format;
mod pipeline;
mod session;
mod table;

pub use session::{Session, SharedTable};
pub use table::begins_with_dash;

pub use command::*;
pub use value::*;

use crate::config::SessionType;

/// Records what a session does (transcripts). Every method is called *before* the thing it
/// records happens or right after it ends; an error refuses the command (keyhole never runs
/// unaudited). What a method records reaches the operating system (survives keyhole being
/// killed) when the method returns — except `line`, which may wait for the `command` or
/// `refused` that follows it — and reaches the disk (survives the machine) at the next
/// [`Audit::commit`], which the engine calls once before the commands of a statement start.
pub trait Audit: Send {
    /// A pipeline line as received (script text, or a rendering of a structured pipeline).
    fn line(&mut self, line: &str) -> std::io::Result<()>;
    /// A command about to run, with its bound parameters.
    fn command(&mut self, name: &str, args: &BoundArgs) -> std::io::Result<()>;
    /// A refusal and its reason.
    fn refused(&mut self, reason: &str) -> std::io::Result<()>;
    /// Output, as text.
    fn output(&mut self, text: &str) -> std::io::Result<()>;
    /// How the pipeline ended.
    fn end(&mut self, state: EndState) -> std::io::Result<()>;
    /// Make everything recorded so far durable (one `fdatasync` for the line and its command
    /// records, and whatever ended before them); called before commands start.
    fn commit(&mut self) -> std::io::Result<()>;
}

/// How a line ended, as the transcript records it (`[end] Completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndState {
    /// Ran to the end (errors written by commands do not change that).
    Completed,
    /// A terminating error stopped it after something ran.
    Failed,
    /// Cancelled: Signal, shell closed, or `command_timeout`.
    Stopped,
    /// Refused before anything ran (nothing ran).
    Refused,
}

impl EndState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndState::Completed => "Completed",
            EndState::Failed => "Failed",
            EndState::Stopped => "Stopped",
            EndState::Refused => "Refused",
        }
    }
}

impl std::fmt::Display for EndState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An audit that records nothing (unit tests only: a real session always has a transcript).
#[cfg(test)]
pub struct NoAudit;
#[cfg(test)]
impl Audit for NoAudit {
    fn line(&mut self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn command(&mut self, _: &str, _: &BoundArgs) -> std::io::Result<()> {
        Ok(())
    }
    fn refused(&mut self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn output(&mut self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn end(&mut self, _: EndState) -> std::io::Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A line refused before anything ran (keyhole run exit 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Says what was wrong and, where there is one, the column: "parameter 'Name' ... at column 17".
    pub message: String,
    /// FullyQualifiedErrorId, e.g. "CommandNotFoundException", "ParameterArgumentValidationError,Restart-Service".
    pub id: String,
    pub category: ErrorCategory,
    /// 1-based column in the line, when the refusal has a place.
    pub column: Option<usize>,
}

impl Refusal {
    pub fn to_error_record(&self) -> ErrorRecord {
        ErrorRecord::new(self.message.clone(), self.id.clone(), self.category).terminating()
    }
}

/// How a line ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Ran to the end; `had_errors` when any error record was written (exit 1).
    Completed { had_errors: bool },
    /// Refused before anything ran (exit 2). The engine emits nothing to the sink for a
    /// refusal: the protocol adapter decides how to show it (see [`Refusal::to_error_record`]).
    Refused(Refusal),
    /// A terminating error stopped it after something ran (exit 1). The engine has already
    /// emitted the record as an [`Event::Error`]; adapters must not show it twice.
    Failed(ErrorRecord),
    /// Cancelled (Signal / session close).
    Stopped,
    /// `exit` / `Exit-PSSession`: the session should end.
    Exit,
}

impl RunOutcome {
    /// The exit status `keyhole run` and WinRS report: 0 ran, 1 failed, 2 refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::Completed { had_errors: false } | RunOutcome::Exit => 0,
            RunOutcome::Completed { had_errors: true }
            | RunOutcome::Failed(_)
            | RunOutcome::Stopped => 1,
            RunOutcome::Refused(_) => 2,
        }
    }
}

/// One argument of a structured command (PSRP), or of a parsed command call.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandArg {
    /// Parameter name without the dash; None for positional.
    pub name: Option<String>,
    /// None for a switch given alone.
    pub value: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StructuredCommand {
    pub name: String,
    pub args: Vec<CommandArg>,
}

/// A pipeline as PSRP's CREATE_PIPELINE carries it when IsScript is false.
#[derive(Debug, Clone, PartialEq)]
pub struct StructuredPipeline {
    pub commands: Vec<StructuredCommand>,
}

/// What a session needs besides the capability.
pub struct SessionOptions {
    pub session_type: SessionType,
    pub host: HostEnv,
    /// The built-ins and the constructors of declared commands (`commands::source()`).
    pub commands: std::sync::Arc<dyn CommandSource>,
}
