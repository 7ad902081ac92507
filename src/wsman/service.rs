//! WS-Man operations after authentication: decode the envelope, dispatch by Action and
//! ResourceURI to the shell registry, and answer with a response or exactly one fault.
//! HTTP-agnostic: `server` feeds it authenticated request bodies.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::envelope::*;
use super::fault::{Fault, WsmanError};
use super::registry::{Registry, ShellEntry};
use super::response::{self, ShellInfo};
use super::shell::{CommandRequest, CreateRequest, ReceiveResponse, Shell, ShellError, ShellOwner};
use super::xml::Element;
use crate::server::{Gatekeeper, Identity, SessionGrant};

/// Default MaxEnvelopeSize when the client sends none (pypsrp's and WinRM's default).
pub const DEFAULT_CLIENT_ENVELOPE: usize = 153_600;
/// Most bytes of stdin one command keeps.
pub const MAX_CREATION_XML: usize = 1024 * 1024;

/// Creates shells for a family of resource URIs (WinRS built in; PSRP registers one).
pub trait ShellFactory: Send + Sync {
    /// Build a shell for `resource_uri` in the session the gates granted.
    fn create(
        &self,
        resource_uri: &str,
        grant: SessionGrant,
        owner: &ShellOwner,
        req: &CreateRequest,
    ) -> Result<Box<dyn Shell>, ShellError>;
}

/// What the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Shown as `Machine` in faults.
    pub computer_name: String,
    /// Endpoint WinRS shells land in; empty refuses them (with the generic 401).
    pub winrs_endpoint: String,
    /// Largest request body accepted, bytes.
    pub max_envelope_size: usize,
    pub max_operation_timeout: Duration,
    pub product_version: String,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// HTTP 200 with this envelope.
    Ok(String),
    /// HTTP 500 with this fault envelope.
    Fault(String),
    /// The generic 401 (a refusal at gates 3–4 looks exactly like a wrong password).
    Unauthorized,
}

/// The WS-Man service.
pub struct WsmanService {
    pub cfg: ServiceConfig,
    gate: Arc<dyn Gatekeeper>,
    registry: Arc<Registry>,
    factories: Vec<(String, Arc<dyn ShellFactory>)>,
}

enum Outcome {
    Body(&'static str, String),
    Unauthorized,
}

type OpResult = Result<Outcome, WsmanError>;

impl WsmanService {
    pub fn new(cfg: ServiceConfig, gate: Arc<dyn Gatekeeper>) -> WsmanService {
        WsmanService {
            cfg,
            gate,
            registry: Arc::new(Registry::new()),
            factories: vec![(
                URI_CMD.to_string(),
                Arc::new(crate::winrs::WinrsFactory) as Arc<dyn ShellFactory>,
            )],
        }
    }

    /// Serve resource URIs starting with `prefix` with `factory`. For a prefix ending in `/`
    /// (e.g. `http://schemas.microsoft.com/powershell/`), the rest of the URI is the endpoint
    /// name handed to gate 4. Later registrations of the same prefix replace earlier ones.
    pub fn register_factory(&mut self, prefix: &str, factory: Arc<dyn ShellFactory>) {
        self.factories
            .retain(|(p, _)| !p.eq_ignore_ascii_case(prefix));
        self.factories.push((prefix.to_string(), factory));
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Serve one authenticated request. `content_type` is the request's Content-Type header;
    /// `address` is this listener's `/wsman` URL (used in ResourceCreated).
    pub async fn handle(
        &self,
        id: &Identity,
        peer: SocketAddr,
        content_type: Option<&str>,
        body: &[u8],
        address: &str,
    ) -> Reply {
        let mut relates: Option<String> = None;
        let result = self
            .handle_inner(id, peer, content_type, body, address, &mut relates)
            .await;
        match result {
            Ok(Outcome::Body(action, xml)) => {
                Reply::Ok(response::envelope(action, relates.as_deref(), &xml))
            }
            Ok(Outcome::Unauthorized) => Reply::Unauthorized,
            Err(e) => Reply::Fault(self.fault_xml(&e, relates.as_deref())),
        }
    }

    /// A fault envelope for an error (through the one mapping).
    pub fn fault_xml(&self, e: &WsmanError, relates: Option<&str>) -> String {
        Fault::from_error(e).to_xml(relates, &self.cfg.computer_name)
    }

    async fn handle_inner(
        &self,
        id: &Identity,
        peer: SocketAddr,
        content_type: Option<&str>,
        body: &[u8],
        address: &str,
        relates: &mut Option<String>,
    ) -> OpResult {
        check_content_type(content_type)?;
        if body.len() > self.cfg.max_envelope_size {
            return Err(WsmanError::TooLarge(self.cfg.max_envelope_size));
        }
        let env = Envelope::parse(body)?;
        if env.is_identify() {
            return Ok(Outcome::Body(
                "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity/IdentifyResponse",
                response::identify_response(&self.cfg.product_version),
            ));
        }
        env.require_addressing()?;
        *relates = Some(env.message_id.clone());
        tracing::debug!(
            user = %id.user,
            %peer,
            action = %env.action,
            resource = %env.resource_uri,
            shell = env.selector("ShellId").unwrap_or(""),
            "wsman request"
        );
        match env.action.as_str() {
            ACTION_CREATE => self.create(id, peer, &env, address).await,
            ACTION_COMMAND => self.command(id, &env),
            ACTION_SEND => self.send(id, &env),
            ACTION_RECEIVE => self.receive(id, &env).await,
            ACTION_SIGNAL => self.signal(id, &env),
            ACTION_DELETE => self.delete(id, &env),
            ACTION_GET => self.get(id, &env),
            other => Err(WsmanError::UnknownAction(other.to_string())),
        }
    }

    fn shell_of(&self, id: &Identity, env: &Envelope) -> Result<Arc<ShellEntry>, WsmanError> {
        let shell_id = env
            .selector("ShellId")
            .ok_or(ShellError::InvalidSelectors)?;
        self.registry
            .get(shell_id, &id.user)
            .ok_or(WsmanError::Shell(ShellError::InvalidSelectors))
    }

    fn factory_for(&self, uri: &str) -> Option<(String, Arc<dyn ShellFactory>)> {
        if uri.eq_ignore_ascii_case(URI_CMD) {
            let f = self
                .factories
                .iter()
                .find(|(p, _)| p.eq_ignore_ascii_case(URI_CMD))?;
            return Some((self.cfg.winrs_endpoint.clone(), f.1.clone()));
        }
        self.factories
            .iter()
            .filter(|(p, _)| !p.eq_ignore_ascii_case(URI_CMD))
            .find(|(p, _)| {
                uri.len() > p.len()
                    && uri
                        .get(..p.len())
                        .is_some_and(|h| h.eq_ignore_ascii_case(p))
            })
            .map(|(p, f)| (uri.get(p.len()..).unwrap_or("").to_string(), f.clone()))
    }

    async fn create(
        &self,
        id: &Identity,
        peer: SocketAddr,
        env: &Envelope,
        address: &str,
    ) -> OpResult {
        let uri = env.resource_uri.clone();
        let (endpoint, factory) = self
            .factory_for(&uri)
            .ok_or_else(|| WsmanError::UnknownResource(uri.clone()))?;
        if endpoint.is_empty() {
            tracing::info!(user = %id.user, %peer, "gate 4: WinRS refused: winrs_endpoint is empty in keyhole.toml");
            return Ok(Outcome::Unauthorized);
        }
        let req = parse_create(env, self.cfg.max_envelope_size)?;
        let gate = self.gate.clone();
        let ident = id.clone();
        let ep = endpoint.clone();
        let grant = tokio::task::spawn_blocking(move || gate.open_session(&ident, &ep, peer))
            .await
            .map_err(|e| WsmanError::Internal(format!("open_session task failed: {e}")))?;
        let Some(grant) = grant else {
            return Ok(Outcome::Unauthorized);
        };
        let owner = ShellOwner {
            user: id.user.clone(),
            groups: id.groups.clone(),
            client: peer.ip().to_string(),
        };
        let max_shells = grant.max_shells;
        let idle = grant.idle_timeout;
        // Cheap early refusal; the registry re-checks atomically on insert.
        if self.registry.count_for(&id.user) >= max_shells {
            return Err(WsmanError::ShellQuota(format!(
                "user {} has {max_shells} shells open",
                id.user
            )));
        }
        let mut shell = factory.create(&uri, grant, &owner, &req)?;
        if let Err(e) = shell.on_create(&req) {
            shell.close();
            return Err(e.into());
        }
        let shell_id = req
            .shell_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_uppercase());
        let inputs = if req.input_streams.is_empty() {
            "stdin".to_string()
        } else {
            req.input_streams.join(" ")
        };
        let outputs = if req.output_streams.is_empty() {
            "stdout stderr".to_string()
        } else {
            req.output_streams.join(" ")
        };
        let mut entry = ShellEntry::new(
            shell_id.clone(),
            owner.clone(),
            uri.clone(),
            inputs,
            outputs,
            idle,
            shell,
        );
        entry.environment = req.environment.clone();
        let entry = match self.registry.insert(entry, max_shells) {
            Ok(e) => e,
            Err((err, entry)) => {
                entry.shell().close();
                return Err(err.into());
            }
        };
        tracing::info!(user = %id.user, shell = %shell_id, endpoint = %endpoint, "shell created");
        let info = self.info(&entry);
        let body = format!(
            "{}{}",
            response::resource_created(address, &uri, &shell_id),
            response::shell_element(&info, None)
        );
        Ok(Outcome::Body(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse",
            body,
        ))
    }

    fn info(&self, e: &ShellEntry) -> ShellInfo {
        ShellInfo {
            shell_id: e.id.clone(),
            resource_uri: e.resource_uri.clone(),
            owner: e.owner.user.clone(),
            client_ip: e.owner.client.clone(),
            environment: e.environment.clone(),
            idle_timeout: e.idle_timeout,
            input_streams: e.input_streams.clone(),
            output_streams: e.output_streams.clone(),
            run_time: e.created.elapsed(),
            inactivity: e.inactivity(),
        }
    }

    fn command(&self, id: &Identity, env: &Envelope) -> OpResult {
        let entry = self.shell_of(id, env)?;
        let _g = entry.use_guard();
        let cl = env
            .body_element()
            .filter(|b| b.is(NS_SHELL, "CommandLine"))
            .ok_or_else(|| WsmanError::Body("the Command body has no rsp:CommandLine".into()))?;
        let req = CommandRequest {
            command_id: cl.attr("CommandId").map(str::to_string),
            command: cl
                .child(NS_SHELL, "Command")
                .map(|c| c.text.clone())
                .unwrap_or_default(),
            arguments: cl
                .children_named(NS_SHELL, "Arguments")
                .map(|a| a.text.clone())
                .collect(),
        };
        let cid = entry.shell().command(req)?;
        Ok(Outcome::Body(
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse",
            response::command_response(&cid),
        ))
    }

    fn send(&self, id: &Identity, env: &Envelope) -> OpResult {
        let entry = self.shell_of(id, env)?;
        let _g = entry.use_guard();
        let send = env
            .body_element()
            .filter(|b| b.is(NS_SHELL, "Send"))
            .ok_or_else(|| WsmanError::Body("the Send body has no rsp:Send".into()))?;
        for s in send.children_named(NS_SHELL, "Stream") {
            let data = decode_b64(&s.text)?;
            let end = s
                .attr("End")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let name = s.attr("Name").unwrap_or("stdin");
            entry.shell().send(s.attr("CommandId"), name, data, end)?;
        }
        Ok(Outcome::Body(
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SendResponse",
            "<rsp:SendResponse/>".into(),
        ))
    }

    async fn receive(&self, id: &Identity, env: &Envelope) -> OpResult {
        let entry = self.shell_of(id, env)?;
        let _g = entry.use_guard();
        let recv = env
            .body_element()
            .filter(|b| b.is(NS_SHELL, "Receive"))
            .ok_or_else(|| WsmanError::Body("the Receive body has no rsp:Receive".into()))?;
        let desired = recv.child(NS_SHELL, "DesiredStream");
        let command_id = desired
            .and_then(|d| d.attr("CommandId"))
            .map(str::to_string);
        let wanted: Option<Vec<String>> = desired
            .map(|d| {
                d.text
                    .split_whitespace()
                    .map(str::to_ascii_lowercase)
                    .collect()
            })
            .filter(|v: &Vec<String>| !v.is_empty());
        let timeout = env
            .operation_timeout
            .unwrap_or(self.cfg.max_operation_timeout)
            .min(self.cfg.max_operation_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let notify = entry.notify();
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut r: ReceiveResponse = entry.shell().receive(command_id.as_deref())?;
            if let Some(w) = &wanted {
                r.streams
                    .retain(|c| w.iter().any(|n| n.eq_ignore_ascii_case(&c.name)));
            }
            if !r.streams.is_empty() || r.command_state.is_some() {
                return Ok(Outcome::Body(
                    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse",
                    response::receive_response(&r),
                ));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Err(WsmanError::TimedOut),
            }
        }
    }

    fn signal(&self, id: &Identity, env: &Envelope) -> OpResult {
        let entry = self.shell_of(id, env)?;
        let _g = entry.use_guard();
        let sig = env
            .body_element()
            .filter(|b| b.is(NS_SHELL, "Signal"))
            .ok_or_else(|| WsmanError::Body("the Signal body has no rsp:Signal".into()))?;
        let code_uri = sig
            .child(NS_SHELL, "Code")
            .map(|c| c.text.trim().to_string())
            .unwrap_or_default();
        let code = signal_code(&code_uri)
            .ok_or_else(|| WsmanError::Body(format!("unknown signal code {code_uri:?}")))?;
        entry.shell().signal(sig.attr("CommandId"), &code)?;
        Ok(Outcome::Body(
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse",
            "<rsp:SignalResponse/>".into(),
        ))
    }

    fn delete(&self, id: &Identity, env: &Envelope) -> OpResult {
        let shell_id = env
            .selector("ShellId")
            .ok_or(ShellError::InvalidSelectors)?;
        if !self.registry.delete(shell_id, &id.user) {
            return Err(ShellError::InvalidSelectors.into());
        }
        tracing::info!(user = %id.user, shell = %shell_id, "shell deleted");
        Ok(Outcome::Body(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse",
            String::new(),
        ))
    }

    fn get(&self, id: &Identity, env: &Envelope) -> OpResult {
        if env.resource_uri.eq_ignore_ascii_case(URI_CONFIG) {
            let kb = (self.cfg.max_envelope_size / 1024) as u64;
            return Ok(Outcome::Body(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse",
                response::config_response(kb),
            ));
        }
        let entry = self.shell_of(id, env)?;
        let info = self.info(&entry);
        Ok(Outcome::Body(
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse",
            response::shell_element(&info, Some("Connected")),
        ))
    }
}

/// `application/soap+xml` with no charset or charset UTF-8; anything else is refused.
pub fn check_content_type(ct: Option<&str>) -> Result<(), WsmanError> {
    let raw = ct.unwrap_or("");
    let mut parts = raw.split(';').map(str::trim);
    let mime = parts.next().unwrap_or("");
    if !mime.eq_ignore_ascii_case("application/soap+xml") {
        return Err(WsmanError::ContentType(raw.to_string()));
    }
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("charset") {
                let v = v.trim().trim_matches('"');
                if !v.eq_ignore_ascii_case("utf-8") && !v.eq_ignore_ascii_case("utf8") {
                    return Err(WsmanError::ContentType(raw.to_string()));
                }
            }
        }
    }
    Ok(())
}

/// Decode base64 text (whitespace allowed), refusing anything invalid.
pub fn decode_b64(text: &str) -> Result<Vec<u8>, WsmanError> {
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|e| WsmanError::Body(format!("invalid base64: {e}")))
}

/// Map a signal URI to the short code shells understand: `.../windows/shell/signal/ctrl_c` →
/// `ctrl_c`, `.../signal/Terminate` → `terminate`, PSRP's `powershell/signal/crtl_c` → `ps_crtl_c`.
pub fn signal_code(uri: &str) -> Option<String> {
    let lower = uri.to_ascii_lowercase();
    let last = lower
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())?
        .to_string();
    // pypsrp 0.9.1 sends the PSRP stop signal as the relative `powershell/signal/ctrl_c`.
    if lower.starts_with("http://schemas.microsoft.com/powershell/signal/")
        || lower.starts_with("powershell/signal/")
    {
        return Some(format!("ps_{last}"));
    }
    if lower.starts_with("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/") {
        return Some(last);
    }
    None
}

fn text_list(e: Option<&Element>) -> Vec<String> {
    e.map(|e| e.text.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Decode a Create request (`rsp:Shell`).
pub fn parse_create(env: &Envelope, server_max: usize) -> Result<CreateRequest, WsmanError> {
    let shell = env
        .body_element()
        .filter(|b| b.is(NS_SHELL, "Shell"))
        .ok_or_else(|| WsmanError::Body("the Create body has no rsp:Shell".into()))?;
    let shell_id = shell.attr("ShellId").map(str::to_string);
    if let Some(id) = &shell_id {
        if id.is_empty()
            || id.len() > 64
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(WsmanError::Body(format!("ShellId {id:?} is not a GUID")));
        }
    }
    let creation_xml = match shell.child(NS_POWERSHELL, "creationXml") {
        Some(c) => {
            let d = decode_b64(&c.text)?;
            if d.len() > MAX_CREATION_XML {
                return Err(WsmanError::Body("creationXml too large".into()));
            }
            Some(d)
        }
        None => None,
    };
    let environment = shell
        .child(NS_SHELL, "Environment")
        .map(|e| {
            e.children_named(NS_SHELL, "Variable")
                .map(|v| (v.attr("Name").unwrap_or("").to_string(), v.text.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(CreateRequest {
        resource_uri: env.resource_uri.clone(),
        shell_id,
        input_streams: text_list(shell.child(NS_SHELL, "InputStreams")),
        output_streams: text_list(shell.child(NS_SHELL, "OutputStreams")),
        creation_xml,
        environment,
        working_directory: shell
            .child(NS_SHELL, "WorkingDirectory")
            .map(|w| w.text.clone()),
        options: env.options.clone(),
        max_envelope_size: env
            .max_envelope_size
            .unwrap_or(DEFAULT_CLIENT_ENVELOPE)
            .clamp(8192, server_max.max(8192)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(check_content_type(Some("application/soap+xml;charset=UTF-8")).is_ok());
        assert!(check_content_type(Some("application/soap+xml")).is_ok());
        assert!(check_content_type(Some("Application/SOAP+XML; charset=\"utf-8\"")).is_ok());
        assert!(check_content_type(Some("application/soap+xml;charset=UTF-16")).is_err());
        assert!(check_content_type(Some("text/xml")).is_err());
        assert!(check_content_type(None).is_err());
    }

    #[test]
    fn signal_codes() {
        assert_eq!(
            signal_code("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/Terminate")
                .as_deref(),
            Some("terminate")
        );
        assert_eq!(
            signal_code("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/ctrl_c")
                .as_deref(),
            Some("ctrl_c")
        );
        assert_eq!(
            signal_code("http://schemas.microsoft.com/powershell/signal/crtl_c").as_deref(),
            Some("ps_crtl_c")
        );
        assert_eq!(
            signal_code("powershell/signal/ctrl_c").as_deref(),
            Some("ps_ctrl_c")
        );
        assert_eq!(signal_code("urn:x"), None);
    }

    #[test]
    fn base64() {
        assert_eq!(decode_b64(" aGk=\n").unwrap(), b"hi");
        assert!(decode_b64("a!b").is_err());
    }
}
