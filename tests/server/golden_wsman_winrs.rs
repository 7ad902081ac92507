//! Golden tests: replay every client request recorded against Windows Server 2016 (pypsrp's
//! WinRS recordings in tests/golden/pypsrp-raw) into keyhole and check that each
//! reply carries the elements and attributes the recorded Windows reply carries (the same
//! Action, RelatesTo = the request's MessageID, the same fault subcode for faults).
//!
//! Recorded ShellIds/CommandIds are mapped to the ones keyhole hands out. Two things depend on
//! what the command does and are compared across the conversation instead of per reply: the
//! `rsp:Stream` elements (data and End markers) and Windows' `w:TimedOut` replies (keyhole's
//! commands may already be finished when Windows' were still running).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::wsman_common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use keyhole::wsman::envelope::*;
use keyhole::wsman::xml::{self, Element};
use wsman_common::*;

struct Exchange {
    request: String,
    response: String,
}

/// The recordings, kept in the repository (tests/golden/README.md says where they come from).
fn captures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pypsrp-raw")
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => v.to_string(),
    }
}

/// The recordings are YAML lists of one-line `request:` / `response:` scalars (plain or
/// single-quoted); that is all this reads.
fn load(name: &str) -> Vec<Exchange> {
    let path = captures_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut req: Option<String> = None;
    for line in text.lines() {
        let l = line.trim_start().trim_start_matches("- ");
        if let Some(v) = l.strip_prefix("request: ") {
            req = Some(unquote(v));
        } else if let Some(v) = l.strip_prefix("response: ") {
            out.push(Exchange {
                request: req.take().expect("response before request"),
                response: unquote(v),
            });
        }
    }
    assert!(!out.is_empty(), "{name}: no exchanges");
    out
}

fn header_text(t: &Element, local: &str) -> Option<String> {
    t.child(NS_SOAP, "Header")?
        .children
        .iter()
        .find(|c| c.local == local)
        .map(|c| c.text.clone())
}

fn fault_subcode(t: &Element) -> Option<String> {
    let f = t.find(NS_SOAP, "Fault")?;
    f.find(NS_SOAP, "Subcode")
        .and_then(|s| s.child(NS_SOAP, "Value"))
        .map(|v| v.text.trim().to_string())
}

/// (namespace, local name, attribute names) of every element, minus those that depend on
/// what ran (streams) or that keyhole does not send (Windows' ActivityId).
fn shape(t: &Element, out: &mut BTreeSet<(String, String, Vec<String>)>) {
    if t.is(NS_SHELL, "Stream") || t.is(NS_WSMV, "ActivityId") {
        return;
    }
    let mut attrs: Vec<String> = t.attrs.iter().map(|a| a.local.clone()).collect();
    attrs.sort();
    out.insert((t.ns.clone().unwrap_or_default(), t.local.clone(), attrs));
    for c in &t.children {
        shape(c, out);
    }
}

fn ends(t: &Element, out: &mut BTreeSet<String>) {
    if t.is(NS_SHELL, "Stream") && t.attr("End") == Some("true") {
        out.insert(t.attr("Name").unwrap_or("").to_string());
    }
    for c in &t.children {
        ends(c, out);
    }
}

fn selector(t: &Element) -> Option<String> {
    t.find(NS_WSMAN, "Selector")
        .filter(|s| s.attr("Name") == Some("ShellId"))
        .map(|s| s.text.clone())
}

async fn replay(name: &str) {
    let gate = Arc::new(StaticGatekeeper::new("vagrant", "vagrant", &["WinRS"]));
    let s = start(gate).await;
    let auth = basic("vagrant", "vagrant");
    let mut ids: HashMap<String, String> = HashMap::new();
    let (mut want_ends, mut got_ends) = (BTreeSet::new(), BTreeSet::new());
    let mut compared = 0;
    for (i, ex) in load(name).iter().enumerate() {
        let mut request = ex.request.clone();
        for (theirs, ours) in &ids {
            request = request.replace(theirs.as_str(), ours);
        }
        let req_tree = xml::parse(request.as_bytes()).unwrap();
        let message_id = header_text(&req_tree, "MessageID").unwrap();
        let action = header_text(&req_tree, "Action").unwrap();
        let recorded = xml::parse(ex.response.as_bytes()).unwrap();
        let reply = post(s.addr, &auth, &request).await;
        let ctx = format!(
            "{name} #{i} {action}\nrequest: {request}\nrecorded: {}\nkeyhole: {}",
            ex.response,
            reply.text()
        );
        let ours = xml::parse(&reply.body).unwrap_or_else(|e| panic!("{ctx}\nnot XML: {e}"));
        assert_eq!(
            header_text(&ours, "RelatesTo").as_deref(),
            Some(message_id.as_str()),
            "{ctx}"
        );
        ends(&recorded, &mut want_ends);
        ends(&ours, &mut got_ends);
        match fault_subcode(&recorded) {
            Some(sub) if sub == "w:TimedOut" => {
                // Windows' command was still running; keyhole's may have finished.
                assert!(
                    reply.status == 200 || fault_subcode(&ours).as_deref() == Some("w:TimedOut"),
                    "{ctx}"
                );
                continue;
            }
            Some(sub) => {
                assert_eq!(reply.status, 500, "{ctx}");
                assert_eq!(fault_subcode(&ours), Some(sub), "{ctx}");
                let code = |t: &Element| {
                    t.find(NS_WSMANFAULT, "WSManFault")
                        .and_then(|f| f.attr("Code"))
                        .map(str::to_string)
                };
                assert_eq!(code(&ours), code(&recorded), "{ctx}");
            }
            None => {
                assert_eq!(reply.status, 200, "{ctx}");
                assert_eq!(
                    header_text(&ours, "Action"),
                    header_text(&recorded, "Action"),
                    "{ctx}"
                );
            }
        }
        let (mut want, mut got) = (BTreeSet::new(), BTreeSet::new());
        shape(&recorded, &mut want);
        shape(&ours, &mut got);
        let missing: Vec<_> = want.difference(&got).collect();
        assert!(
            missing.is_empty(),
            "{ctx}\nmissing in keyhole's reply: {missing:?}"
        );
        compared += 1;
        // Learn the ids keyhole chose for the recorded ones.
        if action == ACTION_CREATE {
            ids.insert(selector(&recorded).unwrap(), selector(&ours).unwrap());
        }
        if action == ACTION_COMMAND {
            let cid = |t: &Element| {
                t.find(NS_SHELL, "CommandId")
                    .map(|c| c.text.clone())
                    .unwrap()
            };
            ids.insert(cid(&recorded), cid(&ours));
        }
    }
    assert!(compared > 0, "{name}: nothing compared");
    assert!(
        want_ends.is_subset(&got_ends),
        "{name}: End streams {want_ends:?} expected, keyhole sent {got_ends:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn client_execute_cmd() {
    replay("test_client_execute_cmd.yml").await;
}

#[tokio::test]
async fn winrs_standard() {
    replay("test_winrs_standard.yml").await;
}

#[tokio::test]
async fn winrs_stderr_rc() {
    replay("test_winrs_stderr_rc.yml").await;
}

#[tokio::test]
async fn winrs_send() {
    replay("test_winrs_send.yml").await;
}

#[tokio::test]
async fn winrs_environment() {
    replay("test_winrs_environment.yml").await;
}

#[tokio::test]
async fn winrs_bad_cmd_id() {
    replay("test_winrs_bad_cmd_id.yml").await;
}

#[tokio::test]
async fn winrs_operation_timeout() {
    replay("test_winrs_operation_timeout.yml").await;
}

#[test]
fn every_winrs_recording_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(captures_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("test_winrs_") && n.ends_with(".yml"))
        .collect();
    names.sort();
    let covered = [
        "test_winrs_bad_cmd_id.yml",
        "test_winrs_environment.yml",
        "test_winrs_operation_timeout.yml",
        "test_winrs_send.yml",
        "test_winrs_standard.yml",
        "test_winrs_stderr_rc.yml",
    ];
    assert_eq!(
        names,
        covered.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
}
