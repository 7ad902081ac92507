//! Deadlines and cancellation inside built-in commands (issue 9, finding 3): `Where-Object
//! -Like` over values a PSRP client sends — one object whose `Items` are 40 strings of 1 MiB
//! (one string, referenced 40 times), matched against a 1,001-token pattern — costs minutes
//! when nothing stops it (about 2.3 s per MiB in a debug build). `command_timeout`, Stop (PSRP
//! Signal) and closing the pool each end it, and the worker thread is free again: the test
//! watches the shared `Workers`, not the CPU.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use crate::engine_support as support;
use crate::psrp_common::*;

use base64::Engine as _;
use keyhole::psrp::clixml::read::parse_default;
use keyhole::psrp::fragment::Reassembler;
use keyhole::psrp::message::{guid_to_net_bytes, Message, MessageType as T};
use keyhole::shells::psrp::PsrpShell;
use keyhole::shells::runner::Workers;
use keyhole::shells::ShellSetup;
use keyhole::wsman::shell::{CommandRequest, CreateRequest, Shell, Signal, StreamName};

const CID: &str = "C1C2C3C4-0000-4000-8000-000000000009";
/// Long enough that the old code (no check inside the loop over one object's values) would
/// still be matching long after it.
const BOUND: Duration = Duration::from_secs(20);

/// The input object: `Items` is 40 references to one list holding a 1 MiB string.
fn heavy_object() -> String {
    let big = "a".repeat(1024 * 1024);
    let mut s = format!(
        "<Obj RefId=\"0\"><MS><Obj N=\"Items\" RefId=\"1\"><TN RefId=\"0\"><T>System.Object[]</T></TN><LST><Obj RefId=\"2\"><TNRef RefId=\"0\" /><LST><S>{big}</S></LST></Obj>"
    );
    for _ in 0..19 {
        s.push_str("<Ref RefId=\"2\" />");
    }
    s.push_str("</LST></Obj></MS></Obj>");
    s
}

/// `*a*a…*a*b`: 1,001 tokens, so every character of the text costs 2·16 word steps.
fn pattern() -> String {
    "*a".repeat(500) + "*b"
}

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

/// A pool on `workers` with the real engine and `timeout` as command_timeout, opened; then
/// the Where-Object pipeline created and its input sent.
fn start(workers: &std::sync::Arc<Workers>, timeout: Duration) -> (PsrpShell, Reassembler) {
    let (session, _) = support::session();
    let setup = ShellSetup {
        command_timeout: Some(timeout),
        ..ShellSetup::new("alice", workers.clone())
    };
    let mut shell = PsrpShell::new(session, setup);
    let mut client = Client::default();
    let mut xml = client.encode(T::SessionCapability, [0; 16], CAPABILITY);
    xml.extend(client.encode(T::InitRunspacePool, [0; 16], INIT));
    shell
        .on_create(&CreateRequest {
            creation_xml: Some(xml),
            max_envelope_size: 153_600,
            ..Default::default()
        })
        .unwrap();
    let r = Reassembler::new();
    let pid = guid_to_net_bytes(CID).unwrap();
    let create = create_pipeline_xml(
        false,
        &[command_xml(
            "Where-Object",
            false,
            &[
                (Some("Property"), "<S N=\"V\">Items</S>"),
                (Some("Like"), "<Nil N=\"V\" />"),
                (Some("Value"), &format!("<S N=\"V\">{}</S>", pattern())),
            ],
        )],
    );
    let data = client.encode(T::CreatePipeline, pid, &create);
    shell
        .command(CommandRequest {
            command_id: Some(CID.to_string()),
            command: String::new(),
            arguments: vec![b64(&data)],
        })
        .unwrap();
    let d = client.encode(T::PipelineInput, pid, &heavy_object());
    shell.send(Some(CID), StreamName::Stdin, d, false).unwrap();
    let d = client.encode(T::EndOfPipelineInput, pid, "");
    shell.send(Some(CID), StreamName::Stdin, d, false).unwrap();
    (shell, r)
}

/// Wait until the line holds a worker (it is matching).
fn until_running(workers: &Workers) {
    let until = Instant::now() + BOUND;
    while workers.busy() == 0 {
        assert!(Instant::now() < until, "the line never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Well into the match.
    std::thread::sleep(Duration::from_millis(300));
}

/// How long until no worker is busy; panics after [`BOUND`].
fn until_free(workers: &Workers, what: &str) -> Duration {
    let t0 = Instant::now();
    while workers.busy() > 0 {
        assert!(
            t0.elapsed() < BOUND,
            "{what}: the worker was still busy after {BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    t0.elapsed()
}

/// Receive until the pipeline's state message; returns its body.
fn final_state(shell: &mut PsrpShell, r: &mut Reassembler) -> String {
    let until = Instant::now() + BOUND;
    loop {
        let resp = shell.receive(Some(CID)).unwrap();
        for m in decode(r, &resp) {
            if m.message_type == T::PipelineState {
                return body(&m);
            }
        }
        assert!(Instant::now() < until, "no pipeline state");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn state_of(body: &str) -> i64 {
    match parse_default(body).unwrap().property("PipelineState") {
        Some(keyhole::engine::Value::Int(i)) => *i,
        other => panic!("{other:?} in {body}"),
    }
}

#[test]
fn command_timeout_ends_a_long_like_match() {
    let workers = Workers::new(2);
    let t0 = Instant::now();
    let (mut shell, mut r) = start(&workers, Duration::from_millis(500));
    let state = final_state(&mut shell, &mut r);
    let took = t0.elapsed();
    assert_eq!(state_of(&state), 5, "Failed: {state}");
    assert!(
        state.contains("command_timeout (500ms)"),
        "the timeout record: {state}"
    );
    let free = until_free(&workers, "command_timeout");
    println!(
        "command_timeout 500ms: the pipeline ended Failed after {took:?}; the worker was free {free:?} later"
    );
}

#[test]
fn stop_ends_a_long_like_match_and_frees_the_worker() {
    let workers = Workers::new(2);
    let (mut shell, mut r) = start(&workers, Duration::from_secs(600));
    until_running(&workers);
    let t0 = Instant::now();
    shell.signal(Some(CID), Signal::PsrpStop).unwrap();
    let free = until_free(&workers, "Stop");
    let state = final_state(&mut shell, &mut r);
    assert_eq!(state_of(&state), 3, "Stopped: {state}");
    println!(
        "Stop: the worker was free {free:?} after the signal ({:?} to the Stopped state)",
        t0.elapsed()
    );
}

#[test]
fn closing_the_pool_ends_a_long_like_match_and_frees_the_worker() {
    let workers = Workers::new(2);
    let (mut shell, _r) = start(&workers, Duration::from_secs(600));
    until_running(&workers);
    shell.close();
    let free = until_free(&workers, "pool close");
    println!("pool close: the worker was free {free:?} after the close");
    drop(shell);
}

/// The decoded message itself is what the test thinks it is (so the workload is real).
#[test]
fn the_workload_is_twenty_mebibytes_of_text() {
    let v = parse_default(&heavy_object()).unwrap();
    let items = v.member("Items").unwrap();
    let keyhole::engine::Value::Array(items) = items else {
        panic!("{items:?}")
    };
    assert_eq!(items.len(), 20);
    assert!(items.iter().all(|i| i.to_ps_string().len() == 1024 * 1024));
    let _ = Message::decode;
}
