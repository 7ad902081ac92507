//! The benchmark's HTTP client: hyper's HTTP/1.1 client over rustls (TLS 1.3, the server's
//! own certificate as the only trust anchor; no session resumption, as pywinrm/pypsrp connect,
//! except for the `*_resumed` figures, whose client keeps its TLS sessions across connections),
//! one connection per `Conn`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};

/// Errors are strings: the benchmark reports them and counts them, nothing more.
pub type Res<T> = Result<T, String>;

/// Where to connect and how: address, TLS settings, the Authorization header to send.
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub tls: tokio_rustls::TlsConnector,
    pub authorization: String,
}

/// A TLS client configuration that trusts exactly `cert` (a self-signed certificate for
/// `localhost`), speaks TLS 1.3 only and never resumes a session — or, with `resume`, keeps the
/// server's session tickets in memory and resumes with them.
pub fn tls_connector(
    cert: &CertificateDer<'static>,
    resume: bool,
) -> Res<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone())
        .map_err(|e| format!("trust anchor: {e}"))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(64)
    } else {
        rustls::client::Resumption::disabled()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// The first certificate of a PEM file.
pub fn pem_certificate(path: &std::path::Path) -> Res<CertificateDer<'static>> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = rustls_pemfile::certs(&mut data.as_slice())
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()));
    first
}

/// One kept-alive HTTPS connection.
pub struct Conn {
    /// The TLS handshake resumed a session.
    pub resumed: bool,
    send: SendRequest<Full<Bytes>>,
    authorization: String,
    host: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Conn {
    /// TCP connect, TLS handshake, HTTP/1.1 handshake.
    pub async fn open(t: &Target) -> Res<Conn> {
        let tcp = tokio::net::TcpStream::connect(t.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", t.addr))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = t
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {}: {e}", t.addr))?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            resumed,
            send,
            authorization: t.authorization.clone(),
            host: format!("localhost:{}", t.addr.port()),
            task,
        })
    }

    /// POST `body` to /wsman and read the whole reply.
    pub async fn post(&mut self, body: Bytes) -> Res<Reply> {
        let req = hyper::Request::post("/wsman")
            .header(hyper::header::HOST, &self.host)
            .header(
                hyper::header::CONTENT_TYPE,
                "application/soap+xml;charset=UTF-8",
            )
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        self.send
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the reply: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// POST and require HTTP 200.
    pub async fn post_ok(&mut self, body: Bytes) -> Res<Reply> {
        let r = self.post(body).await?;
        if r.status != 200 {
            return Err(format!("HTTP {}: {}", r.status, excerpt(&r.text())));
        }
        Ok(r)
    }
}

/// The first 300 characters of a reply, for error messages.
pub fn excerpt(s: &str) -> String {
    s.chars().take(300).collect()
}
