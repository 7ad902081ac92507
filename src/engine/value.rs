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
    /// A property bag (PSCustomObject, or what Select-Object makes: `Selected.<type>` over
    /// PSCustomObject): its properties are note properties, serialized as `<MS>` as Windows does.
    pub fn is_custom(&self) -> bool {
        self.type_names.is_empty()
            || self
                .type_names
                .iter()
                .any(|t| t == "System.Management.Automation.PSCustomObject")
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
    /// A property as PowerShell reads it (`Select-Object`, `Where-Object`, `Sort-Object`,
    /// `Measure-Object`, `Format-*`): an object's property or a dictionary's key, else one of the
    /// .NET properties keyhole models for String, DateTime, TimeSpan and arrays (see
    /// [`Value::member_names`]). Case-insensitive. Owned: most of them are computed.
    pub fn member(&self, name: &str) -> Option<Value> {
        match self {
            Value::Object(_) | Value::Dict(_) => self.property(name).cloned(),
            Value::String(s) if name.eq_ignore_ascii_case("Length") => {
                Some(Value::from(s.encode_utf16().count() as u64))
            }
            Value::Array(items)
                if ["Count", "Length"]
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name)) =>
            {
                Some(Value::from(items.len() as u64))
            }
            Value::DateTime(d) => datetime_member(d, name),
            Value::TimeSpan(t) => timespan_member(*t, name),
            _ => None,
        }
    }

    /// The property names `Select-Object *`, wildcards and `Format-List` see, in order.
    pub fn member_names(&self) -> Vec<String> {
        let names: &[&str] = match self {
            Value::Object(o) => return o.properties.iter().map(|(k, _)| k.clone()).collect(),
            Value::Dict(d) => return d.iter().map(|(k, _)| k.clone()).collect(),
            Value::String(_) => &["Length"],
            Value::Array(_) => &["Count", "Length"],
            Value::DateTime(_) => DATETIME_PROPERTIES,
            Value::TimeSpan(_) => TIMESPAN_PROPERTIES,
            _ => &[],
        };
        names.iter().map(|n| n.to_string()).collect()
    }

    /// A DateTime or TimeSpan as an object with its modelled properties (how `Format-List`
    /// and a TimeSpan's default list view show it). None for other values.
    pub fn members_object(&self) -> Option<PsObject> {
        if !matches!(
            self,
            Value::DateTime(_) | Value::TimeSpan(_) | Value::String(_)
        ) {
            return None;
        }
        let mut o = PsObject::new(&self.type_name());
        for n in self.member_names() {
            let v = self.member(&n).unwrap_or(Value::Null);
            o.push(&n, v);
        }
        o.to_string = Some(self.to_ps_string());
        Some(o)
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

/// The System.DateTime properties keyhole models, in the order `Get-Date | Select-Object *`
/// shows them (`DateTime` is PowerShell's script property: the long date and time).
pub const DATETIME_PROPERTIES: &[&str] = &[
    "DateTime",
    "Date",
    "Day",
    "DayOfWeek",
    "DayOfYear",
    "Hour",
    "Kind",
    "Millisecond",
    "Minute",
    "Month",
    "Second",
    "Ticks",
    "TimeOfDay",
    "Year",
];

/// The System.TimeSpan properties, in the order PowerShell's default list view shows them.
pub const TIMESPAN_PROPERTIES: &[&str] = &[
    "Days",
    "Hours",
    "Minutes",
    "Seconds",
    "Milliseconds",
    "Ticks",
    "TotalDays",
    "TotalHours",
    "TotalMinutes",
    "TotalSeconds",
    "TotalMilliseconds",
];

/// .NET ticks (100 ns) per second.
const TICKS_PER_SECOND: i64 = 10_000_000;

fn enum_of(type_name: &str, name: &str, value: i64) -> Value {
    Value::Enum(EnumValue {
        type_names: vec![
            type_name.to_string(),
            "System.Enum".to_string(),
            "System.ValueType".to_string(),
            "System.Object".to_string(),
        ],
        name: name.to_string(),
        value,
    })
}

/// One System.DateTime property. Dates keep the offset they were made with; .NET sees them as
/// local times (`Kind` Local), which is also how it deserializes them from CLIXML.
fn datetime_member(d: &DateTime<FixedOffset>, name: &str) -> Option<Value> {
    use chrono::{Datelike, Timelike};
    let canonical = DATETIME_PROPERTIES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name))?;
    let nanos = d.nanosecond() % 1_000_000_000;
    let since_midnight = std::time::Duration::new(u64::from(d.num_seconds_from_midnight()), nanos);
    Some(match *canonical {
        "DateTime" => Value::String(crate::engine::format::long_date(d)),
        "Date" => Value::DateTime(
            d.with_hour(0)
                .and_then(|x| x.with_minute(0))
                .and_then(|x| x.with_second(0))
                .and_then(|x| x.with_nanosecond(0))?,
        ),
        "Day" => Value::Int(i64::from(d.day())),
        "DayOfWeek" => {
            let n = i64::from(d.weekday().num_days_from_sunday());
            let name = match n {
                0 => "Sunday",
                1 => "Monday",
                2 => "Tuesday",
                3 => "Wednesday",
                4 => "Thursday",
                5 => "Friday",
                _ => "Saturday",
            };
            enum_of("System.DayOfWeek", name, n)
        }
        "DayOfYear" => Value::Int(i64::from(d.ordinal())),
        "Hour" => Value::Int(i64::from(d.hour())),
        "Kind" => enum_of("System.DateTimeKind", "Local", 2),
        "Millisecond" => Value::Int(i64::from(nanos / 1_000_000)),
        "Minute" => Value::Int(i64::from(d.minute())),
        "Month" => Value::Int(i64::from(d.month())),
        "Second" => Value::Int(i64::from(d.second())),
        "Ticks" => {
            // Ticks of the clock time shown (not of UTC), from 0001-01-01 00:00:00.
            let epoch = chrono::NaiveDate::from_ymd_opt(1, 1, 1)?.and_hms_opt(0, 0, 0)?;
            let since = d.naive_local().signed_duration_since(epoch);
            let ticks = since
                .num_seconds()
                .checked_mul(TICKS_PER_SECOND)?
                .checked_add(i64::from(since.subsec_nanos() / 100))?;
            Value::Int(ticks)
        }
        "TimeOfDay" => Value::TimeSpan(since_midnight),
        "Year" => Value::Int(i64::from(d.year())),
        _ => return None,
    })
}

/// One System.TimeSpan property.
fn timespan_member(t: std::time::Duration, name: &str) -> Option<Value> {
    let canonical = TIMESPAN_PROPERTIES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(name))?;
    let secs = t.as_secs();
    let total = t.as_secs_f64();
    let int = |v: u64| Value::from(v);
    Some(match *canonical {
        "Days" => int(secs / 86_400),
        "Hours" => int(secs % 86_400 / 3600),
        "Minutes" => int(secs % 3600 / 60),
        "Seconds" => int(secs % 60),
        "Milliseconds" => int(u64::from(t.subsec_millis())),
        "Ticks" => Value::Int(
            i64::try_from(secs)
                .ok()?
                .checked_mul(TICKS_PER_SECOND)?
                .checked_add(i64::from(t.subsec_nanos() / 100))?,
        ),
        "TotalDays" => Value::Double(total / 86_400.0),
        "TotalHours" => Value::Double(total / 3600.0),
        "TotalMinutes" => Value::Double(total / 60.0),
        "TotalSeconds" => Value::Double(total),
        "TotalMilliseconds" => Value::Double(total * 1000.0),
        _ => return None,
    })
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
    fn datetime_has_the_dotnet_properties() {
        let d = DateTime::parse_from_rfc3339("2024-02-29T13:14:15.1234567+01:00").unwrap();
        let v = Value::DateTime(d);
        let int = |n: &str| match v.member(n) {
            Some(Value::Int(i)) => i,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(int("Year"), 2024);
        assert_eq!(int("year"), 2024, "names are case-insensitive");
        assert_eq!(int("Month"), 2);
        assert_eq!(int("Day"), 29);
        assert_eq!(int("Hour"), 13);
        assert_eq!(int("Minute"), 14);
        assert_eq!(int("Second"), 15);
        assert_eq!(int("Millisecond"), 123);
        assert_eq!(int("DayOfYear"), 60);
        // .NET: new DateTime(2024, 2, 29, 13, 14, 15).Ticks + 1234567
        assert_eq!(int("Ticks"), 638_448_092_551_234_567);
        match v.member("DayOfWeek") {
            Some(Value::Enum(e)) => {
                assert_eq!((e.name.as_str(), e.value), ("Thursday", 4));
                assert_eq!(e.type_names[0], "System.DayOfWeek");
            }
            other => panic!("{other:?}"),
        }
        match v.member("Kind") {
            Some(Value::Enum(e)) => assert_eq!((e.name.as_str(), e.value), ("Local", 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            v.member("Date"),
            Some(Value::DateTime(
                DateTime::parse_from_rfc3339("2024-02-29T00:00:00+01:00").unwrap()
            ))
        );
        assert_eq!(
            v.member("TimeOfDay"),
            Some(Value::TimeSpan(std::time::Duration::new(
                47_655,
                123_456_700
            )))
        );
        assert_eq!(
            v.member("DateTime").unwrap().to_ps_string(),
            "Thursday, February 29, 2024 1:14:15 PM"
        );
        assert_eq!(v.member("Nope"), None);
        assert_eq!(v.member_names().len(), DATETIME_PROPERTIES.len());
        for n in v.member_names() {
            assert!(v.member(&n).is_some(), "{n}");
        }
    }

    #[test]
    fn timespan_string_and_array_properties() {
        let t = Value::TimeSpan(std::time::Duration::from_millis(93_784_500));
        let get = |n: &str| t.member(n).unwrap();
        assert_eq!(get("Days"), Value::Int(1));
        assert_eq!(get("Hours"), Value::Int(2));
        assert_eq!(get("Minutes"), Value::Int(3));
        assert_eq!(get("Seconds"), Value::Int(4));
        assert_eq!(get("Milliseconds"), Value::Int(500));
        assert_eq!(get("Ticks"), Value::Int(937_845_000_000));
        assert_eq!(get("TotalSeconds"), Value::Double(93_784.5));
        assert_eq!(get("TotalMilliseconds"), Value::Double(93_784_500.0));
        assert_eq!(
            format_double(match get("TotalHours") {
                Value::Double(d) => d,
                _ => unreachable!(),
            }),
            "26.05125"
        );
        // .NET strings count UTF-16 code units.
        assert_eq!(Value::from("héllo ✓").member("length"), Some(Value::Int(7)));
        assert_eq!(Value::from("😀").member("Length"), Some(Value::Int(2)));
        let a = Value::Array(vec![1.into(), 2.into()]);
        assert_eq!(a.member("Count"), Some(Value::Int(2)));
        assert_eq!(Value::Int(5).member("Length"), None);
        // An object's own property wins; other names are not invented.
        let o = PsObject::new("T").with("Length", "own").into_value();
        assert_eq!(o.member("length"), Some(Value::from("own")));
        assert_eq!(o.member("Count"), None);
    }

    #[test]
    fn selected_objects_are_property_bags() {
        let mut o = PsObject::default();
        assert!(o.is_custom());
        o.type_names = vec![
            "Selected.System.DateTime".into(),
            "System.Management.Automation.PSCustomObject".into(),
            "System.Object".into(),
        ];
        assert!(o.is_custom());
        assert!(!PsObject::new("System.Diagnostics.Process").is_custom());
    }

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
