//! In-process WS-Man server tests (127.0.0.1, port 0): WinRS flow, faults for every malformed
//! input, ownership, quotas, limits, the identical 401, and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::wsman_common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyhole::http::{Server, ServerRuntime};
use keyhole::wsman::envelope::*;
use keyhole::wsman::shell::*;
use tokio::sync::Notify;
use wsman_common::*;

const PS_URI: &str = "http://schemas.microsoft.com/powershell/Quiet";

fn gate() -> Arc<StaticGatekeeper> {
    Arc::new(
        StaticGatekeeper::new("alice", "pw-alice", &["WinRS", "Quiet"])
            .with_user("bob", "pw-bob", &["WinRS", "Quiet"])
            .with_user("carol", "pw-carol", &["Nowhere"]),
    )
}

fn alice() -> String {
    basic("alice", "pw-alice")
}

/// A shell that never has anything to say (for Receive timeouts), not even after it was closed
/// (so only the WS-Man layer can answer a Receive waiting on it), and records being closed.
struct QuietShell {
    notify: Arc<Notify>,
    closed: Arc<AtomicBool>,
    receives: Arc<AtomicUsize>,
}

impl Shell for QuietShell {
    fn on_create(&mut self, _: &CreateRequest) -> Result<(), ShellError> {
        Ok(())
    }
    fn command(&mut self, req: CommandRequest) -> Result<String, ShellError> {
        Ok(req
            .command_id
            .unwrap_or_else(|| "C0FFEE00-0000-4000-8000-000000000001".into()))
    }
    fn send(
        &mut self,
        _: Option<&str>,
        _: StreamName,
        _: Vec<u8>,
        _: bool,
    ) -> Result<(), ShellError> {
        Ok(())
    }
    fn receive(&mut self, _: Option<&str>) -> Result<ReceiveResponse, ShellError> {
        self.receives.fetch_add(1, Ordering::SeqCst);
        Ok(ReceiveResponse::default())
    }
    fn signal(&mut self, _: Option<&str>, _: Signal) -> Result<(), ShellError> {
        Ok(())
    }
    fn close(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

/// Quiet shells on the endpoints the double's gates 3–4 admit.
struct QuietFactory {
    gate: Arc<StaticGatekeeper>,
    closed: Arc<AtomicBool>,
    receives: Arc<AtomicUsize>,
}

impl ShellFactory for QuietFactory {
    fn create(
        &self,
        id: &Identity,
        _: std::net::SocketAddr,
        endpoint: Option<&str>,
        _: &CreateRequest,
    ) -> Result<NewShell, CreateError> {
        if !endpoint.is_some_and(|e| self.gate.admits(id, e)) {
            return Err(CreateError::Refused);
        }
        Ok(NewShell {
            shell: Box::new(QuietShell {
                notify: Arc::new(Notify::new()),
                closed: self.closed.clone(),
                receives: self.receives.clone(),
            }),
            limits: self.gate.limits(),
        })
    }
}

async fn start_quiet(
    g: Arc<StaticGatekeeper>,
    tweak: impl FnOnce(&mut ServerRuntime),
) -> (TestServer, Arc<AtomicBool>) {
    let (s, closed, _) = start_quiet_counting(g, tweak).await;
    (s, closed)
}

/// As `start_quiet`, also counting the Receives that reached a shell.
async fn start_quiet_counting(
    g: Arc<StaticGatekeeper>,
    tweak: impl FnOnce(&mut ServerRuntime),
) -> (TestServer, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let closed = Arc::new(AtomicBool::new(false));
    let receives = Arc::new(AtomicUsize::new(0));
    let f: Arc<dyn ShellFactory> = Arc::new(QuietFactory {
        gate: g.clone(),
        closed: closed.clone(),
        receives: receives.clone(),
    });
    (
        start_with(g, tweak, vec![(URI_POWERSHELL_PREFIX, f)]).await,
        closed,
        receives,
    )
}

#[tokio::test]
async fn winrs_command_runs_through_the_engine_and_reports_exit_code() {
    let s = start(gate()).await;
    let r = create_shell(s.addr, &alice(), URI_CMD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let shell = shell_id_of(&r);
    let t = r.xml();
    assert_eq!(t.find(NS_SHELL, "ShellId").unwrap().text, shell);
    assert_eq!(t.find(NS_SHELL, "Owner").unwrap().text, "alice");

    let (mid, x) = envelope(
        ACTION_COMMAND,
        URI_CMD,
        Some(&shell),
        None,
        &command_body("Get-Service", &["-Name", "nginx"]),
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.relates_to().as_deref(), Some(mid.as_str()));
    let cmd = command_id_of(&r);

    let (out, err, code) = receive_all(s.addr, &alice(), &shell, &cmd).await;
    // The engine decides; whatever it says, the exit code is keyhole run's and a refusal is on stderr.
    assert!([0, 1, 2].contains(&code), "exit {code}");
    if code == 2 {
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("FullyQualifiedErrorId"), "{err}");
    }

    let (mid, x) = envelope(
        ACTION_SIGNAL,
        URI_CMD,
        Some(&shell),
        None,
        &signal_body(&cmd, "terminate"),
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.relates_to().as_deref(), Some(mid.as_str()));
    assert!(r.xml().find(NS_SHELL, "SignalResponse").is_some());

    let (mid, x) = envelope(ACTION_DELETE, URI_CMD, Some(&shell), None, "");
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.relates_to().as_deref(), Some(mid.as_str()));

    // The shell is gone.
    let (_, x) = envelope(
        ACTION_RECEIVE,
        URI_CMD,
        Some(&shell),
        Some("PT1S"),
        &receive_body(&cmd),
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.fault_code().as_deref(), Some("2150858843"));
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_shell_and_command_are_invalid_selectors() {
    let s = start(gate()).await;
    let (mid, x) = envelope(
        ACTION_RECEIVE,
        URI_CMD,
        Some("00000000-0000-0000-0000-000000000000"),
        Some("PT1S"),
        &receive_body("X"),
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.fault_code().as_deref(), Some("2150858843"));
    assert_eq!(r.relates_to().as_deref(), Some(mid.as_str()));
    assert!(r.text().contains("w:InvalidSelectors"));

    let shell = shell_id_of(&create_shell(s.addr, &alice(), URI_CMD).await);
    let (_, x) = envelope(
        ACTION_RECEIVE,
        URI_CMD,
        Some(&shell),
        Some("PT1S"),
        &receive_body("87E77BEB-6761-4C48-9D70-A00266B8459A"),
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.fault_code().as_deref(), Some("2150858843"));
    // No selector at all.
    let (_, x) = envelope(
        ACTION_RECEIVE,
        URI_CMD,
        None,
        Some("PT1S"),
        &receive_body("X"),
    );
    assert_eq!(
        post(s.addr, &alice(), &x).await.fault_code().as_deref(),
        Some("2150858843")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn another_users_shell_looks_unknown() {
    let s = start(gate()).await;
    let shell = shell_id_of(&create_shell(s.addr, &alice(), URI_CMD).await);
    let bob = basic("bob", "pw-bob");
    for (action, body) in [
        (ACTION_RECEIVE, receive_body("X")),
        (ACTION_COMMAND, command_body("Get-Date", &[])),
        (ACTION_SIGNAL, signal_body("X", "ctrl_c")),
        (ACTION_DELETE, String::new()),
        (ACTION_GET, String::new()),
    ] {
        let (_, x) = envelope(action, URI_CMD, Some(&shell), Some("PT1S"), &body);
        let theirs = post(s.addr, &bob, &x).await;
        let (_, x) = envelope(
            action,
            URI_CMD,
            Some("11111111-2222-3333-4444-555555555555"),
            Some("PT1S"),
            &body,
        );
        let unknown = post(s.addr, &bob, &x).await;
        assert_eq!(theirs.status, 500, "{action}");
        assert_eq!(
            without_ids(&theirs.text()),
            without_ids(&unknown.text()),
            "{action}"
        );
    }
    // Alice still has it.
    let (_, x) = envelope(
        ACTION_COMMAND,
        URI_CMD,
        Some(&shell),
        None,
        &command_body("Get-Date", &[]),
    );
    assert_eq!(post(s.addr, &alice(), &x).await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn shell_quota_gives_quota_limit() {
    let mut g = StaticGatekeeper::new("alice", "pw-alice", &["WinRS"]);
    g.max_shells = 2;
    let s = start(Arc::new(g)).await;
    assert_eq!(create_shell(s.addr, &alice(), URI_CMD).await.status, 200);
    let second = create_shell(s.addr, &alice(), URI_CMD).await;
    assert_eq!(second.status, 200);
    let r = create_shell(s.addr, &alice(), URI_CMD).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("w:QuotaLimit"), "{}", r.text());
    // Deleting one frees a slot.
    let (_, x) = envelope(
        ACTION_DELETE,
        URI_CMD,
        Some(&shell_id_of(&second)),
        None,
        "",
    );
    assert_eq!(post(s.addr, &alice(), &x).await.status, 200);
    assert_eq!(create_shell(s.addr, &alice(), URI_CMD).await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_envelope_is_refused_and_the_server_keeps_serving() {
    let s = start_with(
        gate(),
        |rt| rt.limits.max_envelope_size_kb.0 = 16,
        Vec::new(),
    )
    .await;
    let pad = "A".repeat(20 * 1024);
    let (_, x) = envelope(
        ACTION_CREATE,
        URI_CMD,
        None,
        None,
        &format!("<rsp:Shell><rsp:Name>{pad}</rsp:Name></rsp:Shell>"),
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("w:EncodingLimit"), "{}", r.text());
    // Issue 11 item 7: the fault says which limit, how large, and where it is set.
    let reason = r.xml().find(NS_SOAP, "Text").unwrap().text.clone();
    let message = r.xml().find(NS_WSMANFAULT, "Message").unwrap().text.clone();
    for t in [&reason, &message] {
        assert!(
            t.contains("MaxEnvelopeSize (16384 bytes") && t.contains("max_envelope_size_kb = 16"),
            "{t}"
        );
    }
    // Way over the limit (beyond what the server drains): still a fault or a closed connection, never a crash.
    let huge = vec![b'<'; 16 * 1024 * 9];
    let r = post_ct(
        s.addr,
        Some(&alice()),
        "application/soap+xml;charset=UTF-8",
        &huge,
    )
    .await;
    assert_eq!(r.status, 500);
    // And it still serves.
    assert_eq!(create_shell(s.addr, &alice(), URI_CMD).await.status, 200);
    s.shutdown().await;
}

async fn fault_for(s: &TestServer, ct: &str, body: &[u8]) -> HttpReply {
    let r = post_ct(s.addr, Some(&alice()), ct, body).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.fault_code().is_some(), "{}", r.text());
    r
}

#[tokio::test]
async fn malformed_requests_get_faults() {
    let s = start(gate()).await;
    let ct = "application/soap+xml;charset=UTF-8";
    let (_, good) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    // Bad XML.
    let r = fault_for(
        &s,
        ct,
        b"<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Body>",
    )
    .await;
    assert!(r.text().contains("InvalidMessageInformationHeader"));
    // A DTD (billion laughs never gets a chance).
    let dtd = format!("<!DOCTYPE x [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;\">]>{good}");
    fault_for(&s, ct, dtd.as_bytes()).await;
    // An undefined entity.
    fault_for(&s, ct, good.replace("stdin", "&xxe;").as_bytes()).await;
    // Deep nesting.
    let deep = good.replace(
        CREATE_CMD_BODY,
        &format!("{}{}", "<a>".repeat(100), "</a>".repeat(100)),
    );
    fault_for(&s, ct, deep.as_bytes()).await;
    // Invalid UTF-8.
    let mut bad = good.clone().into_bytes();
    let at = bad.iter().position(|b| *b == b'>').unwrap();
    bad.insert(at, 0xff);
    fault_for(&s, ct, &bad).await;
    // Wrong content type, and UTF-16.
    fault_for(&s, "text/plain", good.as_bytes()).await;
    fault_for(&s, "application/soap+xml;charset=UTF-16", good.as_bytes()).await;
    // Not SOAP; no Action.
    fault_for(&s, ct, b"<root/>").await;
    // Unknown action, unknown resource.
    let (_, x) = envelope("http://example.com/Nope", URI_CMD, None, None, "");
    assert!(fault_for(&s, ct, x.as_bytes())
        .await
        .text()
        .contains("ActionNotSupported"));
    let (_, x) = envelope(
        ACTION_CREATE,
        "http://example.com/resource",
        None,
        None,
        CREATE_CMD_BODY,
    );
    fault_for(&s, ct, x.as_bytes()).await;
    // Invalid base64 in Send.
    let shell = shell_id_of(&create_shell(s.addr, &alice(), URI_CMD).await);
    let (_, x) = envelope(
        ACTION_COMMAND,
        URI_CMD,
        Some(&shell),
        None,
        &command_body("Get-Date", &[]),
    );
    let cmd = command_id_of(&post(s.addr, &alice(), &x).await);
    let (_, x) = envelope(
        ACTION_SEND,
        URI_CMD,
        Some(&shell),
        None,
        &format!("<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"{cmd}\">!!notbase64!!</rsp:Stream></rsp:Send>"),
    );
    let r = fault_for(&s, ct, x.as_bytes()).await;
    assert!(r.text().contains("w:InvalidParameter"), "{}", r.text());
    // Valid stdin is accepted.
    let (_, x) = envelope(
        ACTION_SEND,
        URI_CMD,
        Some(&shell),
        None,
        &format!("<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"{cmd}\" End=\"true\">aGVsbG8=</rsp:Stream></rsp:Send>"),
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.xml().find(NS_SHELL, "SendResponse").is_some());
    // Stream names and signal codes keyhole does not serve.
    let (_, x) = envelope(
        ACTION_CREATE,
        URI_CMD,
        None,
        None,
        "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout bogus</rsp:OutputStreams></rsp:Shell>",
    );
    let r = fault_for(&s, ct, x.as_bytes()).await;
    assert!(r.text().contains("w:InvalidParameter"), "{}", r.text());
    let (_, x) = envelope(
        ACTION_RECEIVE,
        URI_CMD,
        Some(&shell),
        Some("PT1S"),
        &format!("<rsp:Receive><rsp:DesiredStream CommandId=\"{cmd}\">stdout nope</rsp:DesiredStream></rsp:Receive>"),
    );
    assert!(fault_for(&s, ct, x.as_bytes())
        .await
        .text()
        .contains("w:InvalidParameter"));
    let (_, x) = envelope(
        ACTION_SIGNAL,
        URI_CMD,
        Some(&shell),
        None,
        &signal_body(&cmd, "self_destruct"),
    );
    assert!(fault_for(&s, ct, x.as_bytes())
        .await
        .text()
        .contains("w:InvalidParameter"));
    // Bad -EncodedCommand.
    let (_, x) = envelope(
        ACTION_COMMAND,
        URI_CMD,
        Some(&shell),
        None,
        &command_body("powershell -encodedcommand QQ==", &[]),
    );
    fault_for(&s, ct, x.as_bytes()).await;
    // The server still works after all that.
    assert_eq!(create_shell(s.addr, &alice(), URI_CMD).await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn receive_times_out_with_the_fault_clients_retry() {
    let (s, _) = start_quiet(gate(), |_| {}).await;
    let r = create_shell(s.addr, &alice(), PS_URI).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let shell = shell_id_of(&r);
    let t0 = Instant::now();
    let (mid, x) = envelope(
        ACTION_RECEIVE,
        PS_URI,
        Some(&shell),
        Some("PT1S"),
        "<rsp:Receive><rsp:DesiredStream>stdout</rsp:DesiredStream></rsp:Receive>",
    );
    let r = post(s.addr, &alice(), &x).await;
    let waited = t0.elapsed();
    assert_eq!(r.status, 500);
    assert_eq!(r.fault_code().as_deref(), Some("2150858793"));
    assert!(r.text().contains("w:TimedOut"));
    assert_eq!(r.relates_to().as_deref(), Some(mid.as_str()));
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    s.shutdown().await;
}

/// Issue 11 item 5: psrp 1.0 and PowerShell keep a pool-level Receive open; when the shell is
/// deleted (or expires, or the server stops) it is answered at once, as Windows does, not after
/// its OperationTimeout: with ERROR_OPERATION_ABORTED (995), the fault psrp 1.0 ends its
/// listener on. A later request on the deleted shell gets InvalidSelectors.
#[tokio::test]
async fn a_waiting_receive_is_answered_at_once_when_its_shell_is_deleted() {
    let (s, closed, receives) = start_quiet_counting(gate(), |_| {}).await;
    let shell = shell_id_of(&create_shell(s.addr, &alice(), PS_URI).await);
    let (mid, x) = envelope(
        ACTION_RECEIVE,
        PS_URI,
        Some(&shell),
        Some("PT60S"),
        "<rsp:Receive><rsp:DesiredStream>stdout</rsp:DesiredStream></rsp:Receive>",
    );
    let addr = s.addr;
    let waiting = tokio::spawn(async move { post(addr, &alice(), &x).await });
    // Delete only once the Receive is waiting on the shell.
    while receives.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, del) = envelope(ACTION_DELETE, PS_URI, Some(&shell), None, "");
    assert_eq!(post(s.addr, &alice(), &del).await.status, 200);
    assert!(closed.load(Ordering::SeqCst));
    let r = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting Receive was not answered when its shell was deleted")
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.fault_code().as_deref(), Some("995"), "{}", r.text());
    assert_eq!(
        r.xml().find(NS_WSMANFAULT, "Message").unwrap().text,
        "The I/O operation has been aborted because of either a thread exit or an application request. "
    );
    assert_eq!(r.relates_to().as_deref(), Some(mid.as_str()));
    let (_, again) = envelope(
        ACTION_RECEIVE,
        PS_URI,
        Some(&shell),
        Some("PT60S"),
        "<rsp:Receive/>",
    );
    let r = post(s.addr, &alice(), &again).await;
    assert_eq!(
        r.fault_code().as_deref(),
        Some("2150858843"),
        "{}",
        r.text()
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_waiting_receive_is_answered_at_once_when_the_server_stops() {
    let (s, _, receives) = start_quiet_counting(gate(), |_| {}).await;
    let shell = shell_id_of(&create_shell(s.addr, &alice(), PS_URI).await);
    let (_, x) = envelope(
        ACTION_RECEIVE,
        PS_URI,
        Some(&shell),
        Some("PT60S"),
        "<rsp:Receive/>",
    );
    let addr = s.addr;
    let waiting = tokio::spawn(async move { post(addr, &alice(), &x).await });
    while receives.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = tokio::spawn(s.shutdown());
    // Well inside the shutdown grace period (the Receive does not hold shutdown up).
    let r = tokio::time::timeout(keyhole::http::SHUTDOWN_GRACE / 2, waiting)
        .await
        .expect("the waiting Receive was not answered at shutdown")
        .unwrap();
    assert_eq!(r.fault_code().as_deref(), Some("995"), "{}", r.text());
    let _ = stopping.await;
}

#[tokio::test]
async fn operation_timeout_is_clamped_to_the_configured_maximum() {
    let (s, _) = start_quiet(gate(), |rt| {
        rt.limits.max_operation_timeout = keyhole::config::Dur(Duration::from_secs(1))
    })
    .await;
    let shell = shell_id_of(&create_shell(s.addr, &alice(), PS_URI).await);
    let t0 = Instant::now();
    let (_, x) = envelope(
        ACTION_RECEIVE,
        PS_URI,
        Some(&shell),
        Some("PT600S"),
        "<rsp:Receive/>",
    );
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.fault_code().as_deref(), Some("2150858793"));
    assert!(t0.elapsed() < Duration::from_secs(5));
    s.shutdown().await;
}

#[tokio::test]
async fn every_refusal_is_the_same_401() {
    let s = start_quiet(gate(), |_| {}).await.0;
    let wrong_password = create_shell(s.addr, &basic("alice", "nope"), URI_CMD).await;
    let unknown_user = create_shell(s.addr, &basic("mallory", "x"), URI_CMD).await;
    let no_header = post_ct(s.addr, None, "application/soap+xml;charset=UTF-8", b"<x/>").await;
    let garbage = post_ct(
        s.addr,
        Some("Basic !!!"),
        "application/soap+xml;charset=UTF-8",
        b"<x/>",
    )
    .await;
    // carol's password is right but no endpoint lets her in (gates 3-4).
    let carol_winrs = create_shell(s.addr, &basic("carol", "pw-carol"), URI_CMD).await;
    let carol_psrp = create_shell(s.addr, &basic("carol", "pw-carol"), PS_URI).await;
    // alice asks for an endpoint that does not exist.
    let no_endpoint = create_shell(
        s.addr,
        &alice(),
        "http://schemas.microsoft.com/powershell/DoesNotExist",
    )
    .await;
    let strip = |r: &HttpReply| -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        h.sort();
        (r.status, h, r.body.clone())
    };
    let reference = strip(&wrong_password);
    assert_eq!(reference.0, 401);
    assert_eq!(
        wrong_password.header_values("www-authenticate"),
        vec!["Basic realm=\"WSMAN\"".to_string()]
    );
    for (name, r) in [
        ("unknown user", &unknown_user),
        ("no header", &no_header),
        ("garbage", &garbage),
        ("carol winrs", &carol_winrs),
        ("carol psrp", &carol_psrp),
        ("no endpoint", &no_endpoint),
    ] {
        assert_eq!(strip(r), reference, "{name}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn winrs_is_refused_with_the_generic_401_when_no_winrs_endpoint() {
    let mut g = StaticGatekeeper::new("alice", "pw-alice", &["WinRS", "Quiet"]);
    g.winrs_endpoint.clear();
    let s = start(Arc::new(g)).await;
    let r = create_shell(s.addr, &alice(), URI_CMD).await;
    assert_eq!(r.status, 401);
    assert!(r.body.is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn only_post_wsman_is_served() {
    let s = start(gate()).await;
    let r = raw_request(
        s.addr,
        "GET /wsman HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(r.status, 405);
    let r = raw_request(
        s.addr,
        "POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    s.shutdown().await;
}

const IDENTIFY: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>";

/// A raw POST with extra header lines (`Name: value\r\n` each).
async fn post_with(addr: std::net::SocketAddr, extra: &str, body: &str) -> HttpReply {
    let head = format!(
        "POST /wsman HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    raw_request(addr, &head, body.as_bytes()).await
}

#[tokio::test]
async fn identify_answers_with_the_product() {
    let s = start(gate()).await;
    let r = post(s.addr, &alice(), IDENTIFY).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.xml();
    assert_eq!(
        t.find(NS_IDENTITY, "ProductVendor").unwrap().text,
        "keyhole"
    );
    assert!(t.find(NS_IDENTITY, "ProtocolVersion").is_some());
    // Authenticated: the full reply, with the product's version.
    let v = t.find(NS_IDENTITY, "ProductVersion").unwrap().text.clone();
    assert!(
        v.contains(env!("CARGO_PKG_VERSION")) && v.contains("OS: Linux"),
        "{v}"
    );
    s.shutdown().await;
}

/// SPEC §1 (issue 11 item 2): an Identify without credentials, as Test-WSMan and `winrm id
/// -a:none` send it, gets WinRM's reduced reply — with or without `WSMANIDENTIFY:
/// unauthenticated` — and nothing about the operating system or keyhole's version.
#[tokio::test]
async fn anonymous_identify_gets_the_reduced_reply() {
    let s = start(gate()).await;
    for extra in ["", "WSMANIDENTIFY: unauthenticated\r\n"] {
        let r = post_with(s.addr, extra, IDENTIFY).await;
        assert_eq!(r.status, 200, "{extra:?}: {}", r.text());
        assert!(r.header_values("www-authenticate").is_empty());
        let t = r.xml();
        let header = t.child(NS_SOAP, "Header").unwrap();
        assert!(header.children.is_empty(), "{}", r.text());
        assert_eq!(
            t.find(NS_IDENTITY, "ProtocolVersion").unwrap().text,
            NS_WSMAN
        );
        assert_eq!(
            t.find(NS_IDENTITY, "ProductVendor").unwrap().text,
            "keyhole"
        );
        assert_eq!(
            t.find(NS_IDENTITY, "ProductVersion").unwrap().text,
            "OS: 0.0.0 SP: 0.0 Stack: 3.0"
        );
        assert!(!r.text().contains("Linux") && !r.text().contains(env!("CARGO_PKG_VERSION")));
    }
    s.shutdown().await;
}

/// Only the exact DSP0226 Identify is answered without credentials: with addressing headers,
/// any other operation, a wrong password, a body over the limit or the wrong content type it is
/// the generic 401, identical to any other refusal.
#[tokio::test]
async fn anything_else_without_credentials_is_the_generic_401() {
    let s = start(gate()).await;
    let reference = post_with(s.addr, "", "<a/>").await;
    assert_eq!(reference.status, 401);
    let (_, with_headers) = envelope(
        "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity/Identify",
        URI_CMD,
        None,
        None,
        "<wsmid:Identify xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"/>",
    );
    let (_, create) = envelope(ACTION_CREATE, URI_CMD, None, None, "<rsp:Shell/>");
    let padded = IDENTIFY.replace("<s:Header/>", &format!("<s:Header/>{}", " ".repeat(5000)));
    for (extra, body) in [
        ("", with_headers.as_str()),
        ("WSMANIDENTIFY: unauthenticated\r\n", create.as_str()),
        ("", padded.as_str()),
        (
            &format!("Authorization: {}\r\n", basic("alice", "wrong"))[..],
            IDENTIFY,
        ),
    ] {
        let r = post_with(s.addr, extra, body).await;
        assert_eq!(r.status, 401, "{extra:?} {body}");
        assert_eq!(r.body, reference.body);
        assert_eq!(
            r.header_values("www-authenticate"),
            reference.header_values("www-authenticate")
        );
    }
    let r = post_ct(s.addr, None, "text/xml", IDENTIFY.as_bytes()).await;
    assert_eq!(r.status, 401);
    s.shutdown().await;
}

#[tokio::test]
async fn get_on_a_shell_reports_it_connected() {
    let s = start(gate()).await;
    let shell = shell_id_of(&create_shell(s.addr, &alice(), URI_CMD).await);
    let (_, x) = envelope(ACTION_GET, URI_SHELL, Some(&shell), None, "");
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.xml().find(NS_SHELL, "State").unwrap().text, "Connected");
    let (_, x) = envelope(ACTION_GET, URI_CONFIG, None, None, "");
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(
        r.xml().find(NS_CONFIG, "MaxEnvelopeSizekb").unwrap().text,
        "500"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn idle_shells_are_closed() {
    let mut g = StaticGatekeeper::new("alice", "pw-alice", &["Quiet"]).with_user(
        "bob",
        "pw-bob",
        &["Quiet"],
    );
    g.idle_timeout = Duration::from_millis(300);
    let (s, closed) = start_quiet(Arc::new(g), |_| {}).await;
    let shell = shell_id_of(&create_shell(s.addr, &alice(), PS_URI).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        closed.load(Ordering::SeqCst),
        "the idle shell was not closed"
    );
    let (_, x) = envelope(ACTION_GET, URI_SHELL, Some(&shell), None, "");
    let r = post(s.addr, &alice(), &x).await;
    assert_eq!(r.fault_code().as_deref(), Some("2150858843"));
    // Issue 11 item 7: its owner is told it expired, and why; anyone else sees an unknown shell.
    let m = r.xml().find(NS_WSMANFAULT, "Message").unwrap().text.clone();
    assert!(
        m.contains(&shell) && m.contains("idle timeout") && m.contains("closed by the server"),
        "{m}"
    );
    assert!(r.text().contains("w:InvalidSelectors"));
    let (_, rx) = envelope(ACTION_RECEIVE, PS_URI, Some(&shell), None, "<rsp:Receive/>");
    let again = post(s.addr, &alice(), &rx).await;
    assert!(again.text().contains("idle timeout"), "{}", again.text());
    let (_, del) = envelope(ACTION_DELETE, PS_URI, Some(&shell), None, "");
    assert!(post(s.addr, &alice(), &del)
        .await
        .text()
        .contains("idle timeout"));
    let other = post(s.addr, &basic("bob", "pw-bob"), &x).await;
    assert_eq!(other.fault_code().as_deref(), Some("2150858843"));
    assert!(!other.text().contains("idle"), "{}", other.text());
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_shell() {
    let (s, closed) = start_quiet(gate(), |_| {}).await;
    assert_eq!(create_shell(s.addr, &alice(), PS_URI).await.status, 200);
    assert!(!closed.load(Ordering::SeqCst));
    let addr = s.addr;
    s.shutdown().await;
    assert!(closed.load(Ordering::SeqCst));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn ip_allow_drops_other_addresses() {
    let s = start_with(
        gate(),
        |rt| rt.listener.ip_allow = vec!["10.0.0.0/8".into()],
        Vec::new(),
    )
    .await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = c
        .write_all(b"POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "got a reply: {}", String::from_utf8_lossy(&buf));
    s.shutdown().await;
}

#[tokio::test]
async fn plain_http_on_a_public_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime(dir.path());
    rt.listener.http = "0.0.0.0:0".into();
    let err = Server::bind(rt.clone(), gate())
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("allow_unencrypted"), "{err}");
    rt.listener.allow_unencrypted = true;
    assert!(Server::bind(rt, gate()).await.is_ok());
    let mut rt = runtime(dir.path());
    rt.listener.ip_allow = vec!["not-a-cidr".into()];
    assert!(Server::bind(rt, gate()).await.is_err());
}

/// Read one HTTP response (headers + Content-Length body) from a kept-alive connection.
async fn read_one(c: &mut tokio::net::TcpStream) -> HttpReply {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed early: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let mut r = parse_http(&buf);
    let len: usize = r
        .header_values("content-length")
        .first()
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.unwrap();
    r.body = body;
    r
}

#[tokio::test]
async fn a_kept_alive_connection_survives_an_oversized_envelope() {
    use tokio::io::AsyncWriteExt;
    let s = start_with(
        gate(),
        |rt| rt.limits.max_envelope_size_kb.0 = 16,
        Vec::new(),
    )
    .await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let send = |body: String| {
        format!(
            "POST /wsman HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            alice(),
            body.len()
        )
    };
    let (_, big) = envelope(
        ACTION_CREATE,
        URI_CMD,
        None,
        None,
        &format!(
            "<rsp:Shell><rsp:Name>{}</rsp:Name></rsp:Shell>",
            "A".repeat(20_000)
        ),
    );
    c.write_all(send(big).as_bytes()).await.unwrap();
    let r = read_one(&mut c).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("w:EncodingLimit"));
    let (_, small) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    c.write_all(send(small).as_bytes()).await.unwrap();
    let r = read_one(&mut c).await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.shutdown().await;
}

#[tokio::test]
async fn refusals_at_every_gate_keep_the_connection_alike() {
    use tokio::io::AsyncWriteExt;
    let s = start(gate()).await;
    let (_, create) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    let send = |auth: String| {
        format!(
            "POST /wsman HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{create}",
            create.len()
        )
    };
    for refused in [basic("alice", "wrong"), basic("carol", "pw-carol")] {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(send(refused).as_bytes()).await.unwrap();
        let r = read_one(&mut c).await;
        assert_eq!(r.status, 401);
        assert!(r.header_values("connection").is_empty(), "{:?}", r.headers);
        // The same connection still serves.
        c.write_all(send(alice()).as_bytes()).await.unwrap();
        assert_eq!(read_one(&mut c).await.status, 200);
    }
    s.shutdown().await;
}
