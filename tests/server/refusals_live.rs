//! Issue 9, finding 5 and "gate 2 under load", against the real `keyhole serve` (the real
//! `gates::Gates`, the real users file, argon2id as shipped):
//!
//! - every refusal is the same 401, whatever the gate: a wrong password, an unknown, disabled or
//!   locked-out user, a right password of a user no rule admits (gate 3) or of a user with a
//!   rule but no role in the endpoint (gate 4), an endpoint that does not exist — for Create,
//!   Identify and Receive alike, and the connection stays usable alike; the server log names
//!   the gate and the reason;
//! - a user who can open no session is refused at gate 2 for every operation, Identify
//!   included, and is never remembered;
//! - every refusal takes the same time: in 200 shuffled rounds of the six cases, the medians of
//!   each case's time less its round's median differ by less than 1 ms (the raw medians are
//!   reported too);
//! - the listener runs verifications in its slots (a gate double that takes 1.5 s a verification):
//!   per address at most half, the generic 401 after the queue deadline;
//! - 64 concurrent wrong passwords from one address run at most `verification_slots()`
//!   verifications at once: the server's peak RSS stays within a bound computed from the slots
//!   and argon2's memory, and a legitimate user's remembered login is answered meanwhile.
//!
//! Each case's requests come from their own loopback address (any 127/8 address is loopback on
//! Linux), so that the lock-out counters of one case never touch another's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::shipped;
use crate::wsman_common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhole::wsman::envelope::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsman_common::*;

const IDENTIFY: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>";

/// argon2id's memory per verification with the parameters `keyhole user` writes (19 MiB).
const ARGON2_BYTES: u64 = 19 * 1024 * 1024;

/// The lock-out threshold of these servers: high enough that no case's 200 attempts lock its
/// own address, low enough that the locked-out case is locked in a few seconds.
const MAX_FAILED: usize = 240;

struct Serve {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (VmRSS, VmHWM) of the server, in bytes.
    fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"));
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            kib * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
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

/// The shipped configuration on a free loopback port (plain HTTP only), with:
/// - alice (helpdesk): can open a Helpdesk session;
/// - norule (group `contractors`, which no rule names): gate 3 refuses her everywhere;
/// - norole: rule 90 admits her to Vendor, where no role applies (gate 4);
/// - locked (helpdesk): locked out by the test;
/// - gone (helpdesk): disabled in users.toml.
fn serve() -> Serve {
    let dir = shipped::shipped_copy();
    let toml = dir.path().join("keyhole.toml");
    let text = std::fs::read_to_string(&toml)
        .unwrap()
        .replace("https = \"127.0.0.1:5986\"", "https = \"\"")
        .replace("http = \"127.0.0.1:5985\"", "http = \"127.0.0.1:0\"");
    assert!(text.contains("http = \"127.0.0.1:0\""), "{text}");
    assert!(!text.contains("\n[auth]") && !text.contains("\n[limits]"));
    std::fs::write(
        &toml,
        format!(
            "transcript_directory = \"transcripts\"\naudit_log = \"audit.jsonl\"\n{text}\n[auth]\nmax_failed_logins = {MAX_FAILED}\nlockout = \"1h\"\n\n[limits]\nmax_connections_per_address = 256\ntranscript_min_free_bytes = 1\n"
        ),
    )
    .unwrap();
    shipped::append(
        dir.path(),
        "authorization-rules.toml",
        "\n[[rule]]\nid = 90\nname = \"norole may reach Vendor, where no role applies to her\"\nuser = \"norole\"\ncomputer = \"*\"\nconfiguration = \"Vendor\"\n",
    );
    add_user(dir.path(), "alice", "helpdesk", "alice-Pw-1");
    add_user(dir.path(), "norule", "contractors", "norule-Pw-1");
    add_user(dir.path(), "norole", "contractors", "norole-Pw-1");
    add_user(dir.path(), "locked", "helpdesk", "locked-Pw-1");
    add_user(dir.path(), "gone", "helpdesk", "gone-Pw-1");
    // `gone` was added last: its entry is the last `disabled = false`.
    let users = dir.path().join("users.toml");
    let mut u = std::fs::read_to_string(&users).unwrap();
    let at = u.rfind("disabled = false").unwrap();
    u.replace_range(at..at + "disabled = false".len(), "disabled = true");
    assert!(u[..at].contains("[users.gone]"), "{u}");
    std::fs::write(&users, u).unwrap();
    let (code, out, err) = shipped::keyhole(dir.path(), &["check"], None);
    assert_eq!(code, 0, "keyhole check: {out}{err}");

    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["serve", "--config"])
        .arg(&toml)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
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
        log,
        _dir: dir,
    }
}

fn local(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// One POST from a chosen local address on a fresh connection (Connection: close); the reply
/// and the time from the first byte sent to the last byte received.
async fn post_from(from: IpAddr, to: SocketAddr, auth: &str, body: &str) -> (HttpReply, Duration) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    let req = format!(
        "POST /wsman HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut out)).await;
    let took = t.elapsed();
    (parse_http(&out), took)
}

fn create_winrs() -> String {
    envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY).1
}

/// A Create for an endpoint through its PSRP resource URI.
fn create_on(endpoint: &str) -> String {
    envelope(
        ACTION_CREATE,
        &format!("http://schemas.microsoft.com/powershell/{endpoint}"),
        None,
        None,
        CREATE_CMD_BODY,
    )
    .1
}

fn receive_on(shell: &str) -> String {
    envelope(
        ACTION_RECEIVE,
        URI_CMD,
        Some(shell),
        None,
        &receive_body("00000000-0000-0000-0000-000000000001"),
    )
    .1
}

/// Status, headers less Date (sorted, names in lower case) and body: what must be identical.
fn strip(r: &HttpReply) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    (r.status, h, r.body.clone())
}

/// Lock `user` out at `from` with wrong passwords, two at a time (one address holds at most
/// half the verification slots).
async fn lock_out(s: &Serve, from: IpAddr, user: &str) {
    let auth = basic(user, "not-the-password");
    let body = create_winrs();
    let mut left = MAX_FAILED;
    while left > 0 {
        let n = left.min(2);
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (a, b, addr) = (auth.clone(), body.clone(), s.addr);
            tasks.push(tokio::spawn(async move {
                post_from(from, addr, &a, &b).await.0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().status, 401);
        }
        left -= n;
    }
}

/// The refusals a client can meet, each from its own address: (name, address, Authorization).
fn refusal_cases() -> Vec<(&'static str, IpAddr, String)> {
    vec![
        ("wrong password", local(10), basic("alice", "alice-Pw-2")),
        (
            "right password, no rule (gate 3)",
            local(11),
            basic("norule", "norule-Pw-1"),
        ),
        (
            "right password, rule but no role (gate 4)",
            local(12),
            basic("norole", "norole-Pw-1"),
        ),
        ("unknown user", local(13), basic("mallory", "alice-Pw-1")),
        (
            "locked-out user, right password",
            local(14),
            basic("locked", "locked-Pw-1"),
        ),
        (
            "disabled user, right password",
            local(15),
            basic("gone", "gone-Pw-1"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_on_the_real_gates_is_the_same_401_for_every_operation() {
    let s = serve();
    let alice = basic("alice", "alice-Pw-1");
    lock_out(&s, local(14), "locked").await;

    // alice's right password opens a shell: the reference for "the gates admit".
    let (ok, _) = post_from(local(1), s.addr, &alice, &create_winrs()).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let shell = shell_id_of(&ok);

    let (reference, _) =
        post_from(local(10), s.addr, &basic("alice", "nope"), &create_winrs()).await;
    assert_eq!(reference.status, 401);
    assert_eq!(
        reference.header_values("www-authenticate"),
        vec!["Basic realm=\"keyhole\"".to_string()]
    );
    let reference = strip(&reference);

    let mut seen = Vec::new();
    for (name, from, auth) in refusal_cases() {
        for (op, body) in [
            ("Create (WinRS)", create_winrs()),
            ("Create (PSRP, Vendor)", create_on("Vendor")),
            ("Identify", IDENTIFY.to_string()),
            ("Receive", receive_on(&shell)),
        ] {
            let (r, _) = post_from(from, s.addr, &auth, &body).await;
            assert_eq!(strip(&r), reference, "{name}: {op}: {}", r.text());
            seen.push(format!("{name}: {op}"));
        }
    }
    // Refusals after gate 2 for a user who can open a session: an endpoint that does not
    // exist, and an endpoint no rule admits alice to.
    for (name, body) in [
        (
            "alice, an endpoint that does not exist",
            create_on("DoesNotExist"),
        ),
        (
            "alice, an endpoint no rule admits her to (Vendor)",
            create_on("Vendor"),
        ),
    ] {
        let (r, _) = post_from(local(1), s.addr, &alice, &body).await;
        assert_eq!(strip(&r), reference, "{name}: {}", r.text());
    }
    // alice is admitted for everything else: her Identify is answered.
    let (r, _) = post_from(local(1), s.addr, &alice, IDENTIFY).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The connection stays usable after every kind of refusal, as after a wrong password.
    // (Each from an address of its own where alice is not refused; the lock-out is per
    // address, so the locked-out case is left out here: at another address it is admitted.)
    for (i, (name, _, auth)) in refusal_cases().into_iter().enumerate() {
        if name.starts_with("locked") {
            continue;
        }
        let from = local(20 + i as u8);
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let mut c = sock.connect(s.addr).await.unwrap();
        let body = create_winrs();
        let send = |auth: &str| {
            format!(
                "POST /wsman HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        c.write_all(send(&auth).as_bytes()).await.unwrap();
        let r = read_one(&mut c).await;
        assert_eq!(r.status, 401, "{name}");
        assert!(
            r.header_values("connection").is_empty(),
            "{name}: {:?}",
            r.headers
        );
        c.write_all(send(&alice).as_bytes()).await.unwrap();
        assert_eq!(
            read_one(&mut c).await.status,
            200,
            "{name}: the connection was not kept"
        );
    }

    // The server log says which gate refused and why; the client saw none of it.
    let log = s.log_text();
    for needle in [
        "access denied at gate 2: wrong password",
        "access denied at gate 2: unknown user",
        "access denied at gate 2: account disabled",
        "locked out",
        "access denied at gate 3: no authorization rule admits norule",
        "access denied at gate 4: authorization rules admit norole to Vendor but no role",
    ] {
        assert!(
            log.to_lowercase().contains(&needle.to_lowercase()),
            "the log lacks {needle:?}:\n{}",
            log.lines()
                .filter(|l| l.contains("denied"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(!seen.is_empty());
}

/// Read one HTTP/1.1 response (Content-Length framed) from a kept-alive connection.
async fn read_one(c: &mut tokio::net::TcpStream) -> HttpReply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.truncate(end + 4 + len);
                return parse_http(&buf);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(60), c.read(&mut chunk))
            .await
            .expect("no reply within 60 s")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_can_open_no_session_is_refused_identify_and_never_remembered() {
    let s = serve();
    // Before: norole's right password got 200 for Identify (and a 500 fault for Receive)
    // where a wrong one got the 401, and was remembered (0.2 ms against ~15 ms).
    for (user, pw) in [("norole", "norole-Pw-1"), ("norule", "norule-Pw-1")] {
        let right = basic(user, pw);
        let wrong = basic(user, "wrong-Pw-9");
        let (r, _) = post_from(local(30), s.addr, &right, IDENTIFY).await;
        assert_eq!(
            r.status,
            401,
            "{user}: Identify with the right password: {}",
            r.text()
        );
        let (w, _) = post_from(local(30), s.addr, &wrong, IDENTIFY).await;
        assert_eq!(strip(&r), strip(&w), "{user}");
        let (r, _) = post_from(local(30), s.addr, &right, &receive_on("X")).await;
        assert_eq!(strip(&r), strip(&w), "{user}: Receive");
    }
    // Each of those cost a verification: the log shows one refusal per request at gate 3/4,
    // never an "authenticated" line for them.
    let log = s.log_text();
    assert!(
        !log.lines().any(|l| l.contains("authenticated")
            && (l.contains("norole") || l.contains("norule"))
            && !l.contains("denied")),
        "{log}"
    );
    assert_eq!(
        log.matches("access denied at gate 4: authorization rules admit norole")
            .count(),
        2,
        "{log}"
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Run alone by tests/run.sh (`--ignored --exact`, one test thread): beside the other tests of
/// this binary the machine's load, not keyhole, decides a millisecond.
#[ignore = "a timing test: tests/run.sh runs it alone after the others"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_takes_the_same_time_medians_of_200_interleaved_attempts() {
    const ROUNDS: usize = 200;
    const WARM_UP: usize = 5;
    let s = serve();
    lock_out(&s, local(14), "locked").await;
    let cases = refusal_cases();
    let body = create_winrs();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut order: Vec<usize> = (0..cases.len()).collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..WARM_UP + ROUNDS {
        // A new order each round (xorshift Fisher–Yates): no case always follows another.
        for i in (1..order.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        for &c in &order {
            let (_, from, auth) = &cases[c];
            let (r, took) = post_from(*from, s.addr, auth, &body).await;
            assert_eq!(r.status, 401, "{}", cases[c].0);
            if round >= WARM_UP {
                times[c].push(took);
            }
        }
    }
    // Raw medians per case, and per case the median of its time less its round's median (the
    // six requests of a round share the machine's load, which on a shared 2-core machine moves
    // an argon2id verification by milliseconds between rounds; the round's median cancels that
    // and is itself steadier than any one sample). The assertion: those medians, one per case,
    // differ by less than 1 ms.
    let ms = |d: f64| d * 1e3;
    let raw: Vec<f64> = times
        .iter()
        .map(|t| median(&mut t.clone()).as_secs_f64())
        .collect();
    let rounds = times[0].len();
    let round_median: Vec<f64> = (0..rounds)
        .map(|r| {
            let mut v: Vec<f64> = times.iter().map(|t| t[r].as_secs_f64()).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        })
        .collect();
    let relative: Vec<f64> = times
        .iter()
        .map(|t| {
            let mut d: Vec<f64> = t
                .iter()
                .zip(&round_median)
                .map(|(x, m)| x.as_secs_f64() - m)
                .collect();
            d.sort_by(|a, b| a.partial_cmp(b).unwrap());
            d[d.len() / 2]
        })
        .collect();
    let mut report = String::new();
    for (c, (name, _, _)) in cases.iter().enumerate() {
        report.push_str(&format!(
            "  {name}: median {:.3} ms; median against its round {:+.3} ms\n",
            ms(raw[c]),
            ms(relative[c])
        ));
    }
    let spread = |v: &[f64]| {
        v.iter().cloned().fold(f64::MIN, f64::max) - v.iter().cloned().fold(f64::MAX, f64::min)
    };
    let (raw_spread, rel_spread) = (spread(&raw), spread(&relative));
    eprintln!(
        "refusal timing, {ROUNDS} interleaved rounds of the {} cases (debug build of keyhole serve):\n{report}  the medians differ by at most {:.3} ms against their rounds ({:.3} ms raw)",
        cases.len(),
        ms(rel_spread),
        ms(raw_spread)
    );
    // The one timing assertion issue 9 asks for.
    assert!(
        rel_spread < 1e-3,
        "the refusals' medians differ by {:.3} ms:\n{report}",
        ms(rel_spread)
    );
    // Each refusal was one argon2id verification, not a shortcut: well above a remembered
    // login's time (under 1 ms).
    assert!(raw.iter().all(|t| *t > 2e-3), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_wrong_passwords_keep_memory_bounded_and_a_remembered_login_answers()
{
    let s = serve();
    let alice = basic("alice", "alice-Pw-1");
    // alice logs in (verified once, remembered).
    let (r, _) = post_from(local(1), s.addr, &alice, IDENTIFY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Let the server settle, then take the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (base_rss, base_hwm) = s.rss();

    let slots = keyhole::auth::verification_slots() as u64;
    let wrong = basic("alice", "not-hers");
    let body = create_winrs();
    let mut flood = Vec::new();
    for _ in 0..64 {
        let (a, b, addr) = (wrong.clone(), body.clone(), s.addr);
        flood.push(tokio::spawn(async move {
            post_from(local(2), addr, &a, &b).await.0
        }));
    }
    // While the flood runs, alice's remembered login is answered (no verification slot, no
    // blocking thread needed).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (r, alice_took) = post_from(local(1), s.addr, &alice, IDENTIFY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for t in flood {
        assert_eq!(t.await.unwrap().status, 401);
    }
    let (rss, hwm) = s.rss();
    // The peak since start, above the resident size before the flood (an over-estimate of the
    // flood's growth when the start-up peak was higher).
    let growth = hwm.saturating_sub(base_rss);
    let _ = base_hwm;
    // At most `slots` verifications at once, each with one 19 MiB work area (reused, not
    // re-allocated); generous: twice that, plus 48 MiB for threads, buffers and the
    // allocator. Before, 64 ran at once (1.0 GiB).
    let bound = 2 * slots * ARGON2_BYTES + 48 * 1024 * 1024;
    eprintln!(
        "64 concurrent wrong passwords: RSS {:.1} MiB before, peak {:.1} MiB (+{:.1} MiB), {:.1} MiB after; {} verification slots; bound +{:.0} MiB; alice's remembered Identify during the flood: {:.2} ms",
        base_rss as f64 / 1048576.0,
        hwm as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        rss as f64 / 1048576.0,
        slots,
        bound as f64 / 1048576.0,
        alice_took.as_secs_f64() * 1e3
    );
    assert!(
        growth <= bound,
        "peak RSS grew by {} MiB (bound {} MiB)",
        growth / 1048576,
        bound / 1048576
    );
}

/// A gate 2 whose every verification takes `hold` (as a slow argon2id would): anyone with a
/// Basic header is admitted after that time.
struct SlowGate {
    hold: Duration,
    verifying: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
}

impl keyhole::wsman::shell::Authenticate for SlowGate {
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        _peer: SocketAddr,
        _cert: Option<[u8; 32]>,
    ) -> Option<keyhole::wsman::shell::Identity> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.verifying.fetch_add(1, SeqCst) + 1;
        self.most_at_once.fetch_max(now, SeqCst);
        std::thread::sleep(self.hold);
        self.verifying.fetch_sub(1, SeqCst);
        authorization?;
        Some(keyhole::wsman::shell::Identity {
            user: "someone".into(),
            groups: Vec::new(),
        })
    }

    fn challenges(&self) -> Vec<String> {
        vec!["Basic realm=\"keyhole\"".into()]
    }
}

/// The listener runs gate 2's verifications in its slots: never more at once than the slots,
/// one address at most half of them, and a request that gets no slot within the deadline gets
/// the generic 401 — while another address still gets its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_bounds_verifications_per_address_and_refuses_after_the_queue_deadline() {
    use keyhole::auth::slots::VerifySlots;
    let state = tempfile::tempdir().unwrap();
    let gate = Arc::new(SlowGate {
        hold: Duration::from_millis(1500),
        verifying: Default::default(),
        most_at_once: Default::default(),
    });
    let mut server = keyhole::http::Server::bind(runtime(state.path()), gate.clone())
        .await
        .unwrap();
    // 2 slots, so at most 1 per address; a request waits at most 400 ms for one.
    server.share_verify_slots(Arc::new(VerifySlots::new(2, Duration::from_millis(400))));
    let addr = server.http_addr.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        server
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let auth = basic("anyone", "anything");
    // Three at once from one address: one verifies, the two others wait past the deadline.
    let mut flood = Vec::new();
    for _ in 0..3 {
        let a = auth.clone();
        flood.push(tokio::spawn(async move {
            post_from(local(40), addr, &a, IDENTIFY).await.0.status
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another address takes the other half of the slots meanwhile.
    let (other, _) = post_from(local(41), addr, &auth, IDENTIFY).await;
    assert_eq!(other.status, 200, "{}", other.text());
    let mut statuses = Vec::new();
    for t in flood {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 401, 401],
        "one verified, two refused at the deadline"
    );
    assert!(
        gate.most_at_once.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "more verifications at once than slots"
    );
    let _ = tx.send(());
    let _ = handle.await;
}
