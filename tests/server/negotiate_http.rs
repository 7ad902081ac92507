//! Negotiate on the listener (issue 12 phase B), in process with the real gates: multi-leg NTLM
//! exchanges on one keep-alive connection, message encryption over plain HTTP (MS-WSMV
//! `multipart/encrypted`), the HTTP listener that admits only encrypted Negotiate, and the one
//! 401 every refusal gets — byte for byte the same as Basic's for a wrong password.
//!
//! The client side is keyhole's own NTLMv2 client (`auth::ntlm::client`, exactly what the
//! acceptor accepts); the real clients (pypsrp, pywinrm, pyspnego with a real KDC) are driven
//! against the real `keyhole serve` in tests/interop/test_negotiate.py.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use keyhole::auth::encryption::{self, PROTOCOL_SPNEGO};
use keyhole::auth::negotiate::SecurityContext;
use keyhole::auth::ntlm::{self, client};
use keyhole::gates::Gates;
use keyhole::http::{Server, ServerRuntime};
use keyhole::wsman::envelope::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wsman_common::{basic, envelope, HttpReply};

const ALICE_PW: &str = "Alice-pw-1";
const NORULE_PW: &str = "Norule-pw-1";
const SOAP_CT: &str = "application/soap+xml;charset=UTF-8";

/// A configuration directory: Negotiate with NTLM (no keytab), alice (group helpdesk, admitted
/// by a rule), norule (no rule admits her), both with NT hashes; `http` as the HTTP listener.
fn configure(dir: &Path, http: &str) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    w(
        "keyhole.toml",
        &format!(
            "computer_name = \"testhost\"\n[listener]\nhttps = \"127.0.0.1:0\"\nhttp = \"{http}\"\nip_allow = [\"127.0.0.0/8\"]\n\n[auth]\nnegotiate = true\nntlm = true\nkeytab = \"\"\nmax_failed_logins = 1000\n"
        ),
    );
    let user = |name: &str, pw: &str| {
        format!(
            "[users.{name}]\npassword = \"{}\"\nnt_hash = \"{}\"\ngroups = [\"helpdesk\"]\n",
            keyhole::auth::hash_password(pw).unwrap(),
            ntlm::nt_hash_hex(pw)
        )
    };
    w(
        "users.toml",
        &format!("{}\n{}", user("alice", ALICE_PW), user("norule", NORULE_PW)),
    );
    w(
        "authorization-rules.toml",
        "[[rule]]\nid = 1\nname = \"alice\"\nuser = \"alice\"\ncomputer = \"*\"\nconfiguration = \"*\"\n",
    );
    w(
        "endpoints/E.toml",
        &format!("name = \"E\"\nrun_as = {me:?}\n[[role]]\nuser = \"alice\"\nrole_capabilities = [\"R\"]\n"),
    );
    w(
        "role-capabilities/R.toml",
        "visible_cmdlets = [\"Get-Date\"]\n",
    );
}

struct Running {
    http: SocketAddr,
    gates: Arc<Gates>,
    config: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start(http: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    configure(dir.path(), http);
    let cfg = keyhole::check::load(&dir.path().join("keyhole.toml"))
        .unwrap_or_else(|d| panic!("{:#?}", d.iter().map(|d| &d.rendered).collect::<Vec<_>>()));
    let rt = ServerRuntime::from_config(&cfg.server, &cfg.base_dir);
    let gates = Arc::new(Gates::new(cfg).unwrap());
    let server = Server::bind(rt, gates.clone()).await.unwrap();
    let port = server.http_addr.unwrap().port();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Running {
        http: SocketAddr::from(([127, 0, 0, 1], port)),
        gates,
        config: dir.path().join("keyhole.toml"),
        stop,
        task,
        _dir: dir,
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    s: TcpStream,
    addr: SocketAddr,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            s: TcpStream::connect(addr).await.unwrap(),
            addr,
        }
    }

    async fn post(&mut self, auth: Option<&str>, ct: Option<&str>, body: &[u8]) -> HttpReply {
        let mut head = format!(
            "POST /wsman HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: Keep-Alive\r\n",
            self.addr,
            body.len()
        );
        if let Some(a) = auth {
            head.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(c) = ct {
            head.push_str(&format!("Content-Type: {c}\r\n"));
        }
        head.push_str("\r\n");
        self.s.write_all(head.as_bytes()).await.unwrap();
        self.s.write_all(body).await.unwrap();
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> HttpReply {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = self.s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = buf[end + 4..].to_vec();
        while body.len() < len {
            let n = self.s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        HttpReply {
            status,
            headers,
            body,
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The token of the one `WWW-Authenticate: NTLM|Negotiate <b64>` header.
fn token(r: &HttpReply) -> Vec<u8> {
    let v = r.header_values("www-authenticate");
    assert_eq!(v.len(), 1, "{v:?}");
    let (_, t) = v[0].split_once(' ').unwrap();
    base64::engine::general_purpose::STANDARD.decode(t).unwrap()
}

/// A request that needs an authenticated caller and no session: Delete of a shell that does
/// not exist (a WS-Man fault once authenticated, the 401 otherwise).
fn delete_nothing() -> String {
    envelope(
        ACTION_DELETE,
        URI_CMD,
        Some("00000000-0000-4000-8000-000000000000"),
        None,
        "",
    )
    .1
}

/// Raw NTLM under `scheme` as user/password on `c`, the first leg carrying `body`; returns the
/// last reply and the client's sealing session.
async fn ntlm_login(
    c: &mut Conn,
    scheme: &str,
    user: &str,
    pw: &str,
    body: &[u8],
) -> (HttpReply, ntlm::Session) {
    let neg = client::negotiate();
    let ct = (!body.is_empty()).then_some(SOAP_CT);
    let r = c
        .post(Some(&format!("{scheme} {}", b64(&neg))), ct, body)
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let chal = token(&r);
    let (auth, session) =
        client::authenticate(&neg, &chal, user, "", &ntlm::nt_hash(pw), None).unwrap();
    let r = c
        .post(Some(&format!("{scheme} {}", b64(&auth))), ct, body)
        .await;
    (r, session)
}

/// Status, headers (less Date) and body: what must not differ between two refusals.
fn shape(r: &HttpReply) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    (r.status, h, r.body.clone())
}

#[tokio::test]
async fn ntlm_over_http_with_encryption_on_one_connection() {
    let s = start("127.0.0.1:0").await;
    // The generic 401 offers Negotiate beside Basic (no keytab: no Kerberos line).
    let mut c = Conn::open(s.http).await;
    let r = c.post(None, None, b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header_values("www-authenticate"),
        ["Negotiate", "Basic realm=\"keyhole\""]
    );
    // Two legs on the same connection, the empty POST clients set up encryption with: 200.
    let (r, session) = ntlm_login(&mut c, "Negotiate", "alice", ALICE_PW, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    let mut ctx = SecurityContext::Ntlm(Box::new(session));
    // An encrypted request without Authorization rides the connection; the reply is encrypted.
    let soap = delete_nothing();
    let body = encryption::encrypt_body(&mut ctx, PROTOCOL_SPNEGO, soap.as_bytes()).unwrap();
    let ct = encryption::content_type(PROTOCOL_SPNEGO);
    let r = c.post(None, Some(&ct), &body).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.header_values("content-type"), std::slice::from_ref(&ct));
    assert!(!r.text().contains("Envelope"), "the reply is not encrypted");
    let plain = encryption::decrypt_body(&mut ctx, &r.body, 1 << 20).unwrap();
    let text = String::from_utf8(plain).unwrap();
    assert!(text.contains("InvalidSelectors"), "{text}");
    // Twice, so that the sealing streams stay in step.
    let body = encryption::encrypt_body(&mut ctx, PROTOCOL_SPNEGO, soap.as_bytes()).unwrap();
    let r = c.post(None, Some(&ct), &body).await;
    assert_eq!(r.status, 500);
    let plain = encryption::decrypt_body(&mut ctx, &r.body, 1 << 20).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("InvalidSelectors"));
    // On loopback a plaintext body is fine too, and its reply is plaintext.
    let r = c.post(None, Some(SOAP_CT), soap.as_bytes()).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("InvalidSelectors"), "{}", r.text());
    // A tampered body is refused with the 401 and the connection must authenticate again.
    let mut body = encryption::encrypt_body(&mut ctx, PROTOCOL_SPNEGO, soap.as_bytes()).unwrap();
    let i = body.len() - 30;
    body[i] ^= 1;
    let r = c.post(None, Some(&ct), &body).await;
    assert_eq!(r.status, 401);
    let r = c.post(None, Some(SOAP_CT), soap.as_bytes()).await;
    assert_eq!(r.status, 401, "the connection is no longer authenticated");
    // Another connection is not authenticated by this one.
    let mut other = Conn::open(s.http).await;
    let r = other.post(None, Some(SOAP_CT), soap.as_bytes()).await;
    assert_eq!(r.status, 401);
    s.shutdown().await;
}

#[tokio::test]
async fn ntlm_with_the_request_in_every_leg() {
    // pypsrp and pywinrm over HTTPS (no encryption) resend the request with each leg.
    let s = start("127.0.0.1:0").await;
    let mut c = Conn::open(s.http).await;
    let soap = delete_nothing();
    for scheme in ["NTLM", "Negotiate"] {
        let (r, _) = ntlm_login(&mut c, scheme, "ALICE", ALICE_PW, soap.as_bytes()).await;
        assert_eq!(r.status, 500, "{scheme}: {}", r.text());
        assert!(r.text().contains("InvalidSelectors"), "{}", r.text());
    }
    // Basic on the same connection works per request, and ends the Negotiate authentication.
    let r = c
        .post(
            Some(&basic("alice", ALICE_PW)),
            Some(SOAP_CT),
            soap.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 500);
    let r = c.post(None, Some(SOAP_CT), soap.as_bytes()).await;
    assert_eq!(r.status, 401);
    s.shutdown().await;
}

#[tokio::test]
async fn every_negotiate_refusal_is_basics_401() {
    let s = start("127.0.0.1:0").await;
    let soap = delete_nothing();
    let mut c = Conn::open(s.http).await;
    let reference = c
        .post(
            Some(&basic("alice", "wrong")),
            Some(SOAP_CT),
            soap.as_bytes(),
        )
        .await;
    assert_eq!(reference.status, 401);
    let want = shape(&reference);
    let mut got = Vec::new();
    for (what, user, pw) in [
        ("wrong NT hash", "alice", "wrong"),
        ("unknown user", "mallory", "whatever"),
        ("user no rule admits", "norule", NORULE_PW),
    ] {
        for scheme in ["Negotiate", "NTLM"] {
            let mut c = Conn::open(s.http).await;
            let (r, _) = ntlm_login(&mut c, scheme, user, pw, soap.as_bytes()).await;
            got.push((format!("{what} ({scheme})"), shape(&r)));
            // The connection stays usable: Basic with the right password still gets in.
            let r = c
                .post(
                    Some(&basic("alice", ALICE_PW)),
                    Some(SOAP_CT),
                    soap.as_bytes(),
                )
                .await;
            assert_eq!(r.status, 500, "{what}: {}", r.text());
        }
    }
    // A malformed token, and a bare scheme.
    let mut c = Conn::open(s.http).await;
    let r = c
        .post(Some("Negotiate !!!"), Some(SOAP_CT), soap.as_bytes())
        .await;
    got.push(("malformed token".into(), shape(&r)));
    let r = c
        .post(
            Some(&format!("Negotiate {}", b64(b"garbage"))),
            Some(SOAP_CT),
            soap.as_bytes(),
        )
        .await;
    got.push(("garbage token".into(), shape(&r)));
    // Basic for a user no rule admits (the reference for gate 3 refusals at gate 2).
    let r = c
        .post(
            Some(&basic("norule", NORULE_PW)),
            Some(SOAP_CT),
            soap.as_bytes(),
        )
        .await;
    got.push(("Basic, no rule".into(), shape(&r)));
    for (what, g) in got {
        assert_eq!(g, want, "{what} differs from Basic's wrong password");
    }
    assert_eq!(
        reference.header_values("www-authenticate"),
        ["Negotiate", "Basic realm=\"keyhole\""]
    );
    s.shutdown().await;
}

#[tokio::test]
async fn an_http_listener_off_loopback_admits_only_encrypted_negotiate() {
    // 0.0.0.0 is not loopback and allow_unencrypted is off: accepted because Negotiate is on.
    let s = start("0.0.0.0:0").await;
    let soap = delete_nothing();
    let mut c = Conn::open(s.http).await;
    let reference = c
        .post(
            Some(&basic("alice", "wrong")),
            Some(SOAP_CT),
            soap.as_bytes(),
        )
        .await;
    assert_eq!(reference.status, 401);
    // Basic with the right password: the same 401.
    let r = c
        .post(
            Some(&basic("alice", ALICE_PW)),
            Some(SOAP_CT),
            soap.as_bytes(),
        )
        .await;
    assert_eq!(
        shape(&r),
        shape(&reference),
        "Basic over plain HTTP off loopback"
    );
    // Negotiate with the request in plaintext: the exchange completes, the body is refused.
    let (r, _) = ntlm_login(&mut c, "Negotiate", "alice", ALICE_PW, soap.as_bytes()).await;
    assert_eq!(
        shape(&r),
        shape(&reference),
        "an unencrypted Negotiate request"
    );
    // Encrypted: served.
    let mut c = Conn::open(s.http).await;
    let (r, session) = ntlm_login(&mut c, "Negotiate", "alice", ALICE_PW, b"").await;
    assert_eq!(r.status, 200);
    let mut ctx = SecurityContext::Ntlm(Box::new(session));
    let ct = encryption::content_type(PROTOCOL_SPNEGO);
    let body = encryption::encrypt_body(&mut ctx, PROTOCOL_SPNEGO, soap.as_bytes()).unwrap();
    let r = c.post(None, Some(&ct), &body).await;
    assert_eq!(r.status, 500);
    let plain = encryption::decrypt_body(&mut ctx, &r.body, 1 << 20).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("InvalidSelectors"));
    // Then a plaintext body on the authenticated connection: refused, and authentication ends.
    let r = c.post(None, Some(SOAP_CT), soap.as_bytes()).await;
    assert_eq!(
        shape(&r),
        shape(&reference),
        "a plaintext body after encryption"
    );
    let body = encryption::encrypt_body(&mut ctx, PROTOCOL_SPNEGO, soap.as_bytes()).unwrap();
    let r = c.post(None, Some(&ct), &body).await;
    assert_eq!(r.status, 401);
    s.shutdown().await;
}

/// A reload rebuilds Negotiate's settings; when they cannot be built the reload is refused and
/// everything stays as it was (a bad configuration never replaces a good one).
#[test]
fn a_reload_that_breaks_negotiate_keeps_the_running_configuration() {
    use keyhole::wsman::shell::Authenticate as _;
    let dir = tempfile::tempdir().unwrap();
    configure(dir.path(), "127.0.0.1:0");
    let path = dir.path().join("keyhole.toml");
    let gates = Gates::new(keyhole::check::load(&path).unwrap()).unwrap();
    assert_eq!(gates.challenges(), ["Negotiate", "Basic realm=\"keyhole\""]);
    // A keytab that is not there (it vanished between `check` and the reload).
    let mut broken = keyhole::check::load(&path).unwrap();
    broken.server.auth.keytab = dir.path().join("gone.keytab").display().to_string();
    broken.server.computer_name = "other".into();
    let e = gates.reload(broken).unwrap_err();
    assert!(e.contains("keytab"), "{e}");
    assert_eq!(gates.config().server.computer_name, "testhost");
    assert_eq!(gates.challenges(), ["Negotiate", "Basic realm=\"keyhole\""]);
    // Negotiate switched off by a reload: the 401 no longer offers it.
    let mut off = keyhole::check::load(&path).unwrap();
    off.server.auth.negotiate = false;
    off.server.auth.ntlm = false;
    gates.reload(off).unwrap();
    assert_eq!(gates.challenges(), ["Basic realm=\"keyhole\""]);
}

/// A connection Negotiate authenticated is re-checked on every request that rides it: disabling
/// the account (a reload) ends it, and so does a rules change that no longer admits the user.
#[tokio::test]
async fn a_disabled_account_or_a_removed_rule_ends_an_authenticated_connection() {
    let s = start("127.0.0.1:0").await;
    let soap = delete_nothing();
    for change in ["disable alice", "remove her rule"] {
        let mut c = Conn::open(s.http).await;
        let (r, _) = ntlm_login(&mut c, "Negotiate", "alice", ALICE_PW, soap.as_bytes()).await;
        assert_eq!(r.status, 500, "{}", r.text());
        let r = c.post(None, Some(SOAP_CT), soap.as_bytes()).await;
        assert_eq!(r.status, 500, "the connection is authenticated");
        let mut cfg = keyhole::check::load(&s.config).unwrap();
        match change {
            "disable alice" => cfg.users.users.get_mut("alice").unwrap().disabled = true,
            _ => cfg.rules.rules.clear(),
        }
        s.gates.reload(cfg).unwrap();
        let r = c.post(None, Some(SOAP_CT), soap.as_bytes()).await;
        assert_eq!(r.status, 401, "{change}: the connection still rides");
        // Back as it was: the connection must authenticate again, and then it works.
        s.gates
            .reload(keyhole::check::load(&s.config).unwrap())
            .unwrap();
        let r = c.post(None, Some(SOAP_CT), soap.as_bytes()).await;
        assert_eq!(r.status, 401, "{change}: the authentication was dropped");
        let (r, _) = ntlm_login(&mut c, "Negotiate", "alice", ALICE_PW, soap.as_bytes()).await;
        assert_eq!(r.status, 500, "{change}: {}", r.text());
    }
    s.shutdown().await;
}
