//! Runspace pool and pipeline state machines, and [`PsrpShell`]: the PSRP `Shell` behind
//! WS-Man. Pipelines run on their own thread; events stream out as PSRP messages at once.
//!
//! One engine session serves the pool: pipelines run one at a time (a second pipeline waits
//! for the first to end, then runs), which is what pypsrp and PowerShell clients do anyway.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use tokio::sync::Notify;

use crate::engine::format::Formatter;
use crate::engine::{
    CancelToken, ErrorCategory, ErrorRecord, Event, EventSink, RunOutcome, Session,
    StructuredPipeline, Value, VisibleCommand,
};
use crate::wsman::shell::{
    CommandRequest, CommandState, CommandStateKind, CreateRequest, ReceiveResponse, Shell,
    ShellError, StreamChunk,
};

use super::clixml::read::parse_default;
use super::fragment::{fragment_message, max_blob_for_envelope, Reassembler, ENVELOPE_OVERHEAD};
use super::message::{guid_to_net_bytes, Destination, Message, MessageType};
use super::objects::{
    self, CreatePipeline, GetCommandMetadata, InfoKind, InitRunspacePool, InvocationState, Merge,
    PoolStateCode, SessionCapability,
};
use super::{Malformed, MessageError, ProtocolError, Unsupported};

/// Unfinished pipelines one pool may hold.
pub const MAX_ACTIVE_PIPELINES: usize = 32;
/// Finished pipelines kept so late Receives still get their state.
pub const MAX_FINISHED_PIPELINES: usize = 64;
/// Input objects one pipeline may buffer before END_OF_PIPELINE_INPUT.
pub const MAX_INPUT_OBJECTS: usize = 100_000;
/// Bytes of input one pipeline may buffer.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;
/// Output bytes queued for one pipeline before the running pipeline waits for the client to
/// Receive (back-pressure instead of unbounded memory).
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// Per-`rsp:Stream` element overhead counted against the envelope in Receive.
const STREAM_ELEMENT_OVERHEAD: usize = 160;

// ---------------------------------------------------------------------------------------------
// Runspace pool state machine

/// What a pool-level message asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolOutput {
    /// Queue this message on the pool's Receive. `zero_rpid`: Windows sends SESSION_CAPABILITY with RPID zero.
    Send {
        message_type: MessageType,
        body: String,
        zero_rpid: bool,
    },
    /// Create a pipeline (CREATE_PIPELINE).
    CreatePipeline(CreatePipeline),
    /// Answer GET_COMMAND_METADATA as a pipeline.
    CommandMetadata(GetCommandMetadata),
    /// A message the server accepts and ignores (host responses).
    Ignore,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunspacePool {
    BeforeOpen,
    /// SESSION_CAPABILITY exchanged, waiting for INIT_RUNSPACEPOOL.
    NegotiationSucceeded {
        client: SessionCapability,
    },
    Opened {
        min: i64,
        max: i64,
    },
    Closed,
}

fn body_value(msg: &Message) -> Result<Value, ProtocolError> {
    parse_default(msg.text()?)
}

fn invalid(msg: &Message, state: &str) -> ProtocolError {
    ProtocolError::InvalidState {
        message: msg.message_type.name().to_string(),
        state: state.to_string(),
    }
}

impl RunspacePool {
    pub fn state_name(&self) -> &'static str {
        match self {
            RunspacePool::BeforeOpen => "BeforeOpen",
            RunspacePool::NegotiationSucceeded { .. } => "NegotiationSucceeded",
            RunspacePool::Opened { .. } => "Opened",
            RunspacePool::Closed => "Closed",
        }
    }

    /// Handle one client message addressed to the pool.
    pub fn handle(self, msg: &Message) -> Result<(RunspacePool, Vec<PoolOutput>), ProtocolError> {
        use MessageType as T;
        if msg.destination != Destination::Server {
            return Err(MessageError::ToClient(msg.message_type.name()).into());
        }
        let send = |t: MessageType, body: String| PoolOutput::Send {
            message_type: t,
            body,
            zero_rpid: false,
        };
        match (self, msg.message_type) {
            (RunspacePool::BeforeOpen, T::SessionCapability) => {
                let client = SessionCapability::from_value(&body_value(msg)?)?;
                let major = client
                    .protocol_version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse::<u32>().ok());
                if major != Some(2) {
                    return Err(
                        Unsupported::ProtocolVersion(client.protocol_version.clone()).into(),
                    );
                }
                let out = PoolOutput::Send {
                    message_type: T::SessionCapability,
                    body: objects::session_capability(),
                    zero_rpid: true,
                };
                Ok((RunspacePool::NegotiationSucceeded { client }, vec![out]))
            }
            (RunspacePool::NegotiationSucceeded { .. }, T::InitRunspacePool) => {
                let init = InitRunspacePool::from_value(&body_value(msg)?)?;
                let out = vec![
                    send(
                        T::ApplicationPrivateData,
                        objects::application_private_data(),
                    ),
                    send(
                        T::RunspacePoolState,
                        objects::runspace_pool_state(PoolStateCode::Opened, None),
                    ),
                ];
                Ok((
                    RunspacePool::Opened {
                        min: init.min_runspaces,
                        max: init.max_runspaces,
                    },
                    out,
                ))
            }
            (s @ RunspacePool::Opened { .. }, T::CreatePipeline) => {
                let cp = CreatePipeline::from_value(&body_value(msg)?)?;
                Ok((s, vec![PoolOutput::CreatePipeline(cp)]))
            }
            (s @ RunspacePool::Opened { .. }, T::GetCommandMetadata) => {
                let q = GetCommandMetadata::from_value(&body_value(msg)?)?;
                Ok((s, vec![PoolOutput::CommandMetadata(q)]))
            }
            (RunspacePool::Opened { min, max }, t @ (T::SetMaxRunspaces | T::SetMinRunspaces)) => {
                let v = body_value(msg)?;
                let ci = objects::call_id(&v)
                    .ok_or_else(|| Malformed::MissingCallId(t.name().to_string()))?;
                let (field, is_max) = if t == T::SetMaxRunspaces {
                    ("MaxRunspaces", true)
                } else {
                    ("MinRunspaces", false)
                };
                let n = match v.property(field) {
                    Some(Value::Int(n)) => *n,
                    _ => {
                        return Err(Malformed::MissingField {
                            message: t.name(),
                            field,
                        }
                        .into())
                    }
                };
                let (ok, min2, max2) = if is_max {
                    (
                        n >= 1 && n >= min,
                        min,
                        if n >= 1 && n >= min { n } else { max },
                    )
                } else {
                    (
                        n >= 1 && n <= max,
                        if n >= 1 && n <= max { n } else { min },
                        max,
                    )
                };
                let out = send(
                    T::RunspaceAvailability,
                    objects::runspace_availability(&Value::Bool(ok), ci),
                );
                Ok((
                    RunspacePool::Opened {
                        min: min2,
                        max: max2,
                    },
                    vec![out],
                ))
            }
            (s @ RunspacePool::Opened { max, .. }, T::GetAvailableRunspaces) => {
                let ci = objects::call_id(&body_value(msg)?)
                    .ok_or_else(|| Malformed::MissingCallId("GET_AVAILABLE_RUNSPACES".into()))?;
                let out = send(
                    T::RunspaceAvailability,
                    objects::runspace_availability(&Value::Int(max), ci),
                );
                Ok((s, vec![out]))
            }
            (s @ RunspacePool::Opened { .. }, T::ResetRunspaceState) => {
                let ci = objects::call_id(&body_value(msg)?)
                    .ok_or_else(|| Malformed::MissingCallId("RESET_RUNSPACE_STATE".into()))?;
                Ok((
                    s,
                    vec![send(
                        T::RunspaceAvailability,
                        objects::runspace_availability(&Value::Bool(true), ci),
                    )],
                ))
            }
            (s, T::RunspacePoolHostResponse | T::PipelineHostResponse) => {
                Ok((s, vec![PoolOutput::Ignore]))
            }
            (_, t @ (T::PublicKey | T::ConnectRunspacePool)) => {
                Err(Unsupported::Message(t.name()).into())
            }
            (s, _) => Err(invalid(msg, s.state_name())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pipeline state machine

/// What a pipeline runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// pypsrp execute_ps: one restricted line, output formatted to strings.
    ExecutePs(String),
    /// Statements in order: script lines (IsScript) and structured pipelines.
    Segments(Vec<Segment>, Merge),
    /// GET_COMMAND_METADATA.
    Metadata(GetCommandMetadata),
    /// Refused before running (shape keyhole does not accept).
    Refuse(ErrorRecord),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Script(String),
    Structured(Vec<StructuredPipeline>),
}

fn refusal(message: &str, id: &str) -> Plan {
    Plan::Refuse(
        ErrorRecord::new(message, id, ErrorCategory::PermissionDenied)
            .exception("System.Management.Automation.PSNotSupportedException")
            .terminating(),
    )
}

impl Plan {
    /// Decide how to run a CREATE_PIPELINE.
    pub fn from_create(cp: &CreatePipeline) -> Plan {
        if let Some(text) = cp.execute_ps_text() {
            return Plan::ExecutePs(text.to_string());
        }
        let mut segments: Vec<Segment> = Vec::new();
        for stmt in &cp.statements {
            let scripts = stmt.iter().filter(|c| c.is_script).count();
            if scripts > 0 {
                let [only] = stmt.as_slice() else {
                    return refusal(
                        "keyhole runs script text only as a statement of its own; send the whole pipeline as one script or as commands",
                        "ScriptInPipelineNotSupported",
                    );
                };
                if !only.args.is_empty() {
                    return refusal("keyhole does not pass arguments to script text; write them into the script line", "ScriptArgumentsNotSupported");
                }
                segments.push(Segment::Script(only.cmd.clone()));
            } else {
                let p = StructuredPipeline {
                    commands: stmt.iter().map(objects::to_structured).collect(),
                };
                match segments.last_mut() {
                    Some(Segment::Structured(v)) => v.push(p),
                    _ => segments.push(Segment::Structured(vec![p])),
                }
            }
        }
        Plan::Segments(segments, cp.merge())
    }
}

/// Pipeline states.
#[derive(Debug, Clone, PartialEq)]
pub enum Pipeline {
    /// Command received, CREATE_PIPELINE not complete yet (more fragments to come on Send).
    AwaitingCreate,
    /// Waiting for PIPELINE_INPUT ... END_OF_PIPELINE_INPUT.
    AwaitingInput {
        plan: Plan,
        input: Vec<Value>,
        bytes: usize,
    },
    Running,
    /// Signalled; waiting for the engine to stop.
    Stopping,
    Done(InvocationState),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PipelineEvent {
    Created { plan: Plan, no_input: bool },
    Input(Message),
    Stop,
    Finished(InvocationState),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PipelineAction {
    Start(Plan, Vec<Value>),
    Cancel,
    /// Send PIPELINE_STATE with this state (no error record).
    SendState(InvocationState),
}

impl Pipeline {
    pub fn state_name(&self) -> &'static str {
        match self {
            Pipeline::AwaitingCreate => "AwaitingCreate",
            Pipeline::AwaitingInput { .. } => "AwaitingInput",
            Pipeline::Running => "Running",
            Pipeline::Stopping => "Stopping",
            Pipeline::Done(_) => "Done",
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Pipeline::Done(_))
    }

    pub fn handle(
        self,
        ev: PipelineEvent,
    ) -> Result<(Pipeline, Vec<PipelineAction>), ProtocolError> {
        use PipelineEvent as E;
        let bad = |what: &str, s: &Pipeline| ProtocolError::InvalidState {
            message: what.to_string(),
            state: s.state_name().to_string(),
        };
        match (self, ev) {
            (
                Pipeline::AwaitingCreate,
                E::Created {
                    plan,
                    no_input: true,
                },
            ) => Ok((
                Pipeline::Running,
                vec![PipelineAction::Start(plan, Vec::new())],
            )),
            (
                Pipeline::AwaitingCreate,
                E::Created {
                    plan,
                    no_input: false,
                },
            ) => Ok((
                Pipeline::AwaitingInput {
                    plan,
                    input: Vec::new(),
                    bytes: 0,
                },
                Vec::new(),
            )),
            (
                Pipeline::AwaitingInput {
                    plan,
                    mut input,
                    bytes,
                },
                E::Input(m),
            ) => match m.message_type {
                MessageType::PipelineInput => {
                    let bytes = bytes.saturating_add(m.data.len());
                    if input.len() >= MAX_INPUT_OBJECTS || bytes > MAX_INPUT_BYTES {
                        return Err(Malformed::InputTooLarge {
                            max_objects: MAX_INPUT_OBJECTS,
                            max_bytes: MAX_INPUT_BYTES,
                        }
                        .into());
                    }
                    input.push(body_value(&m)?);
                    Ok((Pipeline::AwaitingInput { plan, input, bytes }, Vec::new()))
                }
                MessageType::EndOfPipelineInput => {
                    Ok((Pipeline::Running, vec![PipelineAction::Start(plan, input)]))
                }
                _ => Err(invalid(&m, "AwaitingInput")),
            },
            (s, E::Input(m)) => Err(invalid(&m, s.state_name())),
            (Pipeline::AwaitingCreate | Pipeline::AwaitingInput { .. }, E::Stop) => Ok((
                Pipeline::Done(InvocationState::Stopped),
                vec![PipelineAction::SendState(InvocationState::Stopped)],
            )),
            (Pipeline::Running, E::Stop) => Ok((Pipeline::Stopping, vec![PipelineAction::Cancel])),
            (s @ (Pipeline::Stopping | Pipeline::Done(_)), E::Stop) => Ok((s, Vec::new())),
            (Pipeline::Running, E::Finished(st)) => Ok((Pipeline::Done(st), Vec::new())),
            (Pipeline::Stopping, E::Finished(_)) => {
                Ok((Pipeline::Done(InvocationState::Stopped), Vec::new()))
            }
            (s, E::Created { .. }) => Err(bad("CREATE_PIPELINE", &s)),
            (s, E::Finished(_)) => Err(bad("end of run", &s)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine seen from PSRP

/// What PSRP needs from an engine session (implemented by [`Session`]; tests use fakes).
pub trait PsrpEngine: Send + 'static {
    fn run_line(
        &mut self,
        line: &str,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome;
    fn run_structured(
        &mut self,
        statements: &[StructuredPipeline],
        input: Vec<Value>,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome;
    fn visible(&self) -> Vec<VisibleCommand>;
}

impl PsrpEngine for Session {
    fn run_line(
        &mut self,
        line: &str,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome {
        Session::run_line(self, line, sink, cancel)
    }
    fn run_structured(
        &mut self,
        statements: &[StructuredPipeline],
        input: Vec<Value>,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome {
        Session::run_structured(self, statements, input, sink, cancel)
    }
    fn visible(&self) -> Vec<VisibleCommand> {
        Session::visible(self).to_vec()
    }
}

// ---------------------------------------------------------------------------------------------
// The shell

struct Pipe {
    seq: u64,
    pid: [u8; 16],
    state: Pipeline,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    cancel: CancelToken,
    /// The PIPELINE_STATE message has been queued.
    final_queued: bool,
}

struct Inner {
    pool: RunspacePool,
    reassembler: Reassembler,
    next_object_id: u64,
    next_seq: u64,
    max_blob: usize,
    max_envelope: usize,
    rpid: [u8; 16],
    pool_queue: VecDeque<Vec<u8>>,
    pipes: HashMap<String, Pipe>,
    closed: bool,
}

impl Inner {
    fn fragments(&mut self, m: &Message) -> Vec<Vec<u8>> {
        let oid = self.next_object_id;
        self.next_object_id = self.next_object_id.saturating_add(1);
        fragment_message(oid, &m.encode(), self.max_blob)
            .iter()
            .map(|f| f.encode())
            .collect()
    }

    fn queue_pool(&mut self, t: MessageType, body: &str, zero_rpid: bool) {
        let rpid = if zero_rpid { [0u8; 16] } else { self.rpid };
        let m = Message::to_client(t, rpid, [0u8; 16], body.as_bytes().to_vec());
        let frags = self.fragments(&m);
        self.pool_queue.extend(frags);
    }

    fn queue_pipe(&mut self, cid: &str, t: MessageType, body: &str) {
        if self.closed {
            return;
        }
        let Some(pid) = self.pipes.get(cid).map(|p| p.pid) else {
            return;
        };
        let m = Message::to_client(t, self.rpid, pid, body.as_bytes().to_vec());
        let frags = self.fragments(&m);
        if let Some(p) = self.pipes.get_mut(cid) {
            for f in frags {
                p.queued_bytes = p.queued_bytes.saturating_add(f.len());
                p.queue.push_back(f);
            }
            if t == MessageType::PipelineState {
                p.final_queued = true;
            }
        }
    }

    fn queued_bytes(&self, cid: &str) -> usize {
        self.pipes.get(cid).map(|p| p.queued_bytes).unwrap_or(0)
    }
}

struct Shared<E> {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    engine: Arc<Mutex<E>>,
}

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Shared {
            inner: self.inner.clone(),
            notify: self.notify.clone(),
            engine: self.engine.clone(),
        }
    }
}

/// Wake a waiting Receive; also leaves a permit so a Receive about to wait does not miss it.
fn wake(n: &Notify) {
    n.notify_waiters();
    n.notify_one();
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Identity shown in information records.
#[derive(Debug, Clone, Default)]
pub struct PsrpIdentity {
    pub user: String,
    pub computer: String,
}

/// A PSRP runspace pool served by one engine session.
pub struct PsrpShell<E: PsrpEngine = Session> {
    shared: Shared<E>,
    visible: Vec<VisibleCommand>,
    identity: PsrpIdentity,
    /// Dropped with the shell (the opener's session slot, transcript, audit "session end").
    _guard: Option<Box<dyn Send>>,
}

fn malformed(e: ProtocolError) -> ShellError {
    ShellError::Malformed(e.to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl<E: PsrpEngine> PsrpShell<E> {
    /// A pool over `engine` (an [`engine::Session`](crate::engine::Session)); `user` is shown in
    /// information records.
    pub fn new(engine: E, user: &str) -> Self {
        let visible = engine.visible();
        PsrpShell {
            shared: Shared {
                inner: Arc::new(Mutex::new(Inner {
                    pool: RunspacePool::BeforeOpen,
                    reassembler: Reassembler::new(),
                    next_object_id: 1,
                    next_seq: 0,
                    max_blob: max_blob_for_envelope(153_600),
                    max_envelope: 153_600,
                    rpid: [0u8; 16],
                    pool_queue: VecDeque::new(),
                    pipes: HashMap::new(),
                    closed: false,
                })),
                notify: Arc::new(Notify::new()),
                engine: Arc::new(Mutex::new(engine)),
            },
            visible,
            _guard: None,
            identity: PsrpIdentity {
                user: user.to_string(),
                computer: hostname(),
            },
        }
    }

    /// Keep `guard` alive as long as the shell (e.g. `SessionGrant::guard`).
    pub fn with_guard(mut self, guard: Option<Box<dyn Send>>) -> Self {
        self._guard = guard;
        self
    }

    /// The pool's state name (for logs and tests).
    pub fn pool_state(&self) -> &'static str {
        lock(&self.shared.inner).pool.state_name()
    }

    /// Feed bytes (fragments) arriving for `cid` (or the pool) and act on every completed message.
    fn feed(&mut self, cid: Option<&str>, data: &[u8]) -> Result<(), ShellError> {
        let messages = {
            let mut inner = lock(&self.shared.inner);
            inner.reassembler.push_bytes(data).map_err(|e| {
                tracing::warn!(command_id = cid.unwrap_or("-"), error = %e, "PSRP fragments refused");
                malformed(e)
            })?
        };
        for bytes in messages {
            let msg = Message::decode(&bytes).map_err(malformed)?;
            let t = msg.message_type;
            tracing::debug!(
                message = t.name(),
                command_id = cid.unwrap_or("-"),
                "PSRP message from client"
            );
            if let Err(e) = self.dispatch(cid, msg) {
                tracing::warn!(message = t.name(), command_id = cid.unwrap_or("-"), error = %e, "PSRP message refused");
                return Err(e);
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, cid: Option<&str>, msg: Message) -> Result<(), ShellError> {
        let t = msg.message_type;
        if matches!(
            t,
            MessageType::PipelineInput | MessageType::EndOfPipelineInput
        ) {
            let cid = self.pipe_for(cid, &msg)?;
            return self.pipe_event(&cid, PipelineEvent::Input(msg));
        }
        let outputs = {
            let mut inner = lock(&self.shared.inner);
            if t == MessageType::InitRunspacePool {
                inner.rpid = msg.rpid;
            }
            let (state, outputs) = inner.pool.clone().handle(&msg).map_err(malformed)?;
            inner.pool = state;
            outputs
        };
        for o in outputs {
            match o {
                PoolOutput::Send {
                    message_type,
                    body,
                    zero_rpid,
                } => {
                    lock(&self.shared.inner).queue_pool(message_type, &body, zero_rpid);
                    wake(&self.shared.notify);
                }
                PoolOutput::CreatePipeline(cp) => {
                    let cid = cid
                        .ok_or_else(|| {
                            ShellError::Malformed(
                                "CREATE_PIPELINE arrived without a CommandId".into(),
                            )
                        })?
                        .to_string();
                    self.set_pid(&cid, msg.pid);
                    let no_input = cp.no_input;
                    self.pipe_event(
                        &cid,
                        PipelineEvent::Created {
                            plan: Plan::from_create(&cp),
                            no_input,
                        },
                    )?;
                }
                PoolOutput::CommandMetadata(q) => {
                    let cid = cid
                        .ok_or_else(|| {
                            ShellError::Malformed(
                                "GET_COMMAND_METADATA arrived without a CommandId".into(),
                            )
                        })?
                        .to_string();
                    self.set_pid(&cid, msg.pid);
                    self.pipe_event(
                        &cid,
                        PipelineEvent::Created {
                            plan: Plan::Metadata(q),
                            no_input: true,
                        },
                    )?;
                }
                PoolOutput::Ignore => {}
            }
        }
        Ok(())
    }

    fn set_pid(&self, cid: &str, pid: [u8; 16]) {
        if let Some(p) = lock(&self.shared.inner).pipes.get_mut(cid) {
            p.pid = pid;
        }
    }

    /// The pipeline a message belongs to: the Send's CommandId, else the one whose PID matches.
    fn pipe_for(&self, cid: Option<&str>, msg: &Message) -> Result<String, ShellError> {
        if let Some(c) = cid {
            return Ok(c.to_string());
        }
        let inner = lock(&self.shared.inner);
        inner
            .pipes
            .iter()
            .find(|(_, p)| p.pid == msg.pid)
            .map(|(k, _)| k.clone())
            .ok_or(ShellError::InvalidSelectors)
    }

    fn pipe_event(&mut self, cid: &str, ev: PipelineEvent) -> Result<(), ShellError> {
        let actions = {
            let mut inner = lock(&self.shared.inner);
            let p = inner
                .pipes
                .get_mut(cid)
                .ok_or(ShellError::InvalidSelectors)?;
            let (state, actions) = p.state.clone().handle(ev).map_err(malformed)?;
            p.state = state;
            actions
        };
        for a in actions {
            match a {
                PipelineAction::Start(plan, input) => self.start(cid, plan, input),
                PipelineAction::Cancel => {
                    if let Some(p) = lock(&self.shared.inner).pipes.get(cid) {
                        p.cancel.cancel();
                    }
                }
                PipelineAction::SendState(st) => {
                    lock(&self.shared.inner).queue_pipe(
                        cid,
                        MessageType::PipelineState,
                        &objects::pipeline_state(st, None),
                    );
                    wake(&self.shared.notify);
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, cid: &str, plan: Plan, input: Vec<Value>) {
        match plan {
            Plan::Metadata(q) => {
                let selected = q.select(&self.visible);
                {
                    let mut inner = lock(&self.shared.inner);
                    inner.queue_pipe(
                        cid,
                        MessageType::PipelineOutput,
                        &objects::command_metadata_count(selected.len()),
                    );
                    for c in selected {
                        inner.queue_pipe(
                            cid,
                            MessageType::PipelineOutput,
                            &objects::command_metadata(c),
                        );
                    }
                }
                finish(
                    &self.shared,
                    cid,
                    RunOutcome::Completed { had_errors: false },
                );
            }
            Plan::Refuse(e) => finish(&self.shared, cid, RunOutcome::Failed(e)),
            plan => {
                let shared = self.shared.clone();
                let cancel = lock(&shared.inner)
                    .pipes
                    .get(cid)
                    .map(|p| p.cancel.clone())
                    .unwrap_or_default();
                let identity = self.identity.clone();
                let cid_owned = cid.to_string();
                let spawned = std::thread::Builder::new().name("psrp-pipeline".into()).spawn(move || {
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut engine = lock(&shared.engine);
                        // Signalled or closed while waiting for an earlier pipeline: never start.
                        if cancel.is_cancelled() {
                            return RunOutcome::Stopped;
                        }
                        run_plan(&mut *engine, &shared, &cid_owned, &identity, plan, input, &cancel)
                    }));
                    let outcome = run.unwrap_or_else(|_| {
                        tracing::error!(command_id = %cid_owned, "PSRP pipeline thread panicked");
                        RunOutcome::Failed(ErrorRecord::new(
                            "keyhole hit an internal error while running this pipeline; see the server log",
                            "InternalError",
                            ErrorCategory::NotSpecified,
                        ))
                    });
                    finish(&shared, &cid_owned, outcome);
                });
                if let Err(e) = spawned {
                    let er = ErrorRecord::new(
                        format!("keyhole could not start the pipeline: {e}"),
                        "PipelineStartFailed",
                        ErrorCategory::ResourceUnavailable,
                    );
                    finish(&self.shared, cid, RunOutcome::Failed(er));
                }
            }
        }
        wake(&self.shared.notify);
    }

    fn evict_finished(inner: &mut Inner) {
        loop {
            let finished: Vec<(u64, String)> = inner
                .pipes
                .iter()
                .filter(|(_, p)| p.state.is_done() && p.queue.is_empty())
                .map(|(k, p)| (p.seq, k.clone()))
                .collect();
            if finished.len() <= MAX_FINISHED_PIPELINES {
                return;
            }
            match finished.iter().min_by_key(|(s, _)| *s) {
                Some((_, k)) => {
                    inner.pipes.remove(k);
                }
                None => return,
            }
        }
    }
}

fn end_state(outcome: &RunOutcome) -> (InvocationState, Option<ErrorRecord>) {
    match outcome {
        RunOutcome::Completed { .. } | RunOutcome::Exit => (InvocationState::Completed, None),
        RunOutcome::Refused(r) => (InvocationState::Failed, Some(r.to_error_record())),
        RunOutcome::Failed(e) => (InvocationState::Failed, Some(e.clone())),
        RunOutcome::Stopped => (InvocationState::Stopped, None),
    }
}

/// Queue PIPELINE_STATE for the end of a run and wake the waiter.
fn finish<E>(shared: &Shared<E>, cid: &str, outcome: RunOutcome) {
    let (state, err) = end_state(&outcome);
    {
        let mut inner = lock(&shared.inner);
        let Some(p) = inner.pipes.get_mut(cid) else {
            return;
        };
        let Ok((next, _)) = p.state.clone().handle(PipelineEvent::Finished(state)) else {
            return;
        };
        p.state = next.clone();
        let final_state = if let Pipeline::Done(s) = next {
            s
        } else {
            state
        };
        let err = if final_state == InvocationState::Failed {
            err
        } else {
            None
        };
        inner.queue_pipe(
            cid,
            MessageType::PipelineState,
            &objects::pipeline_state(final_state, err.as_ref()),
        );
    }
    wake(&shared.notify);
}

/// Streams engine events out as PSRP messages.
struct PipeSink<'a, E> {
    shared: &'a Shared<E>,
    cid: &'a str,
    identity: &'a PsrpIdentity,
    /// execute_ps: format output objects to lines (Out-String -Stream).
    formatter: Option<Formatter>,
    cancel: &'a CancelToken,
    /// Streams merged into output.
    merge: Merge,
}

fn lines(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<String> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect();
    if text.ends_with('\n') {
        v.pop();
    }
    v
}

impl<E> PipeSink<'_, E> {
    fn emit(&mut self, msgs: Vec<(MessageType, String)>) {
        {
            let mut inner = lock(&self.shared.inner);
            for (t, body) in msgs {
                inner.queue_pipe(self.cid, t, &body);
            }
        }
        wake(&self.shared.notify);
        // Back-pressure: wait for the client to Receive before producing more.
        loop {
            let (bytes, closed) = {
                let inner = lock(&self.shared.inner);
                (inner.queued_bytes(self.cid), inner.closed)
            };
            if bytes <= MAX_QUEUED_BYTES || closed || self.cancel.is_cancelled() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn flush_formatter(&mut self) {
        if let Some(f) = self.formatter.as_mut() {
            let text = f.finish();
            let msgs = lines(&text)
                .into_iter()
                .map(|l| {
                    (
                        MessageType::PipelineOutput,
                        objects::output(&Value::String(l)),
                    )
                })
                .collect();
            self.emit(msgs);
        }
    }
}

impl<E> EventSink for PipeSink<'_, E> {
    fn event(&mut self, e: Event) {
        use MessageType as T;
        let m = self.merge;
        let info = |kind: InfoKind, s: &str, merged: bool| {
            let t = match (merged, kind) {
                (true, _) => T::PipelineOutput,
                (false, InfoKind::Warning) => T::WarningRecord,
                (false, InfoKind::Verbose) => T::VerboseRecord,
                (false, InfoKind::Debug) => T::DebugRecord,
            };
            vec![(t, objects::informational(kind, s))]
        };
        let msgs = match e {
            Event::Output(v) => match self.formatter.as_mut() {
                Some(f) => lines(&f.push(&v))
                    .into_iter()
                    .map(|l| (T::PipelineOutput, objects::output(&Value::String(l))))
                    .collect(),
                None => vec![(T::PipelineOutput, objects::output(&v))],
            },
            Event::Error(er) if m.error => {
                vec![(T::PipelineOutput, objects::merged_error_record(&er))]
            }
            Event::Error(er) => vec![(T::ErrorRecord, objects::error_record(&er))],
            Event::Warning(s) => info(InfoKind::Warning, &s, m.warning),
            Event::Verbose(s) => info(InfoKind::Verbose, &s, m.verbose),
            Event::Debug(s) => info(InfoKind::Debug, &s, m.debug),
            Event::Information(s) => {
                let t = if m.information {
                    T::PipelineOutput
                } else {
                    T::InformationRecord
                };
                vec![(
                    t,
                    objects::information(&s, &self.identity.user, &self.identity.computer),
                )]
            }
        };
        self.emit(msgs);
    }
}

fn run_plan<E: PsrpEngine>(
    engine: &mut E,
    shared: &Shared<E>,
    cid: &str,
    identity: &PsrpIdentity,
    plan: Plan,
    input: Vec<Value>,
    cancel: &CancelToken,
) -> RunOutcome {
    let mut sink = PipeSink {
        shared,
        cid,
        identity,
        formatter: None,
        cancel,
        merge: Merge::default(),
    };
    match plan {
        Plan::ExecutePs(text) => {
            sink.formatter = Some(Formatter::new());
            let out = engine.run_line(&text, &mut sink, cancel);
            sink.flush_formatter();
            out
        }
        Plan::Segments(segments, merge) => {
            sink.merge = merge;
            let mut input = Some(input);
            let mut had_errors = false;
            for seg in segments {
                if cancel.is_cancelled() {
                    return RunOutcome::Stopped;
                }
                let out = match seg {
                    Segment::Script(text) => engine.run_line(&text, &mut sink, cancel),
                    Segment::Structured(stmts) => engine.run_structured(
                        &stmts,
                        input.take().unwrap_or_default(),
                        &mut sink,
                        cancel,
                    ),
                };
                match out {
                    RunOutcome::Completed { had_errors: h } => had_errors |= h,
                    other => return other,
                }
            }
            RunOutcome::Completed { had_errors }
        }
        Plan::Metadata(_) | Plan::Refuse(_) => RunOutcome::Completed { had_errors: false },
    }
}

fn is_stop_signal(code: &str) -> bool {
    let c = code.to_ascii_lowercase();
    c.ends_with("crtl_c") || c.ends_with("ctrl_c") || c.ends_with("terminate")
}

impl<E: PsrpEngine> Shell for PsrpShell<E> {
    fn on_create(&mut self, req: &CreateRequest) -> Result<(), ShellError> {
        {
            let mut inner = lock(&self.shared.inner);
            if req.max_envelope_size > 0 {
                inner.max_envelope = req.max_envelope_size;
                inner.max_blob = max_blob_for_envelope(req.max_envelope_size);
            }
        }
        let data = req
            .creation_xml
            .as_deref()
            .ok_or_else(|| ShellError::Malformed("PSRP Create without creationXml".into()))?;
        self.feed(None, data)
    }

    fn command(&mut self, req: CommandRequest) -> Result<String, ShellError> {
        let cid = req
            .command_id
            .clone()
            .map(|c| c.trim().to_ascii_uppercase())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_ascii_uppercase());
        let mut data = Vec::new();
        for a in &req.arguments {
            let compact: String = a.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|e| {
                    ShellError::Malformed(format!("PSRP command arguments are not base64: {e}"))
                })?;
            data.extend_from_slice(&bytes);
        }
        {
            let mut inner = lock(&self.shared.inner);
            if !matches!(inner.pool, RunspacePool::Opened { .. }) {
                return Err(ShellError::Malformed(format!(
                    "a pipeline is invalid in runspace pool state {}",
                    inner.pool.state_name()
                )));
            }
            if inner.pipes.contains_key(&cid) {
                return Err(ShellError::Malformed(format!(
                    "CommandId {cid} is already in use in this runspace pool"
                )));
            }
            let active = inner.pipes.values().filter(|p| !p.state.is_done()).count();
            if active >= MAX_ACTIVE_PIPELINES {
                return Err(ShellError::QuotaLimit(format!(
                    "more than {MAX_ACTIVE_PIPELINES} pipelines at once in one runspace pool"
                )));
            }
            Self::evict_finished(&mut inner);
            let seq = inner.next_seq;
            inner.next_seq = inner.next_seq.saturating_add(1);
            let pid = guid_to_net_bytes(&cid).unwrap_or([0u8; 16]);
            inner.pipes.insert(
                cid.clone(),
                Pipe {
                    seq,
                    pid,
                    state: Pipeline::AwaitingCreate,
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    cancel: CancelToken::new(),
                    final_queued: false,
                },
            );
        }
        if let Err(e) = self.feed(Some(&cid), &data) {
            lock(&self.shared.inner).pipes.remove(&cid);
            return Err(e);
        }
        Ok(cid)
    }

    fn send(
        &mut self,
        command_id: Option<&str>,
        stream: &str,
        data: Vec<u8>,
        _end: bool,
    ) -> Result<(), ShellError> {
        if stream != "stdin" && stream != "pr" {
            return Err(ShellError::Malformed(format!(
                "PSRP input stream {stream:?} is neither stdin nor pr"
            )));
        }
        let cid = command_id.map(|c| c.trim().to_ascii_uppercase());
        if let Some(c) = &cid {
            if !lock(&self.shared.inner).pipes.contains_key(c) {
                return Err(ShellError::InvalidSelectors);
            }
        }
        self.feed(cid.as_deref(), &data)
    }

    fn receive(&mut self, command_id: Option<&str>) -> Result<ReceiveResponse, ShellError> {
        let mut inner = lock(&self.shared.inner);
        let budget = inner.max_envelope.saturating_sub(ENVELOPE_OVERHEAD);
        let cost = |n: usize| n.div_ceil(3) * 4 + STREAM_ELEMENT_OVERHEAD;
        let mut streams = Vec::new();
        let mut used = 0usize;
        match command_id {
            None => {
                while let Some(f) = inner.pool_queue.front() {
                    if !streams.is_empty() && used + cost(f.len()) > budget {
                        break;
                    }
                    used += cost(f.len());
                    if let Some(f) = inner.pool_queue.pop_front() {
                        streams.push(StreamChunk {
                            name: "stdout".into(),
                            command_id: None,
                            data: f,
                            end: false,
                        });
                    }
                }
                Ok(ReceiveResponse {
                    streams,
                    command_state: None,
                })
            }
            Some(c) => {
                let cid = c.trim().to_ascii_uppercase();
                let p = inner
                    .pipes
                    .get_mut(&cid)
                    .ok_or(ShellError::InvalidSelectors)?;
                while let Some(f) = p.queue.front() {
                    if !streams.is_empty() && used + cost(f.len()) > budget {
                        break;
                    }
                    used += cost(f.len());
                    if let Some(f) = p.queue.pop_front() {
                        p.queued_bytes = p.queued_bytes.saturating_sub(f.len());
                        streams.push(StreamChunk {
                            name: "stdout".into(),
                            command_id: Some(cid.clone()),
                            data: f,
                            end: false,
                        });
                    }
                }
                let command_state = (p.final_queued && p.queue.is_empty()).then(|| CommandState {
                    command_id: cid.clone(),
                    state: CommandStateKind::Done,
                    exit_code: Some(0),
                });
                Ok(ReceiveResponse {
                    streams,
                    command_state,
                })
            }
        }
    }

    fn signal(&mut self, command_id: Option<&str>, code: &str) -> Result<(), ShellError> {
        if !is_stop_signal(code) {
            return Err(ShellError::Malformed(format!(
                "unknown signal code {code:?}"
            )));
        }
        let Some(c) = command_id else { return Ok(()) };
        let cid = c.trim().to_ascii_uppercase();
        if !lock(&self.shared.inner).pipes.contains_key(&cid) {
            return Err(ShellError::InvalidSelectors);
        }
        self.pipe_event(&cid, PipelineEvent::Stop)
    }

    fn close(&mut self) {
        let mut inner = lock(&self.shared.inner);
        inner.closed = true;
        inner.pool = RunspacePool::Closed;
        for p in inner.pipes.values_mut() {
            p.cancel.cancel();
            p.queue.clear();
            p.queued_bytes = 0;
        }
        inner.pool_queue.clear();
        drop(inner);
        wake(&self.shared.notify);
    }

    fn notify(&self) -> Arc<Notify> {
        self.shared.notify.clone()
    }
}

impl<E: PsrpEngine> Drop for PsrpShell<E> {
    fn drop(&mut self) {
        let inner = lock(&self.shared.inner);
        for p in inner.pipes.values() {
            p.cancel.cancel();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn stop_signal_codes_from_the_wsman_layer() {
        for c in [
            "ps_crtl_c",
            "ctrl_c",
            "terminate",
            "http://schemas.microsoft.com/powershell/signal/crtl_c",
        ] {
            assert!(is_stop_signal(c), "{c}");
        }
        assert!(!is_stop_signal("ps_nope"));
    }

    #[test]
    fn pool_state_machine_orders_negotiation() {
        let cap = Message::new(
            Destination::Server,
            MessageType::SessionCapability,
            [1; 16],
            [0; 16],
            objects::session_capability().into_bytes(),
        );
        let init = Message::new(
            Destination::Server,
            MessageType::InitRunspacePool,
            [1; 16],
            [0; 16],
            br#"<Obj RefId="0"><MS><I32 N="MinRunspaces">1</I32><I32 N="MaxRunspaces">2</I32></MS></Obj>"#.to_vec(),
        );
        let e = RunspacePool::BeforeOpen.handle(&init).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PSRP: INIT_RUNSPACEPOOL is invalid in state BeforeOpen"
                .replace("INIT_RUNSPACEPOOL", "InitRunspacePool")
        );
        let (s, out) = RunspacePool::BeforeOpen.handle(&cap).unwrap();
        assert!(matches!(
            out.as_slice(),
            [PoolOutput::Send {
                message_type: MessageType::SessionCapability,
                zero_rpid: true,
                ..
            }]
        ));
        let (s, out) = s.handle(&init).unwrap();
        assert_eq!(s, RunspacePool::Opened { min: 1, max: 2 });
        assert_eq!(out.len(), 2);
        assert!(s.handle(&cap).is_err());
    }

    #[test]
    fn pipeline_state_machine() {
        let plan = Plan::Segments(Vec::new(), Merge::default());
        let (p, a) = Pipeline::AwaitingCreate
            .handle(PipelineEvent::Created {
                plan: plan.clone(),
                no_input: false,
            })
            .unwrap();
        assert!(a.is_empty());
        let (p, a) = p.handle(PipelineEvent::Stop).unwrap();
        assert_eq!(p, Pipeline::Done(InvocationState::Stopped));
        assert_eq!(a, vec![PipelineAction::SendState(InvocationState::Stopped)]);
        let (p, _) = Pipeline::AwaitingCreate
            .handle(PipelineEvent::Created {
                plan,
                no_input: true,
            })
            .unwrap();
        assert_eq!(p, Pipeline::Running);
        let (p, a) = p.handle(PipelineEvent::Stop).unwrap();
        assert_eq!(
            (p.clone(), a),
            (Pipeline::Stopping, vec![PipelineAction::Cancel])
        );
        let (p, _) = p
            .handle(PipelineEvent::Finished(InvocationState::Completed))
            .unwrap();
        assert_eq!(p, Pipeline::Done(InvocationState::Stopped));
        let input = Message::new(
            Destination::Server,
            MessageType::PipelineInput,
            [0; 16],
            [0; 16],
            b"<S>x</S>".to_vec(),
        );
        let e = p.handle(PipelineEvent::Input(input)).unwrap_err();
        assert!(
            e.to_string()
                .contains("PipelineInput is invalid in state Done"),
            "{e}"
        );
    }
}
