//! The runspace pool and pipeline state machines (consuming enums, psrpcore-style "X is invalid
//! in state Y" errors), the one place that recognises the wrappers known clients put around a
//! line ([`Wrapper`]), and [`PoolCore`]: one pool's protocol state, sans-IO. The caller feeds it
//! the bytes a client sent and carries out the [`Effect`]s it returns (queue fragments, start or
//! cancel a run); [`EventEncoder`] and [`Framer`] turn what a run produces into fragments.
//! Nothing here waits, sleeps, spawns or knows WS-Man: `shells::psrp` does that.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::engine::format::Formatter;
use crate::engine::{
    ErrorCategory, ErrorRecord, Event, RunOutcome, StructuredPipeline, Value, VisibleCommand,
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
/// Per-`rsp:Stream` element overhead counted against the envelope in Receive.
pub const STREAM_ELEMENT_OVERHEAD: usize = 160;
/// MaxEnvelopeSize assumed until the Create request says otherwise (pypsrp's and WinRM's).
pub const DEFAULT_MAX_ENVELOPE: usize = 153_600;

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

/// A wrapper a known client puts around the user's line, recognised by its exact shape here and
/// nowhere else (SPEC §4.1, §5). The engine never sees the wrapper: it gets the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wrapper {
    /// pypsrp `Client.execute_ps(TEXT)`: exactly `Invoke-Expression -Command TEXT | Out-String
    /// -Stream`, `-Command` named (a positional TEXT is not that shape and reaches the engine as
    /// the structured pipeline it is, where Invoke-Expression does not exist).
    ExecutePs(String),
    /// pypsrp `Client.execute_ps(TEXT, environment={...})`: a `New-Item -Path env: ... |
    /// Out-Null` statement per variable before the `execute_ps` statement. Refused with a message
    /// that says environments are not supported (these are the variables' names).
    ExecutePsEnvironment(Vec<String>),
    /// Ansible's psrp connection running a plain command (`raw`, `exec_command`): script text
    /// exactly `LINE` + `"\nexit $LASTEXITCODE"` with no arguments. LINE runs as one restricted
    /// line and its exit code (0 ran, 1 failed, 2 refused) reaches the client's host as
    /// `SetShouldExit`, where Ansible reads it.
    AnsibleExec(String),
}

impl Wrapper {
    /// The wrapper this CREATE_PIPELINE is, if it is exactly one.
    pub fn recognise(cp: &CreatePipeline) -> Option<Wrapper> {
        if let Some(text) = cp.execute_ps_text() {
            return Some(Wrapper::ExecutePs(text.to_string()));
        }
        if let Some(names) = cp.execute_ps_environment() {
            return Some(Wrapper::ExecutePsEnvironment(names));
        }
        if let Some(line) = cp.ansible_exec_line() {
            return Some(Wrapper::AnsibleExec(line.to_string()));
        }
        None
    }
}

/// What a pipeline runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// One restricted line whose output objects are formatted to strings (`Out-String
    /// -Stream`): what [`Wrapper::ExecutePs`] asks for.
    LineAsStrings(String),
    /// One restricted line whose exit code goes to the client's host (`SetShouldExit`) before
    /// its end state: what [`Wrapper::AnsibleExec`] asks for.
    LineSettingExit(String),
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
        match Wrapper::recognise(cp) {
            Some(Wrapper::ExecutePs(text)) => return Plan::LineAsStrings(text),
            Some(Wrapper::AnsibleExec(line)) => return Plan::LineSettingExit(line),
            Some(Wrapper::ExecutePsEnvironment(names)) => {
                return refusal(
                    &format!(
                        "keyhole does not support environment variables (execute_ps environment: {}): a NoLanguage session has no env: drive and cannot set variables, so nothing was run; call execute_ps without environment",
                        names.join(", ")
                    ),
                    "EnvironmentNotSupported",
                )
            }
            None => {}
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
                    return refusal(
                        "script text with arguments cannot run in a NoLanguage session: a script that takes arguments is a full-language script (param blocks, variables), as the scripts of pypsrp's copy and fetch are, and keyhole runs script text only as one restricted line, without arguments; nothing was run",
                        "ScriptArgumentsNotSupported",
                    );
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

    /// One PIPELINE_INPUT message into the input buffered so far (within the limits); on an
    /// error nothing changes.
    fn push_input(
        input: &mut Vec<Value>,
        bytes: &mut usize,
        m: &Message,
    ) -> Result<(), ProtocolError> {
        // Counted in the bytes the values hold after reference expansion (or the message's,
        // whichever is larger), so that many small messages that each expand a lot cannot pile
        // up (issue 9, finding 1).
        let (value, size) =
            super::clixml::read::parse_sized(m.text()?, &super::clixml::read::DEFAULT_LIMITS)?;
        let total = bytes.saturating_add(size.max(m.data.len()));
        if input.len() >= MAX_INPUT_OBJECTS || total > MAX_INPUT_BYTES {
            return Err(Malformed::InputTooLarge {
                max_objects: MAX_INPUT_OBJECTS,
                max_bytes: MAX_INPUT_BYTES,
            }
            .into());
        }
        input.push(value);
        *bytes = total;
        Ok(())
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
                    let mut bytes = bytes;
                    Pipeline::push_input(&mut input, &mut bytes, &m)?;
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
// One pool's protocol state

/// Numbers outgoing messages (one ObjectId counter per pool) and cuts them into fragments that
/// fit the client's MaxEnvelopeSize. Cheap to clone: a run's encoder holds one.
#[derive(Debug, Clone)]
pub struct Framer {
    rpid: [u8; 16],
    max_blob: usize,
    next_object_id: Arc<AtomicU64>,
}

impl Framer {
    fn new(max_envelope: usize) -> Framer {
        Framer {
            rpid: [0u8; 16],
            max_blob: max_blob_for_envelope(max_envelope),
            next_object_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The fragments (encoded) of one message to the client.
    pub fn fragments(
        &self,
        t: MessageType,
        rpid: [u8; 16],
        pid: [u8; 16],
        body: &str,
    ) -> Vec<Vec<u8>> {
        let m = Message::to_client(t, rpid, pid, body.as_bytes().to_vec());
        let oid = self.next_object_id.fetch_add(1, Ordering::Relaxed);
        fragment_message(oid, &m.encode(), self.max_blob)
            .iter()
            .map(|f| f.encode())
            .collect()
    }
}

/// Fragments the messages of one pipeline (a [`Framer`] with the pipeline's ids).
#[derive(Debug, Clone)]
pub struct PipeFramer {
    framer: Framer,
    pid: [u8; 16],
}

impl PipeFramer {
    pub fn fragments(&self, t: MessageType, body: &str) -> Vec<Vec<u8>> {
        self.framer.fragments(t, self.framer.rpid, self.pid, body)
    }
}

/// What the caller of [`PoolCore`] must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue these fragments on the pool's Receive.
    Pool(Vec<Vec<u8>>),
    /// Queue these fragments on pipeline `cid`'s Receive; `last` when they end it (its
    /// PIPELINE_STATE).
    Pipe {
        cid: String,
        fragments: Vec<Vec<u8>>,
        last: bool,
    },
    /// Run `plan` for pipeline `cid`, with `input` for its first command.
    Start {
        cid: String,
        plan: Plan,
        input: Vec<Value>,
    },
    /// Stop pipeline `cid`'s run.
    Cancel { cid: String },
}

/// Why [`PoolCore`] refused what the client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No pipeline with that CommandId (or PID) in this pool.
    #[error("no such pipeline in this runspace pool")]
    UnknownPipeline,
    #[error("a pipeline is invalid in runspace pool state {0}")]
    NotOpened(&'static str),
    #[error("CommandId {0} is already in use in this runspace pool")]
    DuplicatePipeline(String),
    #[error("more than {MAX_ACTIVE_PIPELINES} pipelines at once in one runspace pool")]
    TooManyPipelines,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

struct PipeCore {
    seq: u64,
    pid: [u8; 16],
    state: Pipeline,
    /// Send the run's exit code to the client's host (`SetShouldExit`) before its end state.
    exit_to_host: bool,
}

/// One runspace pool's protocol state (see the module documentation).
pub struct PoolCore {
    pool: RunspacePool,
    reassembler: Reassembler,
    framer: Framer,
    max_envelope: usize,
    pipes: HashMap<String, PipeCore>,
    next_seq: u64,
}

impl Default for PoolCore {
    fn default() -> Self {
        PoolCore::new()
    }
}

impl PoolCore {
    pub fn new() -> PoolCore {
        PoolCore {
            pool: RunspacePool::BeforeOpen,
            reassembler: Reassembler::new(),
            framer: Framer::new(DEFAULT_MAX_ENVELOPE),
            max_envelope: DEFAULT_MAX_ENVELOPE,
            pipes: HashMap::new(),
            next_seq: 0,
        }
    }

    /// The client's MaxEnvelopeSize (from Create): fragments are cut to fit it.
    pub fn set_max_envelope(&mut self, max_envelope: usize) {
        if max_envelope > 0 {
            self.max_envelope = max_envelope;
            self.framer.max_blob = max_blob_for_envelope(max_envelope);
        }
    }

    /// Bytes of fragments (as base64 plus per-stream overhead) one Receive may carry.
    pub fn receive_budget(&self) -> usize {
        self.max_envelope.saturating_sub(ENVELOPE_OVERHEAD)
    }

    /// What one fragment costs in a Receive.
    pub fn receive_cost(fragment_len: usize) -> usize {
        fragment_len.div_ceil(3) * 4 + STREAM_ELEMENT_OVERHEAD
    }

    pub fn state_name(&self) -> &'static str {
        self.pool.state_name()
    }

    pub fn has_pipeline(&self, cid: &str) -> bool {
        self.pipes.contains_key(cid)
    }

    /// The pool is closed: no pipeline starts and every message is refused.
    pub fn close(&mut self) {
        self.pool = RunspacePool::Closed;
    }

    /// Register pipeline `cid` (a Command arrived). Finished pipelines beyond
    /// [`MAX_FINISHED_PIPELINES`] whose output the client has taken (`drained`) are forgotten;
    /// their CommandIds are returned.
    pub fn add_pipeline(
        &mut self,
        cid: &str,
        drained: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, PoolError> {
        if !matches!(self.pool, RunspacePool::Opened { .. }) {
            return Err(PoolError::NotOpened(self.pool.state_name()));
        }
        if self.pipes.contains_key(cid) {
            return Err(PoolError::DuplicatePipeline(cid.to_string()));
        }
        let active = self.pipes.values().filter(|p| !p.state.is_done()).count();
        if active >= MAX_ACTIVE_PIPELINES {
            return Err(PoolError::TooManyPipelines);
        }
        let evicted = self.evict_finished(drained);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.pipes.insert(
            cid.to_string(),
            PipeCore {
                seq,
                pid: guid_to_net_bytes(cid).unwrap_or([0u8; 16]),
                state: Pipeline::AwaitingCreate,
                exit_to_host: false,
            },
        );
        Ok(evicted)
    }

    /// Forget pipeline `cid` (its Command failed).
    pub fn remove_pipeline(&mut self, cid: &str) {
        self.pipes.remove(cid);
    }

    fn evict_finished(&mut self, drained: impl Fn(&str) -> bool) -> Vec<String> {
        let mut finished: Vec<(u64, String)> = self
            .pipes
            .iter()
            .filter(|(k, p)| p.state.is_done() && drained(k))
            .map(|(k, p)| (p.seq, k.clone()))
            .collect();
        if finished.len() <= MAX_FINISHED_PIPELINES {
            return Vec::new();
        }
        finished.sort();
        let n = finished.len() - MAX_FINISHED_PIPELINES;
        let gone: Vec<String> = finished.into_iter().take(n).map(|(_, k)| k).collect();
        for k in &gone {
            self.pipes.remove(k);
        }
        gone
    }

    /// The framer for pipeline `cid`'s messages (a run's output).
    pub fn framer_for(&self, cid: &str) -> Option<PipeFramer> {
        self.pipes.get(cid).map(|p| PipeFramer {
            framer: self.framer.clone(),
            pid: p.pid,
        })
    }

    /// Bytes (fragments) a client sent for pipeline `cid` (or the pool); every message they
    /// complete is handled. `visible` answers GET_COMMAND_METADATA.
    pub fn feed(
        &mut self,
        cid: Option<&str>,
        data: &[u8],
        visible: &[VisibleCommand],
    ) -> Result<Vec<Effect>, PoolError> {
        if self.pool == RunspacePool::Closed {
            return Err(PoolError::NotOpened(self.pool.state_name()));
        }
        let messages = self.reassembler.push_bytes(data)?;
        let mut effects = Vec::new();
        for bytes in messages {
            let msg = Message::decode(&bytes)?;
            tracing::debug!(
                message = msg.message_type.name(),
                command_id = cid.unwrap_or("-"),
                "PSRP message from client"
            );
            self.dispatch(cid, msg, visible, &mut effects)?;
        }
        Ok(effects)
    }

    fn dispatch(
        &mut self,
        cid: Option<&str>,
        msg: Message,
        visible: &[VisibleCommand],
        effects: &mut Vec<Effect>,
    ) -> Result<(), PoolError> {
        let t = msg.message_type;
        if matches!(
            t,
            MessageType::PipelineInput | MessageType::EndOfPipelineInput
        ) {
            let cid = self.pipe_for(cid, &msg)?;
            return self.pipe_event(&cid, PipelineEvent::Input(msg), visible, effects);
        }
        if t == MessageType::InitRunspacePool {
            self.framer.rpid = msg.rpid;
        }
        let (state, outputs) = self.pool.clone().handle(&msg)?;
        self.pool = state;
        for o in outputs {
            match o {
                PoolOutput::Send {
                    message_type,
                    body,
                    zero_rpid,
                } => {
                    let rpid = if zero_rpid {
                        [0u8; 16]
                    } else {
                        self.framer.rpid
                    };
                    let f = self.framer.fragments(message_type, rpid, [0u8; 16], &body);
                    effects.push(Effect::Pool(f));
                }
                PoolOutput::CreatePipeline(cp) => {
                    let cid = self.pipe_id(cid, "CREATE_PIPELINE", msg.pid)?;
                    let plan = Plan::from_create(&cp);
                    if matches!(plan, Plan::LineSettingExit(_)) && cp.has_host {
                        if let Some(p) = self.pipes.get_mut(&cid) {
                            p.exit_to_host = true;
                        }
                    }
                    let ev = PipelineEvent::Created {
                        plan,
                        no_input: cp.no_input,
                    };
                    self.pipe_event(&cid, ev, visible, effects)?;
                }
                PoolOutput::CommandMetadata(q) => {
                    let cid = self.pipe_id(cid, "GET_COMMAND_METADATA", msg.pid)?;
                    let ev = PipelineEvent::Created {
                        plan: Plan::Metadata(q),
                        no_input: true,
                    };
                    self.pipe_event(&cid, ev, visible, effects)?;
                }
                PoolOutput::Ignore => {}
            }
        }
        Ok(())
    }

    /// The pipeline a pipeline-creating message belongs to (its Command's CommandId); records
    /// the PID the client gave it.
    fn pipe_id(
        &mut self,
        cid: Option<&str>,
        what: &str,
        pid: [u8; 16],
    ) -> Result<String, PoolError> {
        let cid = cid.ok_or_else(|| {
            ProtocolError::from(crate::psrp::Malformed::MissingCommandId(what.to_string()))
        })?;
        let p = self.pipes.get_mut(cid).ok_or(PoolError::UnknownPipeline)?;
        p.pid = pid;
        Ok(cid.to_string())
    }

    /// The pipeline a message belongs to: the Send's CommandId, else the one whose PID matches.
    fn pipe_for(&self, cid: Option<&str>, msg: &Message) -> Result<String, PoolError> {
        if let Some(c) = cid {
            return Ok(c.to_string());
        }
        self.pipes
            .iter()
            .find(|(_, p)| p.pid == msg.pid)
            .map(|(k, _)| k.clone())
            .ok_or(PoolError::UnknownPipeline)
    }

    /// The client stopped pipeline `cid` (Signal).
    pub fn stop(
        &mut self,
        cid: &str,
        visible: &[VisibleCommand],
    ) -> Result<Vec<Effect>, PoolError> {
        let mut effects = Vec::new();
        self.pipe_event(cid, PipelineEvent::Stop, visible, &mut effects)?;
        Ok(effects)
    }

    fn pipe_event(
        &mut self,
        cid: &str,
        ev: PipelineEvent,
        visible: &[VisibleCommand],
        effects: &mut Vec<Effect>,
    ) -> Result<(), PoolError> {
        let p = self.pipes.get_mut(cid).ok_or(PoolError::UnknownPipeline)?;
        // Input is the frequent event, and its state holds every object received so far: it is
        // added in place (the transition below clones the state, which made feeding input
        // quadratic in time and doubled its memory).
        if let (Pipeline::AwaitingInput { input, bytes, .. }, PipelineEvent::Input(m)) =
            (&mut p.state, &ev)
        {
            if m.message_type == MessageType::PipelineInput {
                Pipeline::push_input(input, bytes, m)?;
                return Ok(());
            }
        }
        let (state, actions) = p.state.clone().handle(ev)?;
        p.state = state;
        for a in actions {
            match a {
                PipelineAction::Start(Plan::Metadata(q), _) => {
                    let framer = self.framer_for(cid).ok_or(PoolError::UnknownPipeline)?;
                    let selected = q.select(visible);
                    let mut f = framer.fragments(
                        MessageType::PipelineOutput,
                        &objects::command_metadata_count(selected.len()),
                    );
                    for c in selected {
                        f.extend(
                            framer.fragments(
                                MessageType::PipelineOutput,
                                &objects::command_metadata(c),
                            ),
                        );
                    }
                    effects.push(Effect::Pipe {
                        cid: cid.to_string(),
                        fragments: f,
                        last: false,
                    });
                    let end = self.finished(cid, &RunOutcome::Completed { had_errors: false });
                    effects.push(Effect::Pipe {
                        cid: cid.to_string(),
                        fragments: end,
                        last: true,
                    });
                }
                PipelineAction::Start(Plan::Refuse(e), _) => {
                    let end = self.finished(cid, &RunOutcome::Failed(e));
                    effects.push(Effect::Pipe {
                        cid: cid.to_string(),
                        fragments: end,
                        last: true,
                    });
                }
                PipelineAction::Start(plan, input) => effects.push(Effect::Start {
                    cid: cid.to_string(),
                    plan,
                    input,
                }),
                PipelineAction::Cancel => effects.push(Effect::Cancel {
                    cid: cid.to_string(),
                }),
                PipelineAction::SendState(st) => {
                    let framer = self.framer_for(cid).ok_or(PoolError::UnknownPipeline)?;
                    effects.push(Effect::Pipe {
                        cid: cid.to_string(),
                        fragments: framer.fragments(
                            MessageType::PipelineState,
                            &objects::pipeline_state(st, None),
                        ),
                        last: true,
                    });
                }
            }
        }
        Ok(())
    }

    /// Pipeline `cid`'s run ended with `outcome`: its PIPELINE_STATE fragments (empty when the
    /// pipeline is gone or already done), after the host call that hands the client its exit
    /// code when the pipeline asked for one ([`Plan::LineSettingExit`]) and was not stopped.
    pub fn finished(&mut self, cid: &str, outcome: &RunOutcome) -> Vec<Vec<u8>> {
        let (state, err) = end_state(outcome);
        let Some(p) = self.pipes.get_mut(cid) else {
            return Vec::new();
        };
        let exit_to_host = p.exit_to_host;
        let Ok((next, _)) = p.state.clone().handle(PipelineEvent::Finished(state)) else {
            return Vec::new();
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
        let Some(f) = self.framer_for(cid) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if exit_to_host && final_state != InvocationState::Stopped {
            out.extend(f.fragments(
                MessageType::PipelineHostCall,
                &objects::set_should_exit(outcome.exit_code()),
            ));
        }
        out.extend(f.fragments(
            MessageType::PipelineState,
            &objects::pipeline_state(final_state, err.as_ref()),
        ));
        out
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

// ---------------------------------------------------------------------------------------------
// Engine events → PSRP messages

/// Turns what a run produces into PSRP messages: output objects as they are (or formatted to
/// strings for [`Plan::LineAsStrings`]), the other streams as their records or merged into
/// output as the pipeline asked.
pub struct EventEncoder {
    merge: Merge,
    formatter: Option<Formatter>,
    user: String,
    computer: String,
    /// A terminating error the run wrote, held back: it reaches the client inside the Failed
    /// PIPELINE_STATE, once, as Windows sends it ([`EventEncoder::end`]).
    terminating: Option<ErrorRecord>,
}

/// Split formatted text into lines (no trailing empty line for a final newline).
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

impl EventEncoder {
    /// The encoder for `plan`; `user` and `computer` are shown in information records.
    pub fn for_plan(plan: &Plan, user: &str, computer: &str) -> EventEncoder {
        EventEncoder {
            merge: match plan {
                Plan::Segments(_, m) => *m,
                _ => Merge::default(),
            },
            formatter: matches!(plan, Plan::LineAsStrings(_)).then(Formatter::new),
            user: user.to_string(),
            computer: computer.to_string(),
            terminating: None,
        }
    }

    fn strings(text: &str) -> Vec<(MessageType, String)> {
        lines(text)
            .into_iter()
            .map(|l| {
                (
                    MessageType::PipelineOutput,
                    objects::output(&Value::String(l)),
                )
            })
            .collect()
    }

    /// The messages for one event.
    pub fn encode(&mut self, e: Event) -> Vec<(MessageType, String)> {
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
        match e {
            // The engine writes a terminating error as it happens and then ends the run Failed
            // with it; PSRP carries it in the Failed state only.
            Event::Error(er) if er.terminating && self.terminating.is_none() => {
                self.terminating = Some(er);
                Vec::new()
            }
            Event::Output(v) => match self.formatter.as_mut() {
                Some(f) => Self::strings(&f.push(&v)),
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
                vec![(t, objects::information(&s, &self.user, &self.computer))]
            }
        }
    }

    /// What is left when the run ends (the formatter's tail).
    pub fn finish(&mut self) -> Vec<(MessageType, String)> {
        match self.formatter.as_mut() {
            Some(f) => Self::strings(&f.finish()),
            None => Vec::new(),
        }
    }

    /// The run ended with `outcome`: the terminating error held back, unless the Failed state
    /// carries it (then nothing: the client gets it once).
    pub fn end(&mut self, outcome: &RunOutcome) -> Vec<(MessageType, String)> {
        let Some(held) = self.terminating.take() else {
            return Vec::new();
        };
        if let RunOutcome::Failed(rec) = outcome {
            if rec.message == held.message
                && rec.fully_qualified_error_id == held.fully_qualified_error_id
            {
                return Vec::new();
            }
        }
        let (t, body) = if self.merge.error {
            (
                MessageType::PipelineOutput,
                objects::merged_error_record(&held),
            )
        } else {
            (MessageType::ErrorRecord, objects::error_record(&held))
        };
        vec![(t, body)]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

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

    /// Pipeline input is counted in the bytes its values hold after reference expansion: a few
    /// small messages that each expand to tens of MiB cannot pile up past MAX_INPUT_BYTES
    /// (issue 9, finding 1 across messages; counted in message bytes these were accepted).
    #[test]
    fn pipeline_input_is_counted_after_reference_expansion() {
        let chunk = "x".repeat(100 * 1024);
        // 250 references to one 100 KiB list: ~25 MiB once expanded, ~10 KiB on the wire.
        let mut list =
            format!(r#"<Obj RefId="1"><LST><Obj RefId="0"><LST><S>{chunk}</S></LST></Obj>"#);
        for _ in 0..250 {
            list.push_str(r#"<Ref RefId="0" />"#);
        }
        list.push_str("</LST></Obj>");
        let msg = || {
            Message::new(
                Destination::Server,
                MessageType::PipelineInput,
                [0; 16],
                [0; 16],
                list.clone().into_bytes(),
            )
        };
        let mut p = Pipeline::AwaitingCreate
            .handle(PipelineEvent::Created {
                plan: Plan::Segments(Vec::new(), Merge::default()),
                no_input: false,
            })
            .unwrap()
            .0;
        let mut refused = None;
        for i in 0..4 {
            match p.handle(PipelineEvent::Input(msg())) {
                Ok((next, _)) => p = next,
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (i, e) = refused.expect("input expanding past MAX_INPUT_BYTES must be refused");
        assert_eq!(i, 2, "the third ~25 MiB message crosses 64 MiB");
        assert!(e.to_string().contains("pipeline input exceeds"), "{e}");
        assert!(list.len() < 120 * 1024, "the messages themselves are small");
    }

    fn cp(iex_named: bool, out_cmd: &str) -> CreatePipeline {
        use crate::engine::CommandArg;
        let cmd = |name: &str, args: Vec<CommandArg>| objects::PipelineCommand {
            cmd: name.into(),
            is_script: false,
            args,
            merge: Merge::default(),
        };
        CreatePipeline {
            no_input: true,
            add_to_history: false,
            is_nested: false,
            has_host: false,
            statements: vec![vec![
                cmd(
                    "Invoke-Expression",
                    vec![CommandArg {
                        name: iex_named.then(|| "Command".to_string()),
                        value: Some(Value::String("Get-Date".into())),
                    }],
                ),
                cmd(
                    out_cmd,
                    vec![CommandArg {
                        name: Some("Stream".into()),
                        value: None,
                    }],
                ),
            ]],
        }
    }

    #[test]
    fn execute_ps_is_recognised_only_in_its_exact_shape() {
        assert_eq!(
            Wrapper::recognise(&cp(true, "Out-String")),
            Some(Wrapper::ExecutePs("Get-Date".into()))
        );
        assert_eq!(
            Plan::from_create(&cp(true, "out-string")),
            Plan::LineAsStrings("Get-Date".into())
        );
        // A positional -Command is not pypsrp's shape: the engine gets the structured pipeline,
        // where Invoke-Expression does not exist.
        assert_eq!(Wrapper::recognise(&cp(false, "Out-String")), None);
        assert!(matches!(
            Plan::from_create(&cp(false, "Out-String")),
            Plan::Segments(ref s, _) if matches!(s.as_slice(), [Segment::Structured(_)])
        ));
        assert_eq!(Wrapper::recognise(&cp(true, "Out-Default")), None);
    }

    fn script(text: &str, args: Vec<crate::engine::CommandArg>) -> CreatePipeline {
        CreatePipeline {
            no_input: true,
            add_to_history: false,
            is_nested: false,
            has_host: true,
            statements: vec![vec![objects::PipelineCommand {
                cmd: text.into(),
                is_script: true,
                args,
                merge: Merge::default(),
            }]],
        }
    }

    #[test]
    fn ansible_exec_is_recognised_only_in_its_exact_shape() {
        assert_eq!(
            Wrapper::recognise(&script("Get-Uptime\nexit $LASTEXITCODE", vec![])),
            Some(Wrapper::AnsibleExec("Get-Uptime".into()))
        );
        // A multi-line LINE is still the line; its own lines and columns are unchanged.
        assert_eq!(
            Plan::from_create(&script("Get-Date\nGet-Uptime\nexit $LASTEXITCODE", vec![])),
            Plan::LineSettingExit("Get-Date\nGet-Uptime".into())
        );
        for other in [
            "Get-Uptime\nexit $LASTEXITCODE\n",
            "Get-Uptime\nexit $lastexitcode",
            "Get-Uptime; exit $LASTEXITCODE",
            "Get-Uptime",
        ] {
            assert_eq!(
                Wrapper::recognise(&script(other, vec![])),
                None,
                "{other:?}"
            );
        }
        let with_arg = script(
            "Get-Uptime\nexit $LASTEXITCODE",
            vec![crate::engine::CommandArg {
                name: None,
                value: Some(Value::Int(1)),
            }],
        );
        assert_eq!(Wrapper::recognise(&with_arg), None);
    }

    fn open_core() -> PoolCore {
        let mut core = PoolCore::new();
        let rpid = [7u8; 16];
        for (t, body) in [
            (MessageType::SessionCapability, objects::session_capability()),
            (
                MessageType::InitRunspacePool,
                r#"<Obj RefId="0"><MS><I32 N="MinRunspaces">1</I32><I32 N="MaxRunspaces">1</I32></MS></Obj>"#.to_string(),
            ),
        ] {
            let m = Message::new(Destination::Server, t, rpid, [0; 16], body.into_bytes());
            let bytes: Vec<u8> = fragment_message(1, &m.encode(), 100_000)
                .iter()
                .flat_map(|f| f.encode())
                .collect();
            core.feed(None, &bytes, &[]).unwrap();
        }
        core
    }

    fn types_of(frags: &[Vec<u8>]) -> Vec<MessageType> {
        let mut r = Reassembler::new();
        let mut out = Vec::new();
        for f in frags {
            for m in r.push_bytes(f).unwrap() {
                out.push(Message::decode(&m).unwrap().message_type);
            }
        }
        out
    }

    #[test]
    fn the_line_s_exit_code_reaches_a_host_before_the_state() {
        for (has_host, outcome, code) in [
            (true, RunOutcome::Completed { had_errors: false }, Some(0)),
            (true, RunOutcome::Completed { had_errors: true }, Some(1)),
            (
                true,
                RunOutcome::Refused(crate::engine::Refusal {
                    message: "no".into(),
                    id: "X".into(),
                    category: ErrorCategory::PermissionDenied,
                    column: Some(3),
                }),
                Some(2),
            ),
            (true, RunOutcome::Stopped, None),
            (false, RunOutcome::Completed { had_errors: true }, None),
        ] {
            let mut core = open_core();
            let cid = "5F1C3B2A-0000-4000-8000-000000000001";
            core.add_pipeline(cid, |_| true).unwrap();
            let mut cp = script("Get-Uptime\nexit $LASTEXITCODE", vec![]);
            cp.has_host = has_host;
            let mut effects = Vec::new();
            core.pipes.get_mut(cid).unwrap().state = Pipeline::AwaitingCreate;
            let plan = Plan::from_create(&cp);
            if has_host {
                core.pipes.get_mut(cid).unwrap().exit_to_host = true;
            }
            core.pipe_event(
                cid,
                PipelineEvent::Created {
                    plan,
                    no_input: true,
                },
                &[],
                &mut effects,
            )
            .unwrap();
            assert!(
                matches!(effects.as_slice(), [Effect::Start { plan: Plan::LineSettingExit(l), .. }] if l == "Get-Uptime")
            );
            let frags = core.finished(cid, &outcome);
            let types = types_of(&frags);
            match code {
                Some(c) => {
                    assert_eq!(
                        types,
                        vec![MessageType::PipelineHostCall, MessageType::PipelineState]
                    );
                    let mut r = Reassembler::new();
                    let first = r.push_bytes(frags.first().unwrap()).unwrap();
                    let text = Message::decode(first.first().unwrap())
                        .unwrap()
                        .text()
                        .unwrap()
                        .to_string();
                    assert!(
                        text.contains("<ToString>SetShouldExit</ToString><I32>6</I32>"),
                        "{text}"
                    );
                    assert!(
                        text.contains(&format!("<LST><I32>{c}</I32></LST>")),
                        "{text}"
                    );
                    assert!(text.contains(r#"<I64 N="ci">-100</I64>"#), "{text}");
                }
                None => assert_eq!(types, vec![MessageType::PipelineState]),
            }
        }
    }

    #[test]
    fn a_terminating_error_is_held_for_the_failed_state() {
        let plan = Plan::Segments(Vec::new(), Merge::default());
        let rec = ErrorRecord::new("boom", "Boom", ErrorCategory::NotSpecified).terminating();
        let other = ErrorRecord::new("soft", "Soft", ErrorCategory::NotSpecified);
        let mut e = EventEncoder::for_plan(&plan, "u", "c");
        assert_eq!(e.encode(Event::Error(other)).len(), 1);
        assert!(e.encode(Event::Error(rec.clone())).is_empty());
        assert!(e.end(&RunOutcome::Failed(rec.clone())).is_empty());
        // Had the run not ended Failed with it, the held record is not lost.
        let mut e = EventEncoder::for_plan(&plan, "u", "c");
        assert!(e.encode(Event::Error(rec)).is_empty());
        let tail = e.end(&RunOutcome::Stopped);
        assert!(matches!(tail.as_slice(), [(MessageType::ErrorRecord, b)] if b.contains("boom")));
    }

    #[test]
    fn execute_ps_with_environment_is_refused_saying_so() {
        use crate::engine::CommandArg;
        let arg = |n: &str, v: Option<Value>| CommandArg {
            name: Some(n.into()),
            value: v,
        };
        let cmd = |name: &str, args: Vec<CommandArg>| objects::PipelineCommand {
            cmd: name.into(),
            is_script: false,
            args,
            merge: Merge::default(),
        };
        let env = vec![
            cmd(
                "New-Item",
                vec![
                    arg("Path", Some(Value::String("env:".into()))),
                    arg("Name", Some(Value::String("FOO".into()))),
                    arg("Value", Some(Value::String("bar".into()))),
                    arg("Force", Some(Value::Bool(true))),
                ],
            ),
            cmd("Out-Null", vec![]),
        ];
        let mut p = cp(true, "Out-String");
        p.statements.insert(0, env);
        assert_eq!(
            Wrapper::recognise(&p),
            Some(Wrapper::ExecutePsEnvironment(vec!["FOO".into()]))
        );
        match Plan::from_create(&p) {
            Plan::Refuse(r) => {
                assert_eq!(r.fully_qualified_error_id, "EnvironmentNotSupported");
                assert!(
                    r.message.contains("environment variables") && r.message.contains("FOO"),
                    "{}",
                    r.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
