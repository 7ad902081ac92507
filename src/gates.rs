//! `gates`: the ONLY place a session is opened — for WinRS, PSRP, `keyhole run` and the web
//! console. Gates 2–4 over `auth`, `rules` and `capability`; the per-user session
//! count; the transcript; the JSON audit log (authentication, authorization decisions, session
//! start and end, refusals with gate and reason); all on a configuration that reloads without
//! dropping sessions. Every refusal is the same to a remote client; the log and the audit log
//! say which gate refused and why ([`Denied`]'s text, which `keyhole run` prints too).
//!
//! Every session it opens is in its [`SessionTable`] (`keyhole sessions`) until its guard drops;
//! each command line of a session passes through [`SessionAudit`] on its way to the transcript,
//! which counts it (the session's command count, `keyhole_commands_total`, the latency
//! histogram) and logs it with the fields journald keeps (`user`, `endpoint`, `session_id`,
//! `command`, `reason`; refusals at the gates also `gate` and `rule`).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

// The session list `keyhole sessions` reads (filled here only).
use crate::sessions::{LiveSession, NewSession, SessionTable, Transport};

use crate::audit::{
    AuditDecision, AuditEvent, AuditGate, AuditKind, AuditLog, Transcript, TranscriptHeader,
};
use crate::auth::negotiate::NegotiateSettings;
use crate::auth::{self, AuthResult, Authenticator};
use crate::capability;
use crate::config::LoadedConfig;
use crate::engine::{self, Audit, BoundArgs, EndState, HostEnv, SessionOptions};
use crate::metrics::{Counter, Histogram, Metrics};
use crate::rules;
use crate::wsman::shell::{
    Authenticate, Connection, Identity, Plan, RequestBody, ResponseBody, ShellLimits, Verdict,
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
    /// What carries a session of this kind (transcripts, the audit log, `keyhole sessions`,
    /// metric labels).
    pub fn transport(self) -> Transport {
        match self {
            SessionKind::Winrs => Transport::Winrs,
            SessionKind::Psrp => Transport::Psrp,
            SessionKind::Run => Transport::Local,
            SessionKind::Console => Transport::Console,
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

/// Ends a granted session when dropped: releases its per-user slot, takes it off the session
/// list and writes the audit log's "session end" record (with why it ended, when known).
pub struct SessionGuard {
    gates: Weak<Gates>,
    user: String,
    endpoint: String,
    session_id: String,
    source: String,
    kind: SessionKind,
    /// The per-user count this session holds a slot of (kind, lower-case user name).
    slot: Option<(SessionKind, String)>,
    live: Arc<LiveSession>,
}

impl SessionGuard {
    /// The session's entry in the session list, for the shell registry (which tells it why
    /// the shell closes and lets `keyhole sessions close` reach the shell).
    pub fn hook(&self) -> Arc<dyn crate::wsman::shell::SessionHook> {
        self.live.clone()
    }

    /// The session's entry in the session list.
    pub fn live(&self) -> &Arc<LiveSession> {
        &self.live
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let Some(g) = self.gates.upgrade() else {
            return;
        };
        if let Some(key) = &self.slot {
            g.release_slot(key);
        }
        g.live.remove(&self.session_id);
        let reason = self.live.end_reason();
        tracing::info!(
            user = self.user.as_str(),
            endpoint = self.endpoint.as_str(),
            session_id = self.session_id.as_str(),
            source = self.source.as_str(),
            reason = reason.as_deref().unwrap_or(""),
            commands = self.live.commands(),
            "session ended{}",
            reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        g.audit(AuditEvent {
            user: Some(self.user.clone()),
            source: Some(self.source.clone()),
            endpoint: Some(self.endpoint.clone()),
            session_id: Some(self.session_id.clone()),
            transport: Some(self.kind.transport().as_str().to_string()),
            reason,
            ..AuditEvent::new(AuditKind::SessionEnd)
        });
    }
}

/// A line's counters and latency histogram, for one endpoint.
struct LineMetrics {
    ran: Arc<Counter>,
    failed: Arc<Counter>,
    refused: Arc<Counter>,
    duration: Arc<Histogram>,
}

impl LineMetrics {
    fn new(m: &Metrics, endpoint: &str) -> LineMetrics {
        LineMetrics {
            ran: m.commands.with(&[endpoint, "ran"]),
            failed: m.commands.with(&[endpoint, "failed"]),
            refused: m.commands.with(&[endpoint, "refused"]),
            duration: m.command_duration.with(&[endpoint]),
        }
    }
}

/// Longest command line text put in one log event (the transcript has all of it). Text a
/// client chose (a user name, a command line, a refusal's reason) is always given to `tracing`
/// as a `&str` field, never with `%`: the plain-text log prints such fields escaped and quoted
/// (a line with a newline cannot forge a log line), journald receives them as they are.
pub const MAX_LOGGED_LINE_CHARS: usize = 2048;

fn logged_line(line: &str) -> String {
    if line.chars().count() > MAX_LOGGED_LINE_CHARS {
        let mut s: String = line.chars().take(MAX_LOGGED_LINE_CHARS).collect();
        s.push('…');
        s
    } else {
        line.to_string()
    }
}

/// The transcript of a granted session, with the session's bookkeeping around it: each line
/// counted on the session list and in the metrics (`ran` = Completed, `failed` = Failed or
/// Stopped, `refused` = Refused, as the transcript's `[end]` record says), logged with its
/// fields, and the transcript closed with why the session ended.
pub struct SessionAudit {
    transcript: Transcript,
    live: Arc<LiveSession>,
    metrics: Option<LineMetrics>,
    /// The line running now (for the log) and when it started.
    line: String,
    started: Option<Instant>,
}

impl Audit for SessionAudit {
    fn line(&mut self, line: &str) -> std::io::Result<()> {
        self.started = Some(Instant::now());
        self.line = logged_line(line);
        self.live.line_started();
        tracing::info!(
            user = self.live.user(),
            endpoint = self.live.endpoint(),
            session_id = self.live.session_id(),
            command = self.line.as_str(),
            "command line"
        );
        self.transcript.line(line)
    }

    fn command(&mut self, name: &str, args: &BoundArgs) -> std::io::Result<()> {
        self.transcript.command(name, args)
    }

    fn refused(&mut self, reason: &str) -> std::io::Result<()> {
        tracing::info!(
            user = self.live.user(),
            endpoint = self.live.endpoint(),
            session_id = self.live.session_id(),
            command = self.line.as_str(),
            reason,
            "command line refused"
        );
        self.transcript.refused(reason)
    }

    fn output(&mut self, text: &str) -> std::io::Result<()> {
        self.transcript.output(text)
    }

    fn commit(&mut self) -> std::io::Result<()> {
        self.transcript.commit()
    }

    fn end(&mut self, state: EndState) -> std::io::Result<()> {
        let written = self.transcript.end(state);
        self.live.line_ended();
        if let Some(m) = &self.metrics {
            match state {
                EndState::Completed => m.ran.inc(),
                EndState::Failed | EndState::Stopped => m.failed.inc(),
                EndState::Refused => m.refused.inc(),
            }
            if let Some(t) = self.started.take() {
                m.duration.observe(t.elapsed());
            }
        }
        written
    }
}

impl Drop for SessionAudit {
    fn drop(&mut self) {
        let reason = self.live.end_reason();
        if let Err(e) = self.transcript.finish_with(reason.as_deref()) {
            tracing::error!(path = %self.transcript.path().display(), error = %e, "cannot end transcript");
        }
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
    /// Every session open now (`keyhole sessions`).
    live: Arc<SessionTable>,
    metrics: OnceLock<Arc<Metrics>>,
    /// Open sessions per kind and user (lower-case name), of the kinds that count
    /// ([`SessionKind::Psrp`], [`SessionKind::Console`]).
    sessions: Mutex<HashMap<(SessionKind, String), usize>>,
    /// Negotiate's settings (`[auth] negotiate`: the keytab's acceptor credentials, realms,
    /// NTLM), built once per configuration; None when it is off.
    negotiate: RwLock<Option<Arc<NegotiateSettings>>>,
    /// Password verification slots, shared by every listener and the web console's sign-in.
    verify_slots: Arc<auth::slots::VerifySlots>,
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
            live: Arc::new(SessionTable::new()),
            metrics: OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
            negotiate: RwLock::new(None),
            verify_slots: Arc::new(auth::slots::VerifySlots::for_this_host()),
        })
    }

    /// Count in `m` from now on: authentication failures and lock-outs, refusals by gate,
    /// sessions, command lines and their latency.
    pub fn attach_metrics(&self, m: Arc<Metrics>) {
        if let Some(a) = &self.auth {
            a.attach_metrics(m.clone())
        }
        self.live.attach_metrics(m.clone());
        let _ = self.metrics.set(m);
    }

    /// The live sessions (`keyhole sessions`).
    pub fn sessions(&self) -> Arc<SessionTable> {
        self.live.clone()
    }

    fn count_refusal(&self, gate: u8) {
        if let Some(m) = self.metrics.get() {
            m.refusals.with(&[&gate.to_string()]).inc();
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

    /// Swap in a new, already validated configuration. Open sessions are not touched;
    /// remembered credentials of users who can no longer open a session are forgotten. Fails,
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
        let now = g.clone();
        drop(g);
        *self.negotiate.write().unwrap_or_else(|e| e.into_inner()) = settings;
        // The cache holds only users who can open a session: forget those the new rules and
        // roles leave with none (a changed account entry was dropped by replace_users). A
        // remembered credential is also checked against the rules at every use, so nothing
        // forgotten here could have been honoured after the swap.
        if let Some(auth) = &self.auth {
            auth.forget_remembered_unless(&mut |id| {
                Gates::can_open_any(&now, &id.user, &id.groups).is_ok()
            });
        }
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
        tracing::warn!(
            gate = d.gate,
            user,
            endpoint,
            rule = d.rule_id,
            source = %origin.source(),
            reason = d.reason.as_str(),
            "{d}"
        );
        self.count_refusal(d.gate);
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
        // The gateway rule that admitted a remote user (logged when the session opens).
        let mut admitted_by = None;
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
            admitted_by = d.rule_id;
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
                    let reason = e.to_string();
                    tracing::warn!(
                        gate = 4u8,
                        user,
                        endpoint,
                        source = %origin.source(),
                        reason = reason.as_str(),
                        "refused: {e}"
                    );
                    self.count_refusal(4);
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
            transport: kind.transport().as_str().to_string(),
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
        // From here the guard releases the slot, leaves the list and writes "session end"
        // whatever happens.
        let live = self.live.open(NewSession {
            session_id: session_id.clone(),
            user: user.to_string(),
            endpoint: ep.config.name.clone(),
            client: origin.source(),
            transport: kind.transport(),
        });
        let guard = SessionGuard {
            gates: Arc::downgrade(self),
            user: user.to_string(),
            endpoint: ep.config.name.clone(),
            session_id: session_id.clone(),
            source: origin.source(),
            kind,
            slot,
            live: live.clone(),
        };
        let audit = SessionAudit {
            transcript,
            metrics: self
                .metrics
                .get()
                .map(|m| LineMetrics::new(m, &ep.config.name)),
            live,
            line: String::new(),
            started: None,
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
            Box::new(audit),
        );
        self.audit(AuditEvent {
            user: Some(user.to_string()),
            source: Some(origin.source()),
            gate: Some(AuditGate::Endpoint),
            decision: Some(AuditDecision::Allow),
            endpoint: Some(ep.config.name.clone()),
            session_id: Some(session_id.clone()),
            transport: Some(kind.transport().as_str().to_string()),
            reason: Some(format!("roles: {}", roles.join(", "))),
            ..AuditEvent::new(AuditKind::SessionStart)
        });
        tracing::info!(
            user,
            endpoint = ep.config.name.as_str(),
            session_id = session_id.as_str(),
            source = %origin.source(),
            transport = kind.transport().as_str(),
            rule = admitted_by,
            "session opened"
        );
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

    /// Could `user` (member of `groups`) open any session on this server under `cfg`: is there
    /// an endpoint that an authorization rule admits them to on this computer (gate 3) and
    /// where a role applies to them (gate 4: `required_groups`, then the roles)? The refusal
    /// says which gate would refuse every endpoint and why (for the log only).
    fn can_open_any(cur: &Current, user: &str, groups: &[String]) -> Result<(), Denied> {
        let cfg = &cur.cfg;
        // Gate 3 through the index first: most users no rule admits anywhere end here.
        if !cur.rules.admits_anywhere(user, groups, &cur.names) {
            return Err(Denied {
                gate: 3,
                reason: format!(
                    "no authorization rule admits {user} on this computer for any endpoint configured here; refused at gate 2 for every operation, as this user can open no session here"
                ),
                rule_id: None,
            });
        }
        let mut ruled: Vec<&str> = Vec::new();
        let mut first_gate4: Option<String> = None;
        for ep in &cfg.endpoints {
            let name = ep.config.name.as_str();
            if !cur.rules.evaluate(user, groups, &cur.names, name).allowed {
                continue;
            }
            match capability::applicable_roles(cfg, ep, user, groups) {
                Ok(_) => return Ok(()),
                Err(r) => {
                    ruled.push(name);
                    first_gate4.get_or_insert(r.reason);
                }
            }
        }
        let why = "refused at gate 2 for every operation, as this user can open no session here";
        Err(match first_gate4 {
            None => Denied {
                gate: 3,
                reason: format!(
                    "no authorization rule admits {user} on this computer for any endpoint configured here; {why}"
                ),
                rule_id: None,
            },
            Some(r) => Denied {
                gate: 4,
                reason: format!(
                    "authorization rules admit {user} to {} but no role lets them in there ({r}); {why}",
                    ruled.join(", ")
                ),
                rule_id: None,
            },
        })
    }

    /// An `Authorization` header that is neither Basic nor a certificate's (nor Negotiate
    /// when it is on): the generic 401, logged.
    fn refuse_unusable_header(&self, origin: Origin) {
        let d = Denied {
            gate: 2,
            reason: "no usable Authorization header (Basic or a client certificate)".into(),
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
    }

    /// Log and audit a [`Gates::can_open_any`] refusal, at the gate it names.
    fn deny_no_session(&self, user: &str, origin: Origin, d: &Denied) {
        let gate = if d.gate == 4 {
            AuditGate::Endpoint
        } else {
            AuditGate::Gateway
        };
        self.deny(AuditKind::Authorization, gate, user, origin, None, d);
    }

    /// The end of gate 2 for an authenticated caller (a certificate, Negotiate). Only Create
    /// opens a session (gates 3–4); every other operation from a user who passed gate 2 would
    /// otherwise answer with a WS-Man fault and so reveal that the credentials were right: a
    /// user who can open no session here ([`Gates::can_open_any`]) is refused here. `how` adds
    /// to the audit record (the Negotiate principal); `audit` is false for a request riding a
    /// connection Negotiate authenticated earlier. (Basic does this inside the verification:
    /// [`Gates::verify_basic`].)
    fn admit(
        &self,
        id: auth::Identity,
        origin: Origin,
        how: Option<&str>,
        audit: bool,
    ) -> Option<Identity> {
        if let Err(d) = Gates::can_open_any(&self.current(), &id.user, &id.groups) {
            self.deny_no_session(&id.user, origin, &d);
            return None;
        }
        Some(self.admitted(id, origin, how, audit))
    }

    /// An admitted caller: audited (unless `audit` is false) and handed to the WS-Man layer.
    fn admitted(
        &self,
        id: auth::Identity,
        origin: Origin,
        how: Option<&str>,
        audit: bool,
    ) -> Identity {
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
        Identity {
            user: id.user,
            groups: id.groups,
        }
    }

    /// Gate 2 for `Authorization: Basic` (the blocking half): a remembered credential or one
    /// argon2id verification, and the caller's ability to open a session here decided inside
    /// it, so that a right password of a user who can open none is refused, counted and timed
    /// exactly like a wrong one, and never remembered.
    fn verify_basic(
        &self,
        authn: &Authenticator,
        user: &str,
        password: &str,
        origin: Origin,
        ip: std::net::IpAddr,
    ) -> Option<Identity> {
        let cur = self.current();
        let mut no_session: Option<Denied> = None;
        let result =
            authn.verify_basic_admitting(user, password, ip, &mut |id| match Gates::can_open_any(
                &cur, &id.user, &id.groups,
            ) {
                Ok(()) => true,
                Err(d) => {
                    no_session = Some(d);
                    false
                }
            });
        match result {
            AuthResult::Ok(id) => Some(self.admitted(id, origin, None, true)),
            AuthResult::Denied(auth::DenyReason::NoSession) => {
                let d = no_session.unwrap_or(Denied {
                    gate: 3,
                    reason: auth::DenyReason::NoSession.to_string(),
                    rule_id: None,
                });
                self.deny_no_session(user, origin, &d);
                None
            }
            AuthResult::Denied(reason) => {
                let d = Denied {
                    gate: 2,
                    reason: reason.to_string(),
                    rule_id: None,
                };
                self.deny(
                    AuditKind::Authentication,
                    AuditGate::Authentication,
                    user,
                    origin,
                    None,
                    &d,
                );
                None
            }
        }
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

    /// The password verification slots (gate 2 under load): the listeners and the web
    /// console's sign-in wait for one before a verification ([`Gates::sign_in`]).
    pub fn verify_slots(&self) -> Arc<auth::slots::VerifySlots> {
        self.verify_slots.clone()
    }

    /// Gate 2 for a sign-in form (the web console): the same Basic verification as an
    /// `Authorization: Basic` header — users file or PAM, lock-out, refusal accounting, audit —
    /// and the same refusal of a user no rule admits on this computer. None: refused (logged
    /// and audited here). CPU-heavy: call it from a blocking thread, holding one of
    /// [`Gates::verify_slots`].
    pub fn sign_in(&self, user: &str, password: &str, peer: SocketAddr) -> Option<Identity> {
        let origin = Origin::Remote(peer);
        let Some(authn) = &self.auth else {
            tracing::error!("gate 2: these gates were built for local sessions only");
            return None;
        };
        self.verify_basic(authn, user, password, origin, peer.ip())
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
                Some((user, pw)) => return self.verify_basic(authn, &user, &pw, origin, peer.ip()),
                None => {
                    self.refuse_unusable_header(origin);
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

    /// Decided here, without blocking: a remembered Basic credential of a user who can still
    /// open a session (no hashing, no blocking task: the cache is checked on the serving
    /// thread), a request without credentials, an Authorization header nobody could use.
    /// Verified in a slot: any other Basic credential (every refusal costs one argon2id
    /// verification) and every Negotiate leg. On a blocking thread without a slot: client
    /// certificates and requests riding a Negotiate connection (the system's user database).
    fn plan(&self, conn: &mut Connection, authorization: Option<&[u8]>) -> Plan {
        let Some(authn) = &self.auth else {
            return Plan::Decided(Verdict::Refuse);
        };
        let negotiating = self.negotiate_settings().is_some();
        let Some(h) = authorization else {
            let rides = conn.state.is_some();
            return if rides || conn.client_cert_sha256.is_some() {
                Plan::Blocking
            } else {
                // No credentials at all: the generic 401 (or the anonymous Identify).
                Plan::Decided(Verdict::Refuse)
            };
        };
        if negotiating && crate::auth::negotiate::parse_authorization(h).is_some() {
            return Plan::Verify;
        }
        if conn.encrypted_only || h == CERT_AUTH_HEADER {
            // Refused without a verification whatever the credentials, or a certificate.
            return Plan::Blocking;
        }
        let Some((user, pw)) = auth::parse_basic_header(h) else {
            return Plan::Blocking;
        };
        let cur = self.current();
        let remembered = authn.remembered(&user, &pw, conn.peer.ip(), &mut |id| {
            Gates::can_open_any(&cur, &id.user, &id.groups).is_ok()
        });
        match remembered {
            Some(id) => {
                // A Basic request: the connection is no longer Negotiate's.
                negotiate::forget(conn);
                Plan::Decided(Verdict::Allow {
                    identity: self.admitted(id, Origin::Remote(conn.peer), None, true),
                    www_authenticate: None,
                })
            }
            None => Plan::Verify,
        }
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

    /// A `tracing` writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn a_command_line_cannot_forge_a_line_of_the_plain_text_log() {
        let (_d, g) = gates();
        let out = Captured::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let mut grant = g
                .open(&who("alice"), "E", Origin::Local, SessionKind::Run)
                .unwrap();
            let mut sink = crate::engine::VecSink(Vec::new());
            grant.session.run_line(
                "Get-Date\n2026-01-01T00:00:00Z  WARN forged: root logged in",
                &mut sink,
                &crate::engine::CancelToken::new(),
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("command line"), "{text}");
        assert!(text.contains("Get-Date\\n2026-01-01"), "escaped: {text}");
        for l in text.lines() {
            assert!(
                !l.starts_with("2026-01-01T00:00:00Z"),
                "forged line: {text}"
            );
        }
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

    /// Endpoint E with a role for alice only; rules admit alice and bob everywhere; both have a
    /// password in users.toml. bob can never open a session (gate 4 refuses him at E).
    fn gates_with_users() -> (tempfile::TempDir, Gates) {
        let (d, _) = gates();
        let users = format!(
            "[users.alice]\npassword = {:?}\ngroups = []\n\n[users.bob]\npassword = {:?}\ngroups = []\n",
            auth::hash_password("pw-alice").unwrap(),
            auth::hash_password("pw-bob").unwrap()
        );
        std::fs::write(d.path().join("users.toml"), users).unwrap();
        let cfg =
            crate::config::load(&d.path().join("keyhole.toml")).unwrap_or_else(|e| panic!("{e:?}"));
        (d, Gates::new(cfg).unwrap())
    }

    fn basic(user: &str, pw: &str) -> Vec<u8> {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
        .into_bytes()
    }

    fn allowed(v: &Verdict) -> bool {
        matches!(v, Verdict::Allow { .. })
    }

    #[test]
    fn only_users_who_can_open_a_session_are_remembered_and_a_hit_is_planned_without_blocking() {
        let (_d, g) = gates_with_users();
        let remembered = || g.auth.as_ref().unwrap().remembered_count();
        let mut conn = Connection::new("192.0.2.7:50000".parse().unwrap(), None, None, false);
        let (alice, bob) = (basic("alice", "pw-alice"), basic("bob", "pw-bob"));
        // Not yet verified: a password to verify, in a slot.
        assert_eq!(g.plan(&mut conn, Some(&alice)), Plan::Verify);
        assert!(allowed(&g.authenticate_connection(&mut conn, Some(&alice))));
        assert_eq!(remembered(), 1);
        // Remembered: decided on the serving thread, no verification, no blocking task.
        let before = g.auth.as_ref().unwrap().verification_count();
        assert!(matches!(
            g.plan(&mut conn, Some(&alice)),
            Plan::Decided(Verdict::Allow { .. })
        ));
        assert_eq!(g.auth.as_ref().unwrap().verification_count(), before);
        // bob's right password: refused at gate 2 like a wrong one, and never remembered.
        for _ in 0..3 {
            assert_eq!(g.plan(&mut conn, Some(&bob)), Plan::Verify);
            assert_eq!(
                g.authenticate_connection(&mut conn, Some(&bob)),
                Verdict::Refuse
            );
        }
        assert_eq!(remembered(), 1);
        // Each of bob's refusals cost one verification, as a wrong password's does.
        let n = g.auth.as_ref().unwrap().verification_count();
        assert_eq!(
            g.authenticate_connection(&mut conn, Some(&basic("bob", "wrong"))),
            Verdict::Refuse
        );
        assert_eq!(g.auth.as_ref().unwrap().verification_count(), n + 1);
        assert_eq!(
            g.authenticate_connection(&mut conn, Some(&bob)),
            Verdict::Refuse
        );
        assert_eq!(g.auth.as_ref().unwrap().verification_count(), n + 2);
        // The web console's sign-in is the same gate 2: bob is refused and not remembered.
        let peer = "192.0.2.7:50001".parse().unwrap();
        assert!(g.sign_in("bob", "pw-bob", peer).is_none());
        assert_eq!(g.auth.as_ref().unwrap().verification_count(), n + 3);
        assert_eq!(remembered(), 1);
        assert!(g.sign_in("alice", "pw-alice", peer).is_some());
    }

    #[test]
    fn a_reload_that_takes_a_users_last_role_forgets_her_remembered_credential() {
        let (d, g) = gates_with_users();
        let mut conn = Connection::new("192.0.2.7:50000".parse().unwrap(), None, None, false);
        let alice = basic("alice", "pw-alice");
        assert!(allowed(&g.authenticate_connection(&mut conn, Some(&alice))));
        assert_eq!(g.auth.as_ref().unwrap().remembered_count(), 1);
        // A reload that changes nothing for alice keeps her remembered.
        let cfg = crate::config::load(&d.path().join("keyhole.toml")).unwrap();
        g.reload(cfg).unwrap();
        assert_eq!(g.auth.as_ref().unwrap().remembered_count(), 1);
        // E's role now names carol: alice can open no session any more.
        let e = d.path().join("endpoints/E.toml");
        let text = std::fs::read_to_string(&e)
            .unwrap()
            .replace("user = \"alice\"", "user = \"carol\"");
        std::fs::write(&e, text).unwrap();
        let cfg = crate::config::load(&d.path().join("keyhole.toml")).unwrap();
        g.reload(cfg).unwrap();
        assert_eq!(g.auth.as_ref().unwrap().remembered_count(), 0);
        assert_eq!(g.plan(&mut conn, Some(&alice)), Plan::Verify);
        assert_eq!(
            g.authenticate_connection(&mut conn, Some(&alice)),
            Verdict::Refuse
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
