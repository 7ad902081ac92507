//! The contract between the WS-Man layer and the shells behind it (WinRS cmd shells and PSRP
//! runspace pools). The WS-Man layer owns XML, HTTP, faults and long-polling; a shell owns its
//! protocol state. Methods never block: `receive` returns what is ready, and `notify` wakes a
//! waiting Receive when more becomes ready.
#![forbid(unsafe_code)]

use std::sync::Arc;

use tokio::sync::Notify;

/// Who opened the shell, after gates 2–4 (the engine session is built by the opener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOwner {
    pub user: String,
    pub groups: Vec<String>,
    pub client: String,
}

/// wst:Create body and options, decoded.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub resource_uri: String,
    /// ShellId the client chose (PSRP sends one as a `ShellId` attribute), if any.
    pub shell_id: Option<String>,
    pub input_streams: Vec<String>,
    pub output_streams: Vec<String>,
    /// PSRP: the `creationXml` element's base64-decoded bytes (PSRP fragments).
    pub creation_xml: Option<Vec<u8>>,
    /// WinRS: `<rsp:Environment><rsp:Variable Name=...>`.
    pub environment: Vec<(String, String)>,
    pub working_directory: Option<String>,
    /// `<wsman:OptionSet>` options (name, value), e.g. WINRS_NOPROFILE, protocolversion.
    pub options: Vec<(String, String)>,
    /// MaxEnvelopeSize the client negotiated, in bytes (PSRP fragment size derives from it).
    pub max_envelope_size: usize,
}

/// wst:Command (rsp:CommandLine).
#[derive(Debug, Clone, Default)]
pub struct CommandRequest {
    /// CommandId the client chose (PSRP), if any.
    pub command_id: Option<String>,
    /// `<rsp:Command>` text (WinRS command line; PSRP sends an empty or pseudo command).
    pub command: String,
    /// `<rsp:Arguments>` texts in order (WinRS: arguments; PSRP: base64 of fragments, not yet decoded).
    pub arguments: Vec<String>,
}

/// One chunk of one stream in a ReceiveResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamChunk {
    /// "stdout", "stderr", "pr".
    pub name: String,
    pub command_id: Option<String>,
    pub data: Vec<u8>,
    pub end: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStateKind {
    Pending,
    Running,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandState {
    pub command_id: String,
    pub state: CommandStateKind,
    pub exit_code: Option<i32>,
}

/// What a Receive returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveResponse {
    pub streams: Vec<StreamChunk>,
    pub command_state: Option<CommandState>,
}

/// Errors a shell reports; the WS-Man layer maps each to one fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// Unknown shell or command (or one that belongs to another user): w:InvalidSelectors.
    #[error("unknown shell or command")]
    InvalidSelectors,
    /// Too many shells/commands: QuotaLimit.
    #[error("quota exceeded: {0}")]
    QuotaLimit(String),
    /// Bad base64 / UTF-8 / fragment / CLIXML: EncodingLimit or InvalidParameter-type fault.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// Anything else; detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A shell instance (a WinRS cmd shell or a PSRP runspace pool).
pub trait Shell: Send {
    /// Called once after creation; returns the body extras for the Create response, if any
    /// (PSRP returns nothing special; WinRS nothing).
    fn on_create(&mut self, req: &CreateRequest) -> Result<(), ShellError>;
    /// Start a command; returns its CommandId (the client's if it chose one).
    fn command(&mut self, req: CommandRequest) -> Result<String, ShellError>;
    /// Deliver input (`stream` is "stdin" or "pr"; `command_id` None addresses the shell itself).
    fn send(&mut self, command_id: Option<&str>, stream: &str, data: Vec<u8>, end: bool) -> Result<(), ShellError>;
    /// What is ready to return for this command (or the shell when None); empty = nothing yet.
    fn receive(&mut self, command_id: Option<&str>) -> Result<ReceiveResponse, ShellError>;
    /// Signal a command (codes: "ctrl_c", "terminate", PSRP's ps_crtl_c); kills its programs.
    fn signal(&mut self, command_id: Option<&str>, code: &str) -> Result<(), ShellError>;
    /// Close the shell and everything running in it.
    fn close(&mut self);
    /// Woken whenever `receive` may have something new.
    fn notify(&self) -> Arc<Notify>;
}
