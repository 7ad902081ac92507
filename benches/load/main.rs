//! keyhole's load benchmark: the real `keyhole serve` (started on loopback with a throwaway
//! configuration) against a minimal hyper + rustls server measured in the same run, driven by a
//! WS-Man/WinRS/PSRP client written here. Every figure is printed with its ratio to the
//! in-run baseline and written to a JSON file.
//!
//! `cargo bench --bench load [-- OPTIONS]` measures (release build; the binary gets `--bench`).
//! With `--smoke` (tests/run.sh: `cargo test --bench load -- --smoke`) it runs every figure a
//! few times with tiny sizes and asserts only that every figure was produced — never a time.
//! Run by `cargo test` without `--smoke`, it does nothing (says so).
//! Options and the figures measured on the reference machine: benches/README.md.

mod baseline;
mod keyhole;
mod libcalls;
mod net;
mod stats;
mod wsman;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde_json::json;

use net::{Conn, Res, Target};
use stats::{us, Figure, Goal, Samples};
use wsman::{PsrpPool, WinrsShell};

const USAGE: &str = "\
cargo bench --bench load [-- OPTIONS]

  --smoke             seconds: every figure a few times (what the test command runs)
  --scale             also the scale figures: --idle 10000 --active 1000
  --idle N            N idle PSRP pools, then (fresh server) N idle WinRS shells
  --active N          N sessions (half WinRS, half PSRP) each running Get-Uptime every second
  --active-secs S     how long the active figure runs (default 30)
  --rss-cap-mib M     stop opening idle sessions when keyhole's RSS passes M MiB (default 8192)
  --seconds S         length of one throughput round (default 5)
  --keyhole PATH      the keyhole binary to measure (default: the one cargo built)
  --only A,B          only the figures whose id starts with A or B (ids: see the JSON file)
  --out PATH          the JSON result file (default: <target dir>/load/results-<mode>.json)
";

#[derive(Clone)]
struct Opts {
    smoke: bool,
    /// Figure id prefixes to run (empty: all).
    only: Vec<String>,
    idle: usize,
    active: usize,
    active_secs: u64,
    rss_cap_mib: u64,
    seconds: f64,
    keyhole: PathBuf,
    out: PathBuf,
}

impl Opts {
    /// Is the figure `id` selected by `--only`?
    fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| id.starts_with(p.as_str()))
    }
    /// Samples of a serial figure.
    fn n(&self, full: usize) -> usize {
        if self.smoke {
            3
        } else {
            full
        }
    }
}

fn parse_args() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        smoke: false,
        only: Vec::new(),
        idle: 0,
        active: 0,
        active_secs: 30,
        rss_cap_mib: 8192,
        seconds: 5.0,
        keyhole: PathBuf::from(env!("CARGO_BIN_EXE_keyhole")),
        out: PathBuf::new(),
    };
    let mut it = args.iter();
    let mut out = None;
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> Result<String, String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        let num = |name: &str, v: String| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{name} {v:?} is not a number\n\n{USAGE}"))
        };
        match a.as_str() {
            "--bench" => {}
            "--smoke" => o.smoke = true,
            "--scale" => {
                o.idle = 10_000;
                o.active = 1_000;
            }
            "--idle" => o.idle = num(a, val(a)?)? as usize,
            "--active" => o.active = num(a, val(a)?)? as usize,
            "--active-secs" => o.active_secs = num(a, val(a)?)?,
            "--rss-cap-mib" => o.rss_cap_mib = num(a, val(a)?)?,
            "--seconds" => o.seconds = num(a, val(a)?)? as f64,
            "--keyhole" => o.keyhole = PathBuf::from(val(a)?),
            "--out" => out = Some(PathBuf::from(val(a)?)),
            "--only" => {
                o.only = val(a)?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            // What `cargo test -- ARGS` hands every test binary (libtest's options): ignored.
            "--nocapture" | "--no-capture" | "--show-output" | "--quiet" | "-q" | "--ignored"
            | "--include-ignored" | "--exact" | "--list" => {}
            "--test-threads" | "--color" | "--format" | "--skip" => {
                it.next();
            }
            other
                if ["--test-threads=", "--color=", "--format=", "--skip="]
                    .iter()
                    .any(|p| other.starts_with(p)) => {}
            other if other.starts_with('-') => {
                return Err(format!("unknown option {other}\n\n{USAGE}"))
            }
            // A test name filter: ignored.
            _ => {}
        }
    }
    if o.smoke {
        o.idle = 8;
        o.active = 8;
        o.active_secs = 2;
        o.seconds = 0.5;
    }
    let mode = if o.smoke { "smoke" } else { "full" };
    o.out = out.unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        PathBuf::from(target)
            .join("load")
            .join(format!("results-{mode}.json"))
    });
    Ok(o)
}

/// A mutex's content, also after a panic elsewhere (the figures are reported regardless).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    us(d) / 1e3
}

/// keyhole and the baseline, as the client sees them.
struct Targets {
    keyhole: Target,
    baseline: Target,
    /// The same, with a client that resumes TLS sessions.
    keyhole_resume: Target,
    baseline_resume: Target,
}

fn targets(cfg: &keyhole::Config, base: &baseline::Baseline) -> Res<Targets> {
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            keyhole::USER,
            cfg.password
        ))
    );
    let keyhole_cert = net::pem_certificate(&cfg.certificate())?;
    let target = |name, addr, cert: &_, resume| -> Res<Target> {
        Ok(Target {
            name,
            addr,
            tls: net::tls_connector(cert, resume)?,
            authorization: basic.clone(),
        })
    };
    Ok(Targets {
        keyhole: target("keyhole", cfg.https, &keyhole_cert, false)?,
        baseline: target("baseline", base.addr, &base.cert, false)?,
        keyhole_resume: target("keyhole", cfg.https, &keyhole_cert, true)?,
        baseline_resume: target("baseline", base.addr, &base.cert, true)?,
    })
}

/// Time one expression into `s`.
macro_rules! timed {
    ($s:expr, $e:expr) => {{
        let t = Instant::now();
        $e;
        $s.push(t.elapsed());
    }};
}

/// Run the keyhole and baseline operations alternately (which goes first alternates too), so
/// that both see the same machine; `warm` rounds are not recorded.
macro_rules! interleaved {
    ($n:expr, $warm:expr, $ks:ident = $k:expr, $bs:ident = $b:expr) => {{
        let mut $ks = Samples::default();
        let mut $bs = Samples::default();
        for i in 0..($n + $warm) {
            let mut k = Samples::default();
            let mut b = Samples::default();
            if i % 2 == 0 {
                timed!(k, $k);
                timed!(b, $b);
            } else {
                timed!(b, $b);
                timed!(k, $k);
            }
            if i >= $warm {
                $ks.0.extend(k.0);
                $bs.0.extend(b.0);
            }
        }
        ($ks, $bs)
    }};
}

// ---------------------------------------------------------------------------------------------
// HTTP figures

/// Requests per second with `conns` kept-alive connections posting Identify for `secs`.
async fn throughput_round(t: &Target, conns: usize, secs: f64) -> Res<(f64, u64)> {
    let mut cs = Vec::with_capacity(conns);
    for _ in 0..conns {
        cs.push(Conn::open(t).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let err: Arc<Mutex<Option<String>>> = Arc::default();
    let body = wsman::identify();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut c in cs {
        let (done, stop, err, body) = (done.clone(), stop.clone(), err.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.post_ok(body.clone()).await {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        lock(&err).get_or_insert(e);
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = t0.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    if let Some(e) = lock(&err).take() {
        return Err(format!("{}: {e}", t.name));
    }
    Ok((n as f64 / elapsed.as_secs_f64(), n))
}

async fn throughput(ts: &Targets, o: &Opts) -> Res<Figure> {
    const CONNS: usize = 64;
    // Warm-up (argon2id cache, allocator, connection setup), then K B B K rounds.
    throughput_round(&ts.keyhole, CONNS, 0.3).await?;
    throughput_round(&ts.baseline, CONNS, 0.3).await?;
    let rounds = if o.smoke { 1 } else { 2 };
    let (mut k, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            k.push(throughput_round(&ts.keyhole, CONNS, o.seconds).await?.0);
            b.push(throughput_round(&ts.baseline, CONNS, o.seconds).await?.0);
        } else {
            b.push(throughput_round(&ts.baseline, CONNS, o.seconds).await?.0);
            k.push(throughput_round(&ts.keyhole, CONNS, o.seconds).await?.0);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(Figure {
        id: "wsman_throughput_64",
        title: format!("WS-Man requests over TLS, {CONNS} kept-alive connections (Identify with Basic; mean of {rounds} round(s) of {} s)", o.seconds),
        keyhole_label: "keyhole serve".into(),
        baseline_label: "baseline hyper+rustls server".into(),
        value: mean(&k),
        baseline: Some(mean(&b)),
        unit: "req/s",
        goal: Goal::AtLeast(0.5),
        goal_text: "≥ 0.5x the baseline's throughput",
        detail: json!({"connections": CONNS, "seconds_per_round": o.seconds, "keyhole_rounds": k, "baseline_rounds": b}),
    })
}

async fn serial_rtt(ts: &Targets, o: &Opts) -> Res<Figure> {
    let mut kc = Conn::open(&ts.keyhole).await?;
    let mut bc = Conn::open(&ts.baseline).await?;
    let body = wsman::identify();
    let kbytes = kc.post_ok(body.clone()).await?.body.len();
    let bbytes = bc.post_ok(body.clone()).await?.body.len();
    let (ks, bs) = interleaved!(
        o.n(1000),
        20,
        ks = kc.post_ok(body.clone()).await?,
        bs = bc.post_ok(body.clone()).await?
    );
    Ok(Figure {
        id: "wsman_serial_rtt",
        title: "WS-Man request round trip, serial, one kept-alive connection (Identify with Basic)"
            .into(),
        keyhole_label: "keyhole serve (median)".into(),
        baseline_label: "baseline hyper+rustls server (median)".into(),
        value: ms(ks.median()),
        baseline: Some(ms(bs.median())),
        unit: "ms",
        goal: Goal::AtMost(2.0),
        goal_text: "≤ 2x the baseline",
        detail: json!({"keyhole": ks.json(), "baseline": bs.json(), "reply_bytes": {"keyhole": kbytes, "baseline": bbytes}}),
    })
}

// ---------------------------------------------------------------------------------------------
// Commands on an open shell / pool

/// Which protocol a session figure uses.
#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Winrs,
    Psrp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Winrs => "WinRS",
            Proto::Psrp => "PSRP",
        }
    }
}

/// An open session of either kind.
enum Session {
    Winrs(WinrsShell),
    Psrp(PsrpPool),
}

impl Session {
    async fn open(p: Proto, c: &mut Conn) -> Res<Session> {
        Ok(match p {
            Proto::Winrs => Session::Winrs(WinrsShell::create(c).await?),
            Proto::Psrp => Session::Psrp(PsrpPool::open(c, keyhole::ENDPOINT).await?),
        })
    }
    /// Command + Receive until done (the timed part). WinRS: the terminate Signal that
    /// pywinrm sends afterwards is returned as the command id, to send outside the timing.
    async fn run(&mut self, c: &mut Conn, line: &str) -> Res<Option<String>> {
        match self {
            Session::Winrs(s) => Ok(Some(s.run(c, line).await?.1)),
            Session::Psrp(p) => {
                p.run(c, line).await?;
                Ok(None)
            }
        }
    }
    async fn cleanup(&mut self, c: &mut Conn, cid: Option<String>) -> Res<()> {
        match (self, cid) {
            (Session::Winrs(s), Some(cid)) => s.terminate(c, &cid).await,
            _ => Ok(()),
        }
    }
    async fn close(&self, c: &mut Conn) -> Res<()> {
        match self {
            Session::Winrs(s) => s.delete(c).await,
            Session::Psrp(p) => p.delete(c).await,
        }
    }
}

async fn builtin(ts: &Targets, o: &Opts, p: Proto) -> Res<Figure> {
    let mut kc = Conn::open(&ts.keyhole).await?;
    let mut bc = Conn::open(&ts.baseline).await?;
    let mut s = Session::open(p, &mut kc).await?;
    let body = wsman::identify();
    let mut ks = Samples::default();
    let mut bs = Samples::default();
    for i in 0..o.n(300) + 5 {
        let t = Instant::now();
        let cid = s.run(&mut kc, "Get-Uptime").await?;
        let k = t.elapsed();
        s.cleanup(&mut kc, cid).await?;
        let t = Instant::now();
        bc.post_ok(body.clone()).await?;
        let b = t.elapsed();
        if i >= 5 {
            ks.push(k);
            bs.push(b);
        }
    }
    s.close(&mut kc).await?;
    let id = match p {
        Proto::Winrs => "winrs_builtin",
        Proto::Psrp => "psrp_builtin",
    };
    Ok(Figure {
        id,
        title: format!(
            "A built-in command (Get-Uptime) on an open {} {}: Command + Receive until done",
            p.name(),
            if p == Proto::Psrp {
                "runspace pool"
            } else {
                "shell"
            }
        ),
        keyhole_label: "keyhole: Command + Receive (median)".into(),
        baseline_label: "baseline: one request, serial round trip (median)".into(),
        value: ms(ks.median()),
        baseline: Some(ms(bs.median())),
        unit: "ms",
        goal: Goal::AtMost(4.0),
        goal_text: "≤ 4x the baseline's round trip",
        detail: json!({"keyhole": ks.json(), "baseline": bs.json()}),
    })
}

async fn external(ts: &Targets, o: &Opts, p: Proto, program: &str) -> Res<Figure> {
    let mut kc = Conn::open(&ts.keyhole).await?;
    let mut s = Session::open(p, &mut kc).await?;
    let name = program.rsplit('/').next().unwrap_or(program).to_string();
    let spawn = |prog: &str| -> Res<()> {
        let out = std::process::Command::new(prog)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("{prog}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{prog} failed: {}", out.status));
        }
        Ok(())
    };
    let mut ks = Samples::default();
    let mut bs = Samples::default();
    for i in 0..o.n(150) + 3 {
        let mut k = Duration::ZERO;
        let mut b = Duration::ZERO;
        let mut cid = None;
        let kside = |first: bool| first == (i % 2 == 0);
        for first in [true, false] {
            if kside(first) {
                let t = Instant::now();
                cid = s.run(&mut kc, &name).await?;
                k = t.elapsed();
            } else {
                let t = Instant::now();
                spawn(program)?;
                b = t.elapsed();
            }
        }
        s.cleanup(&mut kc, cid).await?;
        if i >= 3 {
            ks.push(k);
            bs.push(b);
        }
    }
    s.close(&mut kc).await?;
    let id = match (p, name.as_str()) {
        (Proto::Winrs, "uptime") => "winrs_external_uptime",
        (Proto::Winrs, _) => "winrs_external_true",
        (Proto::Psrp, "uptime") => "psrp_external_uptime",
        (Proto::Psrp, _) => "psrp_external_true",
    };
    Ok(Figure {
        id,
        title: format!(
            "An external program ({program}) on an open {} session: Command + Receive until done",
            p.name()
        ),
        keyhole_label: format!(
            "keyhole runs `{name}` as {} (median)",
            keyhole::run_as_account()
        ),
        baseline_label: format!("the benchmark spawns {program} and waits (median)"),
        value: ms(ks.median()),
        baseline: Some(ms(bs.median())),
        unit: "ms",
        goal: Goal::AtMost(1.3),
        goal_text: "≤ 1.3x spawning it directly",
        detail: json!({"keyhole": ks.json(), "baseline": bs.json()}),
    })
}

async fn new_connection(ts: &Targets, o: &Opts, p: Proto, resume: bool) -> Res<Figure> {
    let body = wsman::identify();
    let (kt, bt) = if resume {
        (&ts.keyhole_resume, &ts.baseline_resume)
    } else {
        (&ts.keyhole, &ts.baseline)
    };
    // Connections whose handshake resumed a session, per side (resumption must work when the
    // client keeps its sessions, and never happen when it does not).
    let mut resumed = [0usize; 2];
    // Each step of the keyhole side too, to see where the time goes.
    let names = ["connect", "open", "command", "signal", "delete"];
    let mut step_samples: Vec<Samples> = vec![Samples::default(); names.len()];
    let mut round = 0usize;
    let (ks, bs) = interleaved!(
        o.n(100),
        3,
        ks = {
            let mut t = [Duration::ZERO; 5];
            let mut lap = Instant::now();
            let mut next = |i: usize| {
                t[i] = lap.elapsed();
                lap = Instant::now();
            };
            let mut c = Conn::open(kt).await?;
            resumed[0] += usize::from(c.resumed);
            next(0);
            let mut s = Session::open(p, &mut c).await?;
            next(1);
            let cid = s.run(&mut c, "Get-Uptime").await?;
            next(2);
            s.cleanup(&mut c, cid).await?;
            next(3);
            s.close(&mut c).await?;
            next(4);
            drop(c);
            round += 1;
            if round > 3 {
                for (i, d) in t.iter().enumerate() {
                    step_samples[i].push(*d);
                }
            }
        },
        bs = {
            let mut c = Conn::open(bt).await?;
            resumed[1] += usize::from(c.resumed);
            c.post_ok(body.clone()).await?;
            drop(c);
        }
    );
    let rounds = o.n(100) + 3;
    if resume && resumed.iter().any(|r| *r + 1 < rounds) {
        return Err(format!(
            "the client keeps its TLS sessions but only {} of {rounds} keyhole and {} baseline connections resumed one",
            resumed[0], resumed[1]
        ));
    }
    if !resume && resumed.iter().any(|r| *r > 0) {
        return Err("a cold connection resumed a TLS session".into());
    }
    let (id, steps) = match (p, resume) {
        (Proto::Winrs, false) => (
            "winrs_new_connection",
            "TLS connect + Create + Command + Receive + Signal + Delete",
        ),
        (Proto::Psrp, false) => (
            "psrp_new_connection",
            "TLS connect + Create + Receive (pool opened) + Command + Receive + Delete",
        ),
        (Proto::Winrs, true) => (
            "winrs_new_connection_resumed",
            "resumed TLS connect + Create + Command + Receive + Signal + Delete",
        ),
        (Proto::Psrp, true) => (
            "psrp_new_connection_resumed",
            "resumed TLS connect + Create + Receive (pool opened) + Command + Receive + Delete",
        ),
    };
    let tls = if resume {
        "resumed TLS session"
    } else {
        "new TLS session"
    };
    Ok(Figure {
        id,
        title: format!(
            "New connection ({tls}) + Basic + {} session + one built-in + close ({steps})",
            p.name()
        ),
        keyhole_label: "keyhole (median)".into(),
        baseline_label: format!("baseline: new connection ({tls}) + one request (median)"),
        value: ms(ks.median()),
        baseline: Some(ms(bs.median())),
        unit: "ms",
        goal: Goal::AtMost(3.0),
        goal_text: "≤ 3x the baseline",
        detail: json!({
            "keyhole": ks.json(), "baseline": bs.json(),
            "resumed_connections": {"keyhole": resumed[0], "baseline": resumed[1]},
            "keyhole_steps": names.iter().zip(&step_samples).map(|(n, s)| (n.to_string(), s.json())).collect::<serde_json::Map<_, _>>(),
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Idle RSS after start (settled, no request yet) and the start-up peak (VmHWM).
fn memory_figures(srv: &keyhole::Server, rss_kib: u64, hwm_kib: u64) -> Vec<Figure> {
    vec![
        Figure {
            id: "idle_rss_after_start",
            title:
                "Idle RSS of keyhole serve after start (1 s after it listens, before any request)"
                    .into(),
            keyhole_label: "VmRSS".into(),
            baseline_label: String::new(),
            value: mib(rss_kib),
            baseline: None,
            unit: "MiB",
            goal: Goal::Absolute(10.0),
            goal_text: "≤ 10 MB",
            detail: json!({"vmrss_kib": rss_kib, "start_to_listen_ms": ms(srv.start_time)}),
        },
        Figure {
            id: "startup_peak_rss",
            title: "Start-up peak of keyhole serve (VmHWM at the same moment)".into(),
            keyhole_label: "VmHWM".into(),
            baseline_label: String::new(),
            value: mib(hwm_kib),
            baseline: None,
            unit: "MiB",
            goal: Goal::Absolute(10.0),
            goal_text: "no start-up peak (≤ 10 MB)",
            detail: json!({"vmhwm_kib": hwm_kib}),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Scale

/// A fresh keyhole for a scale figure: configuration, server, targets.
fn fresh_server(
    o: &Opts,
    base: &baseline::Baseline,
) -> Res<(keyhole::Config, keyhole::Server, Targets)> {
    let cfg = keyhole::Config::write(&keyhole::Limits { sessions: 100_000 })?;
    let srv = keyhole::Server::start(&o.keyhole, &cfg)?;
    let ts = targets(&cfg, base)?;
    Ok((cfg, srv, ts))
}

/// Open `n` idle sessions of one kind on a fresh server, watching its memory.
async fn idle_sessions(o: &Opts, base: &baseline::Baseline, p: Proto) -> Res<Figure> {
    const WORKERS: usize = 16;
    let (_cfg, mut srv, ts) = fresh_server(o, base)?;
    // Authenticate once (the argon2id verification, cached afterwards) before the baseline.
    Conn::open(&ts.keyhole)
        .await?
        .post_ok(wsman::identify())
        .await?;
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = srv.status("VmRSS").unwrap_or(0);
    let smaps0 = srv.smaps();
    let threads0 = srv.status("Threads").unwrap_or(0);
    let fds0 = srv.fds().unwrap_or(0);
    let n = o.idle;
    let next = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let first_err: Arc<Mutex<Option<String>>> = Arc::default();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let mut c = Conn::open(&ts.keyhole).await?;
        let (next, opened, stop, first_err) = (
            next.clone(),
            opened.clone(),
            stop.clone(),
            first_err.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < n {
                match Session::open(p, &mut c).await {
                    Ok(s) => {
                        mine.push(s);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        lock(&first_err).get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            (c, mine)
        }));
    }
    // Watch: one checkpoint a second; stop at the RSS cap or when the server dies.
    let mut series = Vec::new();
    let mut stopped_by = String::new();
    loop {
        let finished = tasks.iter().all(|t| t.is_finished());
        let rss = srv.status("VmRSS").unwrap_or(0);
        series.push(json!({
            "t_s": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "sessions": opened.load(Ordering::Relaxed),
            "vmrss_kib": rss,
            "threads": srv.status("Threads"),
            "fds": srv.fds(),
        }));
        if finished {
            break;
        }
        if !srv.alive() {
            stopped_by = format!("keyhole exited; log tail:\n{}", srv.log_tail(20));
            stop.store(true, Ordering::Relaxed);
        } else if rss / 1024 > o.rss_cap_mib {
            stopped_by = format!(
                "RSS passed the cap of {} MiB (--rss-cap-mib)",
                o.rss_cap_mib
            );
            stop.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(if o.smoke { 50 } else { 1000 })).await;
    }
    let mut kept = Vec::new();
    for t in tasks {
        if let Ok(x) = t.await {
            kept.push(x);
        }
    }
    let open_time = t0.elapsed();
    let reached = opened.load(Ordering::Relaxed);
    if let Some(e) = lock(&first_err).take() {
        if stopped_by.is_empty() {
            stopped_by = format!("an open failed: {e}");
        }
    }
    std::thread::sleep(Duration::from_secs(if o.smoke { 0 } else { 2 }));
    let rss1 = srv.status("VmRSS").unwrap_or(0);
    let smaps1 = srv.smaps();
    let threads1 = srv.status("Threads").unwrap_or(0);
    let fds1 = srv.fds().unwrap_or(0);
    // Prove the sessions are alive: one command on the newest one.
    let mut alive_check = String::from("skipped");
    if let Some((c, mine)) = kept.iter_mut().find(|(_, m)| !m.is_empty()) {
        if let Some(s) = mine.last_mut() {
            alive_check = match s.run(c, "Get-Date").await {
                Ok(_) => "ok".into(),
                Err(e) => format!("failed: {e}"),
            };
        }
    }
    drop(kept);
    drop(srv);
    if reached == 0 {
        return Err(format!(
            "no {} session could be opened: {stopped_by}",
            p.name()
        ));
    }
    let per = (rss1.saturating_sub(rss0)) as f64 / reached as f64;
    let at_10k = mib(rss0) + per * 10_000.0 / 1024.0;
    let id = match p {
        Proto::Winrs => "idle_sessions_winrs",
        Proto::Psrp => "idle_sessions_psrp",
    };
    let what = match p {
        Proto::Winrs => "WinRS shells",
        Proto::Psrp => "PSRP runspace pools",
    };
    Ok(Figure {
        id,
        title: format!(
            "{reached} of {n} concurrent idle {what} opened ({} connections, {:.0} s){}",
            WORKERS,
            open_time.as_secs_f64(),
            if stopped_by.is_empty() {
                String::new()
            } else {
                format!("; stopped: {stopped_by}")
            }
        ),
        keyhole_label: if reached >= 10_000 {
            "keyhole RSS with 10,000 sessions (measured)".into()
        } else {
            format!("keyhole RSS at 10,000 sessions (projected from {reached}: {per:.0} KiB each)")
        },
        baseline_label: String::new(),
        value: at_10k,
        baseline: None,
        unit: "MiB",
        goal: Goal::Absolute(1024.0),
        goal_text: "10,000 in ≤ 1 GiB",
        detail: json!({
            "requested": n, "reached": reached, "stopped_by": stopped_by,
            "vmrss_before_kib": rss0, "vmrss_after_kib": rss1, "kib_per_session": per,
            "rss_by_mapping_before": smaps0, "rss_by_mapping_after": smaps1,
            "threads_before": threads0, "threads_after": threads1,
            "fds_before": fds0, "fds_after": fds1,
            "open_seconds": open_time.as_secs_f64(), "alive_check": alive_check,
            "series": series,
        }),
    })
}

/// `n` sessions (half WinRS shells, half PSRP pools, one connection each) each running
/// Get-Uptime once a second.
async fn active_sessions(o: &Opts, base: &baseline::Baseline) -> Res<Figure> {
    let (_cfg, mut srv, ts) = fresh_server(o, base)?;
    Conn::open(&ts.keyhole)
        .await?
        .post_ok(wsman::identify())
        .await?;
    let n = o.active;
    // Open the sessions 16 at a time.
    let mut sessions: Vec<(Proto, Conn, Session)> = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 16).min(n))
            .map(|j| {
                let t = ts.keyhole.clone();
                let p = if j % 2 == 0 {
                    Proto::Winrs
                } else {
                    Proto::Psrp
                };
                tokio::spawn(async move {
                    let mut c = Conn::open(&t).await?;
                    let s = Session::open(p, &mut c).await?;
                    Ok::<_, String>((p, c, s))
                })
            })
            .collect();
        for b in batch {
            sessions.push(b.await.map_err(|e| e.to_string())??);
        }
        i += 16;
    }
    let secs = o.active_secs;
    let lat: Arc<Mutex<Vec<(Proto, Duration)>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let first_err: Arc<Mutex<Option<String>>> = Arc::default();
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (p, mut c, mut s) in sessions {
        let offset = Duration::from_millis(rand::thread_rng().gen_range(0..1000));
        let (lat, errors, first_err) = (lat.clone(), errors.clone(), first_err.clone());
        let target = ts.keyhole.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start + offset, Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tokio::time::Instant::now() >= end {
                    break;
                }
                let t = Instant::now();
                let r = s.run(&mut c, "Get-Uptime").await;
                let d = t.elapsed();
                let r = match r {
                    Ok(cid) => s.cleanup(&mut c, cid).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => lock(&lat).push((p, d)),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        lock(&first_err).get_or_insert(e);
                        // A broken connection: open a new one (and a new session) to go on.
                        if let Ok(mut nc) = Conn::open(&target).await {
                            if let Ok(ns) = Session::open(p, &mut nc).await {
                                c = nc;
                                s = ns;
                            }
                        }
                    }
                }
            }
            (c, s)
        }));
    }
    // Sample the server while it runs.
    let mut peak_rss = 0;
    let mut peak_threads = 0;
    while tokio::time::Instant::now() < end {
        peak_rss = peak_rss.max(srv.status("VmRSS").unwrap_or(0));
        peak_threads = peak_threads.max(srv.status("Threads").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let alive = srv.alive();
    drop(srv);
    let all = lock(&lat).clone();
    let mut s_all = Samples::default();
    let mut s_w = Samples::default();
    let mut s_p = Samples::default();
    for (p, d) in &all {
        s_all.push(*d);
        match p {
            Proto::Winrs => s_w.push(*d),
            Proto::Psrp => s_p.push(*d),
        }
    }
    let errors = errors.load(Ordering::Relaxed);
    if s_all.len() == 0 {
        return Err(format!(
            "no command completed; first error: {}",
            lock(&first_err).clone().unwrap_or_default()
        ));
    }
    Ok(Figure {
        id: "active_sessions",
        title: format!("{n} sessions ({} WinRS shells, {} PSRP pools, one connection each) each running Get-Uptime every second, {secs} s", n.div_ceil(2), n / 2),
        keyhole_label: format!("p99 of Command + Receive ({} commands, {errors} errors)", s_all.len()),
        baseline_label: String::new(),
        value: ms(s_all.quantile(0.99)),
        baseline: None,
        unit: "ms",
        goal: Goal::Absolute(if errors == 0 { 50.0 } else { 0.0 }),
        goal_text: "p99 ≤ 50 ms, no error",
        detail: json!({
            "sessions": n, "seconds": secs, "commands": s_all.len(),
            "commands_per_second": s_all.len() as f64 / secs as f64,
            "errors": errors, "first_error": lock(&first_err).clone(),
            "all": s_all.json(), "winrs": s_w.json(), "psrp": s_p.json(),
            "peak_vmrss_kib": peak_rss, "peak_threads": peak_threads, "server_alive_after": alive,
        }),
    })
}

// ---------------------------------------------------------------------------------------------

/// The figures measured on the main keyhole instance.
const MAIN_FIGURES: [&str; 13] = [
    "idle_rss_after_start",
    "startup_peak_rss",
    "wsman_throughput_64",
    "wsman_serial_rtt",
    "winrs_builtin",
    "psrp_builtin",
    "winrs_external_uptime",
    "winrs_external_true",
    "psrp_external_uptime",
    "winrs_new_connection",
    "psrp_new_connection",
    "winrs_new_connection_resumed",
    "psrp_new_connection_resumed",
];

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench && !o.smoke {
        // Built and run by `cargo test`: the smoke run is tests/run.sh's own step.
        println!("load benchmark: nothing to do without --bench (cargo bench) or --smoke (tests/run.sh runs `cargo test --bench load -- --smoke`)");
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the client runtime: {e}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();
    let load_before = loadavg();
    let mode = if o.smoke {
        "SMOKE (tiny sizes: the figures prove it works and mean nothing)"
    } else {
        "full"
    };
    println!("keyhole load benchmark — mode {mode}");
    println!(
        "keyhole binary {} (commit {}), {} cores, load average {load_before}",
        o.keyhole.display(),
        git_commit(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut figs: Vec<Figure> = Vec::new();
    let failures: std::cell::RefCell<Vec<(&str, String)>> = Default::default();
    let record = |name: &'static str, r: Res<Figure>, figs: &mut Vec<Figure>| match r {
        Ok(f) => figs.push(f),
        Err(e) => {
            eprintln!("load: {name}: {e}");
            failures.borrow_mut().push((name, e));
        }
    };

    // Library figures first, while nothing else runs.
    let (rules, endpoints) = if o.smoke {
        (1_000, 50)
    } else {
        (100_000, 1_000)
    };
    if o.wants("gate3_rules") {
        record("gate3_rules", libcalls::gate3(rules, o.n(21)), &mut figs);
    }
    if o.wants("config_load") {
        record(
            "config_load",
            libcalls::config_load(endpoints, o.n(7), &keyhole::run_as_account()),
            &mut figs,
        );
    }

    let base = match baseline::start() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("load: cannot start the baseline server: {e}");
            std::process::exit(1);
        }
    };
    let memory_log: std::cell::RefCell<Vec<serde_json::Value>> = Default::default();
    let containment: std::cell::RefCell<String> = Default::default();
    let main_run = (|| -> Res<()> {
        if !MAIN_FIGURES.iter().any(|f| o.wants(f)) {
            return Ok(());
        }
        let cfg = keyhole::Config::write(&keyhole::Limits { sessions: 100_000 })?;
        let srv = keyhole::Server::start(&o.keyhole, &cfg)?;
        std::thread::sleep(Duration::from_secs(1));
        let rss = srv.status("VmRSS").unwrap_or(0);
        let hwm = srv.status("VmHWM").unwrap_or(0);
        for f in memory_figures(&srv, rss, hwm) {
            if o.wants(f.id) {
                figs.push(f);
            }
        }
        let ts = targets(&cfg, &base)?;
        let mut checkpoints = Vec::new();
        let mut mem = |label: &str| {
            let c = json!({
                "after": label, "vmrss_kib": srv.status("VmRSS"), "vmhwm_kib": srv.status("VmHWM"),
                "threads": srv.status("Threads"), "fds": srv.fds(), "rss_by_mapping": srv.smaps(),
            });
            println!("keyhole memory after {label}: {c}");
            checkpoints.push(c);
        };
        mem("start");
        println!("keyhole containment: {}", srv.containment());
        *containment.borrow_mut() = srv.containment();
        rt.block_on(async {
            // The first authenticated request (one argon2id verification, cached afterwards).
            let r = async {
                Conn::open(&ts.keyhole)
                    .await?
                    .post_ok(wsman::identify())
                    .await
            };
            if let Err(e) = r.await {
                record("first request", Err(e), &mut figs);
            }
            mem("the first authenticated request");
            if o.wants("wsman_throughput_64") {
                record("wsman_throughput_64", throughput(&ts, &o).await, &mut figs);
                mem("wsman_throughput_64");
            }
            if o.wants("wsman_serial_rtt") {
                record("wsman_serial_rtt", serial_rtt(&ts, &o).await, &mut figs);
                mem("wsman_serial_rtt");
            }
            for (p, id) in [
                (Proto::Winrs, "winrs_builtin"),
                (Proto::Psrp, "psrp_builtin"),
            ] {
                if o.wants(id) {
                    record(id, builtin(&ts, &o, p).await, &mut figs);
                    mem(id);
                }
            }
            for (p, prog, id) in [
                (Proto::Winrs, "/usr/bin/uptime", "winrs_external_uptime"),
                (Proto::Winrs, "/usr/bin/true", "winrs_external_true"),
                (Proto::Psrp, "/usr/bin/uptime", "psrp_external_uptime"),
            ] {
                if o.wants(id) {
                    record(id, external(&ts, &o, p, prog).await, &mut figs);
                    mem(id);
                }
            }
            for (p, resume, id) in [
                (Proto::Winrs, false, "winrs_new_connection"),
                (Proto::Psrp, false, "psrp_new_connection"),
                (Proto::Winrs, true, "winrs_new_connection_resumed"),
                (Proto::Psrp, true, "psrp_new_connection_resumed"),
            ] {
                if o.wants(id) {
                    record(id, new_connection(&ts, &o, p, resume).await, &mut figs);
                    mem(id);
                }
            }
        });
        *memory_log.borrow_mut() = checkpoints;
        Ok(())
    })();
    if let Err(e) = main_run {
        eprintln!("load: keyhole: {e}");
        failures.borrow_mut().push(("keyhole", e));
    }

    if o.idle > 0 {
        for (p, id) in [
            (Proto::Psrp, "idle_sessions_psrp"),
            (Proto::Winrs, "idle_sessions_winrs"),
        ] {
            if o.wants(id) {
                let r = rt.block_on(idle_sessions(&o, &base, p));
                record(id, r, &mut figs);
            }
        }
    }
    if o.active > 0 && o.wants("active_sessions") {
        let r = rt.block_on(active_sessions(&o, &base));
        record("active_sessions", r, &mut figs);
    }

    println!("\n================ figures ({:.0} s, load average before {load_before}, after {}) ================",
        started.elapsed().as_secs_f64(), loadavg());
    stats::print_table(&figs);
    let failures = failures.into_inner();
    let result = json!({
        "mode": if o.smoke { "smoke" } else { "full" },
        "commit": git_commit(),
        "keyhole_binary": o.keyhole.display().to_string(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_average_before": load_before,
        "load_average_after": loadavg(),
        "run_as": keyhole::run_as_account(),
        "containment": containment.into_inner(),
        "seconds": started.elapsed().as_secs_f64(),
        "figures": figs.iter().map(Figure::json).collect::<Vec<_>>(),
        "keyhole_memory_checkpoints": memory_log.into_inner(),
        "failures": failures.iter().map(|(n, e)| json!({"figure": n, "error": e})).collect::<Vec<_>>(),
    });
    if let Some(d) = o.out.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    match std::fs::write(
        &o.out,
        serde_json::to_string_pretty(&result).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nresults: {}", o.out.display()),
        Err(e) => eprintln!("load: cannot write {}: {e}", o.out.display()),
    }

    // What the test command checks: every figure was produced (never a time).
    let mut expected = vec!["gate3_rules", "config_load"];
    expected.extend(MAIN_FIGURES);
    if o.idle > 0 {
        expected.extend(["idle_sessions_psrp", "idle_sessions_winrs"]);
    }
    if o.active > 0 {
        expected.push("active_sessions");
    }
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|id| o.wants(id))
        .filter(|id| !figs.iter().any(|f| f.id == *id && f.produced()))
        .collect();
    if !missing.is_empty() || !failures.is_empty() {
        eprintln!("load: figures not produced: {missing:?}; failures: {failures:?}");
        std::process::exit(1);
    }
}
