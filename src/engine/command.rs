//! What a command is: its declaration (read by binding, help, Get-Command and PSRP command
//! metadata alike) and the trait every command implements.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use super::value::Value;
use crate::config::{ExternalCommandDef, ResolvedFunction};

/// The type of a parameter; binding converts arguments to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    StringArray,
    Int,
    IntArray,
    Double,
    Bool,
    Switch,
    DateTime,
    /// Any value (InputObject and the like).
    Object,
    ObjectArray,
}

impl ParamType {
    /// The .NET type name shown by Get-Command / Get-Help / command metadata.
    pub fn dotnet_name(&self) -> &'static str {
        match self {
            ParamType::String => "System.String",
            ParamType::StringArray => "System.String[]",
            ParamType::Int => "System.Int32",
            ParamType::IntArray => "System.Int32[]",
            ParamType::Double => "System.Double",
            ParamType::Bool => "System.Boolean",
            ParamType::Switch => "System.Management.Automation.SwitchParameter",
            ParamType::DateTime => "System.DateTime",
            ParamType::Object => "System.Management.Automation.PSObject",
            ParamType::ObjectArray => "System.Management.Automation.PSObject[]",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PipelineInput {
    pub by_value: bool,
    pub by_property_name: bool,
}

/// One parameter, declared once.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    pub ty: ParamType,
    pub mandatory: bool,
    pub position: Option<usize>,
    pub pipeline: PipelineInput,
    pub aliases: Vec<String>,
    pub help: String,
    /// Values allowed by the command itself (case-insensitive); empty: no set.
    pub set: Vec<String>,
    /// Anchored, case-insensitive patterns (any may match); empty: no pattern. Role constraints
    /// are applied on top of these by the command table.
    pub patterns: Vec<String>,
    /// Takes every remaining positional argument (PowerShell's ValueFromRemainingArguments):
    /// an external command's `ArgumentList` receives all its arguments through it.
    pub remaining: bool,
    /// A value (each element of an array) whose text begins with `-` after leading white space
    /// is refused before anything runs: a declared function's placeholder parameter without
    /// `allow_leading_dash = true` (SPEC §2.3).
    pub no_leading_dash: bool,
}

impl ParamDecl {
    pub fn new(name: &str, ty: ParamType) -> Self {
        ParamDecl {
            name: name.to_string(),
            ty,
            mandatory: false,
            position: None,
            pipeline: PipelineInput::default(),
            aliases: Vec::new(),
            help: String::new(),
            set: Vec::new(),
            patterns: Vec::new(),
            remaining: false,
            no_leading_dash: false,
        }
    }
    pub fn mandatory(mut self) -> Self {
        self.mandatory = true;
        self
    }
    pub fn position(mut self, p: usize) -> Self {
        self.position = Some(p);
        self
    }
    pub fn by_value(mut self) -> Self {
        self.pipeline.by_value = true;
        self
    }
    pub fn by_property_name(mut self) -> Self {
        self.pipeline.by_property_name = true;
        self
    }
    pub fn alias(mut self, a: &str) -> Self {
        self.aliases.push(a.to_string());
        self
    }
    pub fn help(mut self, h: &str) -> Self {
        self.help = h.to_string();
        self
    }
    /// Mark as taking the remaining positional arguments.
    pub fn remaining(mut self) -> Self {
        self.remaining = true;
        self
    }
    pub fn set(mut self, values: &[&str]) -> Self {
        self.set = values.iter().map(|s| s.to_string()).collect();
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Cmdlet,
    Function,
    Application,
    Alias,
}

impl CommandKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CommandKind::Cmdlet => "Cmdlet",
            CommandKind::Function => "Function",
            CommandKind::Application => "Application",
            CommandKind::Alias => "Alias",
        }
    }
}

/// A command's declaration: everything help, Get-Command, command metadata and binding need.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandDecl {
    pub name: String,
    pub kind: CommandKind,
    pub synopsis: String,
    pub params: Vec<ParamDecl>,
    /// Changes state: `-WhatIf`/`-Confirm` are accepted.
    pub changes_state: bool,
    /// Output type names, for Get-Command's OutputType.
    pub output_type: Vec<String>,
    /// Module / namespace name shown by Get-Command (e.g. "Microsoft.PowerShell.Core", "keyhole").
    pub module: String,
    /// Applications: the absolute path.
    pub path: Option<String>,
}

impl CommandDecl {
    pub fn cmdlet(name: &str, module: &str, synopsis: &str) -> Self {
        CommandDecl {
            name: name.to_string(),
            kind: CommandKind::Cmdlet,
            synopsis: synopsis.to_string(),
            params: Vec::new(),
            changes_state: false,
            output_type: Vec::new(),
            module: module.to_string(),
            path: None,
        }
    }
    pub fn param(mut self, p: ParamDecl) -> Self {
        self.params.push(p);
        self
    }
    pub fn changes_state(mut self) -> Self {
        self.changes_state = true;
        self
    }
    pub fn outputs(mut self, t: &str) -> Self {
        self.output_type.push(t.to_string());
        self
    }
    pub fn find_param(&self, name: &str) -> Option<&ParamDecl> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

/// PowerShell's ErrorCategory names (subset keyhole uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCategory {
    NotSpecified,
    InvalidArgument,
    InvalidData,
    InvalidOperation,
    ObjectNotFound,
    PermissionDenied,
    ParserError,
    ResourceUnavailable,
    OperationStopped,
    OperationTimeout,
    LimitsExceeded,
    NotImplemented,
    NotInstalled,
    CloseError,
    OpenError,
    ReadError,
    WriteError,
    MetadataError,
    SecurityError,
}

impl ErrorCategory {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCategory::NotSpecified => "NotSpecified",
            ErrorCategory::InvalidArgument => "InvalidArgument",
            ErrorCategory::InvalidData => "InvalidData",
            ErrorCategory::InvalidOperation => "InvalidOperation",
            ErrorCategory::ObjectNotFound => "ObjectNotFound",
            ErrorCategory::PermissionDenied => "PermissionDenied",
            ErrorCategory::ParserError => "ParserError",
            ErrorCategory::ResourceUnavailable => "ResourceUnavailable",
            ErrorCategory::OperationStopped => "OperationStopped",
            ErrorCategory::OperationTimeout => "OperationTimeout",
            ErrorCategory::LimitsExceeded => "LimitsExceeded",
            ErrorCategory::NotImplemented => "NotImplemented",
            ErrorCategory::NotInstalled => "NotInstalled",
            ErrorCategory::CloseError => "CloseError",
            ErrorCategory::OpenError => "OpenError",
            ErrorCategory::ReadError => "ReadError",
            ErrorCategory::WriteError => "WriteError",
            ErrorCategory::MetadataError => "MetadataError",
            ErrorCategory::SecurityError => "SecurityError",
        }
    }
    /// Numeric value as in System.Management.Automation.ErrorCategory (CLIXML).
    pub fn code(&self) -> i32 {
        match self {
            ErrorCategory::NotSpecified => 0,
            ErrorCategory::OpenError => 1,
            ErrorCategory::CloseError => 2,
            ErrorCategory::InvalidArgument => 5,
            ErrorCategory::InvalidData => 6,
            ErrorCategory::InvalidOperation => 7,
            ErrorCategory::NotImplemented => 9,
            ErrorCategory::ObjectNotFound => 13,
            ErrorCategory::OperationStopped => 14,
            ErrorCategory::OperationTimeout => 15,
            ErrorCategory::ParserError => 17,
            ErrorCategory::PermissionDenied => 18,
            ErrorCategory::ResourceUnavailable => 19,
            ErrorCategory::ReadError => 22,
            ErrorCategory::WriteError => 23,
            ErrorCategory::MetadataError => 10,
            ErrorCategory::SecurityError => 25,
            ErrorCategory::LimitsExceeded => 26,
            ErrorCategory::NotInstalled => 29,
        }
    }
}

/// An error record (message, FullyQualifiedErrorId, category, target object).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRecord {
    pub message: String,
    /// e.g. "CommandNotFoundException" or "ParameterArgumentValidationError,Restart-Service".
    pub fully_qualified_error_id: String,
    pub category: ErrorCategory,
    pub target: Option<Value>,
    /// The .NET exception type clients see, e.g. "System.Management.Automation.CommandNotFoundException".
    pub exception_type: String,
    /// The command that wrote it, if any.
    pub command: Option<String>,
    /// Set when the error stops the whole pipeline.
    pub terminating: bool,
}

impl ErrorRecord {
    pub fn new(message: impl Into<String>, id: impl Into<String>, category: ErrorCategory) -> Self {
        ErrorRecord {
            message: message.into(),
            fully_qualified_error_id: id.into(),
            category,
            target: None,
            exception_type: "System.Management.Automation.RuntimeException".to_string(),
            command: None,
            terminating: false,
        }
    }
    pub fn target(mut self, v: impl Into<Value>) -> Self {
        self.target = Some(v.into());
        self
    }
    pub fn exception(mut self, t: &str) -> Self {
        self.exception_type = t.to_string();
        self
    }
    pub fn terminating(mut self) -> Self {
        self.terminating = true;
        self
    }
}

/// What the engine emits while running; a protocol adapter consumes these without knowing the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Output(Value),
    Error(ErrorRecord),
    Warning(String),
    Verbose(String),
    Debug(String),
    Information(String),
}

pub trait EventSink {
    fn event(&mut self, e: Event);
}

/// Collects events (tests, `keyhole run`).
#[derive(Debug, Default)]
pub struct VecSink(pub Vec<Event>);
impl EventSink for VecSink {
    fn event(&mut self, e: Event) {
        self.0.push(e);
    }
}

/// The cancellation flag of a line (defined by `sandbox`, which depends on nothing in the crate
/// and polls it while a program runs).
pub use crate::sandbox::CancelToken;

/// Bound parameter values of one invocation, keyed by the declared (canonical) parameter name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoundArgs {
    pub values: Vec<(String, Value)>,
    /// Parameters whose values passed a set or pattern (the command's own or the role's): a
    /// command takes them literally and never expands them as wildcards, so `ng*nx` validated
    /// against the pattern `ng.nx` names only a unit called `ng*nx`, not every `ng…nx`.
    pub literal: Vec<String>,
}

impl BoundArgs {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// The parameter's values passed a set or pattern: take them literally (see `literal`).
    pub fn is_literal(&self, name: &str) -> bool {
        self.literal.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
    /// Mark `name` literal (the engine does, for every constrained parameter it binds).
    pub fn mark_literal(&mut self, name: &str) {
        if !self.is_literal(name) {
            self.literal.push(name.to_string());
        }
    }
    /// A switch is on when bound to true (or bound with no value).
    pub fn switch(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Value::Bool(true)))
    }
    pub fn string(&self, name: &str) -> Option<String> {
        match self.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.to_ps_string()),
        }
    }
    /// A string[] parameter as strings (a scalar becomes one element).
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(Value::to_ps_string).collect(),
            Some(v) => vec![v.to_ps_string()],
        }
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(Value::Int(i)) => Some(*i),
            Some(Value::Double(d)) => Some(*d as i64),
            _ => None,
        }
    }
    pub fn ints(&self, name: &str) -> Vec<i64> {
        match self.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| {
                    if let Value::Int(i) = v {
                        Some(*i)
                    } else {
                        None
                    }
                })
                .collect(),
            Some(Value::Int(i)) => vec![*i],
            _ => Vec::new(),
        }
    }
    pub fn set(&mut self, name: &str, v: Value) {
        if let Some(slot) = self
            .values
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            slot.1 = v;
        } else {
            self.values.push((name.to_string(), v));
        }
    }
}

/// What a session knows about the host it runs programs on (from the endpoint and [limits]).
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// Unix account programs run as (the endpoint's `run_as`), looked up at the session's first
    /// program and then kept for the session.
    pub run_as: crate::sandbox::RunAs,
    pub command_timeout: Duration,
    pub max_output_bytes: u64,
    /// Endpoint name, user and groups (for $PSSenderInfo-like display and Get-PSSessionCapability).
    pub endpoint: String,
    pub user: String,
    pub groups: Vec<String>,
}

/// A visible command as Get-Command/Get-Help/command metadata see it.
#[derive(Debug, Clone)]
pub struct VisibleCommand {
    pub decl: CommandDecl,
    /// For aliases: the resolved command name.
    pub resolved: Option<String>,
}

/// What a running command may touch: its output, the error and other streams, cancellation,
/// the host environment, and the list of visible commands (for Get-Command/Get-Help).
pub struct Ctx<'a> {
    pub host: &'a HostEnv,
    pub cancel: &'a CancelToken,
    pub visible: &'a [VisibleCommand],
    /// Downstream: output objects go to the next command or the sink.
    pub out: &'a mut dyn FnMut(Value),
    /// Error, warning, verbose, ... events.
    pub events: &'a mut dyn EventSink,
    /// Set when any error record was written (makes the line exit 1).
    pub had_errors: &'a mut bool,
}

impl Ctx<'_> {
    pub fn output(&mut self, v: Value) {
        (self.out)(v);
    }
    pub fn write_error(&mut self, e: ErrorRecord) {
        *self.had_errors = true;
        self.events.event(Event::Error(e));
    }
    pub fn warning(&mut self, s: impl Into<String>) {
        self.events.event(Event::Warning(s.into()));
    }
    pub fn verbose(&mut self, s: impl Into<String>) {
        self.events.event(Event::Verbose(s.into()));
    }
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// One command invocation inside a running pipeline.
pub trait Invocation {
    /// Called once per pipeline input object (`input` is Some, `args` has the parameters bound
    /// from it merged in) or once with `input` None when the command is first in its pipeline.
    /// Returning Err stops the whole pipeline (a terminating error).
    #[allow(clippy::result_large_err)] // an ErrorRecord is the natural terminating error; rare
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord>;
    /// Called once after the last input.
    #[allow(clippy::result_large_err)]
    fn end(&mut self, _ctx: &mut Ctx<'_>) -> Result<(), ErrorRecord> {
        Ok(())
    }
}

/// A command the engine can run. Each declares its parameters once in [`CommandDecl`].
pub trait Command: Send + Sync {
    fn decl(&self) -> &CommandDecl;
    /// Begin an invocation with the arguments bound from the command line.
    fn start(&self, args: &BoundArgs) -> Box<dyn Invocation>;
}

/// Where a session's commands come from. `commands` implements it (its built-ins are built once
/// per process); the engine only ever sees this trait, so it never imports `commands`.
pub trait CommandSource: Send + Sync {
    /// The built-in cmdlet named `name` (ASCII case-insensitive).
    fn builtin(&self, name: &str) -> Option<Arc<dyn Command>>;
    /// Every built-in cmdlet.
    fn builtins(&self) -> &[Arc<dyn Command>];
    /// The command for a function a role capability declares.
    fn function(&self, f: &ResolvedFunction) -> Arc<dyn Command>;
    /// The command for an external command a role capability makes visible.
    fn external(&self, def: &ExternalCommandDef) -> Arc<dyn Command>;
}
