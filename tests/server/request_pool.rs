//! Nothing a request computes runs on the threads that accept connections and answer 401s
//! (issue 9, finding 2). A shell whose `send` takes as long as the test wants stands for an
//! expensive request (a CLIXML message at the limits): alice keeps four of them busy on a
//! server whose runtime has two async threads. A request without credentials still gets its
//! 401, and bob's Identify and WinRS shell their answers. Before, `send` ran on the async
//! threads: two such requests stopped the whole server until they finished.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keyhole::wsman::envelope::*;
use keyhole::wsman::shell::*;
use tokio::sync::Notify;

use crate::wsman_common::*;

const PS_URI: &str = "http://schemas.microsoft.com/powershell/Slow";
const IDENTIFY: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>";
/// A request without credentials that is not the bare Identify answered anonymously (SPEC §1):
/// an Identify carrying a WS-Addressing header gets the generic 401.
const NOT_ANONYMOUS: &str = "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header><a:Action>x</a:Action></s:Header><s:Body><wsmid:Identify/></s:Body></s:Envelope>";

/// Released when the test says so; counts the sends waiting.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut st = self.state.lock().unwrap();
        st.1 += 1;
        self.cv.notify_all();
        let until = Instant::now() + Duration::from_secs(60);
        while !st.0 && Instant::now() < until {
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        st.1 -= 1;
    }
    fn waiting(&self) -> usize {
        self.state.lock().unwrap().1
    }
    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.cv.notify_all();
    }
}

/// A shell whose `send` is expensive: it returns when the gate opens.
struct SlowShell {
    gate: Arc<Gate>,
    notify: Arc<Notify>,
}

impl Shell for SlowShell {
    fn on_create(&mut self, _: &CreateRequest) -> Result<(), ShellError> {
        Ok(())
    }
    fn command(&mut self, _: CommandRequest) -> Result<String, ShellError> {
        Ok("C0FFEE00-0000-4000-8000-000000000001".into())
    }
    fn send(
        &mut self,
        _: Option<&str>,
        _: StreamName,
        _: Vec<u8>,
        _: bool,
    ) -> Result<(), ShellError> {
        self.gate.wait();
        Ok(())
    }
    fn receive(&mut self, _: Option<&str>) -> Result<ReceiveResponse, ShellError> {
        Ok(ReceiveResponse::default())
    }
    fn signal(&mut self, _: Option<&str>, _: Signal) -> Result<(), ShellError> {
        Ok(())
    }
    fn close(&mut self) {}
    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

struct SlowFactory {
    gate: Arc<Gate>,
    limits: ShellLimits,
}

impl ShellFactory for SlowFactory {
    fn create(
        &self,
        _: &Identity,
        _: std::net::SocketAddr,
        _: Option<&str>,
        _: &CreateRequest,
    ) -> Result<NewShell, CreateError> {
        Ok(NewShell {
            shell: Box::new(SlowShell {
                gate: self.gate.clone(),
                notify: Arc::new(Notify::new()),
            }),
            limits: self.limits,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_requests_never_hold_the_threads_that_answer_401s() {
    let g = Arc::new(
        StaticGatekeeper::new("alice", "pw-alice", &["WinRS", "Slow"]).with_user(
            "bob",
            "pw-bob",
            &["WinRS", "Slow"],
        ),
    );
    let gate = Arc::new(Gate::default());
    let f: Arc<dyn ShellFactory> = Arc::new(SlowFactory {
        gate: gate.clone(),
        limits: g.limits(),
    });
    let s = start_with(g, |_| {}, vec![(URI_POWERSHELL_PREFIX, f)]).await;
    let alice = basic("alice", "pw-alice");
    // Alice's four expensive requests, all at once (each to a shell of its own: requests to one
    // shell take its lock in turn). Her shells first: once her expensive requests hold her
    // share of the pool, her own further requests wait their turn.
    let mut shells = Vec::new();
    for _ in 0..4 {
        shells.push(shell_id_of(&create_shell(s.addr, &alice, PS_URI).await));
    }
    let mut slow = Vec::new();
    for shell in shells {
        let (_, x) = envelope(
            ACTION_SEND,
            PS_URI,
            Some(&shell),
            None,
            "<rsp:Send><rsp:Stream Name=\"stdin\">AAAA</rsp:Stream></rsp:Send>",
        );
        let (addr, a) = (s.addr, alice.clone());
        slow.push(tokio::spawn(async move { post(addr, &a, &x).await }));
    }
    let until = Instant::now() + Duration::from_secs(20);
    while gate.waiting() < 2 {
        assert!(
            Instant::now() < until,
            "the expensive requests never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // While they run: a 401, bob's Identify, bob's WinRS shell.
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        post_ct(
            s.addr,
            None,
            "application/soap+xml",
            NOT_ANONYMOUS.as_bytes(),
        ),
    )
    .await
    .expect("no 401 while expensive requests ran: they hold the async threads");
    assert_eq!(r.status, 401);
    let unauth = t.elapsed();
    let bob = basic("bob", "pw-bob");
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), post(s.addr, &bob, IDENTIFY))
        .await
        .expect("bob's Identify waited for alice's requests");
    assert_eq!(r.status, 200, "{}", r.text());
    let identify = t.elapsed();
    let r = tokio::time::timeout(Duration::from_secs(10), create_shell(s.addr, &bob, URI_CMD))
        .await
        .expect("bob's Create waited for alice's requests");
    assert_eq!(r.status, 200, "{}", r.text());
    println!(
        "with {} of alice's expensive requests running: 401 in {unauth:?}, bob's Identify in {identify:?}",
        gate.waiting()
    );
    // Alice's requests hold at most half of the request pool's threads.
    assert!(gate.waiting() <= keyhole::wsman::work::RequestPool::default_threads() / 2);
    gate.open();
    for t in slow {
        assert_eq!(t.await.unwrap().status, 200);
    }
    s.shutdown().await;
}
