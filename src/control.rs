//! `control`: the control socket, through which `keyhole sessions` reaches the running server.
//!
//! A Unix stream socket, [`SOCKET_NAME`] in `state_directory` (the directory 0700 when keyhole
//! creates it, the socket 0600, both owned by the server's account). For each connection the
//! server first reads the peer's credentials from the kernel (`SO_PEERCRED`) and refuses every
//! uid but 0 and its own; then it reads one request line (at most [`MAX_REQUEST`] bytes, within
//! [`REQUEST_TIMEOUT`]), writes one JSON line and closes. At most [`MAX_CONNECTIONS`] are served
//! at once; more are closed at once.
//!
//! Requests (ASCII, one line): `list`, or `close ID` (a session id, or at least
//! [`MIN_ID_PREFIX`](crate::sessions::MIN_ID_PREFIX) characters of one). Answers:
//! `{"version":1,"sessions":[…]}`, `{"version":1,"closed":{…}}`, `{"version":1,"error":"…"}`,
//! sessions as [`SessionInfo`]. Closing goes through the session list
//! ([`SessionTable::close`]), which closes the shell as its idle time-out would.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::sessions::{SessionInfo, SessionTable};
use crate::wsman::shell::close_reason;

/// The socket's file name in `state_directory`.
pub const SOCKET_NAME: &str = "control.sock";
/// Longest request line, bytes (with its newline).
pub const MAX_REQUEST: usize = 1024;
/// Time a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Longest a refused peer's connection stays open (its answer written, its request drained).
pub const REFUSED_LINGER: Duration = Duration::from_secs(1);
/// Longest answer the client reads, bytes.
pub const MAX_RESPONSE: u64 = 64 * 1024 * 1024;
/// Time the client waits for the server.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The protocol's version, in every answer.
pub const VERSION: u32 = 1;

/// Where the control socket of a server with this state directory is.
pub fn socket_path(state_directory: &Path) -> PathBuf {
    state_directory.join(SOCKET_NAME)
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The live sessions.
    List,
    /// Close the session with this id (or unique prefix).
    Close(String),
}

impl Request {
    /// Parse a request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, String> {
        let line = line.trim();
        let (verb, rest) = match line.split_once(char::is_whitespace) {
            Some((v, r)) => (v, r.trim()),
            None => (line, ""),
        };
        match (verb.to_ascii_lowercase().as_str(), rest) {
            ("list", "") => Ok(Request::List),
            ("close", id)
                if !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                Ok(Request::Close(id.to_string()))
            }
            ("close", id) => Err(format!(
                "`close` takes one session id (letters, digits and `-`), not {id:?}"
            )),
            _ => Err(format!(
                "unknown request {:?}: the control socket answers `list` and `close ID`",
                verb.chars().take(32).collect::<String>()
            )),
        }
    }

    /// The request as sent (with its newline).
    pub fn to_line(&self) -> String {
        match self {
            Request::List => "list\n".into(),
            Request::Close(id) => format!("close {id}\n"),
        }
    }
}

/// One answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<SessionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn error(msg: impl Into<String>) -> Response {
        Response {
            version: VERSION,
            error: Some(msg.into()),
            ..Response::default()
        }
    }

    fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"version\":{VERSION},\"error\":\"cannot encode the answer: {e}\"}}")
        });
        s.push('\n');
        s
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another keyhole server answers on {0}: two servers must not share a state_directory")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; move it away (keyhole will not remove it)")]
    NotASocket(PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A bound control socket (see [`serve`]).
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file, so that shutdown removes only its own.
    id: (u64, u64),
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Create `state_directory` (0700) if missing and bind [`SOCKET_NAME`] there, mode 0600. A
/// socket left by a server that died is replaced; one a live server answers on is not.
/// Call inside a tokio runtime.
pub fn bind(state_directory: &Path) -> Result<ControlSocket, BindError> {
    let path = socket_path(state_directory);
    let io = |source: std::io::Error| BindError::Io {
        path: path.clone(),
        source,
    };
    crate::gates::create_private_dir(state_directory).map_err(io)?;
    if let Ok(m) = std::fs::metadata(state_directory) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                dir = %state_directory.display(),
                "state_directory is open to group or others (mode {:o}); make it 0700 (the control socket is still checked per connection)",
                m.permissions().mode() & 0o7777
            );
        }
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(BindError::InUse(path));
            }
            std::fs::remove_file(&path).map_err(io)?;
        }
        Ok(_) => return Err(BindError::NotASocket(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let meta = std::fs::symlink_metadata(&path).map_err(io)?;
    std_listener.set_nonblocking(true).map_err(io)?;
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(io)?;
    Ok(ControlSocket {
        listener,
        id: (meta.dev(), meta.ino()),
        path,
    })
}

/// Serve the control socket until `shutdown` completes, then remove the socket file (if it is
/// still the one bound here).
pub async fn serve(
    sock: ControlSocket,
    table: Arc<SessionTable>,
    shutdown: impl Future<Output = ()>,
) {
    let own_uid = nix::unistd::geteuid().as_raw();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = sock.listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("control socket: too many connections at once; one closed");
            continue;
        };
        let table = table.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handle(stream, &table, own_uid).await;
        });
    }
    if std::fs::symlink_metadata(&sock.path).is_ok_and(|m| (m.dev(), m.ino()) == sock.id) {
        let _ = std::fs::remove_file(&sock.path);
    }
}

async fn handle(mut stream: tokio::net::UnixStream, table: &SessionTable, own_uid: u32) {
    // SO_PEERCRED: the kernel's record of who connected (tokio reads it; no new dependency).
    let creds = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot read the peer's credentials; connection closed");
            return;
        }
    };
    let (uid, pid) = (creds.uid(), creds.pid().unwrap_or(0));
    if uid != 0 && uid != own_uid {
        tracing::warn!(
            uid,
            pid,
            "control socket: refused a connection from uid {uid} (only root and the server's account, uid {own_uid}, may use it)"
        );
        let r = Response::error(format!(
            "refused: uid {uid} may not use the control socket (only root and the server's account)"
        ));
        // Answer first, then take in (briefly) what it sent: closing on unread data would
        // reset the connection and lose the answer. A refused peer holds a slot for at most
        // REFUSED_LINGER.
        let _ = tokio::time::timeout(REFUSED_LINGER, async {
            let _ = stream.write_all(r.to_line().as_bytes()).await;
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 256];
            let mut left = MAX_REQUEST;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        return;
    }
    let answer = match read_request(&mut stream).await {
        Ok(req) => answer(req, table, uid),
        Err(e) => {
            tracing::info!(uid, pid, "control socket: bad request: {e}");
            Response::error(e)
        }
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let _ = stream.write_all(answer.to_line().as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request, String> {
    let mut buf = Vec::new();
    let limited = (&mut *stream).take(MAX_REQUEST as u64);
    let mut reader = tokio::io::BufReader::new(limited);
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut buf)).await {
        Err(_) => return Err(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if buf.last() != Some(&b'\n') {
        return Err(format!(
            "the request must be one line of at most {MAX_REQUEST} bytes ending with a newline"
        ));
    }
    let line = std::str::from_utf8(&buf).map_err(|_| "the request is not UTF-8".to_string())?;
    Request::parse(line)
}

fn answer(req: Request, table: &SessionTable, uid: u32) -> Response {
    match req {
        Request::List => Response {
            version: VERSION,
            sessions: Some(table.list()),
            ..Response::default()
        },
        Request::Close(id) => match table.close(&id, close_reason::ADMINISTRATOR) {
            Ok(info) => {
                tracing::warn!(
                    session_id = info.session_id.as_str(),
                    user = info.user.as_str(),
                    endpoint = info.endpoint.as_str(),
                    uid,
                    reason = close_reason::ADMINISTRATOR,
                    "session closed by the administrator (keyhole sessions close, uid {uid})"
                );
                Response {
                    version: VERSION,
                    closed: Some(info),
                    ..Response::default()
                }
            }
            Err(e) => Response::error(e.to_string()),
        },
    }
}

/// Why `keyhole sessions` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no keyhole server is running with this configuration: there is no control socket at {0} (it is in state_directory while `keyhole serve` runs)")]
    NoServer(PathBuf),
    #[error("permission denied on {0}: only root and the server's own account may use the control socket; run it with sudo")]
    Permission(PathBuf),
    #[error("talking to the server on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server's answer on {path} is not valid: {why}")]
    BadAnswer { path: PathBuf, why: String },
    /// The server answered with an error.
    #[error("{0}")]
    Server(String),
}

/// Send `req` to the server listening on `path` and return its answer (an answer carrying
/// `error` is returned as [`ClientError::Server`]).
pub fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let io = |source: std::io::Error| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NoServer(path.to_path_buf())
                }
                std::io::ErrorKind::PermissionDenied => ClientError::Permission(path.to_path_buf()),
                _ => io(e),
            })
        }
    };
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    // A refused peer gets its answer and EOF before reading anything: a failed write is not
    // the end, the answer is.
    let _ = s.write_all(req.to_line().as_bytes());
    let mut raw = Vec::new();
    if let Err(e) = (&mut s).take(MAX_RESPONSE).read_to_end(&mut raw) {
        // A reset after a whole answer line (the server closed first) still carries it.
        if !(e.kind() == std::io::ErrorKind::ConnectionReset && raw.ends_with(b"\n")) {
            return Err(io(e));
        }
    }
    let bad = |why: String| ClientError::BadAnswer {
        path: path.to_path_buf(),
        why,
    };
    let text = std::str::from_utf8(&raw).map_err(|_| bad("not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Err(bad(
            "the server closed the connection without answering".into()
        ));
    }
    let r: Response = serde_json::from_str(text.trim()).map_err(|e| bad(e.to_string()))?;
    if let Some(e) = r.error {
        return Err(ClientError::Server(e));
    }
    Ok(r)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print() {
        assert_eq!(Request::parse("list\n"), Ok(Request::List));
        assert_eq!(Request::parse(" LIST "), Ok(Request::List));
        assert_eq!(
            Request::parse("close 5f0c1234-aa\n"),
            Ok(Request::Close("5f0c1234-aa".into()))
        );
        assert!(Request::parse("close").is_err());
        assert!(Request::parse("close a b").is_err());
        assert!(Request::parse("close ../x").is_err());
        assert!(Request::parse("list x").is_err());
        assert!(Request::parse("shutdown")
            .unwrap_err()
            .contains("unknown request"));
        for r in [Request::List, Request::Close("abc".into())] {
            assert_eq!(Request::parse(&r.to_line()), Ok(r));
        }
    }

    #[test]
    fn answers_are_one_json_line() {
        let r = Response::error("no session x");
        let line = r.to_line();
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            line, "{\"version\":1,\"error\":\"no session x\"}\n",
            "fields without a value are left out"
        );
        let back: Response = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(back, r);
    }
}
