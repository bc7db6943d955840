//! Results: latency histograms, the table printed after each round, and the JSON file
//! with the same figures plus what is needed to compare runs (machine, command line, time).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

/// Latencies are recorded in microseconds, up to an hour, to 3 significant figures.
const HIGHEST_MICROS: u64 = 3_600_000_000;
/// Histograms a recorder spreads its writers over, so that thousands of tasks recording
/// at once rarely wait for each other (and memory does not grow with the task count).
const SHARDS: usize = 16;

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).map_err(|e| anyhow!("histogram: {e:?}"))
}

/// A latency histogram many tasks record into.
pub(crate) struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let shards = (0..SHARDS)
            .map(|_| histogram().map(Mutex::new))
            .collect::<anyhow::Result<_>>()?;
        Ok(Recorder { shards })
    }

    /// Records one latency; `writer` (a task's number) picks the shard.
    pub(crate) fn record(&self, writer: usize, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut h) = self.shards[writer % SHARDS].lock() {
            h.saturating_record(micros);
        }
    }

    /// Everything recorded so far, in one histogram.
    pub(crate) fn merged(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = histogram()?;
        for shard in &self.shards {
            let shard = shard
                .lock()
                .map_err(|_| anyhow!("a recorder shard is poisoned"))?;
            all.add(&*shard)
                .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        }
        Ok(all)
    }
}

/// A latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// One line of the table: a round of load (or one measurement) and what came of it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) duration_s: f64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) errors: u64,
    pub(crate) lost: u64,
    /// send → ack.
    pub(crate) ack: Percentiles,
    /// send → delivered to the receiving device.
    pub(crate) delivered_latency: Percentiles,
}

impl Row {
    pub(crate) fn clean(&self) -> bool {
        self.errors == 0 && self.lost == 0
    }
}

pub(crate) fn print_header() {
    println!(
        "{:<11} {:>9} {:>9} | {:>28} {:>7} | {:>28} {:>7} | {:>6} {:>6}",
        "scenario",
        "target/s",
        "achvd/s",
        "ack ms p50/p90/p99/p99.9",
        "max",
        "dlv ms p50/p90/p99/p99.9",
        "max",
        "errors",
        "lost",
    );
}

pub(crate) fn print_row(row: &Row) {
    let q = |p: &Percentiles| {
        format!(
            "{:>6.2} {:>6.2} {:>6.2} {:>7.2}",
            p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms
        )
    };
    println!(
        "{:<11} {:>9.0} {:>9.0} | {:>28} {:>7.1} | {:>28} {:>7.1} | {:>6} {:>6}",
        row.scenario,
        row.target_rate,
        row.achieved_rate,
        q(&row.ack),
        row.ack.max_ms,
        q(&row.delivered_latency),
        row.delivered_latency.max_ms,
        row.errors,
        row.lost,
    );
}

/// Prints one latency distribution on a line, for the scenarios that are not rounds.
pub(crate) fn print_latency(what: &str, p: &Percentiles) {
    println!(
        "{what}: n={} p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
    );
}

/// Where the run happened: figures are only comparable on like machines.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: Option<String>,
    pub(crate) mem_total_kib: Option<u64>,
    pub(crate) kernel: Option<String>,
}

impl Machine {
    pub(crate) fn current() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let cpu_model = read("/proc/cpuinfo").and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        });
        let mem_total_kib = read("/proc/meminfo").and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
        });
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_kib,
            kernel: read("/proc/sys/kernel/osrelease").map(|k| k.trim().to_owned()),
        }
    }
}

/// Everything a run found, as written to `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) timestamp: String,
    pub(crate) command: Vec<String>,
    pub(crate) machine: Machine,
    pub(crate) rows: Vec<Row>,
    /// Scenario-specific figures (highest passing rate, idle costs, ceilings, ratios).
    pub(crate) results: Map<String, Value>,
}

impl Report {
    pub(crate) fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.to_owned(),
            timestamp: utc_now(),
            command: std::env::args().collect(),
            machine: Machine::current(),
            rows: Vec::new(),
            results: Map::new(),
        }
    }

    /// Adds a row and prints it.
    pub(crate) fn push_row(&mut self, row: Row) {
        print_row(&row);
        self.rows.push(row);
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Serialize) -> anyhow::Result<()> {
        self.results
            .insert(key.to_owned(), serde_json::to_value(value)?);
        Ok(())
    }

    pub(crate) fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// The current time as RFC 3339 UTC (`2026-11-28T09:15:02Z`), without a date crate.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
