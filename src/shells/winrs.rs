//! `shells::winrs`: the WinRS cmd shell. Each Command is one line of the language (pywinrm
//! `run_cmd` command + arguments, or `powershell -EncodedCommand <base64 UTF-16LE>` as `run_ps`
//! sends), run on the shared runtime (`runner`); output streams back as text on stdout, errors
//! on stderr, and the exit code is `keyhole run`'s (0 ran, 1 failed, 2 refused).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use tokio::sync::Notify;

use super::runner::{wake, Item, Lane, Line, Outbox, Workers};
use super::ShellSetup;
use crate::engine::format::{error_text, Formatter};
use crate::engine::{CancelToken, ErrorRecord, Event, EventSink, RunOutcome, Session};
use crate::gates::{Gates, OpenError, Origin, SessionKind};
use crate::wsman::shell::{
    CommandRequest, CommandState, CommandStateKind, CreateError, CreateRequest, Identity, NewShell,
    ReceiveResponse, Shell, ShellError, ShellFactory, Signal, StreamChunk, StreamName,
};

/// Commands one shell keeps (running or finished and not yet cleaned up by `terminate`).
pub const MAX_COMMANDS_PER_SHELL: usize = 64;
/// Stdin kept per command.
pub const MAX_STDIN: usize = 1024 * 1024;
/// Longest command line accepted, in bytes (after decoding -EncodedCommand).
pub const MAX_LINE: usize = 256 * 1024;
/// Smallest chunk of output returned by one Receive.
const MIN_CHUNK: usize = 4096;

/// Opens WinRS sessions (in `[server] winrs_endpoint`) through the gates and builds shells.
pub struct WinrsFactory {
    gates: Arc<Gates>,
    workers: Arc<Workers>,
}

impl WinrsFactory {
    pub fn new(gates: Arc<Gates>, workers: Arc<Workers>) -> WinrsFactory {
        WinrsFactory { gates, workers }
    }
}

impl ShellFactory for WinrsFactory {
    fn create(
        &self,
        id: &Identity,
        peer: SocketAddr,
        _endpoint: Option<&str>,
        req: &CreateRequest,
    ) -> Result<NewShell, CreateError> {
        let origin = Origin::Remote(peer);
        let endpoint = self.gates.config().server.winrs_endpoint.clone();
        if endpoint.is_empty() {
            self.gates.refuse(
                id,
                origin,
                None,
                "WinRS is off: winrs_endpoint is empty in keyhole.toml",
            );
            return Err(CreateError::Refused);
        }
        let grant = match self.gates.open(id, &endpoint, origin, SessionKind::Winrs) {
            Ok(g) => g,
            Err(OpenError::Denied(_)) => return Err(CreateError::Refused),
            Err(e @ OpenError::SessionLimit { .. }) => {
                return Err(ShellError::QuotaLimit(e.to_string()).into())
            }
        };
        let limits = grant.limits.shell;
        let session = Some(grant.guard.hook());
        let setup = ShellSetup {
            command_timeout: Some(grant.limits.command_timeout),
            keep: Some(Box::new(grant.guard)),
            ..ShellSetup::new(&id.user, self.workers.clone())
        };
        Ok(NewShell {
            shell: Box::new(WinrsShell::new(
                grant.session,
                setup,
                &grant.endpoint,
                req.max_envelope_size,
            )),
            limits,
            session,
        })
    }
}

/// Output of one WinRS command, in order.
#[derive(Debug)]
enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The line ended with this exit code (always last).
    Exit(i32),
}

impl Item for Chunk {
    fn weight(&self) -> usize {
        match self {
            Chunk::Stdout(b) | Chunk::Stderr(b) => b.len(),
            Chunk::Exit(_) => 0,
        }
    }
    fn split_front(&mut self, max_cost: usize) -> Option<Self> {
        match self {
            Chunk::Stdout(b) => Some(Chunk::Stdout(b.drain(..max_cost.min(b.len())).collect())),
            Chunk::Stderr(b) => Some(Chunk::Stderr(b.drain(..max_cost.min(b.len())).collect())),
            Chunk::Exit(_) => None,
        }
    }
}

struct CommandSlot {
    out: Arc<Outbox<Chunk>>,
    cancel: CancelToken,
    stdin: Vec<u8>,
    stdin_closed: bool,
    /// The exit code, once a Receive has taken it.
    exit: Option<i32>,
    /// Done (with End streams) already delivered.
    reported: bool,
}

/// A WinRS cmd shell over one engine session. Lines of one shell run one at a time.
pub struct WinrsShell {
    lane: Lane<Session>,
    setup_budget: super::runner::Budget,
    user: String,
    endpoint: String,
    commands: HashMap<String, CommandSlot>,
    order: Vec<String>,
    notify: Arc<Notify>,
    chunk: usize,
    closed: bool,
}

impl WinrsShell {
    /// A shell over `session` (opened by the gates); `max_envelope_size` sizes Receives.
    pub fn new(
        session: Session,
        setup: ShellSetup,
        endpoint: &str,
        max_envelope_size: usize,
    ) -> WinrsShell {
        // Base64 grows data by 4/3; keep well inside the client's MaxEnvelopeSize.
        let chunk = (max_envelope_size.saturating_sub(8192) / 4 * 3 / 2).max(MIN_CHUNK);
        WinrsShell {
            lane: Lane::new(session, setup.workers, setup.command_timeout, setup.keep),
            setup_budget: setup.budget,
            user: setup.user,
            endpoint: endpoint.to_string(),
            commands: HashMap::new(),
            order: Vec::new(),
            notify: Arc::new(Notify::new()),
            chunk,
            closed: false,
        }
    }

    fn forget_finished(&mut self) {
        while self.commands.len() >= MAX_COMMANDS_PER_SHELL {
            let Some(pos) = self.order.iter().position(|id| {
                self.commands
                    .get(id)
                    .is_some_and(|c| c.exit.is_some() || c.out.ended())
            }) else {
                return;
            };
            let id = self.order.remove(pos);
            if let Some(c) = self.commands.remove(&id) {
                c.out.close();
            }
        }
    }

    fn slot(&mut self, command_id: Option<&str>) -> Result<&mut CommandSlot, ShellError> {
        if self.closed {
            return Err(ShellError::InvalidSelectors);
        }
        let id = command_id.ok_or(ShellError::InvalidSelectors)?;
        let key = id.to_ascii_uppercase();
        self.commands
            .get_mut(&key)
            .ok_or(ShellError::InvalidSelectors)
    }
}

impl Shell for WinrsShell {
    fn on_create(&mut self, req: &CreateRequest) -> Result<(), ShellError> {
        if !req.environment.is_empty() || req.working_directory.is_some() {
            tracing::info!(user = %self.user, "WinRS: client environment and working directory are ignored");
        }
        Ok(())
    }

    fn command(&mut self, req: CommandRequest) -> Result<String, ShellError> {
        if self.closed {
            return Err(ShellError::InvalidSelectors);
        }
        let line = command_line(&req.command, &req.arguments)?;
        self.forget_finished();
        if self.commands.len() >= MAX_COMMANDS_PER_SHELL {
            return Err(ShellError::QuotaLimit(format!(
                "{MAX_COMMANDS_PER_SHELL} commands running in one shell"
            )));
        }
        let id = match req.command_id {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                id.to_ascii_uppercase()
            }
            Some(id) => {
                return Err(ShellError::Malformed(format!(
                    "CommandId {id:?} is not a GUID"
                )))
            }
            None => uuid::Uuid::new_v4().to_string().to_uppercase(),
        };
        if self.commands.contains_key(&id) {
            return Err(ShellError::Malformed(format!(
                "CommandId {id} is already in use"
            )));
        }
        let out = Outbox::new(self.setup_budget.for_line(), self.notify.clone());
        let cancel = CancelToken::new();
        tracing::debug!(user = %self.user, endpoint = %self.endpoint, command_id = %id, "WinRS command");
        self.lane.run(
            cancel.clone(),
            Box::new(TextLine {
                line,
                out: out.clone(),
                cancel: cancel.clone(),
                formatter: Formatter::new(),
                errors: Vec::new(),
            }),
        );
        self.commands.insert(
            id.clone(),
            CommandSlot {
                out,
                cancel,
                stdin: Vec::new(),
                stdin_closed: false,
                exit: None,
                reported: false,
            },
        );
        self.order.push(id.clone());
        Ok(id)
    }

    fn send(
        &mut self,
        command_id: Option<&str>,
        stream: StreamName,
        data: Vec<u8>,
        end: bool,
    ) -> Result<(), ShellError> {
        if stream != StreamName::Stdin {
            return Err(ShellError::Malformed(format!(
                "WinRS shells take input on stdin, not {stream}"
            )));
        }
        let slot = self.slot(command_id)?;
        // Stored but not yet fed to the line: the engine has no stdin for commands (SPEC §4.4
        // closes programs' standard input).
        if slot.stdin_closed || slot.stdin.len().saturating_add(data.len()) > MAX_STDIN {
            return Err(ShellError::QuotaLimit(format!(
                "stdin is limited to {MAX_STDIN} bytes"
            )));
        }
        slot.stdin.extend_from_slice(&data);
        slot.stdin_closed = end;
        Ok(())
    }

    fn receive(&mut self, command_id: Option<&str>) -> Result<ReceiveResponse, ShellError> {
        let chunk = self.chunk;
        let slot = self.slot(command_id)?;
        let id = command_id.unwrap_or_default().to_ascii_uppercase();
        let taken = slot.out.take(chunk, Chunk::weight);
        let (mut so, mut se) = (Vec::new(), Vec::new());
        for c in taken.items {
            match c {
                Chunk::Stdout(b) => so.extend(b),
                Chunk::Stderr(b) => se.extend(b),
                Chunk::Exit(code) => slot.exit = Some(code),
            }
        }
        let mut out = ReceiveResponse::default();
        for (name, data) in [(StreamName::Stdout, so), (StreamName::Stderr, se)] {
            if !data.is_empty() {
                out.streams.push(StreamChunk {
                    name,
                    command_id: Some(id.clone()),
                    data,
                    end: false,
                });
            }
        }
        match slot.exit {
            Some(code) if taken.finished || slot.reported => {
                if !slot.reported {
                    for name in [StreamName::Stdout, StreamName::Stderr] {
                        out.streams.push(StreamChunk {
                            name,
                            command_id: Some(id.clone()),
                            data: Vec::new(),
                            end: true,
                        });
                    }
                    slot.reported = true;
                }
                out.command_state = Some(CommandState {
                    command_id: id,
                    state: CommandStateKind::Done,
                    exit_code: Some(code),
                });
            }
            _ if !out.streams.is_empty() => {
                out.command_state = Some(CommandState {
                    command_id: id,
                    state: CommandStateKind::Running,
                    exit_code: None,
                });
            }
            _ => {}
        }
        Ok(out)
    }

    fn signal(&mut self, command_id: Option<&str>, signal: Signal) -> Result<(), ShellError> {
        let key = command_id.map(str::to_ascii_uppercase);
        let slot = self.slot(command_id)?;
        // Every signal stops the line (and kills its programs).
        slot.out.cancel(&slot.cancel);
        // `terminate` after the command finished is the client's clean-up: forget it.
        if signal == Signal::Terminate && (slot.exit.is_some() || slot.out.ended()) {
            if let Some(k) = key {
                if let Some(c) = self.commands.remove(&k) {
                    c.out.close();
                }
                self.order.retain(|i| *i != k);
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        self.closed = true;
        for c in self.commands.values() {
            c.cancel.cancel();
            c.out.close();
        }
        wake(&self.notify);
    }

    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

impl Drop for WinrsShell {
    fn drop(&mut self) {
        self.close();
    }
}

/// One WinRS line: engine events become text on stdout/stderr as they come.
struct TextLine {
    line: String,
    out: Arc<Outbox<Chunk>>,
    cancel: CancelToken,
    formatter: Formatter,
    errors: Vec<ErrorRecord>,
}

impl TextLine {
    fn push(&mut self, stderr: bool, text: &str) {
        if text.is_empty() {
            return;
        }
        let bytes = text.as_bytes().to_vec();
        let c = if stderr {
            Chunk::Stderr(bytes)
        } else {
            Chunk::Stdout(bytes)
        };
        // Waits while the client is not receiving (back-pressure); dropped once stopped.
        self.out.push(c, &self.cancel);
    }

    /// The text that ends the line (what the engine did not already emit), and its exit code.
    fn ending(&mut self, outcome: &RunOutcome) -> Vec<Chunk> {
        let mut v = Vec::new();
        let tail = self.formatter.finish();
        if !tail.is_empty() {
            v.push(Chunk::Stdout(tail.into_bytes()));
        }
        let record = match outcome {
            RunOutcome::Refused(r) => Some(r.to_error_record()),
            RunOutcome::Failed(rec) => Some(rec.clone()),
            _ => None,
        };
        if let Some(rec) = record {
            if !self.errors.iter().any(|e| e.message == rec.message) {
                v.push(Chunk::Stderr(error_text(&rec).into_bytes()));
            }
        }
        if *outcome == RunOutcome::Stopped {
            v.push(Chunk::Stderr(b"The pipeline has been stopped.\n".to_vec()));
        }
        v.push(Chunk::Exit(outcome.exit_code()));
        v
    }
}

impl EventSink for TextLine {
    fn event(&mut self, e: Event) {
        match e {
            Event::Output(v) => {
                let t = self.formatter.push(&v);
                self.push(false, &t);
            }
            Event::Error(rec) => {
                let t = error_text(&rec);
                self.errors.push(rec);
                self.push(true, &t);
            }
            Event::Warning(m) => self.push(false, &format!("WARNING: {m}\n")),
            Event::Verbose(m) => self.push(false, &format!("VERBOSE: {m}\n")),
            Event::Debug(m) => self.push(false, &format!("DEBUG: {m}\n")),
            Event::Information(m) => self.push(false, &format!("{m}\n")),
        }
    }
}

impl Line<Session> for TextLine {
    fn run(&mut self, session: &mut Session, cancel: &CancelToken) -> RunOutcome {
        let line = std::mem::take(&mut self.line);
        session.run_line(&line, self, cancel)
    }

    fn end(mut self: Box<Self>, outcome: RunOutcome) {
        let last = self.ending(&outcome);
        self.out.push_last(last);
    }
}

/// Quote an argument for the language when it needs it (whitespace, quotes or empty).
fn quote_arg(a: &str) -> String {
    if !a.is_empty()
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"')
    {
        return a.to_string();
    }
    format!("'{}'", a.replace('\'', "''"))
}

/// The line a WinRS command runs: `command` and its arguments joined by spaces, or the script
/// a `powershell -EncodedCommand <base64 UTF-16LE>` carries.
pub fn command_line(command: &str, arguments: &[String]) -> Result<String, ShellError> {
    let mut line = command.trim().to_string();
    for a in arguments {
        if !line.is_empty() {
            line.push(' ');
        }
        // pywinrm sends all arguments as one space-joined string; pypsrp one per argument.
        if arguments.len() == 1 {
            line.push_str(a);
        } else {
            line.push_str(&quote_arg(a));
        }
    }
    if line.len() > MAX_LINE {
        return Err(ShellError::Malformed(format!(
            "the command line is longer than {MAX_LINE} bytes"
        )));
    }
    if let Some(script) = decode_powershell(&line)? {
        return Ok(script);
    }
    Ok(line)
}

fn is_powershell(tok: &str) -> bool {
    let base = tok
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(tok)
        .to_ascii_lowercase();
    matches!(
        base.as_str(),
        "powershell" | "powershell.exe" | "pwsh" | "pwsh.exe"
    )
}

/// `-EncodedCommand` and every prefix PowerShell accepts for it (`-e`, `-ec`, `-enc`, ...).
fn is_encoded_flag(tok: &str) -> bool {
    let t = tok.trim_start_matches(['-', '/']).to_ascii_lowercase();
    if tok.len() == t.len() || t.is_empty() {
        return false;
    }
    t == "ec" || "encodedcommand".starts_with(&t)
}

/// Options of powershell.exe that take a value (skipped while looking for -EncodedCommand).
fn takes_value(tok: &str) -> bool {
    let t = tok.trim_start_matches(['-', '/']).to_ascii_lowercase();
    [
        "executionpolicy",
        "ep",
        "inputformat",
        "outputformat",
        "windowstyle",
        "configurationname",
        "version",
        "psconsolefile",
        "workingdirectory",
        "wd",
    ]
    .contains(&t.as_str())
}

fn decode_powershell(line: &str) -> Result<Option<String>, ShellError> {
    let mut toks = line.split_whitespace();
    let Some(first) = toks.next() else {
        return Ok(None);
    };
    if !is_powershell(first) {
        return Ok(None);
    }
    while let Some(t) = toks.next() {
        if is_encoded_flag(t) {
            let b64 = toks
                .next()
                .ok_or_else(|| ShellError::Malformed("-EncodedCommand without a value".into()))?;
            if toks.next().is_some() {
                return Err(ShellError::Malformed(
                    "arguments after -EncodedCommand are not supported".into(),
                ));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    ShellError::Malformed(format!("-EncodedCommand is not valid base64: {e}"))
                })?;
            if bytes.len() % 2 != 0 {
                return Err(ShellError::Malformed(
                    "-EncodedCommand is not UTF-16LE (odd length)".into(),
                ));
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| {
                    u16::from_le_bytes([
                        c.first().copied().unwrap_or(0),
                        c.get(1).copied().unwrap_or(0),
                    ])
                })
                .collect();
            let s = String::from_utf16(&units).map_err(|_| {
                ShellError::Malformed("-EncodedCommand is not valid UTF-16LE".into())
            })?;
            return Ok(Some(s.trim_start_matches('\u{feff}').to_string()));
        }
        if t.starts_with('-') || t.starts_with('/') {
            if takes_value(t) {
                toks.next();
            }
            continue;
        }
        // Not an option: the line is not a powershell.exe invocation keyhole decodes.
        return Ok(None);
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        let b: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn joins_command_and_arguments() {
        assert_eq!(
            command_line("Get-Service", &["-Name nginx".into()]).unwrap(),
            "Get-Service -Name nginx"
        );
        assert_eq!(
            command_line(
                "Get-Service",
                &["-Name".into(), "a b".into(), "it's".into()]
            )
            .unwrap(),
            "Get-Service -Name 'a b' 'it''s'"
        );
        assert_eq!(command_line("  Get-Date ", &[]).unwrap(), "Get-Date");
    }

    #[test]
    fn decodes_encoded_command_forms() {
        let e = enc("Get-Service -Name 'x'");
        for pre in [
            "powershell -encodedcommand",
            "powershell -EncodedCommand",
            "PowerShell.exe -NoProfile -NonInteractive -e",
            "pwsh -ec",
            "powershell -ExecutionPolicy Bypass -enc",
        ] {
            assert_eq!(
                command_line(&format!("{pre} {e}"), &[]).unwrap(),
                "Get-Service -Name 'x'",
                "{pre}"
            );
        }
        // the pywinrm conftest example
        assert_eq!(
            command_line(
                "powershell -encodedcommand VwByAGkAdABlAC0ARQByAHIAbwByACAAIgBFAHIAcgBvAHIAIgA=",
                &[]
            )
            .unwrap(),
            "Write-Error \"Error\""
        );
        assert!(command_line("powershell -encodedcommand ***", &[]).is_err());
        assert!(command_line("powershell -encodedcommand QQ==", &[]).is_err());
        assert_eq!(
            command_line("powershell Get-Date", &[]).unwrap(),
            "powershell Get-Date"
        );
    }
}
