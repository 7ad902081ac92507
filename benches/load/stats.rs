//! Samples, quantiles, the printed table and the JSON result file.

use std::time::Duration;

use serde_json::{json, Value};

/// Latency samples of one side of a figure.
#[derive(Default, Clone)]
pub struct Samples(pub Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }
    /// Nearest-rank quantile (q in 0..=1); zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let v = self.sorted();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let last = v.len() - 1;
        let i = ((q * last as f64).round() as usize).min(last);
        v.get(i).copied().unwrap_or(Duration::ZERO)
    }
    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }
    pub fn json(&self) -> Value {
        json!({
            "samples": self.len(),
            "median_us": us(self.median()),
            "p90_us": us(self.quantile(0.9)),
            "p99_us": us(self.quantile(0.99)),
            "max_us": us(self.quantile(1.0)),
        })
    }
}

pub fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// A duration as people read it.
pub fn fmt_d(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else if s >= 1e-6 {
        format!("{:.2} µs", s * 1e6)
    } else {
        format!("{:.0} ns", s * 1e9)
    }
}

/// How a ratio is judged against its goal.
#[derive(Clone, Copy)]
pub enum Goal {
    /// keyhole / baseline must be at most this.
    AtMost(f64),
    /// keyhole / baseline must be at least this (throughput).
    AtLeast(f64),
    /// An absolute bound (no baseline): value at most this, in the figure's unit.
    Absolute(f64),
}

/// One figure of the table.
pub struct Figure {
    pub id: &'static str,
    pub title: String,
    /// What the keyhole side measures and what the baseline side measures.
    pub keyhole_label: String,
    pub baseline_label: String,
    /// The headline numbers (unit below): keyhole, baseline (if any).
    pub value: f64,
    pub baseline: Option<f64>,
    pub unit: &'static str,
    pub goal: Goal,
    pub goal_text: &'static str,
    /// Everything else (samples, quantiles, counts) for the JSON file.
    pub detail: Value,
}

impl Figure {
    pub fn ratio(&self) -> Option<f64> {
        let b = self.baseline?;
        (b > 0.0).then(|| self.value / b)
    }
    pub fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::AtMost(g) => self.ratio().map(|r| r <= g),
            Goal::AtLeast(g) => self.ratio().map(|r| r >= g),
            Goal::Absolute(g) => Some(self.value <= g),
        }
    }
    /// Produced: a finite, positive headline (and baseline) number.
    pub fn produced(&self) -> bool {
        self.value.is_finite()
            && self.value > 0.0
            && match self.baseline {
                Some(b) => b.is_finite() && b > 0.0,
                None => true,
            }
    }
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "keyhole": self.keyhole_label,
            "baseline": self.baseline_label,
            "value": self.value,
            "baseline_value": self.baseline,
            "unit": self.unit,
            "ratio": self.ratio(),
            "goal": self.goal_text,
            "goal_met": self.met(),
            "detail": self.detail,
        })
    }
}

fn num(v: f64, unit: &str) -> String {
    match unit {
        "ms" => fmt_d(Duration::from_secs_f64(v / 1e3)),
        "µs" => fmt_d(Duration::from_secs_f64(v / 1e6)),
        "req/s" => format!("{v:.0} req/s"),
        "MiB" => format!("{v:.1} MiB"),
        "KiB" => format!("{v:.0} KiB"),
        u => format!("{v:.1} {u}"),
    }
}

/// The table, one block per figure.
pub fn print_table(figs: &[Figure]) {
    for f in figs {
        println!("\n{}", f.title);
        println!("  {:<58} {:>14}", f.keyhole_label, num(f.value, f.unit));
        if let Some(b) = f.baseline {
            println!("  {:<58} {:>14}", f.baseline_label, num(b, f.unit));
        }
        let ratio = f
            .ratio()
            .map(|r| format!("ratio {r:.2}x"))
            .unwrap_or_default();
        let met = match f.met() {
            Some(true) => "goal met",
            Some(false) => "goal NOT met",
            None => "",
        };
        println!("  {ratio:<24} goal {:<34} {met}", f.goal_text);
    }
}
