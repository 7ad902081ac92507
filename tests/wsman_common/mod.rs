//! Shared helpers for the WS-Man integration tests: an in-process server on 127.0.0.1 port 0,
//! a raw HTTP/1.1 client, and request envelopes written by hand.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use keyhole::config::ServerConfig;
use keyhole::http::{Server, ServerRuntime};
use keyhole::shells::runner::Workers;
use keyhole::wsman::envelope::*;
use keyhole::wsman::shell::{Authenticate, ShellFactory};
use keyhole::wsman::xml::{self, Element};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod static_gate;
pub use static_gate::{StaticGatekeeper, StaticWinrs};

pub struct TestServer {
    pub addr: SocketAddr,
    pub https: Option<SocketAddr>,
    pub fingerprint: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    pub state: tempfile::TempDir,
}

impl TestServer {
    /// Stop the server; returns its state directory (deleted when dropped).
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.state
    }
}

pub fn runtime(state: &std::path::Path) -> ServerRuntime {
    let mut cfg = ServerConfig {
        computer_name: "testhost".into(),
        state_directory: state.to_string_lossy().into_owned(),
        ..Default::default()
    };
    cfg.listener.https = String::new();
    cfg.listener.http = "127.0.0.1:0".into();
    ServerRuntime::from_config(&cfg, state)
}

/// A server with `auth` as gate 2, WinRS shells opened by `gate` (the double's gates 3–4), and
/// `factories` registered for their resource URI prefixes.
pub async fn start_full(
    auth: Arc<dyn Authenticate>,
    gate: Arc<StaticGatekeeper>,
    tweak: impl FnOnce(&mut ServerRuntime),
    factories: Vec<(&str, Arc<dyn ShellFactory>)>,
) -> TestServer {
    let state = tempfile::tempdir().unwrap();
    let mut rt = runtime(state.path());
    tweak(&mut rt);
    let mut server = Server::bind(rt, auth).await.unwrap();
    server.register_exact(
        URI_CMD,
        Arc::new(StaticWinrs {
            gate,
            workers: Workers::new(8),
        }),
    );
    for (p, f) in factories {
        server.register_prefix(p, f);
    }
    let addr = server.http_addr.or(server.https_addr).unwrap();
    let https = server.https_addr;
    let fingerprint = server.tls_fingerprint.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        server
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    TestServer {
        addr,
        https,
        fingerprint,
        stop: Some(tx),
        handle: Some(handle),
        state,
    }
}

pub async fn start_with(
    gate: Arc<StaticGatekeeper>,
    tweak: impl FnOnce(&mut ServerRuntime),
    factories: Vec<(&str, Arc<dyn ShellFactory>)>,
) -> TestServer {
    start_full(gate.clone(), gate, tweak, factories).await
}

pub async fn start(gate: Arc<StaticGatekeeper>) -> TestServer {
    start_with(gate, |_| {}, Vec::new()).await
}

#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn xml(&self) -> Element {
        xml::parse(&self.body).unwrap_or_else(|e| panic!("reply is not XML ({e}): {}", self.text()))
    }
    /// `WSManFault@Code`, when the reply is a fault.
    pub fn fault_code(&self) -> Option<String> {
        let t = xml::parse(&self.body).ok()?;
        t.find(NS_WSMANFAULT, "WSManFault")
            .and_then(|f| f.attr("Code"))
            .map(str::to_string)
    }
    pub fn relates_to(&self) -> Option<String> {
        let t = xml::parse(&self.body).ok()?;
        t.find(NS_ADDRESSING, "RelatesTo").map(|r| r.text.clone())
    }
}

pub fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Parse a raw HTTP/1.1 response (Content-Length or read-to-close).
pub fn parse_http(raw: &[u8]) -> HttpReply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    HttpReply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// One raw request on a fresh connection (Connection: close).
pub async fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> HttpReply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(90), s.read_to_end(&mut out)).await;
    parse_http(&out)
}

pub async fn post_ct(addr: SocketAddr, auth: Option<&str>, ct: &str, body: &[u8]) -> HttpReply {
    let mut head = format!(
        "POST /wsman HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    raw_request(addr, &head, body).await
}

pub async fn post(addr: SocketAddr, auth: &str, body: &str) -> HttpReply {
    post_ct(
        addr,
        Some(auth),
        "application/soap+xml;charset=UTF-8",
        body.as_bytes(),
    )
    .await
}

/// A request envelope the way pypsrp writes it. Returns (MessageID, XML).
pub fn envelope(
    action: &str,
    resource_uri: &str,
    shell_id: Option<&str>,
    timeout: Option<&str>,
    body: &str,
) -> (String, String) {
    let id = format!("uuid:{}", uuid::Uuid::new_v4().to_string().to_uppercase());
    let sel = shell_id
        .map(|s| format!("<wsman:SelectorSet><wsman:Selector Name=\"ShellId\">{s}</wsman:Selector></wsman:SelectorSet>"))
        .unwrap_or_default();
    let to = timeout
        .map(|t| format!("<wsman:OperationTimeout>{t}</wsman:OperationTimeout>"))
        .unwrap_or_default();
    let x = format!(
        "<s:Envelope xmlns:rsp=\"{NS_SHELL}\" xmlns:s=\"{NS_SOAP}\" xmlns:wsa=\"{NS_ADDRESSING}\" xmlns:wsman=\"{NS_WSMAN}\">\
         <s:Header><wsa:Action s:mustUnderstand=\"true\">{action}</wsa:Action>\
         <wsman:MaxEnvelopeSize s:mustUnderstand=\"true\">153600</wsman:MaxEnvelopeSize><wsa:MessageID>{id}</wsa:MessageID>{to}\
         <wsman:ResourceURI s:mustUnderstand=\"true\">{resource_uri}</wsman:ResourceURI><wsa:To>http://x:5985/wsman</wsa:To>{sel}</s:Header>\
         <s:Body>{body}</s:Body></s:Envelope>"
    );
    (id, x)
}

pub const CREATE_CMD_BODY: &str =
    "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>";

pub fn command_body(cmd: &str, args: &[&str]) -> String {
    let a: String = args
        .iter()
        .map(|a| format!("<rsp:Arguments>{}</rsp:Arguments>", xml::esc(a)))
        .collect();
    format!(
        "<rsp:CommandLine><rsp:Command>{}</rsp:Command>{a}</rsp:CommandLine>",
        xml::esc(cmd)
    )
}

pub fn receive_body(cmd: &str) -> String {
    format!("<rsp:Receive><rsp:DesiredStream CommandId=\"{cmd}\">stdout stderr</rsp:DesiredStream></rsp:Receive>")
}

pub fn signal_body(cmd: &str, code: &str) -> String {
    format!("<rsp:Signal CommandId=\"{cmd}\"><rsp:Code>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/{code}</rsp:Code></rsp:Signal>")
}

/// Create a shell on `uri`; returns its ShellId.
pub async fn create_shell(addr: SocketAddr, auth: &str, uri: &str) -> HttpReply {
    let (_, x) = envelope(ACTION_CREATE, uri, None, None, CREATE_CMD_BODY);
    post(addr, auth, &x).await
}

pub fn shell_id_of(r: &HttpReply) -> String {
    let t = r.xml();
    t.find(NS_WSMAN, "Selector")
        .map(|s| s.text.clone())
        .unwrap_or_else(|| panic!("no ShellId in {}", r.text()))
}

pub fn command_id_of(r: &HttpReply) -> String {
    r.xml()
        .find(NS_SHELL, "CommandId")
        .map(|s| s.text.clone())
        .unwrap_or_else(|| panic!("no CommandId in {}", r.text()))
}

/// Receive until CommandState Done; returns (stdout, stderr, exit code).
pub async fn receive_all(
    addr: SocketAddr,
    auth: &str,
    shell: &str,
    cmd: &str,
) -> (String, String, i32) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let (_, x) = envelope(
            ACTION_RECEIVE,
            URI_CMD,
            Some(shell),
            Some("PT5S"),
            &receive_body(cmd),
        );
        let r = post(addr, auth, &x).await;
        if r.fault_code().as_deref() == Some("2150858793") {
            continue;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        let t = r.xml();
        let resp = t.find(NS_SHELL, "ReceiveResponse").unwrap();
        for s in resp.children_named(NS_SHELL, "Stream") {
            let data = base64::engine::general_purpose::STANDARD
                .decode(s.text.trim())
                .unwrap();
            match s.attr("Name") {
                Some("stdout") => out.extend(data),
                Some("stderr") => err.extend(data),
                other => panic!("unexpected stream {other:?}"),
            }
        }
        if let Some(st) = resp.child(NS_SHELL, "CommandState") {
            if st
                .attr("State")
                .is_some_and(|s| s.ends_with("CommandState/Done"))
            {
                let code = st
                    .child(NS_SHELL, "ExitCode")
                    .map(|c| c.text.parse().unwrap())
                    .unwrap_or(-1);
                return (
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(err).unwrap(),
                    code,
                );
            }
        }
    }
    panic!("command never finished");
}

/// The reply with its fresh MessageID/RelatesTo removed (to compare two faults).
pub fn without_ids(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("uuid:") {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find('<').unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}
