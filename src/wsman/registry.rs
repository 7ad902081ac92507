//! The shell registry: every open shell keyed by ShellId, owned by one user. Another user's
//! ShellId looks exactly like an unknown one. Enforces the per-user shell quota and the idle
//! timeout (closing a shell kills what runs in it and answers every Receive waiting on it).
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::shell::{Shell, ShellError, ShellLimits, StreamName};

/// Who opened a shell (user name as authenticated, client address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOwner {
    pub user: String,
    pub client: String,
}

/// One open shell.
pub struct ShellEntry {
    pub id: String,
    pub owner: ShellOwner,
    pub resource_uri: String,
    pub input_streams: Vec<StreamName>,
    pub output_streams: Vec<StreamName>,
    /// The client's environment variables (shown back in Create/Get responses).
    pub environment: Vec<(String, String)>,
    pub idle_timeout: Duration,
    pub created: Instant,
    shell: Mutex<Box<dyn Shell>>,
    notify: Arc<Notify>,
    last_used: Mutex<Instant>,
    /// Requests currently using this shell (a long-polling Receive keeps it alive).
    busy: AtomicUsize,
    /// Deleted, expired or shut down: a Receive still waiting answers at once.
    closed: AtomicBool,
}

impl ShellEntry {
    pub fn new(
        id: String,
        owner: ShellOwner,
        resource_uri: String,
        streams: (Vec<StreamName>, Vec<StreamName>),
        limits: ShellLimits,
        shell: Box<dyn Shell>,
    ) -> ShellEntry {
        let (input_streams, output_streams) = streams;
        let notify = shell.notify();
        ShellEntry {
            id,
            owner,
            resource_uri,
            input_streams,
            output_streams,
            environment: Vec::new(),
            idle_timeout: limits.idle_timeout,
            created: Instant::now(),
            shell: Mutex::new(shell),
            notify,
            last_used: Mutex::new(Instant::now()),
            busy: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The shell, locked (shell methods never block, so a std mutex is right here).
    pub fn shell(&self) -> MutexGuard<'_, Box<dyn Shell>> {
        self.shell.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn inactivity(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Mark the shell in use until the guard drops.
    pub fn use_guard(self: &Arc<Self>) -> UseGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.touch();
        UseGuard(self.clone())
    }

    /// The shell was deleted, expired or shut down.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Close the shell and answer every Receive waiting on it (they see `is_closed`).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.shell().close();
        self.notify.notify_waiters();
    }
}

/// Keeps a shell from being reaped while a request uses it.
pub struct UseGuard(Arc<ShellEntry>);
impl Drop for UseGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

fn key(id: &str) -> String {
    id.to_ascii_uppercase()
}

fn same_user(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// Shells the server closed whose owners are told why on their next request (bounded).
pub const MAX_REMEMBERED_CLOSED: usize = 1024;
/// How long the reason a shell was closed is remembered.
pub const REMEMBER_CLOSED_FOR: Duration = Duration::from_secs(3600);

/// A shell the server closed by itself, and why.
struct ClosedShell {
    key: String,
    user: String,
    reason: String,
    at: Instant,
}

/// Every open shell.
#[derive(Default)]
pub struct Registry {
    shells: Mutex<HashMap<String, Arc<ShellEntry>>>,
    /// Shells closed by the server (idle timeout), newest last; at most
    /// [`MAX_REMEMBERED_CLOSED`], each for [`REMEMBER_CLOSED_FOR`].
    closed: Mutex<VecDeque<ClosedShell>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<ShellEntry>>> {
        self.shells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a shell unless its owner already has `max_shells` (checked and inserted atomically).
    /// On refusal the shell is handed back so the caller can close it.
    pub fn insert(
        &self,
        entry: ShellEntry,
        max_shells: usize,
    ) -> Result<Arc<ShellEntry>, (ShellError, Box<ShellEntry>)> {
        let mut map = self.map();
        let count = map
            .values()
            .filter(|e| same_user(&e.owner.user, &entry.owner.user))
            .count();
        if count >= max_shells {
            return Err((
                ShellError::QuotaLimit(format!(
                    "user {} already has {count} shells",
                    entry.owner.user
                )),
                Box::new(entry),
            ));
        }
        let k = key(&entry.id);
        if map.contains_key(&k) {
            return Err((
                ShellError::Malformed(format!("ShellId {} is already in use", entry.id)),
                Box::new(entry),
            ));
        }
        let e = Arc::new(entry);
        map.insert(k, e.clone());
        Ok(e)
    }

    /// The shell `id` if `user` owns it; None for unknown shells and other users' shells alike.
    pub fn get(&self, id: &str, user: &str) -> Option<Arc<ShellEntry>> {
        self.map()
            .get(&key(id))
            .filter(|e| same_user(&e.owner.user, user))
            .cloned()
    }

    /// Remove and close the shell `id` if `user` owns it.
    pub fn delete(&self, id: &str, user: &str) -> bool {
        let removed = {
            let mut map = self.map();
            match map.get(&key(id)) {
                Some(e) if same_user(&e.owner.user, user) => map.remove(&key(id)),
                _ => None,
            }
        };
        match removed {
            Some(e) => {
                e.close();
                true
            }
            None => false,
        }
    }

    /// Number of shells `user` has open.
    pub fn count_for(&self, user: &str) -> usize {
        self.map()
            .values()
            .filter(|e| same_user(&e.owner.user, user))
            .count()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Why the server closed shell `id` of `user`, if it did so recently (idle timeout). None
    /// for a shell of another user, as for one that never existed.
    pub fn closed_reason(&self, id: &str, user: &str) -> Option<String> {
        let k = key(id);
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        closed
            .iter()
            .rev()
            .find(|c| {
                c.key == k && same_user(&c.user, user) && c.at.elapsed() < REMEMBER_CLOSED_FOR
            })
            .map(|c| c.reason.clone())
    }

    fn remember_closed(&self, e: &ShellEntry, reason: String) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        while closed.len() >= MAX_REMEMBERED_CLOSED
            || closed
                .front()
                .is_some_and(|c| c.at.elapsed() >= REMEMBER_CLOSED_FOR)
        {
            closed.pop_front();
        }
        closed.push_back(ClosedShell {
            key: key(&e.id),
            user: e.owner.user.clone(),
            reason,
            at: Instant::now(),
        });
    }

    /// Close every shell idle longer than its idle timeout (and not in use); returns their ids.
    pub fn reap_idle(&self) -> Vec<String> {
        let expired: Vec<Arc<ShellEntry>> = {
            let mut map = self.map();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, e)| {
                    e.busy.load(Ordering::SeqCst) == 0 && e.inactivity() >= e.idle_timeout
                })
                .map(|(k, _)| k.clone())
                .collect();
            ids.iter().filter_map(|k| map.remove(k)).collect()
        };
        for e in &expired {
            tracing::info!(shell = %e.id, user = %e.owner.user, "closing idle shell after {:?}", e.idle_timeout);
            self.remember_closed(
                e,
                format!(
                    "The shell {} was closed by the server because it was idle for longer than its idle timeout ({} s); its session and anything still running in it ended. Open a new shell (a new session) and run the command again.",
                    e.id,
                    e.idle_timeout.as_secs()
                ),
            );
            e.close();
        }
        expired.iter().map(|e| e.id.clone()).collect()
    }

    /// Close every shell (shutdown).
    pub fn close_all(&self) {
        let all: Vec<Arc<ShellEntry>> = self.map().drain().map(|(_, e)| e).collect();
        for e in all {
            e.close();
        }
    }
}
