//! The web console below the browser: sign-in through the real gates (one message for every
//! refusal, the gate in the audit log), the cookie's flags, CSRF and same-origin checks on every
//! state-changing request, the session store (per-user limit, idle time-out, reconnect, sign-out
//! kills programs), request budgets, completion through the API, and the listener serving
//! `/console` on HTTPS only. The browser itself is driven by tests/interop/test_console.py.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::wsman_common::parse_http;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{HeaderMap, Method};
use keyhole::console::store::Lookup;
use keyhole::console::{Console, ACCESS_DENIED};
use keyhole::gates::{Gates, SessionKind};
use keyhole::http::{WebRequest, WebRoutes};
use keyhole::shells::runner::Workers;
use keyhole::shells::UserBudgets;
use serde_json::{json, Value};

const HOST: &str = "testhost:5986";
const ORIGIN: &str = "https://testhost:5986";

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name
}

struct Fixture {
    dir: tempfile::TempDir,
    gates: Arc<Gates>,
    console: Arc<Console>,
}

/// alice (helpdesk: a rule and a role in E), bob (a rule, no role), mallory (no rule); E grants
/// Get-Date, Restart-Service -Name cron|nginx and /usr/bin/sleep N.
fn fixture(console_extra: &str) -> Fixture {
    fixture_with(1000, console_extra)
}

fn fixture_with(max_failed_logins: u32, console_extra: &str) -> Fixture {
    let d = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "keyhole.toml",
        &format!(
            "computer_name = \"testhost\"\ncomputer_aliases = [\"testhost.example\"]\n[listener]\nhttps = \"127.0.0.1:0\"\nhttp = \"\"\n[auth]\nmax_failed_logins = {max_failed_logins}\n[console]\nenabled = true\nmax_sessions_per_user = 2\n{console_extra}"
        ),
    );
    w(
        "endpoints/E.toml",
        &format!(
            "name = \"E\"\nrun_as = {:?}\n[[role]]\ngroup = \"helpdesk\"\nrole_capabilities = [\"R\"]\n",
            me()
        ),
    );
    w(
        "role-capabilities/R.toml",
        "visible_cmdlets = [\"Get-Date\", { name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_set = [\"cron\", \"nginx\"] } ] }]\nvisible_external_commands = [{ path = \"/usr/bin/sleep\", arguments = [\"[0-9]{1,3}\"] }]\n",
    );
    w(
        "authorization-rules.toml",
        "[[rule]]\nid = 1\nname = \"helpdesk\"\nuser_group = \"helpdesk\"\ncomputer = \"*\"\nconfiguration = \"E\"\n\n[[rule]]\nid = 2\nname = \"bob\"\nuser = \"bob\"\ncomputer = \"*\"\nconfiguration = \"*\"\n",
    );
    let mut users = String::new();
    for (u, g) in [("alice", "helpdesk"), ("bob", ""), ("mallory", "")] {
        let h = keyhole::auth::hash_password(&format!("{u}-pw")).unwrap();
        let groups = if g.is_empty() {
            String::new()
        } else {
            format!("\"{g}\"")
        };
        users.push_str(&format!(
            "[users.{u}]\npassword = \"{h}\"\ngroups = [{groups}]\n\n"
        ));
    }
    w("users.toml", &users);
    let cfg = keyhole::check::load(&d.path().join("keyhole.toml"))
        .unwrap_or_else(|e| panic!("{:?}", e.iter().map(|d| &d.rendered).collect::<Vec<_>>()));
    let gates = Arc::new(Gates::new(cfg).unwrap());
    let console = Console::new(gates.clone(), Workers::new(4), UserBudgets::new());
    Fixture {
        dir: d,
        gates,
        console,
    }
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

/// The value of `<meta name=keyhole-csrf>` / the hidden `csrf` field, and the message shown.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = text.find(start)? + start.len();
    let j = text[i..].find(end)? + i;
    Some(&text[i..j])
}

/// A browser's view: a cookie jar, and the headers Chromium sends on same-origin requests.
struct Browser {
    console: Arc<Console>,
    jar: HashMap<String, String>,
    peer: SocketAddr,
}

impl Browser {
    fn new(f: &Fixture) -> Browser {
        Browser {
            console: f.console.clone(),
            jar: HashMap::new(),
            peer: "127.0.0.1:40000".parse().unwrap(),
        }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert("host", HOST.parse().unwrap());
        if !self.jar.is_empty() {
            let c: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            headers.insert("cookie", c.join("; ").parse().unwrap());
        }
        for (k, v) in extra {
            headers.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        let req = WebRequest {
            method,
            path,
            query,
            headers,
            body: Bytes::copy_from_slice(body),
            peer: self.peer,
            client_cert_sha256: None,
        };
        let resp = self.console.clone().handle(req).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let r = Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        };
        for c in r.cookies() {
            let first = c.split(';').next().unwrap();
            let (k, v) = first.split_once('=').unwrap();
            if c.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_string(), v.to_string());
            }
        }
        r
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], b"").await
    }

    /// Fill and send the sign-in form (fetching it first, as a browser does).
    async fn sign_in(&mut self, user: &str, pw: &str, computer: &str, ep: &str) -> Reply {
        let page = self.get("/console").await;
        let token = between(&page.text(), "name=\"csrf\" value=\"", "\"")
            .unwrap()
            .to_string();
        self.post_form(&token, user, pw, computer, ep, &[("origin", ORIGIN)])
            .await
    }

    async fn post_form(
        &mut self,
        token: &str,
        user: &str,
        pw: &str,
        computer: &str,
        ep: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        };
        let body = format!(
            "csrf={}&user={}&password={}&computer={}&configuration={}",
            enc(token),
            enc(user),
            enc(pw),
            enc(computer),
            enc(ep)
        );
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        self.send(Method::POST, "/console/sign-in", &h, body.as_bytes())
            .await
    }

    /// The console page's CSRF token (GET /console with the session cookie).
    async fn csrf(&mut self) -> String {
        let page = self.get("/console").await;
        between(&page.text(), "name=\"keyhole-csrf\" content=\"", "\"")
            .unwrap_or_else(|| panic!("not a console page: {}", page.text()))
            .to_string()
    }

    async fn api(&mut self, csrf: &str, call: &str, body: Value) -> Reply {
        self.send(
            Method::POST,
            &format!("/console/api/{call}"),
            &[
                ("content-type", "application/json"),
                ("x-keyhole-csrf", csrf),
                ("origin", ORIGIN),
                ("sec-fetch-site", "same-origin"),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Poll until the line ended; returns the screen text by kind.
    async fn output(&mut self, csrf: &str, cursor: &mut u64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self
                .api(csrf, "poll", json!({"cursor": *cursor, "running": true}))
                .await;
            let v = r.json();
            for e in v["entries"].as_array().cloned().unwrap_or_default() {
                out.push((
                    e["kind"].as_str().unwrap().to_string(),
                    e["text"].as_str().unwrap().to_string(),
                ));
            }
            *cursor = v["cursor"].as_u64().unwrap_or(*cursor);
            if v["running"] == json!(false) || v["signed_out"] == json!(true) {
                return out;
            }
            assert!(Instant::now() < until, "the line never ended: {out:?}");
        }
    }
}

fn audit(f: &Fixture) -> Vec<Value> {
    std::fs::read_to_string(f.dir.path().join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn message(page: &str) -> String {
    between(page, "role=\"alert\">", "</p>")
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_sign_in_shows_one_message_and_the_audit_log_names_the_gate() {
    let f = fixture("");
    let mut b = Browser::new(&f);
    let cases = [
        ("alice", "wrong", "testhost", "E", 2, "wrong password"),
        ("nobody-here", "x-pw", "testhost", "E", 2, "unknown user"),
        (
            "mallory",
            "mallory-pw",
            "testhost",
            "E",
            3,
            "no authorization rule",
        ),
        (
            "alice",
            "alice-pw",
            "elsewhere",
            "E",
            3,
            "neither computer_name nor an alias",
        ),
        ("alice", "alice-pw", "testhost", "Nope", 3, "Nope"),
        (
            "bob",
            "bob-pw",
            "testhost",
            "E",
            4,
            "no role applies to user bob",
        ),
    ];
    let mut pages = Vec::new();
    for (user, pw, computer, ep, gate, reason) in cases {
        let before = audit(&f).len();
        let r = b.sign_in(user, pw, computer, ep).await;
        assert_eq!(r.status, 403, "{user}/{computer}/{ep}: {}", r.text());
        assert!(
            r.cookies()
                .iter()
                .all(|c| !c.starts_with("__Secure-keyhole-console=")),
            "no session cookie for a refusal"
        );
        pages.push(message(&r.text()));
        let new: Vec<Value> = audit(&f).split_off(before);
        let deny = new
            .iter()
            .find(|e| e["decision"] == "deny")
            .unwrap_or_else(|| panic!("{user}: no deny record in {new:?}"));
        let gate_name = ["", "", "authentication", "gateway", "endpoint"][gate];
        assert_eq!(deny["gate"], gate_name, "{user}/{computer}/{ep}: {deny}");
        assert!(
            deny["reason"].as_str().unwrap().contains(reason),
            "{user}/{computer}/{ep}: {deny}"
        );
    }
    assert!(pages.iter().all(|p| p == &pages[0]), "{pages:?}");
    assert_eq!(pages[0], ACCESS_DENIED);
    assert_eq!(f.console.store().len(), 0);

    // The alias is a name of this server, as is computer_name in any case.
    let r = b
        .sign_in("alice", "alice-pw", "TESTHOST.example", "e")
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let page = b.get("/console").await.text();
    assert!(
        page.contains("<strong id=\"who-user\">alice</strong>"),
        "{page}"
    );
    assert!(
        page.contains("<strong id=\"who-endpoint\">E</strong>"),
        "{page}"
    );
    assert!(page.contains("[testhost.example]: PS&gt;"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_count_towards_the_same_lock_out_as_ws_man() {
    use keyhole::wsman::shell::Authenticate as _;
    let f = fixture_with(3, "");
    let mut b = Browser::new(&f);
    for _ in 0..3 {
        let r = b.sign_in("alice", "wrong", "testhost", "E").await;
        assert_eq!(message(&r.text()), ACCESS_DENIED);
    }
    // Locked out: the right password gets the same page, and WS-Man's Basic is locked too.
    let r = b.sign_in("alice", "alice-pw", "testhost", "E").await;
    assert_eq!(r.status, 403);
    assert_eq!(message(&r.text()), ACCESS_DENIED);
    let last = audit(&f)
        .into_iter()
        .rev()
        .find(|e| e["decision"] == "deny")
        .unwrap();
    assert_eq!(last["gate"], "authentication");
    assert!(
        last["reason"].as_str().unwrap().contains("locked out"),
        "{last}"
    );
    let header = crate::wsman_common::basic("alice", "alice-pw");
    let peer: SocketAddr = "127.0.0.1:40002".parse().unwrap();
    assert!(f
        .gates
        .authenticate(Some(header.as_bytes()), peer, None)
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_strict_and_every_answer_carries_the_security_headers() {
    let f = fixture("");
    let mut b = Browser::new(&f);
    let form = b.get("/console").await;
    let signin_cookie = form
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("__Secure-keyhole-sign-in="))
        .unwrap();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(signin_cookie.contains(flag), "{signin_cookie}");
    }
    let r = b.sign_in("alice", "alice-pw", "testhost", "E").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location").as_deref(), Some("/console"));
    let cookie = r
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("__Secure-keyhole-console="))
        .unwrap();
    assert_eq!(
        cookie.split("; ").skip(1).collect::<Vec<_>>(),
        ["Secure", "HttpOnly", "SameSite=Strict", "Path=/console"],
        "a session cookie (no Max-Age) with every flag: {cookie}"
    );
    let id = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    assert_eq!(id.len(), 43, "256 bits, URL-safe base64");
    let csrf = b.csrf().await;
    assert_ne!(csrf, id, "the CSRF token is not the session id");
    let js = b.get("/console/console.js").await;
    let api = b.api(&csrf, "keepalive", json!({})).await;
    for r in [&form, &js, &api, &b.get("/console").await] {
        assert_eq!(
            r.header("content-security-policy").as_deref(),
            Some("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
        );
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(r.header("referrer-policy").as_deref(), Some("no-referrer"));
        assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    }
    assert_eq!(
        js.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    // A cookie the server never issued is not a session.
    let mut stranger = Browser::new(&f);
    stranger
        .jar
        .insert("__Secure-keyhole-console".into(), "A".repeat(43));
    let r = stranger.api(&csrf, "keepalive", json!({})).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["signed_out"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_requests_need_the_token_and_the_same_origin() {
    let f = fixture("");
    let mut b = Browser::new(&f);
    // Sign-in: the form's token must match its cookie; a foreign Origin is refused.
    let page = b.get("/console").await;
    let token = between(&page.text(), "name=\"csrf\" value=\"", "\"")
        .unwrap()
        .to_string();
    let forged = "A".repeat(43);
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        (String::new(), vec![("origin", ORIGIN)]),
        (forged.clone(), vec![("origin", ORIGIN)]),
        (token.clone(), vec![("origin", "https://evil.example")]),
        (token.clone(), vec![("sec-fetch-site", "cross-site")]),
    ];
    for (t, headers) in cases {
        let r = b
            .post_form(&t, "alice", "alice-pw", "testhost", "E", &headers)
            .await;
        assert_eq!(r.status, 403, "{t:?} {headers:?}");
        assert!(
            !r.text().contains(ACCESS_DENIED),
            "not a credential refusal"
        );
        assert_eq!(f.console.store().len(), 0);
    }
    assert!(
        audit(&f).is_empty(),
        "refused before gate 2: nothing to audit"
    );

    let r = b.sign_in("alice", "alice-pw", "testhost", "E").await;
    assert_eq!(r.status, 303);
    let csrf = b.csrf().await;
    let run = json!({"line": "Get-Date"}).to_string();
    for headers in [
        vec![("content-type", "application/json")],
        vec![
            ("content-type", "application/json"),
            ("x-keyhole-csrf", "A".repeat(43).leak() as &str),
        ],
        vec![
            ("content-type", "application/json"),
            ("x-keyhole-csrf", csrf.clone().leak() as &str),
            ("origin", "https://evil.example"),
        ],
        vec![
            ("content-type", "application/json"),
            ("x-keyhole-csrf", csrf.clone().leak() as &str),
            ("sec-fetch-site", "same-site"),
        ],
    ] {
        let r = b
            .send(Method::POST, "/console/api/run", &headers, run.as_bytes())
            .await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
    }
    // A form post (what another site can make a browser send) is not an API call.
    let r = b
        .send(
            Method::POST,
            "/console/api/run",
            &[("content-type", "text/plain"), ("x-keyhole-csrf", &csrf)],
            run.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 415);
    let mut cursor = 0;
    assert!(b.output(&csrf, &mut cursor).await.is_empty(), "nothing ran");
    // Sign-out by form needs the hidden token too.
    let r = b
        .send(
            Method::POST,
            "/console/sign-out",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"csrf=wrong",
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(f.console.store().len(), 1);
    let r = b
        .send(
            Method::POST,
            "/console/sign-out",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", ORIGIN),
            ],
            format!("csrf={csrf}").as_bytes(),
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/console?ended=signed-out")
    );
    assert_eq!(f.console.store().len(), 0);
    let page = b.get("/console?ended=signed-out").await.text();
    assert!(message(&page).starts_with("You have signed out."), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_run_one_at_a_time_and_stop_or_sign_out_kills_the_program() {
    let f = fixture("");
    let mut b = Browser::new(&f);
    assert_eq!(
        b.sign_in("alice", "alice-pw", "testhost", "E").await.status,
        303
    );
    let csrf = b.csrf().await;
    let mut cursor = 0;
    // Granted, and refused by the role's set: the refusal is an error record.
    assert_eq!(
        b.api(&csrf, "run", json!({"line": "Get-Date -Format yyyy"}))
            .await
            .status,
        202
    );
    let out = b.output(&csrf, &mut cursor).await;
    assert_eq!(out[0], ("echo".into(), "Get-Date -Format yyyy".into()));
    assert!(
        out.iter()
            .any(|(k, t)| k == "output" && t.trim().len() == 4),
        "{out:?}"
    );
    b.api(&csrf, "run", json!({"line": "Restart-Service -Name ssh"}))
        .await;
    let out = b.output(&csrf, &mut cursor).await;
    assert!(
        out.iter()
            .any(|(k, t)| k == "error" && t.contains("does not belong to the set")),
        "{out:?}"
    );
    // A long program: a second line is refused while it runs; Stop kills it.
    let argv = ["sleep", "173"];
    b.api(&csrf, "run", json!({"line": "sleep 173"})).await;
    let until = Instant::now() + Duration::from_secs(20);
    while processes(&argv).is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!processes(&argv).is_empty(), "sleep never started");
    let r = b.api(&csrf, "run", json!({"line": "Get-Date"})).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = b.api(&csrf, "stop", json!({})).await;
    assert_eq!(r.json()["stopped"], true);
    let out = b.output(&csrf, &mut cursor).await;
    assert!(
        out.iter()
            .any(|(k, t)| k == "notice" && t.contains("The pipeline has been stopped.")),
        "{out:?}"
    );
    assert!(processes(&argv).is_empty(), "stopped: no sleep left");

    // Sign-out while a program runs: the program is killed, the slot and transcript end.
    let argv = ["sleep", "174"];
    b.api(&csrf, "run", json!({"line": "sleep 174"})).await;
    let until = Instant::now() + Duration::from_secs(20);
    while processes(&argv).is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!processes(&argv).is_empty());
    let r = b.api(&csrf, "sign-out", json!({})).await;
    assert_eq!(r.json()["signed_out"], true);
    let until = Instant::now() + Duration::from_secs(20);
    while (!processes(&argv).is_empty()
        || f.gates.open_sessions_of(SessionKind::Console, "alice") > 0)
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(processes(&argv).is_empty(), "signed out: no sleep left");
    assert_eq!(f.gates.open_sessions_of(SessionKind::Console, "alice"), 0);
    let log = audit(&f);
    let end = log
        .iter()
        .rev()
        .find(|e| e["kind"] == "session_end")
        .unwrap();
    assert_eq!(end["transport"], "console");
    let transcripts: Vec<_> = std::fs::read_dir(f.dir.path().join("transcripts"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(transcripts.len(), 1);
    let t = std::fs::read_to_string(transcripts[0].path()).unwrap();
    for want in [
        "Transport: console",
        "Client Address: 127.0.0.1",
        "PS>Restart-Service -Name ssh",
        "PS>sleep 174",
        "PowerShell transcript end",
    ] {
        assert!(t.contains(want), "{want:?} not in\n{t}");
    }
}

/// PIDs of processes whose argv is exactly `argv` (program by base name).
fn processes(argv: &[&str]) -> Vec<u32> {
    let mut pids = Vec::new();
    for d in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = d.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(d.path().join("cmdline")) else {
            continue;
        };
        let parts: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        if parts.len() == argv.len()
            && parts[0].rsplit('/').next() == Some(argv[0])
            && parts[1..] == argv[1..]
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_user_are_limited_and_a_reload_of_the_page_reconnects() {
    let f = fixture("");
    let mut one = Browser::new(&f);
    let mut two = Browser::new(&f);
    let mut three = Browser::new(&f);
    assert_eq!(
        one.sign_in("alice", "alice-pw", "testhost", "E")
            .await
            .status,
        303
    );
    assert_eq!(
        two.sign_in("ALICE", "alice-pw", "testhost", "E")
            .await
            .status,
        303
    );
    let r = three.sign_in("alice", "alice-pw", "testhost", "E").await;
    assert_eq!(r.status, 403, "max_sessions_per_user = 2");
    assert_eq!(message(&r.text()), ACCESS_DENIED);
    let deny = audit(&f)
        .into_iter()
        .rev()
        .find(|e| e["decision"] == "deny")
        .unwrap();
    assert!(
        deny["reason"]
            .as_str()
            .unwrap()
            .contains("max_sessions_per_user = 2"),
        "{deny}"
    );
    assert_eq!(f.gates.open_sessions_of(SessionKind::Console, "alice"), 2);
    assert_eq!(f.gates.open_sessions("alice"), 0, "not a PSRP slot");

    // Output, then a "new tab" with the same cookie reads the whole screen again.
    let csrf = one.csrf().await;
    one.api(&csrf, "run", json!({"line": "Get-Date -Format yyyy"}))
        .await;
    let mut cursor = 0;
    let first = one.output(&csrf, &mut cursor).await;
    let mut tab = Browser {
        console: f.console.clone(),
        jar: one.jar.clone(),
        peer: "127.0.0.1:40001".parse().unwrap(),
    };
    let csrf2 = tab.csrf().await;
    assert_eq!(csrf2, csrf, "the same session");
    let mut c2 = 0;
    let again = tab.output(&csrf2, &mut c2).await;
    assert_eq!(again, first);

    // A new sign-in in a browser that holds a session ends that one.
    let before = one.jar["__Secure-keyhole-console"].clone();
    let form = one.get("/console").await; // the console page: no form here
    assert!(form.text().contains("keyhole-csrf"));
    let mut fresh = Browser::new(&f);
    let page = fresh.get("/console").await;
    let token = between(&page.text(), "name=\"csrf\" value=\"", "\"")
        .unwrap()
        .to_string();
    one.jar.insert(
        "__Secure-keyhole-sign-in".into(),
        fresh.jar["__Secure-keyhole-sign-in"].clone(),
    );
    let r = one
        .post_form(
            &token,
            "alice",
            "alice-pw",
            "testhost",
            "E",
            &[("origin", ORIGIN)],
        )
        .await;
    assert_eq!(
        r.status,
        303,
        "the browser's own session frees the slot it needs? {}",
        r.text()
    );
    assert!(matches!(
        f.console.store().get(&before),
        Lookup::Ended(keyhole::console::store::Ended::SignedOut)
    ));
    assert_ne!(one.jar["__Secure-keyhole-console"], before);

    // Signing out one frees its slot.
    let c = two.csrf().await;
    two.api(&c, "sign-out", json!({})).await;
    let until = Instant::now() + Duration::from_secs(10);
    while f.gates.open_sessions_of(SessionKind::Console, "alice") > 1 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        three
            .sign_in("alice", "alice-pw", "testhost", "E")
            .await
            .status,
        303
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_warns_then_ends_but_a_running_command_keeps_it() {
    let f = fixture("idle_timeout = \"20m\"\n");
    let mut b = Browser::new(&f);
    assert_eq!(
        b.sign_in("alice", "alice-pw", "testhost", "E").await.status,
        303
    );
    let csrf = b.csrf().await;
    let v = b.api(&csrf, "keepalive", json!({})).await.json();
    assert_eq!(v["remaining_ms"], 20 * 60 * 1000);
    assert_eq!(v["warning_ms"], 60 * 1000, "warned a minute before");
    let id = b.jar["__Secure-keyhole-console"].clone();
    // Polls are not activity.
    let r = b
        .api(&csrf, "poll", json!({"cursor": 0, "running": true}))
        .await;
    assert!(r.json()["remaining_ms"].as_u64().unwrap() <= 20 * 60 * 1000);

    // A running command keeps the session from idling out.
    b.api(&csrf, "run", json!({"line": "sleep 175"})).await;
    let later = Instant::now() + Duration::from_secs(30 * 60);
    assert!(f.console.store().tick(later).is_empty(), "busy: not idle");
    b.api(&csrf, "stop", json!({})).await;
    let mut cursor = 0;
    b.output(&csrf, &mut cursor).await;
    // Idle from the tick that saw it running: 19 minutes later it is still there, 21 not.
    assert!(f
        .console
        .store()
        .tick(later + Duration::from_secs(19 * 60))
        .is_empty());
    let ended = f.console.store().tick(later + Duration::from_secs(21 * 60));
    assert_eq!(ended.len(), 1);
    assert!(matches!(
        f.console.store().get(&id),
        Lookup::Ended(keyhole::console::store::Ended::TimedOut)
    ));
    drop(ended);
    let r = b.api(&csrf, "keepalive", json!({})).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "timed-out");
    let page = b.get("/console?ended=timed-out").await.text();
    assert!(message(&page).contains("idle too long"), "{page}");
    let until = Instant::now() + Duration::from_secs(10);
    while f.gates.open_sessions_of(SessionKind::Console, "alice") > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.gates.open_sessions_of(SessionKind::Console, "alice"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_ends_the_session_and_requests_are_budgeted() {
    let f = fixture("");
    let mut b = Browser::new(&f);
    assert_eq!(
        b.sign_in("alice", "alice-pw", "testhost", "E").await.status,
        303
    );
    let csrf = b.csrf().await;
    // Completion answers from the session's table only, in the browser's UTF-16 positions.
    let v = b
        .api(
            &csrf,
            "complete",
            json!({"line": "é; restart-s", "cursor": 12}),
        )
        .await
        .json();
    assert_eq!(v["matches"], json!(["Restart-Service"]));
    assert_eq!(
        (v["start"].as_u64(), v["end"].as_u64()),
        (Some(3), Some(12))
    );
    let v = b
        .api(
            &csrf,
            "complete",
            json!({"line": "Restart-Service -Name ", "cursor": 22}),
        )
        .await
        .json();
    assert_eq!(v["matches"], json!(["cron", "nginx"]));
    let v = b
        .api(&csrf, "complete", json!({"line": "Get-Proc", "cursor": 8}))
        .await
        .json();
    assert_eq!(v["matches"], json!([]), "not granted: not offered");
    // Malformed bodies are refused with a reason; unknown fields too.
    let r = b.api(&csrf, "run", json!({"line": 5})).await;
    assert_eq!(r.status, 400);
    let r = b.api(&csrf, "run", json!({"line": "x", "more": 1})).await;
    assert_eq!(r.status, 400);
    let r = b
        .api(&csrf, "run", json!({"line": "a".repeat(20 * 1024)}))
        .await;
    assert_eq!(r.status, 413);

    // The budget: a burst, then 429.
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(b.api(&csrf, "keepalive", json!({})).await.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    b.api(&csrf, "run", json!({"line": "exit"})).await;
    let mut cursor = 0;
    let out = b.output(&csrf, &mut cursor).await;
    assert!(
        out.contains(&("echo".to_string(), "exit".to_string())),
        "{out:?}"
    );
    let r = b.api(&csrf, "poll", json!({"cursor": 0})).await;
    assert_eq!(r.json()["reason"], "exited");
    assert_eq!(f.console.store().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_the_console_on_https_only_and_bounds_its_bodies() {
    let f = fixture("");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = keyhole::config::ServerConfig {
        computer_name: "testhost".into(),
        state_directory: state.path().to_string_lossy().into_owned(),
        ..Default::default()
    };
    cfg.listener.https = "127.0.0.1:0".into();
    cfg.listener.http = "127.0.0.1:0".into();
    let rt = keyhole::http::ServerRuntime::from_config(&cfg, state.path());
    let mut server = keyhole::http::Server::bind(rt, f.gates.clone())
        .await
        .unwrap();
    server.register_routes(f.console.clone());
    let (https, http) = (server.https_addr.unwrap(), server.http_addr.unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let plain = crate::wsman_common::raw_request(
        http,
        &format!("GET /console HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"),
        b"",
    )
    .await;
    assert_eq!(plain.status, 404, "never over plain HTTP");

    let tls = insecure_tls();
    let get = tls_request(
        https,
        &tls,
        &format!("GET /console HTTP/1.1\r\nHost: {https}\r\nConnection: close\r\n\r\n"),
        b"",
    )
    .await;
    assert_eq!(get.status, 200);
    assert!(get.text().contains("action=\"/console/sign-in\""));
    let big = vec![b'a'; keyhole::console::MAX_BODY + 1];
    let post = tls_request(
        https,
        &tls,
        &format!(
            "POST /console/sign-in HTTP/1.1\r\nHost: {https}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            big.len()
        ),
        &big,
    )
    .await;
    assert_eq!(post.status, 413);
    let other = tls_request(
        https,
        &tls,
        &format!("GET /consolex HTTP/1.1\r\nHost: {https}\r\nConnection: close\r\n\r\n"),
        b"",
    )
    .await;
    assert_eq!(other.status, 404);
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
}

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn insecure_tls() -> tokio_rustls::TlsConnector {
    insecure_tls_with(None)
}

fn insecure_tls_with(
    client: Option<(
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert));
    let cfg = match client {
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_request(
    addr: SocketAddr,
    conn: &tokio_rustls::TlsConnector,
    head: &str,
    body: &[u8],
) -> crate::wsman_common::HttpReply {
    try_tls_request(addr, conn, head, body)
        .await
        .expect("no HTTP reply")
}

/// None when the TLS handshake or the connection failed before any HTTP reply.
async fn try_tls_request(
    addr: SocketAddr,
    conn: &tokio_rustls::TlsConnector,
    head: &str,
    body: &[u8],
) -> Option<crate::wsman_common::HttpReply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = conn
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .ok()?;
    s.write_all(head.as_bytes()).await.ok()?;
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    if out.is_empty() {
        return None;
    }
    Some(parse_http(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_is_checked_before_the_form_is_shown() {
    let f = fixture("");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keyhole console test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca, &ca_key).unwrap();
    let state = tempfile::tempdir().unwrap();
    let ca_path = state.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let mut cfg = keyhole::config::ServerConfig {
        computer_name: "testhost".into(),
        state_directory: state.path().to_string_lossy().into_owned(),
        ..Default::default()
    };
    cfg.listener.https = "127.0.0.1:0".into();
    cfg.listener.http = String::new();
    cfg.listener.client_ca = ca_path.to_string_lossy().into_owned();
    cfg.listener.require_client_certificate = true;
    let rt = keyhole::http::ServerRuntime::from_config(&cfg, state.path());
    let mut server = keyhole::http::Server::bind(rt, f.gates.clone())
        .await
        .unwrap();
    server.register_routes(f.console.clone());
    let https = server.https_addr.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let get = format!("GET /console HTTP/1.1\r\nHost: {https}\r\nConnection: close\r\n\r\n");
    let without = try_tls_request(https, &insecure_tls(), &get, b"").await;
    assert!(without.is_none(), "no certificate, no form: {without:?}");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        client_key.serialize_der(),
    ));
    let with = tls_request(
        https,
        &insecure_tls_with(Some((client.der().clone(), key))),
        &get,
        b"",
    )
    .await;
    assert_eq!(with.status, 200);
    assert!(with.text().contains("action=\"/console/sign-in\""));
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
}
