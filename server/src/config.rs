//! Every setting of the server, each a flag with an environment variable, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_ops::LogFormat;
use clap::{Parser, Subcommand};

use crate::store::StoreOptions;

/// A gRPC chat server. With no configuration it keeps its data in SQLite under
/// ./chat-data and serves on 127.0.0.1:50051.
#[derive(Clone, Debug, Parser)]
#[command(name = "chat-server", version, about, long_about = None)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Database URL: sqlite://PATH or postgres://USER@HOST:PORT/DB. Also read from
    /// DATABASE_URL. Default: SQLite file chat.db in the data directory.
    #[arg(long, env = "CHAT_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Directory for the embedded database; created if missing.
    #[arg(
        long,
        env = "CHAT_DATA_DIR",
        default_value = "chat-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Database connections: on Postgres all of them (up to 4 commit grouped writes,
    /// the rest serve reads), on SQLite the read connections (SQLite writes through one).
    #[arg(long, env = "CHAT_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..), global = true)]
    pub database_pool_size: u32,

    /// Longest a database statement may run (Postgres `statement_timeout`), and longest
    /// a call waits for a free connection; past it the call fails with UNAVAILABLE.
    #[arg(long, env = "CHAT_DATABASE_STATEMENT_TIMEOUT", default_value = "5s", value_parser = parse_timeout, global = true)]
    pub database_statement_timeout: Duration,

    /// Redis that joins replicas: redis://HOST:PORT for one server, or
    /// redis+cluster://HOST:PORT[,HOST:PORT...] for a Redis Cluster (sharded pub/sub).
    /// Without it, this process is the only replica (in-process fan-out and presence).
    #[arg(long, env = "CHAT_REDIS_URL")]
    pub redis_url: Option<String>,

    /// How long Redis may be unreachable before health reports NOT_SERVING (sends keep
    /// working meanwhile; sessions catch up from the store when it is back).
    #[arg(long, env = "CHAT_REDIS_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub redis_grace: Duration,

    /// How often clients must heartbeat; sent to them when they connect.
    #[arg(long, env = "CHAT_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// A device without a heartbeat for this long counts as offline.
    #[arg(long, env = "CHAT_PRESENCE_TIMEOUT", default_value = "45s", value_parser = humantime::parse_duration)]
    pub presence_timeout: Duration,

    /// Largest message text accepted, in UTF-8 bytes.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,

    /// Messages each user may send per second, sustained (fractions allowed).
    #[arg(long, env = "CHAT_SEND_RATE", default_value_t = 20.0, value_parser = parse_rate)]
    pub send_rate: f64,

    /// Messages each user may send in a burst above the sustained rate.
    #[arg(long, env = "CHAT_SEND_BURST", default_value_t = 60)]
    pub send_burst: u32,

    /// Lifetime of a device session token (at most 10 years).
    #[arg(long, env = "CHAT_TOKEN_TTL", default_value = "30days", value_parser = parse_token_ttl)]
    pub token_ttl: Duration,

    /// Events buffered per session before a session that does not read is closed.
    #[arg(long, env = "CHAT_SESSION_QUEUE", default_value_t = 1024)]
    pub session_queue: usize,

    /// Concurrent HTTP/2 streams allowed on one client connection.
    #[arg(long, env = "CHAT_MAX_CONCURRENT_STREAMS", default_value_t = 64)]
    pub max_concurrent_streams: u32,

    /// On SIGTERM, how long to wait for open calls to finish before exiting.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long after a message is stored for an offline member its push waits: a
    /// message acknowledged (or read) within it is not pushed, and messages arriving
    /// within it become one notification.
    #[arg(long, env = "CHAT_PUSH_GRACE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub push_grace: Duration,

    /// Run a push worker in this process (pushes are queued either way). Turn it off on
    /// replicas that should only serve clients, and run one or more with it on.
    #[arg(long, env = "CHAT_PUSH_WORKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub push_worker: bool,

    /// Deliveries one push worker makes at once.
    #[arg(long, env = "CHAT_PUSH_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub push_concurrency: u32,

    /// Delivery attempts per notification and target before it goes to the dead letters.
    #[arg(long, env = "CHAT_PUSH_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub push_max_attempts: u32,

    /// The wait before the first retry; it doubles (with jitter) per attempt, up to 10 min.
    #[arg(long, env = "CHAT_PUSH_RETRY_BASE", default_value = "2s", value_parser = parse_timeout)]
    pub push_retry_base: Duration,

    /// Longest one delivery (connect, request, response) may take.
    #[arg(long, env = "CHAT_PUSH_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub push_timeout: Duration,

    /// How long a claimed push job stays with its worker: a job whose worker died is
    /// claimed by another after this. At least twice the push timeout.
    #[arg(long, env = "CHAT_PUSH_LEASE", default_value = "60s", value_parser = parse_timeout)]
    pub push_lease: Duration,

    /// How often an idle push worker looks for due jobs.
    #[arg(long, env = "CHAT_PUSH_POLL", default_value = "200ms", value_parser = parse_timeout)]
    pub push_poll: Duration,

    /// The VAPID private key for Web Push (raw P-256 scalar, base64url, as
    /// `web-push generate-vapid-keys` prints it), with --vapid-public-key. Without
    /// them, the first replica generates a key pair and stores it in the database.
    #[arg(
        long,
        env = "CHAT_VAPID_PRIVATE_KEY",
        requires = "vapid_public_key",
        hide_env_values = true
    )]
    pub vapid_private_key: Option<String>,

    /// The VAPID public key (uncompressed P-256 point, base64url).
    #[arg(long, env = "CHAT_VAPID_PUBLIC_KEY", requires = "vapid_private_key")]
    pub vapid_public_key: Option<String>,

    /// Who push services can contact about this server's pushes (RFC 8292 `sub`).
    #[arg(
        long,
        env = "CHAT_VAPID_SUBJECT",
        default_value = "mailto:push@localhost"
    )]
    pub vapid_subject: String,

    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port).
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit (serving applies them too).
    Migrate,
}

/// A duration of at least a millisecond (Postgres reads 0 as "no timeout").
fn parse_timeout(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw) {
        Ok(d) if d >= Duration::from_millis(1) => Ok(d),
        Ok(_) => Err(format!("{raw} is shorter than 1ms")),
        Err(e) => Err(e.to_string()),
    }
}

/// A token lifetime a timestamp column can hold the end of: 1 s to 10 years.
fn parse_token_ttl(raw: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
    match humantime::parse_duration(raw) {
        Ok(d) if (Duration::from_secs(1)..=MAX).contains(&d) => Ok(d),
        Ok(_) => Err(format!("{raw} is not between 1s and 10 years")),
        Err(e) => Err(e.to_string()),
    }
}

/// A positive, finite rate.
fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{raw} is not a positive number")),
    }
}

impl Config {
    /// The database URL to use: the flag, then DATABASE_URL, then the embedded default.
    pub fn resolved_database_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("chat.db").display()))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            pool_size: self.database_pool_size,
            statement_timeout: self.database_statement_timeout,
        }
    }
}
