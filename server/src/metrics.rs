//! Prometheus metrics: every metric name in one place, and the `/metrics` endpoint.
//!
//! The recorder is process-wide (the `metrics` facade is global); it is installed the
//! first time a server is started with `--metrics-listen`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Gauge: sessions (streams) connected to this process.
pub const SESSIONS: &str = "chat_sessions";
/// Counter: sends answered, by `outcome` (`stored` or `duplicate`).
pub const SENDS: &str = "chat_sends_total";
/// Histogram: from a send's arrival to its ack (validation, commit, publish).
pub const SEND_SECONDS: &str = "chat_send_duration_seconds";
/// Counter: message frames written to sessions (live, replayed or gap-filled).
pub const DELIVERIES: &str = "chat_message_deliveries_total";
/// Counter: gaps in a session's seq filled from the store.
pub const GAP_FILLS: &str = "chat_gap_fills_total";
/// Counter: sessions closed because they fell behind.
pub const SLOW_CLOSES: &str = "chat_sessions_closed_slow_total";
/// Counter: requests refused, by gRPC `code`.
pub const REJECTED: &str = "chat_requests_rejected_total";

/// Latency buckets, in seconds: chat operations live between a millisecond and a second.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn handle() -> Option<PrometheusHandle> {
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

/// Serves `GET /metrics` in the Prometheus text format until `stop`.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    let Some(handle) = handle() else { return };
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
