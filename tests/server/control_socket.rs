//! The control socket `keyhole sessions` talks to, in process: its modes, list and close through
//! the session list, bounded and checked requests, a stale socket replaced but a live one never
//! taken over, the file removed at shutdown — and, as root, the `keyhole sessions` binary run as
//! another uid refused by the directory's mode and, with the modes opened, by the server's
//! SO_PEERCRED check. (The same against the real server with pywinrm and pypsrp sessions:
//! tests/interop/test_sessions.py.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyhole::control::{self, BindError, ClientError, Request};
use keyhole::sessions::{NewSession, SessionTable, Transport};
use keyhole::wsman::shell::{SessionHook, ShellControl};

const NOBODY: u32 = 65534;

struct FakeShell {
    closed: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl ShellControl for FakeShell {
    fn shell_id(&self) -> String {
        "0A1B2C3D-0000-4000-8000-000000000000".into()
    }
    fn idle(&self) -> Option<Duration> {
        (!self.closed.load(Ordering::SeqCst)).then_some(Duration::from_secs(7))
    }
    fn close(&self, reason: &str) -> bool {
        *self.reason.lock().unwrap() = Some(reason.into());
        !self.closed.swap(true, Ordering::SeqCst)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A served socket in `state` over `table`; stop it by sending on the returned channel.
fn serve(
    rt: &tokio::runtime::Runtime,
    state: &Path,
    table: Arc<SessionTable>,
) -> (
    PathBuf,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let _g = rt.enter();
    let sock = control::bind(state).unwrap();
    let path = sock.path().to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(control::serve(sock, table, async move {
        let _ = rx.await;
    }));
    (path, tx, task)
}

fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn one_session(table: &SessionTable) -> Arc<FakeShell> {
    let live = table.open(NewSession {
        session_id: "5f0c1a2b-1111-4222-8333-444455556666".into(),
        user: "alice".into(),
        endpoint: "Helpdesk".into(),
        client: "192.0.2.7".into(),
        transport: Transport::Winrs,
    });
    live.line_started();
    live.line_ended();
    let shell = Arc::new(FakeShell {
        closed: AtomicBool::new(false),
        reason: Mutex::new(None),
    });
    live.attach(shell.clone());
    shell
}

#[test]
fn list_and_close_over_the_socket_with_bounded_requests() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let rt = runtime();
    let table = Arc::new(SessionTable::new());
    let shell = one_session(&table);
    let (path, stop, task) = serve(&rt, &state, table.clone());

    // Private: the directory 0700 (created here), the socket 0600.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&state), 0o700);
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(mode(&path), 0o600);

    let r = control::request(&path, &Request::List).unwrap();
    let list = r.sessions.unwrap();
    assert_eq!(r.version, control::VERSION);
    assert_eq!(list.len(), 1);
    let s = &list[0];
    assert_eq!(s.session_id, "5f0c1a2b-1111-4222-8333-444455556666");
    assert_eq!(
        (s.user.as_str(), s.endpoint.as_str(), s.client.as_str()),
        ("alice", "Helpdesk", "192.0.2.7")
    );
    assert_eq!(s.transport, "winrs");
    assert_eq!(
        s.shell_id.as_deref(),
        Some("0A1B2C3D-0000-4000-8000-000000000000")
    );
    assert_eq!((s.idle_seconds, s.commands), (7, 1));
    // The table `keyhole sessions` prints.
    let text = keyhole::cli::sessions_table(&list);
    assert!(text.starts_with("SESSION ID"), "{text}");
    assert!(
        text.lines().nth(1).unwrap().contains("WinRS")
            && text.contains("alice")
            && text.contains("7s"),
        "{text}"
    );

    // Close by a unique prefix: through the shell, with the administrator's reason.
    let r = control::request(&path, &Request::Close("5F0C1A2B".into())).unwrap();
    assert_eq!(
        r.closed.unwrap().session_id,
        "5f0c1a2b-1111-4222-8333-444455556666"
    );
    assert_eq!(
        shell.reason.lock().unwrap().as_deref(),
        Some("closed by the administrator")
    );
    match control::request(&path, &Request::Close("5f0c1a2b".into())) {
        Err(ClientError::Server(e)) => assert!(e.contains("already closing"), "{e}"),
        other => panic!("{other:?}"),
    }
    match control::request(&path, &Request::Close("deadbeef-0000".into())) {
        Err(ClientError::Server(e)) => assert!(e.starts_with("no session deadbeef-0000"), "{e}"),
        other => panic!("{other:?}"),
    }

    // Requests are one short line: more is refused without being read to the end.
    let long = vec![b'a'; 64 * 1024];
    let answer = raw(&path, &long);
    assert!(
        answer.contains("one line of at most 1024 bytes"),
        "{answer}"
    );
    let answer = raw(&path, b"shutdown now\n");
    assert!(
        answer.contains("unknown request \\\"shutdown\\\""),
        "{answer}"
    );
    let answer = raw(&path, b"close ../../etc\n");
    assert!(answer.contains("takes one session id"), "{answer}");
    assert!(answer.ends_with("}\n") && answer.matches('\n').count() == 1);

    // A second server on the same state directory does not take the socket over.
    {
        let _g = rt.enter();
        match control::bind(&state) {
            Err(BindError::InUse(p)) => assert_eq!(p, path),
            other => panic!("{:?}", other.err()),
        }
    }

    // Shutdown removes the socket file.
    stop.send(()).unwrap();
    rt.block_on(task).unwrap();
    assert!(!path.exists(), "the socket file stayed after shutdown");
    match control::request(&path, &Request::List) {
        Err(ClientError::NoServer(p)) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }

    // A socket left by a server that died is replaced; a file that is not a socket is not.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (path2, stop, task) = serve(&rt, &state, table.clone());
    assert_eq!(path2, path);
    assert!(control::request(&path, &Request::List).is_ok());
    stop.send(()).unwrap();
    rt.block_on(task).unwrap();
    std::fs::write(&path, "not a socket").unwrap();
    let _g = rt.enter();
    match control::bind(&state) {
        Err(BindError::NotASocket(p)) => assert_eq!(p, path),
        other => panic!("{:?}", other.err()),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

fn keyhole_sessions_as(uid: u32, config: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["sessions", "--config"])
        .arg(config)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn only_root_and_the_servers_account_are_answered() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to run `keyhole sessions` as another uid (CI runs as root)");
        return;
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_keyhole"));
    let probe = std::process::Command::new(exe)
        .arg("--version")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "uid {NOBODY} cannot run {} (a directory on its path is private?)",
        exe.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("keyhole.toml");
    std::fs::write(
        &config,
        format!("state_directory = {:?}\n", state.display().to_string()),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let rt = runtime();
    let table = Arc::new(SessionTable::new());
    one_session(&table);
    let (path, stop, task) = serve(&rt, &state, table);

    // As root: the list.
    let (code, out, err) = keyhole_sessions_as(0, &config);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("5f0c1a2b-1111-4222-8333-444455556666"),
        "{out}"
    );

    // Another uid: the directory's mode stops it before the server sees it.
    let (code, out, err) = keyhole_sessions_as(NOBODY, &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("permission denied") && err.contains("sudo"),
        "{err}"
    );
    assert_eq!(out, "");

    // With the modes opened, the server refuses by the peer's credentials.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out, err) = keyhole_sessions_as(NOBODY, &config);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "refused: uid {NOBODY} may not use the control socket"
        )),
        "{err}"
    );
    assert_eq!(out, "", "nothing about the sessions leaks");

    stop.send(()).unwrap();
    rt.block_on(task).unwrap();
}
