//! Engine behaviour through `Session`: command table, binding, validation, pipelines, common
//! parameters, audit and formatting: structured pipelines and `run_line` through the parser.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::engine_support as support;

use keyhole::capability::EffectiveCapability;
use keyhole::config::SessionType;
use keyhole::engine::{
    format, CancelToken, CommandKind, Event, PsObject, RunOutcome, StructuredPipeline, Value,
    VecSink,
};
use support::*;

fn refused(o: &RunOutcome) -> &keyhole::engine::Refusal {
    match o {
        RunOutcome::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn table_holds_defaults_grants_and_aliases_only() {
    let (s, _) = session();
    let names: Vec<String> = s
        .visible()
        .iter()
        .map(|v| v.decl.name.to_lowercase())
        .collect();
    for n in [
        "get-command",
        "get-help",
        "out-default",
        "exit-pssession",
        "select-object",
        "measure-object",
        "write-output",
        "gcm",
        "wo",
        "get-site",
        "uptime",
    ] {
        assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
    }
    for n in [
        "invoke-expression",
        "iex",
        "get-childitem",
        "import-module",
        "stop-service",
    ] {
        assert!(!names.contains(&n.to_string()), "{n} must not be visible");
    }
    let wo = s
        .visible()
        .iter()
        .find(|v| v.decl.name == "Write-Output")
        .unwrap();
    let params: Vec<&str> = wo.decl.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, vec!["InputObject", "NoEnumerate"]);
    assert_eq!(
        wo.decl.params[0].set,
        vec!["nginx".to_string(), "cups".to_string()]
    );
    let alias = s.visible().iter().find(|v| v.decl.name == "wo").unwrap();
    assert_eq!(alias.decl.kind, CommandKind::Alias);
    assert_eq!(alias.resolved.as_deref(), Some("Write-Output"));
}

#[test]
fn empty_session_has_nothing_but_grants() {
    let (s, _) = session_with(&EffectiveCapability::default(), SessionType::Empty);
    assert!(s.visible().is_empty());
    let (mut s, _) = session_with(&EffectiveCapability::default(), SessionType::Empty);
    let (o, _) = run(&mut s, vec![sc("Get-Command", vec![])], vec![]);
    assert_eq!(refused(&o).id, "CommandNotFoundException");
}

#[test]
fn set_allows_case_variants_and_refuses_others() {
    let (mut s, _) = session();
    let (o, ev) = run(
        &mut s,
        vec![sc("Write-Output", vec![(Some("InputObject"), st("NGINX"))])],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert_eq!(outputs(&ev), vec![Value::from("NGINX")]);
    for bad in ["sshd", "nginx ", "ngin*", "nginx\n", "nginx\u{200B}", ".."] {
        let (o, ev) = run(
            &mut s,
            vec![sc("Write-Output", vec![(None, st(bad))])],
            vec![],
        );
        let r = refused(&o);
        assert_eq!(
            r.id, "ParameterArgumentValidationError,Write-Output",
            "{bad:?}"
        );
        assert!(
            r.message
                .contains("does not belong to the set \"nginx,cups\""),
            "{}",
            r.message
        );
        assert!(ev.is_empty(), "refusals emit nothing");
    }
    let mixed = Value::Array(vec!["nginx".into(), "sshd".into()]);
    let (o, _) = run(
        &mut s,
        vec![sc("Write-Output", vec![(None, Some(mixed))])],
        vec![],
    );
    assert!(refused(&o).message.contains("\"sshd\""));
}

#[test]
fn pipeline_input_failing_validation_is_an_error_record() {
    let (mut s, _) = session();
    let (o, ev) = run(
        &mut s,
        vec![sc("Write-Output", vec![])],
        vec!["nginx".into(), "sshd".into(), "cups".into()],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: true });
    assert_eq!(
        outputs(&ev),
        vec![Value::from("nginx"), Value::from("cups")]
    );
    let errs = errors(&ev);
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].fully_qualified_error_id,
        "ParameterArgumentValidationError,Write-Output"
    );
    assert_eq!(errs[0].command.as_deref(), Some("Write-Output"));
}

#[test]
fn not_visible_and_module_qualified_are_not_found() {
    let (mut s, rec) = session();
    for name in [
        "Invoke-Expression",
        "iex",
        "Microsoft.PowerShell.Utility\\Write-Output",
        "Get-ChildItem",
        "Stop-Service",
    ] {
        let (o, _) = run(&mut s, vec![sc(name, vec![])], vec![]);
        let r = refused(&o);
        assert_eq!(r.id, "CommandNotFoundException");
        assert!(
            r.message
                .contains("is not recognized as a name of a cmdlet"),
            "{}",
            r.message
        );
    }
    let r = rec.lock().unwrap();
    assert_eq!(r.refused.len(), 5);
    assert!(r.commands.is_empty(), "nothing ran");
}

#[test]
fn binding_errors_refuse_the_whole_line() {
    let (mut s, rec) = session();
    let cases: Vec<(Vec<keyhole::engine::StructuredCommand>, &str)> = vec![
        (
            vec![sc("Get-Date", vec![(Some("UFormat"), st("%Y"))])],
            "NamedParameterNotFound,Get-Date",
        ),
        (
            vec![sc("Get-Date", vec![(Some("Nope"), st("x"))])],
            "NamedParameterNotFound,Get-Date",
        ),
        (
            vec![sc("Get-Date", vec![(Some("WhatIf"), None)])],
            "NamedParameterNotFound,Get-Date",
        ),
        (
            vec![sc("Get-Date", vec![(Some("OutVariable"), st("x"))])],
            "VariableParameterNotAllowed,Get-Date",
        ),
        (
            vec![sc("Get-Date", vec![(Some("ErrorAction"), st("Inquire"))])],
            "ParameterArgumentValidationError,Get-Date",
        ),
        (
            vec![sc("Get-Date", vec![(None, st("x"))])],
            "PositionalParameterNotFound,Get-Date",
        ),
        (
            vec![sc(
                "Get-Date",
                vec![(Some("Format"), st("a")), (Some("format"), st("b"))],
            )],
            "ParameterAlreadyBound,Get-Date",
        ),
        (
            vec![sc("Where-Object", vec![(Some("N"), None)])],
            "AmbiguousParameter,Where-Object",
        ),
        (
            vec![sc("Select-Object", vec![(Some("First"), st("abc"))])],
            "ParameterArgumentTransformationError,Select-Object",
        ),
        (
            vec![sc(
                "Select-Object",
                vec![(
                    Some("Property"),
                    Some(Value::Dict(vec![("n".into(), "x".into())])),
                )],
            )],
            "ParameterArgumentTransformationError,Select-Object",
        ),
        (
            vec![sc("Get-Site", vec![])],
            "MissingMandatoryParameter,Get-Site",
        ),
        (
            vec![sc("Get-Site", vec![(None, st("acme-web; rm"))])],
            "ParameterArgumentValidationError,Get-Site",
        ),
        (
            vec![sc("Get-DiskUsage", vec![(None, st("/etc"))])],
            "ParameterArgumentValidationError,Get-DiskUsage",
        ),
        (
            vec![sc("uptime", vec![(None, st("-p"))])],
            "ArgumentNotAllowed,uptime",
        ),
        (
            vec![sc("/usr/bin/systemd-analyze", vec![(None, st("plot"))])],
            "ArgumentNotAllowed,systemd-analyze",
        ),
        // a later command's refusal stops the earlier ones from running too
        (
            vec![
                sc("Get-Command", vec![]),
                sc("Sort-Object", vec![(Some("Bogus"), None)]),
            ],
            "NamedParameterNotFound,Sort-Object",
        ),
    ];
    for (cmds, id) in cases {
        let (o, ev) = run(&mut s, cmds.clone(), vec![]);
        assert_eq!(refused(&o).id, id, "{cmds:?}");
        assert!(ev.is_empty());
    }
    assert!(rec.lock().unwrap().commands.is_empty(), "nothing ran");
    let (o, _) = run(
        &mut s,
        vec![sc("Select-Object", vec![(Some("First"), st("abc"))])],
        vec![],
    );
    assert!(
        refused(&o)
            .message
            .contains("Cannot convert value \"abc\" to type \"System.Int32\""),
        "{:?}",
        o
    );
    let (o, _) = run(&mut s, vec![sc("Get-Site", vec![])], vec![]);
    assert!(refused(&o)
        .message
        .contains("missing mandatory parameter -Name"));
}

#[test]
fn get_command_measure_and_select_for_implicit_remoting() {
    let (mut s, _) = session();
    let (o, ev) = run(
        &mut s,
        vec![
            sc("Get-Command", vec![(Some("Name"), st("Write-Output"))]),
            sc("Measure-Object", vec![]),
        ],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    let out = outputs(&ev);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].property("Count"), Some(&Value::Int(1)));
    let props = "Name,Namespace,HelpUri,CommandType,ResolvedCommandName,OutputType,Parameters";
    let list = Value::Array(props.split(',').map(Value::from).collect());
    let (o, ev) = run(
        &mut s,
        vec![
            sc("Get-Command", vec![]),
            sc("Select-Object", vec![(Some("Property"), Some(list))]),
        ],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    let out = outputs(&ev);
    assert!(out.len() > 8);
    let Value::Object(first) = &out[0] else {
        panic!()
    };
    let names: Vec<&str> = first.properties.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names.join(","), props);
    let wo = out
        .iter()
        .find(|v| v.property("Name") == Some(&Value::from("Write-Output")))
        .unwrap();
    let Some(Value::Dict(params)) = wo.property("Parameters") else {
        panic!()
    };
    assert_eq!(params.len(), 2);
    // applications are listed only when asked for
    assert!(!out
        .iter()
        .any(|v| v.property("Name") == Some(&Value::from("uptime"))));
}

#[test]
fn get_command_unknown_name_is_an_error_record_unless_silenced() {
    let (mut s, _) = session();
    let (o, ev) = run(
        &mut s,
        vec![sc("Get-Command", vec![(None, st("Invoke-Expression"))])],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: true });
    assert_eq!(errors(&ev).len(), 1);
    let (o, ev) = run(
        &mut s,
        vec![sc(
            "Get-Command",
            vec![
                (None, st("Invoke-Expression")),
                (Some("ErrorAction"), st("SilentlyContinue")),
            ],
        )],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert!(ev.is_empty());
    let (o, ev) = run(
        &mut s,
        vec![sc(
            "Get-Command",
            vec![(None, st("Nope")), (Some("ea"), st("Stop"))],
        )],
        vec![],
    );
    match o {
        RunOutcome::Failed(r) => assert!(r.terminating && r.message.contains("'Nope'")),
        other => panic!("{other:?}"),
    }
    assert_eq!(errors(&ev).len(), 1);
}

fn svc(name: &str, status: &str, pid: i64) -> Value {
    PsObject::new("Test.Service")
        .with("Name", name)
        .with("Status", status)
        .with("Pid", pid)
        .into_value()
}

#[test]
fn where_sort_select_pipeline() {
    let (mut s, _) = session();
    let input = vec![
        svc("nginx", "Running", 30),
        svc("cups", "Stopped", 0),
        svc("sshd", "running", 4),
    ];
    let (o, ev) = run(
        &mut s,
        vec![
            sc(
                "Where-Object",
                vec![
                    (None, st("Status")),
                    (Some("eq"), None),
                    (None, st("Running")),
                ],
            ),
            sc("Sort-Object", vec![(Some("Property"), st("Pid"))]),
            sc("Select-Object", vec![(Some("ExpandProperty"), st("Name"))]),
        ],
        input.clone(),
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert_eq!(
        outputs(&ev),
        vec![Value::from("sshd"), Value::from("nginx")]
    );
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Where-Object",
            vec![
                (Some("Property"), st("Pid")),
                (Some("GT"), None),
                (Some("Value"), Some(Value::Int(3))),
            ],
        )],
        input.clone(),
    );
    assert_eq!(outputs(&ev).len(), 2);
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Where-Object",
            vec![(None, st("Name")), (Some("like"), None), (None, st("*s*"))],
        )],
        input.clone(),
    );
    assert_eq!(outputs(&ev).len(), 2);
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Where-Object",
            vec![
                (None, st("Name")),
                (Some("in"), None),
                (None, Some(Value::Array(vec!["cups".into(), "x".into()]))),
            ],
        )],
        input.clone(),
    );
    assert_eq!(outputs(&ev), vec![input[1].clone()]);
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Select-Object",
            vec![(Some("Last"), Some(Value::Int(1)))],
        )],
        input.clone(),
    );
    assert_eq!(outputs(&ev), vec![input[2].clone()]);
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Select-Object",
            vec![
                (Some("First"), Some(Value::Int(2))),
                (Some("Skip"), Some(Value::Int(1))),
            ],
        )],
        input.clone(),
    );
    assert_eq!(outputs(&ev), vec![input[1].clone(), input[2].clone()]);
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Sort-Object",
            vec![(None, st("Name")), (Some("Descending"), None)],
        )],
        input.clone(),
    );
    let names: Vec<Value> = outputs(&ev)
        .iter()
        .map(|v| v.property("Name").cloned().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            Value::from("sshd"),
            Value::from("nginx"),
            Value::from("cups")
        ]
    );
}

#[test]
fn measure_object_numbers_and_text() {
    let (mut s, _) = session();
    let input = vec![svc("a", "x", 1), svc("b", "y", 2), svc("c", "z", 6)];
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Measure-Object",
            vec![
                (None, st("Pid")),
                (Some("Sum"), None),
                (Some("Average"), None),
                (Some("Maximum"), None),
            ],
        )],
        input,
    );
    let m = &outputs(&ev)[0];
    assert_eq!(m.property("Count"), Some(&Value::Int(3)));
    assert_eq!(m.property("Sum"), Some(&Value::Double(9.0)));
    assert_eq!(m.property("Average"), Some(&Value::Double(3.0)));
    assert_eq!(m.property("Maximum"), Some(&Value::Double(6.0)));
    assert_eq!(m.property("Minimum"), Some(&Value::Null));
    assert_eq!(m.property("Property"), Some(&Value::from("Pid")));
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Measure-Object",
            vec![(Some("Line"), None), (Some("Word"), None)],
        )],
        vec!["a b\nc".into()],
    );
    let m = &outputs(&ev)[0];
    assert_eq!(m.property("Lines"), Some(&Value::Int(2)));
    assert_eq!(m.property("Words"), Some(&Value::Int(3)));
}

#[test]
fn formatting_commands_produce_powershell_text() {
    let (mut s, _) = session();
    let input = vec![svc("nginx", "Running", 30), svc("cups", "Stopped", 1234)];
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Format-Table",
            vec![(None, Some(Value::Array(vec!["Name".into(), "Pid".into()])))],
        )],
        input.clone(),
    );
    let text: Vec<String> = outputs(&ev).iter().map(Value::to_ps_string).collect();
    assert_eq!(
        text.join("\n"),
        "\nName   Pid\n----   ---\nnginx   30\ncups  1234\n"
    );
    let (_, ev) = run(
        &mut s,
        vec![sc("Format-List", vec![(None, st("N*"))])],
        input.clone(),
    );
    let text: Vec<String> = outputs(&ev).iter().map(Value::to_ps_string).collect();
    assert_eq!(text.join("\n"), "\nName : nginx\n\nName : cups\n");
    let (_, ev) = run(&mut s, vec![sc("Out-String", vec![])], input.clone());
    assert_eq!(
        outputs(&ev),
        vec![Value::from(
            "\nName  Status   Pid\n----  ------   ---\nnginx Running   30\ncups  Stopped 1234\n\n"
        )]
    );
    let (_, ev) = run(
        &mut s,
        vec![sc("ConvertTo-Json", vec![(Some("Compress"), None)])],
        input[..1].to_vec(),
    );
    assert_eq!(
        outputs(&ev),
        vec![Value::from(
            "{\"Name\":\"nginx\",\"Status\":\"Running\",\"Pid\":30}"
        )]
    );
    let (_, ev) = run(&mut s, vec![sc("Get-Member", vec![])], input[..1].to_vec());
    let text = format::format_values(&outputs(&ev));
    assert!(text.contains("   TypeName: Test.Service"), "{text}");
    assert!(
        text.contains("Pid         Property   int Pid {get;}"),
        "{text}"
    );
}

#[test]
fn get_help_shows_only_granted_parameters() {
    let (mut s, _) = session();
    let (_, ev) = run(
        &mut s,
        vec![sc("Get-Help", vec![(None, st("Get-Date"))])],
        vec![],
    );
    let text = outputs(&ev)[0].to_ps_string();
    assert!(
        text.contains("SYNTAX\n    Get-Date [-Format <String>] [<CommonParameters>]"),
        "{text}"
    );
    assert!(!text.contains("UFormat"));
    let (o, ev) = run(
        &mut s,
        vec![sc("Get-Help", vec![(None, st("Invoke-Expression"))])],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: true });
    assert!(errors(&ev)[0]
        .message
        .contains("Get-Help could not find Invoke-Expression"));
    let (o, _) = run(
        &mut s,
        vec![sc("Get-Help", vec![(None, st("a b"))])],
        vec![],
    );
    assert_eq!(refused(&o).id, "ParameterArgumentValidationError,Get-Help");
}

#[test]
fn audit_records_line_commands_output_and_end() {
    let (mut s, rec) = session();
    let (o, _) = run(
        &mut s,
        vec![sc("Write-Output", vec![(None, st("cups"))])],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    let r = rec.lock().unwrap().clone();
    assert_eq!(r.lines, vec!["Write-Output cups".to_string()]);
    assert_eq!(r.commands.len(), 1);
    assert_eq!(r.commands[0].0, "Write-Output");
    assert_eq!(
        r.commands[0].1.strings("InputObject"),
        vec!["cups".to_string()]
    );
    assert_eq!(r.output, "cups\n");
    assert_eq!(r.ends, vec!["Completed".to_string()]);
}

#[test]
fn audit_failure_refuses() {
    let rec = std::sync::Arc::new(std::sync::Mutex::new(Record::default()));
    let mut s = keyhole::engine::Session::new(
        &capability(),
        keyhole::engine::SessionOptions {
            session_type: SessionType::RestrictedRemoteServer,
            host: host(),
            commands: keyhole::commands::source(),
        },
        Box::new(RecordingAudit(rec, true)),
    );
    let (o, ev) = run(
        &mut s,
        vec![sc("Write-Output", vec![(None, st("cups"))])],
        vec![],
    );
    assert_eq!(refused(&o).id, "AuditWriteFailed");
    assert!(outputs(&ev).is_empty());
}

#[test]
fn records_are_committed_once_per_statement_before_its_commands_run() {
    let (mut s, rec) = session();
    let (o, _) = run(
        &mut s,
        vec![
            sc("Write-Output", vec![(None, st("cups"))]),
            sc("Write-Output", vec![]),
        ],
        vec![],
    );
    assert!(matches!(o, RunOutcome::Completed { .. }), "{o:?}");
    let mut sink = VecSink::default();
    let o = s.run_line(
        "Write-Output nginx; wo cups",
        &mut sink,
        &CancelToken::new(),
    );
    assert!(matches!(o, RunOutcome::Completed { .. }), "{o:?}");
    let events = rec.lock().unwrap().events.clone();
    let want = [
        "line",
        "command Write-Output",
        "command Write-Output",
        "commit",
        "output",
        "end Completed",
        "line",
        "command Write-Output",
        "commit",
        "output",
        "command Write-Output",
        "commit",
        "output",
        "end Completed",
    ];
    assert_eq!(
        events, want,
        "one sync per statement, after its records, before it runs"
    );
}

#[test]
fn a_failed_commit_refuses_before_anything_runs() {
    let (mut s, rec) = session();
    rec.lock().unwrap().fail_commit = true;
    let (o, ev) = run(
        &mut s,
        vec![sc("Write-Output", vec![(None, st("cups"))])],
        vec![],
    );
    assert_eq!(refused(&o).id, "AuditWriteFailed");
    assert!(outputs(&ev).is_empty());
    let r = rec.lock().unwrap();
    assert_eq!(r.ends, vec!["Refused".to_string()]);
    assert!(r.output.is_empty(), "nothing ran");
}

#[test]
fn exit_cancel_and_statements() {
    let (mut s, _) = session();
    let (o, _) = run(&mut s, vec![sc("Exit-PSSession", vec![])], vec![]);
    assert_eq!(o, RunOutcome::Exit);
    let (o, _) = run(&mut s, vec![sc("exsn", vec![])], vec![]);
    assert_eq!(o, RunOutcome::Exit);
    let cancel = CancelToken::new();
    cancel.cancel();
    let mut sink = VecSink::default();
    let o = s.run_structured(
        &[StructuredPipeline {
            commands: vec![sc("Write-Output", vec![(None, st("cups"))])],
        }],
        vec![],
        &mut sink,
        &cancel,
    );
    assert_eq!(o, RunOutcome::Stopped);
    assert!(sink.0.is_empty());
    let mut sink = VecSink::default();
    let o = s.run_structured(
        &[
            StructuredPipeline {
                commands: vec![sc("Write-Output", vec![(None, st("cups"))])],
            },
            StructuredPipeline {
                commands: vec![sc("wo", vec![(None, st("nginx"))])],
            },
        ],
        vec![],
        &mut sink,
        &CancelToken::new(),
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert_eq!(
        outputs(&sink.0),
        vec![Value::from("cups"), Value::from("nginx")]
    );
}

#[test]
fn out_default_formats_to_lines() {
    let (mut s, _) = session();
    let (_, ev) = run(
        &mut s,
        vec![sc("Out-Default", vec![])],
        vec![svc("a", "b", 1)],
    );
    let lines: Vec<String> = outputs(&ev).iter().map(Value::to_ps_string).collect();
    assert_eq!(
        lines,
        vec![
            "",
            "Name Status Pid",
            "---- ------ ---",
            "a    b        1",
            ""
        ]
    );
}

// ------------------------------------------------------------------ run_line (needs the parser)

#[test]
fn run_line_cases() {
    let (mut s, rec) = session();
    let (o, ev) = line(&mut s, "Write-Output nginx | Sort-Object");
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert_eq!(outputs(&ev), vec![Value::from("nginx")]);
    let (o, ev) = line(&mut s, "wo NGINX, cups -NoEnumerate");
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert_eq!(outputs(&ev).len(), 1);
    let (o, _) = line(&mut s, "Get-Command -Name Get-Date | Measure-Object");
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    let (o, ev) = line(&mut s, "Write-Output cups; Write-Output sshd");
    let r = refused(&o);
    assert_eq!(r.column, Some(33));
    assert!(r.message.contains("(at column 33)"), "{}", r.message);
    assert!(ev.is_empty(), "the first statement did not run");
    let (o, _) = line(
        &mut s,
        "Get-Date -Format:'yyyy' -ErrorAction:SilentlyContinue",
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    let (o, _) = line(&mut s, "exit");
    assert_eq!(o, RunOutcome::Exit);
    let (o, _) = line(&mut s, "$x = 1");
    assert_eq!(
        refused(&o).category,
        keyhole::engine::ErrorCategory::ParserError
    );
    assert!(rec
        .lock()
        .unwrap()
        .lines
        .contains(&"Write-Output nginx | Sort-Object".to_string()));
}

#[test]
fn invoke_expression_is_not_found_in_any_shape_including_execute_ps() {
    // The engine recognises no wrapper: pypsrp's execute_ps shape is recognised by the PSRP layer
    // (psrp::pool::Wrapper), which hands the engine the line itself (tests/server/psrp_shell.rs).
    let (mut s, _) = session();
    for cmds in [
        vec![
            sc(
                "Invoke-Expression",
                vec![(Some("Command"), st("Write-Output cups"))],
            ),
            sc("Out-String", vec![(Some("Stream"), None)]),
        ],
        vec![
            sc("Invoke-Expression", vec![(None, st("Write-Output cups"))]),
            sc("Out-String", vec![(Some("Stream"), None)]),
        ],
        vec![sc(
            "Invoke-Expression",
            vec![(Some("Command"), st("Write-Output cups"))],
        )],
    ] {
        let (o, ev) = run(&mut s, cmds, vec![]);
        assert_eq!(refused(&o).id, "CommandNotFoundException");
        assert!(outputs(&ev).is_empty());
    }
}

#[test]
fn events_sink_sees_information_for_whatif_free_commands() {
    // No granted command changes state in this capability: -WhatIf is not a parameter at all.
    let (mut s, _) = session();
    let (o, ev) = run(
        &mut s,
        vec![sc(
            "Write-Output",
            vec![(None, st("cups")), (Some("WhatIf"), None)],
        )],
        vec![],
    );
    assert_eq!(refused(&o).id, "NamedParameterNotFound,Write-Output");
    assert!(!ev.iter().any(|e| matches!(e, Event::Information(_))));
}

#[test]
fn get_command_metadata_shape_from_powershell_clients() {
    let (mut s, _) = session();
    let types = Value::String("Alias, Function, Filter, Cmdlet, Configuration".into());
    let (o, ev) = run(
        &mut s,
        vec![
            sc(
                "Get-Command",
                vec![
                    (Some("Name"), Some(Value::Array(vec!["*".into()]))),
                    (Some("CommandType"), Some(types)),
                    (Some("ListImported"), Some(Value::Bool(true))),
                    (Some("ErrorAction"), st("SilentlyContinue")),
                ],
            ),
            sc("Measure-Object", vec![]),
            sc("Select-Object", vec![(Some("Property"), st("Count"))]),
        ],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    let count = outputs(&ev)[0].property("Count").cloned().unwrap();
    let expected = s
        .visible()
        .iter()
        .filter(|v| v.decl.kind != CommandKind::Application)
        .count();
    assert_eq!(count, Value::Int(expected as i64));
    let (_, ev) = run(
        &mut s,
        vec![sc(
            "Get-Command",
            vec![(Some("CommandType"), Some(Value::Int(32)))],
        )],
        vec![],
    );
    assert_eq!(outputs(&ev).len(), 2, "the two external commands");
}

#[test]
fn remaining_arguments_bind_to_write_output() {
    let (mut s, _) = session();
    let (o, ev) = run(
        &mut s,
        vec![sc(
            "Write-Output",
            vec![(None, st("nginx")), (None, st("CUPS"))],
        )],
        vec![],
    );
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert_eq!(
        outputs(&ev),
        vec![Value::from("nginx"), Value::from("CUPS")]
    );
    let (o, _) = run(
        &mut s,
        vec![sc(
            "Write-Output",
            vec![(None, st("nginx")), (None, st("sshd"))],
        )],
        vec![],
    );
    assert!(refused(&o).message.contains("\"sshd\""));
}

#[test]
fn restricted_defaults_are_fixed_but_constrainable_in_empty_sessions() {
    let mut cap = capability();
    let mut only = std::collections::BTreeMap::new();
    only.insert(
        "first".to_string(),
        keyhole::capability::ParamGrant {
            name: "First".into(),
            constraint: keyhole::capability::ValueConstraint::Any,
        },
    );
    cap.cmdlets.insert(
        "select-object".into(),
        keyhole::capability::CommandGrant {
            name: "Select-Object".into(),
            params: keyhole::capability::ParamsGrant::Only(only),
        },
    );
    let (s, _) = session_with(&cap, SessionType::RestrictedRemoteServer);
    let sel = s
        .visible()
        .iter()
        .find(|v| v.decl.name == "Select-Object")
        .unwrap();
    assert!(sel.decl.find_param("Property").is_some());
    let (s, _) = session_with(&cap, SessionType::Empty);
    let sel = s
        .visible()
        .iter()
        .find(|v| v.decl.name == "Select-Object")
        .unwrap();
    assert!(sel.decl.find_param("Property").is_none());
    assert!(!s.visible().iter().any(|v| v.decl.name == "Get-Command"));
}

#[test]
fn pipeline_length_is_limited() {
    let (mut s, _) = session();
    let cmds: Vec<_> = (0..65).map(|_| sc("Sort-Object", vec![])).collect();
    let (o, _) = run(&mut s, cmds, vec![]);
    assert_eq!(refused(&o).id, "TooManyCommands");
    let cmds: Vec<_> = (0..64).map(|_| sc("Sort-Object", vec![])).collect();
    let (o, ev) = run(&mut s, cmds, vec![Value::Int(2), Value::Int(1)]);
    assert_eq!(o, RunOutcome::Completed { had_errors: false });
    assert_eq!(outputs(&ev), vec![Value::Int(1), Value::Int(2)]);
}

#[test]
fn objects_never_pass_a_set_by_their_text() {
    let (mut s, rec) = session();
    let mut o = PsObject::new("Fake").with("Name", "sshd");
    o.to_string = Some("nginx".into());
    let (out, _) = run(
        &mut s,
        vec![sc(
            "Write-Output",
            vec![(None, Some(o.clone().into_value()))],
        )],
        vec![],
    );
    assert_eq!(
        refused(&out).id,
        "ParameterArgumentValidationError,Write-Output"
    );
    let (out, ev) = run(
        &mut s,
        vec![sc("Write-Output", vec![])],
        vec![o.into_value()],
    );
    assert_eq!(out, RunOutcome::Completed { had_errors: true });
    assert!(outputs(&ev).is_empty());
    assert_eq!(
        rec.lock().unwrap().commands.len(),
        1,
        "only the second line started"
    );
}

/// Issue 9 finding 9: an object whose text is in the set (or matches the pattern) passed a
/// constrained *string* parameter, because it was converted to its text before the check.
/// A constrained parameter takes plain values only, whichever way the object arrives.
#[test]
fn constrained_parameters_take_plain_values_only() {
    let fake = |text: &str| {
        let mut o = PsObject::new("Fake").with("Secret", "/etc/shadow");
        o.to_string = Some(text.into());
        o.into_value()
    };
    // A structured (PSRP) argument to a role-constrained string parameter.
    let (mut s, rec) = session();
    let (out, _) = run(
        &mut s,
        vec![sc("Get-Site", vec![(Some("Name"), Some(fake("acme-web")))])],
        vec![],
    );
    let r = refused(&out);
    assert_eq!(r.id, "ParameterArgumentValidationError,Get-Site");
    assert!(r.message.contains("plain values"), "{}", r.message);
    // ... positionally, and inside an array.
    let (out, _) = run(
        &mut s,
        vec![sc("Get-Site", vec![(None, Some(fake("acme-web")))])],
        vec![],
    );
    assert_eq!(
        refused(&out).id,
        "ParameterArgumentValidationError,Get-Site"
    );
    // A program's arguments are constrained too.
    let (out, _) = run(
        &mut s,
        vec![sc(
            "systemd-analyze",
            vec![(None, Some(Value::Array(vec!["blame".into(), fake("time")])))],
        )],
        vec![],
    );
    assert_eq!(refused(&out).id, "ArgumentNotAllowed,systemd-analyze");
    assert!(rec.lock().unwrap().commands.is_empty(), "nothing ran");
    // A plain value still passes.
    let (out, _) = run(
        &mut s,
        vec![sc("Get-Site", vec![(Some("Name"), st("ACME-WEB"))])],
        vec![],
    );
    assert!(!matches!(out, RunOutcome::Refused(_)), "{out:?}");

    // Pipeline input by property name into a constrained parameter (Restart-Service -Name
    // carries its own pattern): the object's Name is an object whose text is "nginx".
    let mut cap = EffectiveCapability::default();
    cap.cmdlets.insert(
        "restart-service".into(),
        keyhole::capability::CommandGrant {
            name: "Restart-Service".into(),
            params: keyhole::capability::ParamsGrant::All,
        },
    );
    let (mut s, _) = session_with(&cap, SessionType::Empty);
    let input = PsObject::new("Fake.Service")
        .with("Name", fake("nginx"))
        .into_value();
    let (out, ev) = run(
        &mut s,
        vec![sc("Restart-Service", vec![(Some("WhatIf"), None)])],
        vec![input],
    );
    assert_eq!(out, RunOutcome::Completed { had_errors: true });
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Information(_))),
        "the object never bound: {ev:?}"
    );
    let errs = errors(&ev);
    assert_eq!(
        errs[0].fully_qualified_error_id,
        "ParameterArgumentValidationError,Restart-Service"
    );
    assert!(
        errs[0].message.contains("plain values"),
        "{}",
        errs[0].message
    );
    // The same with a plain Name binds (and -WhatIf only says what it would do).
    let input = PsObject::new("Fake.Service")
        .with("Name", "nginx")
        .into_value();
    let (out, ev) = run(
        &mut s,
        vec![sc("Restart-Service", vec![(Some("WhatIf"), None)])],
        vec![input],
    );
    assert_eq!(out, RunOutcome::Completed { had_errors: false }, "{ev:?}");
}

/// Pipeline input bound BY PROPERTY NAME into a parameter the ROLE constrains (Restart-Service
/// with `Name` limited to the set `nginx`): each object's `Name` (or its alias `ServiceName`) is
/// checked against the role's set like a typed value, per object: a value in the set binds, one
/// outside it, a wildcard, a mixed array or an object whose text is in the set is an error
/// record for that object and never binds, and the other objects go on.
#[test]
fn pipeline_input_by_property_name_into_a_role_constrained_parameter() {
    let mut cap = EffectiveCapability::default();
    cap.cmdlets.insert(
        "restart-service".into(),
        keyhole::capability::CommandGrant {
            name: "Restart-Service".into(),
            params: keyhole::capability::ParamsGrant::Only(
                [
                    (
                        "name".to_string(),
                        keyhole::capability::ParamGrant {
                            name: "Name".into(),
                            constraint: keyhole::capability::ValueConstraint::Set(vec![
                                "nginx".into()
                            ]),
                        },
                    ),
                    (
                        "whatif".to_string(),
                        keyhole::capability::ParamGrant {
                            name: "WhatIf".into(),
                            constraint: keyhole::capability::ValueConstraint::Any,
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            ),
        },
    );
    let (mut s, _) = session_with(&cap, SessionType::Empty);
    let svc = |prop: &str, v: Value| PsObject::new("Fake.Service").with(prop, v).into_value();
    let text_nginx = {
        let mut o = PsObject::new("Fake").with("Secret", "sshd");
        o.to_string = Some("nginx".into());
        o.into_value()
    };
    let refused_inputs = [
        ("a name outside the set", svc("Name", "sshd".into())),
        (
            "by the alias ServiceName",
            svc("ServiceName", "sshd".into()),
        ),
        ("a wildcard", svc("Name", "ngin*".into())),
        (
            "a mixed array",
            svc("Name", Value::Array(vec!["nginx".into(), "sshd".into()])),
        ),
        (
            "an object whose text is in the set",
            svc("Name", text_nginx),
        ),
    ];
    for (what, bad) in refused_inputs {
        let (out, ev) = run(
            &mut s,
            vec![sc("Restart-Service", vec![(Some("WhatIf"), None)])],
            vec![
                svc("Name", "nginx".into()),
                bad,
                svc("ServiceName", "nginx".into()),
            ],
        );
        assert_eq!(
            out,
            RunOutcome::Completed { had_errors: true },
            "{what}: {ev:?}"
        );
        let bound: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Information(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            bound.len(),
            2,
            "{what}: only the two nginx objects bind: {ev:?}"
        );
        assert!(
            bound
                .iter()
                .all(|t| t.contains("nginx") && !t.contains("sshd")),
            "{what}: {bound:?}"
        );
        let errs = errors(&ev);
        assert_eq!(errs.len(), 1, "{what}: {ev:?}");
        assert_eq!(
            errs[0].fully_qualified_error_id, "ParameterArgumentValidationError,Restart-Service",
            "{what}"
        );
    }
}

/// One wildcard matcher: `Get-Command -Name P` and GET_COMMAND_METADATA (PSRP's command
/// discovery, `psrp::objects::GetCommandMetadata::select`) pick the same commands for every
/// pattern, brackets included (they disagreed on `Get-[SP]*` when each had its own matcher).
#[test]
fn get_command_and_command_metadata_select_the_same_commands() {
    let mut cap = capability();
    for c in [
        "Get-Service",
        "Get-Process",
        "Get-Uptime",
        "Get-Volume",
        "Stop-Process",
        "Start-Service",
    ] {
        cap.cmdlets.insert(
            c.to_lowercase(),
            keyhole::capability::CommandGrant {
                name: c.into(),
                params: keyhole::capability::ParamsGrant::All,
            },
        );
    }
    let (mut s, _) = session_with(&cap, SessionType::RestrictedRemoteServer);
    for pattern in [
        "Get-[SP]*",
        "get-[a-f]*",
        "[gs]et-*",
        "*-Object",
        "Get-?ate",
        "S[a-u]*-*",
        "Get-[SP",
        "*",
        "gcm",
        "nothing-*",
    ] {
        let (o, ev) = run(
            &mut s,
            vec![sc(
                "Get-Command",
                vec![
                    (Some("Name"), st(pattern)),
                    (Some("ErrorAction"), st("SilentlyContinue")),
                ],
            )],
            vec![],
        );
        assert!(
            matches!(o, RunOutcome::Completed { .. }),
            "{pattern}: {o:?}"
        );
        let mut by_cmdlet: Vec<String> = outputs(&ev)
            .iter()
            .map(|v| v.property("Name").unwrap().to_ps_string())
            .collect();
        let query = keyhole::psrp::objects::GetCommandMetadata {
            names: vec![pattern.to_string()],
            command_type: 0x1FF,
        };
        let mut by_metadata: Vec<String> = query
            .select(s.visible())
            .iter()
            .map(|c| c.decl.name.clone())
            .collect();
        by_cmdlet.sort();
        by_metadata.sort();
        assert_eq!(by_cmdlet, by_metadata, "pattern {pattern}");
        if pattern == "Get-[SP]*" {
            assert_eq!(by_cmdlet, vec!["Get-Process", "Get-Service", "Get-Site"]);
        }
    }
}
