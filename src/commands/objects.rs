//! Object cmdlets roles may grant: Where-Object (comparison form only), Sort-Object,
//! Format-Table, Format-List, Out-String, ConvertTo-Json, Get-Date, Get-Member, Write-Output.
#![forbid(unsafe_code)]

use crate::lang::wildcard::{self, Mode, Wildcard};
use std::cell::Cell;
use std::cmp::Ordering;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset};
use regex::{Regex, RegexBuilder};

use super::proxies::{cmd, input_object, output_lines, UTILITY};
use crate::engine::bind::parse_date;
use crate::engine::format::{date_text, format_forced_until, Forced, Formatter};
use crate::engine::{
    BoundArgs, CancelToken, Command, CommandDecl, Ctx, ErrorCategory, ErrorRecord, Invocation,
    ParamDecl, ParamType, PsObject, Value,
};

/// Most objects Sort-Object, Format-*, Out-String, ConvertTo-Json and Get-Member hold.
pub const MAX_COLLECTED: usize = 100_000;
/// Largest ConvertTo-Json -Depth.
pub const MAX_JSON_DEPTH: i64 = 100;
/// Compiled size limit of a -match regex.
pub const MAX_MATCH_REGEX: usize = 1 << 20;
/// Sort-Object asks whether the line was stopped once per this many comparisons.
pub const CANCEL_CHECK_EVERY: usize = 256;

/// (switch name, operator, case-sensitive)
const OPERATORS: &[(&str, Op, bool)] = &[
    ("EQ", Op::Eq, false),
    ("NE", Op::Ne, false),
    ("GT", Op::Gt, false),
    ("GE", Op::Ge, false),
    ("LT", Op::Lt, false),
    ("LE", Op::Le, false),
    ("Like", Op::Like, false),
    ("NotLike", Op::NotLike, false),
    ("Match", Op::Match, false),
    ("NotMatch", Op::NotMatch, false),
    ("Contains", Op::Contains, false),
    ("NotContains", Op::NotContains, false),
    ("In", Op::In, false),
    ("NotIn", Op::NotIn, false),
    ("CEQ", Op::Eq, true),
    ("CNE", Op::Ne, true),
    ("CGT", Op::Gt, true),
    ("CGE", Op::Ge, true),
    ("CLT", Op::Lt, true),
    ("CLE", Op::Le, true),
    ("CLike", Op::Like, true),
    ("CNotLike", Op::NotLike, true),
    ("CMatch", Op::Match, true),
    ("CNotMatch", Op::NotMatch, true),
    ("CContains", Op::Contains, true),
    ("CNotContains", Op::NotContains, true),
    ("CIn", Op::In, true),
    ("CNotIn", Op::NotIn, true),
    ("Not", Op::Not, false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
    NotLike,
    Match,
    NotMatch,
    Contains,
    NotContains,
    In,
    NotIn,
    Not,
}

fn collect_decl(name: &str, synopsis: &str) -> CommandDecl {
    CommandDecl::cmdlet(name, UTILITY, synopsis)
}

/// The object cmdlets.
pub fn commands() -> Vec<Arc<dyn Command>> {
    let mut where_decl = collect_decl(
        "Where-Object",
        "Selects objects whose property compares to a value (comparison form only).",
    )
    .param(
        ParamDecl::new("Property", ParamType::String)
            .position(0)
            .help("The property to compare."),
    )
    .param(
        ParamDecl::new("Value", ParamType::Object)
            .position(1)
            .help("The value to compare with."),
    )
    .param(input_object("Objects to filter."));
    for (name, op, _) in OPERATORS {
        let help = if *op == Op::Not {
            "True when the property is absent or false.".to_string()
        } else {
            format!("Compare with -{name}.")
        };
        where_decl = where_decl.param(ParamDecl::new(name, ParamType::Switch).help(&help));
    }
    vec![
        cmd(where_decl, |_| Box::new(WhereObject { re: None })),
        cmd(
            collect_decl("Sort-Object", "Sorts objects by property values.")
                .param(
                    ParamDecl::new("Property", ParamType::StringArray)
                        .position(0)
                        .help("Properties to sort by."),
                )
                .param(
                    ParamDecl::new("Descending", ParamType::Switch)
                        .help("Sort in descending order."),
                )
                .param(ParamDecl::new("Unique", ParamType::Switch).help("Drop duplicates."))
                .param(
                    ParamDecl::new("CaseSensitive", ParamType::Switch)
                        .help("Compare strings case-sensitively."),
                )
                .param(input_object("Objects to sort.")),
            |_| Box::new(Collect::new(Kind::Sort)),
        ),
        cmd(
            collect_decl("Format-Table", "Formats objects as a table.")
                .param(
                    ParamDecl::new("Property", ParamType::StringArray)
                        .position(0)
                        .help("Properties to show (wildcards)."),
                )
                .param(
                    ParamDecl::new("AutoSize", ParamType::Switch)
                        .help("Size columns to the data (always done)."),
                )
                .param(
                    ParamDecl::new("Wrap", ParamType::Switch).help("Accepted for compatibility."),
                )
                .param(input_object("Objects to format."))
                .outputs("System.String"),
            |_| Box::new(Collect::new(Kind::Table)),
        ),
        cmd(
            collect_decl("Format-List", "Formats objects as a list of properties.")
                .param(
                    ParamDecl::new("Property", ParamType::StringArray)
                        .position(0)
                        .help("Properties to show (wildcards)."),
                )
                .param(input_object("Objects to format."))
                .outputs("System.String"),
            |_| Box::new(Collect::new(Kind::List)),
        ),
        cmd(
            collect_decl("Out-String", "Formats objects as text.")
                .param(
                    ParamDecl::new("Stream", ParamType::Switch)
                        .help("One string per line, as they are produced."),
                )
                .param(ParamDecl::new("Width", ParamType::Int).help("Accepted for compatibility."))
                .param(input_object("Objects to format."))
                .outputs("System.String"),
            |_| {
                Box::new(OutString {
                    fmt: Formatter::new(),
                    values: Vec::new(),
                    stream: None,
                })
            },
        ),
        cmd(
            collect_decl("ConvertTo-Json", "Converts objects to JSON.")
                .param(input_object("Objects to convert.").position(0))
                .param(
                    ParamDecl::new("Depth", ParamType::Int)
                        .help("Levels of contained objects included (default 2)."),
                )
                .param(ParamDecl::new("Compress", ParamType::Switch).help("No white space."))
                .param(
                    ParamDecl::new("EnumsAsStrings", ParamType::Switch)
                        .help("Enums as their names."),
                )
                .param(ParamDecl::new("AsArray", ParamType::Switch).help("Always output an array."))
                .outputs("System.String"),
            |_| Box::new(Collect::new(Kind::Json)),
        ),
        cmd(
            collect_decl(
                "Get-Date",
                "Gets the current date and time, or formats a date.",
            )
            .param(
                ParamDecl::new("Date", ParamType::DateTime)
                    .position(0)
                    .by_value()
                    .alias("LastWriteTime")
                    .help("The date to use instead of now."),
            )
            .param(
                ParamDecl::new("Format", ParamType::String)
                    .help(".NET format string (yyyy-MM-dd HH:mm:ss, o, s, u, ...)."),
            )
            .param(
                ParamDecl::new("UFormat", ParamType::String)
                    .help("Unix format string (%Y-%m-%d ...)."),
            )
            .outputs("System.DateTime"),
            |_| Box::new(GetDate),
        ),
        cmd(
            collect_decl("Get-Member", "Gets the properties and methods of objects.")
                .param(
                    ParamDecl::new("Name", ParamType::StringArray)
                        .position(0)
                        .help("Member names (wildcards)."),
                )
                .param(input_object("Objects to inspect."))
                .outputs("Microsoft.PowerShell.Commands.MemberDefinition"),
            |_| Box::new(Collect::new(Kind::Member)),
        ),
        cmd(
            collect_decl("Write-Output", "Writes objects to the pipeline.")
                .param(
                    ParamDecl::new("InputObject", ParamType::ObjectArray)
                        .position(0)
                        .by_value()
                        .mandatory()
                        .remaining()
                        .help("Objects to write."),
                )
                .param(
                    ParamDecl::new("NoEnumerate", ParamType::Switch)
                        .help("Write a collection as one object."),
                ),
            |_| Box::new(WriteOutput),
        ),
    ]
}

fn input_or_arg(args: &BoundArgs, input: Option<Value>) -> Option<Value> {
    match input {
        Some(v) => Some(v),
        None => args.get("InputObject").cloned(),
    }
}

// ---------------------------------------------------------------- comparisons

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        Value::String(s) => {
            let t = s.trim();
            if let Some(h) = t.strip_prefix("0x") {
                return i64::from_str_radix(h, 16).ok().map(|i| i as f64);
            }
            t.parse::<f64>().ok()
        }
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Enum(e) => Some(e.value as f64),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Double(d) => *d != 0.0,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => match a.as_slice() {
            [] => false,
            [one] => truthy(one),
            _ => true,
        },
        _ => true,
    }
}

fn fold(s: String, cs: bool) -> String {
    if cs {
        s
    } else {
        s.to_lowercase()
    }
}

/// Compare like PowerShell: the right side converts to the left side's type.
fn compare(left: &Value, right: &Value, cs: bool) -> Option<Ordering> {
    match left {
        Value::Null => {
            if right.is_null() {
                Some(Ordering::Equal)
            } else {
                None
            }
        }
        Value::Int(_) | Value::Double(_) => {
            let l = number(left)?;
            match number(right) {
                Some(r) => l.partial_cmp(&r),
                None => Some(fold(left.to_ps_string(), cs).cmp(&fold(right.to_ps_string(), cs))),
            }
        }
        Value::Bool(b) => {
            let r = match right {
                Value::String(s)
                    if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("$false") =>
                {
                    false
                }
                Value::String(s)
                    if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("$true") =>
                {
                    true
                }
                other => truthy(other),
            };
            Some(b.cmp(&r))
        }
        Value::Enum(e) => match right {
            Value::Int(i) => Some(e.value.cmp(i)),
            Value::String(t) if t.trim().parse::<i64>().is_ok() => {
                t.trim().parse::<i64>().ok().map(|i| e.value.cmp(&i))
            }
            _ => {
                let rs = right.to_ps_string();
                if e.name.eq_ignore_ascii_case(&rs) {
                    Some(Ordering::Equal)
                } else {
                    Some(fold(e.name.clone(), cs).cmp(&fold(rs, cs)))
                }
            }
        },
        Value::DateTime(d) => {
            let r = match right {
                Value::DateTime(r) => Some(*r),
                other => parse_date(&other.to_ps_string()),
            };
            match r {
                Some(r) => Some(d.cmp(&r)),
                None => Some(fold(left.to_ps_string(), cs).cmp(&fold(right.to_ps_string(), cs))),
            }
        }
        Value::TimeSpan(t) => match number(right) {
            Some(r) => t.as_secs_f64().partial_cmp(&r),
            None => Some(left.to_ps_string().cmp(&right.to_ps_string())),
        },
        _ => Some(fold(left.to_ps_string(), cs).cmp(&fold(right.to_ps_string(), cs))),
    }
}

fn equal(left: &Value, right: &Value, cs: bool) -> bool {
    compare(left, right, cs) == Some(Ordering::Equal)
}

/// PowerShell's `-like` (`cs`: `-clike`), through the one wildcard matcher; a pattern keyhole
/// refuses (over-long) matches nothing.
pub fn like(pattern: &str, text: &str, cs: bool) -> bool {
    wildcard::matches(pattern, text, Mode::Like { case_sensitive: cs })
}

/// The compiled `-like` pattern of a Where-Object, or the error record for one keyhole refuses.
#[allow(clippy::result_large_err)]
fn like_pattern(pattern: &str, cs: bool) -> Result<Wildcard, ErrorRecord> {
    Wildcard::new(pattern, Mode::Like { case_sensitive: cs }).map_err(|e| {
        ErrorRecord::new(
            format!("The wildcard pattern cannot be used: {e}."),
            "WildcardPatternException,Microsoft.PowerShell.Commands.WhereObjectCommand",
            ErrorCategory::InvalidArgument,
        )
    })
}

fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

/// True when `f` holds for any of `items`; None when the line was cancelled (or reached its
/// deadline) first — checked before every element, and `f` may give up itself (None).
fn any_until<'v>(
    items: impl IntoIterator<Item = &'v Value>,
    cancel: &CancelToken,
    mut f: impl FnMut(&Value) -> Option<bool>,
) -> Option<bool> {
    for v in items {
        if cancel.is_cancelled() {
            return None;
        }
        if f(v)? {
            return Some(true);
        }
    }
    Some(false)
}

struct WhereObject {
    re: Option<(String, bool, Regex)>,
}

impl WhereObject {
    #[allow(clippy::result_large_err)]
    fn regex(&mut self, pattern: &str, cs: bool) -> Result<&Regex, ErrorRecord> {
        let fresh = !matches!(&self.re, Some((p, c, _)) if p == pattern && *c == cs);
        if fresh {
            let re = RegexBuilder::new(pattern)
                .case_insensitive(!cs)
                .size_limit(MAX_MATCH_REGEX)
                .build()
                .map_err(|e| {
                    ErrorRecord::new(
                        format!("The regular expression pattern {pattern} is not valid: {e}"),
                        "InvalidRegularExpression,Microsoft.PowerShell.Commands.WhereObjectCommand",
                        ErrorCategory::InvalidArgument,
                    )
                })?;
            self.re = Some((pattern.to_string(), cs, re));
        }
        match &self.re {
            Some((_, _, re)) => Ok(re),
            None => Err(ErrorRecord::new(
                "internal: regex cache empty",
                "InvalidRegularExpression",
                ErrorCategory::NotSpecified,
            )),
        }
    }
}

impl Invocation for WhereObject {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        let ops: Vec<(Op, bool)> = OPERATORS
            .iter()
            .filter(|(n, _, _)| args.switch(n))
            .map(|(_, o, c)| (*o, *c))
            .collect();
        if ops.len() > 1 {
            return Err(ErrorRecord::new(
                "Where-Object takes one comparison operator at a time (for example: Where-Object Status -eq Running).",
                "AmbiguousParameterSet,Microsoft.PowerShell.Commands.WhereObjectCommand",
                ErrorCategory::InvalidArgument,
            ));
        }
        let Some(obj) = input_or_arg(args, input) else {
            return Ok(());
        };
        let Some(prop) = args.string("Property") else {
            return Err(ErrorRecord::new(
                "Where-Object needs a property to compare (script blocks are not available in this session): Where-Object <Property> -eq <Value>.",
                "PropertyRequired,Microsoft.PowerShell.Commands.WhereObjectCommand",
                ErrorCategory::InvalidArgument,
            ));
        };
        let left = obj.member(&prop).unwrap_or(Value::Null);
        let right = args.get("Value").cloned().unwrap_or(Value::Null);
        // Every loop over the client's values asks the line's token: Stop, a closed pool or
        // command_timeout end it (None), also inside one long -like match.
        let cancel: &CancelToken = ctx.cancel;
        let stop = || cancel.is_cancelled();
        let keep = match ops.first() {
            None => Some(truthy(&left)),
            Some((op, cs)) => {
                let cs = *cs;
                let cmp = |pred: fn(Option<Ordering>) -> bool| {
                    any_until(elements(&left), cancel, |l| {
                        Some(pred(compare(l, &right, cs)))
                    })
                };
                match op {
                    Op::Not => Some(!truthy(&left)),
                    Op::Eq | Op::Contains => {
                        any_until(elements(&left), cancel, |l| Some(equal(l, &right, cs)))
                    }
                    Op::Ne => match &left {
                        Value::Array(items) => {
                            any_until(items, cancel, |l| Some(!equal(l, &right, cs)))
                        }
                        l => Some(!equal(l, &right, cs)),
                    },
                    Op::Gt => cmp(|o| o == Some(Ordering::Greater)),
                    Op::Ge => cmp(|o| matches!(o, Some(Ordering::Greater | Ordering::Equal))),
                    Op::Lt => cmp(|o| o == Some(Ordering::Less)),
                    Op::Le => cmp(|o| matches!(o, Some(Ordering::Less | Ordering::Equal))),
                    Op::Like | Op::NotLike => {
                        let w = like_pattern(&right.to_ps_string(), cs)?;
                        let want = *op == Op::Like;
                        any_until(elements(&left), cancel, |l| {
                            w.is_match_until(&l.to_ps_string(), &stop)
                                .map(|m| m == want)
                        })
                    }
                    Op::Match | Op::NotMatch => {
                        let pattern = right.to_ps_string();
                        let re = self.regex(&pattern, cs)?;
                        let want = *op == Op::Match;
                        any_until(elements(&left), cancel, |l| {
                            Some(re.is_match(&l.to_ps_string()) == want)
                        })
                    }
                    Op::NotContains => {
                        any_until(elements(&left), cancel, |l| Some(equal(l, &right, cs)))
                            .map(|b| !b)
                    }
                    Op::In => any_until(elements(&right), cancel, |r| Some(equal(&left, r, cs))),
                    Op::NotIn => any_until(elements(&right), cancel, |r| Some(equal(&left, r, cs)))
                        .map(|b| !b),
                }
            }
        };
        let Some(keep) = keep else {
            // Stopped: the engine ends the line (Stopped, or the timeout record).
            return Ok(());
        };
        if keep {
            ctx.output(obj);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- collecting commands

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sort,
    Table,
    List,
    Json,
    Member,
}

struct Collect {
    kind: Kind,
    values: Vec<Value>,
    args: Option<BoundArgs>,
    warned: bool,
}

impl Collect {
    fn new(kind: Kind) -> Self {
        Collect {
            kind,
            values: Vec::new(),
            args: None,
            warned: false,
        }
    }
}

fn too_many(ctx: &mut Ctx<'_>, warned: &mut bool) {
    if !*warned {
        *warned = true;
        ctx.warning(format!(
            "More than {MAX_COLLECTED} objects: the rest are dropped."
        ));
    }
}

fn sort_key_cmp(a: &Value, b: &Value, cs: bool) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => {
            if let (Some(x), Some(y)) = (
                matches!(a, Value::Int(_) | Value::Double(_) | Value::Enum(_))
                    .then(|| number(a))
                    .flatten(),
                matches!(b, Value::Int(_) | Value::Double(_) | Value::Enum(_))
                    .then(|| number(b))
                    .flatten(),
            ) {
                return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            }
            if let (Value::DateTime(x), Value::DateTime(y)) = (a, b) {
                return x.cmp(y);
            }
            if let (Value::TimeSpan(x), Value::TimeSpan(y)) = (a, b) {
                return x.cmp(y);
            }
            if let (Value::Bool(x), Value::Bool(y)) = (a, b) {
                return x.cmp(y);
            }
            let (x, y) = (a.to_ps_string(), b.to_ps_string());
            let o = x.to_lowercase().cmp(&y.to_lowercase());
            if cs && o == Ordering::Equal {
                // lower case first, as .NET's culture comparison does
                y.cmp(&x)
            } else {
                o
            }
        }
    }
}

/// Sort (and with `unique` deduplicate) `values`; false when the line was cancelled or reached
/// its deadline meanwhile (then `values` is left empty). The comparisons ask the token every
/// [`CANCEL_CHECK_EVERY`] calls and, once it says stop, compare everything as equal so the sort
/// ends at once.
fn sort_values(
    values: &mut Vec<Value>,
    props: &[String],
    descending: bool,
    unique: bool,
    cs: bool,
    cancel: &CancelToken,
) -> bool {
    let keys = |v: &Value| -> Vec<Value> {
        if props.is_empty() {
            vec![v.clone()]
        } else {
            props
                .iter()
                .map(|p| v.member(p).unwrap_or(Value::Null))
                .collect()
        }
    };
    let mut keyed: Vec<(Vec<Value>, Value)> = Vec::with_capacity(values.len());
    for v in values.drain(..) {
        if cancel.is_cancelled() {
            return false;
        }
        keyed.push((keys(&v), v));
    }
    let stopped = Cell::new(false);
    let calls = Cell::new(0usize);
    let halted = || {
        if !stopped.get() {
            calls.set(calls.get().wrapping_add(1));
            if calls.get() % CANCEL_CHECK_EVERY == 0 && cancel.is_cancelled() {
                stopped.set(true);
            }
        }
        stopped.get()
    };
    let key_cmp = |a: &[Value], b: &[Value]| {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| sort_key_cmp(x, y, cs))
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    };
    keyed.sort_by(|(a, _), (b, _)| {
        if halted() {
            return Ordering::Equal;
        }
        let o = key_cmp(a, b);
        if descending {
            o.reverse()
        } else {
            o
        }
    });
    if unique && !stopped.get() {
        keyed.dedup_by(|(a, _), (b, _)| !halted() && key_cmp(a, b) == Ordering::Equal);
    }
    if stopped.get() || cancel.is_cancelled() {
        return false;
    }
    values.extend(keyed.into_iter().map(|(_, v)| v));
    true
}

impl Invocation for Collect {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        if self.args.is_none() {
            self.args = Some(args.clone());
        }
        let Some(v) = input_or_arg(args, input) else {
            return Ok(());
        };
        if self.values.len() >= MAX_COLLECTED {
            too_many(ctx, &mut self.warned);
            return Ok(());
        }
        self.values.push(v);
        Ok(())
    }
    fn end(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ErrorRecord> {
        let args = self.args.take().unwrap_or_default();
        let mut values = std::mem::take(&mut self.values);
        match self.kind {
            Kind::Sort => {
                let sorted = sort_values(
                    &mut values,
                    &args.strings("Property"),
                    args.switch("Descending"),
                    args.switch("Unique"),
                    args.switch("CaseSensitive"),
                    ctx.cancel,
                );
                if !sorted {
                    return Ok(());
                }
                for v in values {
                    if ctx.cancelled() {
                        return Ok(());
                    }
                    ctx.output(v);
                }
            }
            Kind::Table | Kind::List => {
                let props = args.strings("Property");
                let props = if props.is_empty() {
                    if self.kind == Kind::List {
                        Some(vec!["*".to_string()])
                    } else {
                        None
                    }
                } else {
                    Some(props)
                };
                let cancel = ctx.cancel;
                let Some(text) = format_forced_until(
                    &values,
                    Forced {
                        table: self.kind == Kind::Table,
                        props,
                    },
                    &|| cancel.is_cancelled(),
                ) else {
                    return Ok(());
                };
                output_lines(ctx, &text);
            }
            Kind::Json => {
                let depth = args.int("Depth").unwrap_or(2).clamp(0, MAX_JSON_DEPTH);
                let enums = args.switch("EnumsAsStrings");
                let doc = if values.len() == 1 && !args.switch("AsArray") {
                    values
                        .first()
                        .map(|v| to_json(v, depth, enums))
                        .unwrap_or(serde_json::Value::Null)
                } else {
                    let mut items = Vec::with_capacity(values.len());
                    for v in &values {
                        if ctx.cancelled() {
                            return Ok(());
                        }
                        items.push(to_json(v, depth, enums));
                    }
                    serde_json::Value::Array(items)
                };
                if ctx.cancelled() {
                    return Ok(());
                }
                if values.is_empty() && !args.switch("AsArray") {
                    return Ok(());
                }
                let text = if args.switch("Compress") {
                    serde_json::to_string(&doc)
                } else {
                    serde_json::to_string_pretty(&doc)
                };
                let text = text.map_err(|e| {
                    ErrorRecord::new(
                        format!("The objects could not be converted to JSON: {e}"),
                        "JsonConversionFailed",
                        ErrorCategory::InvalidData,
                    )
                })?;
                ctx.output(Value::String(text));
            }
            Kind::Member => {
                if values.is_empty() {
                    return Err(ErrorRecord::new(
                        "You must specify an object for the Get-Member cmdlet.",
                        "NoObjectInGetMember,Microsoft.PowerShell.Commands.GetMemberCommand",
                        ErrorCategory::CloseError,
                    ));
                }
                let names = args.strings("Name");
                let mut seen: Vec<String> = Vec::new();
                for v in &values {
                    if ctx.cancelled() {
                        return Ok(());
                    }
                    let tn = v.type_name();
                    if seen.contains(&tn) {
                        continue;
                    }
                    seen.push(tn.clone());
                    for m in members(v) {
                        let keep = names.is_empty()
                            || m.get("Name")
                                .map(|n| names.iter().any(|p| like(p, &n.to_ps_string(), false)))
                                .unwrap_or(false);
                        if keep {
                            ctx.output(m.into_value());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- Out-String

struct OutString {
    fmt: Formatter,
    values: Vec<Value>,
    stream: Option<bool>,
}

impl Invocation for OutString {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        let stream = *self.stream.get_or_insert(args.switch("Stream"));
        let Some(v) = input_or_arg(args, input) else {
            return Ok(());
        };
        if stream {
            let text = self.fmt.push(&v);
            output_lines(ctx, &text);
        } else if self.values.len() < MAX_COLLECTED {
            self.values.push(v);
        }
        Ok(())
    }
    fn end(&mut self, ctx: &mut Ctx<'_>) -> Result<(), ErrorRecord> {
        if self.stream == Some(true) {
            let text = self.fmt.finish();
            output_lines(ctx, &text);
        } else if !self.values.is_empty() {
            let cancel = ctx.cancel;
            let Some(text) =
                crate::engine::format::format_values_until(&self.values, &|| cancel.is_cancelled())
            else {
                return Ok(());
            };
            ctx.output(Value::String(text));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- ConvertTo-Json

fn json_date(d: &DateTime<FixedOffset>) -> String {
    let ticks = d.timestamp_subsec_nanos() / 100;
    format!(
        "{}.{ticks:07}{}",
        date_text(d, "%Y-%m-%dT%H:%M:%S"),
        date_text(d, "%:z")
    )
}

/// A value as JSON the way PowerShell 7's ConvertTo-Json writes it.
pub fn to_json(v: &Value, remaining: i64, enums_as_strings: bool) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Double(d) => {
            if d.fract() == 0.0 && d.abs() < 9.0e15 {
                J::from(*d as i64)
            } else {
                serde_json::Number::from_f64(*d)
                    .map(J::Number)
                    .unwrap_or_else(|| J::String(v.to_ps_string()))
            }
        }
        Value::String(s) => J::String(s.clone()),
        Value::DateTime(d) => J::String(json_date(d)),
        Value::TimeSpan(t) => {
            let ticks = i64::try_from(t.as_nanos() / 100).unwrap_or(i64::MAX);
            let secs = t.as_secs();
            let mut m = serde_json::Map::new();
            m.insert("Ticks".into(), J::from(ticks));
            m.insert("Days".into(), J::from(secs / 86400));
            m.insert("Hours".into(), J::from((secs % 86400) / 3600));
            m.insert("Milliseconds".into(), J::from(t.subsec_millis()));
            m.insert("Minutes".into(), J::from((secs % 3600) / 60));
            m.insert("Seconds".into(), J::from(secs % 60));
            m.insert(
                "TotalSeconds".into(),
                serde_json::Number::from_f64(t.as_secs_f64())
                    .map(J::Number)
                    .unwrap_or(J::Null),
            );
            J::Object(m)
        }
        Value::Enum(e) => {
            if enums_as_strings {
                J::String(e.name.clone())
            } else {
                J::from(e.value)
            }
        }
        Value::Array(items) => J::Array(
            items
                .iter()
                .map(|i| to_json(i, remaining, enums_as_strings))
                .collect(),
        ),
        Value::Dict(entries) => {
            if remaining < 0 {
                return J::String(v.to_ps_string());
            }
            J::Object(
                entries
                    .iter()
                    .map(|(k, x)| (k.clone(), to_json(x, remaining - 1, enums_as_strings)))
                    .collect(),
            )
        }
        Value::Object(o) => {
            if remaining < 0 {
                return J::String(v.to_ps_string());
            }
            J::Object(
                o.properties
                    .iter()
                    .map(|(k, x)| (k.clone(), to_json(x, remaining - 1, enums_as_strings)))
                    .collect(),
            )
        }
    }
}

// ---------------------------------------------------------------- Get-Date

/// Format a date with a .NET custom or standard format string.
pub fn dotnet_format(d: &DateTime<FixedOffset>, fmt: &str) -> String {
    let expanded = match fmt {
        "d" => "M/d/yyyy",
        "D" => "dddd, MMMM d, yyyy",
        "t" => "h:mm tt",
        "T" => "h:mm:ss tt",
        "f" => "dddd, MMMM d, yyyy h:mm tt",
        "F" => "dddd, MMMM d, yyyy h:mm:ss tt",
        "g" => "M/d/yyyy h:mm tt",
        "G" => "M/d/yyyy h:mm:ss tt",
        "s" => "yyyy-MM-ddTHH:mm:ss",
        "o" | "O" => "yyyy-MM-ddTHH:mm:ss.fffffffK",
        "M" | "m" => "MMMM d",
        "Y" | "y" => "MMMM yyyy",
        "u" | "r" | "R" => {
            let utc = d.with_timezone(&chrono::Utc);
            return if fmt == "u" {
                date_text(&utc, "%Y-%m-%d %H:%M:%SZ")
            } else {
                date_text(&utc, "%a, %d %b %Y %H:%M:%S GMT")
            };
        }
        other => other,
    };
    let chars: Vec<char> = expanded.chars().collect();
    let mut out = String::new();
    let mut i = 0usize;
    while let Some(&c) = chars.get(i) {
        let run = chars
            .get(i..)
            .unwrap_or(&[])
            .iter()
            .take_while(|x| **x == c)
            .count();
        let spec: Option<&str> = match (c, run) {
            ('y', 1) => Some("%-y"),
            ('y', 2) => Some("%y"),
            ('y', _) => Some("%Y"),
            ('M', 1) => Some("%-m"),
            ('M', 2) => Some("%m"),
            ('M', 3) => Some("%b"),
            ('M', _) => Some("%B"),
            ('d', 1) => Some("%-d"),
            ('d', 2) => Some("%d"),
            ('d', 3) => Some("%a"),
            ('d', _) => Some("%A"),
            ('H', 1) => Some("%-H"),
            ('H', _) => Some("%H"),
            ('h', 1) => Some("%-I"),
            ('h', _) => Some("%I"),
            ('m', 1) => Some("%-M"),
            ('m', _) => Some("%M"),
            ('s', 1) => Some("%-S"),
            ('s', _) => Some("%S"),
            ('t', 1) => None,
            ('t', _) => Some("%p"),
            ('z', 1) | ('z', 2) => None,
            ('z', _) => Some("%:z"),
            ('K', _) => Some("%:z"),
            _ => None,
        };
        match (c, spec) {
            (_, Some(s)) => {
                out.push_str(&date_text(d, s));
                if c == 'K' {
                    i += 1;
                    continue;
                }
            }
            ('f' | 'F', None) => {
                let n = run.min(7);
                let nanos = format!("{:09}", d.timestamp_subsec_nanos());
                let digits: String = nanos.chars().take(n).collect();
                if c == 'F' {
                    out.push_str(digits.trim_end_matches('0'));
                } else {
                    out.push_str(&digits);
                }
            }
            ('t', None) => out.push_str(&date_text(d, "%p").chars().take(1).collect::<String>()),
            ('z', None) => {
                let secs = d.offset().local_minus_utc();
                let sign = if secs < 0 { '-' } else { '+' };
                let h = secs.abs() / 3600;
                out.push_str(&if run == 1 {
                    format!("{sign}{h}")
                } else {
                    format!("{sign}{h:02}")
                });
            }
            ('\'' | '"', None) => {
                let close = chars
                    .get(i + 1..)
                    .and_then(|rest| rest.iter().position(|x| *x == c));
                match close {
                    Some(n) => {
                        out.extend(chars.get(i + 1..i + 1 + n).unwrap_or(&[]).iter());
                        i += n + 2;
                    }
                    None => i = chars.len(),
                }
                continue;
            }
            ('\\', None) => {
                if let Some(n) = chars.get(i + 1) {
                    out.push(*n);
                }
                i += 2;
                continue;
            }
            ('%', None) if run == 1 => {
                i += 1;
                continue;
            }
            _ => {
                for _ in 0..run {
                    out.push(c);
                }
            }
        }
        i += run;
    }
    out
}

/// Format a date with PowerShell's -UFormat specifiers (a known subset; others are literal).
pub fn uformat(d: &DateTime<FixedOffset>, fmt: &str) -> String {
    const KNOWN: &str = "aAbBcCdDeFgGhHIjklmMnprRsStTuUVwWxXyYZ";
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('%') => out.push('%'),
            Some('Z') => {
                let secs = d.offset().local_minus_utc();
                out.push_str(&format!(
                    "{}{:02}",
                    if secs < 0 { '-' } else { '+' },
                    secs.abs() / 3600
                ));
            }
            Some(x) if KNOWN.contains(x) => out.push_str(&date_text(d, &format!("%{x}"))),
            Some(x) => {
                out.push('%');
                out.push(x);
            }
            None => out.push('%'),
        }
    }
    out
}

struct GetDate;

impl Invocation for GetDate {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        _input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        let d = match args.get("Date") {
            Some(Value::DateTime(d)) => *d,
            _ => chrono::Local::now().fixed_offset(),
        };
        if let Some(f) = args.string("Format") {
            ctx.output(Value::String(dotnet_format(&d, &f)));
        } else if let Some(f) = args.string("UFormat") {
            ctx.output(Value::String(uformat(&d, &f)));
        } else {
            ctx.output(Value::DateTime(d));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- Get-Member

fn short_type_name(v: &Value) -> String {
    match v {
        Value::Null => "object".into(),
        Value::Bool(_) => "bool".into(),
        Value::Int(i) => {
            if i32::try_from(*i).is_ok() {
                "int".into()
            } else {
                "long".into()
            }
        }
        Value::Double(_) => "double".into(),
        Value::String(_) => "string".into(),
        Value::DateTime(_) => "datetime".into(),
        Value::TimeSpan(_) => "timespan".into(),
        Value::Array(_) => "Object[]".into(),
        other => other.type_name(),
    }
}

fn member(type_name: &str, name: &str, kind: &str, def: String) -> PsObject {
    let mut o = PsObject::new("Microsoft.PowerShell.Commands.MemberDefinition")
        .with("TypeName", type_name)
        .with("Name", name)
        .with("MemberType", kind)
        .with("Definition", def);
    o.display = vec!["Name".into(), "MemberType".into(), "Definition".into()];
    o.to_string = Some(name.to_string());
    o
}

fn members(v: &Value) -> Vec<PsObject> {
    let tn = v.type_name();
    let mut out = vec![
        member(
            &tn,
            "Equals",
            "Method",
            "bool Equals(System.Object obj)".into(),
        ),
        member(&tn, "GetHashCode", "Method", "int GetHashCode()".into()),
        member(&tn, "GetType", "Method", "type GetType()".into()),
        member(&tn, "ToString", "Method", "string ToString()".into()),
    ];
    match v {
        Value::Object(o) => {
            let note = o.is_custom();
            for (k, pv) in &o.properties {
                let def = if note {
                    format!("{} {k}={}", short_type_name(pv), pv.to_ps_string())
                } else {
                    format!("{} {k} {{get;}}", short_type_name(pv))
                };
                out.push(member(
                    &tn,
                    k,
                    if note { "NoteProperty" } else { "Property" },
                    def,
                ));
            }
        }
        Value::Dict(d) => {
            out.push(member(
                &tn,
                "Count",
                "Property",
                format!("int Count {{get;}}={}", d.len()),
            ));
            out.push(member(
                &tn,
                "Keys",
                "Property",
                "System.Collections.ICollection Keys {get;}".into(),
            ));
            out.push(member(
                &tn,
                "Values",
                "Property",
                "System.Collections.ICollection Values {get;}".into(),
            ));
        }
        // The .NET properties keyhole models (String's Length, DateTime's Year, ...).
        Value::String(_) | Value::DateTime(_) | Value::TimeSpan(_) | Value::Array(_) => {
            for n in v.member_names() {
                let (kind, ty) = match (v, n.as_str()) {
                    (Value::DateTime(_), "DateTime") => ("ScriptProperty", "System.Object".into()),
                    _ => (
                        "Property",
                        v.member(&n)
                            .map(|m| short_type_name(&m))
                            .unwrap_or_default(),
                    ),
                };
                out.push(member(&tn, &n, kind, format!("{ty} {n} {{get;}}")));
            }
        }
        _ => {}
    }
    let kind = |m: &PsObject| {
        m.get("MemberType")
            .map(Value::to_ps_string)
            .unwrap_or_default()
    };
    let name = |m: &PsObject| m.get("Name").map(Value::to_ps_string).unwrap_or_default();
    out.sort_by_key(|a| (kind(a), name(a).to_lowercase()));
    out
}

// ---------------------------------------------------------------- Write-Output

struct WriteOutput;

impl Invocation for WriteOutput {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        args: &BoundArgs,
        input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        if let Some(v) = input {
            ctx.output(v);
            return Ok(());
        }
        match args.get("InputObject").cloned() {
            Some(Value::Array(items)) if !args.switch("NoEnumerate") => {
                for i in items {
                    if ctx.cancelled() {
                        break;
                    }
                    ctx.output(i);
                }
            }
            Some(v) => ctx.output(v),
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn date() -> DateTime<FixedOffset> {
        FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2026, 3, 7, 14, 5, 9)
            .unwrap()
    }

    #[test]
    fn dotnet_formats() {
        let d = date();
        let check = |f: &str, e: &str| assert_eq!(dotnet_format(&d, f), e, "format {f}");
        check("yyyy-MM-dd HH:mm:ss", "2026-03-07 14:05:09");
        check("yyyyMMdd", "20260307");
        check("d", "3/7/2026");
        check("dddd, MMMM d", "Saturday, March 7");
        check("hh:mm tt", "02:05 PM");
        check("'at' HH\\h", "at 14h");
        check("o", "2026-03-07T14:05:09.0000000+01:00");
        check("s", "2026-03-07T14:05:09");
        check("u", "2026-03-07 13:05:09Z");
        check("zzz", "+01:00");
        assert_eq!(
            uformat(&d, "%Y/%m/%d %H:%M %Z %q"),
            "2026/03/07 14:05 +01 %q"
        );
    }

    #[test]
    fn like_patterns() {
        assert!(like("ngin*", "NGINX", false));
        assert!(!like("ngin*", "NGINX", true));
        assert!(like("s?d", "sshd".get(1..).unwrap(), false));
        assert!(like("[a-c]at", "bat", false));
        assert!(!like("[a-c]at", "rat", false));
        assert!(like("*", "", false));
        assert!(like("a*b*c", "aXbYc", false));
        assert!(!like("a*b", "ac", false));
    }

    #[test]
    fn comparisons() {
        assert!(equal(&Value::Int(5), &"5".into(), false));
        assert_eq!(
            compare(&Value::Int(10), &"9".into(), false),
            Some(Ordering::Greater)
        );
        assert!(equal(&"Running".into(), &"running".into(), false));
        assert!(!equal(&"Running".into(), &"running".into(), true));
        assert!(equal(&Value::Bool(false), &"false".into(), false));
        let running = Value::Enum(crate::engine::EnumValue {
            type_names: vec![],
            name: "Running".into(),
            value: 4,
        });
        assert!(equal(&running, &"running".into(), false));
        assert!(equal(&running, &"4".into(), false));
        assert_eq!(
            compare(&running, &Value::Int(1), false),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn json_layout_and_depth() {
        let inner = PsObject::custom()
            .with("c", PsObject::custom().with("d", 1).into_value())
            .into_value();
        let o = PsObject::custom()
            .with("a", 1)
            .with("b", inner)
            .with("e", Value::Array(vec![1.into(), 2.5.into()]))
            .into_value();
        let j = serde_json::to_string_pretty(&to_json(&o, 2, false)).unwrap();
        assert_eq!(j, "{\n  \"a\": 1,\n  \"b\": {\n    \"c\": {\n      \"d\": 1\n    }\n  },\n  \"e\": [\n    1,\n    2.5\n  ]\n}");
        let j1 = serde_json::to_string(&to_json(&o, 1, false)).unwrap();
        assert_eq!(j1, "{\"a\":1,\"b\":{\"c\":\"@{d=1}\"},\"e\":[1,2.5]}");
    }

    #[test]
    fn sorting() {
        let mut v: Vec<Value> = vec!["b".into(), "A".into(), "c".into(), "a".into()];
        assert!(sort_values(
            &mut v,
            &[],
            false,
            true,
            false,
            &CancelToken::new()
        ));
        assert_eq!(v, vec![Value::from("A"), "b".into(), "c".into()]);
        let mut n: Vec<Value> = vec![10.into(), 9.into(), 100.into()];
        assert!(sort_values(
            &mut n,
            &[],
            true,
            false,
            false,
            &CancelToken::new()
        ));
        assert_eq!(n, vec![Value::Int(100), 10.into(), 9.into()]);
    }
}
