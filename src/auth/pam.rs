//! PAM password checks (`[auth] pam_service`) and group lookup from the OS (getgrouplist).
//!
//! The FFI lives in `sys::pam` (libpam loaded at run time): its conversation answers the
//! user-name prompt with the name and the hidden prompt with the password and never logs either.
//! Only `pam_authenticate` and `pam_acct_mgmt` run: no session is opened and no credentials are
//! established, so nothing changes the server's environment.
#![forbid(unsafe_code)]

use std::ffi::CString;

/// Runs `pam_authenticate` then `pam_acct_mgmt` for `user` in `service` (through `sys::pam`,
/// which loads libpam at run time). The error text is for the log (it names the PAM step and
/// code, never the password).
pub(crate) fn authenticate(service: &str, user: &str, password: &str) -> Result<(), String> {
    crate::sys::pam::authenticate(service, user, password).map_err(|e| e.to_string())
}

/// Most OS groups read for one account.
pub const MAX_OS_GROUPS: usize = 4096;

/// The names of the groups `user` belongs to according to the OS (primary group included, at
/// most [`MAX_OS_GROUPS`]); `None` when the system's user database does not know the account,
/// empty when its groups cannot be read (logged). Only `auth::groups_of` calls this.
pub(super) fn os_groups(user: &str) -> Option<Vec<String>> {
    let account = match nix::unistd::User::from_name(user) {
        Ok(Some(a)) => a,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(user, error = %e, "cannot look up the account's groups");
            return None;
        }
    };
    let Ok(cname) = CString::new(user) else {
        return None;
    };
    let gids = match nix::unistd::getgrouplist(&cname, account.gid) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(user, error = %e, "getgrouplist failed; the user gets no groups");
            return Some(Vec::new());
        }
    };
    let mut names: Vec<String> = Vec::new();
    for gid in gids.into_iter().take(MAX_OS_GROUPS) {
        match nix::unistd::Group::from_gid(gid) {
            Ok(Some(g)) => {
                if !names.contains(&g.name) {
                    names.push(g.name);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(user, gid = gid.as_raw(), error = %e, "cannot name group"),
        }
    }
    Some(names)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_group_root() {
        assert!(os_groups("root").unwrap().contains(&"root".to_string()));
    }

    #[test]
    fn unknown_account_has_no_groups() {
        assert_eq!(os_groups("no-such-user-keyhole-xyz"), None);
    }

    #[test]
    fn nul_bytes_are_refused_before_pam() {
        assert!(authenticate("login", "a\0b", "x").is_err());
    }
}
