//! Live checks of the Linux system cmdlets on this machine: each command is invoked directly, as
//! the engine would (start, process, end), with run_as root, and its objects are checked.
//! Where the host may or may not offer something (systemd, journald, ping), the test accepts
//! either outcome but asserts strictly on whichever happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use keyhole::commands::builtin;
use keyhole::engine::{
    BoundArgs, CancelToken, Ctx, ErrorCategory, ErrorRecord, Event, HostEnv, Value, VecSink,
};

fn host() -> HostEnv {
    HostEnv {
        run_as: "root".into(),
        command_timeout: Duration::from_secs(60),
        max_output_bytes: 32 * 1024 * 1024,
        endpoint: "test".into(),
        user: "tester".into(),
        groups: Vec::new(),
    }
}

/// Invoke a built-in by name; returns (outputs, errors, other events).
fn run(name: &str, args: &[(&str, Value)]) -> (Vec<Value>, Vec<ErrorRecord>, Vec<Event>) {
    let cmd = builtin(name).unwrap_or_else(|| panic!("{name} is not a built-in"));
    let mut bound = BoundArgs::default();
    for (k, v) in args {
        assert!(
            cmd.decl().find_param(k).is_some(),
            "{name} has no parameter {k}"
        );
        bound.set(k, v.clone());
    }
    let host = host();
    let cancel = CancelToken::new();
    let mut outs = Vec::new();
    let mut sink = VecSink::default();
    let mut had = false;
    {
        let mut out = |v: Value| outs.push(v);
        let mut ctx = Ctx {
            host: &host,
            cancel: &cancel,
            visible: &[],
            out: &mut out,
            events: &mut sink,
            had_errors: &mut had,
        };
        let mut inv = cmd.start(&bound);
        if let Err(e) = inv.process(&mut ctx, &bound, None) {
            ctx.write_error(e);
        }
        if let Err(e) = inv.end(&mut ctx) {
            ctx.write_error(e);
        }
    }
    let mut errors = Vec::new();
    let mut other = Vec::new();
    for e in sink.0 {
        match e {
            Event::Error(r) => errors.push(r),
            e => other.push(e),
        }
    }
    assert_eq!(
        had,
        !errors.is_empty(),
        "had_errors must follow the error records"
    );
    (outs, errors, other)
}

fn prop<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.property(name)
        .unwrap_or_else(|| panic!("no property {name} on {v:?}"))
}

fn systemd_running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

#[test]
fn get_process_finds_this_test() {
    let me = i64::from(std::process::id());
    let comm = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string();
    let (out, errs, _) = run("Get-Process", &[("Id", Value::Array(vec![Value::Int(me)]))]);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out.len(), 1);
    let p = &out[0];
    assert_eq!(p.type_name(), "System.Diagnostics.Process");
    assert_eq!(prop(p, "Id"), &Value::Int(me));
    assert_eq!(prop(p, "ProcessName"), &Value::from(comm.as_str()));
    assert!(matches!(prop(p, "CPU"), Value::Double(c) if *c >= 0.0));
    assert!(matches!(prop(p, "WorkingSet"), Value::Int(n) if *n > 0));
    match prop(p, "StartTime") {
        Value::DateTime(d) => {
            let age = chrono::Local::now()
                .fixed_offset()
                .signed_duration_since(*d);
            assert!(
                age.num_seconds() >= -2 && age.num_hours() < 24,
                "start time {d} is not recent"
            );
        }
        other => panic!("StartTime {other:?}"),
    }
    assert_eq!(prop(p, "UserName"), &Value::from("root"));
    assert_eq!(
        p.to_ps_string(),
        format!("System.Diagnostics.Process ({comm})")
    );

    // By name (wildcard of our own comm) the same pid is among the results.
    let (out, errs, _) = run("Get-Process", &[("Name", Value::from(format!("{comm}*")))]);
    assert!(errs.is_empty());
    assert!(out
        .iter()
        .any(|p| p.property("Id") == Some(&Value::Int(me))));

    // A literal name that matches nothing is PowerShell's error.
    let (out, errs, _) = run("Get-Process", &[("Name", Value::from("no-such-proc-zz"))]);
    assert!(out.is_empty());
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].category, ErrorCategory::ObjectNotFound);
    assert_eq!(
        errs[0].fully_qualified_error_id,
        "NoProcessFoundForGivenName,Microsoft.PowerShell.Commands.GetProcessCommand"
    );
}

#[test]
fn get_process_lists_many() {
    let (out, errs, _) = run("Get-Process", &[]);
    assert!(errs.is_empty());
    assert!(!out.is_empty());
    // Sorted by name as PowerShell lists them.
    let names: Vec<String> = out
        .iter()
        .map(|p| prop(p, "ProcessName").to_ps_string().to_lowercase())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn stop_process_stops_a_child() {
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = i64::from(child.id());
    let (out, errs, _) = run(
        "Stop-Process",
        &[
            ("Id", Value::Array(vec![Value::Int(pid)])),
            ("PassThru", Value::Bool(true)),
        ],
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out.len(), 1);
    assert_eq!(prop(&out[0], "Id"), &Value::Int(pid));
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(15),
        "sleep should have died of SIGTERM: {status:?}"
    );

    // The pid is gone now: PowerShell's not-found error.
    let (_, errs, _) = run(
        "Stop-Process",
        &[("Id", Value::Array(vec![Value::Int(pid)]))],
    );
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].fully_qualified_error_id,
        "NoProcessFoundForGivenId,Microsoft.PowerShell.Commands.StopProcessCommand"
    );
}

#[test]
fn stop_process_takes_process_objects_with_force() {
    let mut child = std::process::Command::new("/bin/sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = i64::from(child.id());
    let (procs, errs, _) = run(
        "Get-Process",
        &[("Id", Value::Array(vec![Value::Int(pid)]))],
    );
    assert!(errs.is_empty());
    assert_eq!(procs.len(), 1);
    assert_eq!(prop(&procs[0], "ProcessName"), &Value::from("sleep"));
    let (out, errs, _) = run(
        "Stop-Process",
        &[
            ("InputObject", Value::Array(procs)),
            ("Force", Value::Bool(true)),
        ],
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert!(out.is_empty(), "no -PassThru, no output");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    // Something that is not a process is an error record, not a signal.
    let (_, errs, _) = run(
        "Stop-Process",
        &[("InputObject", Value::from("not-a-process"))],
    );
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].category, ErrorCategory::InvalidArgument);
}

#[test]
fn net_tcp_connection_finds_our_listener_and_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = i64::from(listener.local_addr().unwrap().port());
    let me = Value::Int(i64::from(std::process::id()));
    let (out, errs, _) = run(
        "Get-NetTCPConnection",
        &[
            ("LocalPort", Value::Array(vec![Value::Int(port)])),
            ("State", Value::Array(vec![Value::from("Listen")])),
        ],
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out.len(), 1, "{out:?}");
    let c = &out[0];
    assert_eq!(prop(c, "LocalAddress"), &Value::from("127.0.0.1"));
    assert_eq!(prop(c, "LocalPort"), &Value::Int(port));
    assert_eq!(prop(c, "RemoteAddress"), &Value::from("0.0.0.0"));
    assert_eq!(prop(c, "RemotePort"), &Value::Int(0));
    assert_eq!(prop(c, "State").to_ps_string(), "Listen");
    assert_eq!(prop(c, "OwningProcess"), &me);

    let client = TcpStream::connect(("127.0.0.1", u16::try_from(port).unwrap())).unwrap();
    let (_server_side, _) = listener.accept().unwrap();
    let client_port = i64::from(client.local_addr().unwrap().port());
    let (out, errs, _) = run(
        "Get-NetTCPConnection",
        &[("RemotePort", Value::Array(vec![Value::Int(port)]))],
    );
    assert!(errs.is_empty(), "{errs:?}");
    let c = out
        .iter()
        .find(|c| c.property("LocalPort") == Some(&Value::Int(client_port)))
        .expect("client side");
    assert_eq!(prop(c, "State").to_ps_string(), "Established");
    assert_eq!(prop(c, "RemoteAddress"), &Value::from("127.0.0.1"));
    assert_eq!(prop(c, "OwningProcess"), &me);

    // A filter that matches nothing is the CIM "not found" error. Another test thread may fork
    // a program while the listener is open, and its child holds the socket until it execs
    // (close-on-exec), so give the kernel a moment to see the socket gone.
    drop(client);
    drop(listener);
    let mut attempt = 0;
    let (out, errs) = loop {
        let (out, errs, _) = run(
            "Get-NetTCPConnection",
            &[
                ("LocalPort", Value::Array(vec![Value::Int(port)])),
                ("State", Value::Array(vec![Value::from("Listen")])),
            ],
        );
        attempt += 1;
        if out.is_empty() || attempt >= 50 {
            break (out, errs);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].category, ErrorCategory::ObjectNotFound);
}

#[test]
fn get_volume_includes_root() {
    let (out, errs, _) = run("Get-Volume", &[]);
    assert!(errs.is_empty(), "{errs:?}");
    let root = out
        .iter()
        .find(|v| v.property("MountPoint") == Some(&Value::from("/")))
        .expect("/ is a volume");
    assert_eq!(root.type_name(), "Keyhole.Volume");
    let size = match prop(root, "Size") {
        Value::Int(n) => *n,
        other => panic!("{other:?}"),
    };
    let free = match prop(root, "SizeRemaining") {
        Value::Int(n) => *n,
        other => panic!("{other:?}"),
    };
    assert!(size > 0 && free >= 0 && free <= size);
    assert!(!prop(root, "FileSystemType").to_ps_string().is_empty());
    // No pseudo file systems.
    assert!(out
        .iter()
        .all(|v| prop(v, "FileSystemType").to_ps_string() != "proc"));
    let (out, _, _) = run("Get-Volume", &[("FilePath", Value::from("/"))]);
    assert_eq!(out.len(), 1);
}

#[test]
fn get_uptime_positive() {
    let (out, errs, _) = run("Get-Uptime", &[]);
    assert!(errs.is_empty());
    assert!(matches!(out[..], [Value::TimeSpan(d)] if d > Duration::ZERO));
    let (out, _, _) = run("Get-Uptime", &[("Since", Value::Bool(true))]);
    assert!(matches!(&out[..], [Value::DateTime(d)] if *d <= chrono::Local::now().fixed_offset()));
}

#[test]
fn get_service_objects_or_clear_error() {
    let (out, errs, _) = run("Get-Service", &[]);
    if systemd_running() {
        assert!(errs.is_empty(), "{errs:?}");
        assert!(!out.is_empty());
        for s in &out {
            assert_eq!(s.type_name(), "System.ServiceProcess.ServiceController");
            assert!(!prop(s, "Name").to_ps_string().ends_with(".service"));
            assert!(["Running", "Stopped", "StartPending", "StopPending"]
                .contains(&prop(s, "Status").to_ps_string().as_str()));
            assert!(["Automatic", "Manual", "Disabled"]
                .contains(&prop(s, "StartType").to_ps_string().as_str()));
        }
        let (out, errs, _) = run(
            "Get-Service",
            &[("Name", Value::from("no-such-service-zz"))],
        );
        assert!(out.is_empty());
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].message,
            "Cannot find any service with service name 'no-such-service-zz'."
        );
        assert_eq!(
            errs[0].fully_qualified_error_id,
            "NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand"
        );
    } else {
        assert!(out.is_empty());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].category, ErrorCategory::ResourceUnavailable);
        assert!(
            errs[0]
                .message
                .contains("service manager is not available on this host"),
            "{}",
            errs[0].message
        );
        assert!(errs[0].message.contains("systemctl"), "{}", errs[0].message);
        // Literal names go the same way, and so does a state change.
        let (_, errs, _) = run("Get-Service", &[("Name", Value::from("ssh"))]);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].category, ErrorCategory::ResourceUnavailable);
        let (out, errs, _) = run("Restart-Service", &[("Name", Value::from("ssh"))]);
        assert!(out.is_empty());
        assert_eq!(errs.len(), 1);
        assert!(errs[0]
            .fully_qualified_error_id
            .ends_with("RestartServiceCommand"));
    }
}

#[test]
fn get_journal_entries_or_clear_error() {
    let (out, errs, _) = run("Get-Journal", &[("Newest", Value::Int(5))]);
    if errs.is_empty() {
        assert!(out.len() <= 5);
        for e in &out {
            assert_eq!(e.type_name(), "Keyhole.JournalEntry");
            assert!(matches!(prop(e, "TimeCreated"), Value::DateTime(_)));
            prop(e, "Message");
            prop(e, "Unit");
            prop(e, "Priority");
        }
    } else {
        assert!(out.is_empty());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].category, ErrorCategory::ResourceUnavailable);
        assert!(
            errs[0]
                .message
                .starts_with("Get-Journal: the journal is not available on this host:"),
            "{}",
            errs[0].message
        );
    }
    // Bad -Newest is refused before anything runs.
    let (_, errs, _) = run("Get-Journal", &[("Newest", Value::Int(0))]);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].category, ErrorCategory::InvalidArgument);
}

#[test]
fn test_connection_loopback_or_clear_error() {
    let ping = ["/usr/bin/ping", "/bin/ping"]
        .iter()
        .any(|p| std::path::Path::new(p).is_file());
    let (out, errs, _) = run(
        "Test-Connection",
        &[
            ("TargetName", Value::from("127.0.0.1")),
            ("Count", Value::Int(2)),
        ],
    );
    if ping {
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(out.len(), 2);
        for (i, r) in out.iter().enumerate() {
            assert_eq!(prop(r, "Ping"), &Value::Int(i64::try_from(i).unwrap() + 1));
            assert_eq!(prop(r, "Destination"), &Value::from("127.0.0.1"));
            assert_eq!(prop(r, "Address"), &Value::from("127.0.0.1"));
            assert_eq!(prop(r, "Status").to_ps_string(), "Success");
        }
        let (out, errs, _) = run(
            "Test-Connection",
            &[
                ("TargetName", Value::from("127.0.0.1")),
                ("Count", Value::Int(1)),
                ("Quiet", Value::Bool(true)),
            ],
        );
        assert!(errs.is_empty());
        assert_eq!(out, vec![Value::Bool(true)]);
        // An unresolvable name is an error record, not a panic, and Quiet says False.
        let (out, errs, _) = run(
            "Test-Connection",
            &[
                ("TargetName", Value::from("no-such-host.invalid")),
                ("Count", Value::Int(1)),
            ],
        );
        assert!(out.is_empty());
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .message
                .starts_with("Testing connection to computer 'no-such-host.invalid' failed"),
            "{}",
            errs[0].message
        );
    } else {
        assert!(out.is_empty());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].category, ErrorCategory::NotInstalled);
    }
    // A target that looks like an option never reaches ping.
    let (out, errs, _) = run("Test-Connection", &[("TargetName", Value::from("-f"))]);
    assert!(out.is_empty());
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].category, ErrorCategory::InvalidArgument);
    let (_, errs, _) = run(
        "Test-Connection",
        &[
            ("TargetName", Value::from("localhost")),
            ("Count", Value::Int(11)),
        ],
    );
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].category, ErrorCategory::InvalidArgument);
}

#[test]
fn every_command_is_registered_and_declared() {
    for name in [
        "Get-Service",
        "Start-Service",
        "Stop-Service",
        "Restart-Service",
        "Get-Process",
        "Stop-Process",
        "Get-Uptime",
        "Get-Journal",
        "Get-Volume",
        "Get-NetTCPConnection",
        "Test-Connection",
    ] {
        let c = builtin(name).unwrap_or_else(|| panic!("{name} missing"));
        let d = c.decl();
        assert!(!d.synopsis.is_empty(), "{name}");
        assert!(
            d.params.iter().all(|p| !p.help.is_empty()),
            "{name} has a parameter without help"
        );
        let changes = matches!(
            name,
            "Start-Service" | "Stop-Service" | "Restart-Service" | "Stop-Process"
        );
        assert_eq!(d.changes_state, changes, "{name}");
        assert!(!d.output_type.is_empty(), "{name}");
    }
}
