//! `chat-gateway`: the browser edge of the chat platform. Browsers speak grpc-web
//! (HTTP/1.1 or HTTP/2) and other clients native gRPC, both on one port; every call is
//! forwarded to one of the chat-server replicas, balanced by open streams (power of two
//! choices) and skipping replicas whose gRPC health check fails. The same port serves
//! the web client's files and `/healthz`.
//!
//! The gateway holds no chat state: a stream that dies with its replica is resumed on
//! another by the client SDK, from its cursors.

pub mod config;
mod edge;
pub mod metrics;
mod proxy;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use upstream::Upstreams;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("gateway task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub upstreams: Arc<Upstreams>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting and waits (bounded by the grace period) for open calls.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the gateway stops on its own (after its stop token is cancelled).
    pub async fn wait(self) -> Result<(), GatewayError> {
        Ok(self.task.await?)
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Resolves the replicas, then serves on `listener` until shut down.
pub async fn start(config: Config, listener: TcpListener) -> Result<Running, GatewayError> {
    let addr = listener.local_addr()?;
    let (metrics_listener, metrics_addr) = chat_ops::bind_metrics(config.metrics_listen).await?;
    let stop = CancellationToken::new();
    let upstreams = Upstreams::new(
        config.health_interval,
        config.streams_per_connection as usize,
        stop.child_token(),
    );
    // The first resolution happens before serving, so the first call has replicas.
    let resolver_stop = CancellationToken::new();
    let (resolved_tx, resolved_rx) = tokio::sync::oneshot::channel();
    let resolver = {
        let (upstreams, configured, every, stop) = (
            upstreams.clone(),
            config.upstreams.clone(),
            config.resolve_interval,
            resolver_stop.clone(),
        );
        tokio::spawn(async move {
            upstream::resolve_forever(upstreams, configured, every, stop, resolved_tx).await
        })
    };
    let _ = resolved_rx.await;
    if upstreams.all().is_empty() {
        tracing::warn!("no replica address resolved yet; calls fail until one does");
    }

    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(chat_ops::serve_metrics(l, stop.clone())));
    let limits = edge::EdgeLimits {
        header_read_timeout: config.header_read_timeout,
        max_body_bytes: config.max_body_bytes,
        max_concurrent_streams: config.max_concurrent_streams,
        max_connections: config.max_connections as usize,
        shutdown_grace: config.shutdown_grace,
    };
    let task = {
        let (upstreams, stop) = (upstreams.clone(), stop.clone());
        tokio::spawn(async move {
            edge::serve(
                listener,
                upstreams,
                &config.allow_origins,
                config.web_root.as_deref(),
                limits,
                stop.clone(),
            )
            .await;
            resolver_stop.cancel();
            let _ = resolver.await;
            if let Some(task) = metrics_task {
                let _ = task.await;
            }
        })
    };
    tracing::info!(%addr, "chat gateway listening");
    Ok(Running {
        addr,
        metrics_addr,
        upstreams,
        stop,
        task,
    })
}
