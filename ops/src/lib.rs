//! What every chat binary (`chat-server`, `chat-gateway`) needs to be operated, in one
//! place: log set-up, the shutdown signals, and the process-wide Prometheus recorder with
//! its `/metrics` endpoint. Shared because the recorder is global: two components in one
//! process (as in the tests) must install it once and render it together.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid log filter {filter:?}: {reason}")]
pub struct LogFilterError {
    filter: String,
    reason: String,
}

/// Installs the global `tracing` subscriber with a `RUST_LOG`-style filter.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), LogFilterError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| LogFilterError {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })?;
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(env_filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(env_filter)
            .init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (on other platforms, Ctrl-C).
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Cancels `stop` when SIGINT or SIGTERM arrives: how a binary starts its shutdown.
pub fn cancel_on_signal(stop: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
}

/// Binds the `/metrics` listener when an address is configured, with the address it got
/// (port 0 picks a free one).
pub async fn bind_metrics(
    at: Option<SocketAddr>,
) -> std::io::Result<(Option<TcpListener>, Option<SocketAddr>)> {
    let Some(at) = at else {
        return Ok((None, None));
    };
    let listener = TcpListener::bind(at).await?;
    let addr = listener.local_addr()?;
    Ok((Some(listener), Some(addr)))
}

/// Latency buckets, in seconds: chat operations live between a millisecond and a second.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The process-wide Prometheus recorder, installed on first use; `None` when another
/// recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Serves `GET /metrics` in the Prometheus text format on `listener` until `stop`.
pub async fn serve_metrics(listener: TcpListener, stop: CancellationToken) {
    let Some(handle) = prometheus() else { return };
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "metrics endpoint stopped");
    }
}
