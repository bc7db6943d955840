//! Every flag of `chat-bench`, in one place. Flags that only some scenarios read say so;
//! defaults that differ per scenario are resolved by the `*_or` helpers.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Load generator for the chat server. Open loop: sends leave at their scheduled times
/// whether or not earlier ones were answered, and latency counts from the scheduled time.
#[derive(Clone, Debug, Parser)]
#[command(name = "chat-bench", version, about, long_about = None)]
pub(crate) struct Args {
    /// What to measure.
    #[arg(value_enum)]
    pub(crate) scenario: Scenario,

    /// A server to connect to (repeat for replicas; devices are spread round-robin).
    #[arg(long = "server", default_value = "http://127.0.0.1:50051")]
    pub(crate) servers: Vec<String>,

    /// Target messages per second, over all senders (throughput: the first round's;
    /// default 1000; latency: default 10000).
    #[arg(long, value_parser = positive)]
    pub(crate) rate: Option<f64>,

    /// Seconds each round (or the sampling, or the history run, or each ceiling) lasts
    /// (default 60; idle samples 30).
    #[arg(long, value_parser = positive)]
    pub(crate) duration: Option<f64>,

    /// Seconds of unrecorded load before the first measured round (throughput,
    /// latency), so that connection pools, prepared statements and caches are warm.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    pub(crate) warmup: f64,

    /// Also write the results here as JSON.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,

    /// Sender → receiver pairs (throughput, latency; also the echo ceiling's streams).
    #[arg(long, default_value_t = 1000)]
    pub(crate) pairs: usize,

    /// Idle sessions to hold open (idle), or `max` for as many as the file limit allows.
    #[arg(long, default_value = "10000")]
    pub(crate) sessions: SessionCount,

    /// Seconds to let idle sessions settle before sampling (idle).
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    pub(crate) settle: f64,

    /// Receivers that reconnect at once (catch-up).
    #[arg(long, default_value_t = 15_000)]
    pub(crate) users: usize,

    /// Messages waiting for each receiver (catch-up).
    #[arg(long, default_value_t = 100)]
    pub(crate) messages: u32,

    /// Messages to seed for the history scenario.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) rows: u64,

    /// Conversations the history rows are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) conversations: usize,

    /// Concurrent GetHistory callers (history).
    #[arg(long, default_value_t = 4)]
    pub(crate) callers: usize,

    /// The server's Postgres database. Given, users are seeded in SQL; otherwise they
    /// register through the API (argon2 each: a few hundred at most).
    #[arg(long, env = "DATABASE_URL")]
    pub(crate) database_url: Option<String>,

    /// Connections of the Postgres insert ceiling (match the server's pool).
    #[arg(long, env = "CHAT_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub(crate) pool_size: u32,

    /// A server process to sample in /proc (repeatable).
    #[arg(long = "server-pid")]
    pub(crate) server_pids: Vec<u32>,

    /// Bind client sockets to 127.0.0.1 .. 127.0.0.N, round-robin, so that more than
    /// one source address's ~28k ephemeral ports are available (loopback servers only).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub(crate) source_addrs: u8,

    /// Throughput: each round's rate is the previous one's times this.
    #[arg(long, default_value_t = 1.25, value_parser = above_one)]
    pub(crate) step: f64,

    /// Throughput: do not go above this rate.
    #[arg(long, value_parser = positive)]
    pub(crate) max_rate: Option<f64>,

    /// Throughput: a round passes while its send→delivered p99 stays within this.
    #[arg(long, default_value_t = 25.0, value_parser = positive)]
    pub(crate) p99_limit_ms: f64,

    /// Do not measure the ceilings after throughput and latency.
    #[arg(long)]
    pub(crate) no_ceilings: bool,

    /// Exit non-zero when anything failed or was lost (for CI).
    #[arg(long)]
    pub(crate) strict: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Rising rate until send→delivered p99 passes the limit, or anything fails.
    Throughput,
    /// A fixed rate: the latency distribution.
    Latency,
    /// Many heart-beating sessions: memory per connection and CPU.
    Idle,
    /// Everyone reconnects at once with messages waiting.
    CatchUp,
    /// GetHistory over a large seeded table.
    History,
    /// Raw Postgres inserts and a tonic echo: what the product is measured against.
    Ceilings,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::Idle => "idle",
            Scenario::CatchUp => "catch-up",
            Scenario::History => "history",
            Scenario::Ceilings => "ceilings",
        }
    }
}

/// How many idle sessions to open.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SessionCount {
    Count(usize),
    /// As many as RLIMIT_NOFILE (raised to its hard limit) allows, with headroom.
    Max,
}

impl FromStr for SessionCount {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw == "max" {
            return Ok(SessionCount::Max);
        }
        match raw.parse::<usize>() {
            Ok(n) if n > 0 => Ok(SessionCount::Count(n)),
            _ => Err(format!("{raw} is neither a positive number nor `max`")),
        }
    }
}

impl Args {
    pub(crate) fn rate_or(&self, default: f64) -> f64 {
        self.rate.unwrap_or(default)
    }

    pub(crate) fn duration_or(&self, default_secs: f64) -> Duration {
        Duration::from_secs_f64(self.duration.unwrap_or(default_secs))
    }
}

fn positive(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{raw} is not a positive number")),
    }
}

fn non_negative(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{raw} is not a number of seconds")),
    }
}

fn above_one(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 1.0 => Ok(v),
        _ => Err(format!("{raw} is not a number above 1")),
    }
}
