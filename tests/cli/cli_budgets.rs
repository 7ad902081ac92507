//! Budgets through `keyhole run` (issue 9): `max_output_bytes` per pipeline, not per program;
//! transcripts capped by `max_transcript_bytes` with the rest summarized; sessions refused when
//! the transcript directory has less than `transcript_min_free_bytes` free; a value validated
//! against a set or pattern never re-read as a wildcard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use crate::shipped;

use shipped::{keyhole, shipped_copy};

const ALICE: &[&str] = &[
    "run",
    "--endpoint",
    "Helpdesk",
    "--user",
    "alice",
    "--group",
    "helpdesk",
];

/// The shipped configuration with `Get-Numbers` (seq 1 500: 1,892 bytes) in Diagnostics, and
/// `limits` as the `[limits]` table.
fn config(limits: &str) -> tempfile::TempDir {
    let d = shipped_copy();
    let role = d.path().join("role-capabilities/Diagnostics.toml");
    let text = std::fs::read_to_string(&role).unwrap().replace(
        "visible_functions = [\"Get-DiskUsage\"]",
        "visible_functions = [\"Get-DiskUsage\", \"Get-Numbers\"]",
    );
    std::fs::write(
        &role,
        format!(
            "{text}\n[functions.Get-Numbers]\nsynopsis = \"1 to 500\"\nprogram = \"/usr/bin/seq\"\nargs = [\"1\", \"500\"]\noutput = \"lines\"\n"
        ),
    )
    .unwrap();
    shipped::append(d.path(), "keyhole.toml", &format!("\n[limits]\n{limits}\n"));
    d
}

fn transcripts(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("transcripts")).unwrap() {
        out.push(std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    out
}

#[test]
fn max_output_bytes_is_per_pipeline_not_per_program() {
    let d = config("max_output_bytes = 2000");
    // One program alone fits.
    let (code, out, err) = keyhole(d.path(), ALICE, Some("Get-Numbers"));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.len(), 1892, "{err}");
    // Twenty of them in one line: 37,840 bytes were printed when the cap was per program.
    let line = vec!["Get-Numbers"; 20].join("; ");
    let (code, out, err) = keyhole(d.path(), ALICE, Some(&line));
    assert_eq!(code, 1, "the line must fail at the cap: {err}");
    assert!(
        out.len() <= 2000,
        "{} bytes printed with max_output_bytes = 2000",
        out.len()
    );
    assert!(
        err.contains("max_output_bytes applies to a whole pipeline"),
        "{err}"
    );
    // A pipeline of programs fed by the pipeline counts all of them too.
    let (code, out, err) = keyhole(
        d.path(),
        ALICE,
        Some("Get-Numbers | Select-Object -First 3; Get-Numbers | Select-Object -First 3"),
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("OutputLimitExceeded") || err.contains("max_output_bytes"),
        "{err}"
    );
}

#[test]
fn transcripts_are_capped_but_what_ran_is_always_recorded() {
    let d = config("max_transcript_bytes = 1500");
    let (code, out, err) = keyhole(
        d.path(),
        ALICE,
        Some("Get-Numbers; Get-Numbers; Get-Numbers"),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 3 * 1892, "the client still gets everything");
    let t = transcripts(d.path());
    assert_eq!(t.len(), 1);
    let t = &t[0];
    assert_eq!(
        t.matches("[command] Get-Numbers").count(),
        3,
        "every command is recorded:\n{t}"
    );
    assert!(t.contains("[end] Completed"), "{t}");
    let summary = t
        .lines()
        .find(|l| l.starts_with("[output not recorded] "))
        .unwrap_or_else(|| panic!("no summary:\n{t}"));
    assert!(
        summary.contains("bytes in") && summary.contains("max_transcript_bytes (1500 bytes)"),
        "{summary}"
    );
    // Nothing of the output beyond the cap: the file stays near the cap (the records of what
    // ran are written whatever the size).
    assert!(t.len() < 1500 + 1000, "{} bytes:\n{t}", t.len());
    assert!(!t.contains("\n500\n"), "output beyond the cap was copied");
    assert!(t.contains("Output not recorded: "), "{t}");

    // Over the cap from the start (the header alone is larger): refusals are still written.
    let d = config("max_transcript_bytes = 1");
    let (code, _, err) = keyhole(d.path(), ALICE, Some("Stop-Service cron"));
    assert_eq!(code, 2, "{err}");
    let t = transcripts(d.path());
    assert!(t[0].contains("[refused] "), "{}", t[0]);
    assert!(t[0].contains("PS>Stop-Service cron"), "{}", t[0]);
}

#[test]
fn too_little_free_space_for_transcripts_refuses_new_sessions() {
    // More free bytes than any disk has: the transcript directory is always short of space.
    let d = config("transcript_min_free_bytes = 9000000000000000000");
    let (code, out, err) = keyhole(d.path(), ALICE, Some("Get-Numbers"));
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("bytes free, less than transcript_min_free_bytes (9000000000000000000)"),
        "{err}"
    );
    assert!(
        !d.path().join("transcripts").exists()
            || std::fs::read_dir(d.path().join("transcripts"))
                .unwrap()
                .count()
                == 0,
        "a transcript was written"
    );
}

/// A process whose name matches the wildcard `sl*ep` but not the role's pattern `sl.ep`.
struct Decoy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Decoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decoy() -> Decoy {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("sl-decoy-ep");
    // A symbolic link, not a copy: the kernel names the process after the path it was started
    // by, and exec'ing a file this process just wrote races other tests' forks (ETXTBSY).
    std::os::unix::fs::symlink("/bin/sleep", &exe).unwrap();
    let child = std::process::Command::new(&exe).arg("600").spawn().unwrap();
    // Wait until the kernel shows its name.
    let comm = format!("/proc/{}/comm", child.id());
    for _ in 0..200 {
        if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sl-decoy-ep") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Decoy { child, _dir: dir }
}

#[test]
fn a_value_validated_by_a_pattern_is_never_read_as_a_wildcard() {
    let d = config("");
    let role = d.path().join("role-capabilities/Diagnostics.toml");
    let text = std::fs::read_to_string(&role).unwrap().replace(
        "  \"Get-Process\",\n",
        "  { name = \"Get-Process\", parameters = [ { name = \"Name\", validate_pattern = \"sl.ep\" } ] },\n  { name = \"Stop-Process\", parameters = [ { name = \"Name\", validate_pattern = \"sl.ep\" } ] },\n",
    );
    assert!(text.contains("sl.ep"), "{text}");
    std::fs::write(&role, text).unwrap();
    let mut decoy = decoy();
    // `sl*ep` passes the pattern `sl.ep` (`.` matches `*`); as a wildcard it would name the
    // decoy, which the pattern does not admit. It is the literal name "sl*ep": not found.
    let (code, out, err) = keyhole(d.path(), ALICE, Some("Get-Process -Name 'sl*ep'"));
    assert!(
        !out.contains("sl-decoy-ep"),
        "the wildcard reached the decoy:\n{out}"
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("Cannot find a process with the name \"sl*ep\""),
        "{err}"
    );
    let (code, out, err) = keyhole(d.path(), ALICE, Some("Stop-Process -Name 'sl*ep'"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        decoy.child.try_wait().unwrap().is_none(),
        "Stop-Process killed a process the role's pattern does not admit"
    );
    // The pattern itself still works for what it admits, and refuses what it does not.
    let (code, _, err) = keyhole(d.path(), ALICE, Some("Get-Process -Name 'sl-decoy-ep'"));
    assert_eq!(code, 2, "{err}");
}
