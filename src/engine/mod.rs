//! `engine` owns the object model, the command table built from an effective capability,
//! parameter binding and validation, pipelines, and the text formatter. It knows nothing of
//! WS-Man, PSRP or HTTP; its output is a stream of [`Event`]s.
#![forbid(unsafe_code)]

pub mod command;
pub mod value;

pub use command::*;
pub use value::*;

use crate::capability::EffectiveCapability;
use crate::config::SessionType;

/// Records what a session does (transcripts). Every method is called *before* the thing it
/// records happens or right after it ends, and must have flushed when it returns; an error
/// refuses the command (keyhole never runs unaudited).
pub trait Audit: Send {
    /// A pipeline line as received (script text, or a rendering of a structured pipeline).
    fn line(&mut self, line: &str) -> std::io::Result<()>;
    /// A command about to run, with its bound parameters (fsync'd).
    fn command(&mut self, name: &str, args: &BoundArgs) -> std::io::Result<()>;
    /// A refusal and its reason.
    fn refused(&mut self, reason: &str) -> std::io::Result<()>;
    /// Output, as text.
    fn output(&mut self, text: &str) -> std::io::Result<()>;
    /// End state of the pipeline ("Completed", "Failed", "Stopped").
    fn end(&mut self, state: &str) -> std::io::Result<()>;
}

/// An audit that records nothing (unit tests only).
pub struct NoAudit;
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
    fn end(&mut self, _: &str) -> std::io::Result<()> {
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
    /// Refused before anything ran (exit 2).
    Refused(Refusal),
    /// A terminating error stopped it after something ran (exit 1).
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
}

/// A session: one user's command table in one endpoint. Lines run one at a time.
pub struct Session {
    #[allow(dead_code)]
    opts: SessionOptions,
    audit: Box<dyn Audit>,
    visible: Vec<VisibleCommand>,
}

impl Session {
    /// Build the command table from the effective capability, and nothing else.
    pub fn new(_cap: &EffectiveCapability, opts: SessionOptions, audit: Box<dyn Audit>) -> Session {
        Session {
            opts,
            audit,
            visible: Vec::new(),
        }
    }

    /// Parse, check and run one line of the language (SPEC §4.1).
    pub fn run_line(
        &mut self,
        line: &str,
        _sink: &mut dyn EventSink,
        _cancel: &CancelToken,
    ) -> RunOutcome {
        let _ = self.audit.line(line);
        RunOutcome::Refused(Refusal {
            message: "not implemented yet".into(),
            id: "NotImplemented".into(),
            category: ErrorCategory::NotImplemented,
            column: None,
        })
    }

    /// Run structured pipelines (PSRP, IsScript false): statements run in order; `input` feeds
    /// the first command of the first statement.
    pub fn run_structured(
        &mut self,
        _statements: &[StructuredPipeline],
        _input: Vec<Value>,
        _sink: &mut dyn EventSink,
        _cancel: &CancelToken,
    ) -> RunOutcome {
        RunOutcome::Completed { had_errors: false }
    }

    /// The commands this session can see (Get-Command, GET_COMMAND_METADATA).
    pub fn visible(&self) -> &[VisibleCommand] {
        &self.visible
    }
}

pub mod format {
    //! Out-Default text formatting.
    use super::Value;

    /// Streaming formatter: feed values in order, get text (tables for up to four properties,
    /// lists otherwise, a header each time the shape changes).
    #[derive(Default)]
    pub struct Formatter {}

    impl Formatter {
        pub fn new() -> Self {
            Formatter {}
        }
        /// Text for this value (may include a table header).
        pub fn push(&mut self, v: &Value) -> String {
            format!("{}\n", v.to_ps_string())
        }
        /// Text to end the stream (trailing blank line of a table, ...).
        pub fn finish(&mut self) -> String {
            String::new()
        }
    }

    /// Format a whole list of values as Out-Default would.
    pub fn format_values(values: &[Value]) -> String {
        let mut f = Formatter::new();
        let mut s: String = values.iter().map(|v| f.push(v)).collect();
        s.push_str(&f.finish());
        s
    }
}
