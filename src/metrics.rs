//! `metrics`: counters, gauges and fixed-bucket histograms on atomics, rendered in the Prometheus
//! text exposition format (version 0.0.4) and served at `GET /metrics` on a separate listener
//! (`[metrics] listen`, SPEC §2.1).
//!
//! There is no global registry: the daemon builds one [`Metrics`] and hands `Arc`s of it to the
//! layers that count. Updating a series is one atomic operation; finding a labelled series takes
//! a read lock once (callers keep the `Arc` of a series they update often, e.g. a session keeps its
//! endpoint's). Label values are never user names or client input: endpoints (from the
//! configuration), transports, results, gates and refusal codes, each family capped at
//! [`MAX_SERIES_PER_FAMILY`] series (beyond it, values share one `_overflow` series).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Most label combinations one family keeps; more share an `_overflow` series.
pub const MAX_SERIES_PER_FAMILY: usize = 1024;
/// Command latency buckets (seconds): from a built-in's milliseconds to `command_timeout`'s 10 m.
pub const COMMAND_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];
/// Scrape connections served at once; more wait in the kernel's backlog.
pub const MAX_SCRAPE_CONNECTIONS: usize = 8;
/// A scrape connection that has not sent its request headers by then is closed.
pub const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a scrape connection stays open.
pub const SCRAPE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn dec(&self) {
        self.add(-1);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts of observations per fixed bucket, and their sum (kept in nanoseconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound, plus one for values above the last bound (not cumulative).
    slots: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            slots: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Record a duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(slot) = self.slots.get(i) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Saturating add on an atomic: a CAS loop (no lock).
        let _ = self
            .sum_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_add(nanos))
            });
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.slots.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

/// What a family holds per label combination.
pub trait Series: Send + Sync + 'static {
    const TYPE: &'static str;
    fn create(family: &FamilyInfo) -> Self;
    fn render(&self, out: &mut String, name: &str, labels: &str);
}

impl Series for Counter {
    const TYPE: &'static str = "counter";
    fn create(_: &FamilyInfo) -> Self {
        Counter::default()
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{labels} {}", self.get());
    }
}

impl Series for Gauge {
    const TYPE: &'static str = "gauge";
    fn create(_: &FamilyInfo) -> Self {
        Gauge::default()
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "{name}{labels} {}", self.get());
    }
}

impl Series for Histogram {
    const TYPE: &'static str = "histogram";
    fn create(family: &FamilyInfo) -> Self {
        Histogram::new(family.buckets)
    }
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        // Read every slot once so that the buckets, +Inf and _count agree with each other.
        let counts: Vec<u64> = self
            .slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        let mut cumulative = 0u64;
        for (bound, n) in self.bounds.iter().zip(&counts) {
            cumulative = cumulative.saturating_add(*n);
            let le = format!("le=\"{}\"", format_float(*bound));
            let _ = writeln!(out, "{name}_bucket{} {cumulative}", with_label(labels, &le));
        }
        let total: u64 = counts.iter().fold(0u64, |a, n| a.saturating_add(*n));
        let _ = writeln!(
            out,
            "{name}_bucket{} {total}",
            with_label(labels, "le=\"+Inf\"")
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{labels} {}", format_float(sum));
        let _ = writeln!(out, "{name}_count{labels} {total}");
    }
}

/// A family's name, help and label names.
#[derive(Debug)]
pub struct FamilyInfo {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub buckets: &'static [f64],
}

/// One metric family: a series per label combination.
pub struct Family<S: Series> {
    info: FamilyInfo,
    series: RwLock<BTreeMap<Vec<String>, Arc<S>>>,
}

impl<S: Series> Family<S> {
    fn new(info: FamilyInfo) -> Family<S> {
        let family = Family {
            info,
            series: RwLock::new(BTreeMap::new()),
        };
        if family.info.labels.is_empty() {
            let _ = family.with(&[]);
        }
        family
    }

    /// The series for these label values (one per label name, in order); created on first use.
    pub fn with(&self, values: &[&str]) -> Arc<S> {
        let mut key: Vec<String> = self
            .info
            .labels
            .iter()
            .enumerate()
            .map(|(i, _)| values.get(i).copied().unwrap_or("").to_string())
            .collect();
        {
            let map = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.get(&key) {
                return s.clone();
            }
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SERIES_PER_FAMILY && !map.contains_key(&key) {
            key = self
                .info
                .labels
                .iter()
                .map(|_| "_overflow".into())
                .collect();
        }
        map.entry(key)
            .or_insert_with(|| Arc::new(S::create(&self.info)))
            .clone()
    }

    /// The series without labels (families declared with none).
    pub fn get(&self) -> Arc<S> {
        self.with(&[])
    }

    fn render(&self, out: &mut String) {
        let info = &self.info;
        let _ = writeln!(out, "# HELP {} {}", info.name, escape_help(info.help));
        let _ = writeln!(out, "# TYPE {} {}", info.name, S::TYPE);
        let map = self.series.read().unwrap_or_else(|e| e.into_inner());
        for (values, s) in map.iter() {
            let labels = if info.labels.is_empty() {
                String::new()
            } else {
                let parts: Vec<String> = info
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
                    .collect();
                format!("{{{}}}", parts.join(","))
            };
            s.render(out, info.name, &labels);
        }
    }
}

fn with_label(labels: &str, extra: &str) -> String {
    match labels.strip_suffix('}') {
        Some(open) => format!("{open},{extra}}}"),
        None => format!("{{{extra}}}"),
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Every metric keyhole exports. Families without labels have their one series from the start;
/// labelled families show a series once something counted it.
pub struct Metrics {
    /// Sessions (PSRP runspace pools, WinRS shells, console sessions) open now.
    pub sessions_open: Family<Gauge>,
    /// Sessions opened since start.
    pub sessions_opened: Family<Counter>,
    /// Lines run, by endpoint and result (`ran`, `failed`, `refused`).
    pub commands: Family<Counter>,
    /// Wall-clock time of one line, by endpoint.
    pub command_duration: Family<Histogram>,
    /// Refusals at gates 1–4 (`gate` = "1".."4").
    pub refusals: Family<Counter>,
    /// Failed authentications by reason (the audit log's codes).
    pub auth_failures: Family<Counter>,
    /// Lock-outs started, by scope (`user`, `source`).
    pub auth_lockouts: Family<Counter>,
    /// Programs started through the sandbox, by result (`started`, `failed`).
    pub program_spawns: Family<Counter>,
    /// Output produced by commands and not yet received by clients, all users together.
    pub buffered_output_bytes: Family<Gauge>,
    /// Client connections open now (all listeners).
    pub connections_open: Family<Gauge>,
    /// Configuration reloads by result (`success`, `failure`).
    pub reloads: Family<Counter>,
    /// 1 when the last reload (or the start) loaded the configuration, 0 when it was refused.
    pub last_reload_successful: Family<Gauge>,
    /// When the configuration in force was loaded (Unix time).
    pub last_reload_success_timestamp: Family<Gauge>,
    /// When the process started (Unix time).
    pub start_time: Family<Gauge>,
    /// Always 1; the labels carry the version.
    pub build_info: Family<Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        fn info(
            name: &'static str,
            help: &'static str,
            labels: &'static [&'static str],
        ) -> FamilyInfo {
            FamilyInfo {
                name,
                help,
                labels,
                buckets: &[],
            }
        }
        let m = Metrics {
            sessions_open: Family::new(info(
                "keyhole_sessions_open",
                "Sessions open now (PSRP runspace pools, WinRS shells, console sessions).",
                &["endpoint", "transport"],
            )),
            sessions_opened: Family::new(info(
                "keyhole_sessions_opened_total",
                "Sessions opened since the server started.",
                &["endpoint", "transport"],
            )),
            commands: Family::new(info(
                "keyhole_commands_total",
                "Command lines by result: ran, failed (an error record) or refused (nothing ran).",
                &["endpoint", "result"],
            )),
            command_duration: Family::new(FamilyInfo {
                name: "keyhole_command_duration_seconds",
                help: "Wall-clock time of one command line, refusals included.",
                labels: &["endpoint"],
                buckets: COMMAND_SECONDS_BUCKETS,
            }),
            refusals: Family::new(info(
                "keyhole_refusals_total",
                "Requests refused, by gate (1 TLS and ip_allow, 2 authentication, 3 authorization rules, 4 endpoint and roles).",
                &["gate"],
            )),
            auth_failures: Family::new(info(
                "keyhole_auth_failures_total",
                "Failed authentications, by reason.",
                &["reason"],
            )),
            auth_lockouts: Family::new(info(
                "keyhole_auth_lockouts_total",
                "Lock-outs started after repeated failed logins, per (user, source address) pair or per source address.",
                &["scope"],
            )),
            program_spawns: Family::new(info(
                "keyhole_program_spawns_total",
                "Programs started through the sandbox as an endpoint's run_as account, by result.",
                &["result"],
            )),
            buffered_output_bytes: Family::new(info(
                "keyhole_buffered_output_bytes",
                "Output produced by commands and not yet received by clients, all users together.",
                &[],
            )),
            connections_open: Family::new(info(
                "keyhole_connections_open",
                "Client connections open now, all listeners together.",
                &[],
            )),
            reloads: Family::new(info(
                "keyhole_config_reloads_total",
                "Configuration reloads (SIGHUP or a changed file), by result.",
                &["result"],
            )),
            last_reload_successful: Family::new(info(
                "keyhole_config_last_reload_successful",
                "1 when the last configuration load succeeded, 0 when the last reload was refused.",
                &[],
            )),
            last_reload_success_timestamp: Family::new(info(
                "keyhole_config_last_reload_success_timestamp_seconds",
                "Unix time at which the configuration in force was loaded.",
                &[],
            )),
            start_time: Family::new(info(
                "keyhole_process_start_time_seconds",
                "Unix time at which the server started.",
                &[],
            )),
            build_info: Family::new(info(
                "keyhole_build_info",
                "Always 1; the version label says which keyhole runs.",
                &["version"],
            )),
        };
        m.build_info.with(&[env!("CARGO_PKG_VERSION")]).set(1);
        let now = unix_now();
        m.start_time.get().set(now);
        m.last_reload_successful.get().set(1);
        m.last_reload_success_timestamp.get().set(now);
        for result in ["success", "failure"] {
            let _ = m.reloads.with(&[result]);
        }
        for scope in ["user_source", "source"] {
            let _ = m.auth_lockouts.with(&[scope]);
        }
        for gate in ["1", "2", "3", "4"] {
            let _ = m.refusals.with(&[gate]);
        }
        for result in ["started", "failed"] {
            let _ = m.program_spawns.with(&[result]);
        }
        m
    }

    /// Count a reload and its result.
    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with(&[if ok { "success" } else { "failure" }])
            .inc();
        self.last_reload_successful.get().set(i64::from(ok));
        if ok {
            self.last_reload_success_timestamp.get().set(unix_now());
        }
    }

    /// The text exposition format of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.sessions_open.render(&mut out);
        self.sessions_opened.render(&mut out);
        self.commands.render(&mut out);
        self.command_duration.render(&mut out);
        self.refusals.render(&mut out);
        self.auth_failures.render(&mut out);
        self.auth_lockouts.render(&mut out);
        self.program_spawns.render(&mut out);
        self.buffered_output_bytes.render(&mut out);
        self.connections_open.render(&mut out);
        self.reloads.render(&mut out);
        self.last_reload_successful.render(&mut out);
        self.last_reload_success_timestamp.render(&mut out);
        self.start_time.render(&mut out);
        self.build_info.render(&mut out);
        out
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parse `[metrics] listen`: `None` when empty (disabled).
pub fn parse_listen(v: &str) -> Result<Option<SocketAddr>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!("metrics.listen = {v:?} is not an address:port like \"127.0.0.1:9465\" (\"\" disables it)")
    })
}

/// Answer one scrape request: `GET /metrics` (or HEAD), 404 elsewhere, 405 for other methods.
fn respond(
    metrics: &Metrics,
    method: &hyper::Method,
    path: &str,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use hyper::{header, Method, Response, StatusCode};
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(CONTENT_TYPE),
        );
        r
    };
    if path != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "keyhole serves only /metrics here\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n".into());
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    text(StatusCode::OK, metrics.render())
}

/// Serve `GET /metrics` on `listener` until `shutdown` completes. Connections from addresses
/// outside `ip_allow` are closed at once; at most [`MAX_SCRAPE_CONNECTIONS`] are served at a
/// time, each bounded by [`SCRAPE_HEADER_TIMEOUT`] and [`SCRAPE_CONNECTION_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ip_allow: Vec<ipnet::IpNet>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(std::net::IpAddr::V4)
                .unwrap_or(std::net::IpAddr::V6(v6)),
            v4 => v4,
        };
        if !ip_allow.iter().any(|n| n.contains(&ip)) {
            tracing::info!(client = %peer, gate = 1, "metrics scrape refused: address not in ip_allow");
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, "metrics scrape refused: too many scrape connections");
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let r = respond(&m, req.method(), req.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .max_buf_size(16 * 1024);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SCRAPE_CONNECTION_TIMEOUT, conn).await;
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_labels_render() {
        let m = Metrics::new();
        m.commands.with(&["Helpdesk", "ran"]).add(3);
        m.commands.with(&["Help\"desk\\\n", "refused"]).inc();
        m.sessions_open.with(&["Helpdesk", "psrp"]).inc();
        m.sessions_open.with(&["Helpdesk", "psrp"]).dec();
        m.reloaded(false);
        let t = m.render();
        assert!(t.contains("# TYPE keyhole_commands_total counter\n"), "{t}");
        assert!(
            t.contains("keyhole_commands_total{endpoint=\"Helpdesk\",result=\"ran\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "keyhole_commands_total{endpoint=\"Help\\\"desk\\\\\\n\",result=\"refused\"} 1\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("keyhole_sessions_open{endpoint=\"Helpdesk\",transport=\"psrp\"} 0\n"),
            "{t}"
        );
        assert!(t.contains("keyhole_config_reloads_total{result=\"failure\"} 1\n"));
        assert!(t.contains("keyhole_config_reloads_total{result=\"success\"} 0\n"));
        assert!(t.contains("keyhole_config_last_reload_successful 0\n"));
        assert!(t.contains(&format!(
            "keyhole_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_agree_with_count() {
        let m = Metrics::new();
        let h = m.command_duration.with(&["E"]);
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(70));
        h.observe(Duration::from_secs(4000));
        assert_eq!(h.count(), 3);
        let t = m.render();
        assert!(t.contains("# TYPE keyhole_command_duration_seconds histogram\n"));
        assert!(
            t.contains("keyhole_command_duration_seconds_bucket{endpoint=\"E\",le=\"0.005\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("keyhole_command_duration_seconds_bucket{endpoint=\"E\",le=\"0.1\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("keyhole_command_duration_seconds_bucket{endpoint=\"E\",le=\"600.0\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("keyhole_command_duration_seconds_bucket{endpoint=\"E\",le=\"+Inf\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("keyhole_command_duration_seconds_count{endpoint=\"E\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("keyhole_command_duration_seconds_sum{endpoint=\"E\"} 4000.073\n"),
            "{t}"
        );
    }

    #[test]
    fn series_are_capped_per_family() {
        let m = Metrics::new();
        for i in 0..(MAX_SERIES_PER_FAMILY + 10) {
            m.auth_failures.with(&[&format!("r{i}")]).inc();
        }
        let t = m.render();
        let lines = t
            .lines()
            .filter(|l| l.starts_with("keyhole_auth_failures_total{"))
            .count();
        assert_eq!(lines, MAX_SERIES_PER_FAMILY + 1);
        assert!(
            t.contains("keyhole_auth_failures_total{reason=\"_overflow\"} 10\n"),
            "overflow"
        );
    }

    #[test]
    fn only_get_metrics_is_served() {
        let m = Metrics::new();
        assert_eq!(respond(&m, &hyper::Method::GET, "/metrics").status(), 200);
        assert_eq!(respond(&m, &hyper::Method::GET, "/").status(), 404);
        assert_eq!(respond(&m, &hyper::Method::GET, "/metrics/x").status(), 404);
        assert_eq!(respond(&m, &hyper::Method::POST, "/metrics").status(), 405);
    }

    #[test]
    fn listen_address_parsing() {
        assert_eq!(parse_listen("").unwrap(), None);
        assert!(parse_listen("127.0.0.1:9465").unwrap().is_some());
        assert!(parse_listen("[::1]:9465").unwrap().is_some());
        assert!(parse_listen("localhost:9465").is_err());
        assert!(parse_listen("9465").is_err());
    }
}
