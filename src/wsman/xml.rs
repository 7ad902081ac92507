//! A small, bounded XML tree for SOAP envelopes: names resolved to namespace URIs (never
//! prefixes), DTDs and unknown entities refused, depth/element/attribute/text counts capped.
#![forbid(unsafe_code)]

use std::collections::HashSet;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// Deepest element nesting accepted (a WS-Man envelope needs about 8).
pub const MAX_DEPTH: usize = 32;
/// Most elements in one document.
pub const MAX_ELEMENTS: usize = 10_000;
/// Most attributes on one element, namespace declarations (`xmlns`, `xmlns:p`) included
/// (pypsrp's and Windows' `s:Envelope` declare 5 to 9 namespaces).
pub const MAX_ATTRIBUTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the document is not valid UTF-8 (byte {0}); send application/soap+xml;charset=UTF-8")]
    Utf8(usize),
    #[error("the document contains a DTD (<!DOCTYPE>), which is never accepted")]
    Doctype,
    #[error("elements are nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the document has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error(
        "an element has more than {MAX_ATTRIBUTES} attributes (namespace declarations included)"
    )]
    TooManyAttributes,
    #[error("an element has the attribute {0} twice")]
    DuplicateAttribute(String),
    #[error("the document has no root element")]
    Empty,
    #[error("content after the root element")]
    TrailingContent,
    #[error("malformed XML at byte {pos}: {msg}")]
    Malformed { pos: u64, msg: String },
}

/// An attribute: namespace URI (None when unqualified), local name, unescaped value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ns: Option<String>,
    pub local: String,
    pub value: String,
}

/// An element with its namespace URI, local name, attributes, children and concatenated text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub ns: Option<String>,
    pub local: String,
    pub attrs: Vec<Attr>,
    pub children: Vec<Element>,
    /// The element's own text (CDATA included), concatenated; child text is not included.
    pub text: String,
}

impl Element {
    /// Is this element `{ns}local`?
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }
    /// First child `{ns}local`.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(ns, local))
    }
    /// Every child `{ns}local`, in order.
    pub fn children_named<'a>(
        &'a self,
        ns: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.is(ns, local))
    }
    /// An attribute by local name, whatever its namespace (WS-Man attributes are unqualified,
    /// except that pywinrm and pypsrp disagree on `mustUnderstand`).
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.local == local)
            .map(|a| a.value.as_str())
    }
    /// Depth-first search for the first descendant `{ns}local` (self included).
    pub fn find(&self, ns: &str, local: &str) -> Option<&Element> {
        if self.is(ns, local) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(ns, local))
    }
}

fn ns_of(r: &ResolveResult) -> Result<Option<String>, XmlError> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.as_ref()).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(p) => Err(XmlError::Malformed {
            pos: 0,
            msg: format!(
                "undeclared namespace prefix '{}'",
                String::from_utf8_lossy(p)
            ),
        }),
    }
}

/// Count, check and resolve the attributes of one start tag into `el`. Every attribute counts
/// against [`MAX_ATTRIBUTES`], namespace declarations included, and the count is checked
/// before anything else is done with it. Duplicates are found with a set of raw names (linear;
/// quick-xml's own check, off here, compares each attribute with every earlier one).
fn read_attributes(
    reader: &NsReader<&[u8]>,
    s: &BytesStart<'_>,
    el: &mut Element,
) -> Result<(), XmlError> {
    let malformed = |e: &dyn std::fmt::Display| XmlError::Malformed {
        pos: reader.buffer_position(),
        msg: e.to_string(),
    };
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut resolved: HashSet<(Option<String>, String)> = HashSet::new();
    for (i, a) in s.attributes().with_checks(false).enumerate() {
        if i >= MAX_ATTRIBUTES {
            return Err(XmlError::TooManyAttributes);
        }
        let a = a.map_err(|e| malformed(&e))?;
        let raw: &[u8] = a.key.into_inner();
        if !seen.insert(raw) {
            return Err(XmlError::DuplicateAttribute(
                String::from_utf8_lossy(raw).into_owned(),
            ));
        }
        if a.key.as_namespace_binding().is_some() {
            continue;
        }
        let (ares, local) = reader.resolve_attribute(a.key);
        let ns = ns_of(&ares)?;
        let local = String::from_utf8_lossy(local.as_ref()).into_owned();
        // Two prefixes bound to one namespace name the same attribute (Namespaces in XML §6.3).
        if !resolved.insert((ns.clone(), local.clone())) {
            return Err(XmlError::DuplicateAttribute(local));
        }
        let value = a.unescape_value().map_err(|e| malformed(&e))?.into_owned();
        el.attrs.push(Attr { ns, local, value });
    }
    Ok(())
}

/// Parse a whole document into its root element.
pub fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(bytes).map_err(|e| XmlError::Utf8(e.valid_up_to()))?;
    // A UTF-8 BOM is allowed.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = NsReader::from_str(text);
    {
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.trim_text(false);
        cfg.expand_empty_elements = false;
    }
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    let malformed = |reader: &NsReader<&[u8]>, e: &dyn std::fmt::Display| XmlError::Malformed {
        pos: reader.buffer_position(),
        msg: e.to_string(),
    };
    loop {
        let (res, ev) = match reader.read_resolved_event() {
            Ok(x) => x,
            Err(e) => return Err(malformed(&reader, &e)),
        };
        match ev {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(ref s) | Event::Empty(ref s) => {
                let is_empty = matches!(ev, Event::Empty(_));
                if root.is_some() {
                    return Err(XmlError::TrailingContent);
                }
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::TooManyElements);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                let mut el = Element {
                    ns: ns_of(&res)?,
                    local: String::from_utf8_lossy(s.local_name().as_ref()).into_owned(),
                    ..Default::default()
                };
                read_attributes(&reader, s, &mut el)?;
                if is_empty {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => root = Some(el),
                    }
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let Some(el) = stack.pop() else {
                    return Err(malformed(&reader, &"unexpected end tag"));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| malformed(&reader, &e))?;
                match stack.last_mut() {
                    Some(el) => el.text.push_str(&s),
                    None => {
                        if !s.trim().is_empty() {
                            return Err(malformed(&reader, &"text outside the root element"));
                        }
                    }
                }
            }
            Event::CData(c) => {
                let s = std::str::from_utf8(&c).map_err(|e| XmlError::Utf8(e.valid_up_to()))?;
                match stack.last_mut() {
                    Some(el) => el.text.push_str(s),
                    None => return Err(malformed(&reader, &"CDATA outside the root element")),
                }
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Malformed {
            pos: reader.buffer_position(),
            msg: "unclosed element".into(),
        });
    }
    root.ok_or(XmlError::Empty)
}

/// Escape text for element content and attribute values (the five predefined entities).
pub fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn resolves_namespaces_not_prefixes() {
        let a = parse(br#"<x:a xmlns:x="urn:n"><x:b y="1">t&amp;u</x:b><c xmlns="urn:m"/></x:a>"#)
            .unwrap();
        assert!(a.is("urn:n", "a"));
        let b = a.child("urn:n", "b").unwrap();
        assert_eq!(b.text, "t&u");
        assert_eq!(b.attr("y"), Some("1"));
        assert!(a.child("urn:m", "c").is_some());
        let a2 = parse(br#"<q:a xmlns:q="urn:n"><q:b/></q:a>"#).unwrap();
        assert!(a2.child("urn:n", "b").is_some());
    }

    #[test]
    fn refuses_doctype_entities_depth_and_bad_utf8() {
        assert_eq!(
            parse(b"<!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>"),
            Err(XmlError::Doctype)
        );
        assert!(matches!(
            parse(b"<a>&x;</a>"),
            Err(XmlError::Malformed { .. })
        ));
        assert!(parse(b"<a>&#65;&lt;</a>").is_ok());
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(XmlError::TooDeep));
        assert_eq!(parse(b"<a>\xff</a>"), Err(XmlError::Utf8(3)));
        assert!(matches!(
            parse(b"<a><b></a>"),
            Err(XmlError::Malformed { .. })
        ));
        assert!(matches!(parse(b"<p:a/>"), Err(XmlError::Malformed { .. })));
        assert_eq!(parse(b"<a/><b/>"), Err(XmlError::TrailingContent));
        let many = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS));
        assert_eq!(parse(many.as_bytes()), Err(XmlError::TooManyElements));
        let attrs: String = (0..=MAX_ATTRIBUTES)
            .map(|i| format!(" a{i}=\"1\""))
            .collect();
        assert_eq!(
            parse(format!("<a{attrs}/>").as_bytes()),
            Err(XmlError::TooManyAttributes)
        );
        assert_eq!(parse(b"  "), Err(XmlError::Empty));
    }

    #[test]
    fn namespace_declarations_count_and_duplicates_are_refused() {
        let decls: String = (0..MAX_ATTRIBUTES)
            .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
            .collect();
        // 32 declarations and one more attribute: 33.
        assert_eq!(
            parse(format!("<a{decls} b=\"1\"/>").as_bytes()),
            Err(XmlError::TooManyAttributes)
        );
        assert!(parse(format!("<a{decls}/>").as_bytes()).is_ok());
        assert_eq!(
            parse(br#"<a b="1" b="2"/>"#),
            Err(XmlError::DuplicateAttribute("b".into()))
        );
        assert_eq!(
            parse(br#"<a xmlns:p="urn:x" xmlns:q="urn:x" p:b="1" q:b="2"/>"#),
            Err(XmlError::DuplicateAttribute("b".into()))
        );
        assert!(parse(br#"<a xmlns:p="urn:x" xmlns:q="urn:y" p:b="1" q:b="2"/>"#).is_ok());
    }
}
