//! `shells::winrs`: the WinRS cmd shell. Each Command is one line of the language (pywinrm
//! `run_cmd` command + arguments, `powershell -EncodedCommand <base64 UTF-16LE>` as `run_ps`
//! sends, or `powershell -Command LINE`), run on the shared runtime (`runner`); output streams
//! back as text on stdout, errors on stderr, in the code page the shell asked for
//! (`WINRS_CODEPAGE`), and the exit code is `keyhole run`'s (0 ran, 1 failed, 2 refused).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use tokio::sync::Notify;

use super::codepage::CodePage;
use super::runner::{wake, Item, Lane, Line, Outbox, Workers};
use super::{ShellSetup, UserBudgets};
use crate::engine::format::{error_text, Formatter};
use crate::engine::{CancelToken, ErrorRecord, Event, EventSink, RunOutcome, Session};
use crate::gates::{Gates, Origin, SessionKind};
use crate::wsman::shell::{
    CommandRequest, CommandState, CommandStateKind, CreateError, CreateRequest, Identity, NewShell,
    ReceiveResponse, Shell, ShellError, ShellFactory, Signal, StreamChunk, StreamName,
};

/// Commands one shell keeps (running or finished and not yet cleaned up by `terminate`).
pub const MAX_COMMANDS_PER_SHELL: usize = 64;
/// Stdin kept per command.
pub const MAX_STDIN: usize = 1024 * 1024;
/// Smallest chunk of output returned by one Receive.
const MIN_CHUNK: usize = 4096;
/// Output is queued in pieces of at most this many bytes, so that a line waiting for the
/// user's output budget holds at most one piece beyond it.
pub const MAX_PIECE: usize = 16 * 1024;

/// Opens WinRS sessions (in `[server] winrs_endpoint`) through the gates and builds shells.
pub struct WinrsFactory {
    gates: Arc<Gates>,
    workers: Arc<Workers>,
    budgets: Arc<UserBudgets>,
}

impl WinrsFactory {
    /// `budgets` is the server's one table of per-user output budgets (shared with the other
    /// factories, so a user's WinRS shells and PSRP pools draw from one budget).
    pub fn new(
        gates: Arc<Gates>,
        workers: Arc<Workers>,
        budgets: Arc<UserBudgets>,
    ) -> WinrsFactory {
        WinrsFactory {
            gates,
            workers,
            budgets,
        }
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
        let o = super::open_session(
            &self.gates,
            &self.workers,
            &self.budgets,
            id,
            &endpoint,
            origin,
            SessionKind::Winrs,
        )?;
        Ok(NewShell {
            shell: Box::new(WinrsShell::new(
                o.session,
                o.setup,
                &o.endpoint,
                req.max_envelope_size,
            )),
            limits: o.limits,
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
    /// What output is encoded in (the Create's `WINRS_CODEPAGE`).
    codepage: CodePage,
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
            codepage: super::codepage::DEFAULT,
            closed: false,
        }
    }

    /// The code page output is encoded in.
    pub fn codepage(&self) -> CodePage {
        self.codepage
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
        self.codepage = CodePage::from_options(&req.options).map_err(ShellError::Unsupported)?;
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
        tracing::info!(user = %self.user, endpoint = %self.endpoint, command = %id, "WinRS command");
        self.lane.run(
            cancel.clone(),
            Box::new(TextLine {
                line,
                out: out.clone(),
                cancel: cancel.clone(),
                formatter: Formatter::new(),
                errors: Vec::new(),
                codepage: self.codepage,
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
    codepage: CodePage,
}

impl TextLine {
    fn push(&mut self, stderr: bool, text: &str) {
        if text.is_empty() {
            return;
        }
        let bytes = self.codepage.encode(text);
        for piece in bytes.chunks(MAX_PIECE) {
            let c = if stderr {
                Chunk::Stderr(piece.to_vec())
            } else {
                Chunk::Stdout(piece.to_vec())
            };
            // Waits while the client is not receiving (back-pressure); dropped once stopped.
            if !self.out.push(c, &self.cancel) {
                return;
            }
        }
    }

    /// The text that ends the line (what the engine did not already emit), and its exit code.
    fn ending(&mut self, outcome: &RunOutcome) -> Vec<Chunk> {
        let mut v = Vec::new();
        let tail = self.formatter.finish();
        if !tail.is_empty() {
            v.push(Chunk::Stdout(self.codepage.encode(&tail)));
        }
        let record = match outcome {
            RunOutcome::Refused(r) => Some(r.to_error_record()),
            RunOutcome::Failed(rec) => Some(rec.clone()),
            _ => None,
        };
        if let Some(rec) = record {
            if !self.errors.iter().any(|e| e.message == rec.message) {
                v.push(Chunk::Stderr(self.codepage.encode(&error_text(&rec))));
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

/// The line a WinRS command runs: `command` and its arguments joined by spaces, or the line a
/// `powershell -EncodedCommand <base64 UTF-16LE>` or `powershell -Command LINE` carries.
/// Lines are as long as the envelope lets them be: the language refuses one over its limit
/// with a message that says so (exit 2), like any other refusal.
pub fn command_line(command: &str, arguments: &[String]) -> Result<String, ShellError> {
    if let Some(script) = decode_powershell(command, arguments)? {
        return Ok(script);
    }
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
    Ok(line)
}

/// Split a Windows command line into arguments as the C runtime (and so powershell.exe) does:
/// whitespace separates arguments outside double quotes; `"` toggles quoting; `""` inside quotes
/// is a literal quote; 2n backslashes before a quote are n backslashes (and the quote toggles),
/// 2n+1 are n backslashes and a literal quote; other backslashes are literal.
pub fn split_argv(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let mut n = 1usize;
                while chars.peek() == Some(&'\\') {
                    chars.next();
                    n += 1;
                }
                in_arg = true;
                if chars.peek() == Some(&'"') {
                    cur.extend(std::iter::repeat('\\').take(n / 2));
                    if n % 2 == 1 {
                        chars.next();
                        cur.push('"');
                    }
                } else {
                    cur.extend(std::iter::repeat('\\').take(n));
                }
            }
            '"' => {
                in_arg = true;
                if quoted && chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = !quoted;
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_arg {
                    out.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            c => {
                in_arg = true;
                cur.push(c);
            }
        }
    }
    if in_arg {
        out.push(cur);
    }
    out
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

/// The option's name without its `-`, `--` or `/`, lower case; None when `tok` is no option.
fn option_name(tok: &str) -> Option<String> {
    let t = tok.trim_start_matches(['-', '/']).to_ascii_lowercase();
    (tok.len() != t.len() && !t.is_empty()).then_some(t)
}

/// `-EncodedCommand` and every prefix PowerShell accepts for it (`-e`, `-ec`, `-enc`, ...).
fn is_encoded_flag(name: &str) -> bool {
    name == "ec" || "encodedcommand".starts_with(name)
}

/// `-Command` and every prefix PowerShell accepts for it (`-c`, `-com`, ...).
fn is_command_flag(name: &str) -> bool {
    name.starts_with('c') && "command".starts_with(name)
}

/// Options of powershell.exe that take a value (skipped while looking for the command).
fn takes_value(name: &str) -> bool {
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
    .contains(&name)
}

fn decode_utf16le_base64(b64: &str) -> Result<String, ShellError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| ShellError::Malformed(format!("-EncodedCommand is not valid base64: {e}")))?;
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
    let s = String::from_utf16(&units)
        .map_err(|_| ShellError::Malformed("-EncodedCommand is not valid UTF-16LE".into()))?;
    Ok(s.trim_start_matches('\u{feff}').to_string())
}

/// The line a `powershell`/`pwsh` invocation carries: `-EncodedCommand B64` (decoded) or
/// `-Command ARG...` (the arguments after it joined by spaces, as powershell.exe joins them),
/// after any other options. None when the command is not such an invocation.
fn decode_powershell(command: &str, arguments: &[String]) -> Result<Option<String>, ShellError> {
    let mut argv = split_argv(command);
    match arguments {
        // pywinrm joins its arguments into one string: split it as Windows would.
        [one] => argv.extend(split_argv(one)),
        many => argv.extend(many.iter().cloned()),
    }
    let mut toks = argv.into_iter();
    match toks.next() {
        Some(first) if is_powershell(&first) => {}
        _ => return Ok(None),
    }
    while let Some(t) = toks.next() {
        let Some(name) = option_name(&t) else {
            // Not an option: not an invocation keyhole decodes.
            return Ok(None);
        };
        if is_encoded_flag(&name) {
            let b64 = toks
                .next()
                .ok_or_else(|| ShellError::Malformed("-EncodedCommand without a value".into()))?;
            if toks.next().is_some() {
                return Err(ShellError::Unsupported(
                    "powershell -EncodedCommand with arguments after it is not supported: keyhole runs the encoded line alone".into(),
                ));
            }
            return decode_utf16le_base64(&b64).map(Some);
        }
        if is_command_flag(&name) {
            let rest: Vec<String> = toks.collect();
            let line = rest.join(" ");
            if line == "-" {
                return Err(ShellError::Unsupported(
                    "powershell -Command - (the command read from standard input) is not supported: write the line after -Command".into(),
                ));
            }
            if line.trim().is_empty() {
                return Err(ShellError::Unsupported(
                    "powershell -Command without a command: write the line after -Command".into(),
                ));
            }
            return Ok(Some(line));
        }
        if takes_value(&name) {
            toks.next();
        }
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

    #[test]
    fn splits_a_command_line_as_windows_does() {
        let v = |s: &str| split_argv(s);
        assert_eq!(v(r#"a "b c" d"#), ["a", "b c", "d"]);
        assert_eq!(v(r#""a ""b"" c""#), [r#"a "b" c"#]);
        assert_eq!(v(r#"a\\\"b "c\\" d"#), [r#"a\"b"#, r#"c\"#, "d"]);
        assert_eq!(v(r#"a\"b "c\" d"#), [r#"a"b"#, r#"c" d"#]);
        assert_eq!(v(r#"C:\x\y 'q r'"#), [r#"C:\x\y"#, "'q", "r'"]);
        assert_eq!(v(r#""" x"#), ["", "x"]);
        assert!(v("   ").is_empty());
    }

    #[test]
    fn decodes_command_forms() {
        let line = "Get-Process -Name 'a b'";
        for (cmd, args) in [
            (format!("powershell -Command \"{line}\""), vec![]),
            (format!("powershell.exe -NoProfile -c \"{line}\""), vec![]),
            (format!("pwsh -command {line}"), vec![]),
            (
                "PowerShell".to_string(),
                vec![format!("-Command \"{line}\"")],
            ),
            // pypsrp's run_executable sends one argument per element.
            (
                "powershell".to_string(),
                vec!["-NonInteractive".into(), "-Command".into(), line.into()],
            ),
            (
                "powershell".to_string(),
                vec![
                    "-ExecutionPolicy".into(),
                    "Bypass".into(),
                    "-Com".into(),
                    line.into(),
                ],
            ),
        ] {
            assert_eq!(command_line(&cmd, &args).unwrap(), line, "{cmd} {args:?}");
        }
        // The arguments after -Command are joined by spaces, as powershell.exe joins them.
        assert_eq!(
            command_line("powershell -Command Get-Uptime; Get-Date", &[]).unwrap(),
            "Get-Uptime; Get-Date"
        );
        for bad in [
            "powershell -Command -",
            "powershell -Command",
            "powershell -c \"  \"",
        ] {
            match command_line(bad, &[]) {
                Err(ShellError::Unsupported(m)) => assert!(m.contains("-Command"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Not powershell: the line as it came.
        assert_eq!(
            command_line("Get-Process", &["-Command x".into()]).unwrap(),
            "Get-Process -Command x"
        );
    }

    #[test]
    fn long_lines_reach_the_language_which_refuses_them_by_its_own_limit() {
        let long = format!("Get-Process -Name {}", "a".repeat(400_000));
        assert_eq!(command_line(&long, &[]).unwrap(), long);
    }
}
