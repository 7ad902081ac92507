//! The server under attack by a user with a valid account (issue 9, findings 2, 4 and 6 and
//! item 11's last clause), against the real `keyhole serve`:
//!
//! - finding 2: alice floods it with expensive but legal requests — 400 KB envelopes, and PSRP
//!   input messages of ~300 KB of CLIXML (30,000 elements each) through many fragments;
//! - finding 4: alice's WinRS commands print 2 MB lines she never receives;
//! - finding 6: 400 connections from another address that never send anything.
//!
//! Meanwhile another client (127.0.0.2) is timed: an unauthenticated request's 401, bob's
//! authenticated Identify, and bob's Basic login + one command (Create, Command, Receive until
//! done, Delete), first with nothing else running (the baseline, same run), then under the
//! attack. The test prints medians and 99th percentiles; it asserts only that everything
//! completed and that every attack request was served or refused with a fault (tests never
//! assert on time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use keyhole::psrp::message::{guid_to_net_bytes, MessageType as T};
use keyhole::wsman::envelope::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::live;
use crate::psrp_common::{self, Client};
use crate::wsman_common::*;

const IDENTIFY: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>";
/// A request without credentials that is not the bare Identify answered anonymously (SPEC §1):
/// an Identify carrying a WS-Addressing header gets the generic 401.
const NOT_ANONYMOUS: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header><a:Action>x</a:Action></s:Header><s:Body><wsmid:Identify/></s:Body></s:Envelope>";
const PS_URI: &str = "http://schemas.microsoft.com/powershell/Helpdesk";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// One POST from `from` on a fresh connection (Connection: close); None when the connection
/// failed or was closed without a reply.
async fn post_from(
    from: IpAddr,
    to: SocketAddr,
    auth: Option<&str>,
    body: &[u8],
) -> Option<HttpReply> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(from, 0)).ok()?;
    let mut s = sock.connect(to).await.ok()?;
    let mut head = format!(
        "POST /wsman HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(body).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    if out.windows(4).any(|w| w == b"\r\n\r\n") {
        Some(parse_http(&out))
    } else {
        None
    }
}

/// Served (200) or refused with a WS-Man fault (500 carrying a fault code).
fn served_or_fault(r: &HttpReply) -> bool {
    r.status == 200 || (r.status == 500 && r.fault_code().is_some())
}

struct Victim {
    from: IpAddr,
    addr: SocketAddr,
    bob: String,
}

impl Victim {
    async fn unauthenticated_401(&self) -> Duration {
        let t = Instant::now();
        let r = post_from(self.from, self.addr, None, NOT_ANONYMOUS.as_bytes())
            .await
            .expect("no answer to an unauthenticated request");
        assert_eq!(r.status, 401);
        t.elapsed()
    }

    async fn identify(&self) -> Duration {
        let t = Instant::now();
        let r = post_from(self.from, self.addr, Some(&self.bob), IDENTIFY.as_bytes())
            .await
            .expect("no answer to bob's Identify");
        assert_eq!(r.status, 200, "{}", r.text());
        t.elapsed()
    }

    async fn post(&self, body: &str) -> HttpReply {
        post_from(self.from, self.addr, Some(&self.bob), body.as_bytes())
            .await
            .expect("no answer to bob's request")
    }

    /// Basic login and one command: Create a WinRS shell, run Get-Numbers, receive it all,
    /// Delete the shell.
    async fn login_and_command(&self) -> Duration {
        let t = Instant::now();
        let (_, x) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
        let r = self.post(&x).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let shell = shell_id_of(&r);
        let (_, x) = envelope(
            ACTION_COMMAND,
            URI_CMD,
            Some(&shell),
            None,
            &command_body("Get-Numbers", &[]),
        );
        let cmd = command_id_of(&self.post(&x).await);
        let mut got = 0usize;
        loop {
            let (_, x) = envelope(
                ACTION_RECEIVE,
                URI_CMD,
                Some(&shell),
                Some("PT20S"),
                &receive_body(&cmd),
            );
            let r = self.post(&x).await;
            if r.fault_code().as_deref() == Some("2150858793") {
                continue;
            }
            assert_eq!(r.status, 200, "{}", r.text());
            let t = r.xml();
            let resp = t.find(NS_SHELL, "ReceiveResponse").unwrap();
            for s in resp.children_named(NS_SHELL, "Stream") {
                got += base64::engine::general_purpose::STANDARD
                    .decode(s.text.trim())
                    .unwrap()
                    .len();
            }
            let done = resp.child(NS_SHELL, "CommandState").is_some_and(|st| {
                st.attr("State")
                    .is_some_and(|s| s.ends_with("CommandState/Done"))
            });
            if done {
                break;
            }
        }
        assert!(got >= 1892, "{got} bytes of output");
        let (_, x) = envelope(ACTION_DELETE, URI_SHELL, Some(&shell), None, "");
        assert_eq!(self.post(&x).await.status, 200);
        t.elapsed()
    }
}

struct Figures {
    unauth: Vec<Duration>,
    identify: Vec<Duration>,
    login: Vec<Duration>,
}

/// Interleaved samples: `n` of each quick request, `logins` logins with commands.
async fn measure(v: &Victim, n: usize, logins: usize) -> Figures {
    let mut f = Figures {
        unauth: Vec::new(),
        identify: Vec::new(),
        login: Vec::new(),
    };
    for i in 0..n {
        f.unauth.push(v.unauthenticated_401().await);
        f.identify.push(v.identify().await);
        if i % (n / logins.max(1)).max(1) == 0 && f.login.len() < logins {
            f.login.push(v.login_and_command().await);
        }
    }
    f
}

fn show(name: &str, base: &mut [Duration], attack: &mut [Duration]) -> String {
    let (bm, bp) = live::median_p99(base);
    let (am, ap) = live::median_p99(attack);
    format!(
        "{name}: baseline median {bm:.2?} p99 {bp:.2?} ({} samples); under attack median {am:.2?} p99 {ap:.2?} ({} samples); median ratio {:.1}",
        base.len(),
        attack.len(),
        am.as_secs_f64() / bm.as_secs_f64().max(1e-9)
    )
}

/// CLIXML of about `bytes` bytes: a list of short strings (about 10 bytes each).
fn heavy_clixml(bytes: usize) -> String {
    let mut s = String::from("<Obj RefId=\"0\"><TN RefId=\"0\"><T>System.Object[]</T></TN><LST>");
    while s.len() < bytes {
        s.push_str("<S>x</S>");
    }
    s.push_str("</LST></Obj>");
    s
}

/// The PSRP flood: one pool, one pipeline taking input, then PIPELINE_INPUT messages of ~300 KB
/// of CLIXML until the server refuses more (a fault), then a new pipeline; until `stop`.
async fn psrp_flood(
    addr: SocketAddr,
    alice: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    bad: Arc<AtomicUsize>,
) {
    let from = ip("127.0.0.1");
    let mut client = Client {
        next_oid: 1,
        max_blob: 32_000,
    };
    let mut creation = client.encode(T::SessionCapability, [0; 16], psrp_common::CAPABILITY);
    creation.extend(client.encode(T::InitRunspacePool, [0; 16], psrp_common::INIT));
    let shell_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    let body = format!(
        "<rsp:Shell ShellId=\"{shell_id}\"><rsp:InputStreams>stdin pr</rsp:InputStreams><rsp:OutputStreams>stdout</rsp:OutputStreams><creationXml xmlns=\"{NS_POWERSHELL}\">{}</creationXml></rsp:Shell>",
        b64(&creation)
    );
    let (_, x) = envelope(ACTION_CREATE, PS_URI, None, None, &body);
    let r = post_from(from, addr, Some(&alice), x.as_bytes())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let input = heavy_clixml(300 * 1024);
    while !stop.load(Ordering::SeqCst) {
        let cid = uuid::Uuid::new_v4().to_string().to_uppercase();
        let pid = guid_to_net_bytes(&cid).unwrap();
        let create = psrp_common::create_pipeline_xml(
            false,
            &[psrp_common::command_xml("Measure-Object", false, &[])],
        );
        let data = client.encode(T::CreatePipeline, pid, &create);
        let body = format!(
            "<rsp:CommandLine CommandId=\"{cid}\"><rsp:Command>Invoke-Expression</rsp:Command><rsp:Arguments>{}</rsp:Arguments></rsp:CommandLine>",
            b64(&data)
        );
        let (_, x) = envelope(ACTION_COMMAND, PS_URI, Some(&shell_id), None, &body);
        let Some(r) = post_from(from, addr, Some(&alice), x.as_bytes()).await else {
            bad.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        sent.fetch_add(1, Ordering::SeqCst);
        if !served_or_fault(&r) {
            bad.fetch_add(1, Ordering::SeqCst);
        }
        if r.status != 200 {
            continue;
        }
        // One PIPELINE_INPUT message (~300 KB of CLIXML in 10 fragments), encoded once and sent
        // again and again (a complete message's object id may be reused): the client's own CPU
        // stays out of the way of the server's.
        let data = client.encode(T::PipelineInput, pid, &input);
        let body = format!(
            "<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"{cid}\">{}</rsp:Stream></rsp:Send>",
            b64(&data)
        );
        let (_, x) = envelope(ACTION_SEND, PS_URI, Some(&shell_id), None, &body);
        while !stop.load(Ordering::SeqCst) {
            let r = post_from(from, addr, Some(&alice), x.as_bytes()).await;
            sent.fetch_add(1, Ordering::SeqCst);
            match r {
                Some(r) if r.status == 200 => {}
                Some(r) if served_or_fault(&r) => break, // the input limit: a new pipeline
                _ => {
                    bad.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
        // Stop the pipeline that was fed; its input is dropped.
        let (_, x) = envelope(
            ACTION_SIGNAL,
            PS_URI,
            Some(&shell_id),
            None,
            &format!("<rsp:Signal CommandId=\"{cid}\"><rsp:Code>powershell/signal/crtl_c</rsp:Code></rsp:Signal>"),
        );
        let _ = post_from(from, addr, Some(&alice), x.as_bytes()).await;
    }
}

/// The envelope flood: Send envelopes of ~400 KB (base64 stdin for a WinRS command) until
/// `stop`; refused with a fault once the command's stdin is full, which is fine.
async fn envelope_flood(
    addr: SocketAddr,
    alice: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    bad: Arc<AtomicUsize>,
) {
    let from = ip("127.0.0.1");
    let r = post_from(
        from,
        addr,
        Some(&alice),
        envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY)
            .1
            .as_bytes(),
    )
    .await
    .unwrap();
    let shell = shell_id_of(&r);
    let payload = b64(&vec![b'A'; 300 * 1024]);
    while !stop.load(Ordering::SeqCst) {
        let (_, x) = envelope(
            ACTION_COMMAND,
            URI_CMD,
            Some(&shell),
            None,
            &command_body("Get-Date", &[]),
        );
        let cmd = match post_from(from, addr, Some(&alice), x.as_bytes()).await {
            Some(r) if r.status == 200 => command_id_of(&r),
            Some(r) if served_or_fault(&r) => continue,
            _ => {
                bad.fetch_add(1, Ordering::SeqCst);
                continue;
            }
        };
        let (_, x) = envelope(
            ACTION_SEND,
            URI_CMD,
            Some(&shell),
            None,
            &format!("<rsp:Send><rsp:Stream Name=\"stdin\" CommandId=\"{cmd}\">{payload}</rsp:Stream></rsp:Send>"),
        );
        for _ in 0..4 {
            let r = post_from(from, addr, Some(&alice), x.as_bytes()).await;
            sent.fetch_add(1, Ordering::SeqCst);
            if !r.as_ref().is_some_and(served_or_fault) {
                bad.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (_, x) = envelope(
            ACTION_SIGNAL,
            URI_CMD,
            Some(&shell),
            None,
            &signal_body(&cmd, "terminate"),
        );
        let _ = post_from(from, addr, Some(&alice), x.as_bytes()).await;
    }
}

/// Finding 4: WinRS commands printing 2 MB lines, never received.
async fn chatty(addr: SocketAddr, alice: String, commands: usize) -> usize {
    let from = ip("127.0.0.1");
    let (_, x) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    let r = post_from(from, addr, Some(&alice), x.as_bytes())
        .await
        .unwrap();
    let shell = shell_id_of(&r);
    let mut started = 0;
    for _ in 0..commands {
        let (_, x) = envelope(
            ACTION_COMMAND,
            URI_CMD,
            Some(&shell),
            None,
            &command_body("Get-Line", &[]),
        );
        if post_from(from, addr, Some(&alice), x.as_bytes())
            .await
            .is_some_and(|r| r.status == 200)
        {
            started += 1;
        }
    }
    started
}

/// Finding 6: keep 400 connections from 127.0.0.3 open that never send anything (reopened as
/// the server closes them).
async fn idle_connections(addr: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    let mut tasks = Vec::new();
    for _ in 0..400 {
        let stop = stop.clone();
        let opened = opened.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if sock.bind(SocketAddr::new(ip("127.0.0.3"), 0)).is_err() {
                    return;
                }
                let Ok(mut c) = sock.connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 64];
                // Until the server closes it (or the test ends).
                let _ = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await;
                // Then again a second later: idle connections, not a connection flood.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_users_login_and_command_complete_while_the_server_is_attacked() {
    let s = live::start(live::config("", ""));
    let v = Victim {
        from: ip("127.0.0.2"),
        addr: s.addr,
        bob: basic("bob", live::BOB_PW),
    };
    let alice = basic("alice", live::ALICE_PW);
    // Warm up (first login verifies the password; later ones use the cache), then the baseline.
    v.login_and_command().await;
    let mut base = measure(&v, 200, 10).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let mut attacks = Vec::new();
    for _ in 0..3 {
        attacks.push(tokio::spawn(psrp_flood(
            s.addr,
            alice.clone(),
            stop.clone(),
            sent.clone(),
            bad.clone(),
        )));
        attacks.push(tokio::spawn(envelope_flood(
            s.addr,
            alice.clone(),
            stop.clone(),
            sent.clone(),
            bad.clone(),
        )));
    }
    let idle = tokio::spawn(idle_connections(s.addr, stop.clone(), opened.clone()));
    let chat = tokio::spawn(chatty(s.addr, alice.clone(), 30));
    let rss_before = s.rss_kib();
    // Let the attack get going.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Sample for at least 20 s of attack, in interleaved rounds.
    let t0 = Instant::now();
    let mut under = measure(&v, 50, 2).await;
    while t0.elapsed() < Duration::from_secs(20) {
        let f = measure(&v, 50, 2).await;
        under.unauth.extend(f.unauth);
        under.identify.extend(f.identify);
        under.login.extend(f.login);
    }
    let took = t0.elapsed();
    let sent_during = sent.load(Ordering::SeqCst);
    let rss_during = s.rss_kib();
    stop.store(true, Ordering::SeqCst);
    let chatty_started = chat.await.unwrap();
    for a in attacks {
        a.await.unwrap();
    }
    idle.abort();

    println!("under attack for {took:.1?}: {sent_during} heavy requests from alice (400 KB envelopes, 300 KB CLIXML inputs), {chatty_started} chatty WinRS commands never received, {} idle connections opened from 127.0.0.3; server RSS {} MiB -> {} MiB",
        opened.load(Ordering::SeqCst), rss_before / 1024, rss_during / 1024);
    println!(
        "{}",
        show(
            "401 without credentials",
            &mut base.unauth,
            &mut under.unauth
        )
    );
    println!(
        "{}",
        show("bob's Identify", &mut base.identify, &mut under.identify)
    );
    println!(
        "{}",
        show(
            "bob's Basic login + one command",
            &mut base.login,
            &mut under.login
        )
    );
    assert_eq!(
        bad.load(Ordering::SeqCst),
        0,
        "some attack requests were neither served nor refused with a fault"
    );
    assert!(sent_during > 0, "the flood sent nothing");
    assert!(under.login.len() >= 2);
}
