//! The object model: what flows through pipelines and out to clients.
#![forbid(unsafe_code)]

use chrono::{DateTime, FixedOffset};

/// A value in the engine. Cheap to clone for the sizes keyhole handles.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
    DateTime(DateTime<FixedOffset>),
    /// .NET TimeSpan (Get-Uptime); whole and fractional seconds.
    TimeSpan(std::time::Duration),
    /// A .NET enum value such as `ServiceControllerStatus.Running`.
    Enum(EnumValue),
    Array(Vec<Value>),
    /// Ordered dictionary (hashtable in CLIXML).
    Dict(Vec<(String, Value)>),
    Object(Box<PsObject>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnumValue {
    /// Most derived first, e.g. ["System.ServiceProcess.ServiceControllerStatus", "System.Enum", "System.ValueType", "System.Object"].
    pub type_names: Vec<String>,
    /// The member name, which is also its ToString (e.g. "Running").
    pub name: String,
    pub value: i64,
}

/// An object with type names and ordered properties (PSCustomObject or a typed object).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PsObject {
    /// Most derived first, e.g. ["System.Diagnostics.Process", "System.ComponentModel.Component", "System.Object"].
    /// Empty means PSCustomObject (["System.Management.Automation.PSCustomObject", "System.Object"]).
    pub type_names: Vec<String>,
    pub properties: Vec<(String, Value)>,
    /// What `ToString()` gives (CLIXML `<ToString>`); None: the type name, or for PSCustomObject "@{a=1; b=2}".
    pub to_string: Option<String>,
    /// Default display property set (formatting); empty means all properties.
    pub display: Vec<String>,
}

impl PsObject {
    pub fn new(type_name: &str) -> Self {
        PsObject {
            type_names: if type_name.is_empty() {
                Vec::new()
            } else {
                vec![type_name.to_string(), "System.Object".to_string()]
            },
            ..Default::default()
        }
    }
    /// A PSCustomObject.
    pub fn custom() -> Self {
        PsObject::default()
    }
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.push((name.to_string(), value.into()));
        self
    }
    pub fn push(&mut self, name: &str, value: impl Into<Value>) {
        self.properties.push((name.to_string(), value.into()));
    }
    /// Case-insensitive property lookup, as PowerShell does.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.properties
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    pub fn type_name(&self) -> &str {
        self.type_names
            .first()
            .map(String::as_str)
            .unwrap_or("System.Management.Automation.PSCustomObject")
    }
    pub fn is_custom(&self) -> bool {
        self.type_names.is_empty()
            || self.type_name() == "System.Management.Automation.PSCustomObject"
    }
    pub fn into_value(self) -> Value {
        Value::Object(Box::new(self))
    }
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    /// Property of an object or key of a dictionary (case-insensitive); None otherwise.
    pub fn property(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(o) => o.get(name),
            Value::Dict(d) => d
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v),
            _ => None,
        }
    }
    /// The .NET type name PowerShell reports for this value.
    pub fn type_name(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(_) => "System.Boolean".into(),
            Value::Int(i) => {
                if i32::try_from(*i).is_ok() {
                    "System.Int32".into()
                } else {
                    "System.Int64".into()
                }
            }
            Value::Double(_) => "System.Double".into(),
            Value::String(_) => "System.String".into(),
            Value::DateTime(_) => "System.DateTime".into(),
            Value::TimeSpan(_) => "System.TimeSpan".into(),
            Value::Enum(e) => e
                .type_names
                .first()
                .cloned()
                .unwrap_or_else(|| "System.Enum".into()),
            Value::Array(_) => "System.Object[]".into(),
            Value::Dict(_) => "System.Collections.Hashtable".into(),
            Value::Object(o) => o.type_name().to_string(),
        }
    }
    /// PowerShell's string conversion ("True", "" for null, invariant numbers, ...).
    pub fn to_ps_string(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(true) => "True".into(),
            Value::Bool(false) => "False".into(),
            Value::Int(i) => i.to_string(),
            Value::Double(d) => format_double(*d),
            Value::String(s) => s.clone(),
            Value::DateTime(d) => d.format("%m/%d/%Y %H:%M:%S").to_string(),
            Value::TimeSpan(t) => format_timespan(*t),
            Value::Enum(e) => e.name.clone(),
            Value::Array(items) => items
                .iter()
                .map(Value::to_ps_string)
                .collect::<Vec<_>>()
                .join(" "),
            Value::Dict(_) => "System.Collections.Hashtable".into(),
            Value::Object(o) => match &o.to_string {
                Some(s) => s.clone(),
                None if o.is_custom() => {
                    let parts: Vec<String> = o
                        .properties
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.to_ps_string()))
                        .collect();
                    format!("@{{{}}}", parts.join("; "))
                }
                None => o.type_name().to_string(),
            },
        }
    }
}

/// PowerShell prints doubles with up to 15 significant digits and no trailing zeros.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if d == d.trunc() && d.abs() < 1e15 {
        return format!("{}", d as i64);
    }
    // Round to 15 significant digits as .NET's default formatting does, then print the
    // shortest representation of that (45.079999999999998 → 45.08).
    let magnitude = d.abs().log10().floor() as i32;
    let decimals = (14 - magnitude).clamp(0, 15) as usize;
    let rounded: f64 = format!("{d:.decimals$}").parse().unwrap_or(d);
    format!("{rounded}")
}

/// TimeSpan's ToString: `[-][d.]hh:mm:ss[.fffffff]`.
pub fn format_timespan(t: std::time::Duration) -> String {
    let total = t.as_secs();
    let days = total / 86400;
    let h = (total % 86400) / 3600;
    let m = (total % 3600) / 60;
    let s = total % 60;
    let ticks = t.subsec_nanos() / 100;
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days}."));
    }
    out.push_str(&format!("{h:02}:{m:02}:{s:02}"));
    if ticks > 0 {
        out.push_str(&format!(".{ticks:07}"));
    }
    out
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}
impl From<u64> for Value {
    fn from(i: u64) -> Self {
        i64::try_from(i)
            .map(Value::Int)
            .unwrap_or(Value::Double(i as f64))
    }
}
impl From<f64> for Value {
    fn from(d: f64) -> Self {
        Value::Double(d)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map(Into::into).unwrap_or(Value::Null)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}
impl From<PsObject> for Value {
    fn from(o: PsObject) -> Self {
        Value::Object(Box::new(o))
    }
}
impl From<DateTime<FixedOffset>> for Value {
    fn from(d: DateTime<FixedOffset>) -> Self {
        Value::DateTime(d)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_as_powershell_does() {
        for (d, want) in [
            (45.08, "45.08"),
            (45.08_f64.next_up(), "45.08"),
            (0.1 + 0.2, "0.3"),
            (1.5, "1.5"),
            (3.0, "3"),
            (-2.25, "-2.25"),
            (123456.789, "123456.789"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(format_double(d), want, "{d}");
        }
    }
}
