//! The web console's sessions, server-side: each behind a random 256-bit identifier (the cookie;
//! only its SHA-256 is kept, so the table holds nothing a cookie could be rebuilt from), with
//! its CSRF token, its shell, its idle clock and its request budget. A session ends when its
//! user signs out or runs `exit`, when it has been idle for `[console] idle_timeout` (no request
//! from its user and no command running), or when the server stops; ending it stops its command
//! and kills its programs. What ended a session is remembered for a while, so that the page can
//! say why.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::web;
use crate::engine::VisibleCommand;
use crate::shells::console::ConsoleShell;

/// Requests one session may make in a burst, and per second after it.
pub const RATE_BURST: f64 = 40.0;
pub const RATE_PER_SECOND: f64 = 10.0;
/// Longest warning before an idle time-out (shorter time-outs warn at half-time).
pub const MAX_IDLE_WARNING: Duration = Duration::from_secs(60);
/// How long the reason a session ended is kept, and for how many sessions at most.
pub const ENDED_KEPT: Duration = Duration::from_secs(3600);
pub const MAX_ENDED_KEPT: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a session ended (shown by the page after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    SignedOut,
    TimedOut,
    /// `exit` or `Exit-PSSession`.
    Exited,
    ServerStopped,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::SignedOut => "signed-out",
            Ended::TimedOut => "timed-out",
            Ended::Exited => "exited",
            Ended::ServerStopped => "server-stopped",
        }
    }
}

struct Clock {
    last_activity: Instant,
    tokens: f64,
    refilled: Instant,
}

/// One signed-in console.
pub struct ConsoleSession {
    pub user: String,
    /// The endpoint as configured.
    pub endpoint: String,
    /// The computer name signed in to, as configured (the prompt shows it).
    pub computer: String,
    /// The session's id in transcripts and the audit log (not the cookie).
    pub session_id: String,
    pub peer: SocketAddr,
    /// Compared (in constant time) with the token every state-changing request carries.
    pub csrf: String,
    pub shell: ConsoleShell,
    /// The session's command table as the user sees it (tab completion).
    pub visible: Vec<VisibleCommand>,
    pub idle_timeout: Duration,
    clock: Mutex<Clock>,
    polls: AtomicU64,
}

impl ConsoleSession {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        user: String,
        endpoint: String,
        computer: String,
        session_id: String,
        peer: SocketAddr,
        csrf: String,
        shell: ConsoleShell,
        visible: Vec<VisibleCommand>,
        idle_timeout: Duration,
        now: Instant,
    ) -> ConsoleSession {
        ConsoleSession {
            user,
            endpoint,
            computer,
            session_id,
            peer,
            csrf,
            shell,
            visible,
            idle_timeout,
            clock: Mutex::new(Clock {
                last_activity: now,
                tokens: RATE_BURST,
                refilled: now,
            }),
            polls: AtomicU64::new(0),
        }
    }

    /// A request from the user (not a poll): the idle clock starts again.
    pub fn touch(&self, now: Instant) {
        let mut c = lock(&self.clock);
        c.last_activity = c.last_activity.max(now);
    }

    /// Take one request from the session's budget; false when it is spent.
    pub fn allow_request(&self, now: Instant) -> bool {
        let mut c = lock(&self.clock);
        let elapsed = now.saturating_duration_since(c.refilled).as_secs_f64();
        c.tokens = (c.tokens + elapsed * RATE_PER_SECOND).min(RATE_BURST);
        c.refilled = c.refilled.max(now);
        if c.tokens >= 1.0 {
            c.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Time left before the idle time-out.
    pub fn remaining(&self, now: Instant) -> Duration {
        let last = lock(&self.clock).last_activity;
        self.idle_timeout
            .saturating_sub(now.saturating_duration_since(last))
    }

    /// How long before the time-out the page warns.
    pub fn warning(&self) -> Duration {
        (self.idle_timeout / 2).min(MAX_IDLE_WARNING)
    }

    /// A new long poll: returns its number; an older poll still waiting sees that it was
    /// superseded ([`ConsoleSession::current_poll`]) and answers at once.
    pub fn begin_poll(&self) -> u64 {
        self.polls.fetch_add(1, Ordering::SeqCst).saturating_add(1)
    }

    pub fn current_poll(&self) -> u64 {
        self.polls.load(Ordering::SeqCst)
    }
}

/// The key a session is kept under: the SHA-256 of its cookie.
fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// What a cookie found.
pub enum Lookup {
    Live(Arc<ConsoleSession>),
    /// It was a session, which ended this way.
    Ended(Ended),
    /// No session (never was, or forgotten).
    Unknown,
}

#[derive(Default)]
struct Inner {
    live: HashMap<[u8; 32], Arc<ConsoleSession>>,
    ended: HashMap<[u8; 32], (Ended, Instant)>,
}

/// Every console session of this server.
#[derive(Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Keep `session`; returns its cookie value (None when the OS gave no random bytes).
    pub fn insert(&self, session: ConsoleSession) -> Option<String> {
        let id = web::random_token()?;
        lock(&self.inner).live.insert(key(&id), Arc::new(session));
        Some(id)
    }

    /// The session behind a cookie value.
    pub fn get(&self, id: &str) -> Lookup {
        if !web::token_shaped(id) {
            return Lookup::Unknown;
        }
        let k = key(id);
        let inner = lock(&self.inner);
        if let Some(s) = inner.live.get(&k) {
            return Lookup::Live(s.clone());
        }
        match inner.ended.get(&k) {
            Some((why, _)) => Lookup::Ended(*why),
            None => Lookup::Unknown,
        }
    }

    /// End the session behind `id` (its command stopped, its programs killed).
    pub fn end(&self, id: &str, why: Ended, now: Instant) -> Option<Arc<ConsoleSession>> {
        if !web::token_shaped(id) {
            return None;
        }
        let k = key(id);
        let s = {
            let mut inner = lock(&self.inner);
            let s = inner.live.remove(&k)?;
            remember(&mut inner, k, why, now);
            s
        };
        finish(&s, why);
        Some(s)
    }

    /// Sessions live now.
    pub fn len(&self) -> usize {
        lock(&self.inner).live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live sessions of `user`.
    pub fn sessions_of(&self, user: &str) -> usize {
        lock(&self.inner)
            .live
            .values()
            .filter(|s| s.user.eq_ignore_ascii_case(user))
            .count()
    }

    /// End what ran `exit` or has been idle too long; returns what ended, and why. A running
    /// command keeps its session from idling out: idle time counts from its end.
    pub fn tick(&self, now: Instant) -> Vec<(Arc<ConsoleSession>, Ended)> {
        let mut done = Vec::new();
        {
            let mut inner = lock(&self.inner);
            let mut expired = Vec::new();
            for (k, s) in &inner.live {
                if s.shell.ended() {
                    expired.push((*k, Ended::Exited));
                } else if s.shell.busy() {
                    s.touch(now);
                } else if s.remaining(now).is_zero() {
                    expired.push((*k, Ended::TimedOut));
                }
            }
            for (k, why) in expired {
                if let Some(s) = inner.live.remove(&k) {
                    remember(&mut inner, k, why, now);
                    done.push((s, why));
                }
            }
            inner
                .ended
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ENDED_KEPT);
        }
        for (s, why) in &done {
            finish(s, *why);
        }
        done
    }

    /// The server is stopping: end every session.
    pub fn close_all(&self) {
        let now = Instant::now();
        let all: Vec<([u8; 32], Arc<ConsoleSession>)> = {
            let mut inner = lock(&self.inner);
            let all: Vec<_> = inner.live.drain().collect();
            for (k, _) in &all {
                remember(&mut inner, *k, Ended::ServerStopped, now);
            }
            all
        };
        for (_, s) in all {
            finish(&s, Ended::ServerStopped);
        }
    }
}

fn remember(inner: &mut Inner, k: [u8; 32], why: Ended, now: Instant) {
    if inner.ended.len() >= MAX_ENDED_KEPT {
        if let Some(oldest) = inner
            .ended
            .iter()
            .min_by_key(|(_, (_, at))| *at)
            .map(|(k, _)| *k)
        {
            inner.ended.remove(&oldest);
        }
    }
    inner.ended.insert(k, (why, now));
}

fn finish(s: &ConsoleSession, why: Ended) {
    s.shell.close();
    tracing::info!(
        user = %s.user,
        endpoint = %s.endpoint,
        session = %s.session_id,
        source = %s.peer.ip(),
        reason = why.as_str(),
        "console session ended"
    );
}
