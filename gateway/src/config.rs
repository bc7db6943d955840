//! Every setting of the gateway, each a flag with an environment variable, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chat_ops::LogFormat;
use clap::Parser;

/// The browser edge of the chat platform: grpc-web (HTTP/1.1 and HTTP/2) and native gRPC
/// on one port, balanced over chat-server replicas by open streams, plus the web client.
#[derive(Clone, Debug, Parser)]
#[command(name = "chat-gateway", version, about, long_about = None)]
pub struct Config {
    /// Address to serve on (port 0 picks a free port).
    #[arg(long, env = "CHAT_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A chat-server replica, as http://HOST:PORT (repeatable, or comma-separated in the
    /// environment). A host name is resolved again and again, and every address it
    /// resolves to is a replica.
    #[arg(long = "upstream", env = "CHAT_GATEWAY_UPSTREAMS", value_delimiter = ',', required = true, value_parser = parse_upstream)]
    pub upstreams: Vec<http::Uri>,

    /// A browser origin allowed to call the API cross-origin, e.g. https://chat.example
    /// (repeatable, or comma-separated). Pages served by the gateway itself need none.
    #[arg(long = "allow-origin", env = "CHAT_GATEWAY_ALLOW_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allow_origins: Vec<http::HeaderValue>,

    /// Directory of the web client's files, served at `/`.
    #[arg(long, env = "CHAT_GATEWAY_WEB_ROOT")]
    pub web_root: Option<PathBuf>,

    /// A client must send its first bytes, and an HTTP/1.1 client its whole request
    /// headers, within this time.
    #[arg(long, env = "CHAT_GATEWAY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Largest grpc-web request body accepted, in bytes (browsers send whole bodies; a
    /// native gRPC stream is limited per message by the replicas).
    #[arg(long, env = "CHAT_GATEWAY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// How often each replica's gRPC health is checked.
    #[arg(long, env = "CHAT_GATEWAY_HEALTH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// How often upstream host names are resolved again.
    #[arg(long, env = "CHAT_GATEWAY_RESOLVE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub resolve_interval: Duration,

    /// Calls the gateway puts on one HTTP/2 connection to a replica before opening
    /// another; keep it below the replicas' `--max-concurrent-streams` (64 by default).
    #[arg(long, env = "CHAT_GATEWAY_STREAMS_PER_CONNECTION", default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_connection: u32,

    /// Client connections served at once; more wait to be accepted.
    #[arg(long, env = "CHAT_GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Concurrent HTTP/2 streams allowed on one client connection.
    #[arg(
        long,
        env = "CHAT_GATEWAY_MAX_CONCURRENT_STREAMS",
        default_value_t = 64
    )]
    pub max_concurrent_streams: u32,

    /// On SIGTERM, how long to wait for open calls before exiting.
    #[arg(long, env = "CHAT_GATEWAY_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port).
    #[arg(long, env = "CHAT_GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log filter, in RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// An `http://HOST:PORT` replica address.
fn parse_upstream(raw: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = raw.parse().map_err(|e| format!("{raw}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{raw}: replicas are reached over http://"));
    }
    if uri.host().is_none() || uri.port_u16().is_none() {
        return Err(format!(
            "{raw}: give a host and a port, e.g. http://10.0.0.5:50051"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{raw}: a replica address has no path"));
    }
    Ok(uri)
}

/// A single origin (`scheme://host[:port]`); never `*`, which would let any site act
/// with a user's token.
fn parse_origin(raw: &str) -> Result<http::HeaderValue, String> {
    let origin = raw.trim_end_matches('/');
    let uri: http::Uri = origin.parse().map_err(|e| format!("{raw}: {e}"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if origin == "*"
        || !scheme_ok
        || uri.host().is_none()
        || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
    {
        return Err(format!(
            "{raw}: an origin is scheme://host[:port], e.g. https://chat.example (not *)"
        ));
    }
    http::HeaderValue::from_str(origin).map_err(|e| format!("{raw}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact() {
        assert!(parse_origin("https://chat.example").is_ok());
        assert_eq!(
            parse_origin("http://localhost:5173/").ok(),
            Some(http::HeaderValue::from_static("http://localhost:5173"))
        );
        assert!(parse_origin("*").is_err());
        assert!(parse_origin("chat.example").is_err());
        assert!(parse_origin("https://chat.example/app").is_err());
    }

    #[test]
    fn upstreams_need_host_and_port() {
        assert!(parse_upstream("http://127.0.0.1:50051").is_ok());
        assert!(parse_upstream("http://chat:50051").is_ok());
        assert!(parse_upstream("https://chat:50051").is_err());
        assert!(parse_upstream("http://chat").is_err());
        assert!(parse_upstream("http://chat:50051/x").is_err());
    }
}
