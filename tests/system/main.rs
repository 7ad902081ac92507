//! Test binary `system`. Tests that reach the operating system: programs in the sandbox (credentials and capabilities read from /proc when root), live system cmdlets, PAM logins with throwaway accounts.
//!
//! One binary per area (link time on 2 cores); each module below was once its own test file.

#[path = "../sandbox_common/mod.rs"]
mod sandbox_common;
#[path = "../fixtures/config/shipped.rs"]
mod shipped;

mod auth_pam;
mod sandbox_fds;
mod sandbox_nonroot;
mod sandbox_programs;
mod sandbox_root;
mod syscmd_live;
