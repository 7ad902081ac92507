//! Helpers shared by the PSRP integration tests: a scripted fake engine and a minimal client.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyhole::engine::{
    CancelToken, Event, EventSink, RunOutcome, StructuredPipeline, Value, VisibleCommand,
};
use keyhole::psrp::fragment::{fragment_message, Fragment, Reassembler};
use keyhole::psrp::message::{Destination, Message, MessageType};
use keyhole::shells::psrp::{PsrpEngine, PsrpShell};
use keyhole::shells::runner::Workers;
use keyhole::shells::ShellSetup;
use keyhole::wsman::shell::{ReceiveResponse, Shell, StreamName};

/// A runspace pool over `engine` for `user`, on workers of its own.
pub fn pool<E: PsrpEngine>(engine: E, user: &str) -> PsrpShell<E> {
    PsrpShell::new(engine, ShellSetup::new(user, Workers::new(4)))
}

/// One scripted run: events to emit, then the outcome. `wait_cancel` blocks until cancelled
/// and then returns Stopped.
#[derive(Debug, Clone)]
pub struct Step {
    pub events: Vec<Event>,
    pub outcome: RunOutcome,
    pub wait_cancel: bool,
}

impl Step {
    pub fn ok(events: Vec<Event>) -> Self {
        Step {
            events,
            outcome: RunOutcome::Completed { had_errors: false },
            wait_cancel: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Line(String),
    Structured(Vec<StructuredPipeline>, Vec<Value>),
}

#[derive(Clone, Default)]
pub struct FakeEngine {
    pub steps: Arc<Mutex<Vec<Step>>>,
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub visible: Vec<VisibleCommand>,
}

impl FakeEngine {
    pub fn with_steps(steps: Vec<Step>) -> Self {
        FakeEngine {
            steps: Arc::new(Mutex::new(steps)),
            ..Default::default()
        }
    }
    fn run(&mut self, sink: &mut dyn EventSink, cancel: &CancelToken) -> RunOutcome {
        let step = {
            let mut s = self.steps.lock().unwrap();
            if s.is_empty() {
                Step::ok(vec![])
            } else {
                s.remove(0)
            }
        };
        for e in step.events {
            sink.event(e);
        }
        if step.wait_cancel {
            let start = Instant::now();
            while !cancel.is_cancelled() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
            }
            return RunOutcome::Stopped;
        }
        step.outcome
    }
}

impl PsrpEngine for FakeEngine {
    fn run_line(
        &mut self,
        line: &str,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Line(line.to_string()));
        self.run(sink, cancel)
    }
    fn run_structured(
        &mut self,
        statements: &[StructuredPipeline],
        input: Vec<Value>,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Structured(statements.to_vec(), input));
        self.run(sink, cancel)
    }
    fn visible(&self) -> Vec<VisibleCommand> {
        self.visible.clone()
    }
}

pub const RPID: [u8; 16] = [
    0xD4, 0xC3, 0xB2, 0xA1, 0, 0, 0, 0x40, 0x80, 0, 0, 0, 0, 0, 0, 1,
];

/// A minimal PSRP client: numbers its objects and fragments its messages.
pub struct Client {
    pub next_oid: u64,
    pub max_blob: usize,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            next_oid: 1,
            max_blob: 32_000,
        }
    }
}

impl Client {
    pub fn encode(&mut self, t: MessageType, pid: [u8; 16], body: &str) -> Vec<u8> {
        let m = Message::new(Destination::Server, t, RPID, pid, body.as_bytes().to_vec());
        let oid = self.next_oid;
        self.next_oid += 1;
        fragment_message(oid, &m.encode(), self.max_blob)
            .iter()
            .flat_map(Fragment::encode)
            .collect()
    }
}

pub const CAPABILITY: &str = r#"<Obj RefId="0"><MS><Version N="protocolversion">2.3</Version><Version N="PSVersion">2.0</Version><Version N="SerializationVersion">1.1.0.1</Version></MS></Obj>"#;
pub const INIT: &str = r#"<Obj RefId="0"><MS><I32 N="MinRunspaces">1</I32><I32 N="MaxRunspaces">1</I32><Obj N="PSThreadOptions" RefId="1"><TN RefId="0"><T>System.Management.Automation.Runspaces.PSThreadOptions</T><T>System.Enum</T><T>System.ValueType</T><T>System.Object</T></TN><ToString>Default</ToString><I32>0</I32></Obj><Obj N="HostInfo" RefId="3"><MS><B N="_isHostNull">true</B><B N="_isHostUINull">true</B><B N="_isHostRawUINull">true</B><B N="_useRunspaceHost">true</B></MS></Obj><Nil N="ApplicationArguments" /></MS></Obj>"#;

/// One command of a CREATE_PIPELINE as CLIXML: (name, is_script, args as (N or None, V clixml)).
pub fn command_xml(cmd: &str, is_script: bool, args: &[(Option<&str>, &str)]) -> String {
    let mut a = String::new();
    for (n, v) in args {
        let n = match n {
            Some(n) => format!("<S N=\"N\">{n}</S>"),
            None => "<Nil N=\"N\" />".to_string(),
        };
        a.push_str(&format!("<Obj RefId=\"100\"><MS>{n}{v}</MS></Obj>"));
    }
    format!(
        "<Obj RefId=\"50\"><MS><S N=\"Cmd\">{cmd}</S><B N=\"IsScript\">{is_script}</B><Nil N=\"UseLocalScope\" /><Obj N=\"Args\" RefId=\"51\"><LST>{a}</LST></Obj></MS></Obj>"
    )
}

pub fn create_pipeline_xml(no_input: bool, commands: &[String]) -> String {
    format!(
        "<Obj RefId=\"0\"><MS><B N=\"NoInput\">{no_input}</B><B N=\"AddToHistory\">false</B><Obj N=\"PowerShell\" RefId=\"4\"><MS><B N=\"IsNested\">false</B><Nil N=\"ExtraCmds\" /><Obj N=\"Cmds\" RefId=\"5\"><LST>{}</LST></Obj><Nil N=\"History\" /></MS></Obj><B N=\"IsNested\">false</B></MS></Obj>",
        commands.concat()
    )
}

/// Decode Receive chunks into messages (one reassembler per conversation).
pub fn decode(r: &mut Reassembler, resp: &ReceiveResponse) -> Vec<Message> {
    let mut out = Vec::new();
    for c in &resp.streams {
        assert_eq!(c.name, StreamName::Stdout);
        for m in r.push_bytes(&c.data).unwrap() {
            out.push(Message::decode(&m).unwrap());
        }
    }
    out
}

/// Receive for `cid` until PIPELINE_STATE arrives (or 10 s); returns the messages and whether
/// CommandState Done was reported.
pub fn receive_until_state<S: Shell>(
    shell: &mut S,
    r: &mut Reassembler,
    cid: &str,
) -> (Vec<Message>, bool) {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut done = false;
    while start.elapsed() < Duration::from_secs(10) {
        let resp = shell.receive(Some(cid)).unwrap();
        for c in &resp.streams {
            assert_eq!(c.command_id.as_deref(), Some(cid));
        }
        let msgs = decode(r, &resp);
        let has_state = msgs
            .iter()
            .any(|m| m.message_type == MessageType::PipelineState);
        all.extend(msgs);
        if let Some(s) = resp.command_state {
            done = s.state == keyhole::wsman::shell::CommandStateKind::Done;
        }
        if has_state {
            // the state message may have been the last fragment; pick up CommandState
            if !done {
                let resp = shell.receive(Some(cid)).unwrap();
                done = resp.command_state.is_some();
            }
            return (all, done);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "no PIPELINE_STATE within 10 s; got {:?}",
        all.iter().map(|m| m.message_type).collect::<Vec<_>>()
    );
}

pub fn types(msgs: &[Message]) -> Vec<MessageType> {
    msgs.iter().map(|m| m.message_type).collect()
}

pub fn body(m: &Message) -> String {
    String::from_utf8(m.data.clone()).unwrap()
}

pub fn sv(s: &str) -> Value {
    Value::String(s.to_string())
}
