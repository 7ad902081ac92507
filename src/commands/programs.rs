//! Declared functions and external commands: typed parameters → argv (never a shell), run
//! through the sandbox, output parsed as lines, JSON or a table.
//!
//! Placeholder rules for a function's `args` (documented in the README):
//! - `{Name}` names a declared parameter (case-insensitive); any other `{...}` text is literal.
//!   Nothing is ever split or re-parsed: a value with spaces, quotes, `;` or a newline is one
//!   argument.
//! - An argument that is exactly `{Name}`: a string or int becomes that one argument; a
//!   `string[]`/`int[]` becomes one argument per element; an unbound optional parameter's
//!   argument is omitted; a `bool` becomes `true`/`false` (omitted when unbound); a `switch` is
//!   always present, `true` when given and `false` when not.
//! - A placeholder inside a longer argument (`--unit={Unit}`) is replaced in place, the whole
//!   argument being omitted when that parameter is unbound; arrays are joined with `,`.
#![forbid(unsafe_code)]
// `Invocation` fixes `Result<(), ErrorRecord>` as the result type.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ExternalCommandDef, FunctionParamType, OutputFormat, ResolvedFunction};
use crate::engine::{
    begins_with_dash, BoundArgs, Command, CommandDecl, CommandKind, Ctx, ErrorCategory,
    ErrorRecord, Invocation, ParamDecl, ParamType, PsObject, Value,
};
use crate::lang::fold::eq_simple_fold;
use crate::lang::pattern::{AnchoredPattern, Case, PatternError};
use crate::sandbox::{self, ProgramResult, ProgramSpec, Termination};

/// Lines of standard error quoted in a failure message.
const STDERR_LINES_IN_ERROR: usize = 5;
/// Characters of standard error quoted in a failure message.
const STDERR_CHARS_IN_ERROR: usize = 1000;
/// Lines of standard error shown as warnings after a successful run.
const MAX_STDERR_WARNINGS: usize = 20;
/// Deepest JSON nesting turned into objects; deeper parts stay JSON text.
const MAX_JSON_DEPTH: usize = 64;
/// Longest integer column value converted to a number in table output.
const MAX_INT_DIGITS: usize = 18;

/// The name a parameter of the declared type gets in the engine.
fn param_type(t: FunctionParamType) -> ParamType {
    match t {
        FunctionParamType::String => ParamType::String,
        FunctionParamType::Int => ParamType::Int,
        FunctionParamType::Bool => ParamType::Bool,
        FunctionParamType::Switch => ParamType::Switch,
        FunctionParamType::StringArray => ParamType::StringArray,
        FunctionParamType::IntArray => ParamType::IntArray,
    }
}

/// One piece of a templated argument.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// Canonical parameter name.
    Param(String),
}

/// One argument of a function's `args`.
#[derive(Debug, Clone, PartialEq)]
enum ArgTemplate {
    Literal(String),
    /// The whole argument is `{Name}`.
    Whole(String, ParamType),
    /// Placeholders inside literal text.
    Mixed(Vec<Piece>),
}

fn parse_template(arg: &str, params: &[ParamDecl]) -> ArgTemplate {
    let lookup = |name: &str| params.iter().find(|p| p.name.eq_ignore_ascii_case(name));
    if let Some(inner) = arg.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        if let Some(p) = lookup(inner) {
            return ArgTemplate::Whole(p.name.clone(), p.ty);
        }
    }
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some((before, after_open)) = rest.split_once('{') {
        match after_open.split_once('}') {
            Some((name, after_close)) if lookup(name).is_some() => {
                text.push_str(before);
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                if let Some(p) = lookup(name) {
                    pieces.push(Piece::Param(p.name.clone()));
                }
                rest = after_close;
            }
            _ => {
                text.push_str(before);
                text.push('{');
                rest = after_open;
            }
        }
    }
    text.push_str(rest);
    if pieces.is_empty() {
        return ArgTemplate::Literal(text);
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    ArgTemplate::Mixed(pieces)
}

/// A scalar value as one argument's text.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::Bool(true) => "true".into(),
        Value::Bool(false) => "false".into(),
        other => other.to_ps_string(),
    }
}

/// The arguments a bound parameter contributes; None: unbound (argument omitted).
fn param_values(args: &BoundArgs, name: &str, ty: ParamType) -> Option<Vec<String>> {
    if ty == ParamType::Switch {
        return Some(vec![if args.switch(name) {
            "true".into()
        } else {
            "false".into()
        }]);
    }
    match args.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(items.iter().map(scalar_text).collect()),
        Some(v) => Some(vec![scalar_text(v)]),
    }
}

/// Build argv[1..] from the templates and bound values.
fn build_argv(templates: &[ArgTemplate], params: &[ParamDecl], args: &BoundArgs) -> Vec<String> {
    let ty_of = |name: &str| {
        params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.ty)
            .unwrap_or(ParamType::String)
    };
    let mut argv = Vec::new();
    for t in templates {
        match t {
            ArgTemplate::Literal(s) => argv.push(s.clone()),
            ArgTemplate::Whole(name, ty) => {
                if let Some(values) = param_values(args, name, *ty) {
                    argv.extend(values);
                }
            }
            ArgTemplate::Mixed(pieces) => {
                let mut out = String::new();
                let mut omitted = false;
                for p in pieces {
                    match p {
                        Piece::Text(s) => out.push_str(s),
                        Piece::Param(name) => match param_values(args, name, ty_of(name)) {
                            Some(values) => out.push_str(&values.join(",")),
                            None => omitted = true,
                        },
                    }
                }
                if !omitted {
                    argv.push(out);
                }
            }
        }
    }
    argv
}

/// How output becomes objects, fed chunk by chunk.
enum OutputParser {
    Lines {
        partial: Vec<u8>,
    },
    Table {
        partial: Vec<u8>,
        header: Option<Vec<String>>,
        columns_fixed: bool,
    },
    Json {
        buf: Vec<u8>,
    },
}

impl OutputParser {
    fn new(f: OutputFormat) -> Self {
        match f {
            OutputFormat::Lines => OutputParser::Lines {
                partial: Vec::new(),
            },
            OutputFormat::Table => OutputParser::Table {
                partial: Vec::new(),
                header: None,
                columns_fixed: false,
            },
            OutputFormat::Json => OutputParser::Json { buf: Vec::new() },
        }
    }

    fn feed(&mut self, chunk: &[u8], emit: &mut dyn FnMut(Value)) {
        match self {
            OutputParser::Lines { partial } => {
                partial.extend_from_slice(chunk);
                for line in take_lines(partial) {
                    emit(Value::String(line));
                }
            }
            OutputParser::Table {
                partial,
                header,
                columns_fixed,
            } => {
                partial.extend_from_slice(chunk);
                for line in take_lines(partial) {
                    table_line(&line, header, columns_fixed, emit);
                }
            }
            OutputParser::Json { buf } => buf.extend_from_slice(chunk),
        }
    }

    /// End of output; `complete` is false when the output was cut (the last partial line is dropped).
    fn finish(&mut self, complete: bool, emit: &mut dyn FnMut(Value)) -> Result<(), String> {
        match self {
            OutputParser::Lines { partial } => {
                if complete && !partial.is_empty() {
                    emit(Value::String(line_text(partial)));
                }
                partial.clear();
                Ok(())
            }
            OutputParser::Table {
                partial,
                header,
                columns_fixed,
            } => {
                if complete && !partial.is_empty() {
                    let line = line_text(partial);
                    table_line(&line, header, columns_fixed, emit);
                }
                partial.clear();
                Ok(())
            }
            OutputParser::Json { buf } => {
                if !complete {
                    return Ok(());
                }
                parse_json(buf, emit)
            }
        }
    }
}

fn line_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.strip_suffix('\r').unwrap_or(&s).to_string()
}

/// Remove and return every complete line in `partial`.
fn take_lines(partial: &mut Vec<u8>) -> Vec<String> {
    let Some(last_nl) = partial.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let rest = partial.split_off(last_nl + 1);
    let complete = std::mem::replace(partial, rest);
    let body = complete.strip_suffix(b"\n").unwrap_or(&complete);
    body.split(|b| *b == b'\n').map(line_text).collect()
}

/// Split into at most `n` columns; the last takes the rest of the line.
fn split_columns(line: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if out.len() + 1 >= n {
            out.push(rest.to_string());
            break;
        }
        match rest.split_once(char::is_whitespace) {
            Some((first, remainder)) => {
                out.push(first.to_string());
                rest = remainder.trim_start();
            }
            None => {
                out.push(rest.to_string());
                break;
            }
        }
    }
    out
}

fn table_value(s: &str) -> Value {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty()
        && digits.len() <= MAX_INT_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Int(i);
        }
    }
    Value::String(s.to_string())
}

/// Header words; a word starting with a lower-case letter one space after an upper-case
/// header word continues it (`Mounted on`).
fn header_names(line: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = line.trim();
    let mut gap = 0usize;
    while !rest.is_empty() {
        let (word, remainder) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let continues = gap == 1 && word.starts_with(|c: char| c.is_lowercase());
        match names.last_mut() {
            Some(prev) if continues && prev.starts_with(|c: char| c.is_uppercase()) => {
                prev.push(' ');
                prev.push_str(word);
            }
            _ => names.push(word.to_string()),
        }
        let trimmed = remainder.trim_start();
        gap = remainder.len() - trimmed.len() + usize::from(!remainder.is_empty());
        rest = trimmed;
    }
    names
}

/// Table output: the first non-empty line is the header (names as printed, see
/// [`header_names`]); when the first row has fewer fields than the header has names, the
/// header's last names form the last column's name. Each row is split on whitespace, the last
/// column taking the rest of the line. Integer cells become numbers.
fn table_line(
    line: &str,
    header: &mut Option<Vec<String>>,
    columns_fixed: &mut bool,
    emit: &mut dyn FnMut(Value),
) {
    if line.trim().is_empty() {
        return;
    }
    let Some(names) = header.as_mut() else {
        *header = Some(header_names(line));
        return;
    };
    if !*columns_fixed {
        *columns_fixed = true;
        let fields = line.split_whitespace().count();
        if fields >= 1 && fields < names.len() {
            let tail = names.split_off(fields - 1);
            names.push(tail.join(" "));
        }
    }
    let cells = split_columns(line, names.len());
    let mut obj = PsObject::custom();
    for (i, name) in names.iter().enumerate() {
        let v = cells.get(i).map(|c| table_value(c)).unwrap_or(Value::Null);
        obj.push(name, v);
    }
    emit(obj.into_value());
}

fn json_to_value(v: serde_json::Value, depth: usize) -> Value {
    if depth > MAX_JSON_DEPTH {
        return Value::String(v.to_string());
    }
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => n
                .as_f64()
                .map(Value::Double)
                .unwrap_or_else(|| Value::String(n.to_string())),
        },
        serde_json::Value::String(s) => Value::String(s),
        serde_json::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| json_to_value(i, depth + 1))
                .collect(),
        ),
        serde_json::Value::Object(map) => {
            let mut obj = PsObject::custom();
            for (k, v) in map {
                obj.push(&k, json_to_value(v, depth + 1));
            }
            obj.into_value()
        }
    }
}

/// JSON output: one document (an array gives each element) or a sequence of documents (JSON
/// lines) — each top-level object becomes one output object.
fn parse_json(buf: &[u8], emit: &mut dyn FnMut(Value)) -> Result<(), String> {
    let stream = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    for item in stream {
        match item.map_err(|e| format!("output is not valid JSON: {e}"))? {
            serde_json::Value::Array(items) => {
                for i in items {
                    emit(json_to_value(i, 1));
                }
            }
            other => emit(json_to_value(other, 0)),
        }
    }
    Ok(())
}

/// What the program is and how it runs; shared by functions and external commands.
struct Program {
    /// Command name for messages.
    name: String,
    program: String,
    output: OutputFormat,
    timeout: Option<Duration>,
    capabilities: Vec<String>,
    env: Vec<(String, String)>,
}

fn first_stderr_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(STDERR_LINES_IN_ERROR)
        .collect();
    let joined = lines.join(" / ");
    if joined.chars().count() > STDERR_CHARS_IN_ERROR {
        let mut cut: String = joined.chars().take(STDERR_CHARS_IN_ERROR).collect();
        cut.push('…');
        cut
    } else {
        joined
    }
}

impl Program {
    /// Run with this argv; stream parsed output; turn the ending into error records.
    fn execute(&self, ctx: &mut Ctx<'_>, argv: Vec<String>) -> Result<(), ErrorRecord> {
        // Cancelled: nothing runs and nothing is reported here; the engine sees the token and
        // ends the pipeline as Stopped.
        if ctx.cancelled() {
            return Ok(());
        }
        let timeout = self.timeout.unwrap_or(ctx.host.command_timeout);
        // max_output_bytes is per pipeline: this program gets what the line's earlier programs
        // left of it.
        let left = ctx
            .host
            .max_output_bytes
            .saturating_sub(ctx.cancel.output_used());
        if left == 0 {
            return Err(output_limit_error(&self.name, ctx.host.max_output_bytes));
        }
        let spec = ProgramSpec {
            program: self.program.clone().into(),
            args: argv,
            env: self.env.clone(),
            run_as: ctx.host.run_as.clone(),
            capabilities: self.capabilities.clone(),
            timeout,
            max_output_bytes: left,
            stdin: None,
            keep_stdout: false,
        };
        let cancel = ctx.cancel.clone();
        let mut parser = OutputParser::new(self.output);
        let result: Result<ProgramResult, sandbox::SandboxError> = {
            let out = &mut *ctx;
            sandbox::run(&spec, &cancel, &mut |chunk| {
                parser.feed(chunk, &mut |v| out.output(v))
            })
        };
        let res = match result {
            Ok(r) => {
                ctx.cancel.add_output(r.output_bytes);
                r
            }
            Err(e) => {
                tracing::error!(command = %self.name, program = %self.program, error = %e, "program could not be started");
                return Err(ErrorRecord::new(
                    format!("{} could not be started: {e}", self.name),
                    "ProgramStartFailed",
                    ErrorCategory::ResourceUnavailable,
                )
                .exception("System.ComponentModel.Win32Exception")
                .terminating());
            }
        };
        let complete = matches!(
            res.termination,
            Termination::Exited(_) | Termination::Signaled(_)
        );
        if let Err(msg) = parser.finish(complete, &mut |v| ctx.output(v)) {
            let mut e = ErrorRecord::new(
                format!("{}: {msg}", self.name),
                "InvalidProgramOutput",
                ErrorCategory::InvalidData,
            );
            e.command = Some(self.name.clone());
            ctx.write_error(e);
        }
        match res.termination {
            Termination::Exited(0) => {
                let text = String::from_utf8_lossy(&res.stderr);
                for line in text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(MAX_STDERR_WARNINGS)
                {
                    ctx.warning(format!("{}: {line}", self.name));
                }
                Ok(())
            }
            Termination::Exited(code) => {
                let detail = first_stderr_lines(&res.stderr);
                let msg = if detail.is_empty() {
                    format!("{} exited with code {code}", self.name)
                } else {
                    format!("{} exited with code {code}: {detail}", self.name)
                };
                let mut e =
                    ErrorRecord::new(msg, "NativeCommandFailed", ErrorCategory::NotSpecified)
                        .target(i64::from(code));
                e.command = Some(self.name.clone());
                ctx.write_error(e);
                Ok(())
            }
            Termination::Signaled(sig) => {
                let detail = first_stderr_lines(&res.stderr);
                let mut msg = format!("{} was killed by signal {sig}", self.name);
                if !detail.is_empty() {
                    msg.push_str(&format!(": {detail}"));
                }
                let mut e =
                    ErrorRecord::new(msg, "NativeCommandFailed", ErrorCategory::NotSpecified);
                e.command = Some(self.name.clone());
                ctx.write_error(e);
                Ok(())
            }
            Termination::TimedOut => {
                let mut e = ErrorRecord::new(
                    format!(
                        "{} timed out after {}; it and every process it started were killed",
                        self.name,
                        humantime::format_duration(timeout)
                    ),
                    "NativeCommandTimedOut",
                    ErrorCategory::OperationTimeout,
                )
                .exception("System.TimeoutException")
                .terminating();
                e.command = Some(self.name.clone());
                Err(e)
            }
            Termination::OutputLimit => {
                Err(output_limit_error(&self.name, ctx.host.max_output_bytes))
            }
            Termination::Cancelled => Ok(()),
        }
    }
}

/// The terminating error of a pipeline whose programs wrote more than `max_output_bytes`.
fn output_limit_error(name: &str, max: u64) -> ErrorRecord {
    let mut e = ErrorRecord::new(
        format!(
            "{name} was stopped: the programs of this pipeline wrote more than {max} bytes of output together (max_output_bytes applies to a whole pipeline); narrow the request or ask the administrator to raise [limits] max_output_bytes"
        ),
        "OutputLimitExceeded",
        ErrorCategory::LimitsExceeded,
    )
    .terminating();
    e.command = Some(name.to_string());
    e
}

/// A parameter's declared constraints: name, set (empty: none), compiled pattern (an invalid
/// pattern keeps its error and refuses every value).
type ParamCheck = (
    String,
    Vec<String>,
    Result<Option<AnchoredPattern>, PatternError>,
);

/// A declared function (`[functions.X]`).
struct FunctionCommand {
    decl: CommandDecl,
    templates: Vec<ArgTemplate>,
    /// Per parameter: the declared set/pattern re-checked here (defence in depth; the engine
    /// checks them and the role's constraints before anything runs).
    checks: Vec<ParamCheck>,
    program: Arc<Program>,
}

fn validation_error(cmd: &str, msg: String) -> ErrorRecord {
    let mut e = ErrorRecord::new(
        msg,
        format!("ParameterArgumentValidationError,{cmd}"),
        ErrorCategory::InvalidData,
    )
    .exception("System.Management.Automation.ParameterBindingValidationException")
    .terminating();
    e.command = Some(cmd.to_string());
    e
}

impl FunctionCommand {
    fn check(&self, args: &BoundArgs) -> Result<(), ErrorRecord> {
        let name = &self.decl.name;
        for p in &self.decl.params {
            if p.mandatory
                && p.ty != ParamType::Switch
                && matches!(args.get(&p.name), None | Some(Value::Null))
            {
                return Err(validation_error(
                    name,
                    format!("{name}: the mandatory parameter '{}' has no value", p.name),
                ));
            }
        }
        for p in self.decl.params.iter().filter(|p| p.no_leading_dash) {
            let values = match args.get(&p.name) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => items.iter().map(scalar_text).collect::<Vec<_>>(),
                Some(v) => vec![scalar_text(v)],
            };
            if let Some(v) = values.iter().find(|v| begins_with_dash(v)) {
                return Err(validation_error(
                    name,
                    format!(
                        "{name}: '{v}' begins with '-', which {} would read as an option; parameter '{}' does not allow a leading dash",
                        self.program.program, p.name
                    ),
                ));
            }
        }
        for (pname, set, pattern) in &self.checks {
            let values = match args.get(pname) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => items.iter().map(scalar_text).collect::<Vec<_>>(),
                Some(v) => vec![scalar_text(v)],
            };
            let re = pattern.as_ref().map_err(|e| {
                validation_error(
                    name,
                    format!("{name}: parameter '{pname}' has an invalid pattern: {e}"),
                )
            })?;
            for v in values {
                if !set.is_empty() && !set.iter().any(|s| eq_simple_fold(s, &v)) {
                    return Err(validation_error(
                        name,
                        format!("{name}: '{v}' is not one of the values allowed for parameter '{pname}': {}", set.join(", ")),
                    ));
                }
                if let Some(re) = re {
                    if !re.is_match(&v) {
                        return Err(validation_error(
                            name,
                            format!("{name}: '{v}' does not match the pattern allowed for parameter '{pname}'"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl RunsOnce for FunctionCommand {
    fn decl(&self) -> &CommandDecl {
        &self.decl
    }
    fn run(&self, ctx: &mut Ctx<'_>, args: &BoundArgs) -> Result<(), ErrorRecord> {
        self.check(args)?;
        let argv = build_argv(&self.templates, &self.decl.params, args);
        self.program.execute(ctx, argv)
    }
}

/// A declared program (function or external command): runs once per invocation, at its first
/// `process` call or at `end` when no input ever reached it. Standard input stays closed
/// (SPEC §4.4), so pipeline input is not passed to the program.
trait RunsOnce: Send + Sync + 'static {
    fn decl(&self) -> &CommandDecl;
    fn run(&self, ctx: &mut Ctx<'_>, args: &BoundArgs) -> Result<(), ErrorRecord>;
}

struct Once<T> {
    cmd: Arc<T>,
    /// The arguments bound from the command line (for a run at `end`).
    start_args: BoundArgs,
    ran: bool,
}

impl<T: RunsOnce> Once<T> {
    fn run_once(&mut self, ctx: &mut Ctx<'_>, args: &BoundArgs) -> Result<(), ErrorRecord> {
        if self.ran {
            return Ok(());
        }
        self.ran = true;
        self.cmd.run(ctx, args)
    }
}

impl<T: RunsOnce> Invocation for Once<T> {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        _input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        self.run_once(ctx, args)
    }
    fn end(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ErrorRecord> {
        let args = self.start_args.clone();
        self.run_once(ctx, &args)
    }
}

struct Handle<T>(Arc<T>);

impl<T: RunsOnce> Command for Handle<T> {
    fn decl(&self) -> &CommandDecl {
        self.0.decl()
    }
    fn start(&self, args: &BoundArgs) -> Box<dyn Invocation> {
        Box::new(Once {
            cmd: Arc::clone(&self.0),
            start_args: args.clone(),
            ran: false,
        })
    }
}

fn output_type(f: OutputFormat) -> &'static str {
    match f {
        OutputFormat::Lines => "System.String",
        OutputFormat::Json | OutputFormat::Table => "System.Management.Automation.PSCustomObject",
    }
}

/// The command for a declared function.
pub fn function_command(f: &ResolvedFunction) -> Arc<dyn Command> {
    let mut decl = CommandDecl {
        name: f.name.clone(),
        kind: CommandKind::Function,
        synopsis: f.def.synopsis.clone(),
        params: Vec::new(),
        changes_state: false,
        output_type: vec![output_type(f.def.output).to_string()],
        module: f.capability.clone(),
        path: None,
    };
    let mut checks = Vec::new();
    for (name, p) in &f.params {
        let mut d = ParamDecl::new(name, param_type(p.ty)).help(&p.help);
        d.mandatory = p.mandatory;
        // A bool or switch fills in `true`/`false`, never a dash.
        d.no_leading_dash = !p.allow_leading_dash
            && !matches!(p.ty, FunctionParamType::Bool | FunctionParamType::Switch);
        d.position = p.position.and_then(|n| usize::try_from(n).ok());
        if let Some(set) = &p.validate_set {
            d.set = set.clone();
        }
        if let Some(pat) = &p.validate_pattern {
            d.patterns = vec![pat.clone()];
        }
        let compiled = match &p.validate_pattern {
            Some(pat) => AnchoredPattern::new(&[pat], Case::AsciiInsensitive).map(Some),
            None => Ok(None),
        };
        checks.push((name.clone(), d.set.clone(), compiled));
        decl.params.push(d);
    }
    let templates = f
        .def
        .args
        .iter()
        .map(|a| parse_template(a, &decl.params))
        .collect();
    let program = Arc::new(Program {
        name: f.name.clone(),
        program: f.def.program.clone(),
        output: f.def.output,
        timeout: f.def.timeout.map(|d| d.0),
        capabilities: f.def.capabilities.clone(),
        env: f
            .def
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    });
    Arc::new(Handle(Arc::new(FunctionCommand {
        decl,
        templates,
        checks,
        program,
    })))
}

/// The parameter through which an external command receives its arguments.
pub const ARGUMENT_LIST: &str = "ArgumentList";
/// The bound name the engine's application binder uses for the verbatim arguments.
pub const ENGINE_ARGUMENTS: &str = "Arguments";

/// A visible external command.
struct ExternalCommand {
    decl: CommandDecl,
    /// Anchored, case-sensitive; each argument must fully match one (None: no arguments).
    patterns: Option<Result<AnchoredPattern, PatternError>>,
    program: Arc<Program>,
}

impl ExternalCommand {
    fn check(&self, argv: &[String]) -> Result<(), ErrorRecord> {
        let name = &self.decl.name;
        for arg in argv {
            let msg = match &self.patterns {
                None => format!("{name} takes no arguments here, but '{arg}' was given"),
                Some(Err(e)) => format!(
                    "{name}: the role capability's argument patterns are not usable: {e}"
                ),
                Some(Ok(p)) if p.is_match(arg) => continue,
                Some(Ok(p)) => format!(
                    "argument '{arg}' is not allowed for {name}: each argument must fully match one of {}",
                    p.sources().join(", ")
                ),
            };
            return Err(validation_error(name, msg));
        }
        Ok(())
    }
}

impl RunsOnce for ExternalCommand {
    fn decl(&self) -> &CommandDecl {
        &self.decl
    }
    fn run(&self, ctx: &mut Ctx<'_>, args: &BoundArgs) -> Result<(), ErrorRecord> {
        // The engine's binder hands an application its verbatim arguments as `Arguments`;
        // `ArgumentList` is the declared parameter (Get-Command, a binder that uses it).
        let argv = if args.has(ENGINE_ARGUMENTS) {
            args.strings(ENGINE_ARGUMENTS)
        } else {
            args.strings(ARGUMENT_LIST)
        };
        self.check(&argv)?;
        self.program.execute(ctx, argv)
    }
}

/// The command for a visible external command: named by its file name, with the absolute path
/// in `decl.path`; its arguments arrive through `ArgumentList` (remaining arguments), declared
/// only when the entry lists `arguments`.
pub fn external_command(def: &ExternalCommandDef) -> Arc<dyn Command> {
    let file_name = std::path::Path::new(&def.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| def.path.clone());
    let synopsis = if def.synopsis.is_empty() {
        format!("Runs {}", def.path)
    } else {
        def.synopsis.clone()
    };
    let mut decl = CommandDecl {
        name: file_name.clone(),
        kind: CommandKind::Application,
        synopsis,
        params: Vec::new(),
        changes_state: false,
        output_type: vec!["System.String".to_string()],
        module: String::new(),
        path: Some(def.path.clone()),
    };
    if !def.arguments.is_empty() {
        let mut p = ParamDecl::new(ARGUMENT_LIST, ParamType::StringArray)
            .position(0)
            .remaining()
            .help(&format!(
                "Arguments; each must fully match one of: {}",
                def.arguments.join(", ")
            ));
        // `(?-i:…)`: the engine matches ParamDecl patterns case-insensitively (as PowerShell's
        // ValidatePattern), but an external command's arguments are case-sensitive.
        p.patterns = def.arguments.iter().map(|a| format!("(?-i:{a})")).collect();
        decl.params.push(p);
    }
    let patterns = if def.arguments.is_empty() {
        None
    } else {
        Some(AnchoredPattern::new(&def.arguments, Case::Sensitive))
    };
    let program = Arc::new(Program {
        name: file_name,
        program: def.path.clone(),
        output: OutputFormat::Lines,
        timeout: def.timeout.map(|d| d.0),
        capabilities: def.capabilities.clone(),
        env: def
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    });
    Arc::new(Handle(Arc::new(ExternalCommand {
        decl,
        patterns,
        program,
    })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn params() -> Vec<ParamDecl> {
        vec![
            ParamDecl::new("Mount", ParamType::String),
            ParamDecl::new("Names", ParamType::StringArray),
            ParamDecl::new("Force", ParamType::Switch),
            ParamDecl::new("Deep", ParamType::Bool),
            ParamDecl::new("Count", ParamType::Int),
        ]
    }

    fn bound(pairs: &[(&str, Value)]) -> BoundArgs {
        let mut b = BoundArgs::default();
        for (k, v) in pairs {
            b.set(k, v.clone());
        }
        b
    }

    fn argv(args: &[&str], b: &BoundArgs) -> Vec<String> {
        let ps = params();
        let t: Vec<ArgTemplate> = args.iter().map(|a| parse_template(a, &ps)).collect();
        build_argv(&t, &ps, b)
    }

    #[test]
    fn whole_placeholders() {
        let b = bound(&[
            ("Mount", Value::from("/srv/a b; rm -rf /")),
            ("Names", Value::Array(vec!["x".into(), "y z".into()])),
            ("Count", Value::Int(3)),
        ]);
        assert_eq!(
            argv(
                &["--x", "{mount}", "{Names}", "{Count}", "{Force}", "{Deep}"],
                &b
            ),
            vec!["--x", "/srv/a b; rm -rf /", "x", "y z", "3", "false"]
        );
        let b = bound(&[("Force", Value::Bool(true)), ("Deep", Value::Bool(false))]);
        assert_eq!(
            argv(&["{Mount}", "{Force}", "{Deep}"], &b),
            vec!["true", "false"]
        );
    }

    #[test]
    fn embedded_placeholders_and_literals() {
        let b = bound(&[
            ("Mount", Value::from("/var")),
            ("Names", Value::Array(vec!["a".into(), "b".into()])),
        ]);
        assert_eq!(
            argv(
                &[
                    "--m={Mount}",
                    "--n={Names}!",
                    "{Unknown}",
                    "%s {x}",
                    "--c={Count}",
                    "{",
                    "}{Mount}{"
                ],
                &b
            ),
            vec!["--m=/var", "--n=a,b!", "{Unknown}", "%s {x}", "{", "}/var{"]
        );
    }

    fn lines_of(parser_kind: OutputFormat, chunks: &[&[u8]]) -> Vec<Value> {
        let mut p = OutputParser::new(parser_kind);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |v| out.push(v));
        }
        p.finish(true, &mut |v| out.push(v)).unwrap();
        out
    }

    #[test]
    fn lines_stream_across_chunks() {
        let out = lines_of(OutputFormat::Lines, &[b"ab", b"c\r\nde\n", b"\nlast"]);
        assert_eq!(
            out,
            vec![
                Value::from("abc"),
                Value::from("de"),
                Value::from(""),
                Value::from("last")
            ]
        );
    }

    #[test]
    fn table_like_df() {
        let text = b"Filesystem     Size  Used Avail Use% Mounted on\n/dev/sda1      100G   50G   50G  50% /srv/my data\ntmpfs 10 0 10 0% /run\n";
        assert_eq!(
            header_names("NAME   MAJ:MIN RM SIZE"),
            vec!["NAME", "MAJ:MIN", "RM", "SIZE"]
        );
        assert_eq!(
            header_names(" total  used free"),
            vec!["total", "used", "free"]
        );
        // fewer fields in the first row than header words: the last ones form one name
        let out = lines_of(OutputFormat::Table, &[b"A B C D\n1 2 xyz\n", b"3 4\n"]);
        assert_eq!(out[0].property("C D"), Some(&Value::from("xyz")));
        assert_eq!(out[1].property("C D"), Some(&Value::Null));
        let out = lines_of(OutputFormat::Table, &[text]);
        assert_eq!(out.len(), 2);
        let o = match &out[0] {
            Value::Object(o) => o,
            v => panic!("{v:?}"),
        };
        let names: Vec<&str> = o.properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec!["Filesystem", "Size", "Used", "Avail", "Use%", "Mounted on"]
        );
        assert_eq!(o.get("Mounted on"), Some(&Value::from("/srv/my data")));
        assert_eq!(o.get("use%"), Some(&Value::from("50%")));
        assert_eq!(out[1].property("Size"), Some(&Value::Int(10)));
    }

    #[test]
    fn json_forms() {
        let out = lines_of(
            OutputFormat::Json,
            &[br#"{"b":1,"a":[1,2],"c":{"d":null}}"#],
        );
        let o = match &out[0] {
            Value::Object(o) => o,
            v => panic!("{v:?}"),
        };
        let names: Vec<&str> = o.properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, vec!["b", "a", "c"], "property order is kept");
        assert_eq!(
            lines_of(OutputFormat::Json, &[b"[1, \"x\", true]"]),
            vec![Value::Int(1), Value::from("x"), Value::Bool(true)]
        );
        assert_eq!(
            lines_of(OutputFormat::Json, &[b"{\"a\":1}\n{\"a\":2}\n"]).len(),
            2
        );
        let mut p = OutputParser::new(OutputFormat::Json);
        p.feed(b"{not json", &mut |_| {});
        assert!(p.finish(true, &mut |_| {}).is_err());
    }

    #[test]
    fn deep_json_does_not_overflow() {
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let mut p = OutputParser::new(OutputFormat::Json);
        p.feed(deep.as_bytes(), &mut |_| {});
        assert!(p.finish(true, &mut |_| {}).is_ok());
    }

    #[test]
    fn external_decl() {
        let def = ExternalCommandDef {
            path: "/usr/bin/systemd-analyze".into(),
            arguments: vec!["blame".into(), "time".into()],
            timeout: None,
            capabilities: vec![],
            environment: Default::default(),
            allow_unsafe: false,
            synopsis: String::new(),
        };
        let c = external_command(&def);
        assert_eq!(c.decl().name, "systemd-analyze");
        assert_eq!(c.decl().kind, CommandKind::Application);
        assert_eq!(c.decl().path.as_deref(), Some("/usr/bin/systemd-analyze"));
        let p = c.decl().find_param("ArgumentList").unwrap();
        assert!(p.remaining);
        assert_eq!(p.position, Some(0));
        assert_eq!(p.patterns, vec!["(?-i:blame)", "(?-i:time)"]);
        // the engine's case-insensitive, anchored check stays case-sensitive for these
        let re = AnchoredPattern::new(&p.patterns[..1], Case::AsciiInsensitive).unwrap();
        assert!(re.is_match("blame") && !re.is_match("BLAME"));
        let no_args = ExternalCommandDef {
            arguments: vec![],
            path: "/usr/bin/uptime".into(),
            ..def
        };
        assert!(external_command(&no_args).decl().params.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048), cut in 0usize..2048) {
            for fmt in [OutputFormat::Lines, OutputFormat::Table, OutputFormat::Json] {
                let mut p = OutputParser::new(fmt);
                let split = cut.min(data.len());
                let (a, b) = data.split_at(split);
                let mut n = 0usize;
                p.feed(a, &mut |_| n += 1);
                p.feed(b, &mut |_| n += 1);
                let _ = p.finish(true, &mut |_| n += 1);
            }
        }

        #[test]
        fn lines_roundtrip(lines in proptest::collection::vec("[^\n\r]{0,20}", 1..20)) {
            let text = lines.join("\n");
            let out = lines_of(OutputFormat::Lines, &[text.as_bytes()]);
            let got: Vec<String> = out.iter().map(Value::to_ps_string).collect();
            let mut want = lines.clone();
            if want.last().is_some_and(|l| l.is_empty()) {
                want.pop(); // "a\n" is one line
            }
            proptest::prop_assert_eq!(got, want);
        }
    }
}
