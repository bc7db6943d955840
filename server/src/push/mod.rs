//! Push notifications for members with no live session.
//!
//! After a message is committed (and published), `Push::message_stored` queues a
//! burst job for every other member with no live session (here, or on another replica
//! by the presence registry); the queue coalesces a burst into one job. After the
//! grace period a worker (`worker.rs`) reads
//! the member's state and pushes one notification per burst to each of their targets,
//! unless the member came online, received the messages, muted the conversation, or
//! was already pushed for them. Deliveries are retried with backoff and end in the
//! dead letters when they keep failing. The queue (`queue/`) is a Redis Stream when
//! replicas share Redis, and a table in the store otherwise.

pub mod http;
pub mod job;
pub mod notification;
pub mod provider;
pub mod queue;
pub mod webhook;
pub mod webpush;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::{ConversationId, DeviceId, Message, PushTargetId, Timestamp, UserId};
use crate::error::ChatError;
use crate::presence::{PresenceRegistry, PresenceTracker};
use crate::store::{PushEndpoint, PushTarget, Store};
use job::PushJob;
use queue::PushQueue;

/// Targets one user may register (each device has one or two).
pub const MAX_TARGETS_PER_USER: usize = 20;
const MAX_URL_BYTES: usize = 2048;
const WEBHOOK_SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=256;
/// Bursts being queued at once in the background; past it, a send queues its own.
const MAX_QUEUEING: usize = 4096;
/// Tries at queueing one burst (a Redis blip, a busy database), 250 ms apart, doubling.
const ENQUEUE_ATTEMPTS: u32 = 4;
const ENQUEUE_RETRY: Duration = Duration::from_millis(250);

/// A push target as a client asks to register it, before validation.
#[derive(Clone, Debug)]
pub enum TargetInput {
    Webhook {
        url: String,
        secret: String,
    },
    /// The subscription's keys in base64url, as `PushSubscription.toJSON()` gives them.
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
}

/// The queueing side of push, used by the send path, and the registration API.
pub struct Push {
    store: Arc<dyn Store>,
    queue: Arc<dyn PushQueue>,
    /// Who is online on any replica, for members with no session here.
    registry: Arc<dyn PresenceRegistry>,
    tracker: Arc<PresenceTracker>,
    grace: Duration,
    vapid_public_key: String,
    /// Turns at queueing in the background (`MAX_QUEUEING`).
    queueing: Arc<tokio::sync::Semaphore>,
}

impl Push {
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn PushQueue>,
        registry: Arc<dyn PresenceRegistry>,
        tracker: Arc<PresenceTracker>,
        grace: Duration,
        vapid_public_key: String,
    ) -> Self {
        Push {
            store,
            queue,
            registry,
            tracker,
            grace,
            vapid_public_key,
            queueing: Arc::new(tokio::sync::Semaphore::new(MAX_QUEUEING)),
        }
    }

    pub fn queue(&self) -> &Arc<dyn PushQueue> {
        &self.queue
    }

    /// The VAPID key browsers subscribe with.
    pub fn vapid_public_key(&self) -> &str {
        &self.vapid_public_key
    }

    /// Queues a burst for each member but the sender who has no live session: none
    /// here, and none on another replica by the presence registry (so that chatting
    /// across replicas costs a presence lookup per message, not a burst job). Called
    /// after commit. The lookup and the queueing run in their own task, so that an ack
    /// never waits on Redis; only when `MAX_QUEUEING` are already in flight does the
    /// caller wait its turn. A job the queue refuses after a few tries is counted and logged, never
    /// failing the send: the message is stored and arrives on the next connect.
    pub async fn message_stored(self: &Arc<Self>, members: &[UserId], message: &Message) {
        let due = Timestamp::now().after(self.grace);
        for member in members.iter().filter(|m| **m != message.sender.id) {
            // A device that stopped heartbeating (a phone in a tunnel) keeps its stream
            // open for a while, but it is not live: it gets pushes.
            if self.tracker.is_online(*member) {
                metrics::counter!(crate::metrics::PUSH_SUPPRESSED, "reason" => "online")
                    .increment(1);
                continue;
            }
            let job = PushJob::burst(*member, message.conversation_id, message.seq);
            match self.queueing.clone().try_acquire_owned() {
                Ok(turn) => {
                    let push = self.clone();
                    tokio::spawn(async move {
                        push.enqueue(job, due).await;
                        drop(turn);
                    });
                }
                Err(_) => self.enqueue(job, due).await,
            }
        }
    }

    async fn enqueue(&self, job: PushJob, due: Timestamp) {
        if let job::Task::Burst { user, .. } = &job.task {
            // A registry that cannot answer queues the burst anyway: the worker asks again.
            let online = self
                .registry
                .online(&[UserId(*user)], &self.tracker)
                .await
                .is_ok_and(|online| online.first().copied().unwrap_or(false));
            if online {
                metrics::counter!(crate::metrics::PUSH_SUPPRESSED, "reason" => "online")
                    .increment(1);
                return;
            }
        }
        let mut wait = ENQUEUE_RETRY;
        for attempt in 1..=ENQUEUE_ATTEMPTS {
            match self.queue.enqueue(&job, due).await {
                Ok(true) => {
                    metrics::counter!(crate::metrics::PUSH_QUEUED).increment(1);
                    return;
                }
                Ok(false) => {
                    metrics::counter!(crate::metrics::PUSH_COALESCED).increment(1);
                    return;
                }
                Err(e) if attempt == ENQUEUE_ATTEMPTS => {
                    metrics::counter!(crate::metrics::PUSH_QUEUE_ERRORS).increment(1);
                    tracing::warn!(error = %e, job = %job.id, "could not queue a push; giving it up");
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "could not queue a push; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    // --- registration ---

    pub async fn add_target(
        &self,
        user: UserId,
        device: DeviceId,
        input: TargetInput,
    ) -> Result<PushTarget, ChatError> {
        let endpoint = validate(input)?;
        let existing = self.store.push_targets(user).await?;
        let replaces = existing.iter().any(|t| t.endpoint.url() == endpoint.url());
        if !replaces && existing.len() >= MAX_TARGETS_PER_USER {
            return Err(ChatError::FailedPrecondition(format!(
                "at most {MAX_TARGETS_PER_USER} push targets per user; remove one first"
            )));
        }
        Ok(self
            .store
            .add_push_target(&PushTarget {
                id: PushTargetId(uuid::Uuid::new_v4()),
                user,
                device,
                device_name: String::new(),
                endpoint,
                created_at: Timestamp::now(),
            })
            .await?)
    }

    pub async fn targets(&self, user: UserId) -> Result<Vec<PushTarget>, ChatError> {
        Ok(self.store.push_targets(user).await?)
    }

    pub async fn remove_target(&self, user: UserId, id: &str) -> Result<(), ChatError> {
        let id = PushTargetId::parse(id, "id")?;
        if self.store.remove_push_target(user, id).await? {
            Ok(())
        } else {
            Err(ChatError::NotFound("push target not found".into()))
        }
    }

    pub async fn content_free(&self, user: UserId) -> Result<bool, ChatError> {
        Ok(self.store.content_free(user).await?)
    }

    pub async fn set_content_free(
        &self,
        user: UserId,
        content_free: bool,
    ) -> Result<(), ChatError> {
        Ok(self.store.set_content_free(user, content_free).await?)
    }

    pub async fn set_muted(
        &self,
        user: UserId,
        conversation: &str,
        muted: bool,
    ) -> Result<(), ChatError> {
        let conversation = ConversationId::parse(conversation, "conversation_id")?;
        if self.store.set_muted(conversation, user, muted).await? {
            Ok(())
        } else {
            Err(ChatError::NotFound("conversation not found".into()))
        }
    }
}

fn validate(input: TargetInput) -> Result<PushEndpoint, ChatError> {
    match input {
        TargetInput::Webhook { url, secret } => {
            check_url(&url, "url")?;
            if !WEBHOOK_SECRET_BYTES.contains(&secret.len()) {
                return Err(ChatError::InvalidArgument(format!(
                    "secret must be {} to {} bytes",
                    WEBHOOK_SECRET_BYTES.start(),
                    WEBHOOK_SECRET_BYTES.end()
                )));
            }
            Ok(PushEndpoint::Webhook { url, secret })
        }
        TargetInput::WebPush {
            endpoint,
            p256dh,
            auth,
        } => {
            check_url(&endpoint, "endpoint")?;
            let p256dh = decode_key(&p256dh, "p256dh")?;
            if p256dh.len() != 65 || p256dh[0] != 4 {
                return Err(ChatError::InvalidArgument(
                    "p256dh must be an uncompressed P-256 public key (65 bytes)".into(),
                ));
            }
            let auth = decode_key(&auth, "auth")?;
            if auth.len() != 16 {
                return Err(ChatError::InvalidArgument("auth must be 16 bytes".into()));
            }
            Ok(PushEndpoint::WebPush {
                endpoint,
                p256dh,
                auth,
            })
        }
    }
}

fn decode_key(raw: &str, what: &str) -> Result<Vec<u8>, ChatError> {
    // Browsers give base64url without padding; some libraries pad.
    URL_SAFE_NO_PAD
        .decode(raw.trim_end_matches('='))
        .map_err(|_| ChatError::InvalidArgument(format!("{what} is not base64url")))
}

fn check_url(raw: &str, what: &str) -> Result<(), ChatError> {
    let invalid = || ChatError::InvalidArgument(format!("{what} must be an http(s) URL"));
    if raw.len() > MAX_URL_BYTES {
        return Err(ChatError::InvalidArgument(format!(
            "{what} is longer than {MAX_URL_BYTES} bytes"
        )));
    }
    let uri: tonic::codegen::http::Uri = raw.parse().map_err(|_| invalid())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if scheme_ok && host_ok {
        Ok(())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_validated() {
        let hook = |url: &str, secret: &str| {
            validate(TargetInput::Webhook {
                url: url.into(),
                secret: secret.into(),
            })
        };
        assert!(hook("https://hooks.example.com/chat", "0123456789abcdef").is_ok());
        assert!(hook("http://127.0.0.1:8080/x", "0123456789abcdef").is_ok());
        assert!(hook("ftp://example.com/", "0123456789abcdef").is_err());
        assert!(hook("not a url", "0123456789abcdef").is_err());
        assert!(hook("https://example.com/", "short").is_err());
        let push = |p256dh: &str, auth: &str| {
            validate(TargetInput::WebPush {
                endpoint: "https://push.example.com/abc".into(),
                p256dh: p256dh.into(),
                auth: auth.into(),
            })
        };
        let key = URL_SAFE_NO_PAD.encode([4u8; 65]);
        let auth = URL_SAFE_NO_PAD.encode([7u8; 16]);
        assert!(push(&key, &auth).is_ok());
        assert!(push(&URL_SAFE_NO_PAD.encode([4u8; 33]), &auth).is_err());
        assert!(push(&key, &URL_SAFE_NO_PAD.encode([7u8; 15])).is_err());
        assert!(push("!!", &auth).is_err());
    }
}
