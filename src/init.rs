//! `keyhole init [--dir DIR]`: a working configuration in an empty (or absent) directory — the
//! package's `keyhole.toml`, the shipped endpoints, role capabilities and authorization rules
//! (no `users.toml`: `keyhole user add` creates it) — the endpoints' `run_as` accounts (created
//! with useradd as root, or the exact useradd lines printed otherwise), a self-signed TLS
//! certificate, and what to do next. It never overwrites anything: a file that exists stops it
//! before anything is written.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{EndpointConfig, ServerConfig};

/// The configuration directory of the package and of `keyhole init` without `--dir`.
pub const SYSTEM_DIR: &str = "/etc/keyhole";

/// The server configuration `init` writes (and the Debian package installs).
pub const KEYHOLE_TOML: &str = include_str!("../packaging/keyhole.toml");

/// The shipped examples and rules, as (path relative to the configuration directory, content).
fn shipped() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    std::iter::once(&crate::config::shipped::RULES).chain(crate::config::shipped::EXAMPLES)
}

/// The `keyhole.toml` for `dir`: the package's, with the writable paths under `dir` unless `dir`
/// is the system directory (where the service's StateDirectory/LogsDirectory are used).
pub fn keyhole_toml_for(dir: &Path) -> String {
    if dir == Path::new(SYSTEM_DIR) {
        return KEYHOLE_TOML.to_string();
    }
    KEYHOLE_TOML
        .replace(
            "state_directory = \"/var/lib/keyhole\"",
            "state_directory = \"state\"",
        )
        .replace(
            "transcript_directory = \"/var/log/keyhole/transcripts\"",
            "transcript_directory = \"transcripts\"",
        )
        .replace(
            "audit_log = \"/var/log/keyhole/audit.jsonl\"",
            "audit_log = \"state/audit.jsonl\"",
        )
}

/// The `run_as` accounts the shipped endpoints name, in order, without duplicates.
pub fn run_as_accounts() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (path, text) in shipped() {
        if !path.starts_with("endpoints/") {
            continue;
        }
        if let Ok(ep) = toml::from_str::<EndpointConfig>(text) {
            if ep.run_as != "root" && !out.contains(&ep.run_as) {
                out.push(ep.run_as);
            }
        }
    }
    out
}

/// The useradd command line for a run_as account (no home, no login shell).
pub fn useradd_args(account: &str) -> Vec<String> {
    [
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        account,
    ]
    .map(String::from)
    .to_vec()
}

fn useradd_path() -> Option<PathBuf> {
    ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Create `path` with `text`; fails if anything is already there.
fn create_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (keyhole init never overwrites a file)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `keyhole init`.
pub fn run(dir: &Path) -> Result<ExitCode> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("{} exists and is not a directory", dir.display());
        }
        let mut entries: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        if !entries.is_empty() {
            entries.sort();
            entries.truncate(8);
            eprintln!(
                "keyhole init: {} is not empty ({}); nothing was written.\nkeyhole init never overwrites a configuration: give another --dir, or validate the existing one with `keyhole check --config {}`",
                dir.display(),
                entries.join(", "),
                dir.join("keyhole.toml").display()
            );
            return Ok(ExitCode::from(1));
        }
    }
    let toml_text = keyhole_toml_for(dir);
    let server: ServerConfig =
        toml::from_str(&toml_text).map_err(|e| anyhow!("the built-in keyhole.toml: {e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_path = dir.join("keyhole.toml");
    create_file(&config_path, &toml_text, 0o644)?;
    for (rel, text) in shipped() {
        let mode = if rel.starts_with("authorization-rules") {
            0o600
        } else {
            0o644
        };
        create_file(&dir.join(rel), text, mode)?;
    }
    println!("keyhole init: wrote {}:", dir.display());
    println!("  keyhole.toml, authorization-rules.toml, endpoints/ (Helpdesk, Vendor), role-capabilities/ (ServiceOperator, Diagnostics, VendorReadOnly)");

    // The run_as accounts.
    let accounts = run_as_accounts();
    let root = nix::unistd::geteuid().is_root();
    let mut missing: Vec<String> = Vec::new();
    for a in &accounts {
        if nix::unistd::User::from_name(a).ok().flatten().is_some() {
            println!("  run_as account {a}: exists");
            continue;
        }
        match (root, useradd_path()) {
            (true, Some(useradd)) => {
                let status = std::process::Command::new(&useradd)
                    .args(useradd_args(a))
                    .status()
                    .with_context(|| format!("cannot run {}", useradd.display()))?;
                if status.success() {
                    println!(
                        "  run_as account {a}: created (useradd {})",
                        useradd_args(a).join(" ")
                    );
                } else {
                    println!("  run_as account {a}: useradd failed ({status})");
                    missing.push(a.clone());
                }
            }
            _ => missing.push(a.clone()),
        }
    }
    if !missing.is_empty() {
        println!("\nThe endpoints run programs as accounts that do not exist yet. As root, run:");
        for a in &missing {
            println!("  useradd {}", useradd_args(a).join(" "));
        }
    }

    // The self-signed certificate, where `serve` would generate it.
    let rt = crate::http::ServerRuntime::from_config(&server, dir);
    match crate::http::tls::load_or_generate_certificate(&rt) {
        Ok((_, _, fp)) => println!(
            "  TLS certificate: {} (self-signed, SHA-256 {fp})",
            rt.state_directory.join(crate::http::tls::SELF_SIGNED_CERT).display()
        ),
        Err(e) => println!(
            "  TLS certificate: not generated ({e}); `keyhole serve` generates it at its first start"
        ),
    }

    let cfg_arg = if dir == Path::new(SYSTEM_DIR) {
        String::new()
    } else {
        format!(" --config {}", config_path.display())
    };
    println!(
        "\nNext:
  1. Add people: keyhole user add alice --group helpdesk{cfg_arg}
     (or set [auth] pam_service to log in with the machine's accounts, SSSD/AD included)
  2. Check:      keyhole check{cfg_arg}
  3. Let the run_as accounts restart the services their roles grant:
                 keyhole polkit --write{cfg_arg}
  4. Start:      systemctl enable --now keyhole   (or: keyhole serve{cfg_arg})
  5. Connect:    see `keyhole demo` for the pywinrm, pypsrp and PowerShell commands.
Listeners are loopback-only until you change [listener] in {}.",
        config_path.display()
    );
    let _ = std::io::stdout().flush();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn writable_paths_follow_the_directory() {
        let sys = keyhole_toml_for(Path::new(SYSTEM_DIR));
        assert!(sys.contains("state_directory = \"/var/lib/keyhole\""));
        let other = keyhole_toml_for(Path::new("/tmp/x"));
        for want in [
            "state_directory = \"state\"",
            "transcript_directory = \"transcripts\"",
            "audit_log = \"state/audit.jsonl\"",
        ] {
            assert!(other.contains(want), "{want}");
        }
        assert!(!other.contains("/var/"));
        let parsed: ServerConfig = toml::from_str(&other).unwrap();
        assert_eq!(parsed.state_directory, "state");
    }

    #[test]
    fn accounts_of_the_shipped_endpoints() {
        assert_eq!(
            run_as_accounts(),
            vec!["keyhole-helpdesk", "keyhole-vendor"]
        );
    }
}
