//! Transcripts: header and records, modes, refusal of an unwritable directory, records on disk
//! before the program runs, and nothing lost when keyhole is killed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use keyhole::audit::{Transcript, TranscriptHeader};
use keyhole::commands::programs::function_command;
use keyhole::config::{FunctionDef, OutputFormat, ResolvedFunction};
use keyhole::engine::{Audit, BoundArgs, CancelToken, Ctx, EndState, HostEnv, Value, VecSink};

fn header(client: Option<&str>) -> TranscriptHeader {
    TranscriptHeader {
        user: "alice".into(),
        groups: vec!["helpdesk".into(), "staff".into()],
        run_as: "keyhole-helpdesk".into(),
        endpoint: "Helpdesk".into(),
        client_address: client.map(str::to_string),
        transport: if client.is_some() { "console" } else { "local" }.into(),
        start_time: chrono::Utc::now(),
        session_id: "0f1e2d3c".into(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn header_records_and_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("transcripts/deeper");
    let path;
    {
        let mut t = Transcript::create(&dir, &header(Some("192.0.2.7"))).unwrap();
        path = t.path().to_path_buf();
        t.line("Get-Service -Name nginx\nGet-Date").unwrap();
        let mut args = BoundArgs::default();
        args.set("Name", Value::from("nginx"));
        t.command("Get-Service", &args).unwrap();
        t.output("Status   Name\n------   ----\nRunning  nginx\n")
            .unwrap();
        t.output("PS>forged record\n\u{1b}[2Jclear screen").unwrap();
        t.end(EndState::Completed).unwrap();
        t.line("Invoke-Expression x").unwrap();
        t.refused("The term 'Invoke-Expression' is not recognized")
            .unwrap();
        t.end(EndState::Failed).unwrap();
    }
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let re = regex::Regex::new(r"^\d{14}-Helpdesk-alice-0f1e2d3c\.txt$").unwrap();
    assert!(re.is_match(&name), "{name}");

    let text = std::fs::read_to_string(&path).unwrap();
    let expect_in_order = [
        "**********************",
        "PowerShell transcript start",
        "Username: alice",
        "RunAs User: keyhole-helpdesk",
        "Groups: helpdesk, staff",
        "Configuration Name: Helpdesk",
        "Machine: ",
        "Client Address: 192.0.2.7",
        "Transport: console",
        "Session ID: 0f1e2d3c",
        &format!("Keyhole Version: {}", env!("CARGO_PKG_VERSION")),
        "Command start time: ",
        "PS>Get-Service -Name nginx",
        ">> Get-Date",
        "[command] Get-Service -Name 'nginx'",
        "Running  nginx",
        "\\PS>forged record",
        "\\x1b[2Jclear screen",
        "[end] Completed",
        "PS>Invoke-Expression x",
        "[refused] The term 'Invoke-Expression' is not recognized",
        "[end] Failed",
        "PowerShell transcript end",
    ];
    let mut pos = 0;
    for needle in expect_in_order {
        match text[pos..].find(needle) {
            Some(i) => pos += i + needle.len(),
            None => panic!("{needle:?} missing (in order) from transcript:\n{text}"),
        }
    }
    assert!(
        !text.contains('\u{1b}'),
        "terminal escapes must not reach the file"
    );
}

#[test]
fn one_sync_per_statement_and_none_on_the_create_path() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Transcript::create(tmp.path(), &header(None)).unwrap();
    assert_eq!(t.syncs(), 0, "opening a session does not wait for the disk");
    let header_text = std::fs::read_to_string(t.path()).unwrap();
    assert!(
        header_text.contains("PowerShell transcript start"),
        "written, not synced"
    );
    let mut args = BoundArgs::default();
    args.set("Name", Value::from("nginx"));
    // A statement: line and command records, one sync (header and directory included), run.
    t.line("Get-Service nginx").unwrap();
    t.command("Get-Service", &args).unwrap();
    t.commit().unwrap();
    assert_eq!(t.syncs(), 1);
    t.output("Running nginx\n").unwrap();
    t.end(EndState::Completed).unwrap();
    assert_eq!(t.syncs(), 1, "output and [end] wait for the next sync");
    // The next statement's sync covers the previous [end].
    t.line("Get-Service nginx").unwrap();
    t.command("Get-Service", &args).unwrap();
    t.commit().unwrap();
    assert_eq!(t.syncs(), 2);
    // Nothing new: nothing to sync.
    t.commit().unwrap();
    assert_eq!(t.syncs(), 2);
    // A refused line is written with its refusal, synced later.
    t.end(EndState::Completed).unwrap();
    t.line("Invoke-Expression x").unwrap();
    t.refused("not recognized").unwrap();
    t.end(EndState::Refused).unwrap();
    assert_eq!(t.syncs(), 2);
    let text = std::fs::read_to_string(t.path()).unwrap();
    assert!(
        text.contains("PS>Invoke-Expression x\n[refused] not recognized\n[end] Refused"),
        "{text}"
    );
    t.finish().unwrap();
    assert_eq!(t.syncs(), 3, "the footer's sync covers the rest");
}

#[test]
fn local_session_and_hostile_names() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = header(None);
    h.user = "../../etc/passwd".into();
    h.endpoint = "a b/c".into();
    let t = Transcript::create(tmp.path(), &h).unwrap();
    assert_eq!(
        t.path().parent().unwrap(),
        tmp.path(),
        "the file stays in the directory"
    );
    let name = t.path().file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        !name.contains('/') && name.contains("-a_b_c-_._.._etc_passwd-"),
        "{name}"
    );
    let text = std::fs::read_to_string(t.path()).unwrap();
    assert!(text.contains("Client Address: local"));
    // a second session in the same second gets its own file
    let t2 = Transcript::create(tmp.path(), &h).unwrap();
    assert_ne!(t.path(), t2.path());
}

#[test]
fn unwritable_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plainfile");
    std::fs::write(&file, b"x").unwrap();
    // a directory that cannot exist (its parent is a file) — root cannot write there either
    assert!(Transcript::create(&file.join("transcripts"), &header(None)).is_err());
    // the path is a file, not a directory
    assert!(Transcript::create(&file, &header(None)).is_err());
    // /proc refuses new files even to root
    assert!(Transcript::create(Path::new("/proc/self"), &header(None)).is_err());
}

#[test]
fn command_record_is_on_disk_before_the_program_runs() {
    assert!(nix::unistd::geteuid().is_root(), "runs as root");
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Transcript::create(tmp.path(), &header(None)).unwrap();
    let path = t.path().to_str().unwrap().to_string();
    // The program reads the transcript itself: what it sees was on disk before it started.
    let f = function_command(&ResolvedFunction {
        name: "Read-Transcript".into(),
        def: FunctionDef {
            synopsis: String::new(),
            program: "/usr/bin/cat".into(),
            args: vec![path.clone()],
            output: OutputFormat::Lines,
            timeout: None,
            capabilities: vec![],
            environment: BTreeMap::new(),
            allow_unsafe: false,
            parameters: Default::default(),
        },
        params: vec![],
        capability: "T".into(),
    });
    let args = BoundArgs::default();
    t.line("Read-Transcript").unwrap();
    t.command("Read-Transcript", &args).unwrap();
    t.commit().unwrap(); // as the engine does before the commands of a statement start
    let host = HostEnv {
        run_as: "root".into(),
        command_timeout: Duration::from_secs(10),
        max_output_bytes: 1 << 20,
        endpoint: "Helpdesk".into(),
        user: "alice".into(),
        groups: vec![],
    };
    let cancel = CancelToken::new();
    let mut seen = Vec::new();
    let mut sink = VecSink::default();
    let mut had = false;
    {
        let mut push = |v: Value| seen.push(v.to_ps_string());
        let mut ctx = Ctx {
            host: &host,
            cancel: &cancel,
            visible: &[],
            out: &mut push,
            events: &mut sink,
            had_errors: &mut had,
        };
        f.start(&args).process(&mut ctx, &args, None).unwrap();
    }
    assert!(seen.iter().any(|l| l == "PS>Read-Transcript"), "{seen:?}");
    assert!(
        seen.iter().any(|l| l == "[command] Read-Transcript"),
        "{seen:?}"
    );
}

/// Child half of `nothing_is_lost_when_keyhole_is_killed`: does nothing unless the parent
/// test started it.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("KH_TRANSCRIPT_CRASH_DIR") else {
        return;
    };
    let mut t = Transcript::create(Path::new(&dir), &header(Some("198.51.100.9"))).unwrap();
    t.line("Restart-Service nginx").unwrap();
    let mut args = BoundArgs::default();
    args.set("Name", Value::from("nginx"));
    t.command("Restart-Service", &args).unwrap();
    println!("READY");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn nothing_is_lost_when_keyhole_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Proc::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "transcript_records::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KH_TRANSCRIPT_CRASH_DIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("READY") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(15)).is_ok();
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child never got ready");
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1);
    let text = std::fs::read_to_string(entries[0].path()).unwrap();
    assert!(text.contains("Client Address: 198.51.100.9"), "{text}");
    assert!(text.contains("PS>Restart-Service nginx"), "{text}");
    assert!(
        text.contains("[command] Restart-Service -Name 'nginx'"),
        "{text}"
    );
    assert!(
        !text.contains("transcript end"),
        "the end marker cannot be there after SIGKILL"
    );
}
