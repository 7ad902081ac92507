//! `keyhole check` refuses every configuration `keyhole serve` refuses at start (SPEC §2.1,
//! issue 11 item 8): for each case below the real `serve` exits non-zero without listening, and
//! the real `check` exits 1 with a `keyhole.toml:LINE:COL` error pointing at the setting.
//! A control case proves the harness: the unbroken configuration passes check and serve starts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::shipped;

use shipped::shipped_copy;

/// A listener section that works (free ports on loopback).
const GOOD_LISTENER: &str = "https = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n";

struct Case {
    name: &'static str,
    /// Top-level keys put at the start of keyhole.toml.
    top: &'static str,
    /// The whole `[listener]` table body.
    listener: &'static str,
    /// Files the case needs, written into the configuration directory.
    files: fn(&Path),
    /// The error is located at the first `needle` after the first `after` in keyhole.toml.
    after: &'static str,
    needle: &'static str,
    /// Part of check's message.
    msg: &'static str,
}

fn none(_: &Path) {}

fn pair(dir: &Path, cert: &str, key: &str) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join(cert), ck.cert.pem()).unwrap();
    std::fs::write(dir.join(key), ck.key_pair.serialize_pem()).unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "plain HTTP off loopback without allow_unencrypted",
            top: "",
            listener: "https = \"127.0.0.1:0\"\nhttp = \"0.0.0.0:0\"\n",
            files: none,
            after: "[listener]",
            needle: "\"0.0.0.0:0\"",
            msg: "allow_unencrypted",
        },
        Case {
            name: "a listener that is not address:port",
            top: "",
            listener: "https = \"localhost:0\"\nhttp = \"127.0.0.1:0\"\n",
            files: none,
            after: "[listener]",
            needle: "\"localhost:0\"",
            msg: "is not an address:port",
        },
        Case {
            name: "both listeners disabled",
            top: "",
            listener: "https = \"\"\nhttp = \"\"\n",
            files: none,
            after: "",
            needle: "[listener]",
            msg: "both https and http are disabled",
        },
        Case {
            name: "an address this host does not have",
            top: "",
            // TEST-NET-3 (RFC 5737): no host has it.
            listener: "https = \"203.0.113.7:0\"\nhttp = \"127.0.0.1:0\"\n",
            files: none,
            after: "[listener]",
            needle: "\"203.0.113.7:0\"",
            msg: "this host has no address",
        },
        Case {
            name: "an ip_allow entry that is not a CIDR",
            top: "",
            listener: "https = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nip_allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
            files: none,
            after: "[listener]",
            needle: "\"10.0.0.0/33\"",
            msg: "is not an address or CIDR range",
        },
        Case {
            name: "tls_certificate without tls_private_key",
            top: "",
            listener: "https = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ntls_certificate = \"c.pem\"\n",
            files: |d| pair(d, "c.pem", "k.pem"),
            after: "[listener]",
            needle: "\"c.pem\"",
            msg: "go together",
        },
        Case {
            name: "a certificate file that is not PEM",
            top: "",
            listener: "https = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ntls_certificate = \"junk.pem\"\ntls_private_key = \"k.pem\"\n",
            files: |d| {
                pair(d, "c.pem", "k.pem");
                std::fs::write(d.join("junk.pem"), "not a certificate\n").unwrap();
            },
            after: "[listener]",
            needle: "\"junk.pem\"",
            msg: "holds no PEM certificate",
        },
        Case {
            name: "a private key that does not match the certificate",
            top: "",
            listener: "https = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ntls_certificate = \"a.pem\"\ntls_private_key = \"b.key\"\n",
            files: |d| {
                pair(d, "a.pem", "a.key");
                pair(d, "b.pem", "b.key");
            },
            after: "[listener]",
            needle: "\"b.key\"",
            msg: "do not match",
        },
        Case {
            name: "a client_ca that is not a PEM bundle",
            top: "",
            listener: "https = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nclient_ca = \"ca.pem\"\n",
            files: |d| std::fs::write(d.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap(),
            after: "[listener]",
            needle: "\"ca.pem\"",
            msg: "ca.pem",
        },
        Case {
            name: "require_client_certificate without client_ca",
            top: "",
            listener: "https = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nrequire_client_certificate = true\n",
            files: none,
            after: "require_client_certificate = ",
            needle: "true",
            msg: "needs client_ca",
        },
        Case {
            name: "an unusable self-signed pair in state_directory",
            top: "state_directory = \"st\"\n",
            listener: GOOD_LISTENER,
            files: |d| {
                std::fs::create_dir(d.join("st")).unwrap();
                std::fs::write(d.join("st/keyhole-tls-cert.pem"), "junk").unwrap();
                std::fs::write(d.join("st/keyhole-tls-key.pem"), "junk").unwrap();
            },
            after: "",
            needle: "\"st\"",
            msg: "self-signed",
        },
        Case {
            name: "a state_directory that cannot be created",
            top: "state_directory = \"afile/state\"\n",
            listener: GOOD_LISTENER,
            files: |d| std::fs::write(d.join("afile"), "a file, not a directory").unwrap(),
            after: "",
            needle: "\"afile/state\"",
            msg: "cannot be created",
        },
        Case {
            name: "an audit log that is a directory",
            top: "audit_log = \"logs\"\n",
            listener: GOOD_LISTENER,
            files: |d| std::fs::create_dir(d.join("logs")).unwrap(),
            after: "",
            needle: "\"logs\"",
            msg: "is not a regular file",
        },
        Case {
            name: "an audit log that cannot be created",
            top: "audit_log = \"afile/audit.jsonl\"\n",
            listener: GOOD_LISTENER,
            files: |d| std::fs::write(d.join("afile"), "a file, not a directory").unwrap(),
            after: "",
            needle: "\"afile/audit.jsonl\"",
            msg: "cannot be created",
        },
    ]
}

/// The shipped configuration with `top` first and `listener` as its `[listener]` table.
fn configure(dir: &Path, top: &str, listener: &str) {
    let p = dir.join("keyhole.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let at = text
        .find("\n[listener]")
        .expect("shipped keyhole.toml has a [listener] table");
    let new = format!("{top}{}\n[listener]\n{listener}", &text[..at]);
    std::fs::write(p, new).unwrap();
}

/// `line:col` (1-based) of the first `needle` after the first `after`.
fn line_col(text: &str, after: &str, needle: &str) -> String {
    let start = text.find(after).unwrap();
    let at = start + text[start..].find(needle).unwrap();
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
    format!("{line}:{col}")
}

fn check(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["check", "--config"])
        .arg(dir.join("keyhole.toml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

enum Served {
    /// Exited by itself, with this code and what it printed.
    Exited(i32, String),
    /// Printed that it listens (then stopped with SIGTERM).
    Listening(String),
}

/// Start the real `keyhole serve`; it either exits on its own or says it listens (30 s at most).
fn serve(dir: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["serve", "--config"])
        .arg(dir.join("keyhole.toml"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("keyhole: listening on") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    for _ in 0..600 {
        if let Ok(line) = rx.try_recv() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
            return Served::Listening(line);
        }
        if let Some(st) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return Served::Exited(
                st.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("keyhole serve neither listened nor exited within 30 s");
}

#[test]
fn the_unbroken_configuration_passes_check_and_serves() {
    let d = shipped_copy();
    configure(d.path(), "", GOOD_LISTENER);
    let (code, text) = check(d.path());
    assert_eq!(code, 0, "{text}");
    match serve(d.path()) {
        Served::Listening(_) => {}
        Served::Exited(code, err) => panic!("serve exited {code}:\n{err}"),
    }
}

/// Plain HTTP off loopback without `allow_unencrypted` is accepted by both when `[auth]
/// negotiate` is on (the listener then admits only encrypted Negotiate, SPEC §2.1), and refused
/// by both when it is off (the first case of `cases()`).
#[test]
fn an_http_listener_off_loopback_with_negotiate_passes_check_and_serves() {
    let d = shipped_copy();
    configure(
        d.path(),
        "",
        "https = \"127.0.0.1:0\"\nhttp = \"0.0.0.0:0\"\nip_allow = [\"127.0.0.0/8\"]\n\n[auth]\nnegotiate = true\nntlm = true\nkeytab = \"\"\n",
    );
    let (code, text) = check(d.path());
    assert_eq!(code, 0, "{text}");
    match serve(d.path()) {
        Served::Listening(_) => {}
        Served::Exited(code, err) => panic!("serve exited {code}:\n{err}"),
    }
}

#[test]
fn check_refuses_what_serve_refuses_at_start() {
    let mut failures = Vec::new();
    for c in cases() {
        let d = shipped_copy();
        configure(d.path(), c.top, c.listener);
        (c.files)(d.path());
        let text = std::fs::read_to_string(d.path().join("keyhole.toml")).unwrap();
        let want = format!("keyhole.toml:{}", line_col(&text, c.after, c.needle));

        match serve(d.path()) {
            Served::Exited(code, _) if code != 0 => {}
            Served::Exited(code, err) => {
                failures.push(format!(
                    "{}: serve exited {code}, not an error:\n{err}",
                    c.name
                ));
                continue;
            }
            Served::Listening(line) => {
                failures.push(format!(
                    "{}: serve started ({line}); the case does not break serve",
                    c.name
                ));
                continue;
            }
        }
        let (code, out) = check(d.path());
        if code != 1 {
            failures.push(format!("{}: check exited {code}, not 1:\n{out}", c.name));
            continue;
        }
        let hit = out.lines().find(|l| l.contains(&want) && l.contains(c.msg));
        if hit.is_none() {
            failures.push(format!(
                "{}: check did not report {:?} at {want}:\n{out}",
                c.name, c.msg
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
