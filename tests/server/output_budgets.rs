//! Output budgets (issue 9, finding 4): what a user's commands produced and the client has not
//! received is bounded per **user** (`max_buffered_output_bytes`, one budget across all of the
//! user's shells and pools); beyond it a command waits, as on Windows, and goes on when the
//! client receives. Before, each WinRS command had 16 MiB of its own, 64 commands per shell,
//! 30 shells per user.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use crate::live;
use crate::wsman_common::{self, static_gate::StaticGatekeeper};

use keyhole::capability::{CommandGrant, ParamsGrant};
use keyhole::shells::runner::{Budget, Workers};
use keyhole::shells::winrs::{WinrsShell, MAX_PIECE};
use keyhole::shells::{ShellSetup, UserBudgets};
use keyhole::wsman::envelope::*;
use keyhole::wsman::shell::*;
use wsman_common::*;

/// Two shells of one user, many commands each, a client that never receives: the user's
/// buffered bytes never exceed the budget, and the commands wait instead of failing.
#[test]
fn two_shells_of_one_user_share_one_budget() {
    const LIMIT: usize = 32 * 1024;
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
    let budgets = UserBudgets::new();
    let workers = Workers::new(8);
    let mut shells: Vec<WinrsShell> = (0..2)
        .map(|_| {
            let setup = ShellSetup {
                budget: Budget::Shared(budgets.for_user("ALICE", LIMIT)),
                ..ShellSetup::new("alice", workers.clone())
            };
            WinrsShell::new(g.session(&id, "WinRS"), setup, "WinRS", 153_600)
        })
        .collect();
    assert_eq!(
        budgets.users(),
        1,
        "one budget for the user, whatever the case"
    );
    // Each command writes 6 strings of 10,000 characters: 60 KB, more than the whole budget.
    let line = format!("Write-Output {}", ["'{}'"; 6].join(",")).replace("{}", &"x".repeat(10_000));
    let mut ids = Vec::new();
    for s in shells.iter_mut() {
        for _ in 0..20 {
            ids.push(
                s.command(CommandRequest {
                    command_id: None,
                    command: line.clone(),
                    arguments: Vec::new(),
                })
                .unwrap(),
            );
        }
    }
    // Watch the user's buffered bytes while the commands run and wait.
    let mut max_seen = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        max_seen = max_seen.max(budgets.used("alice"));
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "40 commands × 60 KB in two shells, nothing received: at most {max_seen} bytes buffered (budget {LIMIT})"
    );
    assert!(max_seen > 0, "nothing was produced");
    // The budget, and at most one piece more per running line (each shell runs one line at a
    // time): a line whose output the client has all received may always queue one piece.
    assert!(
        max_seen <= LIMIT + 2 * MAX_PIECE,
        "{max_seen} bytes buffered for alice, budget {LIMIT}"
    );
    // Receiving lets the waiting command go on: the first command of the first shell completes.
    let first = ids[0].clone();
    let mut out = 0usize;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let r = shells[0].receive(Some(&first)).unwrap();
        out += r.streams.iter().map(|c| c.data.len()).sum::<usize>();
        if r.command_state
            .as_ref()
            .is_some_and(|c| c.state == CommandStateKind::Done)
        {
            assert_eq!(r.command_state.unwrap().exit_code, Some(0));
            break;
        }
        assert!(Instant::now() < until, "the command never finished");
        assert!(budgets.used("alice") <= LIMIT + 2 * MAX_PIECE);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(out, 6 * 10_001, "every line arrived");
    // Closing the shells releases everything; the budget goes with the user's last shell.
    for mut s in shells.drain(..) {
        s.close();
    }
    let until = Instant::now() + Duration::from_secs(20);
    while budgets.used("alice") > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(budgets.used("alice"), 0);
}

/// Against the real `keyhole serve`: alice runs 2 WinRS shells × 40 commands that each print
/// one 1.99 MB line and never receives. Each command used to keep its output (16 MiB allowed per
/// command), so memory grew with every command; now the server holds at most alice's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreceived_winrs_output_is_bounded_per_user_in_the_real_server() {
    let budget: u64 = 8 * 1024 * 1024;
    let cfg = live::config(
        &format!("max_buffered_output_bytes = {budget}\nmax_shells_per_user = 4"),
        "",
    );
    let s = live::start(cfg);
    let alice = basic("alice", live::ALICE_PW);
    let mut shells = Vec::new();
    for _ in 0..2 {
        let r = create_shell(s.addr, &alice, URI_CMD).await;
        assert_eq!(r.status, 200, "{}", r.text());
        shells.push(shell_id_of(&r));
    }
    // A first command through, so that the code paths are warm before measuring.
    let (_, x) = envelope(
        ACTION_COMMAND,
        URI_CMD,
        Some(&shells[0]),
        None,
        &command_body("Get-Numbers", &[]),
    );
    let warm = command_id_of(&post(s.addr, &alice, &x).await);
    let (out, _, code) = receive_all(s.addr, &alice, &shells[0], &warm).await;
    assert_eq!((out.lines().count(), code), (500, 0));
    let before = s.rss_kib();
    let mut cmds: Vec<(String, String)> = Vec::new();
    for sh in &shells {
        for _ in 0..40 {
            let (_, x) = envelope(
                ACTION_COMMAND,
                URI_CMD,
                Some(sh),
                None,
                &command_body("Get-Line", &[]),
            );
            let r = post(s.addr, &alice, &x).await;
            assert_eq!(r.status, 200, "{}", r.text());
            cmds.push((sh.clone(), command_id_of(&r)));
        }
    }
    let pid = s.child.id();
    let after = tokio::task::spawn_blocking(move || {
        live::settle(
            move || live::rss_kib(pid) / 1024,
            Duration::from_secs(4),
            Duration::from_secs(90),
        )
    })
    .await
    .unwrap()
        * 1024;
    let grew = after.saturating_sub(before);
    println!(
        "2 shells × 40 commands × 1.99 MB unreceived (159 MB produced if nothing waited): server RSS {} MiB -> {} MiB (+{} MiB), max_buffered_output_bytes {} MiB",
        before / 1024,
        after / 1024,
        grew / 1024,
        budget / (1024 * 1024)
    );
    assert!(
        grew < 64 * 1024,
        "the server grew by {} MiB holding unreceived output (budget {} MiB)",
        grew / 1024,
        budget / (1024 * 1024)
    );
    // The commands wait rather than fail: receiving lets them go on, in order.
    for (sh, c) in cmds.iter().filter(|(sh, _)| *sh == shells[0]).take(6) {
        let (out, err, code) = receive_all(s.addr, &alice, sh, c).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.len() >= 1_988_894, "{} bytes", out.len());
    }
    for sh in &shells {
        let (_, x) = envelope(ACTION_DELETE, URI_SHELL, Some(sh), None, "");
        assert_eq!(post(s.addr, &alice, &x).await.status, 200);
    }
}

/// Below `transcript_min_free_bytes` free in the transcript directory new sessions are refused
/// (the generic 401; the log says why) while a session already open goes on. The real server,
/// the setting raised by a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_transcript_space_refuses_new_sessions_and_open_ones_go_on() {
    let s = live::start(live::config("", ""));
    let alice = basic("alice", live::ALICE_PW);
    let open = shell_id_of(&create_shell(s.addr, &alice, URI_CMD).await);
    // Raise the threshold above any disk's free space and wait for the reload.
    let toml = s.dir.path().join("keyhole.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "[limits]\n",
        "[limits]\ntranscript_min_free_bytes = 9000000000000000000\n",
    );
    std::fs::write(&toml, text).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !s.log_text().contains("configuration reloaded") {
        assert!(Instant::now() < until, "no reload:\n{}", s.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = create_shell(s.addr, &alice, URI_CMD).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    let wrong = create_shell(s.addr, &basic("alice", "wrong-Pw-1"), URI_CMD).await;
    assert_eq!(
        (refused.headers.len(), refused.body.clone()),
        (wrong.headers.len(), wrong.body.clone()),
        "the refusal looks like any other"
    );
    let log = s.log_text();
    assert!(
        log.contains("less than transcript_min_free_bytes (9000000000000000000)"),
        "{log}"
    );
    // The open shell still runs commands.
    let (_, x) = envelope(
        ACTION_COMMAND,
        URI_CMD,
        Some(&open),
        None,
        &command_body("Get-Numbers", &[]),
    );
    let c = command_id_of(&post(s.addr, &alice, &x).await);
    let (out, err, code) = receive_all(s.addr, &alice, &open, &c).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 500);
}
