//! `http`: the HTTPS/HTTP listeners in front of the WS-Man service — gate 1 (TLS, client
//! certificates, IP allow list, loopback-only plaintext), connection slots, timeouts, request
//! limits, gate 2 through [`Authenticate`] (every refusal the same 401), and graceful shutdown.
//! It knows nothing of sessions or the engine: shell factories are registered by the caller.
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
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::{LimitsConfig, ListenerConfig, ServerConfig};
use crate::metrics::Metrics;
use crate::wsman::fault::WsmanError;
use crate::wsman::service::{Reply, ServiceConfig, WsmanService};
use crate::wsman::shell::{Authenticate, ShellFactory};

pub mod tls;
pub use tls::{
    certificate_fingerprint, load_or_generate_certificate, self_signed_fingerprint,
    SELF_SIGNED_CERT, SELF_SIGNED_KEY,
};

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
    gate: Arc<dyn Authenticate>,
    max_body: usize,
    /// `keyhole_connections_open` and gate-1 refusals, when counted.
    metrics: Option<Arc<Metrics>>,
}

impl Ctx {
    fn refused_at_gate_1(&self) {
        if let Some(m) = &self.metrics {
            m.refusals.with(&["1"]).inc();
        }
    }
}

/// Counts one open connection in `keyhole_connections_open` while it lives.
struct OpenConnection(Option<Arc<Metrics>>);

impl OpenConnection {
    fn new(m: Option<Arc<Metrics>>) -> OpenConnection {
        if let Some(m) = &m {
            m.connections_open.get().inc();
        }
        OpenConnection(m)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.connections_open.get().dec();
        }
    }
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
    gate: Arc<dyn Authenticate>,
    ip_allow: Arc<Vec<IpNet>>,
    max_connections: usize,
    max_body: usize,
    metrics: Option<Arc<Metrics>>,
}

impl Server {
    /// Check the listener configuration, load or generate the certificate, and bind.
    pub async fn bind(
        rt: ServerRuntime,
        gate: Arc<dyn Authenticate>,
    ) -> Result<Server, ServerError> {
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
        let service = WsmanService::new(ServiceConfig {
            computer_name: rt.computer_name.clone(),
            max_envelope_size: max_body,
            max_operation_timeout: rt.limits.max_operation_timeout.0,
            product_version: format!(
                "OS: Linux SP: 0.0 Stack: 3.0 keyhole {}",
                env!("CARGO_PKG_VERSION")
            ),
        });
        let mut tls_fingerprint = None;
        let https_l = match https {
            Some(a) => {
                let (acc, fp) = tls::tls_acceptor(&rt)?;
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
            metrics: None,
        })
    }

    /// Count open connections and gate-1 refusals (address not in `ip_allow`, TLS handshake
    /// failed) in `m`.
    pub fn attach_metrics(&mut self, m: Arc<Metrics>) {
        self.metrics = Some(m);
    }

    /// Serve the resource URI `uri` with `factory` (WinRS: `.../windows/shell/cmd`).
    pub fn register_exact(&mut self, uri: &str, factory: Arc<dyn ShellFactory>) {
        self.service.register_exact(uri, factory);
    }

    /// Serve resource URIs starting with `prefix` with `factory`; the rest of the URI is the
    /// endpoint name (PSRP: `http://schemas.microsoft.com/powershell/`).
    pub fn register_prefix(&mut self, prefix: &str, factory: Arc<dyn ShellFactory>) {
        self.service.register_prefix(prefix, factory);
    }

    /// Serve until `shutdown` completes, then stop accepting, close every shell (answering the
    /// Receives waiting on them) and let in-flight requests finish (at most [`SHUTDOWN_GRACE`]).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let registry = self.service.registry();
        let ctx = Arc::new(Ctx {
            service: self.service,
            gate: self.gate,
            max_body: self.max_body,
            metrics: self.metrics,
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
        // Close every shell now: running commands stop and every Receive waiting on a shell is
        // answered at once, so the requests in flight end well inside the grace period.
        registry.close_all();
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
        // Anything a request in flight created meanwhile.
        registry.close_all();
        Ok(())
    }
}

/// Bind and serve until `shutdown` completes (see [`Server`] for the split form).
pub async fn serve(
    rt: ServerRuntime,
    gate: Arc<dyn Authenticate>,
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
            tracing::warn!(%peer, gate = 1u8, "gate 1: connection dropped: address not in [listener] ip_allow");
            ctx.refused_at_gate_1();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::new(ctx.metrics.clone());
            match tls {
                Some(acc) => {
                    let tls_stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(stream)).await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::info!(%peer, "gate 1: TLS handshake failed: {e}");
                                ctx.refused_at_gate_1();
                                return;
                            }
                            Err(_) => {
                                tracing::info!(%peer, "gate 1: TLS handshake timed out");
                                ctx.refused_at_gate_1();
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

fn unauthorized(gate: &dyn Authenticate) -> Response<Full<Bytes>> {
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
