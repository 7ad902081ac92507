//! Connection slots (issue 9 finding 6): `max_connections_per_address` and `max_connections` at
//! accept, for connections that authenticated and those that did not, and
//! `unauthenticated_timeout` for connections that never authenticate — so one address cannot
//! starve the others. In process, 127.0.0.1 port 0; the legitimate client connects from
//! 127.0.0.2 (its socket bound there).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::wsman_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wsman_common::*;

const IDENTIFY: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>";
/// A request without credentials that is not the bare Identify answered anonymously (SPEC §1):
/// an Identify carrying a WS-Addressing header gets the generic 401.
const NOT_ANONYMOUS: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header><a:Action>x</a:Action></s:Header><s:Body><wsmid:Identify/></s:Body></s:Envelope>";

fn gate() -> Arc<StaticGatekeeper> {
    Arc::new(StaticGatekeeper::new("alice", "pw-alice", &["WinRS"]))
}

/// A connection from `local` (an address of 127.0.0.0/8) to `server`.
async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    sock.connect(server).await.unwrap()
}

/// One request on `c` (kept alive); the reply's status, or None when the server closed the
/// connection instead of answering.
async fn ask(c: &mut TcpStream, auth: Option<&str>) -> Option<u16> {
    let body = if auth.is_some() {
        IDENTIFY
    } else {
        NOT_ANONYMOUS
    };
    let mut head = format!(
        "POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    c.write_all(head.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let r = parse_http(&buf);
    let len: usize = r
        .header_values("content-length")
        .first()
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.ok()?;
    Some(r.status)
}

/// Wait until the server closes `c` (EOF or reset); how long it took, or None when it stayed
/// open for `within`.
async fn closed_within(c: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within.saturating_sub(t0.elapsed()), c.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn idle_connections_from_one_address_do_not_starve_another() {
    let timeout = Duration::from_secs(3);
    let s = start_with(
        gate(),
        |rt| {
            // The defaults, written out: what this test is about.
            rt.limits.max_connections.0 = 1000;
            rt.limits.max_connections_per_address.0 = 32;
            rt.limits.unauthenticated_timeout.0 = timeout;
        },
        Vec::new(),
    )
    .await;
    // 400 idle connections from 127.0.0.1: they send nothing, ever. Each is watched from now
    // on: when did the server close it?
    let t0 = Instant::now();
    let mut watchers = Vec::new();
    for _ in 0..400 {
        let mut c = connect_from("127.0.0.1", s.addr).await;
        watchers.push(tokio::spawn(async move {
            closed_within(&mut c, timeout + Duration::from_secs(20))
                .await
                .map(|_| t0.elapsed())
        }));
    }
    // A legitimate client on another address gets its answers: a 401 without credentials and
    // an authenticated Identify.
    let started = Instant::now();
    let mut legit = connect_from("127.0.0.2", s.addr).await;
    let unauth = tokio::time::timeout(Duration::from_secs(20), ask(&mut legit, None))
        .await
        .expect("the legitimate client got no answer: the idle connections took every slot");
    assert_eq!(unauth, Some(401));
    let first = started.elapsed();
    let mut legit2 = connect_from("127.0.0.2", s.addr).await;
    let authed = tokio::time::timeout(
        Duration::from_secs(20),
        ask(&mut legit2, Some(&basic("alice", "pw-alice"))),
    )
    .await
    .expect("no answer to an authenticated Identify");
    assert_eq!(authed, Some(200));
    println!(
        "while 400 idle connections from 127.0.0.1 were open: 401 from 127.0.0.2 in {:?}, authenticated Identify in {:?}",
        first,
        started.elapsed()
    );
    // Only max_connections_per_address of the idle ones got a slot; the others were closed at
    // accept. Those with a slot are closed once unauthenticated_timeout has passed.
    let mut closed_at = Vec::new();
    for w in watchers {
        closed_at.push(w.await.unwrap().expect(
            "an idle, never authenticated connection stayed open long past unauthenticated_timeout",
        ));
    }
    let late = closed_at.iter().filter(|t| **t >= timeout).count();
    let latest = closed_at.iter().max().copied().unwrap_or_default();
    println!(
        "idle connections: {} closed at accept, {} held a slot until unauthenticated_timeout ({:?}; last closed {:?} after the first connect)",
        closed_at.len() - late,
        late,
        timeout,
        latest
    );
    assert!(
        late <= 32,
        "{late} connections held a slot (max 32 per address)"
    );
    assert!(late >= 1, "no idle connection ever held a slot?");
    // The authenticated keep-alive connection is not subject to unauthenticated_timeout; the
    // one that only got its 401 is.
    assert!(
        closed_within(&mut legit, timeout + Duration::from_secs(10))
            .await
            .is_some(),
        "a connection that only got a 401 stayed open"
    );
    assert_eq!(
        ask(&mut legit2, Some(&basic("alice", "pw-alice"))).await,
        Some(200),
        "an authenticated connection was closed by unauthenticated_timeout"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn the_per_address_limit_counts_authenticated_connections_too() {
    let s = start_with(
        gate(),
        |rt| {
            rt.limits.max_connections_per_address.0 = 4;
            rt.limits.unauthenticated_timeout.0 = Duration::from_secs(60);
        },
        Vec::new(),
    )
    .await;
    let alice = basic("alice", "pw-alice");
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from("127.0.0.3", s.addr).await;
        assert_eq!(ask(&mut c, Some(&alice)).await, Some(200));
        held.push(c);
    }
    // A fifth from the same address is closed at once, credentials or not.
    let mut fifth = connect_from("127.0.0.3", s.addr).await;
    assert_eq!(ask(&mut fifth, Some(&alice)).await, None);
    // Another address is not affected.
    let mut other = connect_from("127.0.0.4", s.addr).await;
    assert_eq!(ask(&mut other, Some(&alice)).await, Some(200));
    // A slot comes back when its connection closes.
    drop(held.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut c = connect_from("127.0.0.3", s.addr).await;
        if ask(&mut c, Some(&alice)).await == Some(200) {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        again.is_some(),
        "the slot of a closed connection was never released"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn max_connections_bounds_all_addresses_together() {
    let s = start_with(
        gate(),
        |rt| {
            rt.limits.max_connections.0 = 6;
            rt.limits.max_connections_per_address.0 = 4;
            rt.limits.unauthenticated_timeout.0 = Duration::from_secs(60);
        },
        Vec::new(),
    )
    .await;
    let alice = basic("alice", "pw-alice");
    let mut held = Vec::new();
    for local in [
        "127.0.0.5",
        "127.0.0.5",
        "127.0.0.5",
        "127.0.0.6",
        "127.0.0.6",
        "127.0.0.6",
    ] {
        let mut c = connect_from(local, s.addr).await;
        assert_eq!(ask(&mut c, Some(&alice)).await, Some(200));
        held.push(c);
    }
    let mut seventh = connect_from("127.0.0.7", s.addr).await;
    assert_eq!(ask(&mut seventh, Some(&alice)).await, None);
    s.shutdown().await;
}
