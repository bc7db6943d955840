//! The replicas behind the gateway: who they are (configured addresses, host names
//! resolved again and again), whether they are healthy (gRPC health checks, plus any
//! failed call), and how loaded they are (open calls, streams included), with the
//! power-of-two-choices pick that balances on that load.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::metrics;

/// The service whose health decides whether a replica gets traffic.
const CHECKED_SERVICE: &str = "chat.v1.ChatService";

/// One replica.
pub struct Upstream {
    pub addr: SocketAddr,
    label: String,
    endpoint: Endpoint,
    /// HTTP/2 connections to the replica. A replica allows a bounded number of
    /// concurrent streams per connection (`--max-concurrent-streams`), and every browser
    /// keeps a stream open, so calls spread over as many connections as they need.
    connections: Mutex<Vec<Arc<Connection>>>,
    /// For health checks only, so that a check never queues behind full connections.
    health_channel: Channel,
    streams_per_connection: usize,
    open: AtomicUsize,
    health: AtomicU8,
    stop: CancellationToken,
}

/// What the last health check (or call) said of a replica.
const SERVING: u8 = 0;
/// It answers, but says NOT_SERVING: cut off from the other replicas (Redis), or
/// shutting down. Used only when no replica is serving: it still stores sends.
const DEGRADED: u8 = 1;
/// No answer, or a call could not reach it.
const DOWN: u8 = 2;

/// One HTTP/2 connection to a replica and the calls open on it.
struct Connection {
    channel: Channel,
    open: AtomicUsize,
}

impl Upstream {
    fn new(
        addr: SocketAddr,
        streams_per_connection: usize,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, tonic::transport::Error> {
        let label = addr.to_string();
        // Lazy: a channel connects on first use and reconnects by itself.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Ok(Arc::new(Upstream {
            addr,
            label,
            health_channel: endpoint.connect_lazy(),
            endpoint,
            connections: Mutex::new(Vec::new()),
            streams_per_connection: streams_per_connection.max(1),
            open: AtomicUsize::new(0),
            // Unknown until the first check, which runs at once; optimistic so that a
            // fresh gateway serves.
            health: AtomicU8::new(SERVING),
            stop,
        }))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn open_calls(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// HTTP/2 connections opened to the replica so far.
    pub fn connection_count(&self) -> usize {
        self.lock_connections().len()
    }

    pub fn is_healthy(&self) -> bool {
        self.health.load(Ordering::Relaxed) == SERVING
    }

    /// Answering health checks, whatever it says.
    pub fn is_reachable(&self) -> bool {
        self.health.load(Ordering::Relaxed) != DOWN
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Connection>>> {
        match self.connections.lock() {
            Ok(list) => list,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The channel for one more call, counted as open (on the replica and on its
    /// connection) until the returned guard is dropped: when the response body ends or
    /// is abandoned, so a stream counts for as long as it is open. The call goes on the
    /// least busy connection, and on a new one when all are full.
    pub fn begin_call(self: &Arc<Self>) -> (Channel, CallGuard) {
        let connection = {
            let mut connections = self.lock_connections();
            let least = connections
                .iter()
                .min_by_key(|c| c.open.load(Ordering::Relaxed))
                .filter(|c| c.open.load(Ordering::Relaxed) < self.streams_per_connection)
                .cloned();
            let connection = match least {
                Some(connection) => connection,
                None => {
                    let connection = Arc::new(Connection {
                        channel: self.endpoint.connect_lazy(),
                        open: AtomicUsize::new(0),
                    });
                    connections.push(connection.clone());
                    metrics::upstream_connections(&self.label, connections.len());
                    connection
                }
            };
            connection.open.fetch_add(1, Ordering::Relaxed);
            connection
        };
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::upstream_open_calls(&self.label, open);
        (
            connection.channel.clone(),
            CallGuard {
                upstream: self.clone(),
                connection,
            },
        )
    }

    /// A call failed to reach the replica: stop routing to it until a health check
    /// passes again.
    pub fn mark_failed(&self) {
        self.set_health(DOWN);
    }

    fn set_health(&self, health: u8) {
        let was = self.health.swap(health, Ordering::Relaxed);
        if was != health {
            match health {
                SERVING => tracing::info!(upstream = %self.label, "replica healthy"),
                DEGRADED => tracing::warn!(upstream = %self.label, "replica says NOT_SERVING"),
                _ => tracing::warn!(upstream = %self.label, "replica unreachable"),
            }
        }
        metrics::upstream_healthy(&self.label, health == SERVING);
    }

    async fn check_health(self: Arc<Self>, every: Duration) {
        let mut client = HealthClient::new(self.health_channel.clone());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let request = HealthCheckRequest {
                service: CHECKED_SERVICE.to_owned(),
            };
            // A busy replica may answer slowly; only a missing answer is a failure.
            let patience = every.max(Duration::from_secs(1));
            let health = match tokio::time::timeout(patience, client.check(request)).await {
                Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => {
                    SERVING
                }
                Ok(Ok(_)) => DEGRADED,
                Ok(Err(_)) | Err(_) => DOWN,
            };
            self.set_health(health);
        }
    }
}

/// Holds one open call on an upstream and on its connection.
pub struct CallGuard {
    upstream: Arc<Upstream>,
    connection: Arc<Connection>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.connection.open.fetch_sub(1, Ordering::Relaxed);
        let open = self.upstream.open.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::upstream_open_calls(&self.upstream.label, open);
    }
}

/// The current replica set.
pub struct Upstreams {
    current: RwLock<Vec<Arc<Upstream>>>,
    health_interval: Duration,
    streams_per_connection: usize,
    stop: CancellationToken,
}

impl Upstreams {
    pub fn new(
        health_interval: Duration,
        streams_per_connection: usize,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Upstreams {
            current: RwLock::new(Vec::new()),
            health_interval,
            streams_per_connection,
            stop,
        })
    }

    /// Every replica, healthy or not.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        match self.current.read() {
            Ok(list) => list.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Power of two choices: two distinct healthy replicas at random, the one with fewer
    /// open calls wins. Close to least-loaded without every caller piling onto the same
    /// replica between two updates of the counts.
    ///
    /// When no replica is healthy but some still answer (all of them cut off from Redis,
    /// say), those take the calls: they still store every send and serve their own
    /// sessions, which beats refusing everyone.
    pub fn pick(&self) -> Option<Arc<Upstream>> {
        let all = self.all();
        let mut healthy: Vec<Arc<Upstream>> =
            all.iter().filter(|u| u.is_healthy()).cloned().collect();
        if healthy.is_empty() {
            healthy = all.into_iter().filter(|u| u.is_reachable()).collect();
        }
        let mut rng = rand::rng();
        match healthy.len() {
            0 => None,
            1 => healthy.into_iter().next(),
            n => {
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (ua, ub) = (&healthy[a], &healthy[b]);
                Some(if ub.open_calls() < ua.open_calls() {
                    ub.clone()
                } else {
                    ua.clone()
                })
            }
        }
    }

    /// Makes the replica set exactly `addrs`: new ones start with a health checker,
    /// gone ones stop theirs (their open streams carry on until they end).
    pub fn set(&self, addrs: &HashSet<SocketAddr>) {
        let mut list = match self.current.write() {
            Ok(list) => list,
            Err(poisoned) => poisoned.into_inner(),
        };
        list.retain(|u| {
            let keep = addrs.contains(&u.addr);
            if !keep {
                tracing::info!(upstream = %u.label, "replica removed");
                u.stop.cancel();
                metrics::upstream_removed(&u.label);
            }
            keep
        });
        for addr in addrs {
            if list.iter().any(|u| u.addr == *addr) {
                continue;
            }
            let upstream =
                match Upstream::new(*addr, self.streams_per_connection, self.stop.child_token()) {
                    Ok(upstream) => upstream,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "cannot use replica address");
                        continue;
                    }
                };
            tracing::info!(upstream = %upstream.label, "replica added");
            metrics::upstream_healthy(&upstream.label, true);
            tokio::spawn(upstream.clone().check_health(self.health_interval));
            list.push(upstream);
        }
        list.sort_by_key(|u| u.addr);
    }
}

/// Resolves the configured addresses now (then says so on `first`), and again every
/// `every`, until `stop`. A failed lookup keeps what that name resolved to last time.
pub async fn resolve_forever(
    upstreams: Arc<Upstreams>,
    configured: Vec<http::Uri>,
    every: Duration,
    stop: CancellationToken,
    first: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(first);
    let mut last: Vec<HashSet<SocketAddr>> = vec![HashSet::new(); configured.len()];
    loop {
        for (uri, known) in configured.iter().zip(last.iter_mut()) {
            let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
                continue;
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => *known = addrs.collect(),
                Err(e) => tracing::warn!(%uri, error = %e, "cannot resolve replica address"),
            }
        }
        upstreams.set(&last.iter().flatten().copied().collect());
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
