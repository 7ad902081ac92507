//! The contract between the WS-Man layer and what sits above it: who the caller is (gate 2,
//! [`Authenticate`]), how a shell is made ([`ShellFactory`], which opens the session through the
//! gates itself and hands back the shell with its limits), what a shell does ([`Shell`]), and
//! the values that cross the layer as enums ([`Signal`], [`StreamName`], [`CommandStateKind`]).
//!
//! The WS-Man layer owns XML, HTTP faults and long-polling; a shell owns its protocol state and
//! its runtime. Shell methods never block: `receive` returns what is ready, and `notify` wakes a
//! waiting Receive when more becomes ready. This module knows no engine, no shell and no
//! listener: the composition root (`daemon`) registers every factory.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Who the caller is, after gate 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// Gate 2: who sent this request. Only Create opens a session (gates 3–4, in the factory);
/// every other operation needs only this, and an authenticated caller gets WS-Man faults where
/// an unauthenticated one gets the 401. So that a fault never tells a stranger the password was
/// right, an implementation also refuses (None) a user who could open no session at all.
///
/// Basic and client certificates authenticate each request ([`Authenticate::authenticate`]).
/// Negotiate authenticates the connection, over several requests, and may encrypt the bodies
/// that follow: the listener keeps one [`Connection`] per TCP connection and hands it to the
/// `*_connection`/`*_body` methods, whose defaults fall back to the per-request form (and admit
/// nothing on a listener that requires encryption). Every method is called on a blocking
/// thread, one request of a connection at a time.
pub trait Authenticate: Send + Sync + 'static {
    /// CPU-heavy (password hashing): called on a blocking thread. None → the generic 401.
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: SocketAddr,
        client_cert_sha256: Option<[u8; 32]>,
    ) -> Option<Identity>;
    /// `WWW-Authenticate` header values of the generic 401, e.g. `Basic realm="WSMAN"`.
    fn challenges(&self) -> Vec<String>;

    /// Gate 2 for one request on `conn` (its `Authorization` header, if any).
    fn authenticate_connection(
        &self,
        conn: &mut Connection,
        authorization: Option<&[u8]>,
    ) -> Verdict {
        if conn.encrypted_only {
            return Verdict::Refuse;
        }
        match self.authenticate(authorization, conn.peer, conn.client_cert_sha256) {
            Some(identity) => Verdict::Allow {
                identity,
                www_authenticate: None,
            },
            None => Verdict::Refuse,
        }
    }

    /// The body of a request [`Authenticate::authenticate_connection`] allowed, as the WS-Man
    /// layer is to read it (decrypted, when the connection encrypts). None → the generic 401
    /// (and the connection is closed): a body this connection may not send.
    fn open_body(
        &self,
        conn: &mut Connection,
        content_type: Option<&str>,
        body: Vec<u8>,
        max_envelope: usize,
    ) -> Option<RequestBody> {
        let _ = max_envelope;
        if conn.encrypted_only {
            return None;
        }
        Some(RequestBody::Envelope {
            content_type: content_type.map(str::to_string),
            bytes: body,
        })
    }

    /// The response to the request [`Authenticate::open_body`] opened, as sent: encrypted when
    /// the request was. None → the generic 401 (and the connection is closed).
    fn seal_body(&self, conn: &mut Connection, soap: Vec<u8>) -> Option<ResponseBody> {
        let _ = conn;
        Some(ResponseBody {
            content_type: None,
            bytes: soap,
        })
    }
}

/// One TCP connection as gate 2 sees it, kept by the listener for the connection's life.
pub struct Connection {
    pub peer: SocketAddr,
    /// SHA-256 of the TLS client certificate, when the client presented one.
    pub client_cert_sha256: Option<[u8; 32]>,
    /// HTTPS: the channel binding data of the server's certificate (RFC 5929
    /// `tls-server-end-point`), which Negotiate clients bind their authentication to. None on
    /// plain HTTP.
    pub channel_binding: Option<Arc<[u8]>>,
    /// A plain-HTTP listener that admits nothing but encrypted Negotiate (one off loopback
    /// without `allow_unencrypted`).
    pub encrypted_only: bool,
    /// What the [`Authenticate`] implementation keeps between the requests of this connection
    /// (Negotiate: the exchange in progress, the security context).
    pub state: Option<Box<dyn std::any::Any + Send>>,
}

impl Connection {
    pub fn new(
        peer: SocketAddr,
        client_cert_sha256: Option<[u8; 32]>,
        channel_binding: Option<Arc<[u8]>>,
        encrypted_only: bool,
    ) -> Connection {
        Connection {
            peer,
            client_cert_sha256,
            channel_binding,
            encrypted_only,
            state: None,
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("tls", &self.channel_binding.is_some())
            .field("encrypted_only", &self.encrypted_only)
            .finish()
    }
}

/// What gate 2 decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the request as `identity`; send `www_authenticate` (Negotiate's last token) with
    /// the response.
    Allow {
        identity: Identity,
        www_authenticate: Option<String>,
    },
    /// A multi-leg exchange goes on: answer 401 with this one `WWW-Authenticate` value.
    Continue { www_authenticate: String },
    /// The generic 401.
    Refuse,
}

/// A request body as [`Authenticate::open_body`] hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// The SOAP envelope to serve, with its content type.
    Envelope {
        content_type: Option<String>,
        bytes: Vec<u8>,
    },
    /// Nothing to serve: the empty request Negotiate clients authenticate with before they
    /// encrypt (answered 200 with an empty body).
    Setup,
}

/// A response body as [`Authenticate::seal_body`] hands it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseBody {
    /// Replaces the SOAP content type (`multipart/encrypted;…` when encrypted).
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// The limits of a shell, set by the factory that opened its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellLimits {
    /// The user's shell quota (`[limits] max_shells_per_user`), checked by the registry.
    pub max_shells: usize,
    /// A shell idle this long is closed.
    pub idle_timeout: Duration,
}

/// A shell a factory made, with its limits.
pub struct NewShell {
    pub shell: Box<dyn Shell>,
    pub limits: ShellLimits,
}

/// Why a factory made no shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// Gates 3–4 (or the factory's own policy) refused: the client gets the same 401 as for a
    /// wrong password; the log already says why.
    Refused,
    /// The request itself is wrong or over a quota: a WS-Man fault.
    Shell(ShellError),
}

impl From<ShellError> for CreateError {
    fn from(e: ShellError) -> Self {
        CreateError::Shell(e)
    }
}

/// Makes shells for the resource URIs it is registered for.
pub trait ShellFactory: Send + Sync {
    /// Open a session for `id` (through the gates) and build a shell on it. Called on a
    /// blocking thread. `endpoint` is the rest of the resource URI after a prefix registration
    /// (PSRP: the configuration name), None for an exact registration (WinRS: the factory knows
    /// its endpoint).
    fn create(
        &self,
        id: &Identity,
        peer: SocketAddr,
        endpoint: Option<&str>,
        req: &CreateRequest,
    ) -> Result<NewShell, CreateError>;
}

/// The streams of the WinRS and PSRP shells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamName {
    Stdin,
    Stdout,
    Stderr,
    /// PSRP's prompt-response input stream (host responses).
    Pr,
}

impl StreamName {
    /// The name as sent on the wire (case-insensitive on input).
    pub fn parse(s: &str) -> Option<StreamName> {
        [
            StreamName::Stdin,
            StreamName::Stdout,
            StreamName::Stderr,
            StreamName::Pr,
        ]
        .into_iter()
        .find(|n| n.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdin => "stdin",
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
            StreamName::Pr => "pr",
        }
    }

    /// A whitespace-separated list (`rsp:InputStreams`, `rsp:DesiredStream`); the first name
    /// keyhole does not serve is the error.
    pub fn parse_list(s: &str) -> Result<Vec<StreamName>, String> {
        s.split_whitespace()
            .map(|n| StreamName::parse(n).ok_or_else(|| n.to_string()))
            .collect()
    }

    /// A list as sent on the wire: names separated by one space.
    pub fn join(list: &[StreamName]) -> String {
        list.iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `rsp:Signal` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// WinRS `.../windows/shell/signal/ctrl_c`.
    CtrlC,
    /// WinRS `.../windows/shell/signal/ctrl_break`.
    CtrlBreak,
    /// WinRS `.../windows/shell/signal/Terminate`: stop, and forget a finished command.
    Terminate,
    /// PSRP's stop: `http://schemas.microsoft.com/powershell/signal/crtl_c` (sic, as Windows
    /// spells it), or the relative `powershell/signal/ctrl_c` pypsrp 0.9.1 sends.
    PsrpStop,
}

const WINRS_SIGNAL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/";
const PSRP_SIGNAL: &str = "http://schemas.microsoft.com/powershell/signal/";
const PSRP_SIGNAL_RELATIVE: &str = "powershell/signal/";

impl Signal {
    /// The signal a `rsp:Code` URI names (case-insensitive); None for any other.
    pub fn from_uri(uri: &str) -> Option<Signal> {
        let lower = uri.trim().to_ascii_lowercase();
        if let Some(code) = lower.strip_prefix(WINRS_SIGNAL) {
            return match code {
                "ctrl_c" => Some(Signal::CtrlC),
                "ctrl_break" => Some(Signal::CtrlBreak),
                "terminate" => Some(Signal::Terminate),
                _ => None,
            };
        }
        let code = lower
            .strip_prefix(PSRP_SIGNAL)
            .or_else(|| lower.strip_prefix(PSRP_SIGNAL_RELATIVE))?;
        matches!(code, "crtl_c" | "ctrl_c").then_some(Signal::PsrpStop)
    }
}

/// wst:Create body and options, decoded.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub resource_uri: String,
    /// ShellId the client chose (PSRP sends one as a `ShellId` attribute), if any.
    pub shell_id: Option<String>,
    pub input_streams: Vec<StreamName>,
    pub output_streams: Vec<StreamName>,
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
    pub name: StreamName,
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
    /// Unknown shell or command (or one that belongs to another user, or a shell closed while
    /// the request waited): w:InvalidSelectors.
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
    /// Something the client asked for that keyhole does not support. The text says what and
    /// why, and is shown to the client (the fault's Reason and Message): it must name only what
    /// the client sent, never anything about the server or another user.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A Receive was waiting when its shell closed (deleted, expired, shutdown): Windows answers
    /// it with ERROR_OPERATION_ABORTED (995).
    #[error("the shell closed while the request waited")]
    Aborted,
    /// The shell the request names was closed by the server (idle timeout); the text, shown to
    /// the client, says so. Only its owner ever gets it: to anyone else it is InvalidSelectors.
    #[error("the shell is gone: {0}")]
    Gone(String),
}

/// A shell instance (a WinRS cmd shell or a PSRP runspace pool).
pub trait Shell: Send {
    /// Called once after creation, with the Create request.
    fn on_create(&mut self, req: &CreateRequest) -> Result<(), ShellError>;
    /// Start a command; returns its CommandId (the client's if it chose one).
    fn command(&mut self, req: CommandRequest) -> Result<String, ShellError>;
    /// Deliver input (`command_id` None addresses the shell itself).
    fn send(
        &mut self,
        command_id: Option<&str>,
        stream: StreamName,
        data: Vec<u8>,
        end: bool,
    ) -> Result<(), ShellError>;
    /// What is ready to return for this command (or the shell when None); empty = nothing yet.
    fn receive(&mut self, command_id: Option<&str>) -> Result<ReceiveResponse, ShellError>;
    /// Signal a command (or the shell when None); stopping kills its programs.
    fn signal(&mut self, command_id: Option<&str>, signal: Signal) -> Result<(), ShellError>;
    /// Close the shell and everything running in it; wakes every waiting Receive.
    fn close(&mut self);
    /// Woken whenever `receive` may have something new.
    fn notify(&self) -> Arc<Notify>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn signal_codes() {
        let s = |u: &str| Signal::from_uri(u);
        assert_eq!(
            s("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/Terminate"),
            Some(Signal::Terminate)
        );
        assert_eq!(
            s("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/ctrl_c"),
            Some(Signal::CtrlC)
        );
        assert_eq!(
            s("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/ctrl_break"),
            Some(Signal::CtrlBreak)
        );
        assert_eq!(
            s("http://schemas.microsoft.com/powershell/signal/crtl_c"),
            Some(Signal::PsrpStop)
        );
        assert_eq!(s("powershell/signal/ctrl_c"), Some(Signal::PsrpStop));
        for bad in [
            "urn:x",
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/nope",
            "http://schemas.microsoft.com/powershell/signal/terminate",
            "http://evil/crtl_c",
            "",
        ] {
            assert_eq!(s(bad), None, "{bad}");
        }
    }

    #[test]
    fn stream_names() {
        assert_eq!(
            StreamName::parse_list(" stdout\tSTDERR "),
            Ok(vec![StreamName::Stdout, StreamName::Stderr])
        );
        assert_eq!(
            StreamName::parse_list("stdin pr"),
            Ok(vec![StreamName::Stdin, StreamName::Pr])
        );
        assert_eq!(StreamName::parse_list("stdout bogus"), Err("bogus".into()));
        assert_eq!(
            StreamName::join(&[StreamName::Stdout, StreamName::Stderr]),
            "stdout stderr"
        );
    }
}
