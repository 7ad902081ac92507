//! HTTPS listener: the self-signed certificate generated into state_directory (modes,
//! fingerprint, reuse), TLS requests, and client certificates chained to client_ca.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::wsman_common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use keyhole::http as server;
use keyhole::wsman::envelope::*;
use keyhole::wsman::shell::{Authenticate, Identity};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsman_common::*;

fn tls_client(
    server_cert: &CertificateDer<'static>,
    client: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cert.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((c, k)) => b.with_client_auth_cert(vec![c], k).unwrap(),
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_post(
    addr: SocketAddr,
    conn: &tokio_rustls::TlsConnector,
    auth: Option<&str>,
    body: &str,
) -> std::io::Result<HttpReply> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s = conn
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let mut head = format!(
        "POST /wsman HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(a) = auth {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    if out.is_empty() {
        return Err(std::io::Error::other("no reply"));
    }
    Ok(parse_http(&out))
}

fn pem_cert(path: &std::path::Path) -> CertificateDer<'static> {
    let data = std::fs::read(path).unwrap();
    let mut rd = data.as_slice();
    let c = rustls_pemfile::certs(&mut rd).next().unwrap().unwrap();
    c
}

#[tokio::test]
async fn a_client_that_keeps_its_session_resumes_it() {
    let gate = Arc::new(StaticGatekeeper::new("alice", "pw", &["WinRS"]));
    let s = start_with(
        gate,
        |rt| {
            rt.listener.https = "127.0.0.1:0".into();
            rt.listener.http = String::new();
        },
        Vec::new(),
    )
    .await;
    let cert = pem_cert(&s.state.path().join(server::SELF_SIGNED_CERT));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let addr = s.https.unwrap();
    let (_, x) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        let head = format!(
            "POST /wsman HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: {}\r\n\r\n",
            x.len(),
            basic("alice", "pw")
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(x.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        assert_eq!(
            parse_http(&out).status,
            200,
            "every request is still authenticated"
        );
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, vec![Some(Full), Some(Resumed), Some(Resumed)]);
    // Without the password, a resumed connection gets the 401 like any other.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(Resumed));
    let head = format!(
        "POST /wsman HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        x.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(x.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert_eq!(parse_http(&out).status, 401);
    let _ = s.shutdown().await;
}

#[tokio::test]
async fn self_signed_certificate_is_generated_once_and_served() {
    let gate = Arc::new(StaticGatekeeper::new("alice", "pw", &["WinRS"]));
    let s = start_with(
        gate.clone(),
        |rt| {
            rt.listener.https = "127.0.0.1:0".into();
            rt.listener.http = String::new();
            rt.state_directory = rt.state_directory.join("state");
        },
        Vec::new(),
    )
    .await;
    let dir = s.state.path().join("state");
    let key_mode = std::fs::metadata(dir.join(server::SELF_SIGNED_KEY))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let fp = server::self_signed_fingerprint(&dir).unwrap().unwrap();
    assert_eq!(s.fingerprint.as_deref(), Some(fp.as_str()));
    let cert = pem_cert(&dir.join(server::SELF_SIGNED_CERT));
    assert_eq!(server::certificate_fingerprint(cert.as_ref()), fp);

    let conn = tls_client(&cert, None);
    let (_, x) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    let r = tls_post(s.https.unwrap(), &conn, Some(&basic("alice", "pw")), &x)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(shell_id_of(&r).len() >= 32);
    assert!(r
        .xml()
        .find(NS_ADDRESSING, "Address")
        .unwrap()
        .text
        .starts_with("https://"));
    let _keep = s.shutdown().await;

    // A second start reuses the certificate.
    let mut rt = runtime(&dir);
    rt.listener.https = "127.0.0.1:0".into();
    rt.listener.http = String::new();
    let again = server::Server::bind(rt, gate).await.unwrap();
    assert_eq!(again.tls_fingerprint.as_deref(), Some(fp.as_str()));
}

/// Logs in whoever presents the expected client certificate.
struct CertGate {
    inner: Arc<StaticGatekeeper>,
    expected: [u8; 32],
    seen: Mutex<Vec<Option<[u8; 32]>>>,
}

impl Authenticate for CertGate {
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: SocketAddr,
        cert: Option<[u8; 32]>,
    ) -> Option<Identity> {
        self.seen.lock().unwrap().push(cert);
        if cert == Some(self.expected)
            && authorization
                == Some(
                    b"http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"
                        .as_slice(),
                )
        {
            return Some(Identity {
                user: "alice".into(),
                groups: Vec::new(),
            });
        }
        self.inner.authenticate(authorization, peer, cert)
    }
    fn challenges(&self) -> Vec<String> {
        self.inner.challenges()
    }
}

#[tokio::test]
async fn client_certificates_chained_to_client_ca_reach_the_gatekeeper() {
    // A CA and a client certificate it signs.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keyhole test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client = cp.signed_by(&client_key, &ca, &ca_key).unwrap();
    let expected: [u8; 32] = sha2::Sha256::digest(client.der().as_ref()).into();

    let tmp = tempfile::tempdir().unwrap();
    let ca_path = tmp.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let inner = Arc::new(StaticGatekeeper::new("alice", "pw", &["WinRS"]));
    let gate = Arc::new(CertGate {
        inner: inner.clone(),
        expected,
        seen: Mutex::new(Vec::new()),
    });
    let ca_str = ca_path.to_string_lossy().into_owned();
    let s = start_full(
        gate.clone(),
        inner,
        move |rt| {
            rt.listener.https = "127.0.0.1:0".into();
            rt.listener.http = String::new();
            rt.listener.client_ca = ca_str;
            rt.listener.require_client_certificate = true;
        },
        Vec::new(),
    )
    .await;
    let server_cert = pem_cert(&s.state.path().join(server::SELF_SIGNED_CERT));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der()));
    let with_cert = tls_client(&server_cert, Some((client.der().clone(), key)));
    let (_, x) = envelope(ACTION_CREATE, URI_CMD, None, None, CREATE_CMD_BODY);
    let mutual = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual";
    let r = tls_post(s.https.unwrap(), &with_cert, Some(mutual), &x)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gate.seen.lock().unwrap().last().copied().flatten(),
        Some(expected)
    );
    // A second connection resumes the TLS session (the client keeps it): the certificate
    // checked at the full handshake still reaches the gatekeeper.
    let r = tls_post(s.https.unwrap(), &with_cert, Some(mutual), &x)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gate.seen.lock().unwrap().last().copied().flatten(),
        Some(expected)
    );

    // Required: no certificate, no HTTP at all.
    let without = tls_client(&server_cert, None);
    let r = tls_post(s.https.unwrap(), &without, Some(&basic("alice", "pw")), &x).await;
    assert!(r.is_err() || r.as_ref().unwrap().status != 200);
    s.shutdown().await;
}

#[tokio::test]
async fn required_client_certificate_without_ca_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rt = runtime(tmp.path());
    rt.listener.https = "127.0.0.1:0".into();
    rt.listener.require_client_certificate = true;
    let err = server::Server::bind(rt, Arc::new(StaticGatekeeper::new("a", "b", &[])))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("client_ca"), "{err}");
}

#[tokio::test]
async fn configured_certificate_files_are_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(tmp.path().join("c.pem"), ck.cert.pem()).unwrap();
    std::fs::write(tmp.path().join("k.pem"), ck.key_pair.serialize_pem()).unwrap();
    let mut rt = runtime(tmp.path());
    rt.listener.https = "127.0.0.1:0".into();
    rt.listener.tls_certificate = tmp.path().join("c.pem").to_string_lossy().into_owned();
    rt.listener.tls_private_key = tmp.path().join("k.pem").to_string_lossy().into_owned();
    let s = server::Server::bind(rt.clone(), Arc::new(StaticGatekeeper::new("a", "b", &[])))
        .await
        .unwrap();
    assert_eq!(
        s.tls_fingerprint.as_deref(),
        Some(server::certificate_fingerprint(ck.cert.der().as_ref()).as_str())
    );
    assert!(!tmp.path().join(server::SELF_SIGNED_KEY).exists());
    rt.listener.tls_private_key = tmp
        .path()
        .join("missing.pem")
        .to_string_lossy()
        .into_owned();
    assert!(
        server::Server::bind(rt, Arc::new(StaticGatekeeper::new("a", "b", &[])))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_connection_still_in_its_tls_handshake_does_not_hold_up_shutdown() {
    // Browsers open spare connections they may never use; shutdown must not wait out
    // SHUTDOWN_GRACE (or the handshake timeout) for them.
    let gate = Arc::new(StaticGatekeeper::new("alice", "pw", &["WinRS"]));
    let s = start_with(
        gate,
        |rt| {
            rt.listener.https = "127.0.0.1:0".into();
            rt.listener.http = String::new();
        },
        Vec::new(),
    )
    .await;
    let idle = tokio::net::TcpStream::connect(s.https.unwrap())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let limit = server::SHUTDOWN_GRACE / 2;
    let done = tokio::time::timeout(limit, s.shutdown()).await;
    assert!(
        done.is_ok(),
        "shutdown waited for a connection that never finished its handshake"
    );
    drop(idle);
}
