//! WS-Man operations after authentication: decode the envelope, dispatch by Action and
//! ResourceURI to the shell registry, and answer with a response or exactly one fault.
//! HTTP-agnostic: the listener (`http`) feeds it authenticated request bodies; the shell
//! factories it dispatches Create to are registered by the composition root.
//!
//! Every piece of CPU work of a request — parsing the envelope, the shell's `command`, `send`
//! (PSRP fragments and CLIXML), `receive` (encoding), `signal`, close — runs on the
//! [`RequestPool`] (fair between users), never on the async threads that accept connections
//! and answer 401s. Only waiting happens here: for the pool, for a factory's session (on
//! tokio's blocking threads: it writes and fsyncs the transcript), for a Receive's output.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::envelope::*;
use super::fault::{Fault, WsmanError};
use super::registry::{Registry, ShellEntry, ShellOwner};
use super::response::{self, ShellInfo};
use super::shell::{
    CommandRequest, CreateError, CreateRequest, Identity, NewShell, ReceiveResponse, ShellError,
    ShellFactory, Signal, StreamName,
};
use super::work::RequestPool;
use super::xml::Element;

/// Default MaxEnvelopeSize when the client sends none (pypsrp's and WinRM's default).
pub const DEFAULT_CLIENT_ENVELOPE: usize = 153_600;
/// Most bytes of stdin one command keeps.
pub const MAX_CREATION_XML: usize = 1024 * 1024;

/// What the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Shown as `Machine` in faults.
    pub computer_name: String,
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

/// Which resource URIs a factory serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Serves {
    /// Exactly this URI (WinRS's cmd shell); the factory knows its endpoint.
    Exact(String),
    /// URIs starting with this prefix; the rest is the endpoint (PSRP's configuration name).
    Prefix(String),
}

/// The WS-Man service.
pub struct WsmanService {
    pub cfg: ServiceConfig,
    core: Arc<Core>,
    registry: Arc<Registry>,
    factories: Vec<(Serves, Arc<dyn ShellFactory>)>,
    pool: Arc<RequestPool>,
}

/// What the operations that run on the pool need (shared with their jobs).
struct Core {
    cfg: ServiceConfig,
    registry: Arc<Registry>,
}

enum Outcome {
    Body(&'static str, String),
    Unauthorized,
}

type OpResult = Result<Outcome, WsmanError>;

impl WsmanService {
    /// A service with no shell factory: register them with [`WsmanService::register_exact`]
    /// and [`WsmanService::register_prefix`] (until then Create answers DestinationUnreachable).
    pub fn new(cfg: ServiceConfig) -> WsmanService {
        WsmanService::with_pool(cfg, RequestPool::new(RequestPool::default_threads()))
    }

    /// As [`WsmanService::new`], with the pool requests run on.
    pub fn with_pool(cfg: ServiceConfig, pool: Arc<RequestPool>) -> WsmanService {
        let registry = Arc::new(Registry::new());
        WsmanService {
            core: Arc::new(Core {
                cfg: cfg.clone(),
                registry: registry.clone(),
            }),
            cfg,
            registry,
            factories: Vec::new(),
            pool,
        }
    }

    /// The pool this service's requests run on.
    pub fn pool(&self) -> Arc<RequestPool> {
        self.pool.clone()
    }

    /// Run `f` with the operations' state on the pool, in `user`'s turn.
    async fn on_pool<R: Send + 'static>(
        &self,
        user: &str,
        f: impl FnOnce(&Core) -> R + Send + 'static,
    ) -> Result<R, WsmanError> {
        let core = self.core.clone();
        self.pool
            .run(user, move || f(&core))
            .await
            .map_err(|e| WsmanError::Internal(e.to_string()))
    }

    /// Serve the resource URI `uri` (case-insensitive) with `factory`; it gets no endpoint
    /// name. A later registration of the same URI replaces the earlier one.
    pub fn register_exact(&mut self, uri: &str, factory: Arc<dyn ShellFactory>) {
        self.register(Serves::Exact(uri.to_string()), factory);
    }

    /// Serve resource URIs starting with `prefix` (case-insensitive, e.g.
    /// `http://schemas.microsoft.com/powershell/`) with `factory`; the rest of the URI is the
    /// endpoint name it gets. A later registration of the same prefix replaces the earlier one.
    pub fn register_prefix(&mut self, prefix: &str, factory: Arc<dyn ShellFactory>) {
        self.register(Serves::Prefix(prefix.to_string()), factory);
    }

    fn register(&mut self, serves: Serves, factory: Arc<dyn ShellFactory>) {
        let same = |a: &Serves, b: &Serves| match (a, b) {
            (Serves::Exact(x), Serves::Exact(y)) | (Serves::Prefix(x), Serves::Prefix(y)) => {
                x.eq_ignore_ascii_case(y)
            }
            _ => false,
        };
        self.factories.retain(|(s, _)| !same(s, &serves));
        self.factories.push((serves, factory));
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
        body: Vec<u8>,
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
        let message = super::fault::client_message(e);
        Fault::from_error(e).to_xml_with(relates, &self.cfg.computer_name, message.as_deref())
    }

    async fn handle_inner(
        &self,
        id: &Identity,
        peer: SocketAddr,
        content_type: Option<&str>,
        body: Vec<u8>,
        address: &str,
        relates: &mut Option<String>,
    ) -> OpResult {
        check_content_type(content_type)?;
        if body.len() > self.cfg.max_envelope_size {
            return Err(WsmanError::TooLarge(self.cfg.max_envelope_size));
        }
        let env = self
            .on_pool(&id.user, move |_| Envelope::parse(&body))
            .await??;
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
        let action = env.action.clone();
        if action == ACTION_CREATE {
            return self.create(id, peer, env, address).await;
        }
        if action == ACTION_RECEIVE {
            return self.receive(id, env).await;
        }
        let who = id.clone();
        self.on_pool(&id.user, move |core| match action.as_str() {
            ACTION_COMMAND => core.command(&who, &env),
            ACTION_SEND => core.send(&who, &env),
            ACTION_SIGNAL => core.signal(&who, &env),
            ACTION_DELETE => core.delete(&who, &env),
            ACTION_GET => core.get(&who, &env),
            other => Err(WsmanError::UnknownAction(other.to_string())),
        })
        .await?
    }

    async fn receive(&self, id: &Identity, env: Envelope) -> OpResult {
        let entry = self.core.shell_of(id, &env)?;
        let _g = entry.use_guard();
        let recv = env
            .body_element()
            .filter(|b| b.is(NS_SHELL, "Receive"))
            .ok_or_else(|| WsmanError::Body("the Receive body has no rsp:Receive".into()))?;
        let desired = recv.child(NS_SHELL, "DesiredStream");
        let command_id = desired
            .and_then(|d| d.attr("CommandId"))
            .map(str::to_string);
        let wanted: Option<Vec<StreamName>> = match desired {
            Some(d) => Some(
                StreamName::parse_list(&d.text)
                    .map_err(|n| WsmanError::Body(format!("unknown output stream {n:?}")))?,
            ),
            None => None,
        }
        .filter(|v| !v.is_empty());
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
            // Deleted, expired or shut down while waiting: answer now, as Windows does (995,
            // ERROR_OPERATION_ABORTED; a later request on the shell gets InvalidSelectors).
            if entry.is_closed() {
                return Err(ShellError::Aborted.into());
            }
            let (e, cid, w) = (entry.clone(), command_id.clone(), wanted.clone());
            // Taking output and encoding it (PSRP fragments, base64) is work: on the pool.
            let body = self
                .on_pool(&id.user, move |_| -> Result<Option<String>, WsmanError> {
                    let mut r: ReceiveResponse = match e.shell().receive(cid.as_deref()) {
                        Ok(r) => r,
                        // Closed between the check above and the shell's answer: the same 995.
                        Err(_) if e.is_closed() => return Err(ShellError::Aborted.into()),
                        Err(err) => return Err(err.into()),
                    };
                    if let Some(w) = &w {
                        r.streams.retain(|c| w.contains(&c.name));
                    }
                    if !r.streams.is_empty() || r.command_state.is_some() {
                        Ok(Some(response::receive_response(&r)))
                    } else {
                        Ok(None)
                    }
                })
                .await??;
            if let Some(body) = body {
                return Ok(Outcome::Body(
                    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse",
                    body,
                ));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Err(WsmanError::TimedOut),
            }
        }
    }

    /// The factory for `uri` and the endpoint name it gets: an exact registration first, then
    /// the longest prefix with something after it.
    fn factory_for(&self, uri: &str) -> Option<(Option<String>, Arc<dyn ShellFactory>)> {
        let exact = self.factories.iter().find_map(|(s, f)| match s {
            Serves::Exact(u) if u.eq_ignore_ascii_case(uri) => Some((None, f.clone())),
            _ => None,
        });
        if exact.is_some() {
            return exact;
        }
        self.factories
            .iter()
            .filter_map(|(s, f)| match s {
                Serves::Prefix(p)
                    if uri.len() > p.len()
                        && uri
                            .get(..p.len())
                            .is_some_and(|h| h.eq_ignore_ascii_case(p)) =>
                {
                    Some((p.len(), f))
                }
                _ => None,
            })
            .max_by_key(|(n, _)| *n)
            .map(|(n, f)| (Some(uri.get(n..).unwrap_or("").to_string()), f.clone()))
    }

    async fn create(
        &self,
        id: &Identity,
        peer: SocketAddr,
        env: Envelope,
        address: &str,
    ) -> OpResult {
        let uri = env.resource_uri.clone();
        let (endpoint, factory) = self
            .factory_for(&uri)
            .ok_or_else(|| WsmanError::UnknownResource(uri.clone()))?;
        let server_max = self.cfg.max_envelope_size;
        let req = self
            .on_pool(&id.user, move |_| parse_create(&env, server_max))
            .await??;
        let ident = id.clone();
        let req2 = req.clone();
        // Opening the session writes and fsyncs its transcript: tokio's blocking threads.
        let made = tokio::task::spawn_blocking(move || {
            factory.create(&ident, peer, endpoint.as_deref(), &req2)
        })
        .await
        .map_err(|e| WsmanError::Internal(format!("shell factory task failed: {e}")))?;
        let new = match made {
            Ok(n) => n,
            Err(CreateError::Refused) => return Ok(Outcome::Unauthorized),
            Err(CreateError::Shell(e)) => return Err(e.into()),
        };
        let who = id.clone();
        let address = address.to_string();
        self.on_pool(&id.user, move |core| {
            core.install(&who, peer, uri, req, new, &address)
        })
        .await?
    }
}

impl Core {
    fn shell_of(&self, id: &Identity, env: &Envelope) -> Result<Arc<ShellEntry>, WsmanError> {
        let shell_id = env
            .selector("ShellId")
            .ok_or(ShellError::InvalidSelectors)?;
        self.registry
            .get(shell_id, &id.user)
            .ok_or_else(|| self.no_such_shell(shell_id, id))
    }

    /// The fault for a ShellId that names no open shell of this user: InvalidSelectors, saying
    /// why when the server closed that shell of theirs (idle timeout).
    fn no_such_shell(&self, shell_id: &str, id: &Identity) -> WsmanError {
        match self.registry.closed_reason(shell_id, &id.user) {
            Some(why) => ShellError::Gone(why).into(),
            None => ShellError::InvalidSelectors.into(),
        }
    }

    /// The rest of a Create once the factory opened the session: the shell's own start (PSRP:
    /// the pool's negotiation in creationXml), the quota, the registry.
    fn install(
        &self,
        id: &Identity,
        peer: SocketAddr,
        uri: String,
        req: CreateRequest,
        new: NewShell,
        address: &str,
    ) -> OpResult {
        let NewShell { mut shell, limits } = new;
        let owner = ShellOwner {
            user: id.user.clone(),
            client: peer.ip().to_string(),
        };
        // Cheap early refusal; the registry re-checks atomically on insert.
        if self.registry.count_for(&id.user) >= limits.max_shells {
            shell.close();
            return Err(WsmanError::ShellQuota(format!(
                "user {} has {} shells open",
                id.user, limits.max_shells
            )));
        }
        if let Err(e) = shell.on_create(&req) {
            shell.close();
            return Err(e.into());
        }
        let shell_id = req
            .shell_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_uppercase());
        let inputs = if req.input_streams.is_empty() {
            vec![StreamName::Stdin]
        } else {
            req.input_streams.clone()
        };
        let outputs = if req.output_streams.is_empty() {
            vec![StreamName::Stdout, StreamName::Stderr]
        } else {
            req.output_streams.clone()
        };
        let mut entry = ShellEntry::new(
            shell_id.clone(),
            owner,
            uri.clone(),
            (inputs, outputs),
            limits,
            shell,
        );
        entry.environment = req.environment.clone();
        let entry = match self.registry.insert(entry, limits.max_shells) {
            Ok(e) => e,
            Err((err, entry)) => {
                entry.shell().close();
                return Err(err.into());
            }
        };
        tracing::info!(user = %id.user, shell = %shell_id, resource = %uri, "shell created");
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
            let raw = s.attr("Name").unwrap_or("stdin");
            let name = StreamName::parse(raw)
                .ok_or_else(|| WsmanError::Body(format!("unknown input stream {raw:?}")))?;
            entry.shell().send(s.attr("CommandId"), name, data, end)?;
        }
        Ok(Outcome::Body(
            "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SendResponse",
            "<rsp:SendResponse/>".into(),
        ))
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
        let signal = Signal::from_uri(&code_uri)
            .ok_or_else(|| WsmanError::Body(format!("unknown signal code {code_uri:?}")))?;
        entry.shell().signal(sig.attr("CommandId"), signal)?;
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
            return Err(self.no_such_shell(shell_id, id));
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

/// Largest Identify request answered without credentials (Test-WSMan's is about 400 bytes).
pub const MAX_ANONYMOUS_IDENTIFY: usize = 4096;

/// The reply to a request that came without credentials, when it is exactly DSP0226's Identify
/// (SPEC §1: the one request answered without authentication, with WinRM's reduced reply);
/// None for anything else, which gets the generic 401. Cheap: at most
/// [`MAX_ANONYMOUS_IDENTIFY`] bytes through the bounded parser.
pub fn anonymous_identify(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    if body.len() > MAX_ANONYMOUS_IDENTIFY || check_content_type(content_type).is_err() {
        return None;
    }
    let root = super::xml::parse(body).ok()?;
    is_bare_identify(&root).then(response::anonymous_identify_envelope)
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

fn stream_list(e: Option<&Element>, what: &str) -> Result<Vec<StreamName>, WsmanError> {
    match e {
        Some(e) => StreamName::parse_list(&e.text)
            .map_err(|n| WsmanError::Body(format!("{what}: keyhole serves no stream {n:?}"))),
        None => Ok(Vec::new()),
    }
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
        input_streams: stream_list(shell.child(NS_SHELL, "InputStreams"), "InputStreams")?,
        output_streams: stream_list(shell.child(NS_SHELL, "OutputStreams"), "OutputStreams")?,
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
    fn only_the_bare_identify_is_answered_anonymously() {
        const CT: Option<&str> = Some("application/soap+xml;charset=UTF-8");
        let ok = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"#;
        let reply = anonymous_identify(CT, ok).unwrap();
        assert!(reply.contains("<s:Header/>"), "{reply}");
        assert!(reply.contains("OS: 0.0.0 SP: 0.0 Stack: 3.0"), "{reply}");
        assert!(!reply.contains("Linux") && !reply.contains(env!("CARGO_PKG_VERSION")));
        let spaced = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">
  <s:Header> </s:Header>
  <s:Body><wsmid:Identify xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"></wsmid:Identify></s:Body>
</s:Envelope>"#;
        assert!(anonymous_identify(CT, spaced).is_some());
        let with_action = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"><s:Header><a:Action>x</a:Action></s:Header><s:Body><wsmid:Identify/></s:Body></s:Envelope>"#;
        let no_header = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"><s:Body><wsmid:Identify/></s:Body></s:Envelope>"#;
        let extra = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"><s:Header/><s:Body><wsmid:Identify/><wsmid:Identify/></s:Body></s:Envelope>"#;
        let inner = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"><s:Header/><s:Body><wsmid:Identify><x/></wsmid:Identify></s:Body></s:Envelope>"#;
        for bad in [&with_action[..], no_header, extra, inner, b"<a/>", b""] {
            assert!(
                anonymous_identify(CT, bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(anonymous_identify(Some("text/xml"), ok).is_none());
        let mut big = ok.to_vec();
        big.extend(std::iter::repeat(b' ').take(MAX_ANONYMOUS_IDENTIFY));
        assert!(anonymous_identify(CT, &big).is_none());
    }

    #[test]
    fn base64() {
        assert_eq!(decode_b64(" aGk=\n").unwrap(), b"hi");
        assert!(decode_b64("a!b").is_err());
    }
}
