//! PsrpShell driven like pypsrp drives Windows: open, pipelines, input, metadata, stop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::engine_support as support;
use crate::psrp_common;

use base64::Engine as _;
use keyhole::engine::{
    CommandArg, CommandDecl, ErrorCategory, ErrorRecord, Event, ParamDecl, ParamType, PsObject,
    Refusal, RunOutcome, Value, VisibleCommand,
};
use keyhole::psrp::clixml::read::parse_default;
use keyhole::psrp::fragment::Reassembler;
use keyhole::psrp::message::MessageType as T;
use keyhole::shells::psrp::{PsrpEngine, PsrpShell};
use keyhole::wsman::shell::{CommandRequest, CreateRequest, Shell, ShellError, Signal, StreamName};
use psrp_common::*;

const CID: &str = "B1B2C3D4-0000-4000-8000-000000000002";

fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

fn open<E: PsrpEngine>(
    engine: E,
    client: &mut Client,
    max_env: usize,
) -> (PsrpShell<E>, Reassembler) {
    let mut shell = pool(engine, "alice");
    let mut xml = client.encode(T::SessionCapability, [0; 16], CAPABILITY);
    xml.extend(client.encode(T::InitRunspacePool, [0; 16], INIT));
    shell
        .on_create(&CreateRequest {
            creation_xml: Some(xml),
            max_envelope_size: max_env,
            ..Default::default()
        })
        .unwrap();
    let mut r = Reassembler::new();
    let mut msgs = Vec::new();
    for _ in 0..20 {
        let resp = shell.receive(None).unwrap();
        assert!(resp.streams.iter().all(|c| c.command_id.is_none()));
        msgs.extend(decode(&mut r, &resp));
        if msgs.len() >= 3 {
            break;
        }
    }
    assert_eq!(
        types(&msgs),
        vec![
            T::SessionCapability,
            T::ApplicationPrivateData,
            T::RunspacePoolState
        ]
    );
    assert_eq!(
        msgs[0].rpid, [0; 16],
        "Windows sends SESSION_CAPABILITY with a zero RPID"
    );
    assert_eq!(msgs[1].rpid, RPID);
    assert_eq!(
        parse_default(&body(&msgs[2]))
            .unwrap()
            .property("RunspaceState"),
        Some(&Value::Int(2))
    );
    (shell, r)
}

fn command<E: PsrpEngine>(
    shell: &mut PsrpShell<E>,
    client: &mut Client,
    cid: &str,
    t: T,
    xml: &str,
) -> Result<String, ShellError> {
    let pid = keyhole::psrp::message::guid_to_net_bytes(cid).unwrap();
    let data = client.encode(t, pid, xml);
    shell.command(CommandRequest {
        command_id: Some(cid.to_string()),
        command: String::new(),
        arguments: vec![b64(&data)],
    })
}

#[test]
fn structured_pipeline_streams_records_and_completes() {
    let engine = FakeEngine::with_steps(vec![Step::ok(vec![
        Event::Output(sv("hello")),
        Event::Output(
            PsObject::custom()
                .with("Name", "foo")
                .with("Value", 1)
                .into_value(),
        ),
        Event::Error(ErrorRecord::new(
            "boom",
            "Boom,Test",
            ErrorCategory::InvalidOperation,
        )),
        Event::Warning("careful".into()),
        Event::Verbose("v".into()),
        Event::Debug("d".into()),
        Event::Information("i".into()),
    ])]);
    let calls = engine.calls.clone();
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(
        true,
        &[
            command_xml(
                "Get-Service",
                false,
                &[
                    (Some("Name"), "<S N=\"V\">sshd</S>"),
                    (Some("Force"), "<Nil N=\"V\" />"),
                    (None, "<I32 N=\"V\">3</I32>"),
                ],
            ),
            command_xml("Select-Object", false, &[]),
        ],
    );
    assert_eq!(
        command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap(),
        CID
    );
    let (msgs, done) = receive_until_state(&mut shell, &mut r, CID);
    assert!(done, "CommandState Done accompanies the end");
    assert_eq!(
        types(&msgs),
        vec![
            T::PipelineOutput,
            T::PipelineOutput,
            T::ErrorRecord,
            T::WarningRecord,
            T::VerboseRecord,
            T::DebugRecord,
            T::InformationRecord,
            T::PipelineState
        ]
    );
    assert_eq!(body(&msgs[0]), "<S>hello</S>");
    assert!(body(&msgs[1])
        .contains("<ToString>@{Name=foo; Value=1}</ToString><MS><S N=\"Name\">foo</S>"));
    let err = parse_default(&body(&msgs[2])).unwrap();
    assert_eq!(
        err.property("FullyQualifiedErrorId"),
        Some(&sv("Boom,Test"))
    );
    assert!(body(&msgs[3]).contains("<S N=\"InformationalRecord_Message\">careful</S>"));
    assert_eq!(
        parse_default(&body(&msgs[7]))
            .unwrap()
            .property("PipelineState"),
        Some(&Value::Int(4))
    );
    assert!(msgs
        .iter()
        .all(|m| m.pid == keyhole::psrp::message::guid_to_net_bytes(CID).unwrap()));
    let calls = calls.lock().unwrap();
    let Call::Structured(stmts, input) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert!(input.is_empty());
    assert_eq!(stmts.len(), 1);
    let c = &stmts[0].commands;
    assert_eq!(c[0].name, "Get-Service");
    assert_eq!(
        c[0].args,
        vec![
            CommandArg {
                name: Some("Name".into()),
                value: Some(sv("sshd"))
            },
            CommandArg {
                name: Some("Force".into()),
                value: None
            },
            CommandArg {
                name: None,
                value: Some(Value::Int(3))
            },
        ]
    );
    assert_eq!(c[1].name, "Select-Object");
}

#[test]
fn execute_ps_shape_runs_the_line_and_sends_strings() {
    let engine = FakeEngine::with_steps(vec![Step::ok(vec![
        Event::Output(sv("a")),
        Event::Output(Value::Int(5)),
    ])]);
    let calls = engine.calls.clone();
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(
        true,
        &[
            command_xml(
                "Invoke-Expression",
                false,
                &[(Some("Command"), "<S N=\"V\">Get-Date; hostname</S>")],
            ),
            command_xml("Out-String", false, &[(Some("Stream"), "<Nil N=\"V\" />")]),
        ],
    );
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, CID);
    assert_eq!(
        calls.lock().unwrap().clone(),
        vec![Call::Line("Get-Date; hostname".into())]
    );
    assert_eq!(
        types(&msgs),
        vec![T::PipelineOutput, T::PipelineOutput, T::PipelineState]
    );
    assert_eq!(body(&msgs[0]), "<S>a</S>");
    assert_eq!(body(&msgs[1]), "<S>5</S>");
}

#[test]
fn invoke_expression_in_any_other_shape_goes_to_the_engine_as_a_command() {
    let engine = FakeEngine::default();
    let calls = engine.calls.clone();
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(
        true,
        &[command_xml(
            "Invoke-Expression",
            false,
            &[(Some("Command"), "<S N=\"V\">x</S>")],
        )],
    );
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    receive_until_state(&mut shell, &mut r, CID);
    assert!(
        matches!(&calls.lock().unwrap()[0], Call::Structured(s, _) if s[0].commands[0].name == "Invoke-Expression")
    );
}

#[test]
fn execute_ps_reaches_the_real_engine_as_its_line_and_no_other_shape_unlocks_invoke_expression() {
    let (session, _) = support::session();
    let mut client = Client::default();
    let (mut shell, mut r) = open(session, &mut client, 153_600);
    let iex = |named: bool| {
        create_pipeline_xml(
            true,
            &[
                command_xml(
                    "Invoke-Expression",
                    false,
                    &[(
                        named.then_some("Command"),
                        "<S N=\"V\">Write-Output cups</S>",
                    )],
                ),
                command_xml("Out-String", false, &[(Some("Stream"), "<Nil N=\"V\" />")]),
            ],
        )
    };
    // pypsrp's execute_ps: the line runs, its output arrives as strings.
    command(&mut shell, &mut client, CID, T::CreatePipeline, &iex(true)).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, CID);
    assert_eq!(types(&msgs), vec![T::PipelineOutput, T::PipelineState]);
    assert_eq!(body(&msgs[0]), "<S>cups</S>");
    assert_eq!(
        parse_default(&body(&msgs[1]))
            .unwrap()
            .property("PipelineState"),
        Some(&Value::Int(4))
    );
    // The same with a positional TEXT is not that shape: Invoke-Expression is not found.
    let c2 = "B1B2C3D4-0000-4000-8000-000000000003";
    command(&mut shell, &mut client, c2, T::CreatePipeline, &iex(false)).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, c2);
    assert_eq!(types(&msgs), vec![T::PipelineState]);
    let state = body(&msgs[0]);
    assert_eq!(
        parse_default(&state).unwrap().property("PipelineState"),
        Some(&Value::Int(5))
    );
    assert!(state.contains("CommandNotFoundException"), "{state}");
}

#[test]
fn refusal_ends_failed_with_the_error_record() {
    let refusal = Refusal {
        message: "The term 'Foo' is not recognized".into(),
        id: "CommandNotFoundException".into(),
        category: ErrorCategory::ObjectNotFound,
        column: Some(1),
    };
    let engine = FakeEngine::with_steps(vec![Step {
        events: vec![],
        outcome: RunOutcome::Refused(refusal),
        wait_cancel: false,
    }]);
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(true, &[command_xml("Foo", true, &[])]);
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    let (msgs, done) = receive_until_state(&mut shell, &mut r, CID);
    assert!(done);
    assert_eq!(types(&msgs), vec![T::PipelineState]);
    let v = parse_default(&body(&msgs[0])).unwrap();
    assert_eq!(v.property("PipelineState"), Some(&Value::Int(5)));
    let e = v.property("ExceptionAsErrorRecord").unwrap();
    assert_eq!(
        e.property("FullyQualifiedErrorId"),
        Some(&sv("CommandNotFoundException"))
    );
    assert_eq!(e.property("ErrorCategory_Category"), Some(&Value::Int(13)));
}

#[test]
fn pipeline_input_is_collected_until_end_of_input() {
    let engine = FakeEngine::default();
    let calls = engine.calls.clone();
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(false, &[command_xml("Write-Output", false, &[])]);
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    let pid = keyhole::psrp::message::guid_to_net_bytes(CID).unwrap();
    // nothing runs before END_OF_PIPELINE_INPUT
    assert!(shell.receive(Some(CID)).unwrap().streams.is_empty());
    for body in ["<S>1</S>", "<I32>2</I32>"] {
        let d = client.encode(T::PipelineInput, pid, body);
        shell.send(Some(CID), StreamName::Stdin, d, false).unwrap();
    }
    let d = client.encode(T::EndOfPipelineInput, pid, "");
    shell.send(Some(CID), StreamName::Stdin, d, false).unwrap();
    receive_until_state(&mut shell, &mut r, CID);
    let calls = calls.lock().unwrap();
    assert!(
        matches!(&calls[0], Call::Structured(_, input) if *input == vec![sv("1"), Value::Int(2)]),
        "{calls:?}"
    );
}

#[test]
fn command_metadata_count_then_one_object_per_visible_command() {
    let engine = FakeEngine {
        visible: vec![
            VisibleCommand {
                decl: CommandDecl::cmdlet("Get-Service", "keyhole", "")
                    .param(ParamDecl::new("Name", ParamType::StringArray)),
                resolved: None,
            },
            VisibleCommand {
                decl: CommandDecl::cmdlet("Restart-Service", "keyhole", "").changes_state(),
                resolved: None,
            },
            VisibleCommand {
                decl: CommandDecl::cmdlet("Get-Command", "Microsoft.PowerShell.Core", ""),
                resolved: None,
            },
        ],
        ..Default::default()
    };
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = r#"<Obj RefId="0"><MS><Obj N="Name" RefId="1"><TN RefId="0"><T>System.String[]</T><T>System.Array</T><T>System.Object</T></TN><LST><S>*-service</S></LST></Obj><I32 N="CommandType">511</I32><Nil N="Namespace" /><Nil N="ArgumentList" /></MS></Obj>"#;
    command(&mut shell, &mut client, CID, T::GetCommandMetadata, xml).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, CID);
    assert_eq!(
        types(&msgs),
        vec![
            T::PipelineOutput,
            T::PipelineOutput,
            T::PipelineOutput,
            T::PipelineState
        ]
    );
    let count = parse_default(&body(&msgs[0])).unwrap();
    assert_eq!(count.property("Count"), Some(&Value::Int(2)));
    let first = parse_default(&body(&msgs[1])).unwrap();
    assert_eq!(first.property("Name"), Some(&sv("Get-Service")));
    match first.property("Parameters") {
        Some(Value::Dict(d)) => assert!(d.iter().any(|(k, _)| k == "Name")),
        other => panic!("{other:?}"),
    }
    assert!(body(&msgs[2]).contains("<S N=\"Key\">WhatIf</S>"));
}

#[test]
fn signal_stops_a_running_pipeline() {
    let engine = FakeEngine::with_steps(vec![Step {
        events: vec![Event::Output(sv("started"))],
        outcome: RunOutcome::Completed { had_errors: false },
        wait_cancel: true,
    }]);
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(true, &[command_xml("Get-Journal", false, &[])]);
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    // wait for the first output so the pipeline is surely running
    let mut got = Vec::new();
    for _ in 0..1000 {
        got.extend(decode(&mut r, &shell.receive(Some(CID)).unwrap()));
        if !got.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(types(&got), vec![T::PipelineOutput]);
    shell.signal(Some(CID), Signal::PsrpStop).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, CID);
    let last = msgs.last().unwrap();
    assert_eq!(
        parse_default(&body(last))
            .unwrap()
            .property("PipelineState"),
        Some(&Value::Int(3))
    );
}

#[test]
fn two_pipelines_run_one_after_the_other_in_one_pool() {
    let engine = FakeEngine::with_steps(vec![
        Step::ok(vec![Event::Output(sv("one"))]),
        Step::ok(vec![Event::Output(sv("two"))]),
    ]);
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(true, &[command_xml("Get-Date", false, &[])]);
    let c2 = "B1B2C3D4-0000-4000-8000-000000000003";
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    command(&mut shell, &mut client, c2, T::CreatePipeline, &xml).unwrap();
    let (a, _) = receive_until_state(&mut shell, &mut r, CID);
    let (b, _) = receive_until_state(&mut shell, &mut r, c2);
    assert_eq!(body(&a[0]), "<S>one</S>");
    assert_eq!(body(&b[0]), "<S>two</S>");
    // a CommandId may not be reused
    assert!(command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).is_err());
}

#[test]
fn small_envelopes_fragment_output_and_input() {
    let big = "x".repeat(20_000);
    let engine = FakeEngine::with_steps(vec![Step::ok(vec![Event::Output(sv(&big))])]);
    let calls = engine.calls.clone();
    let mut client = Client {
        next_oid: 1,
        max_blob: 300,
    };
    let (mut shell, mut r) = open(engine, &mut client, 8192);
    let long_arg = format!("<S N=\"V\">{}</S>", "y".repeat(5000));
    let xml = create_pipeline_xml(
        true,
        &[command_xml("Write-Output", false, &[(None, &long_arg)])],
    );
    // CREATE_PIPELINE split: first fragment in Command, the rest via Send stdin
    let pid = keyhole::psrp::message::guid_to_net_bytes(CID).unwrap();
    let data = client.encode(T::CreatePipeline, pid, &xml);
    let frags = keyhole::psrp::fragment::decode_fragments(&data).unwrap();
    assert!(frags.len() > 3);
    shell
        .command(CommandRequest {
            command_id: Some(CID.into()),
            command: String::new(),
            arguments: vec![b64(&frags[0].encode())],
        })
        .unwrap();
    for f in &frags[1..] {
        shell
            .send(Some(CID), StreamName::Stdin, f.encode(), false)
            .unwrap();
    }
    let mut n_chunks = 0;
    let mut msgs = Vec::new();
    for _ in 0..2000 {
        let resp = shell.receive(Some(CID)).unwrap();
        let size: usize = resp
            .streams
            .iter()
            .map(|c| c.data.len().div_ceil(3) * 4)
            .sum();
        assert!(size < 8192, "a Receive must fit the envelope");
        n_chunks += resp.streams.len();
        msgs.extend(decode(&mut r, &resp));
        if msgs.iter().any(|m| m.message_type == T::PipelineState) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(n_chunks > 3);
    assert_eq!(body(&msgs[0]), format!("<S>{big}</S>"));
    let calls = calls.lock().unwrap();
    assert!(
        matches!(&calls[0], Call::Structured(s, _) if s[0].commands[0].args[0].value == Some(Value::String("y".repeat(5000))))
    );
}

#[test]
fn pool_level_runspace_requests_are_answered_on_the_pool() {
    let mut client = Client::default();
    let (mut shell, mut r) = open(FakeEngine::default(), &mut client, 153_600);
    let d = client.encode(
        T::SetMaxRunspaces,
        [0; 16],
        r#"<Obj RefId="0"><MS><I32 N="MaxRunspaces">5</I32><I64 N="CI">1</I64></MS></Obj>"#,
    );
    // pypsrp sends "CI" upper-case; lookups are case-insensitive
    shell.send(None, StreamName::Stdin, d, false).unwrap();
    let d = client.encode(
        T::SetMinRunspaces,
        [0; 16],
        r#"<Obj RefId="0"><MS><I32 N="MinRunspaces">9</I32><I64 N="CI">2</I64></MS></Obj>"#,
    );
    shell.send(None, StreamName::Stdin, d, false).unwrap();
    let d = client.encode(
        T::GetAvailableRunspaces,
        [0; 16],
        r#"<Obj RefId="0"><MS><I64 N="ci">3</I64></MS></Obj>"#,
    );
    shell.send(None, StreamName::Stdin, d, false).unwrap();
    let msgs = decode(&mut r, &shell.receive(None).unwrap());
    assert_eq!(types(&msgs), vec![T::RunspaceAvailability; 3]);
    let v: Vec<Value> = msgs
        .iter()
        .map(|m| parse_default(&body(m)).unwrap())
        .collect();
    assert_eq!(
        v[0].property("SetMinMaxRunspacesResponse"),
        Some(&Value::Bool(true))
    );
    assert_eq!(v[0].property("ci"), Some(&Value::Int(1)));
    assert_eq!(
        v[1].property("SetMinMaxRunspacesResponse"),
        Some(&Value::Bool(false)),
        "min above max is refused"
    );
    assert_eq!(
        v[2].property("SetMinMaxRunspacesResponse"),
        Some(&Value::Int(5))
    );
}

#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let mut shell = pool(FakeEngine::default(), "alice");
    assert!(matches!(
        shell.on_create(&CreateRequest::default()),
        Err(ShellError::Malformed(_))
    ));
    let mut client = Client::default();
    // a pipeline before the pool is open
    let mut shell = pool(FakeEngine::default(), "alice");
    let d = client.encode(T::SessionCapability, [0; 16], CAPABILITY);
    shell
        .on_create(&CreateRequest {
            creation_xml: Some(d),
            max_envelope_size: 153_600,
            ..Default::default()
        })
        .unwrap();
    let e = command(&mut shell, &mut client, CID, T::CreatePipeline, "<S>x</S>").unwrap_err();
    assert!(
        e.to_string().contains("invalid in runspace pool state"),
        "{e}"
    );
    let (mut shell, _) = open(FakeEngine::default(), &mut client, 153_600);
    let e = shell
        .command(CommandRequest {
            command_id: Some(CID.into()),
            command: String::new(),
            arguments: vec!["%%%".into()],
        })
        .unwrap_err();
    assert!(matches!(e, ShellError::Malformed(_)));
    assert!(matches!(
        shell.receive(Some("nope")),
        Err(ShellError::InvalidSelectors)
    ));
    assert!(command(
        &mut shell,
        &mut client,
        CID,
        T::CreatePipeline,
        "<Obj RefId=\"0\"><MS /></Obj>"
    )
    .is_err());
}

#[test]
fn close_cancels_running_and_queued_pipelines() {
    let engine = FakeEngine::with_steps(vec![Step {
        events: vec![Event::Output(sv("started"))],
        outcome: RunOutcome::Completed { had_errors: false },
        wait_cancel: true,
    }]);
    let calls = engine.calls.clone();
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(true, &[command_xml("Get-Journal", false, &[])]);
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    let c2 = "B1B2C3D4-0000-4000-8000-000000000003";
    command(&mut shell, &mut client, c2, T::CreatePipeline, &xml).unwrap();
    for _ in 0..1000 {
        if !decode(&mut r, &shell.receive(Some(CID)).unwrap()).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    shell.close();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "the queued pipeline never runs after close"
    );
    // Closed: every request on the pool is an unknown selector now, the pool's Receive too.
    assert_eq!(
        shell.receive(None).unwrap_err(),
        ShellError::InvalidSelectors
    );
    assert_eq!(
        shell.receive(Some(CID)).unwrap_err(),
        ShellError::InvalidSelectors
    );
    assert_eq!(
        command(
            &mut shell,
            &mut client,
            "B1B2C3D4-0000-4000-8000-000000000004",
            T::CreatePipeline,
            &xml
        )
        .unwrap_err(),
        ShellError::InvalidSelectors
    );
}

#[test]
fn merged_error_stream_arrives_as_output() {
    let engine = FakeEngine::with_steps(vec![Step::ok(vec![
        Event::Output(sv("a")),
        Event::Error(ErrorRecord::new(
            "boom",
            "Boom",
            ErrorCategory::NotSpecified,
        )),
        Event::Warning("w".into()),
    ])]);
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    // pypsrp merge_error("output"): MergeMyResult=Error(2), MergeToResult=Output(1)
    let cmd = command_xml("Get-Thing", false, &[]).replace(
        "<Nil N=\"UseLocalScope\" />",
        "<Nil N=\"UseLocalScope\" /><Obj N=\"MergeMyResult\" RefId=\"60\"><TN RefId=\"9\"><T>System.Management.Automation.Runspaces.PipelineResultTypes</T><T>System.Enum</T></TN><ToString>Error</ToString><I32>2</I32></Obj><Obj N=\"MergeToResult\" RefId=\"61\"><TNRef RefId=\"9\" /><ToString>Output</ToString><I32>1</I32></Obj>",
    );
    let xml = create_pipeline_xml(true, &[cmd]);
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, CID);
    assert_eq!(
        types(&msgs),
        vec![
            T::PipelineOutput,
            T::PipelineOutput,
            T::WarningRecord,
            T::PipelineState
        ]
    );
    let e = parse_default(&body(&msgs[1])).unwrap();
    assert_eq!(e.property("writeErrorStream"), Some(&Value::Bool(true)));
    assert_eq!(e.property("FullyQualifiedErrorId"), Some(&sv("Boom")));
}

/// With `KEYHOLE_PSRP_DUMP=<dir>`, writes every server message of a rich conversation to
/// `<dir>/NNN.bin` (whole messages) for `tests/interop/check_pypsrp_messages.py`, which feeds
/// them to pypsrp's own deserializer. Does nothing otherwise.
#[test]
fn dump_messages_for_pypsrp() {
    let Ok(dir) = std::env::var("KEYHOLE_PSRP_DUMP") else {
        return;
    };
    let status = Value::Enum(keyhole::engine::EnumValue {
        type_names: vec![
            "System.ServiceProcess.ServiceControllerStatus".into(),
            "System.Enum".into(),
            "System.ValueType".into(),
            "System.Object".into(),
        ],
        name: "Running".into(),
        value: 4,
    });
    let mut svc = PsObject::new("System.ServiceProcess.ServiceController");
    svc.push("Name", "sshd");
    svc.push("Status", status);
    svc.to_string = Some("System.ServiceProcess.ServiceController".into());
    let when = chrono::DateTime::parse_from_rfc3339("2024-01-02T03:04:05.5+01:00").unwrap();
    let engine = FakeEngine {
        steps: std::sync::Arc::new(std::sync::Mutex::new(vec![
            Step::ok(vec![
                Event::Output(sv("line\r\nwith _x0041_ <xml> & stuff")),
                Event::Output(Value::Int(42)),
                Event::Output(Value::Int(1 << 40)),
                Event::Output(Value::Double(2.5)),
                Event::Output(Value::Bool(true)),
                Event::Output(Value::Null),
                Event::Output(Value::DateTime(when)),
                Event::Output(Value::TimeSpan(std::time::Duration::from_millis(3_723_500))),
                Event::Output(PsObject::custom().with("Name", "foo").with("Value", 1).into_value()),
                Event::Output(svc.into_value()),
                Event::Output(Value::Array(vec![sv("a"), Value::Int(2)])),
                Event::Output(Value::Dict(vec![("k".into(), sv("v"))])),
                Event::Error(
                    ErrorRecord::new("Cannot find a service with name 'x'.", "NoServiceFoundForGivenName,Get-Service", ErrorCategory::ObjectNotFound)
                        .target("x"),
                ),
                Event::Warning("warn".into()),
                Event::Verbose("verb".into()),
                Event::Debug("dbg".into()),
                Event::Information("info".into()),
            ]),
            Step {
                events: vec![],
                outcome: RunOutcome::Refused(Refusal {
                    message: "The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode.".into(),
                    id: "ScriptsNotAllowed".into(),
                    category: ErrorCategory::ParserError,
                    column: Some(3),
                }),
                wait_cancel: false,
            },
        ])),
        calls: Default::default(),
        visible: vec![
            VisibleCommand {
                decl: CommandDecl::cmdlet("Get-Service", "keyhole", "")
                    .param(ParamDecl::new("Name", ParamType::StringArray).alias("ServiceName"))
                    .param(ParamDecl::new("Force", ParamType::Switch))
                    .outputs("System.ServiceProcess.ServiceController"),
                resolved: None,
            },
            VisibleCommand {
                decl: CommandDecl { kind: keyhole::engine::CommandKind::Application, ..CommandDecl::cmdlet("uptime", "", "") },
                resolved: None,
            },
        ],
    };
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let mut all = Vec::new();
    // pool messages again, for pypsrp: open() consumed them, so rebuild them from a second shell
    {
        let mut c2 = Client::default();
        let mut s2 = pool(FakeEngine::default(), "alice");
        let mut xml = c2.encode(T::SessionCapability, [0; 16], CAPABILITY);
        xml.extend(c2.encode(T::InitRunspacePool, [0; 16], INIT));
        s2.on_create(&CreateRequest {
            creation_xml: Some(xml),
            max_envelope_size: 153_600,
            ..Default::default()
        })
        .unwrap();
        let mut r2 = Reassembler::new();
        all.extend(decode(&mut r2, &s2.receive(None).unwrap()));
    }
    let xml = create_pipeline_xml(true, &[command_xml("Get-Service", false, &[])]);
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    all.extend(receive_until_state(&mut shell, &mut r, CID).0);
    let c2 = "B1B2C3D4-0000-4000-8000-000000000003";
    command(
        &mut shell,
        &mut client,
        c2,
        T::CreatePipeline,
        &create_pipeline_xml(true, &[command_xml("$x = 1", true, &[])]),
    )
    .unwrap();
    all.extend(receive_until_state(&mut shell, &mut r, c2).0);
    let c3 = "B1B2C3D4-0000-4000-8000-000000000004";
    let meta = r#"<Obj RefId="0"><MS><Obj N="Name" RefId="1"><TN RefId="0"><T>System.String[]</T><T>System.Array</T><T>System.Object</T></TN><LST><S>*</S></LST></Obj><I32 N="CommandType">511</I32><Nil N="Namespace" /><Nil N="ArgumentList" /></MS></Obj>"#;
    command(&mut shell, &mut client, c3, T::GetCommandMetadata, meta).unwrap();
    all.extend(receive_until_state(&mut shell, &mut r, c3).0);
    let d = client.encode(
        T::SetMaxRunspaces,
        [0; 16],
        r#"<Obj RefId="0"><MS><I32 N="MaxRunspaces">5</I32><I64 N="CI">1</I64></MS></Obj>"#,
    );
    shell.send(None, StreamName::Stdin, d, false).unwrap();
    all.extend(decode(&mut r, &shell.receive(None).unwrap()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, m) in all.iter().enumerate() {
        std::fs::write(format!("{dir}/{i:03}.bin"), m.encode()).unwrap();
    }
}

/// CREATE_PIPELINE for one script command, with the client's host present (Ansible's pool has
/// one: `HostInfo._isHostNull` false).
fn script_with_host_xml(text: &str) -> String {
    create_pipeline_xml(true, &[command_xml(text, true, &[])]).replacen(
        "<B N=\"AddToHistory\">false</B>",
        "<B N=\"AddToHistory\">false</B><Obj N=\"HostInfo\" RefId=\"3\"><MS><B N=\"_isHostNull\">false</B><B N=\"_isHostUINull\">false</B><B N=\"_isHostRawUINull\">false</B><B N=\"_useRunspaceHost\">false</B></MS></Obj>",
        1,
    )
}

/// The exit code in a SetShouldExit host call.
fn should_exit_code(m: &keyhole::psrp::message::Message) -> i64 {
    let v = parse_default(&body(m)).unwrap();
    assert_eq!(v.property("ci"), Some(&Value::Int(-100)));
    assert!(body(m).contains("<ToString>SetShouldExit</ToString><I32>6</I32>"));
    match v.property("mp") {
        Some(Value::Array(a)) => match a.as_slice() {
            [Value::Int(n)] => *n,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// Issue 11 item 1: Ansible's psrp connection sends `LINE` + "\n" + `exit $LASTEXITCODE`.
/// keyhole runs LINE as one restricted line and hands its exit code (0 ran, 2 refused) to the
/// client's host as SetShouldExit before the end state, as Windows does for `exit N`; a
/// refusal points at the column in LINE, never at the wrapper.
#[test]
fn ansible_exec_runs_the_line_and_hands_its_exit_code_to_the_host() {
    let (session, _) = support::session();
    let mut client = Client::default();
    let (mut shell, mut r) = open(session, &mut client, 153_600);
    let xml = script_with_host_xml("Write-Output cups\nexit $LASTEXITCODE");
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, CID);
    assert_eq!(
        types(&msgs),
        vec![T::PipelineOutput, T::PipelineHostCall, T::PipelineState]
    );
    assert_eq!(body(&msgs[0]), "<S>cups</S>");
    assert_eq!(should_exit_code(&msgs[1]), 0);
    assert_eq!(
        parse_default(&body(&msgs[2]))
            .unwrap()
            .property("PipelineState"),
        Some(&Value::Int(4))
    );

    let c2 = "B1B2C3D4-0000-4000-8000-000000000013";
    let xml = script_with_host_xml("Write-Output cups | Stop-Thing\nexit $LASTEXITCODE");
    command(&mut shell, &mut client, c2, T::CreatePipeline, &xml).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, c2);
    assert_eq!(types(&msgs), vec![T::PipelineHostCall, T::PipelineState]);
    assert_eq!(should_exit_code(&msgs[0]), 2);
    let state = body(&msgs[1]);
    assert_eq!(
        parse_default(&state).unwrap().property("PipelineState"),
        Some(&Value::Int(5))
    );
    assert!(
        state.contains("Stop-Thing") && state.contains("column 21"),
        "{state}"
    );
    assert!(!state.contains("exit"), "{state}");

    // Without a host on the client there is nobody to tell: no host call (as Windows).
    let c3 = "B1B2C3D4-0000-4000-8000-000000000014";
    let xml = create_pipeline_xml(
        true,
        &[command_xml(
            "Write-Output cups\nexit $LASTEXITCODE",
            true,
            &[],
        )],
    );
    command(&mut shell, &mut client, c3, T::CreatePipeline, &xml).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, c3);
    assert_eq!(types(&msgs), vec![T::PipelineOutput, T::PipelineState]);
}

/// Issue 11 item 3: the engine writes a terminating error as it happens and ends the run Failed
/// with it; the client gets it once, inside the Failed PIPELINE_STATE (as Windows sends it),
/// while non-terminating errors before it still arrive as ERROR_RECORDs.
#[test]
fn a_terminating_error_arrives_once_inside_the_failed_state() {
    let soft = ErrorRecord::new("soft one", "Soft", ErrorCategory::NotSpecified);
    let hard = ErrorRecord::new("hard one", "Hard", ErrorCategory::NotSpecified).terminating();
    let engine = FakeEngine::with_steps(vec![Step {
        events: vec![Event::Error(soft), Event::Error(hard.clone())],
        outcome: RunOutcome::Failed(hard),
        wait_cancel: false,
    }]);
    let mut client = Client::default();
    let (mut shell, mut r) = open(engine, &mut client, 153_600);
    let xml = create_pipeline_xml(true, &[command_xml("Get-Thing", false, &[])]);
    command(&mut shell, &mut client, CID, T::CreatePipeline, &xml).unwrap();
    let (msgs, _) = receive_until_state(&mut shell, &mut r, CID);
    assert_eq!(types(&msgs), vec![T::ErrorRecord, T::PipelineState]);
    assert!(body(&msgs[0]).contains("soft one"));
    let state = body(&msgs[1]);
    assert!(state.contains("hard one"), "{state}");
    let all: String = msgs.iter().map(body).collect();
    assert_eq!(
        all.matches("<S N=\"FullyQualifiedErrorId\">Hard</S>")
            .count(),
        1,
        "{all}"
    );
}
