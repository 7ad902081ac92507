//! A test-only WS-Man server for the python interop tests (tests/interop/): keyhole's `serve`
//! with the fixed-account StaticGatekeeper on 127.0.0.1. Prints
//! `listening http=ADDR https=ADDR fingerprint=FP` once bound, serves until stdin closes.
//!
//! Usage: wsman_testserver [--http PORT] [--https PORT] [--user NAME] [--password PW]
//!        [--max-envelope-kb N] [--grant CMDLET]... [--grant-external PATH]...
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use keyhole::capability::{CommandGrant, ExternalGrant, ParamsGrant};
use keyhole::config::{ExternalCommandDef, Positive, ServerConfig};
use keyhole::server::{Server, ServerRuntime};
use keyhole::wsman::testing::StaticGatekeeper;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut http, mut https) = (String::from("0"), String::from("0"));
    let (mut user, mut password) = (
        String::from("keyhole"),
        String::from("keyhole-test-password"),
    );
    let mut envelope_kb = 500u64;
    let mut cmdlets = BTreeMap::new();
    let mut external = BTreeMap::new();
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--http" => http = val()?,
            "--https" => https = val()?,
            "--user" => user = val()?,
            "--password" => password = val()?,
            "--max-envelope-kb" => envelope_kb = val()?.parse()?,
            "--grant" => {
                let name = val()?;
                cmdlets.insert(
                    name.to_lowercase(),
                    CommandGrant {
                        name,
                        params: ParamsGrant::All,
                    },
                );
            }
            "--grant-external" => {
                let path = val()?;
                let def = ExternalCommandDef {
                    path: path.clone(),
                    arguments: vec!["[0-9]+".into()],
                    timeout: None,
                    capabilities: Vec::new(),
                    environment: BTreeMap::new(),
                    allow_unsafe: false,
                    synopsis: String::new(),
                };
                external.insert(path, ExternalGrant { def });
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let state = tempfile::tempdir()?;
    let mut cfg = ServerConfig {
        computer_name: "localhost".into(),
        winrs_endpoint: "WinRS".into(),
        ..Default::default()
    };
    cfg.listener.http = if http == "off" {
        String::new()
    } else {
        format!("127.0.0.1:{http}")
    };
    cfg.listener.https = if https == "off" {
        String::new()
    } else {
        format!("127.0.0.1:{https}")
    };
    cfg.limits.max_envelope_size_kb = Positive(envelope_kb);
    let rt = ServerRuntime::from_config(&cfg, state.path());
    let mut gate = StaticGatekeeper::new(&user, &password, &["WinRS"]);
    gate.capability.cmdlets = cmdlets;
    gate.capability.external = external;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server = Server::bind(rt, Arc::new(gate)).await?;
        let show = |a: Option<std::net::SocketAddr>| {
            a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
        };
        println!(
            "listening http={} https={} fingerprint={}",
            show(server.http_addr),
            show(server.https_addr),
            server.tls_fingerprint.clone().unwrap_or_default()
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            let _ = tx.send(());
        });
        server
            .run(async {
                let _ = rx.await;
            })
            .await?;
        anyhow::Ok(())
    })?;
    drop(state);
    Ok(())
}
