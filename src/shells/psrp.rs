//! `shells::psrp`: a PSRP runspace pool behind WS-Man (`http://schemas.microsoft.com/powershell/
//! <ConfigurationName>`). The protocol is `psrp::pool::PoolCore` (sans-IO); this module carries
//! out its effects on the shared runtime (`runner`): pipelines run on workers, one at a time per
//! pool, their events streamed out as PSRP messages into byte-bounded outboxes.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine as _;
use tokio::sync::Notify;

use super::runner::{wake, Budget, Item, Lane, Line, Outbox, OutputBudget, Workers};
use super::{ShellSetup, UserBudgets};
use crate::engine::{
    CancelToken, Event, EventSink, RunOutcome, Session, StructuredPipeline, Value, VisibleCommand,
};
use crate::gates::{Gates, Origin, SessionKind};
use crate::psrp::message::MessageType;
use crate::psrp::pool::{Effect, EventEncoder, PipeFramer, Plan, PoolCore, PoolError, Segment};
use crate::psrp::ProtocolError;
use crate::wsman::shell::{
    CommandRequest, CommandState, CommandStateKind, CreateError, CreateRequest, Identity, NewShell,
    ReceiveResponse, Shell, ShellError, ShellFactory, Signal, StreamChunk, StreamName,
};

/// Bytes of pool-level replies (negotiation, runspace availability) waiting for the client's
/// pool Receive; a client that asks without ever receiving is refused beyond it.
pub const MAX_POOL_QUEUED_BYTES: usize = 1024 * 1024;

/// What a pool needs from an engine session (implemented by [`Session`]; tests use fakes).
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

/// Opens PSRP sessions (the configuration name is the endpoint) through the gates.
pub struct PsrpFactory {
    gates: Arc<Gates>,
    workers: Arc<Workers>,
    budgets: Arc<UserBudgets>,
}

impl PsrpFactory {
    /// `budgets` is the server's one table of per-user output budgets (shared with the other
    /// factories, so a user's WinRS shells and PSRP pools draw from one budget).
    pub fn new(gates: Arc<Gates>, workers: Arc<Workers>, budgets: Arc<UserBudgets>) -> PsrpFactory {
        PsrpFactory {
            gates,
            workers,
            budgets,
        }
    }
}

impl ShellFactory for PsrpFactory {
    fn create(
        &self,
        id: &Identity,
        peer: SocketAddr,
        endpoint: Option<&str>,
        _req: &CreateRequest,
    ) -> Result<NewShell, CreateError> {
        let origin = Origin::Remote(peer);
        let Some(endpoint) = endpoint.filter(|e| !e.is_empty()) else {
            self.gates
                .refuse(id, origin, None, "a PSRP Create names no configuration");
            return Err(CreateError::Refused);
        };
        let o = super::open_session(
            &self.gates,
            &self.workers,
            &self.budgets,
            id,
            endpoint,
            origin,
            SessionKind::Psrp,
        )?;
        Ok(NewShell {
            shell: Box::new(PsrpShell::new(o.session, o.setup)),
            limits: o.limits,
        })
    }
}

/// One encoded fragment waiting for a Receive.
#[derive(Debug)]
struct Frag(Vec<u8>);

impl Item for Frag {
    fn weight(&self) -> usize {
        self.0.len()
    }
}

fn frag_cost(f: &Frag) -> usize {
    PoolCore::receive_cost(f.0.len())
}

struct PipeRt {
    out: Arc<Outbox<Frag>>,
    cancel: CancelToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn shell_error(e: PoolError) -> ShellError {
    match e {
        PoolError::Protocol(ProtocolError::Unsupported(u)) => ShellError::Unsupported(u.explain()),
        PoolError::UnknownPipeline => ShellError::InvalidSelectors,
        PoolError::TooManyPipelines => ShellError::QuotaLimit(e.to_string()),
        PoolError::NotOpened(_) | PoolError::DuplicatePipeline(_) | PoolError::Protocol(_) => {
            ShellError::Malformed(e.to_string())
        }
    }
}

/// A PSRP runspace pool served by one engine session.
pub struct PsrpShell<E: PsrpEngine = Session> {
    core: Arc<Mutex<PoolCore>>,
    lane: Lane<E>,
    budget: Budget,
    pool_out: Arc<Outbox<Frag>>,
    pipes: HashMap<String, PipeRt>,
    notify: Arc<Notify>,
    visible: Vec<VisibleCommand>,
    user: String,
    computer: String,
    closed: bool,
}

impl<E: PsrpEngine> PsrpShell<E> {
    /// A pool over `engine` (an [`engine::Session`](crate::engine::Session) the gates opened).
    pub fn new(engine: E, setup: ShellSetup) -> Self {
        let visible = engine.visible();
        let notify = Arc::new(Notify::new());
        PsrpShell {
            core: Arc::new(Mutex::new(PoolCore::new())),
            lane: Lane::new(engine, setup.workers, setup.command_timeout, setup.keep),
            budget: setup.budget,
            pool_out: Outbox::new(OutputBudget::new(MAX_POOL_QUEUED_BYTES), notify.clone()),
            pipes: HashMap::new(),
            notify,
            visible,
            user: setup.user,
            computer: hostname(),
            closed: false,
        }
    }

    /// Feed bytes (fragments) arriving for `cid` (or the pool) and carry out what they cause.
    fn feed(&mut self, cid: Option<&str>, data: &[u8]) -> Result<(), ShellError> {
        let effects = lock(&self.core).feed(cid, data, &self.visible);
        match effects {
            Ok(e) => self.apply(e),
            Err(e) => {
                tracing::warn!(command_id = cid.unwrap_or("-"), error = %e, "PSRP input refused");
                Err(shell_error(e))
            }
        }
    }

    fn apply(&mut self, effects: Vec<Effect>) -> Result<(), ShellError> {
        for e in effects {
            match e {
                Effect::Pool(frags) => {
                    for f in frags {
                        if !self.pool_out.push_now(Frag(f)) {
                            return Err(ShellError::QuotaLimit(format!(
                                "more than {MAX_POOL_QUEUED_BYTES} bytes of runspace pool replies are waiting for the client's Receive"
                            )));
                        }
                    }
                }
                Effect::Pipe {
                    cid,
                    fragments,
                    last,
                } => {
                    let Some(p) = self.pipes.get(&cid) else {
                        continue;
                    };
                    let frags = fragments.into_iter().map(Frag).collect::<Vec<_>>();
                    if last {
                        p.out.push_last(frags);
                    } else {
                        // A reply the protocol layer made (command metadata), bounded by the
                        // session's visible commands: never refused for the user's budget.
                        p.out.push_reply(frags);
                    }
                }
                Effect::Start { cid, plan, input } => {
                    let Some(p) = self.pipes.get(&cid) else {
                        continue;
                    };
                    let Some(framer) = lock(&self.core).framer_for(&cid) else {
                        continue;
                    };
                    let encoder = EventEncoder::for_plan(&plan, &self.user, &self.computer);
                    self.lane.run(
                        p.cancel.clone(),
                        Box::new(PipelineRun {
                            cid,
                            plan: Some(plan),
                            input,
                            sink: PipeSink {
                                encoder,
                                framer,
                                out: p.out.clone(),
                                cancel: p.cancel.clone(),
                            },
                            core: self.core.clone(),
                        }),
                    );
                }
                Effect::Cancel { cid } => {
                    if let Some(p) = self.pipes.get(&cid) {
                        p.out.cancel(&p.cancel);
                    }
                }
            }
        }
        wake(&self.notify);
        Ok(())
    }

    fn take(out: &Outbox<Frag>, budget: usize, cid: Option<&str>) -> (Vec<StreamChunk>, bool) {
        let taken = out.take(budget, frag_cost);
        let streams = taken
            .items
            .into_iter()
            .map(|f| StreamChunk {
                name: StreamName::Stdout,
                command_id: cid.map(str::to_string),
                data: f.0,
                end: false,
            })
            .collect();
        (streams, taken.finished)
    }
}

/// One pipeline's run on a worker.
struct PipelineRun {
    cid: String,
    plan: Option<Plan>,
    input: Vec<Value>,
    sink: PipeSink,
    core: Arc<Mutex<PoolCore>>,
}

/// Streams a run's events out as PSRP fragments.
struct PipeSink {
    encoder: EventEncoder,
    framer: PipeFramer,
    out: Arc<Outbox<Frag>>,
    cancel: CancelToken,
}

impl PipeSink {
    fn emit(&mut self, msgs: Vec<(MessageType, String)>) {
        for (t, body) in msgs {
            for f in self.framer.fragments(t, &body) {
                // Waits while the client is not receiving (back-pressure); dropped once stopped.
                if !self.out.push(Frag(f), &self.cancel) {
                    return;
                }
            }
        }
    }
}

impl EventSink for PipeSink {
    fn event(&mut self, e: Event) {
        let msgs = self.encoder.encode(e);
        self.emit(msgs);
    }
}

impl<E: PsrpEngine> Line<E> for PipelineRun {
    fn run(&mut self, engine: &mut E, cancel: &CancelToken) -> RunOutcome {
        let Some(plan) = self.plan.take() else {
            return RunOutcome::Completed { had_errors: false };
        };
        let sink = &mut self.sink;
        let out = match plan {
            Plan::LineAsStrings(text) | Plan::LineSettingExit(text) => {
                engine.run_line(&text, sink, cancel)
            }
            Plan::Segments(segments, _) => {
                let mut input = Some(std::mem::take(&mut self.input));
                let mut had_errors = false;
                for seg in segments {
                    if cancel.is_cancelled() {
                        return RunOutcome::Stopped;
                    }
                    let out = match seg {
                        Segment::Script(text) => engine.run_line(&text, sink, cancel),
                        Segment::Structured(stmts) => engine.run_structured(
                            &stmts,
                            input.take().unwrap_or_default(),
                            sink,
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
            // Answered by the protocol layer without running anything.
            Plan::Metadata(_) | Plan::Refuse(_) => RunOutcome::Completed { had_errors: false },
        };
        let tail = sink.encoder.finish();
        sink.emit(tail);
        out
    }

    fn end(mut self: Box<Self>, outcome: RunOutcome) {
        let held = self.sink.encoder.end(&outcome);
        self.sink.emit(held);
        let last = lock(&self.core).finished(&self.cid, &outcome);
        self.sink
            .out
            .push_last(last.into_iter().map(Frag).collect());
    }
}

impl<E: PsrpEngine> Shell for PsrpShell<E> {
    fn on_create(&mut self, req: &CreateRequest) -> Result<(), ShellError> {
        lock(&self.core).set_max_envelope(req.max_envelope_size);
        let data = req
            .creation_xml
            .as_deref()
            .ok_or_else(|| ShellError::Malformed("PSRP Create without creationXml".into()))?;
        self.feed(None, data)
    }

    fn command(&mut self, req: CommandRequest) -> Result<String, ShellError> {
        if self.closed {
            return Err(ShellError::InvalidSelectors);
        }
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
        let evicted = {
            let pipes = &self.pipes;
            let drained = |k: &str| {
                pipes
                    .get(k)
                    .map_or(true, |p| p.out.ended() && p.out.queued_bytes() == 0)
            };
            lock(&self.core)
                .add_pipeline(&cid, drained)
                .map_err(shell_error)?
        };
        for k in evicted {
            if let Some(p) = self.pipes.remove(&k) {
                p.out.close();
            }
        }
        self.pipes.insert(
            cid.clone(),
            PipeRt {
                out: Outbox::new(self.budget.for_line(), self.notify.clone()),
                cancel: CancelToken::new(),
            },
        );
        if let Err(e) = self.feed(Some(&cid), &data) {
            lock(&self.core).remove_pipeline(&cid);
            if let Some(p) = self.pipes.remove(&cid) {
                p.out.cancel(&p.cancel);
                p.out.close();
            }
            return Err(e);
        }
        Ok(cid)
    }

    fn send(
        &mut self,
        command_id: Option<&str>,
        stream: StreamName,
        data: Vec<u8>,
        _end: bool,
    ) -> Result<(), ShellError> {
        if !matches!(stream, StreamName::Stdin | StreamName::Pr) {
            return Err(ShellError::Malformed(format!(
                "PSRP input stream {stream} is neither stdin nor pr"
            )));
        }
        if self.closed {
            return Err(ShellError::InvalidSelectors);
        }
        let cid = command_id.map(|c| c.trim().to_ascii_uppercase());
        if let Some(c) = &cid {
            if !self.pipes.contains_key(c) {
                return Err(ShellError::InvalidSelectors);
            }
        }
        self.feed(cid.as_deref(), &data)
    }

    fn receive(&mut self, command_id: Option<&str>) -> Result<ReceiveResponse, ShellError> {
        if self.closed {
            return Err(ShellError::InvalidSelectors);
        }
        let budget = lock(&self.core).receive_budget();
        match command_id {
            None => {
                let (streams, _) = Self::take(&self.pool_out, budget, None);
                Ok(ReceiveResponse {
                    streams,
                    command_state: None,
                })
            }
            Some(c) => {
                let cid = c.trim().to_ascii_uppercase();
                let p = self.pipes.get(&cid).ok_or(ShellError::InvalidSelectors)?;
                let (streams, finished) = Self::take(&p.out, budget, Some(&cid));
                let command_state = finished.then(|| CommandState {
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

    fn signal(&mut self, command_id: Option<&str>, _signal: Signal) -> Result<(), ShellError> {
        // Every signal a pool gets (PSRP's stop, WinRS' ctrl_c / terminate) stops the pipeline.
        let Some(c) = command_id else { return Ok(()) };
        let cid = c.trim().to_ascii_uppercase();
        if !self.pipes.contains_key(&cid) {
            return Err(ShellError::InvalidSelectors);
        }
        let effects = lock(&self.core)
            .stop(&cid, &self.visible)
            .map_err(shell_error)?;
        self.apply(effects)
    }

    fn close(&mut self) {
        self.closed = true;
        lock(&self.core).close();
        for p in self.pipes.values() {
            p.cancel.cancel();
            p.out.close();
        }
        self.pool_out.close();
        wake(&self.notify);
    }

    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

impl<E: PsrpEngine> Drop for PsrpShell<E> {
    fn drop(&mut self) {
        self.close();
    }
}
