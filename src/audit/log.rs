//! The JSON-lines audit log: one object per line for every authentication, authorization
//! decision, session start/end and command. It has no field for a secret: passwords and
//! Authorization headers are never given to it.
#![forbid(unsafe_code)]

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// Longest text kept in one field (command lines, reasons); longer text is cut with `…`.
pub const MAX_FIELD_CHARS: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    #[default]
    Authentication,
    Authorization,
    SessionStart,
    SessionEnd,
    Command,
}

/// Which gate decided (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditGate {
    Transport,
    Authentication,
    Gateway,
    Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    Allow,
    Deny,
}

/// One audit record. Build it with struct-update syntax:
/// `AuditEvent { user: Some(u), ..AuditEvent::new(AuditKind::Authentication) }`.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct AuditEvent {
    /// RFC 3339, UTC; filled in by [`AuditLog::record`] when empty.
    pub timestamp: String,
    pub kind: AuditKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Client address ("local" for `keyhole run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<AuditGate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<AuditDecision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// How the client came (session start and end): "winrs", "psrp", "console", "local".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// The command line (kind `command`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl AuditEvent {
    pub fn new(kind: AuditKind) -> Self {
        AuditEvent {
            kind,
            ..Default::default()
        }
    }
}

fn cut(s: &mut Option<String>) {
    if let Some(text) = s {
        if text.chars().count() > MAX_FIELD_CHARS {
            let mut c: String = text.chars().take(MAX_FIELD_CHARS).collect();
            c.push('…');
            *text = c;
        }
    }
}

/// The audit log file, shared by every connection.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
    path: PathBuf,
}

impl AuditLog {
    /// Open (append, create 0600; its directory 0700 when missing).
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            }
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open audit log {}: {e}", path.display()),
                )
            })?;
        let meta = file.metadata()?;
        if meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(AuditLog {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one event as a JSON line and flush. A failure is logged (tracing) — the audit
    /// log must never take the server down.
    pub fn record(&self, event: &AuditEvent) {
        if let Err(e) = self.try_record(event) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }

    /// As [`record`](Self::record), reporting the error.
    pub fn try_record(&self, event: &AuditEvent) -> io::Result<()> {
        let mut ev = event.clone();
        if ev.timestamp.is_empty() {
            ev.timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        for f in [
            &mut ev.user,
            &mut ev.source,
            &mut ev.reason,
            &mut ev.endpoint,
            &mut ev.session_id,
            &mut ev.command,
        ] {
            cut(f);
        }
        let mut line = serde_json::to_vec(&ev).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(&line)?;
        f.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_snake_case_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.record(&AuditEvent {
            user: Some("alice".into()),
            source: Some("10.0.0.1".into()),
            gate: Some(AuditGate::Gateway),
            rule_id: Some(3),
            decision: Some(AuditDecision::Deny),
            reason: Some("no rule matched\nsecond line".into()),
            ..AuditEvent::new(AuditKind::Authorization)
        });
        log.record(&AuditEvent {
            command: Some("x".repeat(MAX_FIELD_CHARS + 10)),
            ..AuditEvent::new(AuditKind::Command)
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["kind"], "authorization");
        assert_eq!(v["gate"], "gateway");
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["rule_id"], 3);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("command").is_none());
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["kind"], "command");
        assert_eq!(
            v["command"].as_str().unwrap().chars().count(),
            MAX_FIELD_CHARS + 1
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn concurrent_records_stay_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = std::sync::Arc::new(AuditLog::open(&path).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for j in 0..50 {
                        log.record(&AuditEvent {
                            session_id: Some(format!("{i}-{j}")),
                            ..AuditEvent::new(AuditKind::SessionStart)
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 400);
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["kind"], "session_start");
        }
    }
}
