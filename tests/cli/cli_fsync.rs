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

/// One system call of the trace: its pid, its name, the rest of the line and whether this line
/// is where it returned (a whole call, or `<... x resumed>`).
#[derive(Debug)]
struct Call {
    pid: String,
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
                pid: pid.into(),
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
                        pid: pid.into(),
                        name: name.into(),
                        text: head.into(),
                        returned: false,
                    });
                }
                continue;
            }
            calls.push(Call {
                pid: pid.into(),
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
    let calls = parse_trace(&trace);

    // The transcript: the file the command record is written to.
    let record = calls
        .iter()
        .position(|c| {
            c.name.starts_with("write")
                && c.text.contains("[command] Get-Numbers")
                && fd_path(&c.text).is_some_and(|(_, p)| p.contains("/transcripts/"))
        })
        .unwrap_or_else(|| panic!("no write of the command record to a transcript:\n{trace}"));
    let (fd, transcript) = fd_path(&calls[record].text).unwrap();
    let writer = &calls[record].pid;
    let exec = calls
        .iter()
        .position(|c| c.name == "execve" && c.text.contains("\"/usr/bin/seq\""))
        .unwrap_or_else(|| panic!("seq was never executed:\n{trace}"));
    assert!(
        record < exec,
        "the record was written after the program started:\n{trace}"
    );
    // A sync of that file, by the thread that wrote it, returned 0 between the two.
    let synced = calls[record..exec].iter().any(|c| {
        (c.name == "fsync" || c.name == "fdatasync")
            && &c.pid == writer
            && returned_zero(c)
            && fd_path(&c.text) == Some((fd, transcript))
    });
    assert!(
        synced,
        "no fsync/fdatasync of {transcript} returned between the record's write and the \
         program's exec:\n{trace}"
    );
    // The new file's directory entry is synced too, before the program runs.
    let dir = Path::new(transcript).parent().unwrap().to_str().unwrap();
    assert!(
        calls[..exec].iter().any(|c| c.name == "fsync"
            && returned_zero(c)
            && fd_path(&c.text).is_some_and(|(_, p)| p == dir)),
        "the transcript directory {dir} was not synced before the program ran:\n{trace}"
    );
}
