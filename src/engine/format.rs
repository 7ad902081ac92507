//! Out-Default text formatting, close to PowerShell's: scalars as themselves, objects with up to
//! four shown properties as tables, five or more as lists, a new header whenever the shape changes.
#![forbid(unsafe_code)]

use super::value::{PsObject, Value};
use crate::lang::wildcard::{self, has_wildcards, Mode};

/// Rows a streaming table buffers to size its columns before printing (later rows keep those
/// widths; a longer value just widens its own line).
pub const TABLE_BUFFER_ROWS: usize = 50;
/// Most properties a table shows (PowerShell's default switches to a list above four).
pub const MAX_TABLE_PROPERTIES: usize = 4;
/// Widest cell shown (characters); longer values are cut with "…".
pub const MAX_CELL_WIDTH: usize = 200;

const MEMBER_DEFINITION: &str = "Microsoft.PowerShell.Commands.MemberDefinition";

/// A shape forced by Format-Table / Format-List.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    pub table: bool,
    /// Property names or wildcards; None: the object's display set.
    pub props: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Key {
    type_name: String,
    props: Vec<String>,
    group: Option<String>,
}

struct TableState {
    key: Key,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
    /// Set once the header has been printed.
    widths: Option<Vec<usize>>,
}

enum State {
    Idle,
    Table(TableState),
    List(Key),
}

/// Streaming formatter: feed values in order, get text (tables for up to four properties,
/// lists otherwise, a header each time the shape changes).
pub struct Formatter {
    state: State,
    forced: Option<Forced>,
    buffer_rows: usize,
}

impl Default for Formatter {
    fn default() -> Self {
        Self::new()
    }
}

fn is_numeric(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Double(_))
}

/// A value as one table cell or list value.
pub fn cell_text(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(Value::to_ps_string).collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_ps_string(),
    };
    s.replace(['\r', '\n'], " ")
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn pad(s: &str, width: usize, right: bool) -> String {
    let n = s.chars().count();
    let fill = " ".repeat(width.saturating_sub(n));
    if right {
        format!("{fill}{s}")
    } else {
        format!("{s}{fill}")
    }
}

/// Property names of an object to show: its display set when non-empty, else all.
pub fn shown_properties(o: &PsObject) -> Vec<String> {
    if o.display.is_empty() {
        o.properties.iter().map(|(k, _)| k.clone()).collect()
    } else {
        o.display.clone()
    }
}

/// Resolve names and wildcards (`-like` mode) against an object's properties.
pub fn resolve_props(patterns: &[String], available: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in patterns {
        if has_wildcards(p, Mode::LIKE) {
            for a in available {
                if wildcard::matches(p, a, Mode::LIKE)
                    && !out.iter().any(|o| o.eq_ignore_ascii_case(a))
                {
                    out.push(a.clone());
                }
            }
        } else if !out.iter().any(|o| o.eq_ignore_ascii_case(p)) {
            let name = available
                .iter()
                .find(|a| a.eq_ignore_ascii_case(p))
                .cloned()
                .unwrap_or_else(|| p.clone());
            out.push(name);
        }
    }
    out
}

/// Format a date with a chrono format string without ever panicking: an unsupported
/// specifier gives an empty string instead of the panic `to_string()` would raise.
pub fn date_text<Tz: chrono::TimeZone>(d: &chrono::DateTime<Tz>, spec: &str) -> String
where
    Tz::Offset: std::fmt::Display,
{
    use std::fmt::Write;
    let mut out = String::new();
    match write!(out, "{}", d.format(spec)) {
        Ok(()) => out,
        Err(_) => String::new(),
    }
}

/// A date as Out-Default shows it (long date and time).
pub fn long_date(d: &chrono::DateTime<chrono::FixedOffset>) -> String {
    date_text(d, "%A, %B %-d, %Y %-I:%M:%S %p")
}

impl Formatter {
    pub fn new() -> Self {
        Formatter {
            state: State::Idle,
            forced: None,
            buffer_rows: TABLE_BUFFER_ROWS,
        }
    }

    /// A formatter with a forced shape that sizes columns over everything it is given.
    pub fn forced(f: Forced) -> Self {
        Formatter {
            state: State::Idle,
            forced: Some(f),
            buffer_rows: usize::MAX,
        }
    }

    fn whole() -> Self {
        Formatter {
            state: State::Idle,
            forced: None,
            buffer_rows: usize::MAX,
        }
    }

    /// Whether a DateTime, TimeSpan or string shows as its modelled properties: a TimeSpan
    /// always (PowerShell's default list view), a DateTime under Format-List or a chosen
    /// -Property, a string only under a chosen -Property (`Format-Table Length`).
    fn member_view(&self, v: &Value) -> bool {
        let chosen = self.forced.as_ref().is_some_and(|f| f.props.is_some());
        let list = self.forced.as_ref().is_some_and(|f| !f.table);
        match v {
            Value::TimeSpan(_) => true,
            Value::DateTime(_) => chosen || list,
            _ => chosen,
        }
    }

    /// Text for this value (may include a table header).
    pub fn push(&mut self, v: &Value) -> String {
        let mut out = String::new();
        self.push_into(v, &mut out);
        out
    }

    fn push_into(&mut self, v: &Value, out: &mut String) {
        match v {
            Value::Null => {}
            Value::Array(items) => {
                for i in items {
                    self.push_into(i, out);
                }
            }
            Value::Dict(entries) => {
                for (k, val) in entries {
                    let row = PsObject::new("System.Collections.DictionaryEntry")
                        .with("Name", k.as_str())
                        .with("Value", val.clone());
                    self.object(&row, out);
                }
            }
            Value::Object(o) => self.object(o, out),
            v @ (Value::TimeSpan(_) | Value::DateTime(_) | Value::String(_))
                if self.member_view(v) =>
            {
                if let Some(o) = v.members_object() {
                    self.object(&o, out);
                }
            }
            Value::DateTime(d) => {
                self.close(out);
                out.push_str(&long_date(d));
                out.push('\n');
            }
            other => {
                self.close(out);
                out.push_str(&other.to_ps_string());
                out.push('\n');
            }
        }
    }

    fn object(&mut self, o: &PsObject, out: &mut String) {
        let available: Vec<String> = o.properties.iter().map(|(k, _)| k.clone()).collect();
        let props = match self.forced.as_ref().and_then(|f| f.props.as_ref()) {
            Some(p) => resolve_props(p, &available),
            None => shown_properties(o),
        };
        let table = match &self.forced {
            Some(f) => f.table,
            None => props.len() <= MAX_TABLE_PROPERTIES,
        };
        let group = if o.type_name() == MEMBER_DEFINITION {
            o.get("TypeName").map(Value::to_ps_string)
        } else {
            None
        };
        let key = Key {
            type_name: view_family(o),
            props: props.clone(),
            group,
        };
        let cells: Vec<&Value> = props
            .iter()
            .map(|p| o.get(p).unwrap_or(&Value::Null))
            .collect();
        if table {
            let same = matches!(&self.state, State::Table(t) if t.key == key);
            if !same {
                self.close(out);
                let right = cells.iter().map(|v| is_numeric(v)).collect();
                self.state = State::Table(TableState {
                    key,
                    right,
                    rows: Vec::new(),
                    widths: None,
                });
            }
            let row: Vec<String> = cells
                .iter()
                .map(|v| cut(&cell_text(v), MAX_CELL_WIDTH))
                .collect();
            let limit = self.buffer_rows;
            if let State::Table(t) = &mut self.state {
                match &t.widths {
                    Some(w) => {
                        out.push_str(&render_row(&row, w, &t.right));
                    }
                    None => {
                        t.rows.push(row);
                        if t.rows.len() >= limit {
                            flush_table(t, out);
                        }
                    }
                }
            }
        } else {
            let same = matches!(&self.state, State::List(k) if *k == key);
            if !same {
                self.close(out);
                self.state = State::List(key);
            }
            let width = props.iter().map(|p| p.chars().count()).max().unwrap_or(0);
            out.push('\n');
            for (p, v) in props.iter().zip(cells) {
                let text = match v {
                    Value::Array(_) => cell_text(v),
                    other => other.to_ps_string(),
                };
                let line = format!("{} : {}", pad(p, width, false), text);
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
    }

    fn close(&mut self, out: &mut String) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {}
            State::Table(mut t) => {
                if t.widths.is_none() {
                    flush_table(&mut t, out);
                }
                out.push('\n');
            }
            State::List(_) => out.push('\n'),
        }
    }

    /// Text to end the stream (trailing blank line of a table, ...).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.close(&mut out);
        out
    }
}

fn render_row(row: &[String], widths: &[usize], right: &[bool]) -> String {
    let last = row.len().saturating_sub(1);
    let parts: Vec<String> = row
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let w = widths.get(i).copied().unwrap_or(0);
            let r = right.get(i).copied().unwrap_or(false);
            if i == last && !r {
                c.clone()
            } else {
                pad(c, w, r)
            }
        })
        .collect();
    let mut s = parts.join(" ").trim_end().to_string();
    s.push('\n');
    s
}

fn flush_table(t: &mut TableState, out: &mut String) {
    let headers = &t.key.props;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &t.rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    out.push('\n');
    if let Some(g) = &t.key.group {
        out.push_str(&format!("   TypeName: {g}\n\n"));
    }
    out.push_str(&render_row(headers, &widths, &t.right));
    let dashes: Vec<String> = headers
        .iter()
        .map(|h| "-".repeat(h.chars().count()))
        .collect();
    out.push_str(&render_row(&dashes, &widths, &t.right));
    for r in t.rows.drain(..) {
        out.push_str(&render_row(&r, &widths, &t.right));
    }
    t.widths = Some(widths);
}

/// Format a whole list of values as Out-Default would.
pub fn format_values(values: &[Value]) -> String {
    format_values_until(values, &|| false).unwrap_or_default()
}

/// [`format_values`] asking `stop` before each value; None when it said stop (Ctrl+C, the
/// pipeline's deadline).
pub fn format_values_until(values: &[Value], stop: &dyn Fn() -> bool) -> Option<String> {
    format_with(Formatter::whole(), values, stop)
}

fn format_with(mut f: Formatter, values: &[Value], stop: &dyn Fn() -> bool) -> Option<String> {
    let mut s = String::new();
    for v in values {
        if stop() {
            return None;
        }
        s.push_str(&f.push(v));
    }
    s.push_str(&f.finish());
    Some(s)
}

/// The type whose view formats `o`: objects of one family (CmdletInfo, FunctionInfo, AliasInfo
/// and ApplicationInfo are all CommandInfo) share one table, as PowerShell's views do.
fn view_family(o: &PsObject) -> String {
    const FAMILIES: &[&str] = &["System.Management.Automation.CommandInfo"];
    for f in FAMILIES {
        if o.type_names.iter().any(|t| t == f) {
            return (*f).to_string();
        }
    }
    o.type_name().to_string()
}

/// Format a whole list of values in a forced shape (Format-Table / Format-List).
pub fn format_forced(values: &[Value], forced: Forced) -> String {
    format_forced_until(values, forced, &|| false).unwrap_or_default()
}

/// [`format_forced`] asking `stop` before each value; None when it said stop.
pub fn format_forced_until(
    values: &[Value],
    forced: Forced,
    stop: &dyn Fn() -> bool,
) -> Option<String> {
    format_with(Formatter::forced(forced), values, stop)
}

/// An error record as PowerShell's console prints it (the one rendering used by `keyhole run`,
/// WinRS stderr and, later, the web console):
///
/// ```text
/// Get-Process : Cannot find a process with the name "x".
///     + CategoryInfo          : ObjectNotFound: (x:String) [Get-Process], ProcessCommandException
///     + FullyQualifiedErrorId : NoProcessFoundForGivenName,Get-Process
/// ```
pub fn error_text(rec: &super::command::ErrorRecord) -> String {
    let mut s = String::new();
    if let Some(c) = &rec.command {
        s.push_str(c);
        s.push_str(" : ");
    }
    s.push_str(&rec.message);
    s.push('\n');
    let (target, ttype) = match &rec.target {
        Some(Value::Null) | None => (String::new(), String::new()),
        Some(v) => (
            v.to_ps_string(),
            v.type_name().rsplit('.').next().unwrap_or("").to_string(),
        ),
    };
    let reason = rec.exception_type.rsplit('.').next().unwrap_or("");
    s.push_str(&format!(
        "    + CategoryInfo          : {}: ({}:{}) [{}], {}\n",
        rec.category.as_str(),
        target,
        ttype,
        rec.command.as_deref().unwrap_or(""),
        reason
    ));
    s.push_str(&format!(
        "    + FullyQualifiedErrorId : {}\n",
        rec.fully_qualified_error_id
    ));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn check(values: &[Value], expected: &str) {
        assert_eq!(format_values(values), expected);
    }

    fn svc(name: &str, status: &str, n: i64) -> Value {
        PsObject::new("Svc")
            .with("Name", name)
            .with("Status", status)
            .with("Pid", n)
            .into_value()
    }

    #[test]
    fn scalars() {
        check(
            &[
                "a".into(),
                Value::Int(5),
                Value::Bool(true),
                Value::Null,
                Value::Bool(false),
            ],
            "a\n5\nTrue\nFalse\n",
        );
    }

    #[test]
    fn table() {
        check(
            &[svc("nginx", "Running", 12), svc("cups", "Stopped", 3456)],
            "\nName  Status   Pid\n----  ------   ---\nnginx Running   12\ncups  Stopped 3456\n\n",
        );
    }

    #[test]
    fn display_set_and_right_aligned_header() {
        let mut o = PsObject::new("P")
            .with("Id", 7)
            .with("Name", "sshd")
            .with("Hidden", "x");
        o.display = vec!["Id".into(), "Name".into()];
        check(&[o.into_value()], "\nId Name\n-- ----\n 7 sshd\n\n");
    }

    #[test]
    fn list_for_five_properties() {
        let o = PsObject::custom()
            .with("a", 1)
            .with("bb", 2)
            .with("c", "x")
            .with("d", Value::Null)
            .with("e", true);
        check(&[o.clone().into_value(), o.into_value()], "\na  : 1\nbb : 2\nc  : x\nd  :\ne  : True\n\na  : 1\nbb : 2\nc  : x\nd  :\ne  : True\n\n");
    }

    #[test]
    fn shape_change_new_header() {
        let a = PsObject::custom().with("x", 1).into_value();
        let b = PsObject::custom().with("y", "q").into_value();
        check(&[a, "s".into(), b], "\nx\n-\n1\n\ns\n\ny\n-\nq\n\n");
    }

    #[test]
    fn arrays_in_cells_and_forced_list() {
        let o = PsObject::custom()
            .with("n", "a")
            .with("v", Value::Array(vec!["x".into(), "y".into()]))
            .into_value();
        check(std::slice::from_ref(&o), "\nn v\n- -\na {x, y}\n\n");
        let f = format_forced(
            &[o],
            Forced {
                table: false,
                props: Some(vec!["v".into()]),
            },
        );
        assert_eq!(f, "\nv : {x, y}\n\n");
    }

    #[test]
    fn streaming_table_keeps_widths() {
        let mut f = Formatter::new();
        f.buffer_rows = 1;
        let a = f.push(&svc("a", "Running", 1));
        assert_eq!(
            a,
            "\nName Status  Pid\n---- ------  ---\na    Running   1\n"
        );
        let b = f.push(&svc("b", "Up", 22));
        assert_eq!(b, "b    Up       22\n");
        assert_eq!(f.finish(), "\n");
    }

    #[test]
    fn error_records_render_as_powershell_prints_them() {
        use crate::engine::{ErrorCategory, ErrorRecord};
        let mut e = ErrorRecord::new(
            "Cannot find a process with the name \"x\".",
            "NoProcessFoundForGivenName,Get-Process",
            ErrorCategory::ObjectNotFound,
        )
        .target("x")
        .exception("Microsoft.PowerShell.Commands.ProcessCommandException");
        e.command = Some("Get-Process".into());
        assert_eq!(
            error_text(&e),
            "Get-Process : Cannot find a process with the name \"x\".\n    + CategoryInfo          : ObjectNotFound: (x:String) [Get-Process], ProcessCommandException\n    + FullyQualifiedErrorId : NoProcessFoundForGivenName,Get-Process\n"
        );
        let bare = ErrorRecord::new("boom", "Boom", ErrorCategory::NotSpecified);
        assert!(
            error_text(&bare).contains("    + CategoryInfo          : NotSpecified: (:) [], "),
            "{}",
            error_text(&bare)
        );
    }
}
