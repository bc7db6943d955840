//! Prometheus metrics of the server: every metric name in one place. The recorder and
//! the `/metrics` endpoint are `chat_ops`'s, shared with the gateway.

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
