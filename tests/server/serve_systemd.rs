//! `keyhole serve` as systemd runs it: sd_notify (READY=1 once the listeners are bound,
//! RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM) to a notification
//! socket the test binds; the metrics listener (`[metrics] listen`) scraped and linted with
//! `promtool check metrics`; reload counters; plain-text logs without colours when standard
//! error is not a terminal; and the journald native protocol with structured fields, received
//! on a datagram socket the test binds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt as _;

use crate::shipped;

fn recv_state(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no sd_notify datagram in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Wait for a datagram containing `want`, returning everything received until then.
fn wait_for(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let s = recv_state(sock);
        let done = s.lines().any(|l| l == want);
        seen.push(s);
        if done {
            return seen;
        }
    }
    panic!("no {want} in {seen:?}");
}

fn scrape(addr: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Undo chunked transfer encoding if hyper used it.
fn dechunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, tail) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
}

fn promtool_lint(text: &str) {
    let Some(promtool) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
    else {
        assert!(
            std::env::var_os("KEYHOLE_REQUIRE_PROMTOOL").is_none(),
            "promtool is required (Debian package prometheus; tests/run.sh installs it)"
        );
        crate::prereq::skip("promtool lint (install Debian's prometheus package)");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}\n--- scraped:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_notifies_systemd_serves_metrics_and_logs_plain_text() {
    let d = shipped::shipped_copy();
    shipped::append(
        d.path(),
        "keyhole.toml",
        "\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let text = std::fs::read_to_string(d.path().join("keyhole.toml")).unwrap();
    let text = text
        .replace("https = \"127.0.0.1:5986\"", "https = \"127.0.0.1:0\"")
        .replace("http = \"127.0.0.1:5985\"", "http = \"127.0.0.1:0\"");
    std::fs::write(d.path().join("keyhole.toml"), text).unwrap();

    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    // Started with a low soft limit on open files (prlimit execs keyhole: same pid), which
    // `serve` raises to the hard limit.
    let mut child = Command::new("prlimit")
        .arg("--nofile=256:")
        .args([env!("CARGO_BIN_EXE_keyhole"), "serve", "--config"])
        .arg(d.path().join("keyhole.toml"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    let ready = wait_for(&sock, "READY=1");
    let last = ready.last().unwrap();
    assert!(last.contains(&format!("MAINPID={pid}")), "{last}");
    assert!(last.contains("STATUS=serving https://127.0.0.1:"), "{last}");
    // READY=1 comes after the listeners are bound: they accept now.
    let https = last
        .split_whitespace()
        .find_map(|w| w.strip_prefix("https://"))
        .unwrap()
        .to_string();
    TcpStream::connect(&https).expect("READY=1 before the HTTPS listener accepts");

    // The soft limit on open files was raised to the hard one (10,000 sessions hold 10,000
    // transcripts open).
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(nofile[0], nofile[1], "soft = hard: {limits}");
    assert_ne!(nofile[0], "256", "{limits}");

    // Read stdout until the metrics line.
    let mut stdout = child.stdout.take().unwrap();
    let mut printed = String::new();
    let mut buf = [0u8; 1024];
    while !printed.contains("/metrics\n") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "serve closed stdout: {printed}");
        printed.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let metrics_addr = printed
        .lines()
        .find_map(|l| l.strip_prefix("keyhole: metrics on http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap()
        .to_string();

    let (head, body) = scrape(&metrics_addr);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let body = dechunk(&head, &body);
    assert!(
        body.contains("keyhole_config_reloads_total{result=\"success\"} 0\n"),
        "{body}"
    );
    promtool_lint(&body);

    // Reload: RELOADING=1, then READY=1; counted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let states = wait_for(&sock, "READY=1");
    assert!(
        states[0].lines().any(|l| l == "RELOADING=1"),
        "RELOADING=1 must come first: {states:?}"
    );
    assert!(
        states
            .last()
            .unwrap()
            .contains("STATUS=configuration reloaded"),
        "{states:?}"
    );
    let (head, body) = scrape(&metrics_addr);
    let body = dechunk(&head, &body);
    assert!(
        body.contains("keyhole_config_reloads_total{result=\"success\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("keyhole_config_last_reload_successful 1\n"),
        "{body}"
    );

    // A broken configuration: the reload is refused and counted, the server keeps serving.
    let ep = d.path().join("endpoints/Helpdesk.toml");
    let good = std::fs::read_to_string(&ep).unwrap();
    std::fs::write(&ep, format!("{good}\nno_such_key = 1\n")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let states = wait_for(&sock, "READY=1");
    assert!(
        states.last().unwrap().contains("STATUS=reload refused"),
        "{states:?}"
    );
    let (head, body) = scrape(&metrics_addr);
    let body = dechunk(&head, &body);
    assert!(
        body.contains("keyhole_config_reloads_total{result=\"failure\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("keyhole_config_last_reload_successful 0\n"),
        "{body}"
    );
    promtool_lint(&body);
    // Other paths and methods on the metrics listener.
    let mut s = TcpStream::connect(&metrics_addr).unwrap();
    write!(
        s,
        "GET /wsman HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    std::fs::write(&ep, good).unwrap();

    // Stop: STOPPING=1, exit 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(&sock, "STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(stderr.contains("reload refused"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in logs that are not going to a terminal:\n{stderr}"
    );
}

#[test]
fn journald_entries_carry_the_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let layer = keyhole::systemd::JournaldLayer::connect(&path).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(
            gate = 3,
            rule = "helpdesk staff",
            user = "alice",
            endpoint = "Helpdesk",
            session_id = "5f0c",
            command = "Restart-Service nginx\nGet-Service",
            "refused"
        );
    });
    let mut buf = vec![0u8; 65536];
    let n = journal.recv(&mut buf).unwrap();
    let fields = keyhole::systemd::parse_entry(&buf[..n]).unwrap();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k} in {fields:?}"))
    };
    assert_eq!(get("MESSAGE"), "refused");
    assert_eq!(get("PRIORITY"), "4");
    assert_eq!(get("SYSLOG_IDENTIFIER"), "keyhole");
    assert_eq!(get("KEYHOLE_GATE"), "3");
    assert_eq!(get("KEYHOLE_RULE"), "helpdesk staff");
    assert_eq!(get("KEYHOLE_USER"), "alice");
    assert_eq!(get("KEYHOLE_ENDPOINT"), "Helpdesk");
    assert_eq!(get("KEYHOLE_SESSION_ID"), "5f0c");
    assert_eq!(get("KEYHOLE_COMMAND"), "Restart-Service nginx\nGet-Service");
    assert!(get("CODE_FILE").ends_with("serve_systemd.rs"));
    assert!(get("CODE_LINE").parse::<u32>().is_ok());
}

/// One journal entry's fields, in order.
type Entry = Vec<(String, String)>;
/// Says whether an entry is the one looked for.
type Pred<'a> = &'a dyn Fn(&[(String, String)]) -> bool;

/// Every datagram that arrives within `quiet` of the last one, parsed.
fn journal_entries(sock: &UnixDatagram, quiet: Duration) -> Vec<Entry> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(keyhole::systemd::parse_entry(&buf[..n]).unwrap());
    }
    out
}

fn field<'a>(entry: &'a [(String, String)], name: &str) -> Option<&'a str> {
    entry
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn gates_and_sessions_log_refusals_and_lines_with_the_journal_fields() {
    use keyhole::gates::{Gates, OpenError, Origin, SessionKind};
    use keyhole::wsman::shell::{Authenticate, Identity};
    use std::sync::Arc;

    let d = shipped::shipped_copy();
    let users = d.path().join("users.toml");
    keyhole::auth::user_add(&users, "alice", &["helpdesk".into()], "pw-alice-1").unwrap();
    // mallory passes gate 3 (a rule admits her everywhere) but has no role in Helpdesk.
    shipped::append(
        d.path(),
        "authorization-rules.toml",
        "\n[[rule]]\nid = 90\nname = \"mallory anywhere\"\nuser = \"mallory\"\ncomputer = \"*\"\nconfiguration = \"*\"\n",
    );
    let cfg = keyhole::config::load(&d.path().join("keyhole.toml")).unwrap();
    let gates = Arc::new(Gates::new(cfg).unwrap());
    let peer: std::net::SocketAddr = "192.0.2.9:40000".parse().unwrap();
    let alice = Identity {
        user: "alice".into(),
        groups: vec!["helpdesk".into()],
    };
    let mallory = Identity {
        user: "mallory".into(),
        groups: Vec::new(),
    };

    let path = d.path().join("journal.sock");
    let journal = UnixDatagram::bind(&path).unwrap();
    let layer = keyhole::systemd::JournaldLayer::connect(&path).unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    let session_id = tracing::subscriber::with_default(subscriber, || {
        let wrong = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:wrong")
        );
        assert!(gates
            .authenticate(Some(wrong.as_bytes()), peer, None)
            .is_none());
        assert!(matches!(
            gates.open(&alice, "Vendor", Origin::Remote(peer), SessionKind::Psrp),
            Err(OpenError::Denied(_))
        ));
        assert!(matches!(
            gates.open(
                &mallory,
                "Helpdesk",
                Origin::Remote(peer),
                SessionKind::Psrp
            ),
            Err(OpenError::Denied(_))
        ));
        let mut grant = gates
            .open(&alice, "Helpdesk", Origin::Remote(peer), SessionKind::Psrp)
            .unwrap_or_else(|e| panic!("{e}"));
        let cancel = keyhole::engine::CancelToken::new();
        let mut sink = keyhole::engine::VecSink(Vec::new());
        grant.session.run_line("Get-Uptime", &mut sink, &cancel);
        grant
            .session
            .run_line("Invoke-Expression 'id'", &mut sink, &cancel);
        grant.guard.live().set_end_reason("a test ended it");
        let id = grant.session_id.clone();
        drop(grant);
        id
    });
    let entries = journal_entries(&journal, Duration::from_millis(500));
    let find = |pred: Pred<'_>, what: &str| -> Entry {
        entries
            .iter()
            .find(|e| pred(e))
            .cloned()
            .unwrap_or_else(|| panic!("no journal entry {what} in {entries:#?}"))
    };
    let msg_starts = |p: &'static str| {
        move |e: &[(String, String)]| field(e, "MESSAGE").is_some_and(|m| m.starts_with(p))
    };

    // The refusal text stays as it was; the fields come with it.
    let g2 = find(&msg_starts("access denied at gate 2: "), "for gate 2");
    assert_eq!(field(&g2, "KEYHOLE_GATE"), Some("2"));
    assert_eq!(field(&g2, "KEYHOLE_USER"), Some("alice"));
    assert_eq!(field(&g2, "KEYHOLE_SOURCE"), Some("192.0.2.9"));
    assert_eq!(field(&g2, "PRIORITY"), Some("4"));
    let reason2 = field(&g2, "KEYHOLE_REASON").unwrap();
    assert!(field(&g2, "MESSAGE").unwrap().ends_with(reason2), "{g2:?}");

    let g3 = find(&msg_starts("access denied at gate 3: "), "for gate 3");
    assert_eq!(field(&g3, "KEYHOLE_GATE"), Some("3"));
    assert_eq!(field(&g3, "KEYHOLE_USER"), Some("alice"));
    assert_eq!(field(&g3, "KEYHOLE_ENDPOINT"), Some("Vendor"));
    assert!(field(&g3, "KEYHOLE_REASON").is_some_and(|r| !r.is_empty()));

    let g4 = find(&msg_starts("access denied at gate 4: "), "for gate 4");
    assert_eq!(field(&g4, "KEYHOLE_GATE"), Some("4"));
    assert_eq!(field(&g4, "KEYHOLE_USER"), Some("mallory"));
    assert_eq!(field(&g4, "KEYHOLE_ENDPOINT"), Some("Helpdesk"));
    assert!(
        field(&g4, "KEYHOLE_REASON").is_some_and(|r| r.contains("no role")),
        "{g4:?}"
    );

    let sid = session_id.as_str();
    let opened = find(&msg_starts("session opened"), "for the session's start");
    assert_eq!(field(&opened, "KEYHOLE_SESSION_ID"), Some(sid));
    assert_eq!(field(&opened, "KEYHOLE_USER"), Some("alice"));
    assert_eq!(field(&opened, "KEYHOLE_ENDPOINT"), Some("Helpdesk"));
    assert_eq!(
        field(&opened, "KEYHOLE_RULE"),
        Some("1"),
        "the rule that admitted her"
    );
    assert_eq!(field(&opened, "KEYHOLE_TRANSPORT"), Some("psrp"));

    let ran = find(
        &|e| {
            field(e, "MESSAGE") == Some("command line")
                && field(e, "KEYHOLE_COMMAND") == Some("Get-Uptime")
        },
        "for Get-Uptime",
    );
    assert_eq!(field(&ran, "KEYHOLE_SESSION_ID"), Some(sid));
    assert_eq!(field(&ran, "KEYHOLE_USER"), Some("alice"));
    assert_eq!(field(&ran, "KEYHOLE_ENDPOINT"), Some("Helpdesk"));

    let refused = find(&msg_starts("command line refused"), "for the refused line");
    assert_eq!(field(&refused, "KEYHOLE_SESSION_ID"), Some(sid));
    assert_eq!(
        field(&refused, "KEYHOLE_COMMAND"),
        Some("Invoke-Expression 'id'")
    );
    assert!(
        field(&refused, "KEYHOLE_REASON").is_some_and(|r| r.contains("Invoke-Expression")),
        "{refused:?}"
    );

    let ended = find(&msg_starts("session ended"), "for the session's end");
    assert_eq!(field(&ended, "KEYHOLE_SESSION_ID"), Some(sid));
    assert_eq!(field(&ended, "KEYHOLE_REASON"), Some("a test ended it"));
    assert_eq!(field(&ended, "KEYHOLE_COMMANDS"), Some("2"));
}
