//! Bounded CLIXML reader: what clients send (creationXml, CREATE_PIPELINE, input objects,
//! command metadata requests) to engine values. No DTD, named limits on every dimension.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};

use chrono::DateTime;
use quick_xml::events::{BytesStart, Event as XmlEvent};
use quick_xml::Reader;

use super::decode_string;
use crate::engine::{EnumValue, PsObject, Value};
use crate::psrp::{ClixmlError, ProtocolError};

/// Limits applied to one message body.
#[derive(Debug, Clone, Copy)]
pub struct ClixmlLimits {
    /// Deepest element nesting (CREATE_PIPELINE nests about 8 deep).
    pub max_depth: usize,
    /// Elements in one body.
    pub max_elements: usize,
    /// Characters in one text node (one string).
    pub max_string_len: usize,
    /// `RefId`s defined in one body (objects and type-name lists together).
    pub max_refs: usize,
    /// Values produced after expanding `<Ref>`s (stops reference "billion laughs").
    pub max_values: usize,
    /// Attributes on one element, namespace declarations (`xmlns`, `xmlns:p`) included.
    pub max_attributes: usize,
    /// Bytes one body may materialize: the element tree (each element and attribute counted
    /// with a fixed overhead plus its text) and the values built from it, every `<Ref>` and
    /// `<TNRef>` counted again at the full size of what it copies. Stops a reference bomb that
    /// stays under `max_values` with a few large strings.
    pub max_bytes: usize,
}

/// Attributes one CLIXML element may carry, namespace declarations included (`<Obj N=""
/// RefId="">` needs 2; the root 2 more for `Version` and `xmlns`).
pub const MAX_ATTRIBUTES: usize = 32;
/// Bytes one message body may materialize (tree and values, references expanded): four times
/// the largest message the reassembler accepts ([`crate::psrp::fragment::MAX_MESSAGE_SIZE`]),
/// which covers a 16 MiB string held once in the tree and once as a value.
pub const MAX_EXPANDED_BYTES: usize = 64 * 1024 * 1024;
/// Bytes counted for each element of the tree besides its tag and text (the `Node` itself).
pub const NODE_OVERHEAD: usize = std::mem::size_of::<Node>();
/// Bytes counted for each attribute besides its name and value.
pub const ATTR_OVERHEAD: usize = std::mem::size_of::<(String, String)>();
/// Bytes counted for each value produced (the `Value` itself, or a name in a type list).
pub const VALUE_OVERHEAD: usize = std::mem::size_of::<Value>();

/// Default limits: generous for anything a PowerShell client sends as commands and input,
/// small enough that one message cannot exhaust memory.
pub const DEFAULT_LIMITS: ClixmlLimits = ClixmlLimits {
    max_depth: 64,
    max_elements: 200_000,
    max_string_len: 8 * 1024 * 1024,
    max_refs: 50_000,
    max_values: 500_000,
    max_attributes: MAX_ATTRIBUTES,
    max_bytes: MAX_EXPANDED_BYTES,
};

/// One parsed element.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub tag: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
    pub text: String,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Decoded `N` attribute (property name).
    pub fn name(&self) -> Option<String> {
        self.attr("N").map(decode_string)
    }
    pub fn child(&self, tag: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.tag == tag)
    }
}

fn err(e: ClixmlError) -> ProtocolError {
    ProtocolError::Clixml(e)
}

/// Counts the bytes a body materializes against `max_bytes`.
struct Budget {
    used: usize,
    max: usize,
}

impl Budget {
    fn take(&mut self, n: usize) -> Result<(), ProtocolError> {
        self.used = self.used.saturating_add(n);
        if self.used > self.max {
            return Err(err(ClixmlError::ExpandsTooMuch(self.max)));
        }
        Ok(())
    }
}

fn start_node(
    e: &BytesStart<'_>,
    limits: &ClixmlLimits,
    budget: &mut Budget,
) -> Result<Node, ProtocolError> {
    let tag = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    budget.take(NODE_OVERHEAD.saturating_add(tag.len()))?;
    let mut attrs = Vec::new();
    // quick-xml's own duplicate check compares every attribute with every earlier one
    // (quadratic); it is off, and duplicates are found with a set after the count is capped.
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for (i, a) in e.attributes().with_checks(false).enumerate() {
        if i >= limits.max_attributes {
            return Err(err(ClixmlError::TooManyAttributes {
                tag: tag.clone(),
                max: limits.max_attributes,
                at: i + 1,
            }));
        }
        let a = a.map_err(|x| {
            err(ClixmlError::Attribute {
                tag: tag.clone(),
                detail: x.to_string(),
            })
        })?;
        if !seen.insert(a.key.as_ref().to_vec()) {
            return Err(err(ClixmlError::DuplicateAttribute {
                tag: tag.clone(),
                name: String::from_utf8_lossy(a.key.as_ref()).into_owned(),
            }));
        }
        if a.key.as_namespace_binding().is_some() {
            // Counted against the cap, never kept (CLIXML names carry no prefixes).
            continue;
        }
        let k = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let v = a
            .unescape_value()
            .map_err(|x| {
                err(ClixmlError::AttributeValue {
                    tag: tag.clone(),
                    detail: x.to_string(),
                })
            })?
            .into_owned();
        budget.take(
            ATTR_OVERHEAD
                .saturating_add(k.len())
                .saturating_add(v.len()),
        )?;
        attrs.push((k, v));
    }
    Ok(Node {
        tag,
        attrs,
        children: Vec::new(),
        text: String::new(),
    })
}

/// Parse XML text into one root element tree, within `limits`.
pub fn parse_tree(text: &str, limits: &ClixmlLimits) -> Result<Node, ProtocolError> {
    let mut budget = Budget {
        used: 0,
        max: limits.max_bytes,
    };
    parse_tree_counted(text, limits, &mut budget)
}

fn parse_tree_counted(
    text: &str,
    limits: &ClixmlLimits,
    budget: &mut Budget,
) -> Result<Node, ProtocolError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut elements = 0usize;
    loop {
        let ev = reader.read_event().map_err(|e| {
            err(ClixmlError::Xml {
                position: reader.buffer_position(),
                detail: e.to_string(),
            })
        })?;
        match ev {
            XmlEvent::Start(e) | XmlEvent::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(err(ClixmlError::SecondRoot));
            }
            XmlEvent::Start(e) => {
                elements += 1;
                if elements > limits.max_elements {
                    return Err(err(ClixmlError::TooManyElements(limits.max_elements)));
                }
                if stack.len() >= limits.max_depth {
                    return Err(err(ClixmlError::TooDeep(limits.max_depth)));
                }
                stack.push(start_node(&e, limits, budget)?);
            }
            XmlEvent::Empty(e) => {
                elements += 1;
                if elements > limits.max_elements {
                    return Err(err(ClixmlError::TooManyElements(limits.max_elements)));
                }
                if stack.len() >= limits.max_depth {
                    return Err(err(ClixmlError::TooDeep(limits.max_depth)));
                }
                let n = start_node(&e, limits, budget)?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => root = Some(n),
                }
            }
            XmlEvent::End(_) => {
                let n = stack.pop().ok_or_else(|| err(ClixmlError::UnbalancedEnd))?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => root = Some(n),
                }
            }
            XmlEvent::Text(t) => {
                let s = t
                    .unescape()
                    .map_err(|e| err(ClixmlError::Text(e.to_string())))?;
                if let Some(cur) = stack.last_mut() {
                    if cur.text.len().saturating_add(s.len()) > limits.max_string_len {
                        return Err(err(ClixmlError::TextTooLong(limits.max_string_len)));
                    }
                    budget.take(s.len())?;
                    cur.text.push_str(&s);
                } else if !s.trim().is_empty() {
                    return Err(err(ClixmlError::TextOutsideRoot));
                }
            }
            XmlEvent::CData(t) => {
                let s = String::from_utf8_lossy(&t);
                if let Some(cur) = stack.last_mut() {
                    if cur.text.len().saturating_add(s.len()) > limits.max_string_len {
                        return Err(err(ClixmlError::TextTooLong(limits.max_string_len)));
                    }
                    budget.take(s.len())?;
                    cur.text.push_str(&s);
                }
            }
            XmlEvent::DocType(_) => return Err(err(ClixmlError::Dtd)),
            XmlEvent::Decl(_) | XmlEvent::PI(_) | XmlEvent::Comment(_) => {}
            XmlEvent::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(err(ClixmlError::Unclosed));
    }
    root.ok_or_else(|| err(ClixmlError::Empty))
}

/// Converts element trees to values, resolving `Ref`/`TNRef` within one body.
struct Conv<'l> {
    limits: &'l ClixmlLimits,
    /// Objects by RefId, with the values and bytes a `<Ref>` to them adds again.
    objs: HashMap<String, (Value, Weight)>,
    /// Type-name lists by RefId, with the bytes a `<TNRef>` to them adds again.
    tns: HashMap<String, (Vec<String>, usize)>,
    values: usize,
    budget: Budget,
    /// Bytes of `budget` spent on the copies kept in `objs` and `tns` (left out of the weight
    /// of an enclosing object, which a `<Ref>` copies without them).
    stored: usize,
}

/// What copying one referenced object costs.
#[derive(Debug, Clone, Copy)]
struct Weight {
    values: usize,
    bytes: usize,
}

fn parse_int(n: &Node) -> Result<i64, ProtocolError> {
    n.text.trim().parse::<i64>().map_err(|_| {
        err(ClixmlError::NotInteger {
            tag: n.tag.clone(),
            text: n.text.clone(),
        })
    })
}

/// Parse an xs:duration (`[-]P[nD][T[nH][nM][n[.f]S]]`).
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim().strip_prefix('P')?;
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, t),
        None => (s, ""),
    };
    let mut secs = 0f64;
    let mut num = String::new();
    for c in date.chars() {
        match c {
            '0'..='9' | '.' => num.push(c),
            'D' => secs += num.parse::<f64>().ok()? * 86_400.0,
            _ => return None,
        }
        if c == 'D' {
            num.clear();
        }
    }
    for c in time.chars() {
        let mult = match c {
            '0'..='9' | '.' => {
                num.push(c);
                continue;
            }
            'H' => 3600.0,
            'M' => 60.0,
            'S' => 1.0,
            _ => return None,
        };
        secs += num.parse::<f64>().ok()? * mult;
        num.clear();
    }
    if !num.is_empty() || !secs.is_finite() || !(0.0..=1e15).contains(&secs) {
        return None;
    }
    Some(std::time::Duration::from_secs_f64(secs))
}

impl Conv<'_> {
    fn count(&mut self, n: usize) -> Result<(), ProtocolError> {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            return Err(err(ClixmlError::TooManyValues(self.limits.max_values)));
        }
        Ok(())
    }

    fn value(&mut self, n: &Node) -> Result<Value, ProtocolError> {
        self.count(1)?;
        // The value itself, and at most its text again (decoding never lengthens it).
        let own = VALUE_OVERHEAD.saturating_add(n.text.len());
        self.budget.take(own)?;
        let text = || decode_string(&n.text);
        Ok(match n.tag.as_str() {
            "Nil" => Value::Null,
            "S" | "ToString" | "Version" | "URI" | "G" | "XD" | "SBK" | "SS" | "BA" => {
                Value::String(text())
            }
            "C" => {
                let c = parse_int(n)?;
                Value::String(
                    u32::try_from(c)
                        .ok()
                        .and_then(char::from_u32)
                        .map(String::from)
                        .unwrap_or_default(),
                )
            }
            "B" => match n.text.trim() {
                "true" | "1" | "True" => Value::Bool(true),
                "false" | "0" | "False" => Value::Bool(false),
                other => return Err(err(ClixmlError::NotBoolean(other.to_string()))),
            },
            "By" | "SB" | "U16" | "I16" | "U32" | "I32" | "I64" => Value::Int(parse_int(n)?),
            "U64" => {
                let u = n
                    .text
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| err(ClixmlError::NotU64(n.text.clone())))?;
                Value::from(u)
            }
            "Db" | "Sg" | "D" => {
                let t = n.text.trim();
                let d = match t {
                    "INF" => f64::INFINITY,
                    "-INF" => f64::NEG_INFINITY,
                    _ => t.parse::<f64>().map_err(|_| {
                        err(ClixmlError::NotNumber {
                            tag: n.tag.clone(),
                            text: n.text.clone(),
                        })
                    })?,
                };
                Value::Double(d)
            }
            "DT" => match DateTime::parse_from_rfc3339(n.text.trim()) {
                Ok(d) => Value::DateTime(d),
                Err(_) => Value::String(text()),
            },
            "TS" => parse_duration(&n.text)
                .map(Value::TimeSpan)
                .unwrap_or_else(|| Value::String(text())),
            "Ref" => {
                let id = n
                    .attr("RefId")
                    .ok_or_else(|| err(ClixmlError::RefWithoutId))?;
                let weight = self
                    .objs
                    .get(id)
                    .map(|(_, w)| *w)
                    .ok_or_else(|| err(ClixmlError::UnknownRef(id.to_string())))?;
                // Counted before the copy is made: a refused reference allocates nothing.
                self.count(weight.values)?;
                self.budget.take(weight.bytes)?;
                self.objs
                    .get(id)
                    .map(|(v, _)| v.clone())
                    .unwrap_or(Value::Null)
            }
            "Obj" => {
                let values_before = self.values;
                let bytes_before = self.budget.used.saturating_sub(self.stored);
                let v = self.object(n)?;
                if let Some(id) = n.attr("RefId") {
                    if self.objs.len() + self.tns.len() >= self.limits.max_refs {
                        return Err(err(ClixmlError::TooManyRefs(self.limits.max_refs)));
                    }
                    let weight = Weight {
                        values: self.values.saturating_sub(values_before).max(1),
                        bytes: self
                            .budget
                            .used
                            .saturating_sub(self.stored)
                            .saturating_sub(bytes_before)
                            .max(VALUE_OVERHEAD),
                    };
                    // The stored copy is one more materialization of the object.
                    self.budget.take(weight.bytes)?;
                    self.stored = self.stored.saturating_add(weight.bytes);
                    self.objs.insert(id.to_string(), (v.clone(), weight));
                }
                v
            }
            other => return Err(err(ClixmlError::UnknownElement(other.to_string()))),
        })
    }

    fn type_names(&mut self, n: &Node) -> Result<Vec<String>, ProtocolError> {
        if let Some(tn) = n.child("TN") {
            let mut names = Vec::new();
            let mut bytes = 0usize;
            for c in tn.children.iter().filter(|c| c.tag == "T") {
                let b = VALUE_OVERHEAD.saturating_add(c.text.len());
                self.budget.take(b)?;
                bytes = bytes.saturating_add(b);
                names.push(decode_string(&c.text));
            }
            if let Some(id) = tn.attr("RefId") {
                if self.objs.len() + self.tns.len() >= self.limits.max_refs {
                    return Err(err(ClixmlError::TooManyRefs(self.limits.max_refs)));
                }
                self.budget.take(bytes)?;
                self.stored = self.stored.saturating_add(bytes);
                self.tns.insert(id.to_string(), (names.clone(), bytes));
            }
            return Ok(names);
        }
        if let Some(r) = n.child("TNRef") {
            let id = r
                .attr("RefId")
                .ok_or_else(|| err(ClixmlError::TnRefWithoutId))?;
            let bytes = self
                .tns
                .get(id)
                .map(|(_, b)| *b)
                .ok_or_else(|| err(ClixmlError::UnknownTnRef(id.to_string())))?;
            self.budget.take(bytes)?;
            return Ok(self
                .tns
                .get(id)
                .map(|(names, _)| names.clone())
                .unwrap_or_default());
        }
        Ok(Vec::new())
    }

    fn object(&mut self, n: &Node) -> Result<Value, ProtocolError> {
        let type_names = self.type_names(n)?;
        let mut to_string = None;
        let mut props: Vec<(String, Value)> = Vec::new();
        let mut list: Option<Vec<Value>> = None;
        let mut dict: Option<Vec<(String, Value)>> = None;
        let mut prim: Option<Value> = None;
        for c in &n.children {
            match c.tag.as_str() {
                "TN" | "TNRef" => {}
                "ToString" => {
                    self.budget.take(c.text.len())?;
                    to_string = Some(decode_string(&c.text));
                }
                "MS" | "Props" => {
                    for p in &c.children {
                        let name = p.name().unwrap_or_default();
                        self.budget.take(name.len())?;
                        let v = self.value(p)?;
                        props.push((name, v));
                    }
                }
                "LST" | "IE" | "STK" | "QUE" => {
                    let mut items = Vec::with_capacity(c.children.len());
                    for i in &c.children {
                        items.push(self.value(i)?);
                    }
                    list = Some(items);
                }
                "DCT" => {
                    let mut entries = Vec::new();
                    for en in &c.children {
                        if en.tag != "En" {
                            return Err(err(ClixmlError::DictEntry(en.tag.clone())));
                        }
                        let mut key = None;
                        let mut val = Value::Null;
                        for kv in &en.children {
                            match kv.attr("N") {
                                Some("Key") => key = Some(self.value(kv)?.to_ps_string()),
                                Some("Value") => val = self.value(kv)?,
                                _ => return Err(err(ClixmlError::DictEntryChild)),
                            }
                        }
                        entries.push((
                            key.ok_or_else(|| err(ClixmlError::DictEntryWithoutKey))?,
                            val,
                        ));
                    }
                    dict = Some(entries);
                }
                _ => prim = Some(self.value(c)?),
            }
        }
        if let Some(items) = list {
            return Ok(Value::Array(items));
        }
        if let Some(entries) = dict {
            return Ok(Value::Dict(entries));
        }
        if let Some(p) = prim {
            if type_names.iter().any(|t| t == "System.Enum") {
                if let Value::Int(i) = p {
                    return Ok(Value::Enum(EnumValue {
                        type_names,
                        name: to_string.unwrap_or_else(|| i.to_string()),
                        value: i,
                    }));
                }
            }
            if props.is_empty() {
                return Ok(p);
            }
        }
        Ok(Value::Object(Box::new(PsObject {
            type_names,
            properties: props,
            to_string,
            display: Vec::new(),
        })))
    }
}

/// Parse one CLIXML message body (a single root value) into an engine value.
/// Everything the body materializes — its tree, its values and every reference copied —
/// counts against one budget of `limits.max_bytes`.
pub fn parse(text: &str, limits: &ClixmlLimits) -> Result<Value, ProtocolError> {
    parse_sized(text, limits).map(|(v, _)| v)
}

/// [`parse`], also returning the bytes the value holds (references expanded, counted as the
/// budget counts them; the element tree and the reader's own copies left out). A consumer that
/// keeps many values (pipeline input) bounds their sum with this, not with the message size:
/// a small message can hold a large value.
pub fn parse_sized(text: &str, limits: &ClixmlLimits) -> Result<(Value, usize), ProtocolError> {
    let mut budget = Budget {
        used: 0,
        max: limits.max_bytes,
    };
    let root = parse_tree_counted(text, limits, &mut budget)?;
    let tree = budget.used;
    let mut c = Conv {
        limits,
        objs: HashMap::new(),
        tns: HashMap::new(),
        values: 0,
        budget,
        stored: 0,
    };
    let v = c.value(&root)?;
    let size = c.budget.used.saturating_sub(tree).saturating_sub(c.stored);
    Ok((v, size))
}

/// Parse with [`DEFAULT_LIMITS`].
pub fn parse_default(text: &str) -> Result<Value, ProtocolError> {
    parse(text, &DEFAULT_LIMITS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::psrp::clixml::Writer;

    #[test]
    fn primitives_and_escapes() {
        assert_eq!(
            parse_default("<S>a_x000A_b &amp; c</S>").unwrap(),
            Value::from("a\nb & c")
        );
        assert_eq!(parse_default("<I32>-5</I32>").unwrap(), Value::Int(-5));
        assert_eq!(parse_default("<B>true</B>").unwrap(), Value::Bool(true));
        assert_eq!(parse_default("<Nil />").unwrap(), Value::Null);
        assert!(matches!(
            parse_default("<DT>2018-06-13T23:46:12.1316332+00:00</DT>").unwrap(),
            Value::DateTime(_)
        ));
        assert_eq!(
            parse_default("<TS>PT1M30S</TS>").unwrap(),
            Value::TimeSpan(std::time::Duration::from_secs(90))
        );
        assert!(parse_default("<I32>x</I32>").is_err());
        assert!(parse_default("<Foo/>").is_err());
    }

    #[test]
    fn refuses_dtd_and_garbage() {
        assert!(parse_default("<!DOCTYPE x [<!ENTITY a \"b\">]><S>&a;</S>").is_err());
        assert!(parse_default("<S>x</S><S>y</S>").is_err());
        assert!(parse_default("<S>").is_err());
        assert!(parse_default("").is_err());
    }

    #[test]
    fn limits_depth_and_refs() {
        let deep = "<Obj RefId=\"0\"><MS>".repeat(100) + &"</MS></Obj>".repeat(100);
        assert!(parse_default(&deep).is_err());
        // reference expansion bomb
        let mut s = String::from("<Obj RefId=\"0\"><LST><S>x</S><S>x</S></LST></Obj>");
        for i in 1..40 {
            s = format!(
                "<Obj RefId=\"{i}\"><LST>{s}<Ref RefId=\"{}\" /><Ref RefId=\"{}\" /></LST></Obj>",
                i - 1,
                i - 1
            );
        }
        assert!(parse_default(&s).is_err());
    }

    #[test]
    fn attributes_are_capped_and_duplicates_refused() {
        let many: String = (0..40).map(|i| format!(" a{i}=\"1\"")).collect();
        let e = parse_default(&format!("<S{many}>x</S>")).unwrap_err();
        assert!(e.to_string().contains("refused at attribute 33"), "{e}");
        let ns: String = (0..40).map(|i| format!(" xmlns:p{i}=\"u\"")).collect();
        assert!(parse_default(&format!("<S{ns}>x</S>")).is_err());
        let e = parse_default("<S N=\"a\" N=\"b\">x</S>").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        // A namespace declaration on the root is accepted and not kept as an attribute.
        let v = parse_default(
            "<Obj RefId=\"0\" xmlns=\"http://schemas.microsoft.com/powershell/2004/04\"><MS><S N=\"a\">b</S></MS></Obj>",
        )
        .unwrap();
        assert_eq!(v.property("a"), Some(&Value::from("b")));
    }

    #[test]
    fn bytes_after_references_are_counted() {
        let limits = ClixmlLimits {
            max_bytes: 128 * 1024,
            ..DEFAULT_LIMITS
        };
        let big = "x".repeat(8 * 1024);
        let refs = "<Ref RefId=\"1\" />".repeat(4);
        let ok = format!("<Obj RefId=\"0\"><LST><Obj RefId=\"1\"><LST><S>{big}</S></LST></Obj>{refs}</LST></Obj>");
        assert!(parse(&ok, &limits).is_ok(), "{:?}", parse(&ok, &limits));
        let refs = "<Ref RefId=\"1\" />".repeat(8);
        let bomb = format!("<Obj RefId=\"0\"><LST><Obj RefId=\"1\"><LST><S>{big}</S></LST></Obj>{refs}</LST></Obj>");
        let e = parse(&bomb, &limits).unwrap_err();
        assert!(e.to_string().contains("expands to more than"), "{e}");
        // Type-name lists copied by TNRef count too.
        let names = format!("<T>{big}</T>");
        let tn = |n: usize| {
            let objs = "<Obj><TNRef RefId=\"0\" /><MS /></Obj>".repeat(n);
            format!("<Obj><LST><Obj><TN RefId=\"0\">{names}</TN><MS /></Obj>{objs}</LST></Obj>")
        };
        assert!(
            parse(&tn(2), &limits).is_ok(),
            "{:?}",
            parse(&tn(2), &limits)
        );
        let e = parse(&tn(16), &limits).unwrap_err();
        assert!(e.to_string().contains("expands to more than"), "{e}");
    }

    #[test]
    fn sized_counts_the_value_with_references_expanded() {
        let big = "x".repeat(10_000);
        let one = format!(
            "<Obj RefId=\"0\"><LST><Obj RefId=\"1\"><LST><S>{big}</S></LST></Obj></LST></Obj>"
        );
        let three = format!("<Obj RefId=\"0\"><LST><Obj RefId=\"1\"><LST><S>{big}</S></LST></Obj><Ref RefId=\"1\" /><Ref RefId=\"1\" /></LST></Obj>");
        let (_, a) = parse_sized(&one, &DEFAULT_LIMITS).unwrap();
        let (_, b) = parse_sized(&three, &DEFAULT_LIMITS).unwrap();
        assert!((10_000..11_000).contains(&a), "{a}");
        assert!((30_000..33_000).contains(&b), "{b}");
    }

    #[test]
    fn nested_references_are_not_overcounted() {
        // Ten objects nested with RefIds (as CREATE_PIPELINE nests them) weigh about what they
        // hold, not twice as much per level.
        let mut s = String::from("<S>leaf</S>");
        for i in 0..10 {
            s = format!("<Obj RefId=\"{i}\"><LST>{s}</LST></Obj>");
        }
        let limits = ClixmlLimits {
            max_bytes: 8 * 1024,
            ..DEFAULT_LIMITS
        };
        assert!(parse(&s, &limits).is_ok());
    }

    #[test]
    fn objects_lists_dicts_enums_refs() {
        let xml = r#"<Obj RefId="0"><MS><Obj N="Name" RefId="1"><TN RefId="0"><T>System.String[]</T><T>System.Array</T><T>System.Object</T></TN><LST><S>get-*</S></LST></Obj><Obj N="E" RefId="2"><TN RefId="1"><T>X.Kind</T><T>System.Enum</T></TN><ToString>Two</ToString><I32>2</I32></Obj><Obj N="E2" RefId="3"><TNRef RefId="1" /><ToString>One</ToString><I32>1</I32></Obj><Obj N="D" RefId="4"><DCT><En><S N="Key">a</S><I32 N="Value">1</I32></En></DCT></Obj><Ref N="again" RefId="1" /></MS></Obj>"#;
        let v = parse_default(xml).unwrap();
        assert_eq!(
            v.property("Name"),
            Some(&Value::Array(vec![Value::from("get-*")]))
        );
        match v.property("E2") {
            Some(Value::Enum(e)) => {
                assert_eq!(e.value, 1);
                assert_eq!(e.name, "One");
                assert_eq!(e.type_names[0], "X.Kind");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            v.property("D"),
            Some(&Value::Dict(vec![("a".into(), Value::Int(1))]))
        );
        assert_eq!(v.property("again"), v.property("Name"));
        assert!(
            parse_default("<Obj RefId=\"0\"><MS><Ref N=\"x\" RefId=\"9\" /></MS></Obj>").is_err()
        );
    }

    #[test]
    fn writer_reader_roundtrip() {
        let v = crate::engine::PsObject::custom()
            .with("s", "a_x\r\n<&>")
            .with("n", 1i64 << 40)
            .with(
                "l",
                Value::Array(vec![Value::Int(1), Value::Null, Value::Bool(false)]),
            )
            .with("d", Value::Dict(vec![("k".into(), Value::from("v"))]))
            .into_value();
        let mut w = Writer::new();
        w.value(None, &v);
        let back = parse_default(&w.finish()).unwrap();
        match back {
            Value::Object(o) => {
                assert_eq!(o.get("s"), Some(&Value::from("a_x\r\n<&>")));
                assert_eq!(o.get("n"), Some(&Value::Int(1 << 40)));
                assert_eq!(
                    o.get("l"),
                    Some(&Value::Array(vec![
                        Value::Int(1),
                        Value::Null,
                        Value::Bool(false)
                    ]))
                );
                assert_eq!(
                    o.get("d"),
                    Some(&Value::Dict(vec![("k".into(), Value::from("v"))]))
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
