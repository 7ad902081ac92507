//! Declared functions and external commands run through the sandbox: argv from typed
//! parameters (no injection), output formats, failures, timeout, output cap, cancellation and
//! the defence-in-depth argument checks.
#![allow(clippy::result_large_err)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::sandbox_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keyhole::commands::programs::{external_command, function_command};
use keyhole::config::{
    Dur, ExternalCommandDef, FunctionDef, FunctionParam, FunctionParamType, OutputFormat,
    ResolvedFunction,
};
use keyhole::engine::{
    BoundArgs, CancelToken, Command, CommandKind, Ctx, ErrorCategory, ErrorRecord, Event, HostEnv,
    ParamType, Value, VecSink,
};
use sandbox_common::*;

fn host(run_as: &str) -> HostEnv {
    HostEnv {
        run_as: run_as.into(),
        command_timeout: Duration::from_secs(10),
        max_output_bytes: 1 << 20,
        endpoint: "Test".into(),
        user: "alice".into(),
        groups: vec![],
    }
}

fn param(ty: FunctionParamType, mandatory: bool, position: Option<u32>) -> FunctionParam {
    FunctionParam {
        ty,
        mandatory,
        position,
        validate_set: None,
        validate_pattern: None,
        help: "help text".into(),
        allow_leading_dash: false,
    }
}

fn function(
    name: &str,
    program: &str,
    args: &[&str],
    output: OutputFormat,
    params: Vec<(&str, FunctionParam)>,
) -> ResolvedFunction {
    ResolvedFunction {
        name: name.into(),
        def: FunctionDef {
            synopsis: format!("{name} synopsis"),
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            output,
            timeout: None,
            capabilities: vec![],
            environment: BTreeMap::new(),
            allow_unsafe: false,
            parameters: Default::default(),
        },
        params: params
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect(),
        capability: "TestCap".into(),
    }
}

struct Outcome {
    out: Vec<Value>,
    errors: Vec<ErrorRecord>,
    warnings: Vec<String>,
    result: Result<(), ErrorRecord>,
    had_errors: bool,
}

fn invoke_with(cmd: &dyn Command, h: &HostEnv, cancel: &CancelToken, args: BoundArgs) -> Outcome {
    let mut out = Vec::new();
    let mut sink = VecSink::default();
    let mut had_errors = false;
    let result = {
        let mut push = |v: Value| out.push(v);
        let mut ctx = Ctx {
            host: h,
            cancel,
            visible: &[],
            out: &mut push,
            events: &mut sink,
            had_errors: &mut had_errors,
        };
        let mut inv = cmd.start(&args);
        inv.process(&mut ctx, &args, None)
            .and_then(|_| inv.end(&mut ctx))
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for e in sink.0 {
        match e {
            Event::Error(r) => errors.push(r),
            Event::Warning(w) => warnings.push(w),
            _ => {}
        }
    }
    Outcome {
        out,
        errors,
        warnings,
        result,
        had_errors,
    }
}

fn invoke(cmd: &dyn Command, run_as: &str, args: &[(&str, Value)]) -> Outcome {
    let mut b = BoundArgs::default();
    for (k, v) in args {
        b.set(k, v.clone());
    }
    invoke_with(cmd, &host(run_as), &CancelToken::new(), b)
}

fn strings(v: &[Value]) -> Vec<String> {
    v.iter().map(Value::to_ps_string).collect()
}

#[test]
fn placeholders_cannot_inject() {
    require_root();
    let acct = Account::create();
    let show = |allow_leading_dash: bool| {
        let mut p = param(FunctionParamType::String, true, Some(0));
        p.allow_leading_dash = allow_leading_dash;
        function_command(&function(
            "Show-Value",
            "/usr/bin/printf",
            &["[%s]\\n", "{Value}"],
            OutputFormat::Lines,
            vec![("Value", p)],
        ))
    };
    let f = show(false);
    for v in [
        "two words",
        "it's \"quoted\"",
        "a; rm -rf / #",
        "line1\nline2",
        "$(id) `id` *",
        "{Value}",
        "x-n",
    ] {
        let o = invoke(f.as_ref(), &acct.name, &[("Value", Value::from(v))]);
        assert!(
            o.result.is_ok() && o.errors.is_empty(),
            "{v:?}: {:?} {:?}",
            o.result,
            o.errors
        );
        assert_eq!(
            strings(&o.out).join("\n"),
            format!("[{v}]"),
            "value {v:?} must arrive as exactly one argument"
        );
    }
    // A leading dash would be an option: refused before the program runs (the engine refuses it
    // first; this is the command's own re-check).
    for v in ["-n", "--help", " -v", "\t--x"] {
        let o = invoke(f.as_ref(), &acct.name, &[("Value", Value::from(v))]);
        let e = o.result.expect_err(v);
        assert!(
            e.message.contains("begins with '-'"),
            "{v:?}: {}",
            e.message
        );
        assert!(o.out.is_empty(), "{v:?} ran: {:?}", o.out);
    }
    // Unless the parameter allows it: then it is still exactly one argument.
    let f = show(true);
    for v in ["-n", "--help"] {
        let o = invoke(f.as_ref(), &acct.name, &[("Value", Value::from(v))]);
        assert!(o.result.is_ok(), "{v:?}: {:?}", o.result);
        assert_eq!(strings(&o.out).join("\n"), format!("[{v}]"));
    }
}

#[test]
fn arrays_expand_and_unbound_optionals_vanish() {
    require_root();
    let f = function_command(&function(
        "Show-Many",
        "/usr/bin/printf",
        &["<%s>\\n", "{Names}", "{Opt}", "--flag={Force}"],
        OutputFormat::Lines,
        vec![
            (
                "Names",
                param(FunctionParamType::StringArray, false, Some(0)),
            ),
            ("Opt", param(FunctionParamType::String, false, None)),
            ("Force", param(FunctionParamType::Switch, false, None)),
        ],
    ));
    let o = invoke(
        f.as_ref(),
        "root",
        &[("Names", Value::Array(vec!["a b".into(), "c".into()]))],
    );
    assert_eq!(strings(&o.out), vec!["<a b>", "<c>", "<--flag=false>"]);
    let o = invoke(
        f.as_ref(),
        "root",
        &[("Force", Value::Bool(true)), ("Opt", Value::Int(7))],
    );
    assert_eq!(strings(&o.out), vec!["<7>", "<--flag=true>"]);
}

#[test]
fn decl_reflects_the_declaration() {
    let mut p = param(FunctionParamType::String, true, Some(0));
    p.validate_pattern = Some("/(srv|var)(/[a-z0-9_-]+)*".into());
    let mut q = param(FunctionParamType::IntArray, false, None);
    q.validate_set = Some(vec!["1".into(), "2".into()]);
    let f = function_command(&function(
        "Get-DiskUsage",
        "/usr/bin/df",
        &["{Mount}"],
        OutputFormat::Table,
        vec![
            ("Mount", p),
            ("N", q),
            ("S", param(FunctionParamType::Switch, false, None)),
        ],
    ));
    let d = f.decl();
    assert_eq!(d.kind, CommandKind::Function);
    assert_eq!(d.synopsis, "Get-DiskUsage synopsis");
    let m = d.find_param("mount").unwrap();
    assert_eq!(
        (m.ty, m.mandatory, m.position),
        (ParamType::String, true, Some(0))
    );
    assert_eq!(m.patterns, vec!["/(srv|var)(/[a-z0-9_-]+)*"]);
    assert_eq!(m.help, "help text");
    let n = d.find_param("N").unwrap();
    assert_eq!(
        (n.ty, n.set.clone()),
        (ParamType::IntArray, vec!["1".to_string(), "2".to_string()])
    );
    assert_eq!(d.find_param("S").unwrap().ty, ParamType::Switch);
}

#[test]
fn declared_constraints_are_rechecked_before_running() {
    require_root();
    let mut p = param(FunctionParamType::String, true, Some(0));
    p.validate_pattern = Some("[a-z]+".into());
    let f = function_command(&function(
        "Show-Value",
        "/usr/bin/printf",
        &["%s", "{Value}"],
        OutputFormat::Lines,
        vec![("Value", p)],
    ));
    // the pattern is anchored: a matching prefix is not enough
    let o = invoke(f.as_ref(), "root", &[("Value", Value::from("abc; id"))]);
    let e = o.result.unwrap_err();
    assert!(
        e.fully_qualified_error_id
            .starts_with("ParameterArgumentValidationError"),
        "{e:?}"
    );
    assert!(o.out.is_empty());
    // case-insensitive like PowerShell
    let o = invoke(f.as_ref(), "root", &[("Value", Value::from("ABC"))]);
    assert_eq!(strings(&o.out), vec!["ABC"]);
    // a missing mandatory parameter never reaches the program
    let o = invoke(f.as_ref(), "root", &[]);
    assert!(o.result.is_err());

    let mut s = param(FunctionParamType::String, false, None);
    s.validate_set = Some(vec!["nginx".into(), "cups".into()]);
    let f = function_command(&function(
        "Show-Set",
        "/usr/bin/printf",
        &["%s", "{Svc}"],
        OutputFormat::Lines,
        vec![("Svc", s)],
    ));
    assert!(invoke(f.as_ref(), "root", &[("Svc", Value::from("sshd"))])
        .result
        .is_err());
    assert_eq!(
        strings(&invoke(f.as_ref(), "root", &[("Svc", Value::from("NGINX"))]).out),
        vec!["NGINX"]
    );
}

#[test]
fn json_output_becomes_objects() {
    require_root();
    let f = function_command(&function(
        "Get-Json",
        "/usr/bin/printf",
        &[r#"{"Name":"nginx","Pid":42,"Tags":["a","b"]}
{"Name":"cups","Pid":7,"Tags":[]}
"#],
        OutputFormat::Json,
        vec![],
    ));
    let o = invoke(f.as_ref(), "root", &[]);
    assert!(o.result.is_ok(), "{:?}", o.result);
    assert_eq!(o.out.len(), 2);
    assert_eq!(o.out[0].property("Name"), Some(&Value::from("nginx")));
    assert_eq!(o.out[1].property("pid"), Some(&Value::Int(7)));
    let Value::Object(obj) = &o.out[0] else {
        panic!()
    };
    let names: Vec<&str> = obj.properties.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, vec!["Name", "Pid", "Tags"]);

    let bad = function_command(&function(
        "Get-Bad",
        "/usr/bin/printf",
        &["{oops"],
        OutputFormat::Json,
        vec![],
    ));
    let o = invoke(bad.as_ref(), "root", &[]);
    assert_eq!(o.errors.len(), 1);
    assert_eq!(o.errors[0].category, ErrorCategory::InvalidData);
}

#[test]
fn table_output_from_df() {
    require_root();
    let f = function_command(&function(
        "Get-DiskUsage",
        "/usr/bin/df",
        &["--output=source,size,used,avail,pcent,target", "{Mount}"],
        OutputFormat::Table,
        vec![("Mount", param(FunctionParamType::String, true, Some(0)))],
    ));
    let o = invoke(f.as_ref(), "root", &[("Mount", Value::from("/"))]);
    assert!(
        o.result.is_ok() && o.errors.is_empty(),
        "{:?} {:?}",
        o.result,
        o.errors
    );
    assert_eq!(o.out.len(), 1);
    let Value::Object(obj) = &o.out[0] else {
        panic!("{:?}", o.out)
    };
    let names: Vec<&str> = obj.properties.iter().map(|(k, _)| k.as_str()).collect();
    // df without -h prints "1K-blocks" for size
    assert_eq!(
        names,
        vec![
            "Filesystem",
            "1K-blocks",
            "Used",
            "Avail",
            "Use%",
            "Mounted on"
        ]
    );
    assert_eq!(obj.get("Mounted on"), Some(&Value::from("/")));
    assert!(
        matches!(obj.get("Used"), Some(Value::Int(_))),
        "integer cells are numbers: {:?}",
        obj.get("Used")
    );
}

#[test]
fn nonzero_exit_is_an_error_record_with_stderr() {
    require_root();
    let f = function_command(&function(
        "Get-Missing",
        "/usr/bin/ls",
        &["/nonexistent-keyhole-path"],
        OutputFormat::Lines,
        vec![],
    ));
    let o = invoke(f.as_ref(), "root", &[]);
    assert!(
        o.result.is_ok(),
        "a failing program is not a terminating error"
    );
    assert!(o.had_errors);
    assert_eq!(o.errors.len(), 1);
    let e = &o.errors[0];
    assert_eq!(e.fully_qualified_error_id, "NativeCommandFailed");
    assert_eq!(e.category, ErrorCategory::NotSpecified);
    assert!(
        e.message.starts_with("Get-Missing exited with code 2: "),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("nonexistent-keyhole-path"),
        "{}",
        e.message
    );
    assert_eq!(e.target, Some(Value::Int(2)));
}

#[test]
fn stderr_of_a_successful_program_is_a_warning() {
    require_root();
    let f = function_command(&function(
        "Warn",
        "/bin/sh",
        &["-c", "echo hi; echo careful >&2"],
        OutputFormat::Lines,
        vec![],
    ));
    let o = invoke(f.as_ref(), "root", &[]);
    assert_eq!(strings(&o.out), vec!["hi"]);
    assert_eq!(o.warnings, vec!["Warn: careful"]);
    assert!(!o.had_errors);
}

#[test]
fn entry_timeout_overrides_and_stops_the_pipeline() {
    require_root();
    let mut rf = function(
        "Wait-Long",
        "/usr/bin/sleep",
        &["2736"],
        OutputFormat::Lines,
        vec![],
    );
    rf.def.timeout = Some(Dur(Duration::from_secs(1)));
    let f = function_command(&rf);
    let t = Instant::now();
    let o = invoke(f.as_ref(), "root", &[]);
    let e = o.result.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(4));
    assert_eq!(e.category, ErrorCategory::OperationTimeout);
    assert!(e.terminating);
    assert!(e.message.contains("timed out after 1s"), "{}", e.message);
    assert_no_survivor("2736");
}

#[test]
fn output_limit_stops_the_pipeline() {
    require_root();
    let f = function_command(&function(
        "Flood",
        "/usr/bin/yes",
        &[],
        OutputFormat::Lines,
        vec![],
    ));
    let mut h = host("root");
    h.max_output_bytes = 1000;
    let o = invoke_with(f.as_ref(), &h, &CancelToken::new(), BoundArgs::default());
    let e = o.result.unwrap_err();
    assert_eq!(e.category, ErrorCategory::LimitsExceeded);
    assert!(e.terminating);
    assert_eq!(
        o.out.len(),
        500,
        "the complete lines within the cap are output"
    );
}

#[test]
fn cancellation_stops_the_program() {
    require_root();
    let f = function_command(&function(
        "Wait-Long",
        "/usr/bin/sleep",
        &["2737"],
        OutputFormat::Lines,
        vec![],
    ));
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let t = Instant::now();
    let o = invoke_with(f.as_ref(), &host("root"), &cancel, BoundArgs::default());
    th.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    // the engine turns the cancelled token into a Stopped pipeline; the command adds no error
    assert!(
        o.result.is_ok() && o.errors.is_empty(),
        "{:?} {:?}",
        o.result,
        o.errors
    );
    assert!(o.out.is_empty());
    assert_no_survivor("2737");
}

#[test]
fn lines_are_streamed_as_produced() {
    require_root();
    let f = function_command(&function(
        "Slow",
        "/bin/sh",
        &["-c", "echo one; sleep 1; echo two"],
        OutputFormat::Lines,
        vec![],
    ));
    let h = host("root");
    let cancel = CancelToken::new();
    let start = Instant::now();
    let mut times = Vec::new();
    let mut sink = VecSink::default();
    let mut had = false;
    {
        let mut push = |v: Value| times.push((v.to_ps_string(), start.elapsed()));
        let mut ctx = Ctx {
            host: &h,
            cancel: &cancel,
            visible: &[],
            out: &mut push,
            events: &mut sink,
            had_errors: &mut had,
        };
        let args = BoundArgs::default();
        f.start(&args).process(&mut ctx, &args, None).unwrap();
    }
    assert_eq!(times.len(), 2);
    assert_eq!(times[0].0, "one");
    // the program sleeps 1 s between its lines: the first is output before the second exists
    assert!(
        times[0].1 + Duration::from_millis(600) <= times[1].1,
        "lines arrived at {:?} and {:?}",
        times[0].1,
        times[1].1
    );
}

#[test]
fn unknown_run_as_is_a_terminating_error() {
    let f = function_command(&function(
        "X",
        "/usr/bin/true",
        &[],
        OutputFormat::Lines,
        vec![],
    ));
    let o = invoke(f.as_ref(), "no-such-keyhole-account", &[]);
    let e = o.result.unwrap_err();
    assert!(
        e.message.contains("no-such-keyhole-account"),
        "{}",
        e.message
    );
    assert!(e.terminating);
}

fn external(path: &str, arguments: &[&str]) -> ExternalCommandDef {
    ExternalCommandDef {
        path: path.into(),
        arguments: arguments.iter().map(|s| s.to_string()).collect(),
        timeout: None,
        capabilities: vec![],
        environment: BTreeMap::new(),
        allow_unsafe: false,
        synopsis: String::new(),
    }
}

#[test]
fn external_arguments_must_fully_match_case_sensitively() {
    require_root();
    let c = external_command(&external("/usr/bin/echo", &["blame", "time", "[0-9]+"]));
    assert_eq!(c.decl().name, "echo");
    let ok = invoke(
        c.as_ref(),
        "root",
        &[(
            "ArgumentList",
            Value::Array(vec!["blame".into(), "42".into()]),
        )],
    );
    assert!(ok.result.is_ok(), "{:?}", ok.result);
    assert_eq!(strings(&ok.out), vec!["blame 42"]);
    // the engine's application binder passes them as `Arguments`
    let ok = invoke(
        c.as_ref(),
        "root",
        &[("Arguments", Value::Array(vec!["time".into()]))],
    );
    assert_eq!(strings(&ok.out), vec!["time"]);
    let o = invoke(
        c.as_ref(),
        "root",
        &[("Arguments", Value::Array(vec!["TIME".into()]))],
    );
    assert!(o.result.is_err() && o.out.is_empty());
    for bad in ["BLAME", "blame; id", "time ", "42x", ""] {
        let o = invoke(
            c.as_ref(),
            "root",
            &[("ArgumentList", Value::Array(vec![bad.into()]))],
        );
        let e = o.result.expect_err(bad);
        assert_eq!(e.category, ErrorCategory::InvalidData, "{bad:?}");
        assert!(o.out.is_empty(), "{bad:?} must not run");
    }
}

#[test]
fn external_without_listed_arguments_takes_none() {
    require_root();
    let c = external_command(&external("/usr/bin/echo", &[]));
    assert!(c.decl().params.is_empty());
    let o = invoke(c.as_ref(), "root", &[]);
    assert_eq!(strings(&o.out), vec![""]);
    let o = invoke(c.as_ref(), "root", &[("ArgumentList", Value::from("x"))]);
    assert!(o.result.is_err(), "no arguments listed means none allowed");
    assert!(o.out.is_empty());
}

#[test]
fn runs_at_end_when_no_input_reached_it() {
    require_root();
    let f = function_command(&function(
        "Show-Value",
        "/usr/bin/printf",
        &["%s", "{Value}"],
        OutputFormat::Lines,
        vec![("Value", param(FunctionParamType::String, true, Some(0)))],
    ));
    let h = host("root");
    let cancel = CancelToken::new();
    let mut args = BoundArgs::default();
    args.set("Value", Value::from("once"));
    let mut out = Vec::new();
    let mut sink = VecSink::default();
    let mut had = false;
    {
        let mut push = |v: Value| out.push(v.to_ps_string());
        let mut ctx = Ctx {
            host: &h,
            cancel: &cancel,
            visible: &[],
            out: &mut push,
            events: &mut sink,
            had_errors: &mut had,
        };
        let mut inv = f.start(&args);
        // no process() call: the upstream command produced nothing
        inv.end(&mut ctx).unwrap();
        // and it never runs twice
        inv.process(&mut ctx, &args, Some(Value::Int(1))).unwrap();
        inv.end(&mut ctx).unwrap();
    }
    assert_eq!(out, vec!["once"]);
}
