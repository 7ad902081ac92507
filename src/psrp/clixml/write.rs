//! CLIXML serializer: engine values and records to the XML Windows sends (RefId/TNRef reuse).
#![forbid(unsafe_code)]

use crate::engine::{ErrorRecord, Value};

use super::encode_string;

/// Nesting deeper than this is written as the value's string form (engine values are finite,
/// but a client must never receive something its deserializer refuses).
pub const MAX_WRITE_DEPTH: usize = 48;

pub const PSCUSTOMOBJECT: &[&str] = &[
    "System.Management.Automation.PSCustomObject",
    "System.Object",
];
pub const OBJECT_ARRAY: &[&str] = &["System.Object[]", "System.Array", "System.Object"];
pub const HASHTABLE: &[&str] = &["System.Collections.Hashtable", "System.Object"];

/// Writes one message body. RefIds of objects and of type-name lists start at 0 per message.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
    next_ref: u32,
    type_lists: Vec<Vec<String>>,
}

fn name_attr(name: Option<&str>) -> String {
    match name {
        Some(n) => format!(" N=\"{}\"", encode_string(n)),
        None => String::new(),
    }
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn finish(self) -> String {
        self.out
    }

    /// Append literal markup (tags such as `<MS>`); never user data.
    pub fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// A primitive element with encoded text, e.g. `<S N="x">text</S>`.
    pub fn prim(&mut self, tag: &str, name: Option<&str>, text: &str) {
        let n = name_attr(name);
        self.out
            .push_str(&format!("<{tag}{n}>{}</{tag}>", encode_string(text)));
    }

    pub fn nil(&mut self, name: Option<&str>) {
        let n = name_attr(name);
        self.out.push_str(&format!("<Nil{n} />"));
    }

    pub fn string(&mut self, name: Option<&str>, s: &str) {
        self.prim("S", name, s);
    }

    pub fn bool(&mut self, name: Option<&str>, b: bool) {
        self.prim("B", name, if b { "true" } else { "false" });
    }

    pub fn i32(&mut self, name: Option<&str>, i: i32) {
        self.prim("I32", name, &i.to_string());
    }

    pub fn i64(&mut self, name: Option<&str>, i: i64) {
        self.prim("I64", name, &i.to_string());
    }

    /// `<Obj N RefId>` plus `<TN RefId>` (or `<TNRef>` when this list was written before).
    /// An empty `type_names` writes no TN. Close with [`Writer::end_obj`].
    pub fn begin_obj(&mut self, name: Option<&str>, type_names: &[&str]) {
        let n = name_attr(name);
        let id = self.next_ref;
        self.next_ref = self.next_ref.saturating_add(1);
        self.out.push_str(&format!("<Obj{n} RefId=\"{id}\">"));
        if type_names.is_empty() {
            return;
        }
        let pos = self.type_lists.iter().position(|l| {
            l.len() == type_names.len() && l.iter().zip(type_names).all(|(a, b)| a == b)
        });
        match pos {
            Some(p) => self.out.push_str(&format!("<TNRef RefId=\"{p}\" />")),
            None => {
                let p = self.type_lists.len();
                self.type_lists
                    .push(type_names.iter().map(|s| s.to_string()).collect());
                self.out.push_str(&format!("<TN RefId=\"{p}\">"));
                for t in type_names {
                    self.out.push_str(&format!("<T>{}</T>", encode_string(t)));
                }
                self.out.push_str("</TN>");
            }
        }
    }

    pub fn end_obj(&mut self) {
        self.out.push_str("</Obj>");
    }

    /// A list object (`<LST>` of strings) with the given type names.
    pub fn string_list(&mut self, name: Option<&str>, type_names: &[&str], items: &[String]) {
        self.begin_obj(name, type_names);
        if items.is_empty() {
            self.raw("<LST />");
        } else {
            self.raw("<LST>");
            for i in items {
                self.string(None, i);
            }
            self.raw("</LST>");
        }
        self.end_obj();
    }

    /// An enum value as Windows writes it: TN, ToString, then the numeric value.
    pub fn enum_value(
        &mut self,
        name: Option<&str>,
        type_names: &[&str],
        member: &str,
        value: i64,
    ) {
        self.begin_obj(name, type_names);
        self.prim("ToString", None, member);
        match i32::try_from(value) {
            Ok(v) => self.i32(None, v),
            Err(_) => self.i64(None, value),
        }
        self.end_obj();
    }

    /// Serialize an engine value.
    pub fn value(&mut self, name: Option<&str>, v: &Value) {
        self.value_at(name, v, 0);
    }

    fn value_at(&mut self, name: Option<&str>, v: &Value, depth: usize) {
        if depth > MAX_WRITE_DEPTH {
            self.string(name, &v.to_ps_string());
            return;
        }
        match v {
            Value::Null => self.nil(name),
            Value::Bool(b) => self.bool(name, *b),
            Value::Int(i) => match i32::try_from(*i) {
                Ok(i) => self.i32(name, i),
                Err(_) => self.i64(name, *i),
            },
            Value::Double(d) => self.prim("Db", name, &format_xml_double(*d)),
            Value::String(s) => self.string(name, s),
            Value::DateTime(d) => self.prim("DT", name, &format_datetime(d)),
            Value::TimeSpan(t) => self.prim("TS", name, &format_duration(*t)),
            Value::Enum(e) => {
                let tn: Vec<&str> = e.type_names.iter().map(String::as_str).collect();
                self.enum_value(name, &tn, &e.name, e.value);
            }
            Value::Array(items) => {
                self.begin_obj(name, OBJECT_ARRAY);
                if items.is_empty() {
                    self.raw("<LST />");
                } else {
                    self.raw("<LST>");
                    for i in items {
                        self.value_at(None, i, depth + 1);
                    }
                    self.raw("</LST>");
                }
                self.end_obj();
            }
            Value::Dict(entries) => {
                self.begin_obj(name, HASHTABLE);
                self.dict_body(entries, depth);
                self.end_obj();
            }
            Value::Object(o) => {
                let custom = o.is_custom();
                let tn: Vec<&str> = if o.type_names.is_empty() {
                    PSCUSTOMOBJECT.to_vec()
                } else {
                    o.type_names.iter().map(String::as_str).collect()
                };
                self.begin_obj(name, &tn);
                self.prim("ToString", None, &v.to_ps_string());
                // Windows: PSCustomObject properties are notes (<MS>); a .NET object's are adapted (<Props>).
                let section = if custom { "MS" } else { "Props" };
                if o.properties.is_empty() {
                    if custom {
                        self.raw("<MS />");
                    }
                } else {
                    self.raw(&format!("<{section}>"));
                    for (k, pv) in &o.properties {
                        self.value_at(Some(k), pv, depth + 1);
                    }
                    self.raw(&format!("</{section}>"));
                }
                self.end_obj();
            }
        }
    }

    fn dict_body(&mut self, entries: &[(String, Value)], depth: usize) {
        if entries.is_empty() {
            self.raw("<DCT />");
            return;
        }
        self.raw("<DCT>");
        for (k, v) in entries {
            self.raw("<En>");
            self.string(Some("Key"), k);
            self.value_at(Some("Value"), v, depth + 1);
            self.raw("</En>");
        }
        self.raw("</DCT>");
    }

    /// An ErrorRecord with the properties PowerShell and pypsrp read (shape of Windows'
    /// `test_psrp_error_failed`), InvocationInfo omitted (`SerializeExtendedInfo` false).
    pub fn error_record(&mut self, name: Option<&str>, e: &ErrorRecord) {
        self.error_record_merged(name, e, false);
    }

    /// An ErrorRecord; `write_error_stream` marks one merged into output (Windows' `writeErrorStream`).
    pub fn error_record_merged(
        &mut self,
        name: Option<&str>,
        e: &ErrorRecord,
        write_error_stream: bool,
    ) {
        let short_type = e
            .exception_type
            .rsplit('.')
            .next()
            .unwrap_or(&e.exception_type)
            .to_string();
        let target_name = e
            .target
            .as_ref()
            .map(Value::to_ps_string)
            .unwrap_or_default();
        let target_type = e.target.as_ref().map(Value::type_name).unwrap_or_default();
        let activity = e.command.clone().unwrap_or_default();
        self.begin_obj(
            name,
            &["System.Management.Automation.ErrorRecord", "System.Object"],
        );
        self.prim("ToString", None, &e.message);
        self.raw("<MS>");
        if write_error_stream {
            self.bool(Some("writeErrorStream"), true);
        }
        self.begin_obj(
            Some("Exception"),
            &[
                e.exception_type.as_str(),
                "System.Exception",
                "System.Object",
            ],
        );
        self.prim(
            "ToString",
            None,
            &format!("{}: {}", e.exception_type, e.message),
        );
        self.raw("<Props>");
        self.string(Some("Message"), &e.message);
        self.nil(Some("InnerException"));
        self.i32(Some("HResult"), -2146233087);
        self.raw("</Props>");
        self.end_obj();
        match &e.target {
            Some(t) => self.value_at(Some("TargetObject"), t, 1),
            None => self.nil(Some("TargetObject")),
        }
        self.string(Some("FullyQualifiedErrorId"), &e.fully_qualified_error_id);
        self.nil(Some("InvocationInfo"));
        self.i32(Some("ErrorCategory_Category"), e.category.code());
        self.string(Some("ErrorCategory_Activity"), &activity);
        self.string(Some("ErrorCategory_Reason"), &short_type);
        self.string(Some("ErrorCategory_TargetName"), &target_name);
        self.string(Some("ErrorCategory_TargetType"), &target_type);
        self.string(
            Some("ErrorCategory_Message"),
            &format!(
                "{}: ({target_name}:{target_type}) [{activity}], {short_type}",
                e.category.as_str()
            ),
        );
        self.bool(Some("SerializeExtendedInfo"), false);
        self.string(
            Some("ErrorDetails_ScriptStackTrace"),
            "at <ScriptBlock>, <No file>: line 1",
        );
        self.raw("</MS>");
        self.end_obj();
    }
}

/// xs:dateTime as .NET round-trips it: 7 fractional digits and the offset.
pub fn format_datetime(d: &chrono::DateTime<chrono::FixedOffset>) -> String {
    use chrono::Timelike;
    let ticks = d.nanosecond() % 1_000_000_000 / 100;
    format!(
        "{}.{ticks:07}{}",
        d.format("%Y-%m-%dT%H:%M:%S"),
        d.format("%:z")
    )
}

/// xs:double text as .NET writes it ("INF", "-INF", "NaN", shortest round-trip otherwise).
pub fn format_xml_double(d: f64) -> String {
    if d.is_nan() {
        "NaN".into()
    } else if d.is_infinite() {
        if d > 0.0 {
            "INF".into()
        } else {
            "-INF".into()
        }
    } else {
        format!("{d}")
    }
}

/// xs:duration as XmlConvert writes a TimeSpan: `P1DT2H3M4.5S`, `PT0S`.
pub fn format_duration(t: std::time::Duration) -> String {
    let total = t.as_secs();
    let (d, h, m, s) = (
        total / 86_400,
        (total % 86_400) / 3600,
        (total % 3600) / 60,
        total % 60,
    );
    let ticks = t.subsec_nanos() / 100;
    let mut out = String::from("P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    out.push('T');
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if ticks > 0 {
        let frac = format!("{ticks:07}");
        out.push_str(&format!("{s}.{}S", frac.trim_end_matches('0')));
    } else {
        out.push_str(&format!("{s}S"));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::engine::{EnumValue, ErrorCategory, PsObject};

    #[test]
    fn primitives() {
        let mut w = Writer::new();
        w.value(None, &Value::from("hello"));
        w.value(Some("n"), &Value::Int(5));
        w.value(None, &Value::Int(1 << 40));
        w.value(None, &Value::Bool(true));
        w.value(None, &Value::Null);
        w.value(None, &Value::Double(1.5));
        w.value(
            None,
            &Value::TimeSpan(std::time::Duration::from_millis(90_061_500)),
        );
        w.value(
            None,
            &Value::DateTime(
                chrono::DateTime::parse_from_rfc3339("2018-06-13T23:46:12.1316332+02:00").unwrap(),
            ),
        );
        assert_eq!(
            w.finish(),
            "<S>hello</S><I32 N=\"n\">5</I32><I64>1099511627776</I64><B>true</B><Nil /><Db>1.5</Db><TS>P1DT1H1M1.5S</TS><DT>2018-06-13T23:46:12.1316332+02:00</DT>"
        );
    }

    #[test]
    fn custom_object_and_tnref() {
        let o = PsObject::custom().with("Name", "foo").with("Value", 1);
        let mut w = Writer::new();
        w.raw("<LST>");
        w.value(None, &o.clone().into_value());
        w.value(None, &o.into_value());
        w.raw("</LST>");
        let s = w.finish();
        assert!(s.contains("<Obj RefId=\"0\"><TN RefId=\"0\"><T>System.Management.Automation.PSCustomObject</T><T>System.Object</T></TN><ToString>@{Name=foo; Value=1}</ToString><MS><S N=\"Name\">foo</S><I32 N=\"Value\">1</I32></MS></Obj>"), "{s}");
        assert!(s.contains("<Obj RefId=\"1\"><TNRef RefId=\"0\" />"), "{s}");
    }

    #[test]
    fn selected_objects_carry_note_properties_as_windows_does() {
        // Windows (test_psrp_get_command_metadata): a Selected.* object's properties are notes
        // in <MS>; a .NET object's are adapted, in <Props>.
        let mut sel = PsObject::custom().with("Year", 2024);
        sel.type_names = vec![
            "Selected.System.DateTime".into(),
            "System.Management.Automation.PSCustomObject".into(),
            "System.Object".into(),
        ];
        let mut w = Writer::new();
        w.value(None, &sel.into_value());
        let s = w.finish();
        assert!(s.contains("<T>Selected.System.DateTime</T><T>System.Management.Automation.PSCustomObject</T><T>System.Object</T></TN>"), "{s}");
        assert!(
            s.ends_with("<MS><I32 N=\"Year\">2024</I32></MS></Obj>"),
            "{s}"
        );
        assert!(!s.contains("<Props>"), "{s}");
        let typed = PsObject::new("System.Diagnostics.Process").with("Id", 1);
        let mut w = Writer::new();
        w.value(None, &typed.into_value());
        let s = w.finish();
        assert!(s.contains("<Props><I32 N=\"Id\">1</I32></Props>"), "{s}");
    }

    #[test]
    fn enum_shape() {
        let e = EnumValue {
            type_names: vec![
                "System.ServiceProcess.ServiceControllerStatus".into(),
                "System.Enum".into(),
                "System.ValueType".into(),
                "System.Object".into(),
            ],
            name: "Running".into(),
            value: 4,
        };
        let mut w = Writer::new();
        w.value(Some("Status"), &Value::Enum(e));
        let s = w.finish();
        assert!(s.starts_with("<Obj N=\"Status\" RefId=\"0\"><TN RefId=\"0\"><T>System.ServiceProcess.ServiceControllerStatus</T>"));
        assert!(s.ends_with("<ToString>Running</ToString><I32>4</I32></Obj>"));
    }

    #[test]
    fn error_record_fields() {
        let e = ErrorRecord::new(
            "no such command",
            "CommandNotFoundException",
            ErrorCategory::ObjectNotFound,
        )
        .exception("System.Management.Automation.CommandNotFoundException")
        .target("Foo");
        let mut w = Writer::new();
        w.error_record(None, &e);
        let s = w.finish();
        for needle in [
            "<S N=\"FullyQualifiedErrorId\">CommandNotFoundException</S>",
            "<I32 N=\"ErrorCategory_Category\">13</I32>",
            "<B N=\"SerializeExtendedInfo\">false</B>",
            "<S N=\"Message\">no such command</S>",
            "<S N=\"TargetObject\">Foo</S>",
            "ObjectNotFound: (Foo:System.String) [], CommandNotFoundException",
        ] {
            assert!(s.contains(needle), "{needle} missing in {s}");
        }
    }
}
