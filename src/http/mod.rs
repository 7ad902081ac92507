//! `http`: the HTTPS/HTTP listeners in front of the WS-Man service — gate 1 (TLS, client
//! certificates, IP allow list, loopback-only plaintext), connection slots, timeouts, request
//! limits, gate 2 through [`Authenticate`] (every refusal the same 401), and graceful shutdown.
//! It knows nothing of sessions or the engine: shell factories are registered by the caller, and
//! so are [`WebRoutes`] (other paths on the HTTPS listener: the web console).
//!
//! Gate 2 sees each TCP connection as one [`Connection`] (Negotiate authenticates the
//! connection over several requests and encrypts the bodies that follow on plain HTTP); the
//! listener only carries it between requests. What gate 2 decides without heavy work (a
//! remembered credential, no credentials) is decided on the serving thread; every heavier
//! gate-2 call — password hashing, GSSAPI, NTLM, body decryption and encryption — runs on a
//! blocking thread, password verifications and Negotiate legs only in one of the bounded,
//! per-address-fair verification slots (`gate2.rs`, `auth::slots`).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::{LimitsConfig, ListenerConfig, ServerConfig};
use crate::metrics::Metrics;
use crate::wsman::fault::WsmanError;
use crate::wsman::service::{Reply, ServiceConfig, WsmanService, MAX_ANONYMOUS_IDENTIFY};
use crate::wsman::shell::{
    Authenticate, Connection, RequestBody, ResponseBody, ShellFactory, Verdict,
};

mod gate2;
use crate::auth::slots::VerifySlots;
pub mod tls;
pub use tls::{
    certificate_fingerprint, load_or_generate_certificate, self_signed_fingerprint,
    SELF_SIGNED_CERT, SELF_SIGNED_KEY,
};

/// Time a client has to send the request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to send the request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a TLS handshake may take, whatever `unauthenticated_timeout` says (the handshake
/// also has to fit in that).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// An oversized body is read and discarded up to this many times the limit (so that the
/// client can read the fault), then the connection is closed.
pub const OVERSIZE_DRAIN_FACTOR: usize = 8;
/// How often idle shells are looked for.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// Connections refused for want of a slot are logged at most once per this interval (with the
/// number refused since the last line), so that a flood cannot flood the log too.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Refusals that would flood the log (connection slots, verification slots) are counted and
/// logged at most once per [`REFUSAL_LOG_INTERVAL`], with the count since the last line.
#[derive(Default)]
pub(crate) struct Throttle {
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
}

impl Throttle {
    /// Count one refusal; `Some(n)` (refusals since the last line, this one included) when a
    /// log line is due now.
    pub(crate) fn count(&self) -> Option<u64> {
        let n = self
            .refused
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            return None;
        }
        *last = Some(now);
        drop(last);
        self.refused.store(0, Ordering::Relaxed);
        Some(n)
    }
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
    pub state_directory: PathBuf,
    pub listener: ListenerConfig,
    pub limits: LimitsConfig,
    /// `[auth] negotiate`: an `http` listener off loopback then admits encrypted Negotiate.
    pub negotiate: bool,
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
            negotiate: cfg.auth.negotiate,
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

/// A request for a path a [`WebRoutes`] claims, with its body read whole (at most
/// [`WebRoutes::max_body`] bytes). Only the HTTPS listener hands these out; gate 1 (TLS, the
/// client certificate when required, `ip_allow`, connection slots) has already passed.
#[derive(Debug)]
pub struct WebRequest {
    pub method: Method,
    /// The path, e.g. `/console/api/run`.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
    /// SHA-256 of the verified client certificate, when the client sent one.
    pub client_cert_sha256: Option<[u8; 32]>,
}

/// What a [`WebRoutes`] answers.
pub type WebResponse = Response<Full<Bytes>>;

/// Other paths on the HTTPS listener (the web console), registered by the composition root.
/// The listener knows nothing of what is behind them: it routes, bounds the body, and calls
/// [`WebRoutes::tick`] with the idle-shell reaper and [`WebRoutes::close_all`] at shutdown.
/// Put into a [`WebResponse`]'s extensions by a [`WebRoutes`] when the request belonged to a
/// signed-in session: the connection then counts as authenticated (it is no longer closed at
/// `[limits] unauthenticated_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Authenticated;

pub trait WebRoutes: Send + Sync + 'static {
    /// The path prefix served: the prefix itself and everything under `prefix/`.
    fn prefix(&self) -> &str;
    /// The largest request body accepted; a larger one gets 413 and is never handed over.
    fn max_body(&self) -> usize;
    /// Answer one request (runs on the listener's async runtime: blocking work belongs on a
    /// blocking thread).
    fn handle(
        self: Arc<Self>,
        req: WebRequest,
    ) -> Pin<Box<dyn Future<Output = WebResponse> + Send + 'static>>;
    /// Called every [`REAP_INTERVAL`] (idle time-outs).
    fn tick(&self);
    /// The server is stopping: end every session.
    fn close_all(&self);
}

struct Ctx {
    service: WsmanService,
    gate: Arc<dyn Authenticate>,
    /// Password verification slots (gate 2 under load).
    gate2: gate2::Gate2,
    max_body: usize,
    routes: Vec<Arc<dyn WebRoutes>>,
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
    /// The HTTPS certificate's channel binding data (`tls-server-end-point`).
    channel_binding: Option<Arc<[u8]>>,
    /// The `http` listener admits only encrypted Negotiate.
    http_encrypted_only: bool,
    service: WsmanService,
    gate: Arc<dyn Authenticate>,
    ip_allow: Arc<Vec<IpNet>>,
    max_connections: usize,
    max_per_address: usize,
    unauthenticated_timeout: Duration,
    max_body: usize,
    routes: Vec<Arc<dyn WebRoutes>>,
    /// Password verification slots (gate 2 under load); shared with the web console's sign-in
    /// when the daemon says so ([`Server::share_verify_slots`]).
    verify_slots: Arc<VerifySlots>,
    metrics: Option<Arc<Metrics>>,
}

impl Server {
    /// Check the listener configuration, load or generate the certificate, and bind.
    pub async fn bind(
        rt: ServerRuntime,
        gate: Arc<dyn Authenticate>,
    ) -> Result<Server, ServerError> {
        // The same checks `keyhole check` and a reload run (config::listener).
        let checked =
            crate::config::listener::check(&rt.listener, rt.negotiate, &rt.state_directory)
                .map_err(|problems| {
                    let all: Vec<String> = problems.into_iter().map(|p| p.message).collect();
                    ServerError::Config(all.join("; "))
                })?;
        let (https, http, ip_allow) = (checked.https, checked.http, checked.ip_allow);
        let http_encrypted_only = checked.http_encrypted_only;
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
        let mut channel_binding = None;
        let https_l = match https {
            Some(a) => {
                let (acc, fp, leaf) = tls::tls_acceptor(&rt)?;
                tls_fingerprint = Some(fp);
                channel_binding = Some(Arc::from(crate::auth::encryption::tls_server_end_point(
                    &leaf,
                )));
                let lis = TcpListener::bind(a)
                    .await
                    .map_err(|source| ServerError::Bind { addr: a, source })?;
                Some((lis, acc))
            }
            None => None,
        };
        let http_l = match http {
            Some(a) => {
                if http_encrypted_only {
                    tracing::info!(address = %a, "the HTTP listener is off loopback without allow_unencrypted: it admits only encrypted Negotiate");
                }
                Some(
                    TcpListener::bind(a)
                        .await
                        .map_err(|source| ServerError::Bind { addr: a, source })?,
                )
            }
            None => None,
        };
        let max_connections = usize::try_from(rt.limits.max_connections.0)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        let max_per_address =
            usize::try_from(rt.limits.max_connections_per_address.0).unwrap_or(usize::MAX);
        Ok(Server {
            https_addr: https_l.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            http_addr: http_l.as_ref().and_then(|l| l.local_addr().ok()),
            tls_fingerprint,
            https: https_l,
            http: http_l,
            channel_binding,
            http_encrypted_only,
            service,
            gate,
            ip_allow: Arc::new(ip_allow),
            max_connections,
            max_per_address,
            unauthenticated_timeout: rt.limits.unauthenticated_timeout.0,
            max_body,
            routes: Vec::new(),
            verify_slots: Arc::new(VerifySlots::for_this_host()),
            metrics: None,
        })
    }

    /// Run gate 2's password verifications in `slots` (the gates' own, which the web console's
    /// sign-in also takes) instead of slots of this server's own.
    pub fn share_verify_slots(&mut self, slots: Arc<VerifySlots>) {
        self.verify_slots = slots;
    }

    /// Serve `routes` (its prefix and the paths under it) on the HTTPS listener; plain HTTP
    /// answers 404 there.
    pub fn register_routes(&mut self, routes: Arc<dyn WebRoutes>) {
        self.routes.push(routes);
    }

    /// Count open connections and gate-1 refusals (address not in `ip_allow`, no connection
    /// slot, TLS handshake failed) in `m`.
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
            gate2: gate2::Gate2::new(self.verify_slots),
            gate: self.gate,
            max_body: self.max_body,
            routes: self.routes,
            metrics: self.metrics,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let conns = Arc::new(Semaphore::new(self.max_connections));
        let slots = Arc::new(Slots {
            all: conns.clone(),
            max: self.max_connections,
            per_address: self.max_per_address,
            by_address: Mutex::new(HashMap::new()),
            throttle: Throttle::default(),
        });
        let gate1 = Arc::new(Gate1 {
            ip_allow: self.ip_allow.clone(),
            slots,
            unauthenticated_timeout: self.unauthenticated_timeout,
        });
        let mut tasks = Vec::new();
        if let Some((lis, acc)) = self.https {
            tasks.push(tokio::spawn(accept_loop(
                lis,
                Some((acc, self.channel_binding.clone())),
                ctx.clone(),
                gate1.clone(),
                stop_rx.clone(),
                false,
            )));
        }
        if let Some(lis) = self.http {
            tasks.push(tokio::spawn(accept_loop(
                lis,
                None,
                ctx.clone(),
                gate1.clone(),
                stop_rx.clone(),
                self.http_encrypted_only,
            )));
        }
        let reaper_reg = registry.clone();
        let reaper_routes = ctx.routes.clone();
        let mut reaper_stop = stop_rx.clone();
        let reaper = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REAP_INTERVAL) => {
                        // Closing a shell takes its lock, which a request job may hold for a
                        // while: not on an async thread.
                        let r = reaper_reg.clone();
                        let _ = tokio::task::spawn_blocking(move || r.reap_idle()).await;
                        for r in &reaper_routes {
                            r.tick();
                        }
                    }
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
        for r in &ctx.routes {
            r.close_all();
        }
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

/// The key a connection is counted under: the address itself, or for IPv6 its /64 (one
/// subscriber's network: an attacker holds a whole /64 as easily as one address).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            for b in o.iter_mut().skip(8) {
                *b = 0;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        v4 => v4,
    }
}

/// Connection slots: `max_connections` for all listeners together (a semaphore, which also
/// lets shutdown wait for every connection) and `max_connections_per_address`.
struct Slots {
    all: Arc<Semaphore>,
    max: usize,
    per_address: usize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused, logged at most once per interval.
    throttle: Throttle,
}

/// Which limit refused a connection (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotRefusal {
    All,
    Address,
}

/// A connection's slots; released when dropped.
struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
    _all: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .slots
            .by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Slots {
    /// Take a slot for a connection from `ip`, or say which limit is reached. Never waits: a
    /// connection over a limit is closed at once (a client retries; it is not left hanging
    /// in the accept queue behind the connections that hold the slots).
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, SlotRefusal> {
        let key = address_key(ip);
        let all = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| SlotRefusal::All)?;
        let mut m = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= self.per_address {
            return Err(SlotRefusal::Address);
        }
        *n += 1;
        drop(m);
        Ok(Slot {
            slots: self.clone(),
            key,
            _all: all,
        })
    }

    /// Log a refusal, at most once per [`REFUSAL_LOG_INTERVAL`].
    fn log_refusal(&self, peer: SocketAddr, why: SlotRefusal) {
        let Some(n) = self.throttle.count() else {
            return;
        };
        match why {
            SlotRefusal::All => tracing::warn!(
                %peer,
                refused = n,
                "gate 1: connection closed: all {} connection slots are taken ([limits] max_connections); {n} refused since the last report",
                self.max
            ),
            SlotRefusal::Address => tracing::warn!(
                %peer,
                refused = n,
                "gate 1: connection closed: {} already holds {} connections ([limits] max_connections_per_address; IPv6 counted per /64); {n} refused since the last report",
                address_key(peer.ip()),
                self.per_address
            ),
        }
    }
}

/// What every listener checks at accept (gate 1 before TLS): the allow list and the slots, and
/// how long a connection may stay without authenticating.
struct Gate1 {
    ip_allow: Arc<Vec<IpNet>>,
    slots: Arc<Slots>,
    unauthenticated_timeout: Duration,
}

/// Resolves when a connection that has not authenticated reaches its deadline; never once it
/// has authenticated.
async fn unauthenticated_expiry(deadline: tokio::time::Instant, authenticated: Arc<AtomicBool>) {
    tokio::time::sleep_until(deadline).await;
    if authenticated.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

/// `tls`: the acceptor and the certificate's channel binding data (HTTPS); None for plain HTTP,
/// which admits only encrypted Negotiate when `encrypted_only`.
async fn accept_loop(
    lis: TcpListener,
    tls: Option<(TlsAcceptor, Option<Arc<[u8]>>)>,
    ctx: Arc<Ctx>,
    gate1: Arc<Gate1>,
    mut stop: watch::Receiver<bool>,
    encrypted_only: bool,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
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
        if !gate1.ip_allow.iter().any(|n| n.contains(&ip)) {
            tracing::warn!(%peer, gate = 1u8, "gate 1: connection dropped: address not in [listener] ip_allow");
            ctx.refused_at_gate_1();
            drop(stream);
            continue;
        }
        let slot = match gate1.slots.take(ip) {
            Ok(s) => s,
            Err(why) => {
                gate1.slots.log_refusal(peer, why);
                ctx.refused_at_gate_1();
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let mut stop = stop.clone();
        let tls = tls.clone();
        // Until a request authenticates, the connection (TLS handshake included) lives at most
        // `unauthenticated_timeout` from now.
        let deadline = tokio::time::Instant::now() + gate1.unauthenticated_timeout;
        let authenticated = Arc::new(AtomicBool::new(false));
        tokio::spawn(async move {
            let _slot = slot;
            let _open = OpenConnection::new(ctx.metrics.clone());
            match tls {
                Some((acc, channel_binding)) => {
                    // A connection still in its handshake when the server stops is dropped
                    // (browsers open spare connections they may never use).
                    let handshake_by =
                        deadline.min(tokio::time::Instant::now() + TLS_HANDSHAKE_TIMEOUT);
                    let handshake = tokio::select! {
                        r = tokio::time::timeout_at(handshake_by, acc.accept(stream)) => r,
                        _ = stop.changed() => return,
                    };
                    let tls_stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, "gate 1: TLS handshake failed: {e}");
                            ctx.refused_at_gate_1();
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "gate 1: TLS handshake timed out (unauthenticated_timeout)");
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
                    let conn = Conn {
                        peer,
                        scheme: "https",
                        deadline,
                        authenticated,
                        state: Arc::new(std::sync::Mutex::new(Connection::new(
                            peer,
                            fp,
                            channel_binding,
                            false,
                        ))),
                    };
                    serve_connection(tls_stream, ctx, conn, stop).await;
                }
                None => {
                    let conn = Conn {
                        peer,
                        scheme: "http",
                        deadline,
                        authenticated,
                        state: Arc::new(std::sync::Mutex::new(Connection::new(
                            peer,
                            None,
                            None,
                            encrypted_only,
                        ))),
                    };
                    serve_connection(stream, ctx, conn, stop).await
                }
            }
        });
    }
}

/// One accepted connection, as its requests see it.
#[derive(Clone)]
struct Conn {
    peer: SocketAddr,
    /// Gate 2's state of the connection (client certificate, Negotiate context). Requests of
    /// one connection come one at a time (HTTP/1.1): the lock is never contended.
    state: gate2::SharedConnection,
    scheme: &'static str,
    /// Closed at this instant unless a request has authenticated by then.
    deadline: tokio::time::Instant,
    /// Set by the first request that passes gate 2.
    authenticated: Arc<AtomicBool>,
}

async fn serve_connection<S>(io: S, ctx: Arc<Ctx>, conn_info: Conn, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn_info.peer;
    let expiry = unauthenticated_expiry(conn_info.deadline, conn_info.authenticated.clone());
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        let c = conn_info.clone();
        async move { Ok::<_, Infallible>(handle_http(req, ctx, c).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::pin!(expiry);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            return;
        }
        _ = &mut expiry => {
            tracing::info!(%peer, "gate 1: connection closed: nothing authenticated on it within [limits] unauthenticated_timeout");
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

fn soap(status: StatusCode, xml: impl Into<Bytes>, close: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(xml.into()));
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

/// Adds `WWW-Authenticate: value` (a Negotiate token) to a response.
fn add_www_authenticate(r: &mut Response<Full<Bytes>>, value: Option<&str>) {
    if let Some(v) = value.and_then(|v| header::HeaderValue::from_str(v).ok()) {
        r.headers_mut().append(header::WWW_AUTHENTICATE, v);
    }
}

/// A 401 answered without reading the request: the body is read and discarded as an
/// authenticated request's would have been, so that the connection stays usable exactly as
/// after a refusal at gates 3–4 (closed only when the body could not be drained).
async fn answer_401(
    req: Request<Incoming>,
    ctx: &Ctx,
    mut r: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    let mut body = req.into_body();
    let drained = drain_body(
        &mut body,
        ctx.max_body.saturating_mul(OVERSIZE_DRAIN_FACTOR),
    )
    .await;
    if !drained {
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    r
}

/// The reduced Identify reply for a request with no credentials at all (no Authorization
/// header) whose body, declared at most [`MAX_ANONYMOUS_IDENTIFY`] bytes, is exactly DSP0226's
/// Identify (with or without `WSMANIDENTIFY: unauthenticated`). Anything else returns None with
/// the body read no further than an oversized one would be; the caller answers the generic 401.
async fn anonymous_identify(
    headers: &header::HeaderMap,
    body: &mut Incoming,
    peer: SocketAddr,
) -> Option<Response<Full<Bytes>>> {
    if headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())?;
    if declared > MAX_ANONYMOUS_IDENTIFY {
        return None;
    }
    let bytes = read_body(body, MAX_ANONYMOUS_IDENTIFY).await.ok()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let xml = crate::wsman::service::anonymous_identify(content_type, &bytes)?;
    let asked = headers
        .get("wsmanidentify")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("unauthenticated"));
    tracing::debug!(%peer, wsmanidentify = asked, "anonymous Identify answered with the reduced reply");
    Some(soap(StatusCode::OK, xml, false))
}

/// Whether `path` is `prefix` or under `prefix/`.
fn claims(prefix: &str, path: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Read a [`WebRoutes`] request's body within its limit and hand the request over.
async fn web_request(
    req: Request<Incoming>,
    routes: Arc<dyn WebRoutes>,
    peer: SocketAddr,
    cert: Option<[u8; 32]>,
) -> Response<Full<Bytes>> {
    let limit = routes.max_body();
    let (parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = |drained: bool| {
        let mut r = simple(StatusCode::PAYLOAD_TOO_LARGE);
        if !drained {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    };
    if declared.is_some_and(|n| n > limit.saturating_mul(OVERSIZE_DRAIN_FACTOR)) {
        return too_large(false);
    }
    let bytes = match read_body(&mut body, limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge { drained }) => return too_large(drained),
        Err(e @ (BodyError::Timeout | BodyError::Io(_))) => return body_failed(peer, e),
    };
    let req = WebRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body: Bytes::from(bytes),
        peer,
        client_cert_sha256: cert,
    };
    routes.handle(req).await
}

/// The answer to a request whose body timed out (408, connection closed) or could not be read
/// (400), logged; the same for WS-Man and the web routes.
fn body_failed(peer: SocketAddr, e: BodyError) -> Response<Full<Bytes>> {
    match e {
        BodyError::Timeout => {
            tracing::info!(%peer, "request body not received within {:?}", BODY_READ_TIMEOUT);
            let mut r = simple(StatusCode::REQUEST_TIMEOUT);
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            r
        }
        BodyError::Io(e) => {
            tracing::info!(%peer, "reading the request body failed: {e}");
            simple(StatusCode::BAD_REQUEST)
        }
        BodyError::TooLarge { .. } => simple(StatusCode::PAYLOAD_TOO_LARGE),
    }
}

async fn handle_http(req: Request<Incoming>, ctx: Arc<Ctx>, conn: Conn) -> Response<Full<Bytes>> {
    let (peer, scheme) = (conn.peer, conn.scheme);
    if req.uri().path() != "/wsman" {
        let route = ctx
            .routes
            .iter()
            .find(|r| claims(r.prefix(), req.uri().path()))
            .cloned();
        return match route {
            // Plain HTTP never serves them (passwords and session cookies need TLS).
            Some(r) if scheme == "https" => {
                let cert = conn
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .client_cert_sha256;
                let r = web_request(req, r, peer, cert).await;
                // A request of a signed-in web session counts as authenticated for the
                // connection's `unauthenticated_timeout`, as a WS-Man request past gate 2 does.
                if r.extensions().get::<Authenticated>().is_some() {
                    conn.authenticated.store(true, Ordering::SeqCst);
                }
                r
            }
            _ => simple(StatusCode::NOT_FOUND),
        };
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
    let verdict = gate2::authenticate(&ctx.gate, &ctx.gate2, &conn.state, peer, auth).await;
    let (ident, www_authenticate) = match verdict {
        Verdict::Allow {
            identity,
            www_authenticate,
        } => (identity, www_authenticate),
        Verdict::Continue { www_authenticate } => {
            // One more leg of a Negotiate exchange: a 401 carrying only the server's token.
            let mut r = simple(StatusCode::UNAUTHORIZED);
            match header::HeaderValue::from_str(&www_authenticate) {
                Ok(v) => {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    r.headers_mut().insert(
                        header::CONTENT_LENGTH,
                        header::HeaderValue::from_static("0"),
                    );
                }
                Err(_) => r = unauthorized(ctx.gate.as_ref()),
            }
            return answer_401(req, &ctx, r).await;
        }
        Verdict::Refuse => {
            // The one request answered without credentials: a small, exact Identify (SPEC §1).
            let (parts, mut body) = req.into_parts();
            if let Some(r) = anonymous_identify(&parts.headers, &mut body, peer).await {
                return r;
            }
            let req = Request::from_parts(parts, body);
            tracing::debug!(%peer, "gate 2: authentication refused (401)");
            let r = unauthorized(ctx.gate.as_ref());
            return answer_401(req, &ctx, r).await;
        }
    };
    conn.authenticated.store(true, Ordering::SeqCst);
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
        Err(e @ (BodyError::Timeout | BodyError::Io(_))) => return body_failed(peer, e),
    };
    // Encrypted bodies (Negotiate over plain HTTP) are decrypted, and plaintext ones refused
    // where only encryption is admitted, by gate 2.
    let max = ctx.max_body;
    let opened = gate2::with_gate_if_stateful(&ctx.gate, &conn.state, move |gate, c| {
        gate.open_body(c, content_type.as_deref(), bytes, max)
    })
    .await
    .flatten();
    let (content_type, bytes) = match opened {
        Some(RequestBody::Envelope {
            content_type,
            bytes,
        }) => (content_type, bytes),
        Some(RequestBody::Setup) => {
            let mut r = simple(StatusCode::OK);
            r.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from_static("0"),
            );
            add_www_authenticate(&mut r, www_authenticate.as_deref());
            return r;
        }
        None => {
            tracing::debug!(%peer, "gate 2: request body refused (401)");
            return unauthorized(ctx.gate.as_ref());
        }
    };
    let (status, xml) = match ctx
        .service
        .handle(&ident, peer, content_type.as_deref(), bytes, &address)
        .await
    {
        Reply::Ok(xml) => (StatusCode::OK, xml),
        Reply::Fault(xml) => (StatusCode::INTERNAL_SERVER_ERROR, xml),
        Reply::Unauthorized => return unauthorized(ctx.gate.as_ref()),
    };
    let sealed = gate2::with_gate_if_stateful(&ctx.gate, &conn.state, move |gate, c| {
        gate.seal_body(c, xml.into_bytes())
    })
    .await
    .flatten();
    let Some(ResponseBody {
        content_type,
        bytes,
    }) = sealed
    else {
        tracing::warn!(%peer, "gate 2: the response could not be encrypted (401)");
        return unauthorized(ctx.gate.as_ref());
    };
    let mut r = soap(status, bytes, false);
    if let Some(ct) = content_type.and_then(|ct| header::HeaderValue::from_str(&ct).ok()) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    add_www_authenticate(&mut r, www_authenticate.as_deref());
    r
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
    fn a_route_claims_its_prefix_and_what_is_under_it_only() {
        assert!(claims("/console", "/console"));
        assert!(claims("/console", "/console/"));
        assert!(claims("/console", "/console/api/run"));
        assert!(!claims("/console", "/consoles"));
        assert!(!claims("/console", "/wsman"));
        assert!(!claims("/console", "/"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_checked_as_ipv4() {
        let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(&canonical(ip)));
    }
}
