//! Issue 9, finding 7, against the real `keyhole serve` (real gates, real users file): failed
//! logins from another address neither lock alice out nor cut her open WinRS shell. The
//! attacker's requests come from 127.0.0.2 (any 127/8 address is loopback on Linux); alice's
//! from 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::shipped;
use crate::wsman_common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyhole::wsman::envelope::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsman_common::*;

struct Serve {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn add_user(dir: &std::path::Path, user: &str, group: &str, password: &str) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["user", "add", user, "--group", group, "--config"])
        .arg(dir.join("keyhole.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped configuration on a free loopback port (plain HTTP only), lock-out after 5
/// failures, and alice in helpdesk.
fn serve() -> Serve {
    let dir = shipped::shipped_copy();
    let toml = dir.path().join("keyhole.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("https = \"127.0.0.1:5986\"", "https = \"\"")
        .replace("http = \"127.0.0.1:5985\"", "http = \"127.0.0.1:0\"");
    assert!(text.contains("http = \"127.0.0.1:0\""), "{text}");
    std::fs::write(
        &toml,
        format!(
            "transcript_directory = \"transcripts\"\n{text}\n[auth]\nmax_failed_logins = 5\nlockout = \"5m\"\n"
        ),
    )
    .unwrap();
    add_user(dir.path(), "alice", "helpdesk", "alice-Pw-1");
    add_user(dir.path(), "bob", "helpdesk", "bob-Pw-1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["serve", "--config"])
        .arg(&toml)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("keyhole: listening on http://") {
            addr = Some(rest.trim_end_matches("/wsman").parse().unwrap());
            break;
        }
    }
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Serve {
        child,
        addr: addr.expect("keyhole serve printed no http address"),
        _dir: dir,
    }
}

/// One POST from a chosen local address (Connection: close).
async fn post_from(from: IpAddr, to: SocketAddr, auth: &str, body: &str) -> HttpReply {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let head = format!(
        "POST /wsman HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
    parse_http(&out)
}

async fn run_in_shell(addr: SocketAddr, auth: &str, shell: &str, line: &str) -> (String, i32) {
    let (_, x) = envelope(
        ACTION_COMMAND,
        URI_CMD,
        Some(shell),
        None,
        &command_body(line, &[]),
    );
    let r = post(addr, auth, &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cmd = command_id_of(&r);
    let (out, err, code) = receive_all(addr, auth, shell, &cmd).await;
    (format!("{out}{err}"), code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_another_address_do_not_cut_an_open_shell() {
    let s = serve();
    let alice = basic("alice", "alice-Pw-1");
    let home: IpAddr = "127.0.0.1".parse().unwrap();
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();

    // Alice opens a shell and runs a command.
    let r = create_shell(s.addr, &alice, URI_CMD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let shell = shell_id_of(&r);
    let (out, code) = run_in_shell(s.addr, &alice, &shell, "Get-Uptime").await;
    assert_eq!(code, 0, "{out}");

    // From another address: five empty passwords, then five wrong ones.
    let (_, x) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    for _ in 0..5 {
        let r = post_from(attacker, s.addr, &basic("alice", ""), &x).await;
        assert_eq!(r.status, 401);
    }
    // Empty passwords are not guesses: alice's right password still works from there.
    let r = post_from(attacker, s.addr, &alice, &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let other_shell = shell_id_of(&r);
    for _ in 0..5 {
        let r = post_from(attacker, s.addr, &basic("alice", "guess"), &x).await;
        assert_eq!(r.status, 401);
    }
    // Now that address is locked out: bob's right password is refused there...
    let r = post_from(attacker, s.addr, &basic("bob", "bob-Pw-1"), &x).await;
    assert_eq!(r.status, 401, "127.0.0.2 should be locked out");
    // ...though alice's session from there, verified before the lock-out, goes on.
    let r = post_from(attacker, s.addr, &alice, &x).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // ...but her open shell at home goes on, and she can open another one.
    let (out, code) = run_in_shell(s.addr, &alice, &shell, "Get-Uptime").await;
    assert_eq!(code, 0, "{out}");
    let r = post_from(home, s.addr, &alice, &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = other_shell;
}
