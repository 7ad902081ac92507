//! `gates`: the ONLY place a session is opened — for WinRS, PSRP, `keyhole run` and the web
//! console. Gates 2–4 over `auth`, `rules` and `capability`; the per-user session
//! count; the transcript; the JSON audit log (authentication, authorization decisions, session
//! start and end, refusals with gate and reason); all on a configuration that reloads without
//! dropping sessions. Every refusal is the same to a remote client; the log and the audit log
//! say which gate refused and why ([`Denied`]'s text, which `keyhole run` prints too).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::audit::{
    AuditDecision, AuditEvent, AuditGate, AuditKind, AuditLog, Transcript, TranscriptHeader,
};
use crate::auth::negotiate::NegotiateSettings;
use crate::auth::{self, AuthResult, Authenticator};
use crate::capability;
use crate::config::LoadedConfig;
use crate::engine::{self, HostEnv, SessionOptions};
use crate::rules;
use crate::wsman::shell::{
    Authenticate, Connection, Identity, RequestBody, ResponseBody, ShellLimits, Verdict,
};

mod negotiate;

/// The `Authorization` value certificate-authenticating clients send (pypsrp, pywinrm).
pub const CERT_AUTH_HEADER: &[u8] =
    b"http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual";

/// Why a session could not be opened (for the log, the audit log and `keyhole run`; never for a
/// remote client, who gets the generic 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access denied at gate {gate}: {reason}")]
pub struct Denied {
    pub gate: u8,
    pub reason: String,
    pub rule_id: Option<u64>,
}

/// Why [`Gates::open`] opened nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A gate refused (remote clients: the generic 401).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The user already has `limit` sessions of this kind open (remote clients: a QuotaLimit
    /// fault, as Windows answers MaxShellsPerUser).
    #[error("user {user} already has {open} open sessions (max_sessions_per_user = {limit})")]
    SessionLimit {
        user: String,
        open: usize,
        limit: usize,
    },
}

/// Where a session comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A network client: all gates apply.
    Remote(SocketAddr),
    /// `keyhole run` on this machine: gate 3 (authorization rules, which match remote users by
    /// computer name) is skipped, as it is the administrator's own tool; gate 4, the
    /// transcript and the audit log apply as for any session.
    Local,
}

impl Origin {
    fn peer(self) -> Option<SocketAddr> {
        match self {
            Origin::Remote(p) => Some(p),
            Origin::Local => None,
        }
    }
    fn source(self) -> String {
        match self {
            Origin::Remote(p) => p.ip().to_string(),
            Origin::Local => "local".into(),
        }
    }
}

/// What kind of session; decides which per-user count it takes a slot of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionKind {
    /// A WinRS cmd shell (counted by the shell registry's `max_shells_per_user` only).
    Winrs,
    /// A PSRP runspace pool: counted against the endpoint's `max_sessions_per_user` (else
    /// `[limits]`), across all of the user's pools.
    Psrp,
    /// `keyhole run`: not counted.
    Run,
    /// A web console session: counted against `[console] max_sessions_per_user`, across all of
    /// the user's console sessions; its idle time-out is `[console] idle_timeout`.
    Console,
}

impl SessionKind {
    /// The transport as transcripts and the audit log name it.
    pub fn transport(self) -> &'static str {
        match self {
            SessionKind::Winrs => "winrs",
            SessionKind::Psrp => "psrp",
            SessionKind::Run => "local",
            SessionKind::Console => "console",
        }
    }
}

/// Limits a granted session runs with (from the configuration in force when it opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `[limits] max_shells_per_user` and the endpoint's (or `[limits]`) `idle_timeout`.
    pub shell: ShellLimits,
    /// `[limits] command_timeout`: the deadline of one pipeline.
    pub command_timeout: Duration,
    /// `[limits] max_buffered_output_bytes`: output of all of the user's sessions not yet
    /// received (the shells share one budget per user).
    pub max_buffered_output_bytes: usize,
}

/// A session the gates let through: the engine session, its limits, and its guard.
pub struct Grant {
    pub session: engine::Session,
    /// The endpoint's name as configured.
    pub endpoint: String,
    pub session_id: String,
    pub limits: SessionLimits,
    /// Keep it as long as the session lives (see [`SessionGuard`]).
    pub guard: SessionGuard,
}

/// Ends a granted session when dropped: releases its per-user slot and writes the audit log's
/// "session end" record.
pub struct SessionGuard {
    gates: Weak<Gates>,
    user: String,
    endpoint: String,
    session_id: String,
    source: String,
    kind: SessionKind,
    /// The per-user count this session holds a slot of (kind, lower-case user name).
    slot: Option<(SessionKind, String)>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(g) = self.gates.upgrade() else {
            return;
        };
        if let Some(key) = &self.slot {
            g.release_slot(key);
        }
        g.audit(AuditEvent {
            user: Some(self.user.clone()),
            source: Some(self.source.clone()),
            endpoint: Some(self.endpoint.clone()),
            session_id: Some(self.session_id.clone()),
            transport: Some(self.kind.transport().to_string()),
            ..AuditEvent::new(AuditKind::SessionEnd)
        });
    }
}

/// Most command tables kept per configuration generation (distinct endpoint × role sets);
/// beyond it a session builds its own.
const MAX_SHARED_TABLES: usize = 4096;

/// The command tables of one configuration generation, shared by the sessions with the same
/// endpoint and applicable roles (hence the same effective capability). A reload starts a new
/// generation; sessions opened before keep the tables they hold.
#[derive(Default)]
struct Tables {
    /// The configuration these tables were built from (a `Weak` keeps its address unique).
    cfg: Weak<LoadedConfig>,
    /// (lower-case endpoint name, applicable role capability names in order) → table.
    map: HashMap<(String, Vec<String>), engine::SharedTable>,
}

/// The configuration in force and what is derived from it once: gate 3's rule index and the
/// names this computer answers to.
struct Current {
    cfg: Arc<LoadedConfig>,
    rules: rules::RuleIndex,
    /// `computer_name`, then its aliases.
    names: Vec<String>,
}

impl Current {
    fn new(cfg: LoadedConfig) -> Current {
        let rules = rules::RuleIndex::new(&cfg.rules);
        let mut names = vec![cfg.server.computer_name.clone()];
        names.extend(cfg.server.computer_aliases.iter().cloned());
        Current {
            cfg: Arc::new(cfg),
            rules,
            names,
        }
    }
}

/// Gates 2–4 and audit, shared by every connection.
pub struct Gates {
    cfg: RwLock<Arc<Current>>,
    tables: Mutex<Tables>,
    /// Gate 2; None for [`Gates::local`] (`keyhole run` authenticates nobody).
    auth: Option<Authenticator>,
    audit: Option<AuditLog>,
    /// Open sessions per kind and user (lower-case name), of the kinds that count
    /// ([`SessionKind::Psrp`], [`SessionKind::Console`]).
    sessions: Mutex<HashMap<(SessionKind, String), usize>>,
    /// Negotiate's settings (`[auth] negotiate`: the keytab's acceptor credentials, realms,
    /// NTLM), built once per configuration; None when it is off.
    negotiate: RwLock<Option<Arc<NegotiateSettings>>>,
}

impl Gates {
    /// The server's gates, from a validated configuration; opens the audit log when one is
    /// configured, and acquires the Kerberos acceptor credentials when Negotiate is on (an
    /// error keeps `serve` from starting).
    pub fn new(cfg: LoadedConfig) -> std::io::Result<Gates> {
        let users_path = cfg.resolve(&cfg.server.users);
        let auth = Authenticator::new(&cfg.server.auth, &users_path, cfg.users.clone());
        let settings = negotiate::settings_for(&cfg).map_err(std::io::Error::other)?;
        let gates = Gates::build(cfg, Some(auth))?;
        *gates.negotiate.write().unwrap_or_else(|e| e.into_inner()) = settings;
        Ok(gates)
    }

    /// Gates for `keyhole run` on this machine: sessions open with [`Origin::Local`] only; gate 2
    /// refuses everyone (no authenticator is built).
    pub fn local(cfg: LoadedConfig) -> std::io::Result<Gates> {
        Gates::build(cfg, None)
    }

    fn build(cfg: LoadedConfig, auth: Option<Authenticator>) -> std::io::Result<Gates> {
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
            cfg: RwLock::new(Arc::new(Current::new(cfg))),
            tables: Mutex::new(Tables::default()),
            auth,
            audit,
            sessions: Mutex::new(HashMap::new()),
            negotiate: RwLock::new(None),
        })
    }

    /// Count authentication failures and lock-outs in `m` (the gates' own counters: phase B).
    pub fn attach_metrics(&self, m: Arc<crate::metrics::Metrics>) {
        if let Some(a) = &self.auth {
            a.attach_metrics(m)
        }
    }

    /// The configuration in force now (sessions keep the one they were opened with).
    pub fn config(&self) -> Arc<LoadedConfig> {
        self.current().cfg.clone()
    }

    /// The configuration in force with its rule index (taken together: a reload swaps both).
    fn current(&self) -> Arc<Current> {
        match self.cfg.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swap in a new, already validated configuration. Open sessions are not touched. Fails,
    /// keeping everything as it was, when Negotiate's settings cannot be built for it (the
    /// keytab became unusable between the check and now).
    pub fn reload(&self, new: LoadedConfig) -> Result<(), String> {
        let settings = if self.auth.is_some() {
            negotiate::settings_for(&new)?
        } else {
            None
        };
        if let Some(auth) = &self.auth {
            auth.replace_config(&new.server.auth);
            auth.replace_users(new.users.clone());
        }
        let next = Arc::new(Current::new(new)); // the rule index is built before the lock
        let mut g = match self.cfg.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = next;
        drop(g);
        *self.negotiate.write().unwrap_or_else(|e| e.into_inner()) = settings;
        Ok(())
    }

    /// Negotiate's settings now (None: `[auth] negotiate` is off).
    fn negotiate_settings(&self) -> Option<Arc<NegotiateSettings>> {
        self.negotiate
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        origin: Origin,
        endpoint: Option<&str>,
        d: &Denied,
    ) {
        tracing::warn!(user, endpoint, rule = d.rule_id, source = %origin.source(), "{d}");
        self.audit(AuditEvent {
            user: Some(user.to_string()),
            source: Some(origin.source()),
            gate: Some(gate),
            decision: Some(AuditDecision::Deny),
            reason: Some(d.reason.clone()),
            rule_id: d.rule_id,
            endpoint: endpoint.map(str::to_string),
            ..AuditEvent::new(kind)
        });
    }

    /// The command table for `caps` (the roles that apply) on `ep`: built once per configuration
    /// generation and shared, or built for this session alone when `cfg` is no longer the one
    /// in force (a reload came in between) or the cache is full.
    fn table(
        &self,
        cfg: &Arc<LoadedConfig>,
        ep: &crate::config::LoadedEndpoint,
        caps: &[&crate::config::LoadedCapability],
        roles: &[String],
    ) -> engine::SharedTable {
        let build = || {
            let cap = capability::merge(cfg, ep, caps);
            engine::SharedTable::build(
                &cap,
                ep.config.session_type,
                crate::commands::source().as_ref(),
            )
        };
        let key = (ep.config.name.to_lowercase(), roles.to_vec());
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if !std::ptr::eq(tables.cfg.as_ptr(), Arc::as_ptr(cfg)) {
            if !Arc::ptr_eq(cfg, &self.config()) {
                drop(tables);
                return build();
            }
            *tables = Tables {
                cfg: Arc::downgrade(cfg),
                map: HashMap::new(),
            };
        }
        if let Some(t) = tables.map.get(&key) {
            return t.clone();
        }
        let table = build();
        if tables.map.len() < MAX_SHARED_TABLES {
            tables.map.insert(key, table.clone());
        }
        table
    }

    /// Open a session for `who` on `endpoint`: gate 3 (remote origins only), gate 4 (the
    /// endpoint and the user's roles), the per-user session count for `kind`, then the
    /// transcript (keyhole never runs unaudited). Every refusal is logged and audited here.
    pub fn open(
        self: &Arc<Self>,
        who: &Identity,
        endpoint: &str,
        origin: Origin,
        kind: SessionKind,
    ) -> Result<Grant, OpenError> {
        let user = who.user.as_str();
        let groups = who.groups.as_slice();
        let current = self.current();
        let cfg = current.cfg.clone();
        if let Origin::Remote(_) = origin {
            let d = current
                .rules
                .evaluate(user, groups, &current.names, endpoint);
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
                    origin,
                    Some(endpoint),
                    &denied,
                );
                return Err(denied.into());
            }
            self.audit(AuditEvent {
                user: Some(user.to_string()),
                source: Some(origin.source()),
                gate: Some(AuditGate::Gateway),
                decision: Some(AuditDecision::Allow),
                rule_id: d.rule_id,
                reason: Some(d.reason),
                endpoint: Some(endpoint.to_string()),
                ..AuditEvent::new(AuditKind::Authorization)
            });
        }
        let refuse4 = |reason: String| -> OpenError {
            let d = Denied {
                gate: 4,
                reason,
                rule_id: None,
            };
            self.deny(
                AuditKind::Authorization,
                AuditGate::Endpoint,
                user,
                origin,
                Some(endpoint),
                &d,
            );
            d.into()
        };
        let Some(ep) = cfg.endpoint(endpoint) else {
            return Err(refuse4(format!("no endpoint named {endpoint:?}")));
        };
        let caps = match capability::applicable_roles(&cfg, ep, user, groups) {
            Ok(c) => c,
            Err(r) => return Err(refuse4(r.reason)),
        };
        let roles: Vec<String> = caps.iter().map(|c| c.name.clone()).collect();
        let table = self.table(&cfg, ep, &caps, &roles);
        let limits = &cfg.server.limits;
        let counted = match kind {
            SessionKind::Psrp => Some(
                ep.config
                    .max_sessions_per_user
                    .unwrap_or(limits.max_sessions_per_user)
                    .0,
            ),
            SessionKind::Console => Some(cfg.server.console.max_sessions_per_user.0),
            SessionKind::Winrs | SessionKind::Run => None,
        };
        let slot = match counted {
            Some(limit) => {
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                let key = (kind, user.to_lowercase());
                let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                let n = m.entry(key.clone()).or_insert(0);
                if *n >= limit {
                    let e = OpenError::SessionLimit {
                        user: user.to_string(),
                        open: *n,
                        limit,
                    };
                    drop(m);
                    tracing::warn!(user, endpoint, source = %origin.source(), "refused: {e}");
                    self.audit(AuditEvent {
                        user: Some(user.to_string()),
                        source: Some(origin.source()),
                        gate: Some(AuditGate::Endpoint),
                        decision: Some(AuditDecision::Deny),
                        reason: Some(e.to_string()),
                        endpoint: Some(ep.config.name.clone()),
                        ..AuditEvent::new(AuditKind::Authorization)
                    });
                    return Err(e);
                }
                *n += 1;
                Some(key)
            }
            None => None,
        };
        let session_id = uuid::Uuid::new_v4().to_string();
        let dir = if ep.config.transcript_directory.is_empty() {
            cfg.resolve(&cfg.server.transcript_directory)
        } else {
            cfg.resolve(&ep.config.transcript_directory)
        };
        // A transcript directory short of space refuses new sessions (running ones go on): a
        // full disk must not leave sessions running unaudited, nor let one user's transcripts
        // take the space every other session needs.
        let min_free = limits.transcript_min_free_bytes.0;
        match free_bytes(&dir) {
            Ok(free) if free < min_free => {
                if let Some(key) = &slot {
                    self.release_slot(key);
                }
                return Err(refuse4(format!(
                    "the transcript directory {} has {free} bytes free, less than transcript_min_free_bytes ({min_free}); new sessions are refused until space is freed there (sessions already open go on)",
                    dir.display()
                )));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot read the free space of the transcript directory: {e}");
            }
        }
        let header = TranscriptHeader {
            user: user.to_string(),
            groups: groups.to_vec(),
            run_as: ep.config.run_as.clone(),
            endpoint: ep.config.name.clone(),
            client_address: origin.peer().map(|p| p.ip().to_string()),
            transport: kind.transport().to_string(),
            start_time: chrono::Utc::now(),
            session_id: session_id.clone(),
        };
        let transcript = match Transcript::create(&dir, &header) {
            Ok(mut t) => {
                t.set_max_bytes(limits.max_transcript_bytes.0);
                t
            }
            Err(e) => {
                if let Some(key) = &slot {
                    self.release_slot(key);
                }
                return Err(refuse4(format!(
                    "cannot write a transcript in {}: {e}; keyhole refuses to run unaudited — fix the directory's ownership or transcript_directory",
                    dir.display()
                )));
            }
        };
        // From here the guard releases the slot and writes "session end" whatever happens.
        let guard = SessionGuard {
            gates: Arc::downgrade(self),
            user: user.to_string(),
            endpoint: ep.config.name.clone(),
            session_id: session_id.clone(),
            source: origin.source(),
            kind,
            slot,
        };
        let host = HostEnv {
            run_as: ep.config.run_as.as_str().into(),
            command_timeout: limits.command_timeout.0,
            max_output_bytes: limits.max_output_bytes.0,
            endpoint: ep.config.name.clone(),
            user: user.to_string(),
            groups: groups.to_vec(),
        };
        let session = engine::Session::with_table(
            table,
            SessionOptions {
                session_type: ep.config.session_type,
                host,
                commands: crate::commands::source(),
            },
            Box::new(transcript),
        );
        self.audit(AuditEvent {
            user: Some(user.to_string()),
            source: Some(origin.source()),
            gate: Some(AuditGate::Endpoint),
            decision: Some(AuditDecision::Allow),
            endpoint: Some(ep.config.name.clone()),
            session_id: Some(session_id.clone()),
            transport: Some(kind.transport().to_string()),
            reason: Some(format!("roles: {}", roles.join(", "))),
            ..AuditEvent::new(AuditKind::SessionStart)
        });
        Ok(Grant {
            session,
            endpoint: ep.config.name.clone(),
            session_id,
            limits: SessionLimits {
                shell: ShellLimits {
                    max_shells: limits.max_shells_per_user.0 as usize,
                    idle_timeout: match kind {
                        SessionKind::Console => cfg.server.console.idle_timeout.0,
                        _ => ep
                            .config
                            .idle_timeout
                            .map(|d| d.0)
                            .unwrap_or(limits.idle_timeout.0),
                    },
                },
                command_timeout: limits.command_timeout.0,
                max_buffered_output_bytes: usize::try_from(limits.max_buffered_output_bytes.0)
                    .unwrap_or(usize::MAX),
            },
            guard,
        })
    }

    /// A refusal a shell factory decides before any gate runs (WinRS switched off): logged and
    /// audited as a gate-4 refusal, like the gates' own.
    pub fn refuse(
        &self,
        who: &Identity,
        origin: Origin,
        endpoint: Option<&str>,
        reason: &str,
    ) -> Denied {
        let d = Denied {
            gate: 4,
            reason: reason.to_string(),
            rule_id: None,
        };
        self.deny(
            AuditKind::Authorization,
            AuditGate::Endpoint,
            &who.user,
            origin,
            endpoint,
            &d,
        );
        d
    }

    /// The end of gate 2 for an authenticated caller. Only Create opens a session (gates 3–4);
    /// every other operation from a user who passed gate 2 would otherwise answer with a
    /// WS-Man fault and so reveal that the password was right: a user no rule admits on this
    /// computer is refused here. `how` adds to the audit record (the Negotiate principal);
    /// `audit` is false for a request riding a connection Negotiate authenticated earlier.
    fn admit(
        &self,
        id: auth::Identity,
        origin: Origin,
        how: Option<&str>,
        audit: bool,
    ) -> Option<Identity> {
        let current = self.current();
        let admitted = current
            .rules
            .admits_anywhere(&id.user, &id.groups, &current.names);
        if !admitted {
            let d = Denied {
                gate: 3,
                reason: format!(
                    "no authorization rule admits {} on this computer for any configuration",
                    id.user
                ),
                rule_id: None,
            };
            self.deny(
                AuditKind::Authorization,
                AuditGate::Gateway,
                &id.user,
                origin,
                None,
                &d,
            );
            return None;
        }
        if audit {
            let method = format!("{:?}", id.method);
            self.audit(AuditEvent {
                user: Some(id.user.clone()),
                source: Some(origin.source()),
                gate: Some(AuditGate::Authentication),
                decision: Some(AuditDecision::Allow),
                reason: Some(match how {
                    Some(h) => format!("{method} {h}"),
                    None => method,
                }),
                ..AuditEvent::new(AuditKind::Authentication)
            });
        }
        Some(Identity {
            user: id.user,
            groups: id.groups,
        })
    }

    /// The names this server answers to: `computer_name` and `computer_aliases`.
    pub fn computer_names(&self) -> Vec<String> {
        self.current().names.clone()
    }

    /// The web console's computer name (PSWA's "Computer name"): it must be one of this
    /// server's names ([`Gates::computer_names`], case-insensitive). Anything else is refused
    /// (and audited) at gate 3, where a gateway to other keyhole hosts would go one day; the
    /// match is returned as configured.
    pub fn check_computer(
        &self,
        who: &Identity,
        computer: &str,
        origin: Origin,
        endpoint: &str,
    ) -> Result<String, Denied> {
        let computer = computer.trim();
        if let Some(n) = self
            .computer_names()
            .into_iter()
            .find(|n| !computer.is_empty() && n.eq_ignore_ascii_case(computer))
        {
            return Ok(n);
        }
        let d = Denied {
            gate: 3,
            reason: format!(
                "computer name {:?} is neither computer_name nor an alias of this server (the console has no gateway to other computers)",
                computer.chars().take(crate::auth::MAX_LOGIN_NAME_LEN).collect::<String>()
            ),
            rule_id: None,
        };
        self.deny(
            AuditKind::Authorization,
            AuditGate::Gateway,
            &who.user,
            origin,
            Some(endpoint),
            &d,
        );
        Err(d)
    }

    /// Gate 2 for a sign-in form (the web console): the same Basic verification as an
    /// `Authorization: Basic` header — users file or PAM, lock-out, refusal accounting, audit —
    /// and the same refusal of a user no rule admits on this computer. None: refused (logged
    /// and audited here). CPU-heavy: call it from a blocking thread.
    pub fn sign_in(&self, user: &str, password: &str, peer: SocketAddr) -> Option<Identity> {
        let origin = Origin::Remote(peer);
        let Some(authn) = &self.auth else {
            tracing::error!("gate 2: these gates were built for local sessions only");
            return None;
        };
        let result = authn.verify_basic(user, password, peer.ip());
        self.admit_result(result, origin, user)
    }

    /// After gate 2's verdict: a verified caller goes on to [`Gates::admit`]; a refusal is
    /// logged and audited at gate 2 under the name the caller claimed.
    fn admit_result(&self, result: AuthResult, origin: Origin, claimed: &str) -> Option<Identity> {
        match result {
            AuthResult::Ok(id) => self.admit(id, origin, None, true),
            AuthResult::Denied(reason) => {
                let d = Denied {
                    gate: 2,
                    reason: reason.to_string(),
                    rule_id: None,
                };
                self.deny(
                    AuditKind::Authentication,
                    AuditGate::Authentication,
                    claimed,
                    origin,
                    None,
                    &d,
                );
                None
            }
        }
    }

    fn release_slot(&self, key: &(SessionKind, String)) {
        let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(key);
            }
        }
    }

    /// PSRP sessions of `user` (they count against `max_sessions_per_user`), open now.
    pub fn open_sessions(&self, user: &str) -> usize {
        self.open_sessions_of(SessionKind::Psrp, user)
    }

    /// Sessions of `kind` that `user` holds now (0 for the kinds that are not counted).
    pub fn open_sessions_of(&self, kind: SessionKind, user: &str) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, user.to_lowercase()))
            .copied()
            .unwrap_or(0)
    }
}

/// Gate 2 for the WS-Man listener.
impl Authenticate for Gates {
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: SocketAddr,
        client_cert_sha256: Option<[u8; 32]>,
    ) -> Option<Identity> {
        let origin = Origin::Remote(peer);
        let Some(authn) = &self.auth else {
            tracing::error!("gate 2: these gates were built for local sessions only");
            return None;
        };
        let result = match (authorization, client_cert_sha256) {
            (Some(h), Some(fp)) if h == CERT_AUTH_HEADER => {
                authn.verify_certificate_fingerprint(&fp)
            }
            (None, Some(fp)) => authn.verify_certificate_fingerprint(&fp),
            (Some(h), _) => match auth::parse_basic_header(h) {
                Some((user, pw)) => authn.verify_basic(&user, &pw, peer.ip()),
                None => {
                    let d = Denied {
                        gate: 2,
                        reason: "no usable Authorization header (Basic or a client certificate)"
                            .into(),
                        rule_id: None,
                    };
                    self.deny(
                        AuditKind::Authentication,
                        AuditGate::Authentication,
                        "",
                        origin,
                        None,
                        &d,
                    );
                    return None;
                }
            },
            (None, None) => return None,
        };
        let claimed = authorization
            .and_then(auth::parse_basic_header)
            .map(|(u, _)| u)
            .unwrap_or_default();
        self.admit_result(result, origin, &claimed)
    }

    fn challenges(&self) -> Vec<String> {
        let cfg = self.config();
        // Negotiate (and Kerberos) first, each on its own line, as Windows sends them.
        let mut out: Vec<String> = self
            .negotiate_settings()
            .map(|s| {
                s.challenge_headers()
                    .into_iter()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        out.extend(auth::www_authenticate_headers(
            &cfg.server.auth,
            !cfg.server.listener.client_ca.is_empty(),
        ));
        out
    }

    fn authenticate_connection(
        &self,
        conn: &mut Connection,
        authorization: Option<&[u8]>,
    ) -> Verdict {
        negotiate::authenticate_connection(self, conn, authorization)
    }

    fn open_body(
        &self,
        conn: &mut Connection,
        content_type: Option<&str>,
        body: Vec<u8>,
        max_envelope: usize,
    ) -> Option<RequestBody> {
        negotiate::open_body(conn, content_type, body, max_envelope)
    }

    fn seal_body(&self, conn: &mut Connection, soap: Vec<u8>) -> Option<ResponseBody> {
        negotiate::seal_body(conn, soap)
    }
}

/// Bytes available (to an unprivileged writer) on the file system holding `dir`, or its
/// nearest existing ancestor when it does not exist yet.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => break,
        }
    }
    let st = nix::sys::statvfs::statvfs(probe).map_err(std::io::Error::from)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn me() -> String {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name
    }

    /// A configuration in a temporary directory: endpoint E admits alice (role R); rules admit
    /// alice to E; at most two PSRP sessions per user.
    fn gates() -> (tempfile::TempDir, Arc<Gates>) {
        let d = tempfile::tempdir().unwrap();
        let w = |rel: &str, text: &str| {
            let p = d.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w(
            "keyhole.toml",
            "computer_name = \"testhost\"\nwinrs_endpoint = \"E\"\n[limits]\nmax_sessions_per_user = 2\nmax_shells_per_user = 7\n",
        );
        w(
            "endpoints/E.toml",
            &format!(
                "name = \"E\"\nrun_as = {:?}\nidle_timeout = \"90s\"\n[[role]]\nuser = \"alice\"\nrole_capabilities = [\"R\"]\n[[role]]\nuser = \"carol\"\nrole_capabilities = [\"R\"]\n[[role]]\nuser = \"dave\"\nrole_capabilities = [\"R\", \"S\"]\n",
                me()
            ),
        );
        w(
            "role-capabilities/R.toml",
            "visible_cmdlets = [\"Get-Date\"]\n",
        );
        w(
            "role-capabilities/S.toml",
            "visible_cmdlets = [\"Get-Uptime\"]\n",
        );
        w(
            "authorization-rules.toml",
            "[[rule]]\nid = 1\nname = \"alice\"\nuser = \"alice\"\ncomputer = \"*\"\nconfiguration = \"*\"\n\n[[rule]]\nid = 2\nname = \"bob\"\nuser = \"bob\"\ncomputer = \"*\"\nconfiguration = \"*\"\n",
        );
        let cfg =
            crate::config::load(&d.path().join("keyhole.toml")).unwrap_or_else(|e| panic!("{e:?}"));
        (d, Arc::new(Gates::local(cfg).unwrap()))
    }

    fn who(user: &str) -> Identity {
        Identity {
            user: user.into(),
            groups: Vec::new(),
        }
    }

    fn remote() -> Origin {
        Origin::Remote("192.0.2.7:50000".parse().unwrap())
    }

    fn audit(d: &tempfile::TempDir) -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.path().join("state/audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn psrp_sessions_are_counted_per_user_in_one_place() {
        let (_d, g) = gates();
        let a = g
            .open(&who("alice"), "E", remote(), SessionKind::Psrp)
            .unwrap();
        let b = g
            .open(&who("ALICE"), "e", remote(), SessionKind::Psrp)
            .unwrap();
        assert_eq!(g.open_sessions("alice"), 2);
        match g.open(&who("alice"), "E", remote(), SessionKind::Psrp) {
            Err(OpenError::SessionLimit {
                open: 2, limit: 2, ..
            }) => {}
            other => panic!("{:?}", other.err()),
        }
        // WinRS shells and keyhole run are not counted here.
        let w = g
            .open(&who("alice"), "E", remote(), SessionKind::Winrs)
            .unwrap();
        let r = g
            .open(&who("alice"), "E", Origin::Local, SessionKind::Run)
            .unwrap();
        assert_eq!(g.open_sessions("alice"), 2);
        // The limits come from the configuration the session opened with.
        assert_eq!(
            a.limits.shell,
            ShellLimits {
                max_shells: 7,
                idle_timeout: Duration::from_secs(90)
            }
        );
        drop(b);
        assert_eq!(g.open_sessions("alice"), 1);
        let c = g
            .open(&who("alice"), "E", remote(), SessionKind::Psrp)
            .unwrap();
        drop((a, c, w, r));
        assert_eq!(g.open_sessions("alice"), 0);
    }

    #[test]
    fn every_open_and_refusal_is_audited_with_its_gate() {
        let (d, g) = gates();
        let grant = g
            .open(&who("alice"), "E", remote(), SessionKind::Winrs)
            .unwrap();
        let id = grant.session_id.clone();
        drop(grant);
        // bob passes gate 3 (a rule admits him) and is refused at gate 4 (no role in E).
        let e = g
            .open(&who("bob"), "E", remote(), SessionKind::Psrp)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("access denied at gate 4: no role applies to user bob"),
            "{e}"
        );
        // mallory: no rule (gate 3); locally gate 3 is skipped and gate 4 refuses.
        let e3 = g
            .open(&who("mallory"), "E", remote(), SessionKind::Psrp)
            .err()
            .unwrap();
        assert!(
            e3.to_string().starts_with("access denied at gate 3: "),
            "{e3}"
        );
        let e4 = g
            .open(&who("mallory"), "E", Origin::Local, SessionKind::Run)
            .err()
            .unwrap();
        assert!(
            e4.to_string().starts_with("access denied at gate 4: "),
            "{e4}"
        );
        let nowhere = g
            .open(&who("alice"), "Nowhere", remote(), SessionKind::Psrp)
            .err()
            .unwrap();
        assert!(nowhere
            .to_string()
            .contains("no endpoint named \"Nowhere\""));
        assert_eq!(g.open_sessions("bob"), 0, "a refused session holds no slot");

        let log = audit(&d);
        let kinds: Vec<(String, Option<String>, Option<String>)> = log
            .iter()
            .map(|r| {
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["gate"].as_str().map(str::to_string),
                    r["decision"].as_str().map(str::to_string),
                )
            })
            .collect();
        let s = |k: &str, g: Option<&str>, d: Option<&str>| {
            (k.to_string(), g.map(str::to_string), d.map(str::to_string))
        };
        assert_eq!(
            kinds,
            vec![
                s("authorization", Some("gateway"), Some("allow")),
                s("session_start", Some("endpoint"), Some("allow")),
                s("session_end", None, None),
                s("authorization", Some("gateway"), Some("allow")),
                s("authorization", Some("endpoint"), Some("deny")),
                s("authorization", Some("gateway"), Some("deny")),
                s("authorization", Some("endpoint"), Some("deny")),
                s("authorization", Some("gateway"), Some("allow")),
                s("authorization", Some("endpoint"), Some("deny")),
            ]
        );
        assert_eq!(log[1]["session_id"], log[2]["session_id"]);
        assert_eq!(log[2]["session_id"].as_str(), Some(id.as_str()));
        assert_eq!(log[1]["source"].as_str(), Some("192.0.2.7"));
        assert_eq!(log[6]["source"].as_str(), Some("local"));
        // The audit log says what the refusal said.
        assert_eq!(
            log[4]["reason"]
                .as_str()
                .map(|r| format!("access denied at gate 4: {r}")),
            Some(e.to_string())
        );
    }

    #[test]
    fn sessions_with_the_same_roles_share_one_command_table_until_a_reload() {
        let (d, g) = gates();
        let open = |user: &str| {
            g.open(&who(user), "E", Origin::Local, SessionKind::Run)
                .unwrap()
        };
        let a = open("alice");
        let b = open("ALICE");
        let c = open("carol");
        let dave = open("dave");
        assert!(a.session.table().same(&b.session.table()));
        assert!(
            a.session.table().same(&c.session.table()),
            "another user with the same roles shares the table"
        );
        assert!(
            !a.session.table().same(&dave.session.table()),
            "other roles, another table"
        );
        let names = |t: &engine::SharedTable| -> Vec<String> {
            t.visible().iter().map(|v| v.decl.name.clone()).collect()
        };
        assert!(names(&dave.session.table()).contains(&"Get-Uptime".to_string()));
        assert!(!names(&a.session.table()).contains(&"Get-Uptime".to_string()));
        // A reload: new sessions get new tables; open ones keep theirs.
        std::fs::write(
            d.path().join("role-capabilities/R.toml"),
            "visible_cmdlets = [\"Get-Date\", \"Get-Uptime\"]\n",
        )
        .unwrap();
        let cfg = crate::config::load(&d.path().join("keyhole.toml")).unwrap();
        g.reload(cfg).unwrap();
        let e = open("alice");
        assert!(!e.session.table().same(&a.session.table()));
        assert!(names(&e.session.table()).contains(&"Get-Uptime".to_string()));
        assert!(!names(&a.session.table()).contains(&"Get-Uptime".to_string()));
        assert!(e.session.table().same(&open("carol").session.table()));
    }
}
