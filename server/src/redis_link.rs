//! One Redis deployment, standalone or cluster, as the rest of the server sees it:
//! a command connection that heals itself, and subscription connections that the
//! bus supervises. The only place that knows which of the two deployments it is.
//!
//! `redis://HOST:PORT` (or `rediss://`) is one server and uses classic pub/sub.
//! `redis+cluster://HOST:PORT[,HOST:PORT...]` is a Redis Cluster, reached through any
//! of the listed nodes, and uses sharded pub/sub (SSUBSCRIBE / SPUBLISH) so that a
//! message travels only through the shard that owns its channel.

use std::time::Duration;

use futures::StreamExt;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::store::redacted_url;

/// How long one command may take before the connection counts as broken. A cut-off
/// Redis (packets dropped, TCP still up) is only noticed through this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE: a resubscription of thousands of users stays a few commands,
/// each well inside the response timeout.
const SUBSCRIBE_BATCH: usize = 500;
/// SSUBSCRIBE takes channels of one slot only, so a cluster subscribes channel by
/// channel; this many at a time.
const SHARDED_SUBSCRIBE_CONCURRENCY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error("{0} is not a redis://, rediss:// or redis+cluster:// URL")]
    Scheme(String),
    #[error("redis URL {url}: {source}")]
    Invalid {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

#[derive(Clone)]
enum Deployment {
    Standalone(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// Where Redis is, and the one command connection every user of it shares.
pub struct RedisLink {
    deployment: Deployment,
    url: String,
    commands: tokio::sync::OnceCell<Commands>,
}

impl RedisLink {
    /// Parses the URL; connects nothing yet.
    pub fn parse(url: &str) -> Result<Self, RedisUrlError> {
        let invalid = |source| RedisUrlError::Invalid {
            url: redacted_url(url),
            source,
        };
        for (cluster_scheme, node_scheme) in [
            ("redis+cluster://", "redis://"),
            ("rediss+cluster://", "rediss://"),
        ] {
            if let Some(rest) = url.strip_prefix(cluster_scheme) {
                let (userinfo, hosts) = match rest.rsplit_once('@') {
                    Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
                    None => (String::new(), rest),
                };
                let hosts = hosts.trim_end_matches('/');
                let nodes: Vec<String> = hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| with_resp3(&format!("{node_scheme}{userinfo}{h}")))
                    .collect();
                let client = ClusterClientBuilder::new(nodes)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()
                    .map_err(invalid)?;
                return Ok(RedisLink::new(Deployment::Cluster(Box::new(client)), url));
            }
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            let client = redis::Client::open(with_resp3(url)).map_err(invalid)?;
            return Ok(RedisLink::new(Deployment::Standalone(client), url));
        }
        Err(RedisUrlError::Scheme(redacted_url(url)))
    }

    fn new(deployment: Deployment, url: &str) -> Self {
        RedisLink {
            deployment,
            url: redacted_url(url),
            commands: tokio::sync::OnceCell::new(),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.deployment, Deployment::Cluster(_))
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The shared command connection. It is made on first use (so a server can start
    /// while Redis is down) and then reconnects by itself.
    pub async fn commands(&self) -> RedisResult<Commands> {
        self.commands
            .get_or_try_init(|| self.connect_commands())
            .await
            .cloned()
    }

    async fn connect_commands(&self) -> RedisResult<Commands> {
        match &self.deployment {
            Deployment::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let manager = ConnectionManager::new_with_config(client.clone(), config).await?;
                Ok(Commands::Standalone(manager))
            }
            Deployment::Cluster(client) => {
                Ok(Commands::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A new connection for subscriptions; messages and disconnection notices arrive
    /// on the returned receiver. It does not heal: the bus replaces it.
    pub async fn subscriber(&self) -> RedisResult<Subscriber> {
        let (tx, pushes) = unbounded_channel();
        let conn = match &self.deployment {
            Deployment::Standalone(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_push_sender(tx);
                SubscriberConn::Standalone(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Deployment::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::default().set_push_sender(tx);
                SubscriberConn::Cluster(client.get_async_connection_with_config(config).await?)
            }
        };
        Ok(Subscriber { conn, pushes })
    }

    /// The command that publishes `payload` on `channel`.
    pub fn publish(&self, channel: &str, payload: &[u8]) -> Cmd {
        let name = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(name);
        cmd.arg(channel).arg(payload);
        cmd
    }
}

/// The command connection: both kinds behave as one `ConnectionLike`.
#[derive(Clone)]
pub enum Commands {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Standalone(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Standalone(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

enum SubscriberConn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// One subscription connection and the pushes it receives.
pub struct Subscriber {
    conn: SubscriberConn,
    pub pushes: UnboundedReceiver<PushInfo>,
}

impl Subscriber {
    /// Subscribes to `channels` and returns once Redis has confirmed every one, so a
    /// publish after this returns reaches this connection.
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match &mut self.conn {
            SubscriberConn::Standalone(conn) => {
                for batch in channels.chunks(SUBSCRIBE_BATCH) {
                    conn.subscribe(batch).await?;
                }
                Ok(())
            }
            SubscriberConn::Cluster(conn) => {
                let subscribes: Vec<_> = channels
                    .iter()
                    .map(|channel| {
                        let mut conn = conn.clone();
                        let channel = channel.clone();
                        async move { conn.ssubscribe(channel).await }
                    })
                    .collect();
                let results: Vec<RedisResult<()>> = futures::stream::iter(subscribes)
                    .buffer_unordered(SHARDED_SUBSCRIBE_CONCURRENCY)
                    .collect()
                    .await;
                results.into_iter().collect()
            }
        }
    }

    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match &mut self.conn {
            SubscriberConn::Standalone(conn) => {
                for batch in channels.chunks(SUBSCRIBE_BATCH) {
                    conn.unsubscribe(batch).await?;
                }
                Ok(())
            }
            SubscriberConn::Cluster(conn) => {
                for channel in channels {
                    conn.sunsubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    /// A round trip on the subscription connection: fails when Redis stopped answering.
    pub async fn ping(&mut self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match &mut self.conn {
            SubscriberConn::Standalone(conn) => ping.query_async::<()>(conn).await,
            SubscriberConn::Cluster(conn) => {
                // Every shard holds subscriptions, so every shard must answer.
                let routed = redis::cluster_routing::RoutingInfo::MultiNode((
                    redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                    Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
                ));
                conn.route_command(ping, routed).await.map(|_| ())
            }
        }
    }
}

/// Asks for RESP3, which carries pub/sub pushes on an ordinary connection.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        return url.to_owned();
    }
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else if after_scheme.contains('/') {
        format!("{url}?protocol=resp3")
    } else {
        format!("{url}/?protocol=resp3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_deployment() {
        assert!(
            !RedisLink::parse("redis://127.0.0.1:6379")
                .expect("standalone")
                .is_cluster()
        );
        assert!(
            RedisLink::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
                .expect("cluster")
                .is_cluster()
        );
        assert!(matches!(
            RedisLink::parse("http://x"),
            Err(RedisUrlError::Scheme(_))
        ));
    }

    #[test]
    fn resp3_is_requested_once() {
        assert_eq!(with_resp3("redis://h:1"), "redis://h:1/?protocol=resp3");
        assert_eq!(with_resp3("redis://h:1/2"), "redis://h:1/2?protocol=resp3");
        assert_eq!(
            with_resp3("redis://h:1/?a=b"),
            "redis://h:1/?a=b&protocol=resp3"
        );
        assert_eq!(with_resp3("redis://h/?protocol=2"), "redis://h/?protocol=2");
    }
}
