//! Shared fixtures of the engine tests: the capability the engine tests and the refused corpus
//! (`tests/corpus/engine_refused.txt`) assume, a recording audit, and helpers to run lines.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhole::capability::{
    CommandGrant, EffectiveCapability, ExternalGrant, FunctionGrant, ParamGrant, ParamsGrant,
    ValueConstraint,
};
use keyhole::config::{
    ExternalCommandDef, FunctionDef, FunctionParam, FunctionParamType, OutputFormat,
    ResolvedFunction, SessionType,
};
use keyhole::engine::{
    Audit, BoundArgs, CancelToken, CommandArg, EndState, Event, HostEnv, RunOutcome, Session,
    SessionOptions, StructuredCommand, StructuredPipeline, Value, VecSink,
};

fn only(params: &[(&str, ValueConstraint)]) -> ParamsGrant {
    ParamsGrant::Only(
        params
            .iter()
            .map(|(n, c)| {
                (
                    n.to_lowercase(),
                    ParamGrant {
                        name: n.to_string(),
                        constraint: c.clone(),
                    },
                )
            })
            .collect(),
    )
}

fn grant(cap: &mut EffectiveCapability, name: &str, params: ParamsGrant) {
    cap.cmdlets.insert(
        name.to_lowercase(),
        CommandGrant {
            name: name.to_string(),
            params,
        },
    );
}

fn function(name: &str, params: Vec<(String, FunctionParam)>) -> ResolvedFunction {
    ResolvedFunction {
        name: name.to_string(),
        def: FunctionDef {
            synopsis: format!("{name} (test function)"),
            program: "/usr/bin/true".into(),
            args: Vec::new(),
            output: OutputFormat::Lines,
            timeout: None,
            capabilities: Vec::new(),
            environment: BTreeMap::new(),
            allow_unsafe: false,
            parameters: toml::Table::new(),
        },
        params,
        capability: "TestRole".into(),
    }
}

fn fparam(
    ty: FunctionParamType,
    mandatory: bool,
    position: Option<u32>,
    pattern: Option<&str>,
) -> FunctionParam {
    FunctionParam {
        ty,
        mandatory,
        position,
        validate_set: None,
        validate_pattern: pattern.map(str::to_string),
        help: "test parameter".into(),
        allow_leading_dash: false,
    }
}

/// The capability every engine test and the refused corpus assume:
/// - restricted-remote-server defaults (Get-Command, Get-Help, Get-FormatData, Out-Default,
///   Exit-PSSession, Clear-Host, Select-Object, Measure-Object; aliases cls clear exsn gcm measure select);
/// - Write-Output with only -InputObject (validate_set nginx, cups) and -NoEnumerate;
/// - Get-Date with only -Format (any value);
/// - Where-Object, Sort-Object, Format-Table, Format-List, Out-String, ConvertTo-Json, Get-Member: whole;
/// - function Get-Site -Name (mandatory, position 0) constrained by the role to the pattern `acme-[a-z]+`;
/// - function Get-DiskUsage -Mount (position 0) with its own validate_pattern `/(srv|var)(/[a-z0-9_-]+)*`;
/// - external commands /usr/bin/uptime (no arguments) and /usr/bin/systemd-analyze (arguments `blame`, `time`);
/// - alias wo → Write-Output.
pub fn capability() -> EffectiveCapability {
    let mut cap = EffectiveCapability::default();
    grant(
        &mut cap,
        "Write-Output",
        only(&[
            (
                "InputObject",
                ValueConstraint::Set(vec!["nginx".into(), "cups".into()]),
            ),
            ("NoEnumerate", ValueConstraint::Any),
        ]),
    );
    grant(
        &mut cap,
        "Get-Date",
        only(&[("Format", ValueConstraint::Any)]),
    );
    for c in [
        "Where-Object",
        "Sort-Object",
        "Format-Table",
        "Format-List",
        "Out-String",
        "ConvertTo-Json",
        "Get-Member",
    ] {
        grant(&mut cap, c, ParamsGrant::All);
    }
    let site = function(
        "Get-Site",
        vec![(
            "Name".into(),
            fparam(FunctionParamType::String, true, Some(0), None),
        )],
    );
    cap.functions.insert(
        "get-site".into(),
        FunctionGrant {
            function: site,
            params: only(&[(
                "Name",
                ValueConstraint::Patterns(vec!["acme-[a-z]+".into()]),
            )]),
        },
    );
    let disk = function(
        "Get-DiskUsage",
        vec![(
            "Mount".into(),
            fparam(
                FunctionParamType::String,
                false,
                Some(0),
                Some("/(srv|var)(/[a-z0-9_-]+)*"),
            ),
        )],
    );
    cap.functions.insert(
        "get-diskusage".into(),
        FunctionGrant {
            function: disk,
            params: ParamsGrant::All,
        },
    );
    for (path, args) in [
        ("/usr/bin/uptime", vec![]),
        (
            "/usr/bin/systemd-analyze",
            vec!["blame".to_string(), "time".to_string()],
        ),
    ] {
        cap.external.insert(
            path.into(),
            ExternalGrant {
                def: ExternalCommandDef {
                    path: path.into(),
                    arguments: args,
                    timeout: None,
                    capabilities: Vec::new(),
                    environment: BTreeMap::new(),
                    allow_unsafe: false,
                    synopsis: String::new(),
                },
            },
        );
    }
    cap.aliases.insert(
        "wo".into(),
        keyhole::capability::AliasGrant {
            alias: "wo".into(),
            target: "Write-Output".into(),
        },
    );
    cap.roles.push("TestRole".into());
    cap
}

/// What a recording audit saw.
#[derive(Debug, Default, Clone)]
pub struct Record {
    pub lines: Vec<String>,
    pub commands: Vec<(String, BoundArgs)>,
    pub refused: Vec<String>,
    pub output: String,
    pub ends: Vec<String>,
    /// Every call in order: "line", "command NAME", "refused", "output", "end STATE", "commit".
    pub events: Vec<String>,
    /// Make `commit` fail (a disk that cannot sync).
    pub fail_commit: bool,
}

pub struct RecordingAudit(pub Arc<Mutex<Record>>, pub bool);

impl Audit for RecordingAudit {
    fn line(&mut self, line: &str) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        r.lines.push(line.to_string());
        r.events.push("line".into());
        Ok(())
    }
    fn command(&mut self, name: &str, args: &BoundArgs) -> std::io::Result<()> {
        if self.1 {
            return Err(std::io::Error::other("disk full"));
        }
        let mut r = self.0.lock().unwrap();
        r.commands.push((name.to_string(), args.clone()));
        r.events.push(format!("command {name}"));
        Ok(())
    }
    fn refused(&mut self, reason: &str) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        r.refused.push(reason.to_string());
        r.events.push("refused".into());
        Ok(())
    }
    fn output(&mut self, text: &str) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        r.output.push_str(text);
        r.events.push("output".into());
        Ok(())
    }
    fn end(&mut self, state: EndState) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        r.ends.push(state.to_string());
        r.events.push(format!("end {state}"));
        Ok(())
    }
    fn commit(&mut self) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        if r.fail_commit {
            return Err(std::io::Error::other("cannot sync"));
        }
        r.events.push("commit".into());
        Ok(())
    }
}

pub fn host() -> HostEnv {
    HostEnv {
        run_as: "nobody".into(),
        command_timeout: Duration::from_secs(10),
        max_output_bytes: 1 << 20,
        endpoint: "test".into(),
        user: "alice".into(),
        groups: vec!["ops".into()],
    }
}

pub fn session_with(cap: &EffectiveCapability, ty: SessionType) -> (Session, Arc<Mutex<Record>>) {
    let rec = Arc::new(Mutex::new(Record::default()));
    let s = Session::new(
        cap,
        SessionOptions {
            session_type: ty,
            host: host(),
            commands: keyhole::commands::source(),
        },
        Box::new(RecordingAudit(rec.clone(), false)),
    );
    (s, rec)
}

pub fn session() -> (Session, Arc<Mutex<Record>>) {
    session_with(&capability(), SessionType::RestrictedRemoteServer)
}

pub fn line(s: &mut Session, text: &str) -> (RunOutcome, Vec<Event>) {
    let mut sink = VecSink::default();
    let out = s.run_line(text, &mut sink, &CancelToken::new());
    (out, sink.0)
}

/// A structured command: `("Name", [(Some("Param"), Some(value)), (None, Some(positional))])`.
pub fn sc(name: &str, args: Vec<(Option<&str>, Option<Value>)>) -> StructuredCommand {
    StructuredCommand {
        name: name.to_string(),
        args: args
            .into_iter()
            .map(|(n, v)| CommandArg {
                name: n.map(str::to_string),
                value: v,
            })
            .collect(),
    }
}

pub fn run(
    s: &mut Session,
    cmds: Vec<StructuredCommand>,
    input: Vec<Value>,
) -> (RunOutcome, Vec<Event>) {
    let mut sink = VecSink::default();
    let out = s.run_structured(
        &[StructuredPipeline { commands: cmds }],
        input,
        &mut sink,
        &CancelToken::new(),
    );
    (out, sink.0)
}

pub fn outputs(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::Output(v) = e {
                Some(v.clone())
            } else {
                None
            }
        })
        .collect()
}

pub fn errors(events: &[Event]) -> Vec<keyhole::engine::ErrorRecord> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::Error(r) = e {
                Some(r.clone())
            } else {
                None
            }
        })
        .collect()
}

pub fn st(v: &str) -> Option<Value> {
    Some(Value::String(v.to_string()))
}
