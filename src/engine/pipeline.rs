//! Running a bound pipeline: objects are pushed from stage to stage as soon as they are written
//! (so a program's output streams), with per-command ErrorAction and friends, -WhatIf,
//! cancellation between objects, and terminating errors that stop the pipeline.
#![forbid(unsafe_code)]

use std::cell::RefCell;

use super::bind::{bind_input, Bound, Common};
use super::command::{
    CancelToken, Ctx, ErrorRecord, Event, EventSink, HostEnv, Invocation, ParamType, VisibleCommand,
};
use super::format::Formatter;
use super::table::Entry;
use super::value::Value;
use super::Audit;

/// One bound command of a pipeline.
pub(crate) struct Stage {
    pub entry: std::sync::Arc<Entry>,
    pub bound: Bound,
    /// Started invocation (None with -WhatIf: the command is never called).
    pub inv: Option<Box<dyn Invocation>>,
}

/// Why a pipeline stopped early.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Abort {
    Failed(ErrorRecord),
    Stopped,
}

/// State every stage shares while a line runs.
pub(crate) struct Shared<'a> {
    pub sink: &'a mut dyn EventSink,
    pub audit: &'a mut dyn Audit,
    /// Renders output as text for the audit.
    pub fmt: Formatter,
    pub had_errors: bool,
    pub abort: Option<Abort>,
}

impl Shared<'_> {
    fn forward(&mut self, e: Event) {
        if matches!(e, Event::Error(_)) {
            self.had_errors = true;
        }
        self.sink.event(e);
    }
    fn fail(&mut self, rec: ErrorRecord) {
        let rec = rec.terminating();
        if self.abort.is_none() {
            self.sink.event(Event::Error(rec.clone()));
            self.had_errors = true;
            self.abort = Some(Abort::Failed(rec));
        }
    }
    fn output(&mut self, v: Value) {
        let text = self.fmt.push(&v);
        self.sink.event(Event::Output(v));
        self.audit_text(&text);
    }
    pub(crate) fn audit_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Err(e) = self.audit.output(text) {
            let rec = ErrorRecord::new(
                format!("The transcript could not be written ({e}); the pipeline was stopped because keyhole never runs unaudited."),
                "AuditWriteFailed",
                super::command::ErrorCategory::WriteError,
            );
            self.fail(rec);
        }
    }
}

/// What a running command may reach besides the shared state.
pub(crate) struct Env<'a> {
    pub host: &'a HostEnv,
    pub cancel: &'a CancelToken,
    pub visible: &'a [VisibleCommand],
}

/// Per-stage filter on the event streams (ErrorAction, WarningAction, -Verbose, ...).
struct StageSink<'s, 'a> {
    shared: &'s RefCell<Shared<'a>>,
    common: &'s Common,
    command: &'s str,
    /// With -ErrorAction Stop: the first error, which becomes terminating.
    stop: Option<ErrorRecord>,
}

impl EventSink for StageSink<'_, '_> {
    fn event(&mut self, e: Event) {
        let e = match e {
            Event::Error(mut rec) => {
                if rec.command.is_none() {
                    rec.command = Some(self.command.to_string());
                }
                match self.common.error_action {
                    super::bind::Action::SilentlyContinue | super::bind::Action::Ignore => return,
                    super::bind::Action::Stop => {
                        if self.stop.is_none() {
                            self.stop = Some(rec);
                        }
                        return;
                    }
                    super::bind::Action::Continue => Event::Error(rec),
                }
            }
            Event::Warning(_) if self.common.warning_action.drops() => return,
            Event::Information(_) if self.common.information_action.drops() => return,
            Event::Verbose(_) if !self.common.verbose => return,
            Event::Debug(_) if !self.common.debug => return,
            other => other,
        };
        if let Ok(mut s) = self.shared.try_borrow_mut() {
            s.forward(e);
        }
    }
}

fn aborted(shared: &RefCell<Shared<'_>>) -> bool {
    shared
        .try_borrow()
        .map(|s| s.abort.is_some())
        .unwrap_or(true)
}

fn set_abort(shared: &RefCell<Shared<'_>>, a: Abort) {
    if let Ok(mut s) = shared.try_borrow_mut() {
        match a {
            Abort::Failed(rec) => s.fail(rec),
            Abort::Stopped => {
                if s.abort.is_none() {
                    s.abort = Some(Abort::Stopped);
                }
            }
        }
    }
}

/// A terminating error; when the line was cancelled meanwhile (the program was killed), the
/// line is Stopped instead and the error is not shown.
fn fail_or_stop(shared: &RefCell<Shared<'_>>, env: &Env<'_>, rec: ErrorRecord) {
    if env.cancel.is_cancelled() {
        set_abort(shared, Abort::Stopped);
    } else {
        set_abort(shared, Abort::Failed(rec));
    }
}

fn whatif_text(stage: &Stage, args: &super::command::BoundArgs, input: Option<&Value>) -> String {
    let render = |v: &Value| match v {
        Value::Array(items) => items
            .iter()
            .map(Value::to_ps_string)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_ps_string(),
    };
    // The values of the non-switch, non-object parameters (for pipeline input: those bound
    // from the object); else the input object itself.
    let parts: Vec<String> = args
        .values
        .iter()
        .filter(|(k, _)| input.is_none() || !stage.bound.args.has(k))
        .filter(|(k, _)| {
            stage
                .entry
                .param(k)
                .map(|p| {
                    !matches!(
                        p.decl.ty,
                        ParamType::Switch
                            | ParamType::Bool
                            | ParamType::Object
                            | ParamType::ObjectArray
                    )
                })
                .unwrap_or(true)
        })
        .map(|(_, v)| render(v))
        .collect();
    let target = match input {
        Some(v) if parts.is_empty() => v.to_ps_string(),
        _ => parts.join(" "),
    };
    format!(
        "What if: Performing the operation \"{}\" on target \"{}\".",
        stage.entry.decl.name, target
    )
}

/// Push one object (or the single no-input call when `input` is None) into `stages[0]`; its
/// output flows on into the rest, and out of the last stage to the sink.
pub(crate) fn run_stage(
    stages: &mut [Stage],
    input: Option<Value>,
    shared: &RefCell<Shared<'_>>,
    env: &Env<'_>,
) {
    if aborted(shared) {
        return;
    }
    if env.cancel.is_cancelled() {
        set_abort(shared, Abort::Stopped);
        return;
    }
    let Some((cur, rest)) = stages.split_first_mut() else {
        if let Some(v) = input {
            if let Ok(mut s) = shared.try_borrow_mut() {
                s.output(v);
            }
        }
        return;
    };
    let mut sink = StageSink {
        shared,
        common: &cur.bound.common,
        command: &cur.entry.decl.name,
        stop: None,
    };
    let args = match &input {
        Some(v) => match bind_input(&cur.entry, &cur.bound.args, v) {
            Ok(a) => a,
            Err(rec) => {
                sink.event(Event::Error(rec));
                if let Some(rec) = sink.stop.take() {
                    fail_or_stop(shared, env, rec);
                }
                return;
            }
        },
        None => cur.bound.args.clone(),
    };
    if cur.bound.common.whatif {
        let text = whatif_text(cur, &args, input.as_ref());
        sink.event(Event::Information(text));
        return;
    }
    let Some(inv) = cur.inv.as_mut() else { return };
    let mut out = |v: Value| run_stage(rest, Some(v), shared, env);
    let mut ignored = false;
    let result = {
        let mut ctx = Ctx {
            host: env.host,
            cancel: env.cancel,
            visible: env.visible,
            out: &mut out,
            events: &mut sink,
            had_errors: &mut ignored,
        };
        inv.process(&mut ctx, &args, input)
    };
    if let Err(rec) = result {
        fail_or_stop(shared, env, rec);
    } else if let Some(rec) = sink.stop.take() {
        fail_or_stop(shared, env, rec);
    }
}

/// Call `end` on every stage in order (each one's output flows into the later stages).
pub(crate) fn end_stages(stages: &mut [Stage], shared: &RefCell<Shared<'_>>, env: &Env<'_>) {
    for i in 0..stages.len() {
        if aborted(shared) {
            return;
        }
        let (before, after) = stages.split_at_mut(i + 1);
        let Some(cur) = before.last_mut() else { return };
        if cur.bound.common.whatif {
            continue;
        }
        let Some(inv) = cur.inv.as_mut() else {
            continue;
        };
        let mut sink = StageSink {
            shared,
            common: &cur.bound.common,
            command: &cur.entry.decl.name,
            stop: None,
        };
        let mut out = |v: Value| run_stage(after, Some(v), shared, env);
        let mut ignored = false;
        let result = {
            let mut ctx = Ctx {
                host: env.host,
                cancel: env.cancel,
                visible: env.visible,
                out: &mut out,
                events: &mut sink,
                had_errors: &mut ignored,
            };
            inv.end(&mut ctx)
        };
        if let Err(rec) = result {
            fail_or_stop(shared, env, rec);
        } else if let Some(rec) = sink.stop.take() {
            fail_or_stop(shared, env, rec);
        }
    }
}

/// Run a whole pipeline: the input objects (or one no-input call), then every `end`.
pub(crate) fn run_pipeline(
    stages: &mut [Stage],
    input: Vec<Value>,
    shared: &RefCell<Shared<'_>>,
    env: &Env<'_>,
) {
    if input.is_empty() {
        run_stage(stages, None, shared, env);
    } else {
        for v in input {
            run_stage(stages, Some(v), shared, env);
            if aborted(shared) {
                return;
            }
        }
    }
    if env.cancel.is_cancelled() {
        set_abort(shared, Abort::Stopped);
    }
    end_stages(stages, shared, env);
    if env.cancel.is_cancelled() {
        set_abort(shared, Abort::Stopped);
    }
}
