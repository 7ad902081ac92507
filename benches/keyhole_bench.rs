//! keyhole's measured benchmark: each case is timed against a baseline measured in the same run,
//! and the ratio is what the figure means. No harness, no dependency: `std::time::Instant`.
//!
//! `cargo bench --bench keyhole_bench` measures (the binary gets `--bench`). Built by
//! `cargo test --all-targets`, the binary runs without `--bench`: then every case runs only a
//! few iterations, to prove it still works, and the figures mean nothing. Nothing asserts on time.
//! Figures measured on the reference machine: benches/README.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keyhole::auth::{hash_password, AuthResult, Authenticator};
use keyhole::config::{AuthConfig, UserEntry, UsersFile};

/// How hard to measure.
#[derive(Clone, Copy)]
struct Mode {
    /// Samples per case (the median and p90 are taken over these).
    samples: usize,
    /// Samples of a case whose every sample needs a fresh, expensive setup (argon2id).
    slow_samples: usize,
    /// A sample of a fast operation repeats it until about this long has passed.
    sample_target: Duration,
    quick: bool,
}

const FULL: Mode = Mode {
    samples: 101,
    slow_samples: 21,
    sample_target: Duration::from_millis(4),
    quick: false,
};

const QUICK: Mode = Mode {
    samples: 3,
    slow_samples: 2,
    sample_target: Duration::from_micros(50),
    quick: true,
};

/// The line of case (a), typical of what an operator types.
const TYPICAL_LINE: &str = "Get-Service -Name nginx,cups | Select-Object -First 2";

/// Per-operation times of one case.
struct Figure {
    name: String,
    /// Per operation, sorted ascending.
    times: Vec<Duration>,
}

impl Figure {
    fn quantile(&self, q: f64) -> Duration {
        if self.times.is_empty() {
            return Duration::ZERO;
        }
        let last = self.times.len() - 1;
        // Nearest rank, clamped to the last sample.
        let i = ((q * last as f64).round() as usize).min(last);
        self.times.get(i).copied().unwrap_or(Duration::ZERO)
    }
    fn median(&self) -> Duration {
        self.quantile(0.5)
    }
    fn p90(&self) -> Duration {
        self.quantile(0.9)
    }
    fn ops_per_sec(&self) -> f64 {
        let m = self.median().as_secs_f64();
        if m > 0.0 {
            1.0 / m
        } else {
            f64::INFINITY
        }
    }
}

/// Times `op` `mode.samples` times; each sample repeats it `batch` times, with `batch` chosen so
/// that one sample lasts about `mode.sample_target` (Instant's own cost then vanishes).
fn measure_fast(mode: Mode, name: &str, mut op: impl FnMut()) -> Figure {
    // Warm up and calibrate.
    let mut batch: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        let spent = t.elapsed();
        if spent >= mode.sample_target || batch >= 1 << 24 {
            break;
        }
        batch = batch.saturating_mul(2);
    }
    let mut times = Vec::with_capacity(mode.samples);
    for _ in 0..mode.samples {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        let spent = t.elapsed();
        times.push(spent / u32::try_from(batch).unwrap_or(u32::MAX));
    }
    times.sort();
    Figure {
        name: name.to_string(),
        times,
    }
}

/// Times `op` once per sample, each on a fresh value made (untimed) by `setup`.
fn measure_each<T>(
    samples: usize,
    name: &str,
    mut setup: impl FnMut() -> T,
    mut op: impl FnMut(&T),
) -> Figure {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let value = setup();
        let t = Instant::now();
        op(&value);
        times.push(t.elapsed());
    }
    times.sort();
    Figure {
        name: name.to_string(),
        times,
    }
}

fn human(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

fn human_rate(r: f64) -> String {
    if !r.is_finite() {
        "-".into()
    } else if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.1}")
    }
}

fn row(f: &Figure, ratio: Option<(f64, &str)>) {
    let ratio = match ratio {
        Some((r, what)) => format!("{r:>9.1}x {what}"),
        None => "  (baseline)".into(),
    };
    println!(
        "  {:<44} {:>10} {:>10} {:>10} {:>8}  {}",
        f.name,
        human(f.median()),
        human(f.p90()),
        human_rate(f.ops_per_sec()),
        f.times.len(),
        ratio
    );
}

/// Prints a case and its baseline; the ratio is case median / baseline median.
fn pair(title: &str, case: &Figure, baseline: &Figure, meaning: &str) {
    println!("{title}");
    row(baseline, None);
    let b = baseline.median().as_secs_f64();
    let ratio = if b > 0.0 {
        case.median().as_secs_f64() / b
    } else {
        f64::INFINITY
    };
    row(case, Some((ratio, meaning)));
    println!();
}

// ---------------------------------------------------------------------------------------------
// (a) lang::parse
// ---------------------------------------------------------------------------------------------

fn bench_parse(mode: Mode) {
    if let Err(e) = keyhole::lang::parse(TYPICAL_LINE) {
        println!("(a) skipped: the typical line is refused: {e}");
        return;
    }
    let baseline = measure_fast(mode, "split_whitespace().count()", || {
        black_box(black_box(TYPICAL_LINE).split_whitespace().count());
    });
    let case = measure_fast(mode, "lang::parse", || {
        let _ = black_box(keyhole::lang::parse(black_box(TYPICAL_LINE)));
    });
    pair(
        &format!("(a) one line: {TYPICAL_LINE:?}"),
        &case,
        &baseline,
        "the cost of bare tokenising",
    );
}

// ---------------------------------------------------------------------------------------------
// (b) Authenticator::verify_basic
// ---------------------------------------------------------------------------------------------

fn bench_auth(mode: Mode) {
    const USER: &str = "bench";
    const PASSWORD: &str = "correct horse battery staple";
    let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let hash = match hash_password(PASSWORD) {
        Ok(h) => h,
        Err(e) => {
            println!("(b) skipped: cannot hash a password: {e}");
            return;
        }
    };
    let mut users = UsersFile::default();
    users.users.insert(
        USER.into(),
        UserEntry {
            password: hash,
            groups: vec!["helpdesk".into()],
            disabled: false,
            client_certificates: Vec::new(),
            nt_hash: None,
        },
    );
    let cfg = AuthConfig::default();
    let users_path = PathBuf::from("/nonexistent/users.toml");
    let fresh = || Authenticator::new(&cfg, &users_path, users.clone());

    let check = fresh();
    if !matches!(
        check.verify_basic(USER, PASSWORD, source),
        AuthResult::Ok(_)
    ) {
        println!("(b) skipped: the bench user is refused");
        return;
    }

    // Each sample: a new authenticator (its cache empty), so the call runs argon2id.
    let first = measure_each(
        mode.slow_samples,
        "verify_basic, first (argon2id)",
        fresh,
        |a| {
            black_box(a.verify_basic(black_box(USER), black_box(PASSWORD), source));
        },
    );
    // One authenticator, verified once: every call after hits the cache.
    let warm = fresh();
    let _ = warm.verify_basic(USER, PASSWORD, source);
    let before = warm.verification_count();
    let cached = measure_fast(mode, "verify_basic, cached", || {
        black_box(warm.verify_basic(black_box(USER), black_box(PASSWORD), source));
    });
    if warm.verification_count() != before {
        println!("(b) warning: the cached case ran argon2 again; its figure is not the cache");
    }
    // Here the baseline is the cached call: the ratio is what the cache saves per login.
    pair(
        "(b) Basic authentication of the same credentials",
        &first,
        &cached,
        "the cached call (what the cache saves)",
    );
}

// ---------------------------------------------------------------------------------------------
// (c) config::load
// ---------------------------------------------------------------------------------------------

/// Every file `config::load` reads for the shipped example.
fn shipped_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        root.join("keyhole.toml"),
        root.join("authorization-rules.toml"),
    ];
    let users = root.join("users.toml");
    if users.is_file() {
        files.push(users);
    }
    for dir in ["endpoints", "role-capabilities"] {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect()
            })
            .unwrap_or_default();
        in_dir.sort();
        files.extend(in_dir);
    }
    files
}

fn bench_config(mode: Mode) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let keyhole_toml = root.join("keyhole.toml");
    if let Err(diags) = keyhole::config::load(&keyhole_toml) {
        println!(
            "(c) skipped: the shipped configuration does not load ({} diagnostics)",
            diags.len()
        );
        return;
    }
    let files = shipped_files(root);
    let bytes: usize = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len() as usize)
        .sum();
    let baseline = measure_fast(mode, "read the same files' bytes", || {
        for f in &files {
            let _ = black_box(std::fs::read(black_box(f)));
        }
    });
    let case = measure_fast(mode, "config::load(keyhole.toml)", || {
        let _ = black_box(keyhole::config::load(black_box(&keyhole_toml)));
    });
    pair(
        &format!(
            "(c) the shipped configuration: {} files, {} bytes",
            files.len(),
            bytes
        ),
        &case,
        &baseline,
        "reading the bytes (validation cost)",
    );
}

// ---------------------------------------------------------------------------------------------
// (d) the wildcard matcher on a pathological -like
// ---------------------------------------------------------------------------------------------

fn bench_wildcard(mode: Mode) {
    use keyhole::lang::wildcard::{Mode as WMode, Wildcard};
    let text = "a".repeat(64 * 1024);
    let pattern = format!("{}*b", "*a".repeat(500));
    let Ok(w) = Wildcard::new(&pattern, WMode::LIKE) else {
        println!("(d) skipped: the pattern does not compile");
        return;
    };
    let baseline = measure_fast(mode, "text.contains('b') (one scan)", || {
        let _ = black_box(black_box(&text).contains('b'));
    });
    let case = measure_fast(mode, "-like '*a*a*…*b' (1002 tokens)", || {
        let _ = black_box(w.is_match(black_box(&text)));
    });
    pair(
        "(d) a pathological -like over 64 KiB (text × pattern would be 65 M steps)",
        &case,
        &baseline,
        "one scan of the text",
    );
}

fn main() {
    let mode = if std::env::args().skip(1).any(|a| a == "--bench") {
        FULL
    } else {
        QUICK
    };
    println!(
        "keyhole_bench: {} ({} samples per case, {} for argon2id; {} logical CPUs)",
        if mode.quick {
            "QUICK test run, figures are not measurements (use `cargo bench --bench keyhole_bench`)"
        } else {
            "measuring"
        },
        mode.samples,
        mode.slow_samples,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    );
    println!();
    println!(
        "  {:<44} {:>10} {:>10} {:>10} {:>8}  ratio to the baseline",
        "case", "median", "p90", "ops/s", "samples"
    );
    println!();
    bench_parse(mode);
    bench_auth(mode);
    bench_config(mode);
    bench_wildcard(mode);
}
