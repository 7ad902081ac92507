//! `server`: the HTTPS/HTTP listeners in front of the WS-Man service (gate 1: TLS, client
//! certificates, IP allow list, loopback-only plaintext), authentication via the [`Gatekeeper`]
//! (gates 2–4, every refusal the same 401), request limits, and graceful shutdown.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::{LimitsConfig, ListenerConfig, ServerConfig};
use crate::engine;
use crate::wsman::fault::WsmanError;
use crate::wsman::service::{Reply, ServiceConfig, ShellFactory, WsmanService};

/// Time a client has to send the request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to send the request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// An oversized body is read and discarded up to this many times the limit (so that the
/// client can read the fault), then the connection is closed.
pub const OVERSIZE_DRAIN_FACTOR: usize = 8;
/// How often idle shells are looked for.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// Connections allowed per configured concurrent user.
pub const CONNECTIONS_PER_USER: usize = 4;

pub use crate::config::listener::{SELF_SIGNED_CERT, SELF_SIGNED_KEY};

/// Who the caller is, after gate 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// What gates 3 and 4 grant: an engine session for one endpoint, and its limits.
pub struct SessionGrant {
    pub session: engine::Session,
    pub endpoint: String,
    /// The user's shell quota (`[limits] max_shells_per_user`).
    pub max_shells: usize,
    /// Shells idle this long are closed (endpoint `idle_timeout` or `[limits]`).
    pub idle_timeout: Duration,
    /// Dropped when the shell built on this grant is dropped: release per-user session slots,
    /// close transcripts, write the audit "session end" there.
    pub guard: Option<Box<dyn Send>>,
}

/// Gates 2–4, implemented by the integrator over auth, gateway, capability and audit.
///
/// Only Create opens a session (gates 3–4); every other operation needs only gate 2, and an
/// authenticated caller gets WS-Man faults (e.g. InvalidSelectors) where an unauthenticated
/// one gets the 401. So that a fault never tells a stranger its password was right,
/// `authenticate` should also refuse (None) a user whom no gateway rule admits to any endpoint.
pub trait Gatekeeper: Send + Sync + 'static {
    /// Gate 2 (CPU-heavy: called on a blocking thread). None → the generic 401.
    fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: SocketAddr,
        client_cert_sha256: Option<[u8; 32]>,
    ) -> Option<Identity>;
    /// Gates 3 and 4 for this endpoint name (WinRS: the configured `winrs_endpoint`; PSRP: the
    /// configuration name in the resource URI). Called on a blocking thread. None → the same 401.
    fn open_session(&self, id: &Identity, endpoint: &str, peer: SocketAddr)
        -> Option<SessionGrant>;
    /// `WWW-Authenticate` header values, e.g. `Basic realm="WSMAN"`.
    fn challenges(&self) -> Vec<String>;
}

/// Errors that keep the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("keyhole.toml [listener]: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "cannot listen on {addr}: {source}; is another process (WinRM, keyhole) using the port?"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the server runs with (from `keyhole.toml`, paths already resolved).
#[derive(Debug, Clone)]
pub struct ServerRuntime {
    pub computer_name: String,
    pub computer_aliases: Vec<String>,
    pub winrs_endpoint: String,
    pub state_directory: PathBuf,
    pub listener: ListenerConfig,
    pub limits: LimitsConfig,
}

impl ServerRuntime {
    /// Build from the server configuration, resolving relative paths against `base_dir`.
    pub fn from_config(cfg: &ServerConfig, base_dir: &Path) -> ServerRuntime {
        let resolve = |p: &str| -> String {
            if p.is_empty() || Path::new(p).is_absolute() {
                p.to_string()
            } else {
                base_dir.join(p).to_string_lossy().into_owned()
            }
        };
        let mut listener = cfg.listener.clone();
        listener.tls_certificate = resolve(&listener.tls_certificate);
        listener.tls_private_key = resolve(&listener.tls_private_key);
        listener.client_ca = resolve(&listener.client_ca);
        let computer_name = if cfg.computer_name.is_empty() {
            local_hostname()
        } else {
            cfg.computer_name.clone()
        };
        ServerRuntime {
            computer_name,
            computer_aliases: cfg.computer_aliases.clone(),
            winrs_endpoint: cfg.winrs_endpoint.clone(),
            state_directory: PathBuf::from(resolve(&cfg.state_directory)),
            listener,
            limits: cfg.limits.clone(),
        }
    }
}

/// The machine's host name (for the certificate and fault `Machine`).
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// `AB:CD:...` SHA-256 of a DER certificate, as administrators compare fingerprints.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the self-signed certificate in `state_directory`, if one was generated.
pub fn self_signed_fingerprint(state_directory: &Path) -> Result<Option<String>, ServerError> {
    let path = state_directory.join(SELF_SIGNED_CERT);
    if !path.exists() {
        return Ok(None);
    }
    let certs = load_certs(&path)?;
    Ok(certs.first().map(|c| certificate_fingerprint(c.as_ref())))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    crate::config::listener::load_certs(path).map_err(ServerError::Tls)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ServerError> {
    crate::config::listener::load_key(path).map_err(ServerError::Tls)
}

/// Load the configured certificate, or the self-signed one in `state_directory` (generated on
/// first start). Returns the chain, the key and the leaf's fingerprint.
pub fn load_or_generate_certificate(
    rt: &ServerRuntime,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), ServerError> {
    let l = &rt.listener;
    if !l.tls_certificate.is_empty() || !l.tls_private_key.is_empty() {
        if l.tls_certificate.is_empty() || l.tls_private_key.is_empty() {
            return Err(ServerError::Config(
                "set both tls_certificate and tls_private_key, or neither".into(),
            ));
        }
        let certs = load_certs(Path::new(&l.tls_certificate))?;
        let key = load_key(Path::new(&l.tls_private_key))?;
        let fp = certs
            .first()
            .map(|c| certificate_fingerprint(c.as_ref()))
            .unwrap_or_default();
        return Ok((certs, key, fp));
    }
    let dir = &rt.state_directory;
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        let certs = load_certs(&cert_path)?;
        let key = load_key(&key_path)?;
        let fp = certs
            .first()
            .map(|c| certificate_fingerprint(c.as_ref()))
            .unwrap_or_default();
        tracing::info!(
            "TLS: using the self-signed certificate {} (SHA-256 {fp})",
            cert_path.display()
        );
        return Ok((certs, key, fp));
    }
    generate_self_signed(rt, &cert_path, &key_path)
}

fn generate_self_signed(
    rt: &ServerRuntime,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), ServerError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let dir = &rt.state_directory;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ServerError::File {
            what: "creating state_directory",
            path: dir.clone(),
            source,
        })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        ServerError::File {
            what: "restricting state_directory to 0700",
            path: dir.clone(),
            source,
        }
    })?;
    let mut sans: Vec<String> = Vec::new();
    for n in std::iter::once(&rt.computer_name)
        .chain(rt.computer_aliases.iter())
        .map(String::as_str)
        .chain(["localhost", "127.0.0.1"])
    {
        if !n.is_empty() && !sans.iter().any(|s| s.eq_ignore_ascii_case(n)) {
            sans.push(n.to_string());
        }
    }
    let ck = rcgen::generate_simple_self_signed(sans.clone())
        .map_err(|e| ServerError::Tls(format!("generating a self-signed certificate: {e}")))?;
    let key_pem = ck.key_pair.serialize_pem();
    let cert_pem = ck.cert.pem();
    let write =
        |path: &Path, mode: u32, data: &str, what: &'static str| -> Result<(), ServerError> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)
                .map_err(|source| ServerError::File {
                    what,
                    path: path.to_path_buf(),
                    source,
                })?;
            f.write_all(data.as_bytes())
                .map_err(|source| ServerError::File {
                    what,
                    path: path.to_path_buf(),
                    source,
                })?;
            f.sync_all().map_err(|source| ServerError::File {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
    write(key_path, 0o600, &key_pem, "writing the TLS private key")?;
    write(cert_path, 0o644, &cert_pem, "writing the TLS certificate")?;
    let fp = certificate_fingerprint(ck.cert.der().as_ref());
    let msg = format!(
        "TLS: generated a self-signed certificate {} for {} (SHA-256 fingerprint {fp}); clients must trust it or skip CA checks",
        cert_path.display(),
        sans.join(", ")
    );
    println!("{msg}");
    tracing::warn!("{msg}");
    let certs = vec![ck.cert.der().clone()];
    let key = load_key(key_path)?;
    Ok((certs, key, fp))
}

fn tls_acceptor(rt: &ServerRuntime) -> Result<(TlsAcceptor, String), ServerError> {
    let (certs, key, fp) = load_or_generate_certificate(rt)?;
    let cfg = crate::config::listener::server_tls_config(certs, key, &rt.listener)
        .map_err(|p| ServerError::Tls(p.message))?;
    Ok((TlsAcceptor::from(Arc::new(cfg)), fp))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

struct Ctx {
    service: WsmanService,
    gate: Arc<dyn Gatekeeper>,
    max_body: usize,
}

/// A bound server: call [`Server::run`] to serve.
pub struct Server {
    pub https_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// SHA-256 fingerprint of the TLS certificate in use (when HTTPS is enabled).
    pub tls_fingerprint: Option<String>,
    https: Option<(TcpListener, TlsAcceptor)>,
    http: Option<TcpListener>,
    service: WsmanService,
    gate: Arc<dyn Gatekeeper>,
    ip_allow: Arc<Vec<IpNet>>,
    max_connections: usize,
    max_body: usize,
}

impl Server {
    /// Check the listener configuration, load or generate the certificate, and bind.
    pub async fn bind(rt: ServerRuntime, gate: Arc<dyn Gatekeeper>) -> Result<Server, ServerError> {
        // The same checks `keyhole check` and a reload run (config::listener).
        let checked = crate::config::listener::check(&rt.listener, &rt.state_directory).map_err(
            |problems| {
                let all: Vec<String> = problems.into_iter().map(|p| p.message).collect();
                ServerError::Config(all.join("; "))
            },
        )?;
        let (https, http, ip_allow) = (checked.https, checked.http, checked.ip_allow);
        let max_body = usize::try_from(rt.limits.max_envelope_size_kb.0)
            .unwrap_or(usize::MAX / 2048)
            .saturating_mul(1024);
        let service = WsmanService::new(
            ServiceConfig {
                computer_name: rt.computer_name.clone(),
                winrs_endpoint: rt.winrs_endpoint.clone(),
                max_envelope_size: max_body,
                max_operation_timeout: rt.limits.max_operation_timeout.0,
                product_version: format!(
                    "OS: Linux SP: 0.0 Stack: 3.0 keyhole {}",
                    env!("CARGO_PKG_VERSION")
                ),
            },
            gate.clone(),
        );
        let mut tls_fingerprint = None;
        let https_l = match https {
            Some(a) => {
                let (acc, fp) = tls_acceptor(&rt)?;
                tls_fingerprint = Some(fp);
                let lis = TcpListener::bind(a)
                    .await
                    .map_err(|source| ServerError::Bind { addr: a, source })?;
                Some((lis, acc))
            }
            None => None,
        };
        let http_l = match http {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| ServerError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let max_connections = usize::try_from(rt.limits.max_concurrent_users.0)
            .unwrap_or(1024)
            .saturating_mul(CONNECTIONS_PER_USER)
            .clamp(4, 100_000);
        Ok(Server {
            https_addr: https_l.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            http_addr: http_l.as_ref().and_then(|l| l.local_addr().ok()),
            tls_fingerprint,
            https: https_l,
            http: http_l,
            service,
            gate,
            ip_allow: Arc::new(ip_allow),
            max_connections,
            max_body,
        })
    }

    /// Serve resource URIs starting with `prefix` with `factory` (PSRP:
    /// `http://schemas.microsoft.com/powershell/`).
    pub fn register_shell_factory(&mut self, prefix: &str, factory: Arc<dyn ShellFactory>) {
        self.service.register_factory(prefix, factory);
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight requests finish
    /// (at most [`SHUTDOWN_GRACE`]) and close every shell.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let registry = self.service.registry();
        let ctx = Arc::new(Ctx {
            service: self.service,
            gate: self.gate,
            max_body: self.max_body,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let conns = Arc::new(Semaphore::new(self.max_connections));
        let mut tasks = Vec::new();
        if let Some((lis, acc)) = self.https {
            tasks.push(tokio::spawn(accept_loop(
                lis,
                Some(acc),
                ctx.clone(),
                self.ip_allow.clone(),
                conns.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(lis) = self.http {
            tasks.push(tokio::spawn(accept_loop(
                lis,
                None,
                ctx.clone(),
                self.ip_allow.clone(),
                conns.clone(),
                stop_rx.clone(),
            )));
        }
        let reaper_reg = registry.clone();
        let mut reaper_stop = stop_rx.clone();
        let reaper = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REAP_INTERVAL) => { reaper_reg.reap_idle(); }
                    _ = reaper_stop.changed() => break,
                }
            }
        });
        shutdown.await;
        tracing::info!(
            "shutting down: no new connections; waiting up to {:?} for requests in flight",
            SHUTDOWN_GRACE
        );
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let _ = reaper.await;
        let total = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(SHUTDOWN_GRACE, conns.acquire_many(total))
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown: some connections were still busy after {:?}; closing anyway",
                SHUTDOWN_GRACE
            );
        }
        registry.close_all();
        Ok(())
    }
}

/// Bind and serve until `shutdown` completes (see [`Server`] for the split form).
pub async fn serve(
    rt: ServerRuntime,
    gate: Arc<dyn Gatekeeper>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::bind(rt, gate).await?.run(shutdown).await
}

async fn accept_loop(
    lis: TcpListener,
    tls: Option<TlsAcceptor>,
    ctx: Arc<Ctx>,
    ip_allow: Arc<Vec<IpNet>>,
    conns: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let accepted = tokio::select! {
            a = lis.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(10);
                x
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let ip = canonical(peer.ip());
        if !ip_allow.iter().any(|n| n.contains(&ip)) {
            tracing::warn!(%peer, "gate 1: connection dropped: address not in [listener] ip_allow");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(acc) => {
                    let tls_stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(stream)).await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(%peer, "gate 1: TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(%peer, "gate 1: TLS handshake timed out");
                                return;
                            }
                        };
                    let fp = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| <[u8; 32]>::from(Sha256::digest(c.as_ref())));
                    serve_connection(tls_stream, ctx, peer, fp, "https", stop).await;
                }
                None => serve_connection(stream, ctx, peer, None, "http", stop).await,
            }
        });
    }
}

async fn serve_connection<S>(
    io: S,
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    cert: Option<[u8; 32]>,
    scheme: &'static str,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle_http(req, ctx, peer, cert, scheme).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            return;
        }
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

fn simple(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn unauthorized(gate: &dyn Gatekeeper) -> Response<Full<Bytes>> {
    let mut r = simple(StatusCode::UNAUTHORIZED);
    for c in gate.challenges() {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    r.headers_mut().insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from_static("0"),
    );
    r
}

fn soap(status: StatusCode, xml: String, close: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(xml)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/soap+xml;charset=UTF-8"),
    );
    if close {
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    r
}

enum BodyError {
    /// Over the limit; `drained` when the rest was read and discarded (connection reusable).
    TooLarge {
        drained: bool,
    },
    Timeout,
    Io(String),
}

/// Read and discard at most `cap` bytes of body; true when the whole body was read.
async fn drain_body(body: &mut Incoming, cap: usize) -> bool {
    let mut seen = 0usize;
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen > cap {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or(false)
}

/// Read the body, never holding more than `limit` bytes.
async fn read_body(body: &mut Incoming, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    let drain_cap = limit.saturating_mul(OVERSIZE_DRAIN_FACTOR);
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Io(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen > drain_cap {
                    return Err(BodyError::TooLarge { drained: false });
                }
                if seen <= limit {
                    buf.extend_from_slice(&data);
                }
            }
        }
        if seen > limit {
            return Err(BodyError::TooLarge { drained: true });
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyError::Timeout),
    }
}

async fn handle_http(
    req: Request<Incoming>,
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    cert: Option<[u8; 32]>,
    scheme: &'static str,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/wsman" {
        return simple(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::POST {
        let mut r = simple(StatusCode::METHOD_NOT_ALLOWED);
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let gate = ctx.gate.clone();
    let ident = tokio::task::spawn_blocking(move || gate.authenticate(auth.as_deref(), peer, cert))
        .await
        .ok()
        .flatten();
    let Some(ident) = ident else {
        // Read (and discard) the body as an authenticated request would have been read, so
        // that a refusal at gate 2 keeps the connection exactly as one at gates 3-4 does.
        let mut body = req.into_body();
        let drained = drain_body(
            &mut body,
            ctx.max_body.saturating_mul(OVERSIZE_DRAIN_FACTOR),
        )
        .await;
        tracing::debug!(%peer, "gate 2: authentication refused (401)");
        let mut r = unauthorized(ctx.gate.as_ref());
        if !drained {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        return r;
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| ctx.service.cfg.computer_name.clone());
    let address = format!("{scheme}://{host}/wsman");
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > ctx.max_body.saturating_mul(OVERSIZE_DRAIN_FACTOR)) {
        let xml = ctx
            .service
            .fault_xml(&WsmanError::TooLarge(ctx.max_body), None);
        return soap(StatusCode::INTERNAL_SERVER_ERROR, xml, true);
    }
    let bytes = match read_body(&mut body, ctx.max_body).await {
        Ok(b) => b,
        Err(BodyError::TooLarge { drained }) => {
            let xml = ctx
                .service
                .fault_xml(&WsmanError::TooLarge(ctx.max_body), None);
            return soap(StatusCode::INTERNAL_SERVER_ERROR, xml, !drained);
        }
        Err(BodyError::Timeout) => {
            tracing::info!(%peer, "request body not received within {:?}", BODY_READ_TIMEOUT);
            let mut r = simple(StatusCode::REQUEST_TIMEOUT);
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
        Err(BodyError::Io(e)) => {
            tracing::info!(%peer, "reading the request body failed: {e}");
            return simple(StatusCode::BAD_REQUEST);
        }
    };
    match ctx
        .service
        .handle(&ident, peer, content_type.as_deref(), &bytes, &address)
        .await
    {
        Reply::Ok(xml) => soap(StatusCode::OK, xml, false),
        Reply::Fault(xml) => soap(StatusCode::INTERNAL_SERVER_ERROR, xml, false),
        Reply::Unauthorized => unauthorized(ctx.gate.as_ref()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        let fp = certificate_fingerprint(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_checked_as_ipv4() {
        let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&canonical(ip)));
    }
}
