//! SOAP/WS-Man request envelopes: namespace and action constants, and the decoded headers
//! (Action, MessageID, ResourceURI, SelectorSet, OptionSet, OperationTimeout, MaxEnvelopeSize)
//! plus the Body, parsed from the bounded XML tree.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::xml::{self, Element, XmlError};

pub const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub const NS_WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub const NS_WSMV: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd";
pub const NS_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
pub const NS_TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer";
pub const NS_WSMANFAULT: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
pub const NS_IDENTITY: &str = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd";
pub const NS_CONFIG: &str = "http://schemas.microsoft.com/wbem/wsman/1/config";
pub const NS_POWERSHELL: &str = "http://schemas.microsoft.com/powershell";

pub const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

pub const ACTION_CREATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create";
pub const ACTION_DELETE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";
pub const ACTION_GET: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get";
pub const ACTION_COMMAND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command";
pub const ACTION_SEND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send";
pub const ACTION_RECEIVE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive";
pub const ACTION_SIGNAL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal";
pub const ACTION_FAULT: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault";

/// WinRS cmd shell resource.
pub const URI_CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";
/// Any shell (wst:Get on a shell, pypsrp `is_alive`).
pub const URI_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
/// PSRP endpoints: this prefix + `/` + configuration name.
pub const URI_POWERSHELL_PREFIX: &str = "http://schemas.microsoft.com/powershell/";
/// WS-Man configuration (pypsrp `update_max_payload_size`).
pub const URI_CONFIG: &str = "http://schemas.microsoft.com/wbem/wsman/1/config";

/// Most selectors / options accepted in one request.
pub const MAX_SELECTORS: usize = 16;
pub const MAX_OPTIONS: usize = 64;
/// Longest header value kept (MessageID, ResourceURI, selector values, option values).
pub const MAX_HEADER_VALUE: usize = 2048;

/// What was wrong with an envelope (each maps to one fault in `fault`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("the root element is not a SOAP 1.2 Envelope")]
    NotSoap,
    #[error("the envelope has no {0} header")]
    MissingHeader(&'static str),
    #[error("the header {0} is invalid: {1}")]
    BadHeader(&'static str, String),
    #[error("the envelope has no Body")]
    NoBody,
}

/// A decoded request envelope.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub action: String,
    /// Echoed verbatim in `a:RelatesTo`.
    pub message_id: String,
    pub resource_uri: String,
    /// `(Name, value)` of `wsman:SelectorSet/wsman:Selector`.
    pub selectors: Vec<(String, String)>,
    /// `(Name, value)` of `wsman:OptionSet/wsman:Option`.
    pub options: Vec<(String, String)>,
    pub operation_timeout: Option<Duration>,
    pub max_envelope_size: Option<usize>,
    /// The children of `s:Body`.
    pub body: Vec<Element>,
}

impl Envelope {
    /// Parse and decode a request.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let root = xml::parse(bytes)?;
        Self::from_tree(root)
    }

    pub fn from_tree(root: Element) -> Result<Envelope, EnvelopeError> {
        if !root.is(NS_SOAP, "Envelope") {
            return Err(EnvelopeError::NotSoap);
        }
        let mut env = Envelope::default();
        let mut body = None;
        for part in root.children {
            if part.is(NS_SOAP, "Header") {
                env.read_headers(&part)?;
            } else if part.is(NS_SOAP, "Body") {
                body = Some(part.children);
            }
        }
        env.body = body.ok_or(EnvelopeError::NoBody)?;
        Ok(env)
    }

    /// Every operation except Identify needs an Action and a MessageID.
    pub fn require_addressing(&self) -> Result<(), EnvelopeError> {
        if self.action.is_empty() {
            return Err(EnvelopeError::MissingHeader("wsa:Action"));
        }
        if self.message_id.is_empty() {
            return Err(EnvelopeError::MissingHeader("wsa:MessageID"));
        }
        Ok(())
    }

    /// Is the body a `wsmid:Identify` request?
    pub fn is_identify(&self) -> bool {
        self.body_element()
            .is_some_and(|b| b.is(NS_IDENTITY, "Identify"))
    }

    fn read_headers(&mut self, header: &Element) -> Result<(), EnvelopeError> {
        for h in &header.children {
            let ns = h.ns.as_deref().unwrap_or("");
            match (ns, h.local.as_str()) {
                (NS_ADDRESSING, "Action") => self.action = bounded("wsa:Action", &h.text)?,
                (NS_ADDRESSING, "MessageID") => {
                    self.message_id = bounded("wsa:MessageID", &h.text)?
                }
                (NS_WSMAN, "ResourceURI") => {
                    self.resource_uri = bounded("wsman:ResourceURI", &h.text)?
                }
                (NS_WSMAN, "OperationTimeout") => {
                    let d = parse_duration(h.text.trim()).ok_or_else(|| {
                        EnvelopeError::BadHeader(
                            "wsman:OperationTimeout",
                            format!("{:?} is not an xs:duration", h.text.trim()),
                        )
                    })?;
                    self.operation_timeout = Some(d);
                }
                (NS_WSMAN, "MaxEnvelopeSize") => {
                    let n = h.text.trim().parse::<usize>().map_err(|_| {
                        EnvelopeError::BadHeader(
                            "wsman:MaxEnvelopeSize",
                            format!("{:?} is not a positive integer", h.text.trim()),
                        )
                    })?;
                    self.max_envelope_size = Some(n);
                }
                (NS_WSMAN, "SelectorSet") => {
                    for s in h.children_named(NS_WSMAN, "Selector") {
                        if self.selectors.len() >= MAX_SELECTORS {
                            return Err(EnvelopeError::BadHeader(
                                "wsman:SelectorSet",
                                "too many selectors".into(),
                            ));
                        }
                        let name = s.attr("Name").unwrap_or("").to_string();
                        self.selectors
                            .push((name, bounded("wsman:Selector", s.text.trim())?));
                    }
                }
                (NS_WSMAN, "OptionSet") => {
                    for o in h.children_named(NS_WSMAN, "Option") {
                        if self.options.len() >= MAX_OPTIONS {
                            return Err(EnvelopeError::BadHeader(
                                "wsman:OptionSet",
                                "too many options".into(),
                            ));
                        }
                        let name = o.attr("Name").unwrap_or("").to_string();
                        self.options
                            .push((name, bounded("wsman:Option", o.text.trim())?));
                    }
                }
                // To, ReplyTo, Locale, DataLocale, SessionId and unknown headers are ignored.
                _ => {}
            }
        }
        Ok(())
    }

    /// A selector's value by name (case-insensitive name).
    pub fn selector(&self, name: &str) -> Option<&str> {
        self.selectors
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first body element, if any.
    pub fn body_element(&self) -> Option<&Element> {
        self.body.first()
    }
}

/// Is `root` exactly DSP0226's Identify request: a SOAP Envelope holding an empty Header (no
/// addressing or any other header) and a Body holding only an empty `wsmid:Identify`?
pub fn is_bare_identify(root: &Element) -> bool {
    let [header, body] = root.children.as_slice() else {
        return false;
    };
    if !root.is(NS_SOAP, "Envelope")
        || !header.is(NS_SOAP, "Header")
        || !header.children.is_empty()
        || !body.is(NS_SOAP, "Body")
    {
        return false;
    }
    matches!(body.children.as_slice(), [id] if id.is(NS_IDENTITY, "Identify") && id.children.is_empty() && id.text.trim().is_empty())
}

fn bounded(what: &'static str, s: &str) -> Result<String, EnvelopeError> {
    let s = s.trim();
    if s.len() > MAX_HEADER_VALUE {
        return Err(EnvelopeError::BadHeader(
            what,
            format!("longer than {MAX_HEADER_VALUE} bytes"),
        ));
    }
    Ok(s.to_string())
}

/// Parse an xs:duration such as `PT20S`, `PT20.5S`, `PT1M`, `P0DT0H0M0S`; no negative values,
/// no years or months (meaningless for timeouts).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let rest = s.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return None;
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut parse_part = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        let mut allowed = units.iter();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                if num.len() > 20 {
                    return None;
                }
                num.push(c);
            } else {
                let (_, mult) = allowed.by_ref().find(|(u, _)| *u == c)?;
                if num.is_empty() {
                    return None;
                }
                let v: f64 = num.parse().ok()?;
                if (c != 'S') && num.contains('.') {
                    return None;
                }
                total += v * mult;
                num.clear();
            }
        }
        if num.is_empty() {
            Some(())
        } else {
            None
        }
    };
    parse_part(date, &[('D', 86400.0)])?;
    if let Some(t) = time {
        parse_part(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    if !total.is_finite() || total > 1e9 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// Format a duration as Windows does in shell properties (`PT7200.000S`).
pub fn format_duration(d: Duration) -> String {
    format!("PT{}.{:03}S", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("PT20S"), Some(Duration::from_secs(20)));
        assert_eq!(
            parse_duration("PT20.500S"),
            Some(Duration::from_millis(20500))
        );
        assert_eq!(parse_duration("PT1M5S"), Some(Duration::from_secs(65)));
        assert_eq!(parse_duration("P0DT0H0M0S"), Some(Duration::from_secs(0)));
        assert_eq!(parse_duration("P1D"), Some(Duration::from_secs(86400)));
        for bad in [
            "",
            "P",
            "PT",
            "PT-1S",
            "20",
            "PTS",
            "PT1.5M",
            "PT1S2",
            "P1Y",
            "PT99999999999999999999999S",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(7200)), "PT7200.000S");
    }

    #[test]
    fn pywinrm_style_headers() {
        let req = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><env:Header><a:To>http://windows-host:5985/wsman</a:To><a:ReplyTo><a:Address mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo><w:MaxEnvelopeSize mustUnderstand="true">153600</w:MaxEnvelopeSize><a:MessageID>uuid:11111111-1111-1111-1111-111111111111</a:MessageID><w:Locale mustUnderstand="false" xml:lang="en-US"/><w:OperationTimeout>PT20S</w:OperationTimeout><w:ResourceURI mustUnderstand="true">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI><a:Action mustUnderstand="true">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive</a:Action><w:SelectorSet><w:Selector Name="ShellId">S1</w:Selector></w:SelectorSet><w:OptionSet><w:Option Name="WINRS_NOPROFILE">FALSE</w:Option></w:OptionSet></env:Header><env:Body><rsp:Receive xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"/></env:Body></env:Envelope>"#;
        let e = Envelope::parse(req.as_bytes()).unwrap();
        assert_eq!(e.action, ACTION_RECEIVE);
        assert_eq!(e.message_id, "uuid:11111111-1111-1111-1111-111111111111");
        assert_eq!(e.resource_uri, URI_CMD);
        assert_eq!(e.selector("shellid"), Some("S1"));
        assert_eq!(
            e.options,
            vec![("WINRS_NOPROFILE".to_string(), "FALSE".to_string())]
        );
        assert_eq!(e.operation_timeout, Some(Duration::from_secs(20)));
        assert_eq!(e.max_envelope_size, Some(153600));
        assert!(e.body_element().unwrap().is(NS_SHELL, "Receive"));
    }

    #[test]
    fn refuses_non_soap_and_missing_headers() {
        assert_eq!(
            Envelope::parse(b"<a/>").unwrap_err(),
            EnvelopeError::NotSoap
        );
        let no_id = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header><a:Action>x</a:Action></s:Header><s:Body/></s:Envelope>"#;
        let e = Envelope::parse(no_id.as_bytes()).unwrap();
        assert_eq!(
            e.require_addressing().unwrap_err(),
            EnvelopeError::MissingHeader("wsa:MessageID")
        );
    }
}
