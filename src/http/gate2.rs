//! How the listener runs gate 2 for one request (issue 9, "gate 2 under load"): what
//! [`Authenticate::plan`] can decide without blocking (a remembered credential, a request
//! without credentials) is decided on the thread serving the connection, without a blocking
//! task; a password verification or a Negotiate leg first waits for a verification slot
//! ([`VerifySlots`]: bounded, fair between source addresses, with a deadline after which the
//! request gets the generic 401), then runs on a blocking thread.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::auth::slots::VerifySlots;
use crate::wsman::shell::{Authenticate, Connection, Plan, Verdict};

pub(super) type SharedConnection = Arc<Mutex<Connection>>;

/// The verification slots of one server, and the rate limit of their refusal log lines.
pub(super) struct Gate2 {
    pub(super) slots: Arc<VerifySlots>,
    throttle: super::Throttle,
}

impl Gate2 {
    pub(super) fn new(slots: Arc<VerifySlots>) -> Gate2 {
        Gate2 {
            slots,
            throttle: super::Throttle::default(),
        }
    }

    fn log_refusal(&self, peer: SocketAddr) {
        let Some(n) = self.throttle.count() else {
            return;
        };
        tracing::warn!(
            %peer,
            refused = n,
            "gate 2: refused (401): no password verification slot came free within {:?} ({} slots, at most {} per address; IPv6 per /64); {n} refused so since the last report",
            self.slots.deadline(),
            self.slots.total(),
            self.slots.per_source()
        );
    }
}

fn lock(conn: &SharedConnection) -> std::sync::MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` with the gate and the connection's gate-2 state on a blocking thread (None if it
/// panicked).
pub(super) async fn with_gate<T: Send + 'static>(
    gate: &Arc<dyn Authenticate>,
    conn: &SharedConnection,
    f: impl FnOnce(&dyn Authenticate, &mut Connection) -> T + Send + 'static,
) -> Option<T> {
    let gate = gate.clone();
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut c = lock(&conn);
        f(gate.as_ref(), &mut c)
    })
    .await
    .ok()
}

/// Runs `f` on this thread when the connection has no gate-2 state (nothing to decrypt or
/// encrypt: cheap), else as [`with_gate`].
pub(super) async fn with_gate_if_stateful<T: Send + 'static>(
    gate: &Arc<dyn Authenticate>,
    conn: &SharedConnection,
    f: impl FnOnce(&dyn Authenticate, &mut Connection) -> T + Send + 'static,
) -> Option<T> {
    {
        let mut c = lock(conn);
        if c.state.is_none() {
            return Some(f(gate.as_ref(), &mut c));
        }
    }
    with_gate(gate, conn, f).await
}

/// Gate 2 for one request with `authorization` (its `Authorization` header) on `conn`.
pub(super) async fn authenticate(
    gate: &Arc<dyn Authenticate>,
    gate2: &Gate2,
    conn: &SharedConnection,
    peer: SocketAddr,
    authorization: Option<Vec<u8>>,
) -> Verdict {
    let plan = {
        let mut c = lock(conn);
        gate.plan(&mut c, authorization.as_deref())
    };
    let _permit = match plan {
        Plan::Decided(v) => return v,
        Plan::Blocking => None,
        Plan::Verify => match gate2.slots.acquire(peer.ip()).await {
            Some(p) => Some(p),
            None => {
                gate2.log_refusal(peer);
                return Verdict::Refuse;
            }
        },
    };
    with_gate(gate, conn, move |g, c| {
        g.authenticate_connection(c, authorization.as_deref())
    })
    .await
    .unwrap_or(Verdict::Refuse)
}
