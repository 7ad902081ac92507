//! `systemd`: what keyhole says to systemd when it runs as a service, without libsystemd.
//!
//! - [`notify`]: the `sd_notify` datagram (`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…`)
//!   to `$NOTIFY_SOCKET` (a path, or an abstract name starting with `@`), for `Type=notify`.
//! - [`JournaldLayer`]: a `tracing` layer speaking journald's native protocol (one datagram per
//!   event to `/run/systemd/journal/socket`): `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`,
//!   `CODE_FILE`/`CODE_LINE`, and every field of the event as `KEYHOLE_<NAME>` (`gate`, `rule`,
//!   `user`, `endpoint`, `session_id`, `command`, … become `KEYHOLE_GATE`, …), so
//!   `journalctl -u keyhole KEYHOLE_GATE=3` finds the refusals at gate 3.
//! - [`stderr_is_journal`]: whether standard error is connected to the journal
//!   (`$JOURNAL_STREAM` names its device and inode), which is when the daemon logs natively.
//!
//! Values are capped at [`MAX_FIELD_BYTES`] (longer ones are cut and marked), so a datagram never
//! needs journald's file-descriptor fallback for large entries.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's native socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
/// Longest value sent in one journal field (bytes); longer values are cut.
pub const MAX_FIELD_BYTES: usize = 16 * 1024;
/// Most fields taken from one event (the rest are dropped).
pub const MAX_FIELDS: usize = 64;
/// The journal's SYSLOG_IDENTIFIER.
pub const IDENTIFIER: &str = "keyhole";

/// Send `state` (lines like `READY=1`) to `$NOTIFY_SOCKET`; false when there is none or the send
/// failed (logged at debug: not running under systemd is normal).
pub fn notify(state: &str) -> bool {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(s) => notify_to(&s.to_string_lossy(), state),
        None => false,
    }
}

/// Send `state` to the notification socket `socket` (a path, or `@name` for an abstract one).
pub fn notify_to(socket: &str, state: &str) -> bool {
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), socket)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(socket, error = %e, "sd_notify failed");
            false
        }
    }
}

/// Parse `$JOURNAL_STREAM` (`DEVICE:INODE`, decimal).
pub fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.split_once(':')?;
    Some((dev.trim().parse().ok()?, ino.trim().parse().ok()?))
}

/// True when standard error is the stream systemd connected to the journal (as systemd's
/// documentation says to check: `$JOURNAL_STREAM` equals stderr's device and inode).
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// journald's PRIORITY for a tracing level (syslog numbers).
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    }
}

/// `KEYHOLE_` and the field name upper-cased, with anything but `A-Z0-9_` turned into `_`.
fn journal_field_name(name: &str) -> String {
    let mut out = String::from("KEYHOLE_");
    for c in name.chars().take(48) {
        out.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        });
    }
    out
}

/// Append one field in the native format: `NAME=value\n`, or for values with a newline
/// `NAME\n` + little-endian 64-bit length + value + `\n`.
fn put_field(buf: &mut Vec<u8>, name: &str, value: &str) {
    let value = cap(value);
    if value.contains('\n') {
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    } else {
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'=');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
}

fn cap(v: &str) -> std::borrow::Cow<'_, str> {
    if v.len() <= MAX_FIELD_BYTES {
        return v.into();
    }
    let mut end = MAX_FIELD_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}…[cut at {MAX_FIELD_BYTES} bytes]",
        v.get(..end).unwrap_or("")
    )
    .into()
}

/// Collects an event's fields.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.push(field, s);
    }
}

impl Fields {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else if self.others.len() < MAX_FIELDS {
            self.others.push((journal_field_name(field.name()), value));
        }
    }
}

/// Sends every event to journald as one structured entry.
pub struct JournaldLayer {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournaldLayer {
    /// A layer sending to journald's socket at `path` (normally [`JOURNAL_SOCKET`]).
    pub fn connect(path: &Path) -> std::io::Result<JournaldLayer> {
        let socket = UnixDatagram::unbound()?;
        // Probe once so that a missing journald is found at start, not at the first event.
        socket.connect(path)?;
        Ok(JournaldLayer {
            socket,
            path: path.to_path_buf(),
        })
    }

    /// The datagram for one event.
    fn entry(&self, event: &Event<'_>) -> Vec<u8> {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut buf = Vec::with_capacity(256);
        put_field(&mut buf, "MESSAGE", &fields.message);
        put_field(&mut buf, "PRIORITY", priority(meta.level()));
        put_field(&mut buf, "SYSLOG_IDENTIFIER", IDENTIFIER);
        put_field(&mut buf, "KEYHOLE_TARGET", meta.target());
        if let Some(file) = meta.file() {
            put_field(&mut buf, "CODE_FILE", file);
        }
        if let Some(line) = meta.line() {
            put_field(&mut buf, "CODE_LINE", &line.to_string());
        }
        for (name, value) in &fields.others {
            put_field(&mut buf, name, value);
        }
        buf
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournaldLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let entry = self.entry(event);
        if self.socket.send(&entry).is_err() {
            // journald restarted (the connected socket is gone): try its path once more, then
            // fall back to standard error, which systemd also sends to the journal.
            let resent = UnixDatagram::unbound()
                .and_then(|s| s.send_to(&entry, &self.path))
                .is_ok();
            if !resent {
                let mut f = Fields::default();
                event.record(&mut f);
                eprintln!("{} {}", event.metadata().level(), f.message);
            }
        }
    }
}

/// Parse one native-protocol datagram into (name, value) pairs (for tests and tools).
pub fn parse_entry(mut data: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let nl = data.iter().position(|b| *b == b'\n')?;
        let line = data.get(..nl)?;
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            let name = String::from_utf8_lossy(line.get(..eq)?).into_owned();
            let value = String::from_utf8_lossy(line.get(eq + 1..)?).into_owned();
            out.push((name, value));
            data = data.get(nl + 1..)?;
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let len_bytes: [u8; 8] = data.get(nl + 1..nl + 9)?.try_into().ok()?;
            let len = usize::try_from(u64::from_le_bytes(len_bytes)).ok()?;
            let start = nl + 9;
            let value = data.get(start..start.checked_add(len)?)?;
            out.push((name, String::from_utf8_lossy(value).into_owned()));
            if data.get(start + len) != Some(&b'\n') {
                return None;
            }
            data = data.get(start + len + 1..)?;
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_sanitized_and_prefixed() {
        assert_eq!(journal_field_name("gate"), "KEYHOLE_GATE");
        assert_eq!(journal_field_name("session_id"), "KEYHOLE_SESSION_ID");
        assert_eq!(journal_field_name("a.b-c"), "KEYHOLE_A_B_C");
    }

    #[test]
    fn multi_line_values_use_the_binary_form() {
        let mut buf = Vec::new();
        put_field(&mut buf, "A", "x=y");
        put_field(&mut buf, "B", "one\ntwo");
        let mut want = b"A=x=y\nB\n".to_vec();
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(b"one\ntwo\n");
        assert_eq!(buf, want);
        assert_eq!(
            parse_entry(&buf).unwrap(),
            vec![
                ("A".to_string(), "x=y".to_string()),
                ("B".to_string(), "one\ntwo".to_string())
            ]
        );
    }

    #[test]
    fn long_values_are_cut() {
        let mut buf = Vec::new();
        put_field(&mut buf, "A", &"é".repeat(MAX_FIELD_BYTES));
        let v = &parse_entry(&buf).unwrap()[0].1;
        assert!(v.len() < MAX_FIELD_BYTES + 40);
        assert!(v.ends_with("[cut at 16384 bytes]"));
    }

    #[test]
    fn journal_stream_parsing() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream("81"), None);
    }

    #[test]
    fn notify_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        assert!(notify_to(path.to_str().unwrap(), "READY=1\nSTATUS=up"));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("keyhole-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(notify_to(&format!("@{name}"), "STOPPING=1"));
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(!notify_to(
            dir.path().join("nobody").to_str().unwrap(),
            "READY=1"
        ));
    }
}
