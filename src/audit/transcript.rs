//! Session transcripts: one file per session, PowerShell-transcript-like, every record written
//! before the engine goes on, and made durable (`fdatasync`) before anything runs.
//!
//! Durability, and what it costs (one sync per statement that runs, not one per record):
//! - the header is written when the session opens, and synced with the directory entry at the
//!   first [`Audit::commit`] (before the session's first command runs) or at the end;
//! - a line waits in memory for its first `[command]` or `[refused]` record and goes out with it
//!   in one `write`; [`Audit::commit`] then syncs once before the commands start;
//! - output, `[end]` and refusals are written (in the page cache: nothing is lost if keyhole is
//!   killed) and become durable with the next command's sync or the footer's.
//!
//! A transcript is bounded by `[limits] max_transcript_bytes` (set with
//! [`Transcript::set_max_bytes`]): once it holds that many bytes, output is no longer copied
//! into it — each pipeline's end record is preceded by `[output not recorded] N bytes in M
//! lines` — while the header, command lines, bound commands with their parameters, refusals and
//! end states are always written, so what ran stays on record whatever the size.
#![forbid(unsafe_code)]

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::engine::{Audit, BoundArgs, EndState, Value};

use super::KEYHOLE_VERSION;

const SEPARATOR: &str = "**********************";
/// Longest piece of a name kept in a transcript file name.
const MAX_NAME_PART: usize = 64;
/// Attempts at a unique file name when one already exists.
const MAX_NAME_ATTEMPTS: u32 = 100;
/// Longest rendering of one bound value (longer ones are cut, marked with `…`).
const MAX_VALUE_CHARS: usize = 4096;
/// Deepest nested value rendered.
const MAX_VALUE_DEPTH: usize = 8;

/// Who and what a session is; written at the top of its transcript.
#[derive(Debug, Clone)]
pub struct TranscriptHeader {
    pub user: String,
    pub groups: Vec<String>,
    pub run_as: String,
    pub endpoint: String,
    /// None: a local session (`keyhole run`).
    pub client_address: Option<String>,
    /// How the client came: "winrs", "psrp", "console" (the web console) or "local".
    pub transport: String,
    pub start_time: DateTime<Utc>,
    pub session_id: String,
}

/// One session's transcript file.
#[derive(Debug)]
pub struct Transcript {
    file: File,
    path: PathBuf,
    /// The directory, synced once (the new entry) at the first commit.
    dir: Option<PathBuf>,
    /// Records not written yet (a line waits for its first command or refusal).
    pending: String,
    /// Written since the last sync.
    unsynced: bool,
    /// `fdatasync`s so far (tests and the benchmark count them).
    syncs: u64,
    ended: bool,
    /// Bytes written so far.
    written: u64,
    /// Beyond this many bytes output is summarized, not copied.
    max_bytes: u64,
    /// Output of the current pipeline not copied: bytes, lines.
    skipped: (u64, u64),
    /// Output of the whole session not copied, bytes.
    skipped_total: u64,
}

/// File-name-safe: ASCII letters, digits, `.`, `_`, `-`; anything else becomes `_`; never
/// empty, never starting with `.`.
fn sanitize(part: &str) -> String {
    let mut s: String = part
        .chars()
        .take(MAX_NAME_PART)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        s.push('_');
    }
    if s.starts_with('.') {
        s.replace_range(..1, "_");
    }
    s
}

/// Escape what a terminal would interpret (control characters, bidirectional overrides), so
/// that reading a transcript with `cat` or `less` shows exactly what was sent.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\t') || bidi {
            let n = u32::from(c);
            if n < 0x100 {
                out.push_str(&format!("\\x{n:02x}"));
            } else {
                out.push_str(&format!("\\u{{{n:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Output lines that could be mistaken for a transcript record get a leading backslash.
fn output_line(line: &str) -> String {
    let c = clean(line);
    if ["PS>", ">>", "[", "*", "\\"]
        .iter()
        .any(|m| c.starts_with(m))
    {
        format!("\\{c}")
    } else {
        c
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn render_value(v: &Value, depth: usize) -> String {
    if depth > MAX_VALUE_DEPTH {
        return "…".into();
    }
    match v {
        Value::Null => "$null".into(),
        Value::Bool(true) => "$true".into(),
        Value::Bool(false) => "$false".into(),
        Value::Int(_) | Value::Double(_) => v.to_ps_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| render_value(i, depth + 1))
            .collect::<Vec<_>>()
            .join(","),
        other => quote(&other.to_ps_string()),
    }
}

fn cut(s: String) -> String {
    if s.chars().count() > MAX_VALUE_CHARS {
        let mut c: String = s.chars().take(MAX_VALUE_CHARS).collect();
        c.push('…');
        c
    } else {
        s
    }
}

/// `Name -Param 'value' -Switch` as PowerShell would write it.
fn render_command(name: &str, args: &BoundArgs) -> String {
    let mut s = clean(name);
    for (k, v) in &args.values {
        s.push_str(" -");
        s.push_str(&clean(k));
        match v {
            Value::Bool(true) => {} // a switch (or bool) given alone reads the same
            other => {
                s.push(' ');
                s.push_str(&clean(&cut(render_value(other, 0))));
            }
        }
    }
    s
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d%H%M%S").to_string()
}

impl Transcript {
    /// Create the transcript of a new session in `dir` (created 0700 when missing), file 0600,
    /// named `<yyyyMMddHHmmss>-<endpoint>-<user>-<sessionid>.txt` (UTC). The header is written
    /// when this returns (and synced, with the directory, before the first command runs: see
    /// the module); any failure is an error and the session must be refused.
    pub fn create(dir: &Path, header: &TranscriptHeader) -> io::Result<Transcript> {
        if !dir.exists() {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let meta = std::fs::metadata(dir)?;
        if !meta.is_dir() {
            return Err(io::Error::other(format!(
                "transcript directory {} is not a directory",
                dir.display()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            tracing::warn!(dir = %dir.display(), "transcript directory is writable by group or others; make it 0700");
        }
        let base = format!(
            "{}-{}-{}-{}",
            stamp(header.start_time),
            sanitize(&header.endpoint),
            sanitize(&header.user),
            sanitize(&header.session_id)
        );
        let mut attempt = 0u32;
        let (file, path) = loop {
            let name = if attempt == 0 {
                format!("{base}.txt")
            } else {
                format!("{base}-{attempt}.txt")
            };
            let path = dir.join(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => break (f, path),
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists && attempt < MAX_NAME_ATTEMPTS =>
                {
                    attempt += 1
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create transcript {}: {e}", path.display()),
                    ))
                }
            }
        };
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut t = Transcript {
            file,
            path,
            dir: Some(dir.to_path_buf()),
            pending: String::new(),
            unsynced: false,
            syncs: 0,
            ended: false,
            written: 0,
            max_bytes: u64::MAX,
            skipped: (0, 0),
            skipped_total: 0,
        };
        let h = header;
        let text = format!(
            "{SEPARATOR}\nPowerShell transcript start\nStart time: {}\nUsername: {}\nRunAs User: {}\nGroups: {}\nConfiguration Name: {}\nMachine: {} (Linux)\nClient Address: {}\nTransport: {}\nSession ID: {}\nHost Application: keyhole {KEYHOLE_VERSION}\nKeyhole Version: {KEYHOLE_VERSION}\nProcess ID: {}\nStart time (UTC): {}\n{SEPARATOR}\n",
            stamp(h.start_time),
            clean(&h.user),
            clean(&h.run_as),
            clean(&h.groups.join(", ")),
            clean(&h.endpoint),
            clean(&hostname()),
            clean(h.client_address.as_deref().unwrap_or("local")),
            clean(&h.transport),
            clean(&h.session_id),
            std::process::id(),
            h.start_time.to_rfc3339(),
        );
        t.pending = text;
        t.flush()?;
        Ok(t)
    }

    /// Where the transcript is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copy output only while the transcript holds fewer than `max` bytes (`[limits]
    /// max_transcript_bytes`); records of what ran are always written.
    pub fn set_max_bytes(&mut self, max: u64) {
        self.max_bytes = max;
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// How many times the file was synced (`fdatasync`) so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Write what is pending (one `write`), without syncing.
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.pending);
        self.unsynced = true;
        self.written = self.written.saturating_add(text.len() as u64);
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }

    /// Queue `text` and write everything pending.
    fn write(&mut self, text: &str) -> io::Result<()> {
        self.pending.push_str(text);
        self.flush()
    }

    /// Write what is pending and make everything written durable: one `fdatasync` (and, the
    /// first time, one `fsync` of the directory so that the new file's entry survives too).
    fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
            self.syncs += 1;
        }
        if let Some(dir) = &self.dir {
            File::open(dir)?.sync_all()?;
            self.dir = None;
        }
        Ok(())
    }

    /// The summary of the current pipeline's output that was not copied (if any).
    fn write_skipped(&mut self) -> io::Result<()> {
        let (bytes, lines) = std::mem::take(&mut self.skipped);
        if bytes == 0 && lines == 0 {
            return Ok(());
        }
        let text = format!(
            "[output not recorded] {bytes} bytes in {lines} lines: this transcript reached max_transcript_bytes ({} bytes)\n",
            self.max_bytes
        );
        self.write(&text)
    }

    /// Write the end marker and sync (also done on drop).
    pub fn finish(&mut self) -> io::Result<()> {
        self.finish_with(None)
    }

    /// Write the end marker with why the session ended (`End reason: closed by the
    /// administrator`, `End reason: idle for 20m (idle_timeout)`), when known.
    pub fn finish_with(&mut self, reason: Option<&str>) -> io::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.ended = true;
        self.write_skipped()?;
        let not_recorded = if self.skipped_total > 0 {
            format!(
                "Output not recorded: {} bytes (max_transcript_bytes = {})\n",
                self.skipped_total, self.max_bytes
            )
        } else {
            String::new()
        };
        let why = reason
            .map(|r| format!("End reason: {}\n", clean(r)))
            .unwrap_or_default();
        let text = format!(
            "{SEPARATOR}\nPowerShell transcript end\nEnd time: {}\n{why}{not_recorded}{SEPARATOR}\n",
            stamp(Utc::now())
        );
        self.pending.push_str(&text);
        self.sync()
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!(path = %self.path.display(), error = %e, "cannot end transcript");
        }
    }
}

impl Audit for Transcript {
    fn line(&mut self, line: &str) -> io::Result<()> {
        let text = &mut self.pending;
        text.push_str(&format!(
            "{SEPARATOR}\nCommand start time: {}\n{SEPARATOR}\n",
            stamp(Utc::now())
        ));
        let body = line.strip_suffix('\n').unwrap_or(line);
        for (i, l) in body.split('\n').enumerate() {
            text.push_str(if i == 0 { "PS>" } else { ">> " });
            text.push_str(&clean(l.strip_suffix('\r').unwrap_or(l)));
            text.push('\n');
        }
        Ok(())
    }

    fn command(&mut self, name: &str, args: &BoundArgs) -> io::Result<()> {
        let text = format!("[command] {}\n", render_command(name, args));
        self.write(&text)
    }

    fn refused(&mut self, reason: &str) -> io::Result<()> {
        let text: String = reason
            .split('\n')
            .map(|l| format!("[refused] {}\n", clean(l)))
            .collect();
        self.write(&text)
    }

    fn output(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let body = text.strip_suffix('\n').unwrap_or(text);
        let lines = body.split('\n').count() as u64;
        if self.written.saturating_add(text.len() as u64) > self.max_bytes {
            self.skipped.0 = self.skipped.0.saturating_add(text.len() as u64);
            self.skipped.1 = self.skipped.1.saturating_add(lines);
            self.skipped_total = self.skipped_total.saturating_add(text.len() as u64);
            return Ok(());
        }
        let mut out = String::with_capacity(body.len() + 16);
        for l in body.split('\n') {
            out.push_str(&output_line(l.strip_suffix('\r').unwrap_or(l)));
            out.push('\n');
        }
        self.write(&out)
    }

    fn end(&mut self, state: EndState) -> io::Result<()> {
        self.write_skipped()?;
        let text = format!("[end] {state}\n");
        self.write(&text)
    }

    fn commit(&mut self) -> io::Result<()> {
        self.sync()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("Help desk/../x"), "Help_desk_.._x");
        assert_eq!(sanitize(".."), "_.");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("DOMAIN\\alice"), "DOMAIN_alice");
        assert_eq!(sanitize(&"a".repeat(500)).len(), MAX_NAME_PART);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("a\u{1b}[31mred\u{7}"), "a\\x1b[31mred\\x07");
        assert_eq!(clean("x\u{202e}y\tz"), "x\\u{202e}y\tz");
        assert_eq!(output_line("PS>rm -rf /"), "\\PS>rm -rf /");
        assert_eq!(output_line("[command] fake"), "\\[command] fake");
        assert_eq!(output_line("plain"), "plain");
    }

    #[test]
    fn commands_render_like_powershell() {
        let mut b = BoundArgs::default();
        b.set("Name", Value::from("it's"));
        b.set("Id", Value::Array(vec![Value::Int(1), Value::Int(2)]));
        b.set("Force", Value::Bool(true));
        b.set("Enabled", Value::Bool(false));
        assert_eq!(
            render_command("Stop-Thing", &b),
            "Stop-Thing -Name 'it''s' -Id 1,2 -Force -Enabled $false"
        );
    }
}
