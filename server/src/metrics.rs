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
/// Histogram: from a publish to its hand-over to the local sessions, by `path`
/// (`local`: same process; `redis`: through Redis, measured from the commit).
pub const FANOUT_SECONDS: &str = "chat_fanout_duration_seconds";
/// Counter: sessions told to catch up from the store because the bus may have lost
/// events (a Redis reconnect, a dropped publish).
pub const RESYNCS: &str = "chat_session_resyncs_total";
/// Counter: times the Redis subscription connection was re-established.
pub const REDIS_RECONNECTS: &str = "chat_redis_reconnects_total";
/// Gauge: 1 while this process is connected to Redis for pub/sub, else 0.
pub const REDIS_CONNECTED: &str = "chat_redis_connected";
/// Counter: Redis publishes, by `outcome` (`ok`, `retried`, `dropped`).
pub const REDIS_PUBLISHES: &str = "chat_redis_publishes_total";
/// Counter: Redis presence operations that failed and will be retried.
pub const PRESENCE_ERRORS: &str = "chat_presence_errors_total";
/// Counter: group statements that failed as a whole (a retry racing its original on
/// another replica, a deadlock) and were answered write by write, by `write`.
pub const GROUP_FALLBACKS: &str = "chat_store_group_fallbacks_total";
/// Counter: push jobs queued for a member with no live session (one per burst).
pub const PUSH_QUEUED: &str = "chat_push_queued_total";
/// Counter: bursts absorbed by a job already waiting for the same member and
/// conversation (a message that joins a burst).
pub const PUSH_COALESCED: &str = "chat_push_coalesced_total";
/// Counter: pushes not made, by `reason` (`online`, `delivered`, `pushed`, `muted`,
/// `no_targets`, `not_member`).
pub const PUSH_SUPPRESSED: &str = "chat_push_suppressed_total";
/// Counter: notifications handed to providers, one per burst and target.
pub const PUSH_NOTIFICATIONS: &str = "chat_push_notifications_total";
/// Counter: deliveries accepted by the endpoint, by `provider`.
pub const PUSH_SENT: &str = "chat_push_sent_total";
/// Counter: failed deliveries scheduled for another attempt, by `provider`.
pub const PUSH_RETRIED: &str = "chat_push_retried_total";
/// Counter: deliveries given up (attempts exhausted or refused for good), by `provider`.
pub const PUSH_DEAD_LETTERED: &str = "chat_push_dead_lettered_total";
/// Counter: targets removed because their endpoint said they are gone, by `provider`.
pub const PUSH_TARGETS_GONE: &str = "chat_push_targets_gone_total";
/// Counter: push queue operations that failed (they are retried or re-claimed).
pub const PUSH_QUEUE_ERRORS: &str = "chat_push_queue_errors_total";
