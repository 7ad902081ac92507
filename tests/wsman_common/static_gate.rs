//! Test doubles for the WS-Man layer tests: a fixed-account gate 2 (Basic against in-memory
//! plaintext passwords), its gates 3–4 (each account lists the endpoints it may open), and a
//! WinRS factory whose sessions have an empty capability and record nothing. `keyhole serve`
//! uses `keyhole::gates`; these never leave the tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use keyhole::capability::EffectiveCapability;
use keyhole::config::SessionType;
use keyhole::engine::{Audit, BoundArgs, EndState, HostEnv, Session, SessionOptions};
use keyhole::shells::runner::Workers;
use keyhole::shells::winrs::WinrsShell;
use keyhole::shells::ShellSetup;
use keyhole::wsman::shell::{
    Authenticate, CreateError, CreateRequest, Identity, NewShell, ShellFactory, ShellLimits,
};

/// One test account: name, password, groups, and the endpoints it may open (gates 3–4).
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub password: String,
    pub groups: Vec<String>,
    pub endpoints: Vec<String>,
}

/// An audit that records nothing.
pub struct NoAudit;
impl Audit for NoAudit {
    fn line(&mut self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn command(&mut self, _: &str, _: &BoundArgs) -> std::io::Result<()> {
        Ok(())
    }
    fn refused(&mut self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn output(&mut self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn end(&mut self, _: EndState) -> std::io::Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Basic auth over fixed accounts; sessions get `capability`.
pub struct StaticGatekeeper {
    pub users: Vec<TestUser>,
    pub capability: EffectiveCapability,
    pub max_shells: usize,
    pub idle_timeout: Duration,
    /// The endpoint WinRS shells land in; empty refuses them.
    pub winrs_endpoint: String,
}

impl StaticGatekeeper {
    /// One user allowed into `endpoints`.
    pub fn new(user: &str, password: &str, endpoints: &[&str]) -> StaticGatekeeper {
        StaticGatekeeper {
            users: Vec::new(),
            capability: EffectiveCapability::default(),
            max_shells: 30,
            idle_timeout: Duration::from_secs(1200),
            winrs_endpoint: "WinRS".into(),
        }
        .with_user(user, password, endpoints)
    }

    pub fn with_user(mut self, user: &str, password: &str, endpoints: &[&str]) -> Self {
        self.users.push(TestUser {
            name: user.into(),
            password: password.into(),
            groups: Vec::new(),
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// Gates 3–4 of the double: may `id` open `endpoint`?
    pub fn admits(&self, id: &Identity, endpoint: &str) -> bool {
        self.users
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case(&id.user))
            .is_some_and(|u| u.endpoints.iter().any(|e| e.eq_ignore_ascii_case(endpoint)))
    }

    pub fn limits(&self) -> ShellLimits {
        ShellLimits {
            max_shells: self.max_shells,
            idle_timeout: self.idle_timeout,
        }
    }

    /// A session on `endpoint` with the double's capability.
    pub fn session(&self, id: &Identity, endpoint: &str) -> Session {
        let host = HostEnv {
            run_as: "nobody".into(),
            command_timeout: Duration::from_secs(60),
            max_output_bytes: 16 * 1024 * 1024,
            endpoint: endpoint.into(),
            user: id.user.clone(),
            groups: id.groups.clone(),
        };
        Session::new(
            &self.capability,
            SessionOptions {
                session_type: SessionType::RestrictedRemoteServer,
                host,
                commands: keyhole::commands::source(),
            },
            Box::new(NoAudit),
        )
    }
}

/// `Basic base64(user:password)` → (user, password).
pub fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Authenticate for StaticGatekeeper {
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        _peer: SocketAddr,
        _cert: Option<[u8; 32]>,
    ) -> Option<Identity> {
        let (u, p) = parse_basic(authorization?)?;
        let user = self
            .users
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case(&u))?;
        (user.password == p).then(|| Identity {
            user: user.name.clone(),
            groups: user.groups.clone(),
        })
    }

    fn challenges(&self) -> Vec<String> {
        vec!["Basic realm=\"WSMAN\"".into()]
    }
}

/// Real WinRS shells over the double's sessions.
pub struct StaticWinrs {
    pub gate: Arc<StaticGatekeeper>,
    pub workers: Arc<Workers>,
}

impl ShellFactory for StaticWinrs {
    fn create(
        &self,
        id: &Identity,
        _peer: SocketAddr,
        _endpoint: Option<&str>,
        req: &CreateRequest,
    ) -> Result<NewShell, CreateError> {
        let endpoint = &self.gate.winrs_endpoint;
        if endpoint.is_empty() || !self.gate.admits(id, endpoint) {
            return Err(CreateError::Refused);
        }
        let shell = WinrsShell::new(
            self.gate.session(id, endpoint),
            ShellSetup::new(&id.user, self.workers.clone()),
            endpoint,
            req.max_envelope_size,
        );
        Ok(NewShell {
            shell: Box::new(shell),
            limits: self.gate.limits(),
            session: None,
        })
    }
}
