//! `demo`: a loopback-only server on the shipped endpoints and role capabilities (embedded in
//! the binary), with a throwaway account whose random password is printed, rules that admit
//! it, and the exact client commands to connect. Everything lives in a private temporary
//! directory removed at exit.
//!
//! The account logs in with Basic, and with NTLM through Negotiate (`[auth] negotiate`, `ntlm`,
//! no keytab: the demo has no Kerberos realm), so that clients that speak only NTLM
//! (evil-winrm-py, Ansible's `ansible_psrp_auth=ntlm`) connect too. Those clients, and a bare
//! `Enter-PSSession`, ask for the default configuration `Microsoft.PowerShell`: the demo serves
//! the Helpdesk endpoint under that name as well.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use rand::distributions::{Alphanumeric, DistString};

use crate::daemon::{self, DaemonError, Started};

/// The demo account's name.
pub const DEMO_USER: &str = "demo";

/// The endpoint clients ask for when they name none; the demo serves Helpdesk under it too.
pub const DEFAULT_CONFIGURATION: &str = "Microsoft.PowerShell";

/// A demo directory, removed when dropped.
pub struct DemoDir {
    pub dir: PathBuf,
    pub password: String,
    pub run_as: String,
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The account programs run as in the demo: `nobody` when keyhole is root (the shipped
/// endpoints name accounts a fresh machine does not have), else keyhole's own account.
fn demo_run_as() -> String {
    if nix::unistd::geteuid().is_root() {
        return "nobody".to_string();
    }
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "nobody".to_string())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Lay out the demo configuration in a fresh private directory.
/// `https`/`http` are listener addresses ("127.0.0.1:0" picks a free port).
pub fn prepare(https: &str, http: &str) -> Result<DemoDir, DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("keyhole-demo-{}", uuid::Uuid::new_v4()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 20);
    let run_as = demo_run_as();
    let demo = DemoDir {
        dir: dir.clone(),
        password: password.clone(),
        run_as: run_as.clone(),
    };
    for (rel, text) in crate::config::shipped::EXAMPLES {
        let text = if rel.starts_with("endpoints/") {
            let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| {
                DaemonError::Io(std::io::Error::other(format!("embedded {rel}: {e}")))
            })?;
            doc.insert("run_as", toml_edit::value(run_as.as_str()));
            doc.to_string()
        } else {
            text.to_string()
        };
        if *rel == "endpoints/Helpdesk.toml" {
            let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| {
                DaemonError::Io(std::io::Error::other(format!("embedded {rel}: {e}")))
            })?;
            doc.insert("name", toml_edit::value(DEFAULT_CONFIGURATION));
            doc.insert(
                "description",
                toml_edit::value(
                    "The Helpdesk endpoint under the name clients use when they name none",
                ),
            );
            write_private(
                &dir.join(format!("endpoints/{DEFAULT_CONFIGURATION}.toml")),
                &doc.to_string(),
            )?;
        }
        write_private(&dir.join(rel), &text)?;
    }
    let hash = crate::auth::hash_password(&password)
        .map_err(|e| DaemonError::Io(std::io::Error::other(e.to_string())))?;
    write_private(
        &dir.join("users.toml"),
        &format!(
            "[users.{DEMO_USER}]\npassword = \"{hash}\"\nnt_hash = \"{}\"\ngroups = [\"helpdesk\", \"acme-vendor\"]\n",
            crate::auth::ntlm::nt_hash_hex(&password)
        ),
    )?;
    write_private(
        &dir.join("authorization-rules.toml"),
        &format!(
            "[[rule]]\nid = 1\nname = \"demo account to every demo endpoint\"\nuser = \"{DEMO_USER}\"\ncomputer = \"*\"\nconfiguration = \"*\"\n"
        ),
    )?;
    write_private(
        &dir.join("keyhole.toml"),
        &format!(
            "computer_name = \"localhost\"\ncomputer_aliases = [\"127.0.0.1\"]\nwinrs_endpoint = \"Helpdesk\"\n\n[listener]\nhttps = \"{https}\"\nhttp = \"{http}\"\n\n[auth]\nmax_failed_logins = 20\nnegotiate = true\nntlm = true\nkeytab = \"\"\n"
        ),
    )?;
    Ok(demo)
}

/// The client snippets printed by `keyhole demo`.
pub fn snippets(demo: &DemoDir, s: &Started) -> String {
    let mut out = String::new();
    let pw = &demo.password;
    out.push_str("\nkeyhole demo — a loopback-only JEA endpoint server\n");
    out.push_str(&format!("  account:  {DEMO_USER}   password: {pw}\n"));
    out.push_str(&format!("  programs run as: {}\n", demo.run_as));
    out.push_str(&format!("  configuration:   {}\n", demo.dir.display()));
    if let Some(fp) = &s.fingerprint {
        out.push_str(&format!("  TLS certificate SHA-256: {fp}\n"));
    }
    if let Some(a) = s.https {
        let port = a.port();
        out.push_str("\npywinrm (WinRS, lands in the Helpdesk endpoint):\n");
        out.push_str(&format!(
            "  python3 -c \"import winrm; s = winrm.Session('https://127.0.0.1:{port}/wsman', auth=('{DEMO_USER}', '{pw}'), transport='basic', server_cert_validation='ignore'); r = s.run_cmd('Get-Process -Id 1'); print(r.status_code, r.std_out.decode(), r.std_err.decode())\"\n"
        ));
        out.push_str("\npypsrp (PSRP, endpoint Helpdesk):\n");
        out.push_str(&format!(
            "  python3 -c \"from pypsrp.client import Client; c = Client('127.0.0.1', port={port}, username='{DEMO_USER}', password='{pw}', ssl=True, cert_validation=False, auth='basic'); out, streams, had_errors = c.execute_ps('Get-Uptime', configuration_name='Helpdesk'); print(out, had_errors)\"\n"
        ));
        out.push_str("\nPowerShell 7 / Windows PowerShell:\n");
        out.push_str(&format!(
            "  $c = Get-Credential {DEMO_USER}\n  Enter-PSSession -ComputerName 127.0.0.1 -Port {port} -UseSSL -Authentication Basic -Credential $c -ConfigurationName Helpdesk -SessionOption (New-PSSessionOption -SkipCACheck -SkipCNCheck)\n"
        ));
    }
    if let Some(a) = s.http {
        let port = a.port();
        out.push_str(&format!("\nplain HTTP (loopback only): http://{a}/wsman\n"));
        out.push_str(
            "\nNTLM (Negotiate) over plain HTTP, every message encrypted (MS-WSMV), as on Windows' port 5985:\n",
        );
        out.push_str(&format!(
            "  pypsrp:  python3 -c \"from pypsrp.client import Client; c = Client('127.0.0.1', port={port}, username='{DEMO_USER}', password='{pw}', ssl=False, auth='ntlm'); out, streams, had_errors = c.execute_ps('Get-Uptime', configuration_name='Helpdesk'); print(out, had_errors)\"\n"
        ));
        out.push_str(&format!(
            "  pywinrm: python3 -c \"import winrm; s = winrm.Session('http://127.0.0.1:{port}/wsman', auth=('{DEMO_USER}', '{pw}'), transport='ntlm'); r = s.run_cmd('Get-Process -Id 1'); print(r.status_code, r.std_out.decode(), r.std_err.decode())\"\n"
        ));
        out.push_str(&format!(
            "  evil-winrm-py (lands in {DEFAULT_CONFIGURATION}, the Helpdesk roles):\n    evil-winrm-py -i 127.0.0.1 --port {port} -u {DEMO_USER} -p '{pw}'\n"
        ));
        out.push_str(&format!(
            "  Ansible (psrp connection, raw module):\n    ansible all -i 127.0.0.1, -c psrp -m raw -a 'Get-Uptime' -e ansible_user={DEMO_USER} -e ansible_password='{pw}' -e ansible_port={port} -e ansible_psrp_protocol=http -e ansible_psrp_auth=ntlm -e ansible_psrp_configuration_name=Helpdesk\n"
        ));
    }
    out.push_str("\nTry: Get-Command · Get-Service · Restart-Service cron · Get-Journal -Newest 5 · Get-DiskUsage /var · Invoke-Expression 'id' (refused)\nCtrl+C stops the server.\n");
    out
}

/// The ports `keyhole demo` tries when none is given (WinRM's).
pub const DEFAULT_HTTPS_PORT: u16 = 5986;
pub const DEFAULT_HTTP_PORT: u16 = 5985;

/// Lay out and serve one demo configuration on 127.0.0.1 with these ports (0: a free port).
fn serve_on(https: u16, http: u16) -> Result<(), DaemonError> {
    let demo = prepare(&format!("127.0.0.1:{https}"), &format!("127.0.0.1:{http}"))?;
    let path = demo.dir.join("keyhole.toml");
    let cfg = daemon::load(&path)?;
    daemon::serve(&path, cfg, |s| println!("{}", snippets(&demo, s)))
}

/// `keyhole demo [--https-port P] [--http-port P]`: the ports given (0 = a free port); a port
/// not given is WinRM's (5986/5985), or a free one when that is taken.
pub fn run(https_port: Option<u16>, http_port: Option<u16>) -> Result<(), DaemonError> {
    if let (Some(a), Some(b)) = (https_port, http_port) {
        if a != 0 && a == b {
            return Err(DaemonError::Io(std::io::Error::other(format!(
                "--https-port and --http-port are both {a}: give two different ports (or 0 for a free one)"
            ))));
        }
    }
    daemon::init_logging();
    let result = serve_on(
        https_port.unwrap_or(DEFAULT_HTTPS_PORT),
        http_port.unwrap_or(DEFAULT_HTTP_PORT),
    );
    let defaulted = https_port.is_none() || http_port.is_none();
    if let Err(DaemonError::Server(crate::http::ServerError::Bind { addr, .. })) = &result {
        if defaulted {
            // A WinRM port is taken: the ports not chosen on the command line become free ones
            // (a port that was chosen stays, and fails again if it was the one taken).
            tracing::info!(address = %addr, "port taken; starting again on free ports");
            return serve_on(https_port.unwrap_or(0), http_port.unwrap_or(0));
        }
    }
    result
}
