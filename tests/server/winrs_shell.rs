//! The WinRS shell on its own (no HTTP): command lifecycle, End markers once, Done repeated,
//! signals, stdin, close, and the per-shell command limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use crate::wsman_common::static_gate;

use keyhole::shells::runner::Workers;
use keyhole::shells::winrs::{WinrsShell, MAX_COMMANDS_PER_SHELL};
use keyhole::shells::ShellSetup;
use keyhole::wsman::shell::*;
use static_gate::StaticGatekeeper;

fn shell() -> WinrsShell {
    let g = StaticGatekeeper::new("alice", "pw", &["WinRS"]);
    let id = Identity {
        user: "alice".into(),
        groups: Vec::new(),
    };
    WinrsShell::new(
        g.session(&id, "WinRS"),
        ShellSetup::new("alice", Workers::new(4)),
        "WinRS",
        153_600,
    )
}

fn cmd(s: &mut WinrsShell, line: &str) -> String {
    s.command(CommandRequest {
        command_id: None,
        command: line.into(),
        arguments: Vec::new(),
    })
    .unwrap()
}

/// Receive until Done, as the WS-Man layer does (waiting on notify between polls).
fn run_to_done(s: &mut WinrsShell, id: &str) -> (Vec<u8>, Vec<u8>, i32, Vec<String>) {
    let (mut out, mut err, mut ends) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = s.receive(Some(id)).unwrap();
        for c in r.streams {
            assert_eq!(c.command_id.as_deref(), Some(id));
            if c.end {
                ends.push(c.name.to_string());
            }
            match c.name {
                StreamName::Stdout => out.extend(c.data),
                StreamName::Stderr => err.extend(c.data),
                o => panic!("stream {o}"),
            }
        }
        if let Some(st) = r.command_state {
            if st.state == CommandStateKind::Done {
                return (out, err, st.exit_code.unwrap(), ends);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "command never finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_line_runs_and_ends_with_both_streams_closed_once() {
    let mut s = shell();
    let id = cmd(&mut s, "Get-NoSuchCommand -Name x");
    let (out, err, code, ends) = run_to_done(&mut s, &id);
    assert!([0, 1, 2].contains(&code));
    if code == 2 {
        assert!(out.is_empty());
        assert!(String::from_utf8(err)
            .unwrap()
            .contains("FullyQualifiedErrorId"));
    }
    assert_eq!(ends, vec!["stdout".to_string(), "stderr".to_string()]);
    // Asking again: Done again, without repeating the End markers.
    let again = s.receive(Some(&id)).unwrap();
    assert!(again.streams.is_empty());
    assert_eq!(again.command_state.unwrap().exit_code, Some(code));
}

#[test]
fn client_chosen_command_ids_are_kept_and_duplicates_refused() {
    let mut s = shell();
    let req = |id: &str| CommandRequest {
        command_id: Some(id.into()),
        command: "Get-Date".into(),
        arguments: Vec::new(),
    };
    assert_eq!(
        s.command(req("b1b2c3d4-0000-4000-8000-000000000002"))
            .unwrap(),
        "B1B2C3D4-0000-4000-8000-000000000002"
    );
    assert!(matches!(
        s.command(req("B1B2C3D4-0000-4000-8000-000000000002")),
        Err(ShellError::Malformed(_))
    ));
    assert!(matches!(
        s.command(req("../../etc")),
        Err(ShellError::Malformed(_))
    ));
}

#[test]
fn unknown_commands_are_invalid_selectors() {
    let mut s = shell();
    assert_eq!(
        s.receive(Some("nope")).unwrap_err(),
        ShellError::InvalidSelectors
    );
    assert_eq!(s.receive(None).unwrap_err(), ShellError::InvalidSelectors);
    assert_eq!(
        s.signal(Some("nope"), Signal::CtrlC).unwrap_err(),
        ShellError::InvalidSelectors
    );
    assert_eq!(
        s.send(Some("nope"), StreamName::Stdin, b"x".to_vec(), true)
            .unwrap_err(),
        ShellError::InvalidSelectors
    );
}

#[test]
fn stdin_is_accepted_until_end_and_bounded() {
    let mut s = shell();
    let id = cmd(&mut s, "Get-Date");
    s.send(Some(&id), StreamName::Stdin, b"abc".to_vec(), false)
        .unwrap();
    assert!(matches!(
        s.send(Some(&id), StreamName::Pr, b"x".to_vec(), false),
        Err(ShellError::Malformed(_))
    ));
    s.send(Some(&id), StreamName::Stdin, b"def".to_vec(), true)
        .unwrap();
    assert!(matches!(
        s.send(Some(&id), StreamName::Stdin, b"more".to_vec(), false),
        Err(ShellError::QuotaLimit(_))
    ));
}

#[test]
fn signals_and_terminate_clean_up_finished_commands() {
    let mut s = shell();
    let id = cmd(&mut s, "Get-Date");
    let _ = run_to_done(&mut s, &id);
    s.signal(Some(&id), Signal::CtrlC).unwrap();
    s.signal(Some(&id), Signal::Terminate).unwrap();
    // Forgotten after terminate.
    assert_eq!(
        s.receive(Some(&id)).unwrap_err(),
        ShellError::InvalidSelectors
    );
}

#[test]
fn close_refuses_everything_after() {
    let mut s = shell();
    let id = cmd(&mut s, "Get-Date");
    s.close();
    assert_eq!(
        s.receive(Some(&id)).unwrap_err(),
        ShellError::InvalidSelectors
    );
    assert_eq!(
        s.command(CommandRequest {
            command_id: None,
            command: "Get-Date".into(),
            arguments: Vec::new()
        })
        .unwrap_err(),
        ShellError::InvalidSelectors
    );
}

#[test]
fn finished_commands_make_room_for_new_ones() {
    let mut s = shell();
    for _ in 0..(MAX_COMMANDS_PER_SHELL * 2) {
        let id = cmd(&mut s, "Get-Date");
        let _ = run_to_done(&mut s, &id);
    }
}

#[test]
fn notify_wakes_a_waiting_receive() {
    let mut s = shell();
    let n = s.notify();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let woke = rt.block_on(async {
        let notified = n.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let _id = cmd(&mut s, "Get-Date");
        tokio::time::timeout(Duration::from_secs(10), notified)
            .await
            .is_ok()
    });
    assert!(woke);
}

/// Output beyond the budget waits for the client (as on Windows) instead of stopping the line.
#[test]
fn output_over_the_budget_waits_for_a_receive_instead_of_stopping_the_line() {
    use keyhole::capability::{CommandGrant, ParamsGrant};
    use keyhole::shells::runner::{Budget, OutputBudget};
    let mut g = StaticGatekeeper::new("alice", "pw", &["WinRS"]);
    g.capability.cmdlets.insert(
        "write-output".into(),
        CommandGrant {
            name: "Write-Output".into(),
            params: ParamsGrant::All,
        },
    );
    let id = Identity {
        user: "alice".into(),
        groups: Vec::new(),
    };
    // One byte: every item after the first waits until the one before was received.
    let budget = OutputBudget::new(1);
    let setup = ShellSetup {
        budget: Budget::Shared(budget.clone()),
        ..ShellSetup::new("alice", Workers::new(2))
    };
    let mut s = WinrsShell::new(g.session(&id, "WinRS"), setup, "WinRS", 153_600);
    let cid = cmd(&mut s, "Write-Output a,b,c,d,e");
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while budget.used() == 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Time for a producer that does not wait to queue everything.
    std::thread::sleep(Duration::from_millis(200));
    let first = s.receive(Some(&cid)).unwrap();
    assert_eq!(first.streams.len(), 1, "{first:?}");
    assert_eq!(first.streams[0].data, b"a\n", "only one item was queued");
    assert_eq!(
        first.command_state.map(|c| c.state),
        Some(CommandStateKind::Running)
    );
    let (out, err, code, _) = run_to_done(&mut s, &cid);
    assert_eq!(String::from_utf8(out).unwrap(), "b\nc\nd\ne\n");
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    assert_eq!(code, 0);
    assert_eq!(budget.used(), 0);
}

fn shell_with_codepage(cp: Option<&str>) -> Result<WinrsShell, ShellError> {
    let mut s = shell();
    let options = cp
        .map(|c| vec![("WINRS_CODEPAGE".to_string(), c.to_string())])
        .unwrap_or_default();
    s.on_create(&CreateRequest {
        options,
        ..Default::default()
    })?;
    Ok(s)
}

/// Issue 11 item 5: output is encoded in the code page the Create asked for (`WINRS_CODEPAGE`,
/// 437 by default in pywinrm and pypsrp); characters it lacks become `?`. No option: 437, as
/// Windows (pypsrp's `execute_cmd` sends none and decodes 437).
#[test]
fn output_is_encoded_in_the_shell_s_code_page() {
    let line = "Select-Object -InputObject 'héllo ✓'";
    for (cp, want) in [
        (Some("437"), b"h\x82llo ?".to_vec()),
        (Some("850"), b"h\x82llo ?".to_vec()),
        (Some("1252"), b"h\xe9llo ?".to_vec()),
        (Some("65001"), "héllo ✓".as_bytes().to_vec()),
        (None, b"h\x82llo ?".to_vec()),
    ] {
        let mut s = shell_with_codepage(cp).unwrap();
        let id = cmd(&mut s, line);
        let (out, err, code, _) = run_to_done(&mut s, &id);
        assert_eq!(code, 0, "{cp:?}: {}", String::from_utf8_lossy(&err));
        assert!(
            out.windows(want.len()).any(|w| w == want.as_slice()),
            "{cp:?}: {out:?}"
        );
        // Errors on stderr are in the same code page.
        let id = cmd(&mut s, "Get-Thing 'ü'");
        let (_, err, code, _) = run_to_done(&mut s, &id);
        assert_eq!(code, 2);
        if cp == Some("437") {
            assert!(
                !err.iter().any(|b| *b >= 0xC0),
                "UTF-8 in a 437 shell: {err:?}"
            );
        }
    }
}

#[test]
fn a_code_page_keyhole_cannot_write_is_refused_saying_which_it_can() {
    match shell_with_codepage(Some("932")) {
        Err(ShellError::Unsupported(m)) => {
            assert!(
                m.contains("WINRS_CODEPAGE") && m.contains("437") && m.contains("65001"),
                "{m}"
            )
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("code page 932 accepted"),
    }
}

/// Issue 11 item 6: `powershell -Command "LINE"` runs LINE (as `-EncodedCommand` does), and a
/// refusal's column is LINE's.
#[test]
fn powershell_command_runs_the_line() {
    let mut s = shell_with_codepage(Some("65001")).unwrap();
    let id = s
        .command(CommandRequest {
            command_id: None,
            command: "powershell".into(),
            arguments: vec!["-NoProfile -Command \"Select-Object -InputObject 'a b'\"".into()],
        })
        .unwrap();
    let (out, err, code, _) = run_to_done(&mut s, &id);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(String::from_utf8(out).unwrap().contains("a b"));
    let id = cmd(&mut s, "powershell -c \"Get-Command | Stop-It\"");
    let (_, err, code, _) = run_to_done(&mut s, &id);
    assert_eq!(code, 2);
    let err = String::from_utf8(err).unwrap();
    assert!(
        err.contains("Stop-It") && err.contains("column 15"),
        "{err}"
    );
}

/// Issue 11 item 7: a line longer than the language's limit is refused (exit 2) with a message
/// that names the limit, however long it is (400,000 characters was an opaque fault).
#[test]
fn an_overlong_line_is_refused_naming_the_limit() {
    let mut s = shell();
    for n in [100_000, 400_000] {
        let id = cmd(&mut s, &format!("Get-Command {}", "a".repeat(n)));
        let (_, err, code, _) = run_to_done(&mut s, &id);
        assert_eq!(code, 2);
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.contains("a line longer than 65536 bytes") && err.contains("LimitExceeded"),
            "{}",
            &err[..err.len().min(400)]
        );
    }
}
