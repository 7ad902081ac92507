//! `shells`: what runs behind a WS-Man shell or a web console. `runner` is the one runtime
//! (workers, lanes, byte-bounded output, deadlines); `winrs` (the cmd shell), `psrp` (runspace
//! pools) and `console` (the web console's shell) are the shells built on it; the first two
//! come with the factory that opens their session through `gates` — the only place a session
//! is opened — and the console's session is opened by `console` through the same `gates`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

pub mod codepage;
pub mod console;
pub mod psrp;
pub mod runner;
pub mod winrs;

use runner::{Budget, OutputBudget, Workers};

use crate::engine::Session;
use crate::gates::{Gates, OpenError, Origin, SessionKind};
use crate::wsman::shell::{CreateError, Identity, ShellError, ShellLimits};

/// Output one line may hold while the client is not receiving, by default (`Budget::PerLine`).
pub const MAX_BUFFERED_OUTPUT_PER_LINE: usize = 16 * 1024 * 1024;

/// What a shell runs with besides its engine session: the shared workers, the session's
/// deadline per line, where its lines' output budgets come from, and what it keeps alive.
pub struct ShellSetup {
    /// Shown in PSRP information records and in the log.
    pub user: String,
    pub workers: Arc<Workers>,
    /// `[limits] command_timeout` (None: no deadline).
    pub command_timeout: Option<Duration>,
    pub budget: Budget,
    /// Kept as long as the session lives — after the shell and its last line (the grant's
    /// guard: slot release, audit "session end").
    pub keep: Option<Box<dyn Send + Sync>>,
}

impl ShellSetup {
    /// A setup with the default per-line budget and no deadline (tests, tools).
    pub fn new(user: &str, workers: Arc<Workers>) -> ShellSetup {
        ShellSetup {
            user: user.to_string(),
            workers,
            command_timeout: None,
            budget: Budget::PerLine(MAX_BUFFERED_OUTPUT_PER_LINE),
            keep: None,
        }
    }
}

/// What a factory gets when the gates let a session through: the engine session, its endpoint,
/// the shell's setup (deadline, the grant's guard kept alive) and the limits the registry
/// enforces.
pub struct Opened {
    pub session: Session,
    pub endpoint: String,
    /// The audit log's id of the session.
    pub session_id: String,
    pub setup: ShellSetup,
    pub limits: ShellLimits,
}

/// Open a session for a shell through `gates` (the one opener) and turn the grant into what a
/// shell runs with; a refusal at any gate is the generic 401, a session limit a quota fault.
pub fn open_session(
    gates: &Arc<Gates>,
    workers: &Arc<Workers>,
    budgets: &UserBudgets,
    id: &Identity,
    endpoint: &str,
    origin: Origin,
    kind: SessionKind,
) -> Result<Opened, CreateError> {
    let grant = match gates.open(id, endpoint, origin, kind) {
        Ok(g) => g,
        Err(OpenError::Denied(_)) => return Err(CreateError::Refused),
        Err(e @ OpenError::SessionLimit { .. }) => {
            return Err(ShellError::QuotaLimit(e.to_string()).into())
        }
    };
    let setup = ShellSetup {
        command_timeout: Some(grant.limits.command_timeout),
        budget: Budget::Shared(budgets.for_user(&id.user, grant.limits.max_buffered_output_bytes)),
        keep: Some(Box::new(grant.guard)),
        ..ShellSetup::new(&id.user, workers.clone())
    };
    Ok(Opened {
        session: grant.session,
        endpoint: grant.endpoint,
        session_id: grant.session_id,
        setup,
        limits: grant.limits.shell,
    })
}

/// One output budget per user (`[limits] max_buffered_output_bytes`), shared by every shell and
/// pool of that user: what the user's commands produced and the client has not received yet,
/// all together. Created with the user's first session, gone with the last (the table keeps
/// weak references). The limit is the one in force when the user's first open session
/// started; a reload applies to the next one.
#[derive(Default)]
pub struct UserBudgets {
    map: Mutex<HashMap<String, Weak<OutputBudget>>>,
}

impl UserBudgets {
    pub fn new() -> Arc<UserBudgets> {
        Arc::new(UserBudgets::default())
    }

    /// `user`'s budget (user names are case-insensitive), created with `limit` bytes if the
    /// user has none alive.
    pub fn for_user(&self, user: &str, limit: usize) -> Arc<OutputBudget> {
        let key = user.to_lowercase();
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = m.get(&key).and_then(Weak::upgrade) {
            return b;
        }
        // Forget users whose sessions are all gone.
        m.retain(|_, w| w.strong_count() > 0);
        let b = OutputBudget::new(limit);
        m.insert(key, Arc::downgrade(&b));
        b
    }

    /// Bytes `user`'s commands hold for the client now (0 with no session).
    pub fn used(&self, user: &str) -> usize {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&user.to_lowercase())
            .and_then(Weak::upgrade)
            .map_or(0, |b| b.used())
    }

    /// Users with a budget alive.
    pub fn users(&self) -> usize {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.values().filter(|w| w.strong_count() > 0).count()
    }
}
