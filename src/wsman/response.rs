//! Response envelopes written the way Windows writes them (prefixes s, a, x, w, rsp, p; fresh
//! `a:MessageID`, `a:To` anonymous, `a:RelatesTo` = the request's MessageID verbatim).
#![forbid(unsafe_code)]

use super::envelope::{
    ANONYMOUS, NS_ADDRESSING, NS_SHELL, NS_SOAP, NS_TRANSFER, NS_WSMAN, NS_WSMV,
};
use super::xml::esc;

/// A fresh `uuid:XXXXXXXX-...` (upper case, as Windows sends).
pub fn new_message_id() -> String {
    format!("uuid:{}", uuid::Uuid::new_v4().to_string().to_uppercase())
}

/// A whole envelope with the standard header around `body` (already XML).
pub fn envelope(action: &str, relates_to: Option<&str>, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 900);
    s.push_str(r#"<s:Envelope xml:lang="en-US" xmlns:s=""#);
    s.push_str(NS_SOAP);
    s.push_str(r#"" xmlns:a=""#);
    s.push_str(NS_ADDRESSING);
    s.push_str(r#"" xmlns:x=""#);
    s.push_str(NS_TRANSFER);
    s.push_str(r#"" xmlns:w=""#);
    s.push_str(NS_WSMAN);
    s.push_str(r#"" xmlns:rsp=""#);
    s.push_str(NS_SHELL);
    s.push_str(r#"" xmlns:p=""#);
    s.push_str(NS_WSMV);
    s.push_str(r#""><s:Header><a:Action>"#);
    s.push_str(&esc(action));
    s.push_str("</a:Action><a:MessageID>");
    s.push_str(&new_message_id());
    s.push_str("</a:MessageID><a:To>");
    s.push_str(ANONYMOUS);
    s.push_str("</a:To>");
    if let Some(r) = relates_to {
        s.push_str("<a:RelatesTo>");
        s.push_str(&esc(r));
        s.push_str("</a:RelatesTo>");
    }
    s.push_str("</s:Header><s:Body>");
    s.push_str(body);
    s.push_str("</s:Body></s:Envelope>");
    s
}

/// `<x:ResourceCreated>` for a new shell: pywinrm takes the first `Name="ShellId"` element,
/// pypsrp copies this SelectorSet into every later request.
pub fn resource_created(address: &str, resource_uri: &str, shell_id: &str) -> String {
    format!(
        "<x:ResourceCreated><a:Address>{}</a:Address><a:ReferenceParameters><w:ResourceURI>{}</w:ResourceURI>\
         <w:SelectorSet><w:Selector Name=\"ShellId\">{}</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>",
        esc(address),
        esc(resource_uri),
        esc(shell_id)
    )
}

/// Properties shown in `rsp:Shell` (CreateResponse and GetResponse).
#[derive(Debug, Clone, Default)]
pub struct ShellInfo {
    pub shell_id: String,
    pub resource_uri: String,
    pub owner: String,
    pub client_ip: String,
    /// The client's `rsp:Environment` variables, echoed as Windows does.
    pub environment: Vec<(String, String)>,
    pub idle_timeout: std::time::Duration,
    pub input_streams: Vec<super::shell::StreamName>,
    pub output_streams: Vec<super::shell::StreamName>,
    pub run_time: std::time::Duration,
    pub inactivity: std::time::Duration,
}

fn windows_period(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!(
        "P{}DT{}H{}M{}S",
        s / 86400,
        (s % 86400) / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

fn environment_element(vars: &[(String, String)]) -> String {
    if vars.is_empty() {
        return String::new();
    }
    let inner: String = vars
        .iter()
        .map(|(k, v)| {
            format!(
                "<rsp:Variable Name=\"{}\">{}</rsp:Variable>",
                esc(k),
                esc(v)
            )
        })
        .collect();
    format!("<rsp:Environment>{inner}</rsp:Environment>")
}

/// `<rsp:Shell>` as Windows describes a shell; `state` adds `rsp:State` (GetResponse).
pub fn shell_element(info: &ShellInfo, state: Option<&str>) -> String {
    let mut s = format!(
        "<rsp:Shell><rsp:ShellId>{}</rsp:ShellId><rsp:ResourceUri>{}</rsp:ResourceUri><rsp:Owner>{}</rsp:Owner>\
         <rsp:ClientIP>{}</rsp:ClientIP>{}<rsp:IdleTimeOut>{}</rsp:IdleTimeOut><rsp:InputStreams>{}</rsp:InputStreams>\
         <rsp:OutputStreams>{}</rsp:OutputStreams>",
        esc(&info.shell_id),
        esc(&info.resource_uri),
        esc(&info.owner),
        esc(&info.client_ip),
        environment_element(&info.environment),
        super::envelope::format_duration(info.idle_timeout),
        super::shell::StreamName::join(&info.input_streams),
        super::shell::StreamName::join(&info.output_streams),
    );
    if let Some(st) = state {
        s.push_str(&format!("<rsp:State>{}</rsp:State>", esc(st)));
    }
    s.push_str(&format!(
        "<rsp:ShellRunTime>{}</rsp:ShellRunTime><rsp:ShellInactivity>{}</rsp:ShellInactivity></rsp:Shell>",
        windows_period(info.run_time),
        windows_period(info.inactivity)
    ));
    s
}

/// `<rsp:CommandResponse>`.
pub fn command_response(command_id: &str) -> String {
    format!(
        "<rsp:CommandResponse><rsp:CommandId>{}</rsp:CommandId></rsp:CommandResponse>",
        esc(command_id)
    )
}

pub const STATE_DONE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";
pub const STATE_RUNNING: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running";
pub const STATE_PENDING: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Pending";

/// `<rsp:ReceiveResponse>` from what a shell returned.
pub fn receive_response(r: &super::shell::ReceiveResponse) -> String {
    use super::shell::CommandStateKind;
    use base64::Engine as _;
    let mut s = String::from("<rsp:ReceiveResponse>");
    for c in &r.streams {
        s.push_str("<rsp:Stream Name=\"");
        s.push_str(c.name.as_str());
        s.push('"');
        if let Some(id) = &c.command_id {
            s.push_str(" CommandId=\"");
            s.push_str(&esc(id));
            s.push('"');
        }
        if c.end {
            s.push_str(" End=\"true\"");
        }
        s.push('>');
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(&c.data));
        s.push_str("</rsp:Stream>");
    }
    if let Some(st) = &r.command_state {
        let uri = match st.state {
            CommandStateKind::Done => STATE_DONE,
            CommandStateKind::Running => STATE_RUNNING,
            CommandStateKind::Pending => STATE_PENDING,
        };
        s.push_str(&format!(
            "<rsp:CommandState CommandId=\"{}\" State=\"{}\">",
            esc(&st.command_id),
            uri
        ));
        if let Some(code) = st.exit_code {
            s.push_str(&format!("<rsp:ExitCode>{code}</rsp:ExitCode>"));
        }
        s.push_str("</rsp:CommandState>");
    }
    s.push_str("</rsp:ReceiveResponse>");
    s
}

/// `<wsmid:IdentifyResponse>` (what Test-WSMan reads).
pub fn identify_response(product_version: &str) -> String {
    format!(
        "<wsmid:IdentifyResponse xmlns:wsmid=\"{}\"><wsmid:ProtocolVersion>{}</wsmid:ProtocolVersion>\
         <wsmid:ProductVendor>keyhole</wsmid:ProductVendor><wsmid:ProductVersion>{}</wsmid:ProductVersion>\
         </wsmid:IdentifyResponse>",
        super::envelope::NS_IDENTITY,
        NS_WSMAN,
        esc(product_version)
    )
}

/// The whole reply to an anonymous Identify, shaped as WinRM's (a SOAP envelope with an empty
/// Header): ProtocolVersion, ProductVendor and a ProductVersion without operating-system or
/// version details (`OS: 0.0.0 SP: 0.0 Stack: 3.0`, what WinRM answers without credentials).
pub fn anonymous_identify_envelope() -> String {
    format!(
        "<s:Envelope xmlns:s=\"{NS_SOAP}\"><s:Header/><s:Body>\
         <wsmid:IdentifyResponse xmlns:wsmid=\"{}\"><wsmid:ProtocolVersion>{NS_WSMAN}</wsmid:ProtocolVersion>\
         <wsmid:ProductVendor>keyhole</wsmid:ProductVendor><wsmid:ProductVersion>{ANONYMOUS_PRODUCT_VERSION}</wsmid:ProductVersion>\
         </wsmid:IdentifyResponse></s:Body></s:Envelope>",
        super::envelope::NS_IDENTITY,
    )
}

/// What an anonymous Identify learns of the product version: nothing.
pub const ANONYMOUS_PRODUCT_VERSION: &str = "OS: 0.0.0 SP: 0.0 Stack: 3.0";

/// `<cfg:Config>` with the envelope limit (pypsrp `update_max_payload_size`).
pub fn config_response(max_envelope_size_kb: u64) -> String {
    format!(
        "<cfg:Config xmlns:cfg=\"{}\"><cfg:MaxEnvelopeSizekb>{}</cfg:MaxEnvelopeSizekb></cfg:Config>",
        super::envelope::NS_CONFIG,
        max_envelope_size_kb
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::wsman::xml;

    #[test]
    fn envelope_relates_to_and_parses_back() {
        let e = envelope("urn:act", Some("uuid:abc<&"), &command_response("C1"));
        let t = xml::parse(e.as_bytes()).unwrap();
        let h = t.child(NS_SOAP, "Header").unwrap();
        assert_eq!(
            h.child(NS_ADDRESSING, "RelatesTo").unwrap().text,
            "uuid:abc<&"
        );
        assert_eq!(h.child(NS_ADDRESSING, "To").unwrap().text, ANONYMOUS);
        assert!(h
            .child(NS_ADDRESSING, "MessageID")
            .unwrap()
            .text
            .starts_with("uuid:"));
        let b = t.child(NS_SOAP, "Body").unwrap();
        assert_eq!(b.find(NS_SHELL, "CommandId").unwrap().text, "C1");
    }
}
