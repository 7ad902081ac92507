//! `keyhole demo [--https-port P] [--http-port P]` (SPEC §3): the ports it listens on are the ones
//! asked for (0 = a free one), and the connection snippets it prints name those ports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use regex::Regex;

/// The last line of the snippets.
const LAST_LINE: &str = "Ctrl+C stops the server.";

struct Demo {
    child: Child,
    /// Everything printed on stdout up to the last snippet line.
    text: String,
}

impl Demo {
    fn https_port(&self) -> u16 {
        let re = Regex::new(r"winrm\.Session\('https://127\.0\.0\.1:(\d+)/wsman'").unwrap();
        re.captures(&self.text).unwrap()[1].parse().unwrap()
    }
    fn http_port(&self) -> u16 {
        let re =
            Regex::new(r"plain HTTP \(loopback only\): http://127\.0\.0\.1:(\d+)/wsman").unwrap();
        re.captures(&self.text).unwrap()[1].parse().unwrap()
    }
    fn config_dir(&self) -> std::path::PathBuf {
        let re = Regex::new(r"configuration:\s+(\S+)").unwrap();
        re.captures(&self.text).unwrap()[1].into()
    }
    /// SIGTERM, then the exit status (the demo removes its directory and exits 0).
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        for _ in 0..300 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("keyhole demo did not stop within 15 s of SIGTERM");
    }
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Start the demo and read its snippets (fails after 60 s or if it exits first).
fn start(args: &[&str]) -> Demo {
    let mut child = spawn(args);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
            if line.contains(LAST_LINE) {
                let _ = tx.send(Some(text.clone()));
            }
        }
        let _ = tx.send(None);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(text)) => Demo { child, text },
        other => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "keyhole demo {args:?} printed no snippets ({other:?}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A port that is free right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5)).is_ok()
}

#[test]
fn demo_port_zero_picks_free_ports_and_prints_them() {
    let d = start(&["--https-port", "0", "--http-port", "0"]);
    let (https, http) = (d.https_port(), d.http_port());
    assert!(https != 0 && http != 0 && https != http, "{}", d.text);
    assert!(listening(https) && listening(http), "{}", d.text);
    // Every snippet names the same port: pypsrp, PowerShell.
    assert!(d.text.contains(&format!("port={https},")), "{}", d.text);
    assert!(
        d.text.contains(&format!("-Port {https} -UseSSL")),
        "{}",
        d.text
    );
    // NTLM over plain HTTP (issue 12): pypsrp, pywinrm, evil-winrm-py and Ansible name the HTTP
    // port (tests/interop/test_negotiate.py runs the pypsrp one against a demo).
    for want in [
        format!("port={http}, username='demo'"),
        "auth='ntlm'); out, streams".to_string(),
        format!("winrm.Session('http://127.0.0.1:{http}/wsman'"),
        format!("evil-winrm-py -i 127.0.0.1 --port {http} -u demo -p '"),
        format!("-e ansible_port={http} -e ansible_psrp_protocol=http -e ansible_psrp_auth=ntlm"),
    ] {
        assert!(d.text.contains(&want), "{want:?} not in:\n{}", d.text);
    }
    let dir = d.config_dir();
    assert!(dir.join("keyhole.toml").is_file(), "{}", dir.display());
    let st = d.stop();
    assert!(st.success(), "{st:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn demo_listens_on_the_ports_given() {
    let (a, b) = (free_port(), free_port());
    let (a, b) = if a == b { (a, free_port()) } else { (a, b) };
    let d = start(&[
        "--https-port",
        &a.to_string(),
        "--http-port",
        &b.to_string(),
    ]);
    assert_eq!(d.https_port(), a, "{}", d.text);
    assert_eq!(d.http_port(), b, "{}", d.text);
    assert!(listening(a) && listening(b), "{}", d.text);
    assert!(d.stop().success());
}

#[test]
fn demo_refuses_a_chosen_port_that_is_taken() {
    // A chosen port is never silently replaced by another one.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let mut child = spawn(&["--https-port", &port.to_string(), "--http-port", "0"]);
    let mut status = None;
    for _ in 0..1200 {
        if let Some(st) = child.try_wait().unwrap() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("keyhole demo kept running although port {port} is taken");
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{status:?}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    drop(held);
}

#[test]
fn demo_refuses_the_same_port_twice() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["demo", "--https-port", "5999", "--http-port", "5999"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--https-port and --http-port are both 5999"),
        "{err}"
    );
}

#[test]
fn demo_help_lists_the_port_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["demo", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("--https-port <P>"), "{text}");
    assert!(text.contains("--http-port <P>"), "{text}");
}
