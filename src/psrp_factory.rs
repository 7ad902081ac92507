//! `psrp_factory`: plugs PSRP runspace pools into the WS-Man server for
//! `http://schemas.microsoft.com/powershell/<ConfigurationName>` (the configuration name picks
//! the endpoint; gates 3–4 already ran for it), and enforces `max_sessions_per_user`, which
//! counts a user's open runspace pools.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::gates::Gates;
use crate::psrp::PsrpShell;
use crate::server::{Server, SessionGrant};
use crate::wsman::envelope::URI_POWERSHELL_PREFIX;
use crate::wsman::service::ShellFactory;
use crate::wsman::shell::{CreateRequest, Shell, ShellError, ShellOwner};

/// Open pools per user (lower-case name).
type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// Creates a [`PsrpShell`] per runspace pool.
pub struct PsrpFactory {
    gates: Arc<Gates>,
    open: Counts,
}

/// Releases a user's pool slot when the pool goes away.
struct Slot {
    open: Counts,
    user: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

impl PsrpFactory {
    pub fn new(gates: Arc<Gates>) -> Self {
        PsrpFactory {
            gates,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The endpoint's `max_sessions_per_user`, else `[limits]`.
    fn limit(&self, endpoint: &str) -> usize {
        let cfg = self.gates.config();
        let ep = cfg
            .endpoint(endpoint)
            .and_then(|e| e.config.max_sessions_per_user);
        ep.unwrap_or(cfg.server.limits.max_sessions_per_user).0 as usize
    }
}

impl ShellFactory for PsrpFactory {
    fn create(
        &self,
        _resource_uri: &str,
        grant: SessionGrant,
        owner: &ShellOwner,
        _req: &CreateRequest,
    ) -> Result<Box<dyn Shell>, ShellError> {
        let user = owner.user.to_lowercase();
        let limit = self.limit(&grant.endpoint);
        {
            let mut m = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(user.clone()).or_insert(0);
            if *n >= limit {
                tracing::warn!(user = %owner.user, endpoint = %grant.endpoint, limit, "refused: max_sessions_per_user reached");
                return Err(ShellError::QuotaLimit(format!(
                    "user {} already has {n} open sessions (max_sessions_per_user = {limit})",
                    owner.user
                )));
            }
            *n += 1;
        }
        let slot = Slot {
            open: self.open.clone(),
            user,
        };
        let guard: Box<dyn Send> = Box::new((slot, grant.guard));
        Ok(Box::new(
            PsrpShell::new(grant.session, &owner.user).with_guard(Some(guard)),
        ))
    }
}

/// Register the PSRP shell factory on the server.
pub fn register(server: &mut Server, gates: Arc<Gates>) {
    server.register_shell_factory(URI_POWERSHELL_PREFIX, Arc::new(PsrpFactory::new(gates)));
}
