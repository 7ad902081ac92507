//! Parameter binding: names, prefixes, aliases, switches, positions, types, mandatory parameters,
//! common parameters and value checks — everything knowable before a command runs — plus the
//! per-object binding of pipeline input.
#![forbid(unsafe_code)]

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone};

use super::command::{BoundArgs, CommandKind, ErrorCategory, ErrorRecord, ParamType};
use super::table::{show_value, with_column, Entry, ParamSpec};
use super::value::Value;
use super::Refusal;
use crate::catalog::{CommonParameter, CommonUse, COMMON_PARAMETERS};

/// Most elements a bound array may hold (a comma list or a structured array argument).
pub const MAX_BOUND_ARRAY: usize = 4096;

/// One argument as written (a parsed command element or a structured PSRP argument).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ArgIn {
    /// `-Name`, `-Name:value` (value Some) — the value after `-Name x` arrives as the next Positional.
    Named {
        name: String,
        value: Option<Value>,
        col: Option<usize>,
        attached_col: Option<usize>,
    },
    Positional {
        value: Value,
        col: Option<usize>,
    },
}

/// ErrorAction and its siblings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Action {
    #[default]
    Continue,
    SilentlyContinue,
    Stop,
    Ignore,
}

impl Action {
    pub(crate) fn drops(&self) -> bool {
        matches!(self, Action::SilentlyContinue | Action::Ignore)
    }
}

/// Common parameters of one invocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Common {
    pub error_action: Action,
    pub warning_action: Action,
    pub information_action: Action,
    pub verbose: bool,
    pub debug: bool,
    pub whatif: bool,
}

/// The result of binding one command's arguments.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bound {
    /// Declared parameters only, keyed by canonical name (what the command receives).
    pub args: BoundArgs,
    pub common: Common,
    /// Everything bound, common parameters included (what the audit records).
    pub audit: BoundArgs,
}

enum Target<'a> {
    Param(&'a ParamSpec),
    Common(&'static CommonParameter),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Target::Param(p) => &p.decl.name,
            Target::Common(c) => c.name,
        }
    }
    fn is_switch(&self) -> bool {
        match self {
            Target::Param(p) => p.decl.ty == ParamType::Switch,
            Target::Common(c) => c.use_ == CommonUse::Switch,
        }
    }
}

fn refusal(msg: String, id: &str, cmd: &str, col: Option<usize>) -> Refusal {
    Refusal {
        message: with_column(&msg, col),
        id: format!("{id},{cmd}"),
        category: ErrorCategory::InvalidArgument,
        column: col,
    }
}

fn resolve<'a>(entry: &'a Entry, name: &str, col: Option<usize>) -> Result<Target<'a>, Refusal> {
    let cmd = &entry.decl.name;
    let commons = || {
        COMMON_PARAMETERS
            .iter()
            .filter(|c| !c.state_changing_only || entry.decl.changes_state)
    };
    if let Some(p) = entry.params.iter().find(|p| {
        p.decl.name.eq_ignore_ascii_case(name)
            || p.decl.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }) {
        return Ok(Target::Param(p));
    }
    if let Some(c) =
        commons().find(|c| c.name.eq_ignore_ascii_case(name) || c.alias.eq_ignore_ascii_case(name))
    {
        return Ok(Target::Common(c));
    }
    let lower = name.to_lowercase();
    let mut found: Vec<Target<'a>> = Vec::new();
    if !lower.is_empty() {
        for p in &entry.params {
            if p.decl.name.to_lowercase().starts_with(&lower) {
                found.push(Target::Param(p));
            }
        }
        for c in commons() {
            if c.name.to_lowercase().starts_with(&lower) {
                found.push(Target::Common(c));
            }
        }
    }
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|t| format!("-{}", t.name())).collect();
        return Err(refusal(
            format!(
                "Parameter cannot be processed because the parameter name '{}' is ambiguous. Possible matches include: {}.",
                show_value(name),
                names.join(" ")
            ),
            "AmbiguousParameter",
            cmd,
            col,
        ));
    }
    found.pop().ok_or_else(|| {
        refusal(
            format!(
                "A parameter cannot be found that matches parameter name '{}'.",
                show_value(name)
            ),
            "NamedParameterNotFound",
            cmd,
            col,
        )
    })
}

fn conv_err(v: &Value, ty: &str, why: &str) -> String {
    format!(
        "Cannot convert value \"{}\" to type \"{ty}\". Error: \"{why}\"",
        show_value(&v.to_ps_string())
    )
}

fn to_string_value(v: &Value) -> Result<Value, String> {
    match v {
        Value::Dict(_) => Err("Cannot convert a hashtable to type \"System.String\": calculated properties and other hashtable arguments are not supported in this session.".to_string()),
        Value::Array(_) => Err(format!("Cannot convert value \"{}\" (an array) to type \"System.String\". Pass a single value.", show_value(&v.to_ps_string()))),
        Value::Null => Ok(Value::Null),
        other => Ok(Value::String(other.to_ps_string())),
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return i64::from_str_radix(h, 16).ok();
    }
    t.parse::<i64>().ok()
}

fn to_int(v: &Value) -> Result<Value, String> {
    let ty = "System.Int32";
    let n = match v {
        Value::Int(i) => *i,
        Value::Double(d) => {
            if !d.is_finite() {
                return Err(conv_err(
                    v,
                    ty,
                    "Value was either too large or too small for an Int32.",
                ));
            }
            d.round_ties_even() as i64
        }
        Value::Bool(b) => i64::from(*b),
        Value::String(s) => match parse_int(s) {
            Some(i) => i,
            None => match s.trim().parse::<f64>() {
                Ok(d) if d.is_finite() => d.round_ties_even() as i64,
                _ => return Err(conv_err(v, ty, "Input string was not in a correct format.")),
            },
        },
        Value::Enum(e) => e.value,
        _ => return Err(conv_err(v, ty, "Input value has no integer form.")),
    };
    if i32::try_from(n).is_err() {
        return Err(conv_err(
            v,
            ty,
            "Value was either too large or too small for an Int32.",
        ));
    }
    Ok(Value::Int(n))
}

fn to_double(v: &Value) -> Result<Value, String> {
    match v {
        Value::Int(i) => Ok(Value::Double(*i as f64)),
        Value::Double(d) => Ok(Value::Double(*d)),
        Value::String(s) => s.trim().parse::<f64>().map(Value::Double).map_err(|_| {
            conv_err(
                v,
                "System.Double",
                "Input string was not in a correct format.",
            )
        }),
        _ => Err(conv_err(
            v,
            "System.Double",
            "Input value has no number form.",
        )),
    }
}

fn to_bool(v: &Value, ty: &str) -> Result<Value, String> {
    match v {
        Value::Bool(b) => Ok(Value::Bool(*b)),
        Value::Int(i) => Ok(Value::Bool(*i != 0)),
        // A serialized SwitchParameter (PSRP clients send one for `-Force:$true`).
        Value::Object(o) if matches!(o.get("IsPresent"), Some(Value::Bool(_))) => match o.get("IsPresent") {
            Some(Value::Bool(b)) => Ok(Value::Bool(*b)),
            _ => Ok(Value::Bool(false)),
        },
        Value::String(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("$true") => Ok(Value::Bool(true)),
        Value::String(s) if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("$false") => Ok(Value::Bool(false)),
        _ => Err(conv_err(v, ty, "Boolean parameters accept only Boolean values and numbers, such as $True, $False, 1 or 0.")),
    }
}

/// Parse a date the way an administrator would type one.
pub(crate) fn parse_date(s: &str) -> Option<DateTime<FixedOffset>> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d);
    }
    let local = |n: NaiveDateTime| {
        chrono::Local
            .from_local_datetime(&n)
            .single()
            .map(|d| d.fixed_offset())
    };
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%m/%d/%Y %H:%M:%S",
        "%m/%d/%Y %H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
            return local(n);
        }
    }
    for f in ["%Y-%m-%d", "%m/%d/%Y"] {
        if let Ok(d) = NaiveDate::parse_from_str(t, f) {
            return d.and_hms_opt(0, 0, 0).and_then(local);
        }
    }
    None
}

fn elements(v: &Value) -> Result<Vec<Value>, String> {
    let items = match v {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    };
    if items.len() > MAX_BOUND_ARRAY {
        return Err(format!(
            "An array of {} values is longer than this session accepts ({MAX_BOUND_ARRAY}).",
            items.len()
        ));
    }
    Ok(items)
}

/// Convert a value to a parameter type (PowerShell's argument transformation, simplified).
pub(crate) fn convert(v: &Value, ty: ParamType) -> Result<Value, String> {
    match ty {
        ParamType::String => to_string_value(v),
        ParamType::StringArray => Ok(Value::Array(
            elements(v)?
                .iter()
                .map(to_string_value)
                .collect::<Result<Vec<_>, _>>()?,
        )),
        ParamType::Int => to_int(v),
        ParamType::IntArray => Ok(Value::Array(
            elements(v)?
                .iter()
                .map(to_int)
                .collect::<Result<Vec<_>, _>>()?,
        )),
        ParamType::Double => to_double(v),
        ParamType::Bool => to_bool(v, "System.Boolean"),
        ParamType::Switch => to_bool(v, "System.Management.Automation.SwitchParameter"),
        ParamType::DateTime => match v {
            Value::DateTime(d) => Ok(Value::DateTime(*d)),
            Value::String(s) => parse_date(s).map(Value::DateTime).ok_or_else(|| {
                conv_err(
                    v,
                    "System.DateTime",
                    "String was not recognized as a valid DateTime.",
                )
            }),
            _ => Err(conv_err(v, "System.DateTime", "Input value is not a date.")),
        },
        ParamType::Object => Ok(v.clone()),
        ParamType::ObjectArray => Ok(Value::Array(elements(v)?)),
    }
}

fn is_plain(v: &Value) -> bool {
    matches!(
        v,
        Value::Null | Value::Bool(_) | Value::Int(_) | Value::Double(_) | Value::String(_)
    )
}

/// A parameter with a set or pattern takes plain values only — a string, number or boolean,
/// or an array of them — *before* conversion: an object converted to a string shows one text
/// (its ToString) and may carry others, so its text never passes a constraint (SPEC §2.3).
pub(crate) fn plain_only(spec: &ParamSpec, raw: &Value) -> Result<(), String> {
    if spec.checks.is_empty() || matches!(spec.decl.ty, ParamType::Switch | ParamType::Bool) {
        return Ok(());
    }
    let bad = match raw {
        Value::Array(items) => items.iter().find(|i| !is_plain(i)),
        other => Some(other).filter(|v| !is_plain(v)),
    };
    match bad {
        None => Ok(()),
        Some(item) => Err(format!(
            "Cannot validate argument on parameter '{}'. The argument is an object ({}); this parameter is constrained to plain values by a set or pattern.",
            spec.decl.name,
            item.type_name()
        )),
    }
}

/// Check a converted value against a parameter's checks (each array element on its own).
pub(crate) fn validate(spec: &ParamSpec, v: &Value) -> Result<(), String> {
    if spec.checks.is_empty() || matches!(spec.decl.ty, ParamType::Switch | ParamType::Bool) {
        return Ok(());
    }
    let values: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    if values.is_empty() || values.iter().any(|v| v.is_null()) {
        return Err(format!(
            "Cannot validate argument on parameter '{}'. The argument is null or empty. Provide an argument that is not null or empty, and then try the command again.",
            spec.decl.name
        ));
    }
    for item in values {
        // An object could show one text (its ToString) and carry other properties the command
        // uses: a constrained parameter takes plain values only.
        if matches!(item, Value::Object(_) | Value::Dict(_) | Value::Array(_)) {
            return Err(format!(
                "Cannot validate argument on parameter '{}'. The argument is an object ({}); this parameter is constrained to plain values by a set or pattern.",
                spec.decl.name,
                item.type_name()
            ));
        }
        let s = item.to_ps_string();
        for c in &spec.checks {
            if let Some(m) = c.failure(&spec.decl.name, &s) {
                return Err(m);
            }
        }
    }
    Ok(())
}

fn parse_action(name: &str, v: &Value) -> Result<Action, String> {
    let s = match v {
        Value::Int(0) => "SilentlyContinue".to_string(),
        Value::Int(1) => "Stop".to_string(),
        Value::Int(2) => "Continue".to_string(),
        Value::Int(4) => "Ignore".to_string(),
        other => other.to_ps_string(),
    };
    match s.to_lowercase().as_str() {
        "continue" => Ok(Action::Continue),
        "silentlycontinue" => Ok(Action::SilentlyContinue),
        "stop" => Ok(Action::Stop),
        "ignore" => Ok(Action::Ignore),
        "inquire" | "suspend" | "break" => Err(format!(
            "The value '{}' of -{name} is not supported in this session: it needs an interactive host or a debugger. Use Continue, SilentlyContinue, Stop or Ignore.",
            show_value(&s)
        )),
        _ => Err(format!(
            "Cannot bind parameter '{name}'. Cannot convert value \"{}\" to type \"System.Management.Automation.ActionPreference\". Use Continue, SilentlyContinue, Stop or Ignore.",
            show_value(&s)
        )),
    }
}

/// An application's argument as text; an object is refused (its text could differ from what
/// it carries, and every argument of an application is constrained by its patterns).
fn render_app_arg(v: &Value, out: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| render_app_arg(i, out)),
        other if is_plain(other) => {
            out.push(other.to_ps_string());
            Ok(())
        }
        other => Err(other.type_name()),
    }
}

/// Applications take their arguments verbatim; each must fully match one of the entry's patterns.
fn bind_application(entry: &Entry, args: &[ArgIn]) -> Result<Bound, Refusal> {
    let cmd = &entry.decl.name;
    let object_refused = |ty: String, col: Option<usize>| {
        refusal(
            format!("An argument of '{cmd}' is an object ({ty}); a program takes plain values only (strings, numbers, booleans)."),
            "ArgumentNotAllowed",
            cmd,
            col,
        )
    };
    let mut argv: Vec<(String, Option<usize>)> = Vec::new();
    for a in args {
        match a {
            ArgIn::Named {
                name, value, col, ..
            } => match value {
                Some(v)
                    if is_plain(v)
                        || matches!(v, Value::Array(items) if items.iter().all(is_plain)) =>
                {
                    argv.push((format!("-{name}:{}", v.to_ps_string()), *col))
                }
                Some(v) => return Err(object_refused(v.type_name(), *col)),
                None => argv.push((format!("-{name}"), *col)),
            },
            ArgIn::Positional { value, col } => {
                let mut parts = Vec::new();
                render_app_arg(value, &mut parts).map_err(|ty| object_refused(ty, *col))?;
                argv.extend(parts.into_iter().map(|p| (p, *col)));
            }
        }
    }
    if argv.len() > MAX_BOUND_ARRAY {
        return Err(refusal(
            format!("Too many arguments (more than {MAX_BOUND_ARRAY})."),
            "TooManyArguments",
            cmd,
            None,
        ));
    }
    for (a, col) in &argv {
        let why = match &entry.arguments {
            Some(policy) => policy.refusal(a),
            None => Some("this program takes no arguments in this session".to_string()),
        };
        if let Some(why) = why {
            return Err(refusal(
                format!(
                    "The argument '{}' is not allowed for '{cmd}': {why}.",
                    show_value(a)
                ),
                "ArgumentNotAllowed",
                cmd,
                *col,
            ));
        }
    }
    let mut b = Bound::default();
    let v = Value::Array(argv.into_iter().map(|(a, _)| Value::String(a)).collect());
    b.args.set("Arguments", v.clone());
    b.audit.set("Arguments", v);
    Ok(b)
}

/// Bind the arguments written for one command. `has_input`: pipeline input will arrive, so
/// mandatory parameters that take it may be left unbound for now.
/// Mark every constrained parameter bound in `args` literal (see [`BoundArgs::literal`]).
fn mark_constrained(entry: &Entry, args: &mut BoundArgs) {
    for p in &entry.params {
        if !p.checks.is_empty()
            && !matches!(p.decl.ty, ParamType::Switch | ParamType::Bool)
            && args.has(&p.decl.name)
        {
            args.mark_literal(&p.decl.name);
        }
    }
}

pub(crate) fn bind(entry: &Entry, args: &[ArgIn], has_input: bool) -> Result<Bound, Refusal> {
    if entry.decl.kind == CommandKind::Application {
        return bind_application(entry, args);
    }
    let cmd = &entry.decl.name;
    let mut out = Bound::default();
    let mut positionals: Vec<(Value, Option<usize>)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut i = 0usize;
    while let Some(a) = args.get(i) {
        i += 1;
        let (name, attached, col, attached_col) = match a {
            ArgIn::Positional { value, col } => {
                positionals.push((value.clone(), *col));
                continue;
            }
            ArgIn::Named {
                name,
                value,
                col,
                attached_col,
            } => (name, value, *col, *attached_col),
        };
        let target = resolve(entry, name, col)?;
        let canonical = target.name().to_string();
        if seen.iter().any(|s| s.eq_ignore_ascii_case(&canonical)) {
            return Err(refusal(
                format!("Cannot bind parameter because parameter '{canonical}' is specified more than once. To provide multiple values to parameters that can accept multiple values, use the array syntax. For example, \"-parameter value1,value2,value3\"."),
                "ParameterAlreadyBound",
                cmd,
                col,
            ));
        }
        seen.push(canonical.clone());
        let (value, vcol) = if target.is_switch() {
            (
                attached.clone().unwrap_or(Value::Bool(true)),
                attached_col.or(col),
            )
        } else if let Some(v) = attached {
            (v.clone(), attached_col.or(col))
        } else if let Some(ArgIn::Positional { value, col: vc }) = args.get(i) {
            i += 1;
            (value.clone(), *vc)
        } else {
            let ty = match &target {
                Target::Param(p) => p.decl.ty.dotnet_name(),
                Target::Common(c) if c.use_ == CommonUse::Count => "System.Int32",
                Target::Common(_) => "System.Management.Automation.ActionPreference",
            };
            return Err(refusal(
                format!("Missing an argument for parameter '{canonical}'. Specify a parameter of type '{ty}' and try again."),
                "MissingArgument",
                cmd,
                col,
            ));
        };
        match target {
            Target::Param(spec) => {
                plain_only(spec, &value)
                    .map_err(|m| refusal(m, "ParameterArgumentValidationError", cmd, vcol))?;
                let v = convert(&value, spec.decl.ty).map_err(|m| {
                    refusal(
                        format!("Cannot bind parameter '{canonical}'. {m}"),
                        "ParameterArgumentTransformationError",
                        cmd,
                        vcol,
                    )
                })?;
                validate(spec, &v)
                    .map_err(|m| refusal(m, "ParameterArgumentValidationError", cmd, vcol))?;
                out.audit.set(&canonical, v.clone());
                out.args.set(&canonical, v);
            }
            Target::Common(common) => {
                let cname = common.name;
                match common.use_ {
                    CommonUse::SetsVariable => {
                        return Err(refusal(
                            format!("The common parameter -{cname} sets a variable, and this session has no variables (NoLanguage mode); it is not accepted. Remove -{cname} from the command."),
                            "VariableParameterNotAllowed",
                            cmd,
                            col,
                        ));
                    }
                    CommonUse::Switch => {
                        let on = matches!(
                            to_bool(&value, "System.Management.Automation.SwitchParameter"),
                            Ok(Value::Bool(true))
                        );
                        match cname {
                            "Verbose" => out.common.verbose = on,
                            "Debug" => out.common.debug = on,
                            "WhatIf" => out.common.whatif = on,
                            _ => {} // Confirm: there is no host to prompt; accepted and ignored.
                        }
                        out.audit.set(cname, Value::Bool(on));
                    }
                    CommonUse::Count => {
                        let v = to_int(&value).map_err(|m| {
                            refusal(
                                format!("Cannot bind parameter '{cname}'. {m}"),
                                "ParameterArgumentTransformationError",
                                cmd,
                                vcol,
                            )
                        })?;
                        out.audit.set(cname, v);
                    }
                    CommonUse::Action => {
                        let act = parse_action(cname, &value).map_err(|m| {
                            refusal(m, "ParameterArgumentValidationError", cmd, vcol)
                        })?;
                        match cname {
                            "ErrorAction" => out.common.error_action = act,
                            "WarningAction" => out.common.warning_action = act,
                            "InformationAction" => out.common.information_action = act,
                            _ => {}
                        }
                        out.audit.set(cname, Value::String(value.to_ps_string()));
                    }
                }
            }
        }
    }
    // Positional arguments, in declared position order, to parameters not bound by name.
    let mut slots: Vec<&ParamSpec> = entry
        .params
        .iter()
        .filter(|p| p.decl.position.is_some() && !out.args.has(&p.decl.name))
        .collect();
    slots.sort_by_key(|p| p.decl.position);
    let mut slots = slots.into_iter();
    let mut rest = positionals.into_iter();
    while let Some((value, col)) = rest.next() {
        let spec = match slots.next() {
            Some(s) => s,
            None => match entry
                .params
                .iter()
                .find(|p| p.decl.remaining && !out.args.has(&p.decl.name))
            {
                Some(s) => s,
                None => {
                    return Err(refusal(
                        format!(
                            "A positional parameter cannot be found that accepts argument '{}'.",
                            show_value(&value.to_ps_string())
                        ),
                        "PositionalParameterNotFound",
                        cmd,
                        col,
                    ))
                }
            },
        };
        // ValueFromRemainingArguments: this parameter takes every argument left.
        let value = if spec.decl.remaining {
            let more: Vec<(Value, Option<usize>)> = rest.by_ref().collect();
            if more.is_empty() {
                value
            } else {
                let mut all = Vec::new();
                for v in std::iter::once(value).chain(more.into_iter().map(|(v, _)| v)) {
                    match v {
                        Value::Array(items) => all.extend(items),
                        other => all.push(other),
                    }
                }
                Value::Array(all)
            }
        } else {
            value
        };
        plain_only(spec, &value)
            .map_err(|m| refusal(m, "ParameterArgumentValidationError", cmd, col))?;
        let v = convert(&value, spec.decl.ty).map_err(|m| {
            refusal(
                format!("Cannot bind parameter '{}'. {m}", spec.decl.name),
                "ParameterArgumentTransformationError",
                cmd,
                col,
            )
        })?;
        validate(spec, &v).map_err(|m| refusal(m, "ParameterArgumentValidationError", cmd, col))?;
        out.audit.set(&spec.decl.name, v.clone());
        out.args.set(&spec.decl.name, v);
    }
    let missing: Vec<&str> = entry
        .params
        .iter()
        .filter(|p| p.decl.mandatory && !out.args.has(&p.decl.name))
        .filter(|p| !(has_input && (p.decl.pipeline.by_value || p.decl.pipeline.by_property_name)))
        .map(|p| p.decl.name.as_str())
        .collect();
    if !missing.is_empty() {
        let dashed: Vec<String> = missing.iter().map(|m| format!("-{m}")).collect();
        return Err(refusal(
            format!(
                "Cannot process command because of one or more missing mandatory parameters: {} (missing mandatory parameter {}; this session never prompts, give it on the command line).",
                missing.join(" "),
                dashed.join(" ")
            ),
            "MissingMandatoryParameter",
            cmd,
            None,
        ));
    }
    mark_constrained(entry, &mut out.args);
    Ok(out)
}

fn accepts_without_conversion(ty: ParamType, v: &Value) -> bool {
    match ty {
        ParamType::Object | ParamType::ObjectArray => true,
        ParamType::String | ParamType::StringArray => matches!(v, Value::String(_)),
        ParamType::Int | ParamType::IntArray => matches!(v, Value::Int(_)),
        ParamType::Double => matches!(v, Value::Double(_)),
        ParamType::Bool | ParamType::Switch => matches!(v, Value::Bool(_)),
        ParamType::DateTime => matches!(v, Value::DateTime(_)),
    }
}

fn not_bound(cmd: &str, input: &Value) -> ErrorRecord {
    ErrorRecord::new(
        "The input object cannot be bound to any parameters for the command either because the command does not take pipeline input or the input and its properties do not match any of the parameters that take pipeline input.",
        format!("InputObjectNotBound,{cmd}"),
        ErrorCategory::InvalidArgument,
    )
    .target(input.clone())
    .exception("System.Management.Automation.ParameterBindingException")
}

/// Bind one pipeline object (ByValue, else ByPropertyName, else ByValue with conversion) on
/// top of the command-line arguments, and validate it. Errors are non-terminating records.
#[allow(clippy::result_large_err)]
pub(crate) fn bind_input(
    entry: &Entry,
    cmdline: &BoundArgs,
    input: &Value,
) -> Result<BoundArgs, ErrorRecord> {
    let cmd = &entry.decl.name;
    let validation_err = |m: String| {
        ErrorRecord::new(
            m,
            format!("ParameterArgumentValidationError,{cmd}"),
            ErrorCategory::InvalidData,
        )
        .target(input.clone())
        .exception("System.Management.Automation.ParameterBindingValidationException")
    };
    // Plain values only for a constrained parameter, then the conversion.
    let take = |p: &ParamSpec, raw: &Value| -> Result<Value, ErrorRecord> {
        plain_only(p, raw).map_err(validation_err)?;
        convert(raw, p.decl.ty).map_err(|m| transform_err(cmd, &p.decl.name, &m, input))
    };
    let free = |p: &&ParamSpec| !cmdline.has(&p.decl.name);
    let mut args = cmdline.clone();
    let mut bound: Vec<&ParamSpec> = Vec::new();
    let is_obj = matches!(input, Value::Object(_) | Value::Dict(_));
    let any_type = |p: &ParamSpec| matches!(p.decl.ty, ParamType::Object | ParamType::ObjectArray);
    // Order: ByValue to a typed parameter without conversion, then ByPropertyName (so a
    // constrained -Name is what binds an object's Name), then ByValue to an untyped
    // (object) parameter, then ByValue with conversion for scalars.
    if let Some(p) = entry.params.iter().filter(free).find(|p| {
        p.decl.pipeline.by_value && !any_type(p) && accepts_without_conversion(p.decl.ty, input)
    }) {
        let v = take(p, input)?;
        args.set(&p.decl.name, v);
        bound.push(p);
    }
    if bound.is_empty() && is_obj {
        for p in entry
            .params
            .iter()
            .filter(free)
            .filter(|p| p.decl.pipeline.by_property_name)
        {
            let prop = std::iter::once(&p.decl.name)
                .chain(p.decl.aliases.iter())
                .find_map(|n| input.property(n));
            if let Some(pv) = prop {
                let v = take(p, pv)?;
                args.set(&p.decl.name, v);
                bound.push(p);
            }
        }
    }
    if bound.is_empty() {
        if let Some(p) = entry
            .params
            .iter()
            .filter(free)
            .find(|p| p.decl.pipeline.by_value && any_type(p))
        {
            let v = take(p, input)?;
            args.set(&p.decl.name, v);
            bound.push(p);
        }
    }
    if bound.is_empty() && !is_obj {
        if let Some(p) = entry
            .params
            .iter()
            .filter(free)
            .find(|p| p.decl.pipeline.by_value)
        {
            plain_only(p, input).map_err(validation_err)?;
            if let Ok(v) = convert(input, p.decl.ty) {
                args.set(&p.decl.name, v);
                bound.push(p);
            }
        }
    }
    if bound.is_empty() {
        return Err(not_bound(cmd, input));
    }
    for p in bound {
        if let Some(v) = args.get(&p.decl.name) {
            validate(p, v).map_err(validation_err)?;
        }
    }
    let missing: Vec<&str> = entry
        .params
        .iter()
        .filter(|p| p.decl.mandatory && !args.has(&p.decl.name))
        .map(|p| p.decl.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ErrorRecord::new(
            format!(
                "The input object does not supply the mandatory parameters: {}.",
                missing.join(", ")
            ),
            format!("MissingMandatoryParameter,{cmd}"),
            ErrorCategory::InvalidArgument,
        )
        .target(input.clone())
        .exception("System.Management.Automation.ParameterBindingException"));
    }
    mark_constrained(entry, &mut args);
    Ok(args)
}

fn transform_err(cmd: &str, param: &str, m: &str, input: &Value) -> ErrorRecord {
    ErrorRecord::new(
        format!("Cannot bind parameter '{param}'. {m}"),
        format!("ParameterArgumentTransformationError,{cmd}"),
        ErrorCategory::InvalidArgument,
    )
    .target(input.clone())
    .exception("System.Management.Automation.ParameterBindingException")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn check(v: Value, ty: ParamType, expected: Result<Value, &str>) {
        match (convert(&v, ty), expected) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert!(a.contains(b), "{a}"),
            (a, b) => panic!("{v:?} as {ty:?}: got {a:?}, expected {b:?}"),
        }
    }

    #[test]
    fn conversions() {
        check("42".into(), ParamType::Int, Ok(Value::Int(42)));
        check("0x10".into(), ParamType::Int, Ok(Value::Int(16)));
        check(
            "abc".into(),
            ParamType::Int,
            Err("Cannot convert value \"abc\" to type \"System.Int32\". Error: \"Input string was not in a correct format.\""),
        );
        check(Value::Int(1 << 40), ParamType::Int, Err("too large"));
        check(Value::Double(2.5), ParamType::Int, Ok(Value::Int(2)));
        check(
            "x".into(),
            ParamType::StringArray,
            Ok(Value::Array(vec!["x".into()])),
        );
        check(Value::Int(5), ParamType::String, Ok("5".into()));
        check(
            Value::Dict(vec![]),
            ParamType::String,
            Err("calculated properties"),
        );
        check(
            Value::Array(vec![1.into(), "2".into()]),
            ParamType::IntArray,
            Ok(Value::Array(vec![1.into(), 2.into()])),
        );
        check(
            "yes".into(),
            ParamType::Switch,
            Err("Boolean parameters accept only"),
        );
        check(
            "2026-01-02".into(),
            ParamType::DateTime,
            Ok(Value::DateTime(parse_date("2026-01-02").unwrap())),
        );
        let big = Value::Array(vec![Value::Null; MAX_BOUND_ARRAY + 1]);
        check(
            big,
            ParamType::ObjectArray,
            Err("longer than this session accepts"),
        );
    }

    #[test]
    fn actions() {
        assert_eq!(
            parse_action("ErrorAction", &"silentlycontinue".into()),
            Ok(Action::SilentlyContinue)
        );
        assert_eq!(
            parse_action("ErrorAction", &Value::Int(1)),
            Ok(Action::Stop)
        );
        assert!(parse_action("ErrorAction", &"Inquire".into())
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_action("ErrorAction", &"Break".into()).is_err());
        assert!(parse_action("ErrorAction", &"Bogus".into()).is_err());
    }
}
