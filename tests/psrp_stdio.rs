//! A line protocol around `PsrpShell` so an out-of-process PSRP client library (psrpcore, see
//! `tests/interop/check_psrpcore_client.py`) can drive it without the WS-Man layer.
//! Runs only with `KEYHOLE_PSRP_STDIO=1 cargo test --test psrp_stdio -- --ignored --nocapture`.
//! Requests (one per line): `CREATE b64`, `COMMAND cid b64`, `SEND cid|- stream b64`,
//! `RECV cid|-`, `SIGNAL cid code`, `QUIT`; answers are lines starting with `@@`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use base64::Engine as _;
use keyhole::engine::{
    CancelToken, CommandDecl, ErrorCategory, ErrorRecord, Event, EventSink, ParamDecl, ParamType,
    PsObject, Refusal, RunOutcome, StructuredPipeline, Value, VisibleCommand,
};
use keyhole::shells::psrp::{PsrpEngine, PsrpShell};
use keyhole::shells::runner::Workers;
use keyhole::shells::ShellSetup;
use keyhole::wsman::shell::{CommandRequest, CreateRequest, Shell, ShellError, Signal, StreamName};

/// Echoes arguments and input; `Write-All` writes one record of every kind; `Refuse-Me` is refused;
/// `Fail-Hard` ends with a terminating error.
struct EchoEngine;

impl PsrpEngine for EchoEngine {
    fn run_line(&mut self, line: &str, sink: &mut dyn EventSink, _c: &CancelToken) -> RunOutcome {
        if line.contains('$') {
            return RunOutcome::Refused(Refusal {
                message: format!("variables are not allowed: {line}"),
                id: "VariableNotAllowed".into(),
                category: ErrorCategory::ParserError,
                column: Some(1),
            });
        }
        sink.event(Event::Output(Value::String(line.to_string())));
        RunOutcome::Completed { had_errors: false }
    }
    fn run_structured(
        &mut self,
        st: &[StructuredPipeline],
        input: Vec<Value>,
        sink: &mut dyn EventSink,
        c: &CancelToken,
    ) -> RunOutcome {
        for p in st {
            let Some(first) = p.commands.first() else {
                continue;
            };
            match first.name.as_str() {
                "Refuse-Me" => {
                    return RunOutcome::Refused(Refusal {
                        message: "The term 'Refuse-Me' is not recognized as the name of a cmdlet."
                            .into(),
                        id: "CommandNotFoundException".into(),
                        category: ErrorCategory::ObjectNotFound,
                        column: None,
                    })
                }
                "Write-All" => {
                    sink.event(Event::Output(
                        PsObject::custom()
                            .with("Name", "foo")
                            .with("Value", 1)
                            .into_value(),
                    ));
                    sink.event(Event::Error(
                        ErrorRecord::new("boom", "Boom,Write-All", ErrorCategory::InvalidOperation)
                            .target("t"),
                    ));
                    sink.event(Event::Warning("warn".into()));
                    sink.event(Event::Verbose("verb".into()));
                    sink.event(Event::Debug("dbg".into()));
                    sink.event(Event::Information("info".into()));
                }
                "Fail-Hard" => {
                    // As the engine does: the terminating error as an event, then Failed with it.
                    let rec = ErrorRecord::new(
                        "hard failure",
                        "HardFailure,Fail-Hard",
                        ErrorCategory::InvalidOperation,
                    )
                    .terminating();
                    sink.event(Event::Error(rec.clone()));
                    return RunOutcome::Failed(rec);
                }
                "Wait-Stop" => {
                    let t = Instant::now();
                    while !c.is_cancelled() && t.elapsed() < Duration::from_secs(10) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    return RunOutcome::Stopped;
                }
                _ => {
                    for a in &first.args {
                        sink.event(Event::Output(a.value.clone().unwrap_or(Value::Bool(true))));
                    }
                }
            }
        }
        for v in input {
            sink.event(Event::Output(v));
        }
        RunOutcome::Completed { had_errors: false }
    }
    fn visible(&self) -> Vec<VisibleCommand> {
        vec![
            VisibleCommand {
                decl: CommandDecl::cmdlet("Get-Service", "keyhole", "")
                    .param(ParamDecl::new("Name", ParamType::StringArray).position(0)),
                resolved: None,
            },
            VisibleCommand {
                decl: CommandDecl::cmdlet("Write-All", "keyhole", ""),
                resolved: None,
            },
        ]
    }
}

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
#[ignore = "driven by tests/interop/check_psrpcore_client.py"]
fn stdio_bridge() {
    if std::env::var("KEYHOLE_PSRP_STDIO").is_err() {
        return;
    }
    let mut shell = PsrpShell::new(EchoEngine, ShellSetup::new("alice", Workers::new(4)));
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let parts: Vec<&str> = line.split(' ').collect();
        let opt = |s: &str| if s == "-" { None } else { Some(s.to_string()) };
        let reply = match parts.as_slice() {
            ["CREATE", d] => shell
                .on_create(&CreateRequest {
                    creation_xml: Some(b64d(d)),
                    max_envelope_size: 153_600,
                    ..Default::default()
                })
                .map(|_| String::new()),
            ["COMMAND", cid, d] => shell.command(CommandRequest {
                command_id: Some(cid.to_string()),
                command: String::new(),
                arguments: vec![d.to_string()],
            }),
            ["SEND", cid, stream, d] => match StreamName::parse(stream) {
                Some(stream) => shell
                    .send(opt(cid).as_deref(), stream, b64d(d), false)
                    .map(|_| String::new()),
                None => Err(ShellError::Malformed(format!("unknown stream {stream}"))),
            },
            ["SIGNAL", cid, code] => match Signal::from_uri(code) {
                Some(sig) => shell.signal(Some(cid), sig).map(|_| String::new()),
                None => Err(ShellError::Malformed(format!("unknown signal {code}"))),
            },
            ["RECV", cid] => {
                let cid = opt(cid);
                let start = Instant::now();
                loop {
                    match shell.receive(cid.as_deref()) {
                        Ok(r)
                            if r.streams.is_empty()
                                && r.command_state.is_none()
                                && cid.is_some()
                                && start.elapsed() < Duration::from_secs(5) =>
                        {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(r) => {
                            let data: Vec<u8> =
                                r.streams.iter().flat_map(|c| c.data.clone()).collect();
                            break Ok(format!(
                                "{} {}",
                                base64::engine::general_purpose::STANDARD.encode(data),
                                u8::from(r.command_state.is_some())
                            ));
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
            ["QUIT"] => break,
            _ => Ok("?".into()),
        };
        match reply {
            Ok(s) => writeln!(out, "@@OK {s}").unwrap(),
            Err(e) => writeln!(out, "@@ERR {e}").unwrap(),
        }
        out.flush().unwrap();
    }
}
