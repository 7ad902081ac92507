//! WS-Man faults, shaped as Windows sends them (HTTP 500, SOAP 1.2 Fault, `f:WSManFault` with
//! a numeric `Code`). [`Fault::from_error`] is the ONE mapping from internal errors to faults:
//! the detail goes to the log, the client gets the generic text.
#![forbid(unsafe_code)]

use super::envelope::{EnvelopeError, ACTION_FAULT, NS_WSMANFAULT};
use super::response::envelope;
use super::shell::ShellError;
use super::xml::esc;

/// The faults keyhole sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Receive found nothing to send within OperationTimeout (pywinrm/pypsrp retry it).
    TimedOut,
    /// Unknown shell or command, or one owned by someone else.
    InvalidSelectors,
    /// Too many shells (per user) or commands (per shell).
    QuotaLimit,
    /// The request envelope is larger than the configured limit. (Windows' numeric code for
    /// this fault is not in the recordings; keyhole's `Code` is its own choice, the subcode and
    /// FaultDetail follow DSP0226.)
    EncodingLimit,
    /// Malformed XML, DTD, limits, invalid UTF-8, wrong Content-Type, bad header values.
    InvalidMessage,
    /// Invalid base64, fragments or other body content.
    InvalidParameter,
    /// An Action keyhole does not implement.
    ActionNotSupported,
    /// A ResourceURI keyhole does not serve.
    DestinationUnreachable,
    /// Anything else.
    InternalError,
    /// A Receive that was waiting when its shell closed: Windows answers it with
    /// ERROR_OPERATION_ABORTED (995), which clients that keep a Receive open (the psrp 1.0
    /// client, PowerShell) take as "the shell is gone".
    OperationAborted,
}

struct Shape {
    code: &'static str,
    subcode: &'static str,
    reason: &'static str,
    detail: Option<&'static str>,
    wsman_code: u32,
}

impl Fault {
    fn shape(self) -> Shape {
        match self {
            Fault::TimedOut => Shape {
                code: "s:Receiver",
                subcode: "w:TimedOut",
                reason: "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  ",
                detail: None,
                wsman_code: 2150858793,
            },
            Fault::InvalidSelectors => Shape {
                code: "s:Sender",
                subcode: "w:InvalidSelectors",
                reason: "The WS-Management service cannot process the request because the request contained invalid selectors for the resource. ",
                detail: Some("http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors"),
                wsman_code: 2150858843,
            },
            Fault::QuotaLimit => Shape {
                code: "s:Sender",
                subcode: "w:QuotaLimit",
                reason: "The WS-Management service cannot process the request. This user is allowed a maximum number of shells, which has been exceeded. Close existing shells or raise the quota for this user. ",
                detail: None,
                wsman_code: 2150859173,
            },
            Fault::EncodingLimit => Shape {
                code: "s:Sender",
                subcode: "w:EncodingLimit",
                reason: "The WS-Management service cannot process the request because the request size exceeded the configured MaxEnvelopeSize quota. ",
                detail: Some("http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/MaxEnvelopeSize"),
                wsman_code: 2150858817,
            },
            Fault::InvalidMessage => Shape {
                code: "s:Sender",
                subcode: "a:InvalidMessageInformationHeader",
                reason: "The WS-Management service cannot process the request. The request is not a valid SOAP envelope or contains one or more invalid SOAP headers. ",
                detail: None,
                wsman_code: 2150858767,
            },
            Fault::InvalidParameter => Shape {
                code: "s:Sender",
                subcode: "w:InvalidParameter",
                reason: "The parameter is incorrect. ",
                detail: Some("http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/InvalidValue"),
                wsman_code: 87,
            },
            Fault::ActionNotSupported => Shape {
                code: "s:Sender",
                subcode: "a:ActionNotSupported",
                reason: "The action is not supported by the service. ",
                detail: None,
                wsman_code: 2150858754,
            },
            Fault::DestinationUnreachable => Shape {
                code: "s:Sender",
                subcode: "a:DestinationUnreachable",
                reason: "The WS-Management service cannot process the request because the resource URI is not supported. ",
                detail: None,
                wsman_code: 2150858770,
            },
            Fault::InternalError => Shape {
                code: "s:Receiver",
                subcode: "w:InternalError",
                reason: "The WS-Management service cannot process the request because of an internal error. ",
                detail: None,
                wsman_code: 2150858752,
            },
            Fault::OperationAborted => Shape {
                code: "s:Receiver",
                subcode: "w:InternalError",
                reason: "The I/O operation has been aborted because of either a thread exit or an application request. ",
                detail: None,
                wsman_code: 995,
            },
        }
    }

    /// The numeric `WSManFault@Code`.
    pub fn wsman_code(self) -> u32 {
        self.shape().wsman_code
    }

    /// The SOAP fault envelope (send it with HTTP 500). `relates_to` is the request MessageID
    /// when the request got that far.
    pub fn to_xml(self, relates_to: Option<&str>, machine: &str) -> String {
        self.to_xml_with(relates_to, machine, None)
    }

    /// [`Fault::to_xml`] with `message` (see [`client_message`]) in place of the generic text,
    /// in both the SOAP Reason (what pywinrm shows) and the WSManFault Message (what pypsrp and
    /// PowerShell show).
    pub fn to_xml_with(
        self,
        relates_to: Option<&str>,
        machine: &str,
        message: Option<&str>,
    ) -> String {
        let sh = self.shape();
        let reason = match message {
            Some(m) => esc(m),
            None => sh.reason.to_string(),
        };
        let mut body = format!(
            "<s:Fault><s:Code><s:Value>{}</s:Value><s:Subcode><s:Value>{}</s:Value></s:Subcode></s:Code>\
             <s:Reason><s:Text xml:lang=\"en-US\">{}</s:Text></s:Reason><s:Detail>",
            sh.code, sh.subcode, reason
        );
        if let Some(d) = sh.detail {
            body.push_str(&format!("<w:FaultDetail>{d}</w:FaultDetail>"));
        }
        body.push_str(&format!(
            "<f:WSManFault xmlns:f=\"{}\" Code=\"{}\" Machine=\"{}\"><f:Message>{}</f:Message></f:WSManFault></s:Detail></s:Fault>",
            NS_WSMANFAULT,
            sh.wsman_code,
            esc(machine),
            reason
        ));
        envelope(ACTION_FAULT, relates_to, &body)
    }

    /// THE mapping from internal errors to faults. Logs the detail; returns the fault.
    pub fn from_error(err: &WsmanError) -> Fault {
        let fault = match err {
            WsmanError::Envelope(_) | WsmanError::ContentType(_) => Fault::InvalidMessage,
            WsmanError::TooLarge(_) => Fault::EncodingLimit,
            WsmanError::Shell(ShellError::InvalidSelectors | ShellError::Gone(_)) => {
                Fault::InvalidSelectors
            }
            WsmanError::Shell(ShellError::Aborted) => Fault::OperationAborted,
            WsmanError::Shell(ShellError::Unsupported(_)) => Fault::InvalidParameter,
            WsmanError::Shell(ShellError::QuotaLimit(_)) | WsmanError::ShellQuota(_) => {
                Fault::QuotaLimit
            }
            WsmanError::Shell(ShellError::Malformed(_)) | WsmanError::Body(_) => {
                Fault::InvalidParameter
            }
            WsmanError::Shell(ShellError::Internal(_)) | WsmanError::Internal(_) => {
                Fault::InternalError
            }
            WsmanError::UnknownAction(_) => Fault::ActionNotSupported,
            WsmanError::UnknownResource(_) => Fault::DestinationUnreachable,
            WsmanError::TimedOut => Fault::TimedOut,
        };
        match fault {
            Fault::TimedOut | Fault::OperationAborted => tracing::debug!("wsman: {err}"),
            Fault::InternalError => tracing::error!("wsman: internal error: {err}"),
            _ => tracing::info!("wsman: request refused with {:?}: {err}", fault),
        }
        fault
    }
}

/// The text a fault shows the client instead of the generic one, for the errors whose detail
/// helps the client and tells nothing about the server or other users: what keyhole does not
/// support, a shell the server closed (to its owner only), and the envelope limit. Every other
/// fault keeps Windows' generic text; its detail goes to the log.
pub fn client_message(err: &WsmanError) -> Option<String> {
    match err {
        WsmanError::Shell(ShellError::Unsupported(m) | ShellError::Gone(m)) => Some(m.clone()),
        WsmanError::TooLarge(max) => Some(format!(
            "The WS-Management service cannot process the request because the request is larger than this server's MaxEnvelopeSize ({max} bytes, max_envelope_size_kb = {} in keyhole.toml). Send less in one request: a shorter command line, or a client MaxEnvelopeSize at most this size.",
            max / 1024
        )),
        _ => None,
    }
}

/// Everything that can go wrong while serving one WS-Man request (after authentication).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsmanError {
    #[error("invalid envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("Content-Type {0:?} refused: keyhole accepts application/soap+xml;charset=UTF-8")]
    ContentType(String),
    #[error("the request body exceeds the configured max_envelope_size_kb ({0} bytes)")]
    TooLarge(usize),
    #[error("invalid request body: {0}")]
    Body(String),
    #[error("shell: {0}")]
    Shell(#[from] ShellError),
    #[error("shell quota: {0}")]
    ShellQuota(String),
    #[error("action {0:?} is not implemented")]
    UnknownAction(String),
    #[error("resource URI {0:?} is not served here")]
    UnknownResource(String),
    #[error("nothing to receive within the operation timeout")]
    TimedOut,
    #[error("{0}")]
    Internal(String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::wsman::envelope::{NS_SOAP, NS_WSMANFAULT};
    use crate::wsman::xml;

    #[test]
    fn timed_out_has_the_code_clients_retry_on() {
        let x = Fault::TimedOut.to_xml(Some("uuid:1"), "host");
        let t = xml::parse(x.as_bytes()).unwrap();
        let f = t.find(NS_WSMANFAULT, "WSManFault").unwrap();
        assert_eq!(f.attr("Code"), Some("2150858793"));
        let sub = t
            .find(NS_SOAP, "Subcode")
            .unwrap()
            .child(NS_SOAP, "Value")
            .unwrap();
        assert_eq!(sub.text, "w:TimedOut");
    }

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let e = WsmanError::Internal("secret path /etc/shadow".into());
        let f = Fault::from_error(&e);
        assert_eq!(f, Fault::InternalError);
        assert!(!f.to_xml(None, "h").contains("shadow"));
    }
}
