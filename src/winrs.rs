//! `winrs`: the WinRS cmd shell. Each Command is one line of the language (pywinrm `run_cmd`
//! command + arguments, or `powershell -EncodedCommand <base64 UTF-16LE>` as `run_ps` sends),
//! run through the engine session on its own thread; output streams back as text on stdout,
//! errors on stderr, and the exit code is `keyhole run`'s (0 ran, 1 failed, 2 refused).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use tokio::sync::Notify;

use crate::engine::format::Formatter;
use crate::engine::{CancelToken, ErrorRecord, Event, EventSink, RunOutcome, Session};
use crate::server::SessionGrant;
use crate::wsman::service::ShellFactory;
use crate::wsman::shell::{
    CommandRequest, CommandState, CommandStateKind, CreateRequest, ReceiveResponse, Shell,
    ShellError, ShellOwner, StreamChunk,
};

/// Commands one shell keeps (running or finished and not yet cleaned up by `terminate`).
pub const MAX_COMMANDS_PER_SHELL: usize = 64;
/// Output a command may buffer while the client is not receiving; beyond it the command is
/// stopped and told why.
pub const MAX_BUFFERED_OUTPUT: usize = 16 * 1024 * 1024;
/// Stdin kept per command.
pub const MAX_STDIN: usize = 1024 * 1024;
/// Longest command line accepted, in bytes (after decoding -EncodedCommand).
pub const MAX_LINE: usize = 256 * 1024;
/// Smallest chunk of output returned by one Receive.
const MIN_CHUNK: usize = 4096;

/// Builds WinRS shells.
pub struct WinrsFactory;

impl ShellFactory for WinrsFactory {
    fn create(
        &self,
        _uri: &str,
        grant: SessionGrant,
        owner: &ShellOwner,
        req: &CreateRequest,
    ) -> Result<Box<dyn Shell>, ShellError> {
        Ok(Box::new(WinrsShell::new(
            grant,
            owner.clone(),
            req.max_envelope_size,
        )))
    }
}

#[derive(Default)]
struct Buffers {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Exit code once the line has finished.
    exit: Option<i32>,
    /// Done (with End streams) already delivered.
    reported: bool,
}

struct CommandSlot {
    buf: Arc<Mutex<Buffers>>,
    cancel: CancelToken,
    stdin: Vec<u8>,
    stdin_closed: bool,
}

fn lock(b: &Mutex<Buffers>) -> MutexGuard<'_, Buffers> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// A WinRS cmd shell over one engine session. Lines of one shell run one at a time.
pub struct WinrsShell {
    session: Arc<Mutex<Session>>,
    owner: ShellOwner,
    endpoint: String,
    commands: HashMap<String, CommandSlot>,
    order: Vec<String>,
    notify: Arc<Notify>,
    chunk: usize,
    closed: bool,
    _guard: Option<Box<dyn Send>>,
}

impl WinrsShell {
    pub fn new(grant: SessionGrant, owner: ShellOwner, max_envelope_size: usize) -> WinrsShell {
        // Base64 grows data by 4/3; keep well inside the client's MaxEnvelopeSize.
        let chunk = (max_envelope_size.saturating_sub(8192) / 4 * 3 / 2).max(MIN_CHUNK);
        WinrsShell {
            session: Arc::new(Mutex::new(grant.session)),
            owner,
            endpoint: grant.endpoint,
            commands: HashMap::new(),
            order: Vec::new(),
            notify: Arc::new(Notify::new()),
            chunk,
            closed: false,
            _guard: grant.guard,
        }
    }

    fn forget_finished(&mut self) {
        while self.commands.len() >= MAX_COMMANDS_PER_SHELL {
            let Some(pos) = self.order.iter().position(|id| {
                self.commands
                    .get(id)
                    .is_some_and(|c| lock(&c.buf).exit.is_some())
            }) else {
                return;
            };
            let id = self.order.remove(pos);
            self.commands.remove(&id);
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
            tracing::info!(user = %self.owner.user, "WinRS: client environment and working directory are ignored");
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
        let buf = Arc::new(Mutex::new(Buffers::default()));
        let cancel = CancelToken::new();
        let session = self.session.clone();
        let notify = self.notify.clone();
        let (b2, c2) = (buf.clone(), cancel.clone());
        tracing::info!(user = %self.owner.user, endpoint = %self.endpoint, command = %id, "WinRS command");
        std::thread::Builder::new()
            .name("keyhole-winrs".into())
            .spawn(move || run_line(&session, &line, b2, c2, notify))
            .map_err(|e| {
                ShellError::Internal(format!("cannot start a thread for the command: {e}"))
            })?;
        self.commands.insert(
            id.clone(),
            CommandSlot {
                buf,
                cancel,
                stdin: Vec::new(),
                stdin_closed: false,
            },
        );
        self.order.push(id.clone());
        Ok(id)
    }

    fn send(
        &mut self,
        command_id: Option<&str>,
        stream: &str,
        data: Vec<u8>,
        end: bool,
    ) -> Result<(), ShellError> {
        if !stream.eq_ignore_ascii_case("stdin") {
            return Err(ShellError::Malformed(format!(
                "WinRS shells take input on stdin, not {stream:?}"
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
        let mut b = lock(&slot.buf);
        let mut out = ReceiveResponse::default();
        let mut budget = chunk;
        let take = |v: &mut Vec<u8>, budget: &mut usize| -> Vec<u8> {
            let n = v.len().min(*budget);
            *budget -= n;
            v.drain(..n).collect()
        };
        let so = take(&mut b.stdout, &mut budget);
        let se = take(&mut b.stderr, &mut budget);
        for (name, data) in [("stdout", so), ("stderr", se)] {
            if !data.is_empty() {
                out.streams.push(StreamChunk {
                    name: name.into(),
                    command_id: Some(id.clone()),
                    data,
                    end: false,
                });
            }
        }
        let drained = b.stdout.is_empty() && b.stderr.is_empty();
        match b.exit {
            Some(code) if drained => {
                if !b.reported {
                    for name in ["stdout", "stderr"] {
                        out.streams.push(StreamChunk {
                            name: name.into(),
                            command_id: Some(id.clone()),
                            data: Vec::new(),
                            end: true,
                        });
                    }
                    b.reported = true;
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

    fn signal(&mut self, command_id: Option<&str>, code: &str) -> Result<(), ShellError> {
        let key = command_id.map(str::to_ascii_uppercase);
        let slot = self.slot(command_id)?;
        match code {
            "ctrl_c" | "ctrl_break" | "terminate" | "ps_crtl_c" | "ps_ctrl_c" => {
                slot.cancel.cancel()
            }
            other => return Err(ShellError::Malformed(format!("unknown signal {other:?}"))),
        }
        // `terminate` after the command finished is the client's clean-up: forget it.
        if code == "terminate" && lock(&slot.buf).exit.is_some() {
            if let Some(k) = key {
                self.commands.remove(&k);
                self.order.retain(|i| *i != k);
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        self.closed = true;
        for c in self.commands.values() {
            c.cancel.cancel();
        }
        self.notify.notify_waiters();
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

/// Appends engine events to a command's buffers as text and wakes a waiting Receive.
struct TextSink {
    buf: Arc<Mutex<Buffers>>,
    notify: Arc<Notify>,
    cancel: CancelToken,
    formatter: Formatter,
    errors: Vec<ErrorRecord>,
    overflow: bool,
}

impl TextSink {
    fn push(&mut self, stderr: bool, text: &str) {
        if text.is_empty() {
            return;
        }
        {
            let mut b = lock(&self.buf);
            if b.stdout.len() + b.stderr.len() + text.len() > MAX_BUFFERED_OUTPUT {
                if !self.overflow {
                    self.overflow = true;
                    self.cancel.cancel();
                    b.stderr.extend_from_slice(
                        format!("keyhole: the command was stopped: more than {MAX_BUFFERED_OUTPUT} bytes of output were waiting for the client\n")
                            .as_bytes(),
                    );
                }
                return;
            }
            if stderr {
                b.stderr.extend_from_slice(text.as_bytes());
            } else {
                b.stdout.extend_from_slice(text.as_bytes());
            }
        }
        self.notify.notify_waiters();
    }
}

impl EventSink for TextSink {
    fn event(&mut self, e: Event) {
        match e {
            Event::Output(v) => {
                let t = self.formatter.push(&v);
                self.push(false, &t);
            }
            Event::Error(rec) => {
                let t = crate::engine::format::error_text(&rec);
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

fn run_line(
    session: &Mutex<Session>,
    line: &str,
    buf: Arc<Mutex<Buffers>>,
    cancel: CancelToken,
    notify: Arc<Notify>,
) {
    let mut sink = TextSink {
        buf: buf.clone(),
        notify: notify.clone(),
        cancel: cancel.clone(),
        formatter: Formatter::new(),
        errors: Vec::new(),
        overflow: false,
    };
    let outcome = {
        let mut s = session.lock().unwrap_or_else(|e| e.into_inner());
        if cancel.is_cancelled() {
            RunOutcome::Stopped
        } else {
            // An engine bug must not leave the client polling forever: report it as a failure.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.run_line(line, &mut sink, &cancel)
            }));
            match run {
                Ok(o) => o,
                Err(_) => {
                    tracing::error!("WinRS: the engine panicked while running a line; reported to the client as an internal error");
                    RunOutcome::Failed(ErrorRecord::new(
                        "keyhole hit an internal error while running this line; the administrator can find details in the server log",
                        "InternalError",
                        crate::engine::ErrorCategory::NotSpecified,
                    ))
                }
            }
        }
    };
    let tail = sink.formatter.finish();
    sink.push(false, &tail);
    match &outcome {
        RunOutcome::Refused(r) => {
            let rec = r.to_error_record();
            if !sink.errors.iter().any(|e| e.message == rec.message) {
                sink.push(true, &crate::engine::format::error_text(&rec));
            }
        }
        RunOutcome::Failed(rec) => {
            if !sink.errors.iter().any(|e| e.message == rec.message) {
                sink.push(true, &crate::engine::format::error_text(rec));
            }
        }
        RunOutcome::Stopped => sink.push(true, "The pipeline has been stopped.\n"),
        RunOutcome::Completed { .. } | RunOutcome::Exit => {}
    }
    lock(&buf).exit = Some(outcome.exit_code());
    notify.notify_waiters();
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
