//! A fixed-account [`Gatekeeper`] for the in-process server tests: Basic auth
//! against in-memory passwords and an empty effective capability. `keyhole serve` never uses it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::capability::EffectiveCapability;
use crate::config::SessionType;
use crate::engine::{HostEnv, NoAudit, Session, SessionOptions};
use crate::server::{Gatekeeper, Identity, SessionGrant};

/// One test account: name, password, groups, and the endpoints it may open (gates 3–4).
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub password: String,
    pub groups: Vec<String>,
    pub endpoints: Vec<String>,
}

/// Basic auth over fixed accounts; sessions get `capability`.
pub struct StaticGatekeeper {
    pub users: Vec<TestUser>,
    pub capability: EffectiveCapability,
    pub max_shells: usize,
    pub idle_timeout: Duration,
}

impl StaticGatekeeper {
    /// One user allowed into `endpoints`.
    pub fn new(user: &str, password: &str, endpoints: &[&str]) -> StaticGatekeeper {
        StaticGatekeeper {
            users: vec![TestUser {
                name: user.into(),
                password: password.into(),
                groups: Vec::new(),
                endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            }],
            capability: EffectiveCapability::default(),
            max_shells: 30,
            idle_timeout: Duration::from_secs(1200),
        }
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

impl Gatekeeper for StaticGatekeeper {
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
        if bool::from(user.password.as_bytes().ct_eq(p.as_bytes())) {
            Some(Identity {
                user: user.name.clone(),
                groups: user.groups.clone(),
            })
        } else {
            None
        }
    }

    fn open_session(
        &self,
        id: &Identity,
        endpoint: &str,
        _peer: SocketAddr,
    ) -> Option<SessionGrant> {
        let user = self
            .users
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case(&id.user))?;
        if !user
            .endpoints
            .iter()
            .any(|e| e.eq_ignore_ascii_case(endpoint))
        {
            return None;
        }
        let host = HostEnv {
            run_as: "nobody".into(),
            command_timeout: Duration::from_secs(60),
            max_output_bytes: 16 * 1024 * 1024,
            endpoint: endpoint.into(),
            user: id.user.clone(),
            groups: id.groups.clone(),
        };
        let session = Session::new(
            &self.capability,
            SessionOptions {
                session_type: SessionType::RestrictedRemoteServer,
                host,
                commands: crate::commands::source(),
            },
            Box::new(NoAudit),
        );
        Some(SessionGrant {
            session,
            endpoint: endpoint.into(),
            max_shells: self.max_shells,
            idle_timeout: self.idle_timeout,
            guard: None,
        })
    }

    fn challenges(&self) -> Vec<String> {
        vec!["Basic realm=\"WSMAN\"".into()]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn basic_header() {
        assert_eq!(
            parse_basic(b"Basic YWxpY2U6cGE6c3M="),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(parse_basic(b"Negotiate abc"), None);
        assert_eq!(parse_basic(b"Basic !!"), None);
    }
}
