//! The bus between replicas: Redis pub/sub with one channel per user.
//!
//! A publish goes straight to this process's own sessions, then into a queue that a
//! publisher task drains into pipelined PUBLISH (SPUBLISH on a cluster) commands, so
//! a send's ack never waits on Redis. One subscriber task holds this process's one
//! subscription connection: it subscribes to the channel of every user with a local
//! session, hands what arrives to the hub, and is supervised. When the connection
//! drops or stops answering, it reconnects with backoff, subscribes again to every
//! channel, and only then tells every local session to catch up from the store:
//! pub/sub keeps nothing for a subscriber that was away.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::wire::{self, Payload};
use super::{Bus, InProcessBus};
use crate::domain::{Event, UserId};
use crate::hub::Hub;
use crate::metrics as names;
use crate::redis_link::{RedisLink, Subscriber};

/// Publishes waiting for Redis. Beyond this a publish is dropped and its recipients
/// are told to catch up from the store once Redis answers again.
const PUBLISH_QUEUE: usize = 65_536;
/// Publishes sent to Redis together (pipelined on one connection).
const PUBLISH_BATCH: usize = 512;
/// How often an idle subscription connection proves it is alive.
const PING_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn channel(user: UserId) -> String {
    format!("chat:user:{user}")
}

struct Outgoing {
    recipients: Vec<UserId>,
    payload: Arc<Vec<u8>>,
}

enum Control {
    /// Start receiving `user`'s channel; answer once subscribed (or known cut off).
    Listen(UserId, oneshot::Sender<()>),
}

/// Whether this process is connected to Redis, for health.
#[derive(Default)]
struct LinkState {
    down_since: Mutex<Option<Instant>>,
}

impl LinkState {
    fn set_up(&self) {
        ::metrics::gauge!(names::REDIS_CONNECTED).set(1.0);
        if let Ok(mut d) = self.down_since.lock() {
            *d = None;
        }
    }

    fn set_down(&self) {
        ::metrics::gauge!(names::REDIS_CONNECTED).set(0.0);
        if let Ok(mut d) = self.down_since.lock() {
            d.get_or_insert_with(Instant::now);
        }
    }

    fn down_for(&self) -> Option<Duration> {
        self.down_since
            .lock()
            .ok()
            .and_then(|d| d.map(|since| since.elapsed()))
    }
}

pub struct RedisBus {
    /// This process's own sessions, reached without Redis.
    local: InProcessBus,
    origin: Uuid,
    outbox: mpsc::Sender<Outgoing>,
    control: mpsc::UnboundedSender<Control>,
    /// Recipients of publishes dropped on a full queue, told to resync later.
    dropped: Arc<Mutex<HashSet<UserId>>>,
    state: Arc<LinkState>,
}

impl RedisBus {
    /// Starts the publisher and the subscriber; both stop with `stop`.
    pub fn start(link: Arc<RedisLink>, hub: Arc<Hub>, stop: CancellationToken) -> Self {
        let origin = Uuid::new_v4();
        let (outbox, queue) = mpsc::channel(PUBLISH_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let (vacated_tx, vacated) = mpsc::unbounded_channel();
        hub.report_vacated(vacated_tx);
        let dropped = Arc::new(Mutex::new(HashSet::new()));
        let state = Arc::new(LinkState::default());
        // Down until the first subscription connection is up.
        state.set_down();
        tokio::spawn(
            Publisher {
                link: link.clone(),
                origin,
                queue,
                dropped: dropped.clone(),
                stop: stop.clone(),
            }
            .run(),
        );
        tokio::spawn(
            SubscriberTask {
                link,
                hub: hub.clone(),
                origin,
                control: control_rx,
                vacated,
                channels: HashSet::new(),
                state: state.clone(),
                stop,
            }
            .run(),
        );
        RedisBus {
            local: InProcessBus::new(hub),
            origin,
            outbox,
            control,
            dropped,
            state,
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, recipients: &[UserId], event: Event) {
        let payload = Arc::new(wire::encode_event(self.origin, &event));
        self.local.publish(recipients, event).await;
        let outgoing = Outgoing {
            recipients: recipients.to_vec(),
            payload,
        };
        if let Err(mpsc::error::TrySendError::Full(outgoing)) = self.outbox.try_send(outgoing) {
            // Redis has been away long enough to fill the queue. The event is a doorbell:
            // the recipients' sessions elsewhere get a resync once Redis is back.
            ::metrics::counter!(names::REDIS_PUBLISHES, "outcome" => "dropped").increment(1);
            if let Ok(mut dropped) = self.dropped.lock() {
                dropped.extend(outgoing.recipients);
            }
        }
    }

    async fn listen(&self, user: UserId) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Listen(user, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn cut_off_for(&self) -> Option<Duration> {
        self.state.down_for()
    }
}

/// Full-jitter exponential backoff: a random wait up to a doubling cap.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(10))
        .min(BACKOFF_MAX);
    cap.mul_f64(rand::random::<f64>())
}

struct Publisher {
    link: Arc<RedisLink>,
    origin: Uuid,
    queue: mpsc::Receiver<Outgoing>,
    dropped: Arc<Mutex<HashSet<UserId>>>,
    stop: CancellationToken,
}

impl Publisher {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let received = tokio::select! {
                _ = self.stop.cancelled() => 0,
                n = self.queue.recv_many(&mut batch, PUBLISH_BATCH) => n,
            };
            if received == 0 {
                return;
            }
            let mut pending: Vec<(String, Arc<Vec<u8>>)> = batch
                .drain(..)
                .flat_map(|o| {
                    let payload = o.payload;
                    o.recipients
                        .into_iter()
                        .map(move |user| (channel(user), payload.clone()))
                })
                .collect();
            let resync: Vec<UserId> = self
                .dropped
                .lock()
                .map(|mut d| d.drain().collect())
                .unwrap_or_default();
            let resync_payload = Arc::new(wire::encode_resync(self.origin));
            pending.extend(
                resync
                    .into_iter()
                    .map(|user| (channel(user), resync_payload.clone())),
            );
            self.publish_all(pending).await;
        }
    }

    /// Publishes every (channel, payload), retrying the failed ones until Redis takes
    /// them or the server stops.
    async fn publish_all(&self, mut pending: Vec<(String, Arc<Vec<u8>>)>) {
        let mut attempt = 0;
        while !pending.is_empty() {
            match self.link.commands().await {
                Ok(conn) => {
                    let results = futures::future::join_all(pending.iter().map(|(ch, payload)| {
                        let mut conn = conn.clone();
                        let cmd = self.link.publish(ch, payload);
                        async move { cmd.query_async::<Value>(&mut conn).await }
                    }))
                    .await;
                    let before = pending.len();
                    let mut results = results.into_iter();
                    pending.retain(|_| matches!(results.next(), Some(Err(_))));
                    ::metrics::counter!(names::REDIS_PUBLISHES, "outcome" => "ok")
                        .increment((before - pending.len()) as u64);
                    if pending.is_empty() {
                        return;
                    }
                    ::metrics::counter!(names::REDIS_PUBLISHES, "outcome" => "retried")
                        .increment(pending.len() as u64);
                }
                Err(e) => tracing::debug!(error = %e, "redis unreachable for publishing"),
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff(attempt)) => {}
            }
            attempt += 1;
        }
    }
}

struct SubscriberTask {
    link: Arc<RedisLink>,
    hub: Arc<Hub>,
    origin: Uuid,
    control: mpsc::UnboundedReceiver<Control>,
    vacated: mpsc::UnboundedReceiver<UserId>,
    /// Channels this process wants: one per user with a local session.
    channels: HashSet<UserId>,
    state: Arc<LinkState>,
    stop: CancellationToken,
}

/// Why an up connection was given up.
enum Lost {
    Stopped,
    Broken(String),
}

impl SubscriberTask {
    async fn run(mut self) {
        let mut connected_before = false;
        loop {
            let Some(mut sub) = self.connect().await else {
                return;
            };
            if connected_before {
                // Subscribed again before the catch-up reads the store, so anything
                // published after that read arrives live.
                ::metrics::counter!(names::REDIS_RECONNECTS).increment(1);
                tracing::info!(redis = self.link.url(), "redis is back; sessions catch up");
                self.hub.resync_all();
            }
            connected_before = true;
            self.state.set_up();
            match self.serve(&mut sub).await {
                Lost::Stopped => return,
                Lost::Broken(why) => {
                    tracing::warn!(redis = self.link.url(), reason = %why, "lost redis pub/sub; reconnecting");
                    self.state.set_down();
                }
            }
        }
    }

    /// Connects and subscribes to every wanted channel, retrying with backoff. While it
    /// waits, listeners are answered at once: the resync after connecting covers them.
    async fn connect(&mut self) -> Option<Subscriber> {
        let mut attempt = 0;
        loop {
            match self.try_connect().await {
                Ok(sub) => return Some(sub),
                Err(e) => {
                    self.state.set_down();
                    tracing::debug!(redis = self.link.url(), error = %e, attempt, "redis subscribe failed");
                }
            }
            let wait = tokio::time::sleep(backoff(attempt));
            tokio::pin!(wait);
            attempt += 1;
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    _ = &mut wait => break,
                    Some(Control::Listen(user, reply)) = self.control.recv() => {
                        self.channels.insert(user);
                        let _ = reply.send(());
                    }
                    Some(user) = self.vacated.recv() => {
                        if !self.hub.is_present(user) {
                            self.channels.remove(&user);
                        }
                    }
                }
            }
        }
    }

    async fn try_connect(&self) -> redis::RedisResult<Subscriber> {
        let mut sub = self.link.subscriber().await?;
        let wanted: Vec<String> = self.channels.iter().map(|u| channel(*u)).collect();
        sub.subscribe(&wanted).await?;
        Ok(sub)
    }

    async fn serve(&mut self, sub: &mut Subscriber) -> Lost {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Lost::Stopped,
                push = sub.pushes.recv() => match push {
                    Some(push) if push.kind == PushKind::Disconnection => {
                        return Lost::Broken("connection closed".into());
                    }
                    Some(push) => self.receive(push),
                    None => return Lost::Broken("connection closed".into()),
                },
                Some(Control::Listen(user, reply)) = self.control.recv() => {
                    // Subscribe everyone who asked meanwhile in one round trip: a herd
                    // of reconnecting sessions costs a few commands, not one each.
                    let mut replies = vec![reply];
                    let mut fresh = Vec::new();
                    if self.channels.insert(user) {
                        fresh.push(channel(user));
                    }
                    while let Ok(Control::Listen(user, reply)) = self.control.try_recv() {
                        replies.push(reply);
                        if self.channels.insert(user) {
                            fresh.push(channel(user));
                        }
                    }
                    let result = sub.subscribe(&fresh).await;
                    for reply in replies {
                        let _ = reply.send(());
                    }
                    if let Err(e) = result {
                        return Lost::Broken(format!("subscribe: {e}"));
                    }
                }
                Some(user) = self.vacated.recv() => {
                    if !self.hub.is_present(user) && self.channels.remove(&user)
                        && let Err(e) = sub.unsubscribe(&[channel(user)]).await
                    {
                        return Lost::Broken(format!("unsubscribe: {e}"));
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = sub.ping().await {
                        return Lost::Broken(format!("ping: {e}"));
                    }
                }
            }
        }
    }

    fn receive(&self, push: PushInfo) {
        if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
            return;
        }
        let mut data = push.data.into_iter();
        let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
            (data.next(), data.next())
        else {
            return;
        };
        let Some(user) = std::str::from_utf8(&name)
            .ok()
            .and_then(|n| n.strip_prefix("chat:user:"))
            .and_then(|id| Uuid::parse_str(id).ok())
            .map(UserId)
        else {
            return;
        };
        match wire::decode(&payload) {
            Some((origin, _)) if origin == self.origin => {}
            Some((_, Payload::Event(event))) => {
                if let Event::Message(m) = &event {
                    let since_commit =
                        crate::domain::Timestamp::now().micros() - m.sent_at.micros();
                    ::metrics::histogram!(names::FANOUT_SECONDS, "path" => "redis")
                        .record(since_commit.max(0) as f64 / 1e6);
                }
                self.hub.deliver(user, &event);
            }
            Some((_, Payload::Resync)) => self.hub.resync(user),
            None => tracing::debug!("skipped an unreadable bus payload"),
        }
    }
}
