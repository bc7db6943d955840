//! Assembles the server: store, hub, bus, services, the HTTP/2 limits, health and
//! reflection, and a shutdown that is bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::v1::auth_service_server::AuthServiceServer;
use chat_proto::v1::chat_service_server::ChatServiceServer;
use chat_proto::v1::push_service_server::PushServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::api::{auth::AuthApi, chat::ChatApi, push::PushApi};
use crate::auth::Auth;
use crate::bus::{Bus, InProcessBus, RedisBus};
use crate::chat::{Chat, Limits};
use crate::config::Config;
use crate::hub::Hub;
use crate::presence::{LocalRegistry, PresenceRegistry, PresenceTracker, RedisRegistry};
use crate::push::Push;
use crate::push::http::HttpClient;
use crate::push::queue::{PushQueue, RedisQueue, TableQueue};
use crate::push::webhook::WebhookProvider;
use crate::push::webpush::{VapidKey, WebPushProvider};
use crate::push::worker::{PushWorker, WorkerOptions};
use crate::redis_link::{RedisLink, RedisUrlError};
use crate::store::StoreError;

/// Smallest cap on a decoded protobuf message. A chat frame is small, so tonic's 4 MiB
/// default would only help abuse; the cap grows with `--max-message-bytes`.
const MIN_DECODED_BYTES: usize = 64 * 1024;

/// How often "last seen" is written for users who are online, so that after a crash
/// it is at most this old.
const LAST_SEEN_CHECKPOINT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("redis: {0}")]
    Redis(#[from] RedisUrlError),
    #[error("push: {0}")]
    Push(String),
}

/// Name of the stored VAPID key pair (PKCS#8, base64url) that replicas share.
const VAPID_KEY_NAME: &str = "vapid_pkcs8";
/// How long a push service keeps an undelivered Web Push for an offline browser.
const WEB_PUSH_TTL: Duration = Duration::from_secs(24 * 3600);

/// The VAPID key: from the configuration, or the one stored in the database (the
/// first replica to start generates it), so browser subscriptions survive restarts.
async fn vapid_key(
    config: &Config,
    store: &dyn crate::store::Store,
) -> Result<VapidKey, ServeError> {
    let invalid =
        |e: crate::push::webpush::WebPushError| ServeError::Push(format!("VAPID key: {e}"));
    if let (Some(private), Some(public)) = (&config.vapid_private_key, &config.vapid_public_key) {
        return VapidKey::from_raw_b64(private, public).map_err(invalid);
    }
    let (_, candidate) = VapidKey::generate().map_err(invalid)?;
    let stored = store.server_key(VAPID_KEY_NAME, &candidate).await?;
    VapidKey::from_pkcs8_b64(&stored).map_err(invalid)
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub chat: Arc<Chat>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stops accepting, closes every session with UNAVAILABLE, and waits (bounded by the
    /// configured grace) for calls in flight.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the server stops on its own.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServeError::Config(format!("server task failed: {e}"))),
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Wraps the bus the server would use, e.g. to inject faults in tests.
pub type BusLayer = Box<dyn FnOnce(Arc<dyn Bus>) -> Arc<dyn Bus> + Send>;

/// Opens the store and serves on `listener` until shut down.
pub async fn start(config: Config, listener: TcpListener) -> Result<Running, ServeError> {
    start_with(config, listener, None).await
}

/// [`start`], with the bus wrapped by `bus_layer`.
pub async fn start_with(
    config: Config,
    listener: TcpListener,
    bus_layer: Option<BusLayer>,
) -> Result<Running, ServeError> {
    let addr = listener.local_addr()?;
    let (metrics_listener, metrics_addr) = chat_ops::bind_metrics(config.metrics_listen).await?;
    let store =
        crate::store::open(&config.resolved_database_url(), &config.store_options()).await?;
    let hub = Hub::new(config.session_queue);
    let shutdown = CancellationToken::new();
    // The bus's own tasks outlive the drain: sessions closed by it still publish.
    let bus_stop = CancellationToken::new();
    // This process's name among push workers (a Redis consumer, a lease holder).
    let worker_name = format!("chat-server-{}", uuid::Uuid::new_v4());
    let (bus, registry, push_queue): (Arc<dyn Bus>, Arc<dyn PresenceRegistry>, Arc<dyn PushQueue>) =
        match &config.redis_url {
            Some(url) => {
                let link = Arc::new(RedisLink::parse(url)?);
                tracing::info!(
                    redis = link.url(),
                    cluster = link.is_cluster(),
                    "replicas meet in redis"
                );
                (
                    Arc::new(RedisBus::start(link.clone(), hub.clone(), bus_stop.clone())),
                    Arc::new(RedisRegistry::new(link.clone(), config.presence_timeout)),
                    Arc::new(RedisQueue::new(
                        link,
                        worker_name.clone(),
                        config.push_lease,
                    )),
                )
            }
            None => (
                Arc::new(InProcessBus::new(hub.clone())),
                Arc::new(LocalRegistry),
                Arc::new(TableQueue::new(
                    store.clone(),
                    worker_name.clone(),
                    config.push_lease,
                )),
            ),
        };
    if config.push_lease < config.push_timeout.saturating_mul(2) {
        return Err(ServeError::Config(
            "--push-lease must be at least twice --push-timeout".into(),
        ));
    }
    let vapid = Arc::new(vapid_key(&config, store.as_ref()).await?);
    let presence = Arc::new(PresenceTracker::new(config.presence_timeout));
    let push = Arc::new(Push::new(
        store.clone(),
        push_queue.clone(),
        registry.clone(),
        presence.clone(),
        config.push_grace,
        vapid.public_key_b64(),
    ));
    let bus = match bus_layer {
        Some(layer) => layer(bus),
        None => bus,
    };
    let chat = Arc::new(Chat::new(
        store.clone(),
        bus,
        registry,
        presence,
        push.clone(),
        hub,
        Limits {
            max_message_bytes: config.max_message_bytes,
            send_rate_per_second: config.send_rate,
            send_burst: config.send_burst,
            heartbeat_interval: config.heartbeat_interval,
            presence_timeout: config.presence_timeout,
            // Half the connections: a reconnect storm leaves the rest to sends, logins
            // and the storm's own token checks.
            catch_up_concurrency: (config.database_pool_size as usize / 2).max(1),
        },
    ));
    let hashers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let auth = Arc::new(Auth::new(store, config.token_ttl, hashers));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ChatServiceServer<ChatApi>>().await;
    health.set_serving::<AuthServiceServer<AuthApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(chat_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let max_decoded = MIN_DECODED_BYTES.max(config.max_message_bytes.saturating_add(4096));
    let chat_service =
        ChatServiceServer::new(ChatApi::new(chat.clone(), auth.clone(), shutdown.clone()))
            .max_decoding_message_size(max_decoded);
    let push_service = PushServiceServer::new(PushApi::new(auth.clone(), chat.clone()))
        .max_decoding_message_size(MIN_DECODED_BYTES);
    let auth_service = AuthServiceServer::new(AuthApi::new(auth, chat.clone()))
        .max_decoding_message_size(MIN_DECODED_BYTES);

    let sweeper = {
        let chat = chat.clone();
        let stop = shutdown.clone();
        let every =
            (config.presence_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut last_checkpoint = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => chat.sweep().await,
                }
                if last_checkpoint.elapsed() >= LAST_SEEN_CHECKPOINT {
                    last_checkpoint = tokio::time::Instant::now();
                    chat.checkpoint_last_seen().await;
                }
            }
        })
    };
    // A replica cut off from the others for longer than the grace stops taking new
    // clients (its health says NOT_SERVING) until it is back.
    let health_watch = {
        let chat = chat.clone();
        let health = health.clone();
        let stop = shutdown.clone();
        let grace = config.redis_grace;
        tokio::spawn(async move {
            let mut serving = true;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let cut_off = chat.bus.cut_off_for().is_some_and(|d| d > grace);
                if cut_off == serving {
                    serving = !cut_off;
                    if serving {
                        tracing::info!("connected to the other replicas again; serving");
                        health.set_serving::<ChatServiceServer<ChatApi>>().await;
                        health.set_serving::<AuthServiceServer<AuthApi>>().await;
                    } else {
                        tracing::warn!(?grace, "cut off from redis; reporting NOT_SERVING");
                        health.set_not_serving::<ChatServiceServer<ChatApi>>().await;
                        health.set_not_serving::<AuthServiceServer<AuthApi>>().await;
                    }
                }
            }
        })
    };
    let push_worker = if config.push_worker {
        let http = Arc::new(
            HttpClient::new(config.push_timeout)
                .map_err(|e| ServeError::Push(format!("HTTP client: {e}")))?,
        );
        let worker = Arc::new(PushWorker::new(
            chat.clone(),
            push_queue,
            Arc::new(WebhookProvider::new(http.clone())),
            Arc::new(WebPushProvider::new(
                http,
                vapid,
                config.vapid_subject.clone(),
                WEB_PUSH_TTL,
            )),
            WorkerOptions {
                concurrency: config.push_concurrency as usize,
                max_attempts: config.push_max_attempts,
                retry_base: config.push_retry_base,
                poll: config.push_poll,
            },
        ));
        Some(tokio::spawn(worker.run(shutdown.clone())))
    } else {
        None
    };
    let metrics_task = metrics_listener
        .map(|listener| tokio::spawn(chat_ops::serve_metrics(listener, shutdown.clone())));
    // The announcer outlives the drain, so the offline flips of sessions closed by
    // the shutdown still persist their last seen.
    let announcer_stop = CancellationToken::new();
    let announcer = {
        let chat = chat.clone();
        let stop = announcer_stop.clone();
        tokio::spawn(async move { chat.run_announcer(stop).await })
    };

    let router = Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            crate::error::decode_errors_are_invalid_argument,
        ))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .http2_max_local_error_reset_streams(Some(1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(auth_service)
        .add_service(chat_service)
        .add_service(push_service);

    let stop = shutdown.clone();
    let grace = config.shutdown_grace;
    let chat_for_shutdown = chat.clone();
    let store_for_shutdown = chat.store.clone();
    let task = tokio::spawn(async move {
        // `Server::tcp_nodelay` only applies to listeners tonic binds itself; without it
        // every multi-frame response (a history page) waits ~40 ms on Nagle.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let signal = stop.clone().cancelled_owned();
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(serve);
        let result = tokio::select! {
            result = &mut serve => result.map_err(ServeError::from),
            _ = stop.cancelled() => {
                tracing::info!("shutting down: closing sessions, draining calls");
                health.set_not_serving::<ChatServiceServer<ChatApi>>().await;
                health.set_not_serving::<AuthServiceServer<AuthApi>>().await;
                match tokio::time::timeout(grace, &mut serve).await {
                    Ok(result) => result.map_err(ServeError::from),
                    Err(_) => {
                        tracing::warn!(?grace, "calls still open after the grace period; stopping anyway");
                        Ok(())
                    }
                }
            }
        };
        stop.cancel();
        let _ = sweeper.await;
        let _ = health_watch.await;
        if let Some(task) = push_worker {
            let _ = task.await;
        }
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        announcer_stop.cancel();
        let _ = announcer.await;
        chat_for_shutdown.checkpoint_last_seen().await;
        bus_stop.cancel();
        store_for_shutdown.close().await;
        result
    });
    tracing::info!(%addr, "chat server listening");
    Ok(Running {
        addr,
        metrics_addr,
        chat,
        shutdown,
        task,
    })
}
