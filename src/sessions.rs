//! `sessions`: the one list of live sessions — every session `gates::open` granted whose guard
//! has not dropped yet, whatever carries it (WinRS shells, PSRP runspace pools, later the web
//! console; `keyhole run` too, in its own process). The gates add an entry when they open a
//! session and remove it when the session's guard drops; nothing else writes here. `control`
//! reads it for `keyhole sessions` and closes entries through the [`ShellControl`] the shell
//! registry attached (closing takes the registry's one path, the idle time-out's).
//!
//! It also keeps what a live session shows: when it started, when it was last active, how many
//! command lines it ran, and why it ended (for the transcript and the audit log). The
//! `keyhole_sessions_open` gauge and `keyhole_sessions_opened_total` counter move here, with the
//! list, so that they cannot disagree with it.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::metrics::{Gauge, Metrics};
use crate::wsman::shell::{SessionHook, ShellControl};

/// Shortest unique prefix of a session id that `close` accepts (ids are UUIDs).
pub const MIN_ID_PREFIX: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What carries a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WinRS cmd shell (pywinrm, winrs.exe).
    Winrs,
    /// A PSRP runspace pool (pypsrp, Enter-PSSession).
    Psrp,
    /// The web console.
    Console,
    /// `keyhole run` on this machine.
    Local,
}

impl Transport {
    /// The name in `keyhole sessions --json` and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Winrs => "winrs",
            Transport::Psrp => "psrp",
            Transport::Console => "console",
            Transport::Local => "local",
        }
    }
}

/// One live session as `keyhole sessions` shows it (the control socket's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub user: String,
    pub endpoint: String,
    /// The client's address ("local" for `keyhole run`).
    pub client: String,
    /// `winrs`, `psrp`, `console` or `local`.
    pub transport: String,
    /// The WS-Man ShellId, once the shell is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell_id: Option<String>,
    /// RFC 3339, UTC, seconds.
    pub started: String,
    /// Seconds since a request last used the session (what its idle time-out measures).
    pub idle_seconds: u64,
    /// Command lines the session has run (whatever their result, refusals included).
    pub commands: u64,
}

/// What the gates know when they open a session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub session_id: String,
    pub user: String,
    pub endpoint: String,
    pub client: String,
    pub transport: Transport,
}

/// One live session.
pub struct LiveSession {
    info: NewSession,
    started: DateTime<Utc>,
    last_active: Mutex<Instant>,
    commands: AtomicU64,
    control: Mutex<Option<Arc<dyn ShellControl>>>,
    end_reason: Mutex<Option<String>>,
    /// Its `keyhole_sessions_open` series (decremented when it leaves the list).
    open_gauge: Option<Arc<Gauge>>,
}

impl std::fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession")
            .field("info", &self.info)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl LiveSession {
    pub fn session_id(&self) -> &str {
        &self.info.session_id
    }
    pub fn user(&self) -> &str {
        &self.info.user
    }
    pub fn endpoint(&self) -> &str {
        &self.info.endpoint
    }
    pub fn transport(&self) -> Transport {
        self.info.transport
    }

    fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }

    /// A command line starts.
    pub fn line_started(&self) {
        self.touch();
    }

    /// A command line ended (ran, failed or refused).
    pub fn line_ended(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Command lines run so far.
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Why the session ended (or is ending), when something said so.
    pub fn end_reason(&self) -> Option<String> {
        lock(&self.end_reason).clone()
    }

    /// Record why the session ends; the first reason given is kept.
    pub fn set_end_reason(&self, reason: &str) {
        let mut r = lock(&self.end_reason);
        if r.is_none() {
            *r = Some(reason.to_string());
        }
    }

    fn control(&self) -> Option<Arc<dyn ShellControl>> {
        lock(&self.control).clone()
    }

    /// Seconds since the session was last used: its shell's idle time when it has one (what
    /// the idle time-out measures), else since its last command line.
    pub fn idle(&self) -> Duration {
        self.control()
            .and_then(|c| c.idle())
            .unwrap_or_else(|| lock(&self.last_active).elapsed())
    }

    /// The session as `keyhole sessions` shows it.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            session_id: self.info.session_id.clone(),
            user: self.info.user.clone(),
            endpoint: self.info.endpoint.clone(),
            client: self.info.client.clone(),
            transport: self.info.transport.as_str().to_string(),
            shell_id: self.control().map(|c| c.shell_id()),
            started: self.started.to_rfc3339_opts(SecondsFormat::Secs, true),
            idle_seconds: self.idle().as_secs(),
            commands: self.commands(),
        }
    }
}

impl SessionHook for LiveSession {
    fn attach(&self, control: Arc<dyn ShellControl>) {
        tracing::debug!(
            session_id = %self.info.session_id,
            shell_id = %control.shell_id(),
            user = %self.info.user,
            endpoint = %self.info.endpoint,
            "session attached to its shell"
        );
        *lock(&self.control) = Some(control);
    }

    fn closing(&self, reason: &str) {
        self.set_end_reason(reason);
    }
}

/// Why [`SessionTable::close`] closed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    #[error("no session {0} (run `keyhole sessions` to list them)")]
    NotFound(String),
    #[error("{id:?} is the start of {} session ids ({}); give more of it", .matches.len(), .matches.join(", "))]
    Ambiguous { id: String, matches: Vec<String> },
    #[error("give at least {MIN_ID_PREFIX} characters of the session id (got {0:?})")]
    TooShort(String),
    #[error("session {0} has no shell to close yet (it is still being created); try again")]
    NotAttached(String),
    #[error("session {0} was already closing")]
    AlreadyClosed(String),
}

/// The live sessions of this process.
#[derive(Default)]
pub struct SessionTable {
    map: Mutex<BTreeMap<String, Arc<LiveSession>>>,
    metrics: OnceLock<Arc<Metrics>>,
}

impl SessionTable {
    pub fn new() -> SessionTable {
        SessionTable::default()
    }

    /// Count sessions in `m` from now on (once; later calls are ignored).
    pub fn attach_metrics(&self, m: Arc<Metrics>) {
        let _ = self.metrics.set(m);
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<LiveSession>>> {
        lock(&self.map)
    }

    /// Add a session that the gates just opened.
    pub fn open(&self, s: NewSession) -> Arc<LiveSession> {
        let open_gauge = self.metrics.get().map(|m| {
            let labels = [s.endpoint.as_str(), s.transport.as_str()];
            m.sessions_opened.with(&labels).inc();
            let g = m.sessions_open.with(&labels);
            g.inc();
            g
        });
        let live = Arc::new(LiveSession {
            started: Utc::now(),
            last_active: Mutex::new(Instant::now()),
            commands: AtomicU64::new(0),
            control: Mutex::new(None),
            end_reason: Mutex::new(None),
            open_gauge,
            info: s,
        });
        self.map()
            .insert(live.info.session_id.clone(), live.clone());
        live
    }

    /// Remove a session that ended (its guard dropped).
    pub fn remove(&self, session_id: &str) {
        let removed = self.map().remove(session_id);
        if let Some(g) = removed.as_ref().and_then(|s| s.open_gauge.as_ref()) {
            g.dec();
        }
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let all: Vec<Arc<LiveSession>> = self.map().values().cloned().collect();
        let mut v: Vec<(DateTime<Utc>, SessionInfo)> =
            all.iter().map(|s| (s.started, s.info())).collect();
        v.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.session_id.cmp(&b.1.session_id))
        });
        v.into_iter().map(|(_, i)| i).collect()
    }

    /// The session whose id is `id`, or starts with it (at least [`MIN_ID_PREFIX`]
    /// characters, one match); case-insensitive.
    pub fn find(&self, id: &str) -> Result<Arc<LiveSession>, CloseError> {
        let want = id.trim().to_ascii_lowercase();
        let map = self.map();
        if let Some(s) = map
            .values()
            .find(|s| s.info.session_id.eq_ignore_ascii_case(&want))
        {
            return Ok(s.clone());
        }
        if want.len() < MIN_ID_PREFIX {
            return if want.is_empty() {
                Err(CloseError::NotFound(id.to_string()))
            } else {
                Err(CloseError::TooShort(id.to_string()))
            };
        }
        let matches: Vec<&Arc<LiveSession>> = map
            .values()
            .filter(|s| s.info.session_id.to_ascii_lowercase().starts_with(&want))
            .collect();
        match matches.as_slice() {
            [] => Err(CloseError::NotFound(id.to_string())),
            [one] => Ok((*one).clone()),
            many => Err(CloseError::Ambiguous {
                id: id.to_string(),
                matches: many.iter().map(|s| s.info.session_id.clone()).collect(),
            }),
        }
    }

    /// Close the session `id` (see [`SessionTable::find`]) as its idle time-out would: its
    /// shell removed, what runs in it stopped and its programs killed, a waiting Receive
    /// answered, its transcript and the audit log saying `reason`. Returns the session as it
    /// was.
    pub fn close(&self, id: &str, reason: &str) -> Result<SessionInfo, CloseError> {
        let s = self.find(id)?;
        let info = s.info();
        let Some(control) = s.control() else {
            return Err(CloseError::NotAttached(info.session_id));
        };
        s.set_end_reason(reason);
        if control.close(reason) {
            Ok(info)
        } else {
            Err(CloseError::AlreadyClosed(info.session_id))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn new(id: &str, transport: Transport) -> NewSession {
        NewSession {
            session_id: id.into(),
            user: "alice".into(),
            endpoint: "Helpdesk".into(),
            client: "192.0.2.7".into(),
            transport,
        }
    }

    struct FakeShell {
        closed: AtomicBool,
        reason: Mutex<Option<String>>,
        hook: Mutex<Option<Arc<LiveSession>>>,
    }
    impl ShellControl for FakeShell {
        fn shell_id(&self) -> String {
            "SHELL-1".into()
        }
        fn idle(&self) -> Option<Duration> {
            (!self.closed.load(Ordering::SeqCst)).then_some(Duration::from_secs(42))
        }
        fn close(&self, reason: &str) -> bool {
            if self.closed.swap(true, Ordering::SeqCst) {
                return false;
            }
            if let Some(h) = lock(&self.hook).as_ref() {
                h.closing("a later reason is ignored");
            }
            *lock(&self.reason) = Some(reason.into());
            true
        }
    }

    #[test]
    fn the_list_and_the_gauge_follow_open_and_remove() {
        let m = Arc::new(Metrics::new());
        let t = SessionTable::new();
        t.attach_metrics(m.clone());
        let a = t.open(new(
            "aaaaaaaa-0000-4000-8000-000000000001",
            Transport::Winrs,
        ));
        let _b = t.open(new("bbbbbbbb-0000-4000-8000-000000000002", Transport::Psrp));
        a.line_started();
        a.line_ended();
        a.line_ended();
        let l = t.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].session_id, "aaaaaaaa-0000-4000-8000-000000000001");
        assert_eq!(l[0].transport, "winrs");
        assert_eq!(l[0].commands, 2);
        assert_eq!(l[0].client, "192.0.2.7");
        assert!(l[0].started.ends_with('Z'), "{}", l[0].started);
        assert_eq!(l[1].transport, "psrp");
        let text = m.render();
        assert!(
            text.contains("keyhole_sessions_open{endpoint=\"Helpdesk\",transport=\"winrs\"} 1\n")
        );
        t.remove(a.session_id());
        t.remove(a.session_id());
        let text = m.render();
        assert!(
            text.contains("keyhole_sessions_open{endpoint=\"Helpdesk\",transport=\"winrs\"} 0\n"),
            "removing twice counts once: {text}"
        );
        assert!(text.contains(
            "keyhole_sessions_opened_total{endpoint=\"Helpdesk\",transport=\"winrs\"} 1\n"
        ));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn close_finds_by_id_or_unique_prefix_and_goes_through_the_shell() {
        let t = SessionTable::new();
        let a = t.open(new(
            "abcdef01-0000-4000-8000-000000000001",
            Transport::Winrs,
        ));
        let _b = t.open(new("abcdef02-0000-4000-8000-000000000002", Transport::Psrp));
        let _c = t.open(new("abcdef02-1111-4000-8000-000000000003", Transport::Psrp));
        // Fewer than 8 characters: refused even when unique.
        assert!(matches!(
            t.close("abcdef0", "x"),
            Err(CloseError::TooShort(_))
        ));
        assert!(matches!(t.close("", "x"), Err(CloseError::NotFound(_))));
        assert!(matches!(
            t.close("abcdef09", "x"),
            Err(CloseError::NotFound(_))
        ));
        match t.close("ABCDEF02", "x") {
            Err(CloseError::Ambiguous { matches, .. }) => assert_eq!(matches.len(), 2),
            other => panic!("{other:?}"),
        }
        // Unique, but no shell attached yet.
        assert!(matches!(
            t.close("abcdef01", "x"),
            Err(CloseError::NotAttached(_))
        ));

        let shell = Arc::new(FakeShell {
            closed: AtomicBool::new(false),
            reason: Mutex::new(None),
            hook: Mutex::new(Some(a.clone())),
        });
        a.attach(shell.clone());
        let listed = t.list();
        assert_eq!(listed[0].shell_id.as_deref(), Some("SHELL-1"));
        assert_eq!(listed[0].idle_seconds, 42, "the shell's idle time");
        let closed = t.close("ABCDEF01", "closed by the administrator").unwrap();
        assert_eq!(closed.session_id, "abcdef01-0000-4000-8000-000000000001");
        assert_eq!(
            lock(&shell.reason).as_deref(),
            Some("closed by the administrator")
        );
        assert_eq!(
            a.end_reason().as_deref(),
            Some("closed by the administrator"),
            "the first reason is kept (the registry's closing() came second)"
        );
        // Gone from the registry: closing again says so.
        assert!(matches!(
            t.close(a.session_id(), "again"),
            Err(CloseError::AlreadyClosed(_))
        ));
    }
}
