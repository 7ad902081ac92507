//! SECURITY.md "secrets in logs", on a live `keyhole serve` (real gates, real users file): a
//! session with every kind of login (right password, wrong password, unknown user, a user no
//! rule admits, a user whose rule gives no role here), commands run and refused, and everything
//! the server wrote (its log on stderr and stdout at `RUST_LOG=debug`, dependencies included;
//! the audit log; every transcript) is searched for each password and each `Authorization`
//! header value (and its base64 part). The test first checks that it captured real logs (debug
//! lines, the audit records of those logins, the transcript of the command), so it cannot pass
//! by capturing nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::shipped;
use crate::wsman_common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyhole::wsman::envelope::*;
use wsman_common::*;

struct Serve {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn add_user(dir: &Path, user: &str, group: &str, password: &str) {
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

/// Passwords of the users (distinctive, so a hit is never a coincidence).
const ALICE_PW: &str = "alice-Secret-5b1d9e";
const WRONG_PW: &str = "wrong-Secret-c3a07f";
const NOBODY_PW: &str = "nobody-Secret-81f2aa";
const ROLELESS_PW: &str = "roleless-Secret-44e0b7";
const UNKNOWN_PW: &str = "unknown-Secret-9d3c15";

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
            "transcript_directory = \"transcripts\"\naudit_log = \"audit/audit.jsonl\"\n{text}"
        ),
    )
    .unwrap();
    // A rule for a group that has no role in Helpdesk: the user passes gate 3, refused at 4.
    shipped::append(
        dir.path(),
        "authorization-rules.toml",
        "\n[[rule]]\nid = 90\nname = \"roleless\"\nuser_group = \"roleless\"\ncomputer = \"*\"\nconfiguration = \"Helpdesk\"\n",
    );
    add_user(dir.path(), "alice", "helpdesk", ALICE_PW);
    add_user(dir.path(), "nobody", "no-rule-group", NOBODY_PW);
    add_user(dir.path(), "roleless", "roleless", ROLELESS_PW);
    let stdout = std::fs::File::create(dir.path().join("serve.stdout")).unwrap();
    let stderr = std::fs::File::create(dir.path().join("serve.stderr")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["serve", "--config"])
        .arg(&toml)
        .env("RUST_LOG", "debug")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let addr = loop {
        let out = std::fs::read_to_string(dir.path().join("serve.stdout")).unwrap();
        if let Some(a) = out.lines().find_map(|l| {
            l.strip_prefix("keyhole: listening on http://")
                .map(|r| r.trim_end_matches("/wsman").parse().unwrap())
        }) {
            break a;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "keyhole serve printed no address: {out}{}",
            std::fs::read_to_string(dir.path().join("serve.stderr")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Serve { child, addr, dir }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_authorization_header_reaches_any_log_of_a_live_server() {
    let mut s = serve();
    let alice = basic("alice", ALICE_PW);
    let attempts = [
        basic("alice", WRONG_PW),
        basic("nobody", NOBODY_PW),
        basic("roleless", ROLELESS_PW),
        basic("ghost", UNKNOWN_PW),
    ];

    // Alice: a shell, a command that runs, a line that is refused, a command with an argument.
    let r = create_shell(s.addr, &alice, URI_CMD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let shell = shell_id_of(&r);
    for (line, want) in [("Get-Uptime", 0), ("Invoke-Expression 'whoami'", 2)] {
        let (_, x) = envelope(
            ACTION_COMMAND,
            URI_CMD,
            Some(&shell),
            None,
            &command_body(line, &[]),
        );
        let r = post(s.addr, &alice, &x).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let (out, err, code) = receive_all(s.addr, &alice, &shell, &command_id_of(&r)).await;
        assert_eq!(code, want, "{line}: {out}{err}");
    }
    // Every other kind of login: the same 401.
    let (_, x) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    for auth in &attempts {
        let r = post(s.addr, auth, &x).await;
        assert_eq!(r.status, 401, "{auth}");
    }
    // Let the server write what it writes, then stop it (SIGTERM: a clean shutdown flushes).
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = Instant::now();
    while s.child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let dir = s.dir.path();
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    let stderr = read(&dir.join("serve.stderr"));
    let stdout = read(&dir.join("serve.stdout"));
    let audit = read(&dir.join("audit/audit.jsonl"));
    let transcripts: Vec<(PathBuf, String)> = files_under(&dir.join("transcripts"))
        .into_iter()
        .map(|p| {
            let t = read(&p);
            (p, t)
        })
        .collect();

    eprintln!(
        "captured: server stderr {} bytes, stdout {}, audit log {} ({} records), {} transcripts",
        stderr.len(),
        stdout.len(),
        audit.len(),
        audit.lines().count(),
        transcripts.len()
    );
    // What was captured is the real thing.
    assert!(
        stderr.contains("DEBUG"),
        "no debug lines in the server log:\n{stderr}"
    );
    for user in ["alice", "nobody", "roleless", "ghost"] {
        assert!(
            audit.contains(&format!("\"{user}\"")),
            "{user} is not in the audit log:\n{audit}"
        );
    }
    assert!(
        transcripts
            .iter()
            .any(|(_, t)| t.contains("PS>Get-Uptime") && t.contains("Invoke-Expression")),
        "no transcript of alice's session: {transcripts:?}"
    );

    // And none of it holds a secret.
    let mut secrets: Vec<String> = [ALICE_PW, WRONG_PW, NOBODY_PW, ROLELESS_PW, UNKNOWN_PW]
        .iter()
        .map(|p| p.to_string())
        .collect();
    for auth in attempts.iter().chain([&alice]) {
        secrets.push(auth.clone());
        secrets.push(auth.trim_start_matches("Basic ").to_string());
    }
    let mut logs: Vec<(String, &str)> = vec![
        ("server stderr".into(), &stderr),
        ("server stdout".into(), &stdout),
        ("audit log".into(), &audit),
    ];
    for (p, t) in &transcripts {
        logs.push((p.display().to_string(), t));
    }
    // Every other file the server wrote in its directories (state, audit).
    let mut others = Vec::new();
    for p in files_under(&dir.join("state"))
        .into_iter()
        .chain(files_under(&dir.join("audit")))
    {
        others.push((p.display().to_string(), read(&p)));
    }
    for (name, text) in &others {
        logs.push((name.clone(), text));
    }
    for (name, text) in &logs {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{name} holds the secret {secret:?}"
            );
        }
        assert!(
            !text.contains("Authorization: Basic"),
            "{name} holds a header"
        );
    }
}
