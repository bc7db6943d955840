//! Prometheus metrics of the gateway: every metric name in one place. The recorder and
//! the `/metrics` endpoint are `chat_ops`'s, shared with the server.

/// Counter: requests by `kind` (`grpc`, `grpc-web`, `http`).
pub const REQUESTS: &str = "chat_gateway_requests_total";
/// Counter: calls forwarded, by `upstream`.
pub const FORWARDED: &str = "chat_gateway_calls_forwarded_total";
/// Counter: calls refused because no replica was healthy.
pub const REFUSED: &str = "chat_gateway_calls_refused_total";
/// Gauge: calls (streams included) open on each `upstream`.
pub const OPEN_CALLS: &str = "chat_gateway_upstream_open_calls";
/// Gauge: 1 while an `upstream` gets traffic, 0 while it is unhealthy.
pub const HEALTHY: &str = "chat_gateway_upstream_healthy";
/// Gauge: HTTP/2 connections open to each `upstream`.
pub const CONNECTIONS: &str = "chat_gateway_upstream_connections";
/// Counter: grpc-web requests refused for their declared size.
pub const TOO_LARGE: &str = "chat_gateway_bodies_too_large_total";

pub fn request(kind: &'static str) {
    metrics::counter!(REQUESTS, "kind" => kind).increment(1);
}

pub fn call_forwarded(upstream: &str) {
    metrics::counter!(FORWARDED, "upstream" => upstream.to_owned()).increment(1);
}

pub fn call_refused() {
    metrics::counter!(REFUSED).increment(1);
}

pub fn upstream_open_calls(upstream: &str, open: usize) {
    metrics::gauge!(OPEN_CALLS, "upstream" => upstream.to_owned()).set(open as f64);
}

pub fn upstream_connections(upstream: &str, connections: usize) {
    metrics::gauge!(CONNECTIONS, "upstream" => upstream.to_owned()).set(connections as f64);
}

pub fn upstream_healthy(upstream: &str, healthy: bool) {
    metrics::gauge!(HEALTHY, "upstream" => upstream.to_owned()).set(if healthy {
        1.0
    } else {
        0.0
    });
}

/// A replica left the set: its gauges would otherwise report it forever.
pub fn upstream_removed(upstream: &str) {
    metrics::gauge!(HEALTHY, "upstream" => upstream.to_owned()).set(0.0);
    metrics::gauge!(OPEN_CALLS, "upstream" => upstream.to_owned()).set(0.0);
    metrics::gauge!(CONNECTIONS, "upstream" => upstream.to_owned()).set(0.0);
}

pub fn body_too_large() {
    metrics::counter!(TOO_LARGE).increment(1);
}
