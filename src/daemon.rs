//! `daemon`: the server process and the composition root — load and validate the
//! configuration, build the gates, the shared workers and the shell factories (WinRS, PSRP),
//! register the web console on the HTTPS listener when `[console] enabled`, start the listeners, reload on SIGHUP or a changed file (a bad configuration never replaces a
//! good one; open sessions are never dropped), and stop gracefully on SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{self, LoadedConfig, Severity};
use crate::console::Console;
use crate::gates::Gates;
use crate::http::{Server, ServerError, ServerRuntime};
use crate::metrics::Metrics;
use crate::shells::psrp::PsrpFactory;
use crate::shells::runner::{Workers, DEFAULT_MAX_WORKERS};
use crate::shells::winrs::WinrsFactory;
use crate::shells::UserBudgets;
use crate::wsman::envelope::{URI_CMD, URI_POWERSHELL_PREFIX};

/// How often configuration files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// What `serve` prints once the listeners are up (the demo adds its own lines).
pub struct Started {
    pub https: Option<std::net::SocketAddr>,
    pub http: Option<std::net::SocketAddr>,
    pub fingerprint: Option<String>,
    /// The Prometheus scrape listener (`[metrics] listen`), when configured.
    pub metrics: Option<std::net::SocketAddr>,
    /// The HTTPS listener, when it serves the web console (`[console] enabled`).
    pub console: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the configuration has errors (run `keyhole check --config {0}` to see them again)")]
    Config(String),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot listen for metrics on {addr} ([metrics] listen): {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Set up logging (`RUST_LOG` overrides the `info` default). Idempotent. When standard error is
/// the journal (a systemd service), events go to journald natively with their fields
/// (`KEYHOLE_GATE`, `KEYHOLE_USER`, …); otherwise plain text to standard error, coloured only
/// when it is a terminal. The JSON audit log is separate and unchanged.
pub fn init_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if crate::systemd::stderr_is_journal() {
        let socket = Path::new(crate::systemd::JOURNAL_SOCKET);
        if let Ok(journal) = crate::systemd::JournaldLayer::connect(socket) {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(journal)
                .try_init();
            return;
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Print every diagnostic; true when any is an error.
pub fn report(diags: &[config::Diagnostic]) -> bool {
    for d in diags {
        eprintln!("{}", d.rendered.trim_end());
    }
    diags.iter().any(|d| d.severity == Severity::Error)
}

/// Load, or print every diagnostic and fail.
pub fn load(path: &Path) -> Result<LoadedConfig, DaemonError> {
    match crate::check::load(path) {
        Ok(cfg) => {
            report(&cfg.warnings);
            Ok(cfg)
        }
        Err(diags) => {
            report(&diags);
            Err(DaemonError::Config(path.display().to_string()))
        }
    }
}

/// Every file the configuration is read from, with its modification time (for reload).
fn snapshot(cfg: &LoadedConfig) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut paths = vec![
        cfg.path.clone(),
        cfg.resolve(&cfg.server.users),
        cfg.resolve(&cfg.server.authorization_rules),
    ];
    for dir in [&cfg.server.endpoints_dir, &cfg.server.role_capabilities_dir] {
        let d = cfg.resolve(dir);
        paths.push(d.clone());
        if let Ok(rd) = std::fs::read_dir(&d) {
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            paths.extend(files);
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, m)
        })
        .collect()
}

/// Reload from `path`; keeps the running configuration when the new one fails validation.
/// Counted in `keyhole_config_reloads_total{result}`.
pub fn reload(gates: &Gates, path: &Path, metrics: &Metrics) -> bool {
    let ok = reload_inner(gates, path);
    metrics.reloaded(ok);
    ok
}

fn reload_inner(gates: &Gates, path: &Path) -> bool {
    match crate::check::load(path) {
        Ok(new) => {
            for w in &new.warnings {
                tracing::warn!("{}", w.rendered.trim_end());
            }
            if new.rules.rules.is_empty() {
                tracing::error!("no authorization rules after reload: nobody gets in");
            }
            if let Err(e) = gates.reload(new) {
                tracing::error!(config = %path.display(), "reload refused: {e}; the running configuration stays in force");
                return false;
            }
            tracing::info!(config = %path.display(), "configuration reloaded; open sessions keep the one they started with");
            true
        }
        Err(diags) => {
            for d in &diags {
                tracing::error!("{}", d.rendered.trim_end());
            }
            tracing::error!(config = %path.display(), "reload refused: the new configuration has errors; the running configuration stays in force");
            false
        }
    }
}

/// Raise the soft limit on open descriptors to the hard limit: each session holds its
/// transcript open and each connection a socket, so 10,000 sessions need more than the 1,024 a
/// service gets by default (systemd's soft limit; its hard limit is 524,288). Programs still
/// start with `RLIMIT_NOFILE` = 1,024 (the sandbox sets it). Returns (before, after).
pub fn raise_nofile_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some((soft, soft));
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some((soft, hard)),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit; sessions beyond it are refused");
            Some((soft, soft))
        }
    }
}

/// Run the server until SIGTERM/SIGINT. `on_started` is called once the listeners are bound.
pub fn serve(
    path: &Path,
    cfg: LoadedConfig,
    on_started: impl FnOnce(&Started),
) -> Result<(), DaemonError> {
    if let Some((before, after)) = raise_nofile_limit() {
        tracing::info!(
            before,
            after,
            "open-file limit (RLIMIT_NOFILE soft) raised to the hard limit"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve_async(path.to_path_buf(), cfg, on_started))
}

async fn serve_async(
    path: PathBuf,
    cfg: LoadedConfig,
    on_started: impl FnOnce(&Started),
) -> Result<(), DaemonError> {
    if cfg.rules.rules.is_empty() {
        tracing::error!("no authorization rules: NOBODY GETS IN. Add one with `keyhole rule add`.");
        eprintln!("keyhole: WARNING: no authorization rules: nobody gets in (add one with `keyhole rule add`)");
    }
    let runtime = ServerRuntime::from_config(&cfg.server, &cfg.base_dir);
    let mech = crate::sandbox::init();
    tracing::info!(containment = ?mech, "sandbox ready");
    let metrics = Arc::new(Metrics::new());
    let metrics_addr = crate::metrics::parse_listen(&cfg.server.metrics.listen)
        .map_err(|m| DaemonError::Config(format!("{} ({m})", path.display())))?;
    let ip_allow = ip_allow_nets(&cfg.server.listener.ip_allow);
    let console_enabled = cfg.server.console.enabled;
    let state_directory = runtime.state_directory.clone();
    let gates = Arc::new(Gates::new(cfg)?);
    gates.attach_metrics(metrics.clone());
    // Values kept where they happen, process-wide, copied in at each scrape.
    metrics.on_scrape(|m| {
        let buffered = crate::shells::runner::buffered_output_bytes();
        m.buffered_output_bytes
            .get()
            .set(i64::try_from(buffered).unwrap_or(i64::MAX));
        let (started, failed) = crate::sandbox::spawn_counts();
        m.program_spawns.with(&["started"]).raise_to(started);
        m.program_spawns.with(&["failed"]).raise_to(failed);
    });
    let mut server = Server::bind(runtime, gates.clone()).await?;
    // One set of password verification slots for the listeners and the console's sign-in.
    server.share_verify_slots(gates.verify_slots());
    server.attach_metrics(metrics.clone());
    let workers = Workers::new(DEFAULT_MAX_WORKERS);
    // One output budget per user, across the user's WinRS shells and PSRP pools.
    let budgets = UserBudgets::new();
    server.register_exact(
        URI_CMD,
        Arc::new(WinrsFactory::new(
            gates.clone(),
            workers.clone(),
            budgets.clone(),
        )),
    );
    server.register_prefix(
        URI_POWERSHELL_PREFIX,
        Arc::new(PsrpFactory::new(
            gates.clone(),
            workers.clone(),
            budgets.clone(),
        )),
    );
    // The web console: HTTPS only (the listener never serves it over plain HTTP). Read at
    // start; turning it on or off takes a restart.
    if console_enabled {
        server.register_routes(Console::new(gates.clone(), workers, budgets));
    }
    let metrics_listener = match metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let started = Started {
        https: server.https_addr,
        http: server.http_addr,
        fingerprint: server.tls_fingerprint.clone(),
        metrics: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        console: server.https_addr.filter(|_| console_enabled),
    };
    let metrics_task = metrics_listener.map(|l| {
        tokio::spawn(crate::metrics::serve(
            l,
            metrics.clone(),
            ip_allow,
            std::future::pending::<()>(),
        ))
    });
    if let Some(a) = started.metrics {
        tracing::info!(address = %a, "listening (metrics: GET /metrics)");
    }
    if let Some(a) = started.https {
        tracing::info!(address = %a, fingerprint = started.fingerprint.as_deref().unwrap_or(""), "listening (HTTPS)");
        if started.console.is_some() {
            tracing::info!(address = %a, "web console at https://{a}/console");
        }
    }
    if let Some(a) = started.http {
        tracing::info!(address = %a, "listening (HTTP: loopback, allow_unencrypted, or encrypted Negotiate only)");
    }
    // `keyhole sessions`: the control socket in state_directory. Without it the server still
    // serves (the reason is logged).
    let (control_stop, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_task = match crate::control::bind(&state_directory) {
        Ok(sock) => {
            tracing::info!(path = %sock.path().display(), "control socket ready (keyhole sessions)");
            Some(tokio::spawn(crate::control::serve(
                sock,
                gates.sessions(),
                async move {
                    let _ = control_stopped.await;
                },
            )))
        }
        Err(e) => {
            tracing::error!("{e}; `keyhole sessions` will not reach this server");
            None
        }
    };
    // Signal handlers first: a SIGTERM or SIGHUP that arrives as soon as we say we are ready
    // (a test, `systemctl reload` right after start) must not meet the default action.
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot watch SIGHUP: {e}; reload on file change only");
            None
        }
    };
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    on_started(&started);
    // Type=notify: the listeners are bound, clients can connect.
    crate::systemd::notify(&format!(
        "READY=1\nSTATUS=serving {}\nMAINPID={}",
        [
            started.https.map(|a| format!("https://{a}")),
            started.http.map(|a| format!("http://{a}"))
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" "),
        std::process::id()
    ));

    // Reload on SIGHUP or when a file changes.
    let reload_gates = gates.clone();
    let reload_path = path.clone();
    let reload_metrics = metrics.clone();
    let reloader = tokio::spawn(async move {
        let mut hup = hup;
        let mut seen = snapshot(&reload_gates.config());
        loop {
            let by_signal = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
                _ = tokio::time::sleep(RELOAD_POLL) => false,
            };
            let now = snapshot(&reload_gates.config());
            if by_signal || now != seen {
                let g = reload_gates.clone();
                let p = reload_path.clone();
                let m = reload_metrics.clone();
                crate::systemd::notify("RELOADING=1\nSTATUS=reloading the configuration");
                let ok = tokio::task::spawn_blocking(move || reload(&g, &p, &m))
                    .await
                    .unwrap_or(false);
                crate::systemd::notify(if ok {
                    "READY=1\nSTATUS=configuration reloaded"
                } else {
                    "READY=1\nSTATUS=reload refused: the running configuration stays (see the log)"
                });
                seen = snapshot(&reload_gates.config());
            }
        }
    });

    let shutdown = async {
        let (mut term, mut int) = (term, int);
        tokio::select! {
            _ = async { match int.as_mut() { Some(i) => { i.recv().await; } None => std::future::pending::<()>().await } } => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
        crate::systemd::notify(
            "STOPPING=1\nSTATUS=finishing requests, stopping programs, closing transcripts",
        );
        tracing::info!("shutting down: finishing requests, stopping programs, closing transcripts");
    };
    let result = server.run(shutdown).await;
    let _ = control_stop.send(());
    if let Some(t) = control_task {
        let _ = t.await;
    }
    reloader.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    result.map_err(DaemonError::from)
}

/// `[listener] ip_allow` as networks (a plain address is a /32 or /128); validated by `check`.
fn ip_allow_nets(list: &[String]) -> Vec<ipnet::IpNet> {
    list.iter()
        .filter_map(|s| {
            s.parse::<ipnet::IpNet>()
                .ok()
                .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
        })
        .collect()
}
