//! A session: one user's command table in one endpoint. A line is parsed, every command of every
//! statement resolved and bound, and only then run, statement by statement.
//!
//! Refusals emit nothing to the event sink: the protocol adapter decides how to show them
//! (WinRS prints the message on stderr, PSRP sends an error record and a Failed state).
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::sync::Arc;

use super::bind::{bind, ArgIn};
use super::command::{CancelToken, ErrorCategory, ErrorRecord, EventSink, VisibleCommand};
use super::format::Formatter;
use super::pipeline::{run_pipeline, Abort, Env, Shared, Stage};
use super::table::CommandTable;
use super::value::Value;
use super::{
    Audit, CommandArg, EndState, Refusal, RunOutcome, SessionOptions, StructuredCommand,
    StructuredPipeline,
};
use crate::lang::{self, CommandElement, Literal, LiteralValue, Statement};

/// Most statements one line (or one structured request) may hold.
pub const MAX_STATEMENTS: usize = 256;
/// Most commands in one pipeline (objects are pushed stage to stage by recursion).
pub const MAX_PIPELINE_STAGES: usize = 64;

/// A command as written, before lookup.
struct RawCommand {
    name: String,
    col: Option<usize>,
    args: Vec<ArgIn>,
}

enum RawStatement {
    Pipeline(Vec<RawCommand>),
    Exit,
}

struct Prepared {
    stages: Vec<Stage>,
    /// `exit` or a pipeline holding Exit-PSSession: the session ends after it.
    exit: bool,
}

/// A session: one user's command table in one endpoint. Lines run one at a time.
pub struct Session {
    opts: SessionOptions,
    audit: Box<dyn Audit>,
    table: Arc<CommandTable>,
}

/// A command table built once from an effective capability and shared (read-only) by every
/// session that has that capability: its entries, compiled patterns and visible commands cost
/// memory once, not per session.
#[derive(Clone)]
pub struct SharedTable(Arc<CommandTable>);

impl SharedTable {
    /// Build the table from the effective capability, and nothing else.
    pub fn build(
        cap: &crate::capability::EffectiveCapability,
        session_type: crate::config::SessionType,
        source: &dyn super::CommandSource,
    ) -> SharedTable {
        SharedTable(Arc::new(CommandTable::build(cap, session_type, source)))
    }

    /// The commands a session with this table can see.
    pub fn visible(&self) -> &[VisibleCommand] {
        &self.0.visible
    }

    /// The same table (not merely an equal one)?
    pub fn same(&self, other: &SharedTable) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

fn literal_value(l: &Literal) -> Value {
    match &l.value {
        LiteralValue::Bare(s) | LiteralValue::Quoted(s) => Value::String(s.clone()),
        LiteralValue::Int(i) => Value::Int(*i),
        LiteralValue::Double(d) => Value::Double(*d),
        LiteralValue::Bool(b) => Value::Bool(*b),
        LiteralValue::Null => Value::Null,
        LiteralValue::List(items) => Value::Array(items.iter().map(literal_value).collect()),
    }
}

fn structured_args(args: &[CommandArg]) -> Vec<ArgIn> {
    args.iter()
        .map(|a| match &a.name {
            Some(n) => {
                let n = n.strip_prefix('-').unwrap_or(n);
                ArgIn::Named {
                    name: n.to_string(),
                    value: a.value.clone(),
                    col: None,
                    attached_col: None,
                }
            }
            None => ArgIn::Positional {
                value: a.value.clone().unwrap_or(Value::Null),
                col: None,
            },
        })
        .collect()
}

fn render_value(v: &Value) -> String {
    match v {
        Value::String(s)
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || ",;|'\"".contains(c)) =>
        {
            format!("'{}'", s.replace('\'', "''"))
        }
        Value::Bool(true) => "$true".into(),
        Value::Bool(false) => "$false".into(),
        Value::Null => "$null".into(),
        Value::Array(items) => items.iter().map(render_value).collect::<Vec<_>>().join(","),
        other => other.to_ps_string(),
    }
}

/// A structured pipeline written as a line (for the transcript).
pub fn render_structured(statements: &[StructuredPipeline]) -> String {
    statements
        .iter()
        .map(|p| {
            p.commands
                .iter()
                .map(|c| {
                    let mut s = c.name.clone();
                    for a in &c.args {
                        match (&a.name, &a.value) {
                            (Some(n), Some(v)) => s.push_str(&format!(" -{n} {}", render_value(v))),
                            (Some(n), None) => s.push_str(&format!(" -{n}")),
                            (None, v) => s.push_str(&format!(
                                " {}",
                                render_value(v.as_ref().unwrap_or(&Value::Null))
                            )),
                        }
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Session {
    /// Build the command table from the effective capability, and nothing else.
    pub fn new(
        cap: &crate::capability::EffectiveCapability,
        opts: SessionOptions,
        audit: Box<dyn Audit>,
    ) -> Session {
        let table = SharedTable::build(cap, opts.session_type, opts.commands.as_ref());
        Session::with_table(table, opts, audit)
    }

    /// A session on a table built earlier (from the same capability, session type and command
    /// source as `opts` names).
    pub fn with_table(table: SharedTable, opts: SessionOptions, audit: Box<dyn Audit>) -> Session {
        Session {
            opts,
            audit,
            table: table.0,
        }
    }

    /// The session's command table (shared with the sessions of the same capability).
    pub fn table(&self) -> SharedTable {
        SharedTable(self.table.clone())
    }

    /// The commands this session can see (Get-Command, GET_COMMAND_METADATA).
    pub fn visible(&self) -> &[VisibleCommand] {
        &self.table.visible
    }

    fn refuse(&mut self, r: Refusal) -> RunOutcome {
        let _ = self.audit.refused(&r.message);
        let _ = self.audit.end(EndState::Refused);
        RunOutcome::Refused(r)
    }

    fn parse_line(line: &str) -> Result<Vec<RawStatement>, Refusal> {
        let script = lang::parse(line).map_err(|e| Refusal {
            message: e.to_string(),
            id: e.id.to_string(),
            category: ErrorCategory::ParserError,
            column: Some(e.column),
        })?;
        let mut out = Vec::new();
        for st in &script.statements {
            match st {
                Statement::Exit(_) => out.push(RawStatement::Exit),
                Statement::Pipeline(p) => {
                    let cmds = p
                        .commands
                        .iter()
                        .map(|c| RawCommand {
                            name: c.name.clone(),
                            col: Some(c.name_span.column(line)),
                            args: c
                                .elements
                                .iter()
                                .map(|e| match e {
                                    CommandElement::Parameter { name, value, span } => {
                                        ArgIn::Named {
                                            name: name.clone(),
                                            value: value.as_ref().map(literal_value),
                                            col: Some(span.column(line)),
                                            attached_col: value
                                                .as_ref()
                                                .map(|l| l.span.column(line)),
                                        }
                                    }
                                    CommandElement::Argument(l) => ArgIn::Positional {
                                        value: literal_value(l),
                                        col: Some(l.span.column(line)),
                                    },
                                })
                                .collect(),
                        })
                        .collect();
                    out.push(RawStatement::Pipeline(cmds));
                }
            }
        }
        Ok(out)
    }

    fn prepare(
        &self,
        statements: Vec<RawStatement>,
        first_has_input: bool,
    ) -> Result<Vec<Prepared>, Refusal> {
        let too_many = |what: &str, n: usize, max: usize| {
            Refusal {
            message: format!("The line has {n} {what}; this session accepts at most {max}. Split it into several lines."),
            id: "TooManyCommands".into(),
            category: ErrorCategory::LimitsExceeded,
            column: None,
        }
        };
        if statements.len() > MAX_STATEMENTS {
            return Err(too_many("statements", statements.len(), MAX_STATEMENTS));
        }
        let mut out = Vec::new();
        for (si, st) in statements.into_iter().enumerate() {
            let cmds = match st {
                RawStatement::Exit => {
                    out.push(Prepared {
                        stages: Vec::new(),
                        exit: true,
                    });
                    continue;
                }
                RawStatement::Pipeline(c) => c,
            };
            if cmds.len() > MAX_PIPELINE_STAGES {
                return Err(too_many(
                    "commands in one pipeline",
                    cmds.len(),
                    MAX_PIPELINE_STAGES,
                ));
            }
            let mut stages = Vec::new();
            let mut exit = false;
            for (i, c) in cmds.iter().enumerate() {
                let entry = self.table.lookup(&c.name, c.col)?.clone();
                let has_input = i > 0 || (si == 0 && first_has_input);
                let bound = bind(&entry, &c.args, has_input)?;
                exit |= entry.decl.name.eq_ignore_ascii_case("Exit-PSSession");
                stages.push(Stage {
                    entry,
                    bound,
                    inv: None,
                });
            }
            out.push(Prepared { stages, exit });
        }
        Ok(out)
    }

    fn execute(
        &mut self,
        prepared: Vec<Prepared>,
        mut input: Vec<Value>,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome {
        let Session { opts, audit, table } = self;
        let env = Env {
            host: &opts.host,
            cancel,
            visible: &table.visible,
        };
        let shared = RefCell::new(Shared {
            sink,
            audit: audit.as_mut(),
            fmt: Formatter::new(),
            had_errors: false,
            abort: None,
        });
        let mut ran_any = false;
        for mut p in prepared {
            if p.stages.is_empty() && p.exit {
                let _ = shared.borrow_mut().audit.end(EndState::Completed);
                return RunOutcome::Exit;
            }
            // Every command of the statement is recorded, then the records (and the line) are
            // made durable with one sync, then the commands start.
            let mut recorded = Ok(());
            let mut failed_at = 0;
            for (i, st) in p.stages.iter().enumerate() {
                failed_at = i;
                recorded = shared
                    .borrow_mut()
                    .audit
                    .command(&st.entry.decl.name, &st.bound.audit);
                if recorded.is_err() {
                    break;
                }
            }
            if recorded.is_ok() && !p.stages.is_empty() {
                recorded = shared.borrow_mut().audit.commit();
            }
            if let Err(e) = recorded {
                let name = p
                    .stages
                    .get(failed_at)
                    .map(|st| st.entry.decl.name.as_str())
                    .unwrap_or_default();
                let msg = format!(
                    "The transcript could not be written ({e}); '{name}' was not run because keyhole never runs unaudited."
                );
                let mut s = shared.borrow_mut();
                let _ = s.audit.refused(&msg);
                let rec =
                    ErrorRecord::new(msg.clone(), "AuditWriteFailed", ErrorCategory::WriteError)
                        .terminating();
                if ran_any {
                    let _ = s.audit.end(EndState::Failed);
                    s.sink.event(super::command::Event::Error(rec.clone()));
                    return RunOutcome::Failed(rec);
                }
                let _ = s.audit.end(EndState::Refused);
                return RunOutcome::Refused(Refusal {
                    message: msg,
                    id: "AuditWriteFailed".into(),
                    category: ErrorCategory::WriteError,
                    column: None,
                });
            }
            for st in p.stages.iter_mut() {
                if !st.bound.common.whatif {
                    st.inv = Some(st.entry.cmd.start(&st.bound.args));
                }
            }
            ran_any = true;
            run_pipeline(&mut p.stages, std::mem::take(&mut input), &shared, &env);
            let abort = shared.borrow_mut().abort.take();
            match abort {
                Some(Abort::Failed(rec)) => {
                    let mut s = shared.borrow_mut();
                    let tail = s.fmt.finish();
                    s.audit_text(&tail);
                    let _ = s.audit.end(EndState::Failed);
                    return RunOutcome::Failed(rec);
                }
                Some(Abort::Stopped) => {
                    let _ = shared.borrow_mut().audit.end(EndState::Stopped);
                    return RunOutcome::Stopped;
                }
                None => {}
            }
            if p.exit {
                let _ = shared.borrow_mut().audit.end(EndState::Completed);
                return RunOutcome::Exit;
            }
        }
        let mut s = shared.borrow_mut();
        let tail = s.fmt.finish();
        s.audit_text(&tail);
        if let Some(Abort::Failed(rec)) = s.abort.take() {
            let _ = s.audit.end(EndState::Failed);
            return RunOutcome::Failed(rec);
        }
        let _ = s.audit.end(EndState::Completed);
        RunOutcome::Completed {
            had_errors: s.had_errors,
        }
    }

    /// Parse, check and run one line of the language (SPEC §4.1).
    pub fn run_line(
        &mut self,
        line: &str,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome {
        if let Err(e) = self.audit.line(line) {
            return RunOutcome::Refused(Refusal {
                message: format!("The transcript could not be written ({e}); nothing was run because keyhole never runs unaudited."),
                id: "AuditWriteFailed".into(),
                category: ErrorCategory::WriteError,
                column: None,
            });
        }
        let prepared = Self::parse_line(line).and_then(|raw| self.prepare(raw, false));
        match prepared {
            Ok(p) => self.execute(p, Vec::new(), sink, cancel),
            Err(r) => self.refuse(r),
        }
    }

    /// Run structured pipelines (PSRP, IsScript false): statements run in order; `input` feeds
    /// the first command of the first statement. Nothing here reaches Invoke-Expression: the
    /// wrappers known clients put around a line (pypsrp's `execute_ps`) are recognised by the
    /// protocol layer (`psrp::pool::Plan`), which hands the engine the line itself.
    pub fn run_structured(
        &mut self,
        statements: &[StructuredPipeline],
        input: Vec<Value>,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> RunOutcome {
        if let Err(e) = self.audit.line(&render_structured(statements)) {
            return RunOutcome::Refused(Refusal {
                message: format!("The transcript could not be written ({e}); nothing was run because keyhole never runs unaudited."),
                id: "AuditWriteFailed".into(),
                category: ErrorCategory::WriteError,
                column: None,
            });
        }
        let raw: Vec<RawStatement> = statements
            .iter()
            .map(|p| {
                RawStatement::Pipeline(
                    p.commands
                        .iter()
                        .map(|c: &StructuredCommand| RawCommand {
                            name: c.name.clone(),
                            col: None,
                            args: structured_args(&c.args),
                        })
                        .collect(),
                )
            })
            .collect();
        match self.prepare(raw, !input.is_empty()) {
            Ok(p) => self.execute(p, input, sink, cancel),
            Err(r) => self.refuse(r),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::capability::EffectiveCapability;
    use crate::capability::ParamsGrant;
    use crate::config::SessionType;
    use crate::engine::table::apply_grant;
    use crate::engine::{
        BoundArgs, Command, CommandDecl, Ctx, Event, HostEnv, Invocation, NoAudit, ParamDecl,
        ParamType, PsObject, VecSink,
    };

    type Log = Arc<Mutex<Vec<String>>>;

    struct Fake {
        decl: CommandDecl,
        log: Log,
        fail: bool,
    }
    struct FakeRun {
        name: String,
        log: Log,
        fail: bool,
    }
    impl Invocation for FakeRun {
        fn process(
            &mut self,
            ctx: &mut Ctx<'_>,
            args: &BoundArgs,
            input: Option<Value>,
        ) -> Result<(), ErrorRecord> {
            if self.fail {
                return Err(ErrorRecord::new(
                    "boom",
                    "Boom",
                    ErrorCategory::NotSpecified,
                ));
            }
            match input {
                None => {
                    for i in 0..3 {
                        self.log
                            .lock()
                            .unwrap()
                            .push(format!("{} emits {i}", self.name));
                        ctx.output(Value::Int(i));
                        if self.name == "Cancel-Thing" {
                            ctx.cancel.cancel();
                        }
                    }
                }
                Some(v) => {
                    let name = args.strings("Name").join(",");
                    self.log.lock().unwrap().push(format!(
                        "{} got {} name={name}",
                        self.name,
                        v.to_ps_string()
                    ));
                    ctx.output(v);
                }
            }
            Ok(())
        }
    }
    impl Command for Fake {
        fn decl(&self) -> &CommandDecl {
            &self.decl
        }
        fn start(&self, _args: &BoundArgs) -> Box<dyn Invocation> {
            Box::new(FakeRun {
                name: self.decl.name.clone(),
                log: self.log.clone(),
                fail: self.fail,
            })
        }
    }

    /// A source with no built-ins (the tests add their own commands to the table).
    struct NoCommands;
    impl crate::engine::CommandSource for NoCommands {
        fn builtin(&self, _: &str) -> Option<Arc<dyn Command>> {
            None
        }
        fn builtins(&self) -> &[Arc<dyn Command>] {
            &[]
        }
        fn function(&self, _: &crate::config::ResolvedFunction) -> Arc<dyn Command> {
            unreachable!("no functions in these tests")
        }
        fn external(&self, _: &crate::config::ExternalCommandDef) -> Arc<dyn Command> {
            unreachable!("no external commands in these tests")
        }
    }

    fn session() -> (Session, Log) {
        let host = HostEnv {
            run_as: "nobody".into(),
            command_timeout: Duration::from_secs(1),
            max_output_bytes: 1000,
            endpoint: "e".into(),
            user: "u".into(),
            groups: Vec::new(),
        };
        let mut s = Session::new(
            &EffectiveCapability::default(),
            SessionOptions {
                session_type: SessionType::Empty,
                host,
                commands: Arc::new(NoCommands),
            },
            Box::new(NoAudit),
        );
        let log: Log = Arc::default();
        for (name, state, fail) in [
            ("Restart-Thing", true, false),
            ("Emit-Thing", false, false),
            ("Fail-Thing", false, true),
            ("Cancel-Thing", false, false),
        ] {
            let mut decl = CommandDecl::cmdlet(name, "Test", "test").param(
                ParamDecl::new("Name", ParamType::StringArray)
                    .position(0)
                    .by_property_name()
                    .alias("ServiceName"),
            );
            decl = decl.param(ParamDecl::new("InputObject", ParamType::Object).by_value());
            if state {
                decl = decl.changes_state();
            }
            let cmd: Arc<dyn Command> = Arc::new(Fake {
                decl,
                log: log.clone(),
                fail,
            });
            Arc::get_mut(&mut s.table)
                .unwrap()
                .entries
                .push(Arc::new(apply_grant(cmd, &ParamsGrant::All)));
        }
        (s, log)
    }

    fn sc(name: &str, args: Vec<(Option<&str>, Option<Value>)>) -> StructuredCommand {
        StructuredCommand {
            name: name.into(),
            args: args
                .into_iter()
                .map(|(n, v)| CommandArg {
                    name: n.map(str::to_string),
                    value: v,
                })
                .collect(),
        }
    }

    fn run(
        s: &mut Session,
        p: Vec<Vec<StructuredCommand>>,
        input: Vec<Value>,
    ) -> (RunOutcome, Vec<Event>) {
        let mut sink = VecSink::default();
        let st: Vec<StructuredPipeline> = p
            .into_iter()
            .map(|commands| StructuredPipeline { commands })
            .collect();
        let o = s.run_structured(&st, input, &mut sink, &CancelToken::new());
        (o, sink.0)
    }

    #[test]
    fn session_moves_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<Session>();
    }

    #[test]
    fn whatif_never_calls_the_command() {
        let (mut s, log) = session();
        let names = Value::Array(vec!["a".into(), "b".into()]);
        let (o, ev) = run(
            &mut s,
            vec![vec![sc(
                "Restart-Thing",
                vec![(None, Some(names)), (Some("WhatIf"), None)],
            )]],
            vec![],
        );
        assert_eq!(o, RunOutcome::Completed { had_errors: false });
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(
            ev,
            vec![Event::Information(
                "What if: Performing the operation \"Restart-Thing\" on target \"a, b\".".into()
            )]
        );
        // -Confirm:$false is accepted on a state-changing command and the command runs
        let (o, _) = run(
            &mut s,
            vec![vec![sc(
                "Restart-Thing",
                vec![(Some("Confirm"), Some(Value::Bool(false)))],
            )]],
            vec![],
        );
        assert_eq!(o, RunOutcome::Completed { had_errors: false });
        assert_eq!(log.lock().unwrap().len(), 3);
        // ... but not on one that changes nothing
        let (o, _) = run(
            &mut s,
            vec![vec![sc("Emit-Thing", vec![(Some("WhatIf"), None)])]],
            vec![],
        );
        assert!(matches!(o, RunOutcome::Refused(r) if r.id == "NamedParameterNotFound,Emit-Thing"));
    }

    #[test]
    fn whatif_with_pipeline_input_names_the_bound_values() {
        let (mut s, log) = session();
        let a = PsObject::new("T").with("Name", "nginx").into_value();
        let (o, ev) = run(
            &mut s,
            vec![vec![sc("Restart-Thing", vec![(Some("WhatIf"), None)])]],
            vec![a, Value::Int(5)],
        );
        assert_eq!(o, RunOutcome::Completed { had_errors: false });
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(
            ev,
            vec![
                Event::Information(
                    "What if: Performing the operation \"Restart-Thing\" on target \"nginx\"."
                        .into()
                ),
                Event::Information(
                    "What if: Performing the operation \"Restart-Thing\" on target \"5\".".into()
                ),
            ]
        );
    }

    #[test]
    fn objects_stream_from_stage_to_stage() {
        let (mut s, log) = session();
        let (o, ev) = run(
            &mut s,
            vec![vec![sc("Emit-Thing", vec![]), sc("Restart-Thing", vec![])]],
            vec![],
        );
        assert_eq!(o, RunOutcome::Completed { had_errors: false });
        assert_eq!(
            *log.lock().unwrap(),
            vec![
                "Emit-Thing emits 0",
                "Restart-Thing got 0 name=",
                "Emit-Thing emits 1",
                "Restart-Thing got 1 name=",
                "Emit-Thing emits 2",
                "Restart-Thing got 2 name=",
            ]
        );
        assert_eq!(ev.len(), 3);
    }

    #[test]
    fn by_property_name_binding_uses_names_and_aliases() {
        let (mut s, log) = session();
        let a = PsObject::new("T").with("Name", "nginx").into_value();
        let b = PsObject::new("T").with("ServiceName", "cups").into_value();
        let (o, _) = run(&mut s, vec![vec![sc("Restart-Thing", vec![])]], vec![a, b]);
        assert_eq!(o, RunOutcome::Completed { had_errors: false });
        let l = log.lock().unwrap();
        assert!(
            l[0].ends_with("name=nginx") && l[1].ends_with("name=cups"),
            "{l:?}"
        );
    }

    #[test]
    fn cancellation_between_objects_stops() {
        let (mut s, log) = session();
        let (o, ev) = run(
            &mut s,
            vec![vec![
                sc("Cancel-Thing", vec![]),
                sc("Restart-Thing", vec![]),
            ]],
            vec![],
        );
        assert_eq!(o, RunOutcome::Stopped);
        assert_eq!(ev, vec![Event::Output(Value::Int(0))]);
        assert_eq!(
            log.lock()
                .unwrap()
                .iter()
                .filter(|l| l.starts_with("Restart-Thing"))
                .count(),
            1
        );
    }

    #[test]
    fn terminating_error_stops_the_line() {
        let (mut s, log) = session();
        let (o, ev) = run(
            &mut s,
            vec![
                vec![sc("Fail-Thing", vec![])],
                vec![sc("Emit-Thing", vec![])],
            ],
            vec![],
        );
        match o {
            RunOutcome::Failed(r) => assert!(r.terminating && r.message == "boom"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ev.len(), 1);
        assert!(
            log.lock().unwrap().is_empty(),
            "the second statement did not run"
        );
    }

    #[test]
    fn structured_rendering_for_the_transcript() {
        let p = StructuredPipeline {
            commands: vec![
                sc(
                    "Get-Service",
                    vec![(
                        Some("Name"),
                        Some(Value::Array(vec!["a b".into(), "c".into()])),
                    )],
                ),
                sc(
                    "Select-Object",
                    vec![(None, Some("Name".into())), (Some("Unique"), None)],
                ),
            ],
        };
        assert_eq!(
            render_structured(&[p]),
            "Get-Service -Name 'a b',c | Select-Object Name -Unique"
        );
    }
}
