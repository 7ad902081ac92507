//! The transcript's sync, told apart from its write (SECURITY.md: "a command that runs before it
//! is recorded"): `keyhole run` under `strace -f -y` shows, for a function that runs a program,
//! the write of the command record to the transcript, then an `fsync`/`fdatasync` of that same
//! file that has returned 0, and only then the `execve` of the program. A write without a sync,
//! or a sync after the exec, fails. (strace: tests/run.sh installs it; without it this skips,
//! and fails under the test command.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use crate::shipped;

/// The shipped configuration with `Get-Numbers` (a function running /usr/bin/seq) for alice.
fn config() -> tempfile::TempDir {
    let d = shipped::shipped_copy();
    let role = d.path().join("role-capabilities/Diagnostics.toml");
    let text = std::fs::read_to_string(&role).unwrap().replace(
        "visible_functions = [\"Get-DiskUsage\"]",
        "visible_functions = [\"Get-DiskUsage\", \"Get-Numbers\"]",
    );
    assert!(text.contains("Get-Numbers"), "{text}");
    std::fs::write(
        &role,
        format!(
            "{text}\n[functions.Get-Numbers]\nsynopsis = \"1 to 3\"\nprogram = \"/usr/bin/seq\"\nargs = [\"1\", \"3\"]\noutput = \"lines\"\n"
        ),
    )
    .unwrap();
    d
}

/// One system call of the trace: its name, the rest of the line and whether this line
/// is where it returned (a whole call, or `<... x resumed>`).
#[derive(Debug)]
struct Call {
    name: String,
    text: String,
    returned: bool,
}

/// The calls in the order strace printed them; a call split by another thread's
/// (`<unfinished ...>` then `<... name resumed>`) is joined and placed where it returned.
fn parse_trace(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: std::collections::HashMap<String, String> = Default::default();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let (name, tail) = resumed.split_once(" resumed>").unwrap_or((resumed, ""));
            let head = pending.remove(pid).unwrap_or_default();
            calls.push(Call {
                name: name.into(),
                text: format!("{head}{tail}"),
                returned: true,
            });
        } else if let Some((name, _)) = rest.split_once('(') {
            if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
                pending.insert(pid.into(), head.into());
                // The entry counts for an execve: the program starts there.
                if name == "execve" {
                    calls.push(Call {
                        name: name.into(),
                        text: head.into(),
                        returned: false,
                    });
                }
                continue;
            }
            calls.push(Call {
                name: name.into(),
                text: rest.into(),
                returned: true,
            });
        }
    }
    calls
}

/// The descriptor and path of a call's first argument as `strace -y` prints it: `5</path>`.
fn fd_path(text: &str) -> Option<(&str, &str)> {
    let args = text.split_once('(')?.1;
    let (fd, rest) = args.split_once('<')?;
    let path = rest.split_once('>')?.0;
    Some((fd, path))
}

fn returned_zero(c: &Call) -> bool {
    c.returned && c.text.trim_end().ends_with("= 0")
}

#[test]
fn the_command_record_is_synced_after_its_write_and_before_the_programs_exec() {
    let Some(strace) = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
    else {
        crate::prereq::skip("strace (Debian's strace package)");
        return;
    };
    let d = config();
    let trace_file = d.path().join("trace.txt");
    let out = Command::new(strace)
        .args(["-f", "-y", "-qq", "-s", "256", "-o"])
        .arg(&trace_file)
        .args([
            "-e",
            "trace=write,writev,pwrite64,pwritev,fsync,fdatasync,sync_file_range,execve",
        ])
        .arg(env!("CARGO_BIN_EXE_keyhole"))
        .args([
            "run",
            "--endpoint",
            "Helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
        ])
        .arg("--config")
        .arg(d.path().join("keyhole.toml"))
        .args(["--", "Get-Numbers"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.split_whitespace().collect::<Vec<_>>(),
        ["1", "2", "3"],
        "{stdout}"
    );
    let trace = std::fs::read_to_string(&trace_file).unwrap();
    if let Err(e) = check_trace(&trace, "[command] Get-Numbers", "/usr/bin/seq") {
        panic!("{e}:\n{trace}");
    }
}

/// In `trace`: the write of `record` to a file under `transcripts/`, then a sync of that file
/// (any thread, any descriptor of it) that returned 0, and an fsync of its directory, all
/// before the `execve` of `program`.
fn check_trace(trace: &str, record: &str, program: &str) -> Result<(), String> {
    let calls = parse_trace(trace);
    let written = calls
        .iter()
        .position(|c| {
            c.name.starts_with("write")
                && c.text.contains(record)
                && fd_path(&c.text).is_some_and(|(_, p)| p.contains("/transcripts/"))
        })
        .ok_or("no write of the command record to a transcript")?;
    let (_, transcript) = fd_path(&calls[written].text).ok_or("no path")?;
    let exec = calls
        .iter()
        .position(|c| c.name == "execve" && c.text.contains(&format!("\"{program}\"")))
        .ok_or("the program was never executed")?;
    if written > exec {
        return Err("the record was written after the program started".into());
    }
    let synced = calls[written..exec].iter().any(|c| {
        (c.name == "fsync" || c.name == "fdatasync")
            && returned_zero(c)
            && fd_path(&c.text).is_some_and(|(_, p)| p == transcript)
    });
    if !synced {
        return Err(format!(
            "no fsync/fdatasync of {transcript} returned between the record's write and the \
             program's exec"
        ));
    }
    // The new file's directory entry is synced too, before the program runs.
    let dir = Path::new(transcript)
        .parent()
        .and_then(Path::to_str)
        .ok_or("no directory")?;
    if !calls[..exec].iter().any(|c| {
        c.name == "fsync" && returned_zero(c) && fd_path(&c.text).is_some_and(|(_, p)| p == dir)
    }) {
        return Err(format!(
            "the transcript directory {dir} was not synced before the program ran"
        ));
    }
    Ok(())
}

/// The check tells a sync from a write: a trace with the write but no sync, a sync after the
/// exec, a failed sync, a sync of another file or no directory sync is refused; a split call
/// (`<unfinished ...>` / `resumed`) is read where it returned.
#[test]
fn the_trace_check_tells_a_sync_from_a_write() {
    let t = "/k/transcripts/s.txt";
    let w = format!("10 write(4<{t}>, \"[command] Get-Numbers\\n\", 22) = 22");
    let dsync = "10 fsync(5</k/transcripts>) = 0".to_string();
    let sync = format!("10 fdatasync(4<{t}>) = 0");
    let exec = "11 execve(\"/usr/bin/seq\", [\"/usr/bin/seq\"], 0x0 /* 2 vars */) = 0".to_string();
    let check =
        |lines: &[&str]| check_trace(&lines.join("\n"), "[command] Get-Numbers", "/usr/bin/seq");
    assert_eq!(check(&[&dsync, &w, &sync, &exec]), Ok(()));
    assert!(check(&[&dsync, &w, &exec]).is_err(), "a write alone");
    assert!(
        check(&[&dsync, &w, &exec, &sync]).is_err(),
        "a sync after the exec"
    );
    assert!(check(&[&w, &sync, &exec]).is_err(), "no directory sync");
    let failed = format!("10 fdatasync(4<{t}>) = -1 EIO (Input/output error)");
    assert!(
        check(&[&dsync, &w, &failed, &exec]).is_err(),
        "a failed sync"
    );
    let other = "10 fdatasync(6</k/transcripts/other.txt>) = 0";
    assert!(check(&[&dsync, &w, other, &exec]).is_err(), "another file");
    // Split by another thread: the sync returns only after the exec began.
    let unfinished = format!("10 fdatasync(4<{t}> <unfinished ...>");
    let resumed = "10 <... fdatasync resumed>) = 0";
    assert!(check(&[&dsync, &w, &unfinished, &exec, resumed]).is_err());
    assert_eq!(check(&[&dsync, &w, &unfinished, resumed, &exec]), Ok(()));
}
