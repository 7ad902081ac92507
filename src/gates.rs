//! `gates`: the server's gates 2–4 over `auth`, `gateway` and `capability`, with transcripts and
//! the JSON audit log, on a configuration that reloads without dropping sessions. Every refusal
//! is the same to the client; the log and the audit log say which gate refused and why.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::audit::{
    AuditDecision, AuditEvent, AuditGate, AuditKind, AuditLog, Transcript, TranscriptHeader,
};
use crate::auth::{self, AuthResult, Authenticator};
use crate::capability;
use crate::config::LoadedConfig;
use crate::engine::{self, HostEnv, SessionOptions};
use crate::gateway;
use crate::server::{Gatekeeper, Identity, SessionGrant};

/// The `Authorization` value certificate-authenticating clients send (pypsrp, pywinrm).
pub const CERT_AUTH_HEADER: &[u8] =
    b"http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual";

/// Why a session could not be opened (for the log and `keyhole run`; never for a client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gate {gate} refused: {reason}")]
pub struct Denied {
    pub gate: u8,
    pub reason: String,
    pub rule_id: Option<u64>,
}

/// A session the gates let through, with what the server needs to run it.
pub struct Opened {
    pub session: engine::Session,
    pub endpoint: String,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub session_id: String,
    pub transcript: PathBuf,
}

/// Gates 2–4 and audit, shared by every connection.
pub struct Gates {
    cfg: RwLock<Arc<LoadedConfig>>,
    auth: Authenticator,
    audit: Option<AuditLog>,
}

impl Gates {
    /// Build from a validated configuration; opens the audit log when one is configured.
    pub fn new(cfg: LoadedConfig) -> std::io::Result<Gates> {
        let users_path = cfg.resolve(&cfg.server.users);
        let auth = Authenticator::new(&cfg.server.auth, &users_path, cfg.users.clone());
        let audit = if cfg.server.audit_log.is_empty() {
            None
        } else {
            let path = cfg.resolve(&cfg.server.audit_log);
            if let Some(dir) = path.parent() {
                create_private_dir(dir)?;
            }
            Some(AuditLog::open(&path)?)
        };
        Ok(Gates {
            cfg: RwLock::new(Arc::new(cfg)),
            auth,
            audit,
        })
    }

    /// Count authentication failures and lock-outs in `m` (the gates' own counters: phase B).
    pub fn attach_metrics(&self, m: Arc<crate::metrics::Metrics>) {
        self.auth.attach_metrics(m)
    }

    /// The configuration in force now (sessions keep the one they were opened with).
    pub fn config(&self) -> Arc<LoadedConfig> {
        match self.cfg.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swap in a new, already validated configuration. Open sessions are not touched.
    pub fn reload(&self, new: LoadedConfig) {
        self.auth.replace_config(&new.server.auth);
        self.auth.replace_users(new.users.clone());
        let mut g = match self.cfg.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(new);
    }

    /// Write one audit record (and never fail the caller: a broken audit log is logged).
    pub fn audit(&self, ev: AuditEvent) {
        if let Some(log) = &self.audit {
            log.record(&ev);
        }
    }

    fn deny(
        &self,
        kind: AuditKind,
        gate: AuditGate,
        user: &str,
        peer: Option<SocketAddr>,
        endpoint: Option<&str>,
        d: &Denied,
    ) {
        tracing::warn!(gate = d.gate, user, endpoint, rule = d.rule_id, reason = %d.reason, "refused");
        self.audit(AuditEvent {
            user: Some(user.to_string()),
            source: Some(
                peer.map(|p| p.ip().to_string())
                    .unwrap_or_else(|| "local".into()),
            ),
            gate: Some(gate),
            decision: Some(AuditDecision::Deny),
            reason: Some(d.reason.clone()),
            rule_id: d.rule_id,
            endpoint: endpoint.map(str::to_string),
            ..AuditEvent::new(kind)
        });
    }

    /// Gates 3 and 4 for `user` on `endpoint`, then a transcript; `peer` None is a local
    /// session (`keyhole run`, which skips gate 3 as it is the administrator's own tool).
    pub fn open(
        &self,
        user: &str,
        groups: &[String],
        endpoint: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Opened, Denied> {
        let cfg = self.config();
        if peer.is_some() {
            let mut names = vec![cfg.server.computer_name.clone()];
            names.extend(cfg.server.computer_aliases.iter().cloned());
            let d = gateway::evaluate(&cfg.rules, user, groups, &names, endpoint);
            if !d.allowed {
                let denied = Denied {
                    gate: 3,
                    reason: d.reason,
                    rule_id: None,
                };
                self.deny(
                    AuditKind::Authorization,
                    AuditGate::Gateway,
                    user,
                    peer,
                    Some(endpoint),
                    &denied,
                );
                return Err(denied);
            }
            self.audit(AuditEvent {
                user: Some(user.to_string()),
                source: peer.map(|p| p.ip().to_string()),
                gate: Some(AuditGate::Gateway),
                decision: Some(AuditDecision::Allow),
                rule_id: d.rule_id,
                reason: Some(d.reason),
                endpoint: Some(endpoint.to_string()),
                ..AuditEvent::new(AuditKind::Authorization)
            });
        }
        let gate4 = |reason: String| Denied {
            gate: 4,
            reason,
            rule_id: None,
        };
        let Some(ep) = cfg.endpoint(endpoint) else {
            let d = gate4(format!("no endpoint named {endpoint:?}"));
            self.deny(
                AuditKind::Authorization,
                AuditGate::Endpoint,
                user,
                peer,
                Some(endpoint),
                &d,
            );
            return Err(d);
        };
        let cap = match capability::effective_capability(&cfg, ep, user, groups) {
            Ok(c) => c,
            Err(r) => {
                let d = gate4(r.reason);
                self.deny(
                    AuditKind::Authorization,
                    AuditGate::Endpoint,
                    user,
                    peer,
                    Some(endpoint),
                    &d,
                );
                return Err(d);
            }
        };
        let session_id = uuid::Uuid::new_v4().to_string();
        let dir = if ep.config.transcript_directory.is_empty() {
            cfg.resolve(&cfg.server.transcript_directory)
        } else {
            cfg.resolve(&ep.config.transcript_directory)
        };
        let header = TranscriptHeader {
            user: user.to_string(),
            groups: groups.to_vec(),
            run_as: ep.config.run_as.clone(),
            endpoint: ep.config.name.clone(),
            client_address: peer.map(|p| p.ip().to_string()),
            start_time: chrono::Utc::now(),
            session_id: session_id.clone(),
        };
        let transcript = match Transcript::create(&dir, &header) {
            Ok(t) => t,
            Err(e) => {
                let d = gate4(format!(
                    "cannot write a transcript in {}: {e}; keyhole refuses to run unaudited — fix the directory's ownership or transcript_directory",
                    dir.display()
                ));
                self.deny(
                    AuditKind::Authorization,
                    AuditGate::Endpoint,
                    user,
                    peer,
                    Some(endpoint),
                    &d,
                );
                return Err(d);
            }
        };
        let transcript_path = transcript.path().to_path_buf();
        let limits = &cfg.server.limits;
        let host = HostEnv {
            run_as: ep.config.run_as.clone(),
            command_timeout: limits.command_timeout.0,
            max_output_bytes: limits.max_output_bytes.0,
            endpoint: ep.config.name.clone(),
            user: user.to_string(),
            groups: groups.to_vec(),
        };
        let session = engine::Session::new(
            &cap,
            SessionOptions {
                session_type: ep.config.session_type,
                host,
            },
            Box::new(transcript),
        );
        self.audit(AuditEvent {
            user: Some(user.to_string()),
            source: Some(
                peer.map(|p| p.ip().to_string())
                    .unwrap_or_else(|| "local".into()),
            ),
            gate: Some(AuditGate::Endpoint),
            decision: Some(AuditDecision::Allow),
            endpoint: Some(ep.config.name.clone()),
            session_id: Some(session_id.clone()),
            reason: Some(format!("roles: {}", cap.roles.join(", "))),
            ..AuditEvent::new(AuditKind::SessionStart)
        });
        Ok(Opened {
            session,
            endpoint: ep.config.name.clone(),
            idle_timeout: ep
                .config
                .idle_timeout
                .map(|d| d.0)
                .unwrap_or(limits.idle_timeout.0),
            max_sessions: ep
                .config
                .max_sessions_per_user
                .map(|p| p.0)
                .unwrap_or(limits.max_sessions_per_user.0) as usize,
            session_id,
            transcript: transcript_path,
        })
    }
}

/// Writes the audit log's session-end record when the shell built on a grant goes away.
struct SessionEnd {
    gates: std::sync::Weak<Gates>,
    user: String,
    endpoint: String,
    session_id: String,
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        if let Some(g) = self.gates.upgrade() {
            g.audit(AuditEvent {
                user: Some(self.user.clone()),
                endpoint: Some(self.endpoint.clone()),
                session_id: Some(self.session_id.clone()),
                ..AuditEvent::new(AuditKind::SessionEnd)
            });
        }
    }
}

/// The server's view of the gates.
pub struct ServerGates(pub Arc<Gates>);

impl Gatekeeper for ServerGates {
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: SocketAddr,
        client_cert_sha256: Option<[u8; 32]>,
    ) -> Option<Identity> {
        let g = &self.0;
        let result = match (authorization, client_cert_sha256) {
            (Some(h), Some(fp)) if h == CERT_AUTH_HEADER => {
                g.auth.verify_certificate_fingerprint(&fp)
            }
            (None, Some(fp)) => g.auth.verify_certificate_fingerprint(&fp),
            (Some(h), _) => match auth::parse_basic_header(h) {
                Some((user, pw)) => g.auth.verify_basic(&user, &pw, peer.ip()),
                None => {
                    let d = Denied {
                        gate: 2,
                        reason: "no usable Authorization header (Basic or a client certificate)"
                            .into(),
                        rule_id: None,
                    };
                    g.deny(
                        AuditKind::Authentication,
                        AuditGate::Authentication,
                        "",
                        Some(peer),
                        None,
                        &d,
                    );
                    return None;
                }
            },
            (None, None) => return None,
        };
        match result {
            AuthResult::Ok(id) => {
                // Only Create opens a session (gates 3–4); every other operation from a user who
                // passed gate 2 would otherwise answer with a WS-Man fault and so reveal that the
                // password was right. A user no rule admits on this computer is refused here.
                let cfg = g.config();
                let mut names = vec![cfg.server.computer_name.clone()];
                names.extend(cfg.server.computer_aliases.iter().cloned());
                let admitted = names
                    .iter()
                    .any(|c| gateway::test_rule(&cfg.rules, &id.user, &id.groups, c, None).allowed);
                if !admitted {
                    let d = Denied {
                        gate: 3,
                        reason: format!("no authorization rule admits {} on this computer for any configuration", id.user),
                        rule_id: None,
                    };
                    g.deny(
                        AuditKind::Authorization,
                        AuditGate::Gateway,
                        &id.user,
                        Some(peer),
                        None,
                        &d,
                    );
                    return None;
                }
                g.audit(AuditEvent {
                    user: Some(id.user.clone()),
                    source: Some(peer.ip().to_string()),
                    gate: Some(AuditGate::Authentication),
                    decision: Some(AuditDecision::Allow),
                    reason: Some(format!("{:?}", id.method)),
                    ..AuditEvent::new(AuditKind::Authentication)
                });
                Some(Identity {
                    user: id.user,
                    groups: id.groups,
                })
            }
            AuthResult::Denied(reason) => {
                let user = authorization
                    .and_then(auth::parse_basic_header)
                    .map(|(u, _)| u)
                    .unwrap_or_default();
                let d = Denied {
                    gate: 2,
                    reason: reason.to_string(),
                    rule_id: None,
                };
                g.deny(
                    AuditKind::Authentication,
                    AuditGate::Authentication,
                    &user,
                    Some(peer),
                    None,
                    &d,
                );
                None
            }
        }
    }

    fn open_session(
        &self,
        id: &Identity,
        endpoint: &str,
        peer: SocketAddr,
    ) -> Option<SessionGrant> {
        let opened = self
            .0
            .open(&id.user, &id.groups, endpoint, Some(peer))
            .ok()?;
        let cfg = self.0.config();
        let guard = SessionEnd {
            gates: Arc::downgrade(&self.0),
            user: id.user.clone(),
            endpoint: opened.endpoint.clone(),
            session_id: opened.session_id.clone(),
        };
        Some(SessionGrant {
            session: opened.session,
            endpoint: opened.endpoint,
            max_shells: cfg.server.limits.max_shells_per_user.0 as usize,
            idle_timeout: opened.idle_timeout,
            guard: Some(Box::new(guard)),
        })
    }

    fn challenges(&self) -> Vec<String> {
        let cfg = self.0.config();
        auth::www_authenticate_headers(&cfg.server.auth, !cfg.server.listener.client_ca.is_empty())
    }
}

/// Create a directory (and parents) with mode 0700 if missing.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
