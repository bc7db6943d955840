//! What the push pipeline keeps in the store: each device's push targets, each user's
//! push mode, muted conversations, how far each member has been pushed, long-lived
//! server keys (VAPID), and the embedded push queue (a table, used when there is no
//! Redis).
//!
//! The queue here is deliberately dumb: rows with a due time and a lease. What a job
//! means is the push worker's business (`crate::push`); the store only guarantees that
//! a claimed row is leased to one worker at a time, that a lease which runs out makes
//! the row claimable again (a crashed worker's job is retried), and that at most one
//! unclaimed row exists per coalesce key (a burst of messages is one job).

use async_trait::async_trait;
use uuid::Uuid;

use super::StoreError;
use crate::domain::{ConversationId, DeviceId, Message, PushTargetId, Timestamp, UserId, UserRef};

/// Where a target's notifications go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushEndpoint {
    /// POST of JSON, signed with HMAC-SHA256 under `secret`.
    Webhook { url: String, secret: String },
    /// A Web Push subscription (RFC 8030): the push service's URL and the browser's
    /// P-256 public key (65 bytes, uncompressed) and 16-byte auth secret.
    WebPush {
        endpoint: String,
        p256dh: Vec<u8>,
        auth: Vec<u8>,
    },
}

impl PushEndpoint {
    /// The URL notifications are sent to; a user has at most one target per URL.
    pub fn url(&self) -> &str {
        match self {
            PushEndpoint::Webhook { url, .. } => url,
            PushEndpoint::WebPush { endpoint, .. } => endpoint,
        }
    }

    /// The stored `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            PushEndpoint::Webhook { .. } => "webhook",
            PushEndpoint::WebPush { .. } => "web_push",
        }
    }
}

/// A registered push target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTarget {
    pub id: PushTargetId,
    pub user: UserId,
    /// The device session that registered it (targets outlive a logout of another
    /// device, and go with their own device's session).
    pub device: DeviceId,
    pub device_name: String,
    pub endpoint: PushEndpoint,
    pub created_at: Timestamp,
}

/// Everything a push worker reads, in one query, before it pushes a member of a
/// conversation.
#[derive(Clone, Debug)]
pub struct PushContext {
    pub recipient: UserRef,
    pub last_seq: u64,
    pub delivered_seq: u64,
    pub read_seq: u64,
    /// The highest seq a notification has already covered.
    pub pushed_seq: u64,
    pub muted: bool,
    /// The recipient asked for pushes without sender or text.
    pub content_free: bool,
    /// The conversation's newest message, when it has one.
    pub last_message: Option<Message>,
    /// Unread messages across all the recipient's conversations: the app badge.
    pub total_unread: u64,
}

/// A row of the embedded push queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedPush {
    pub id: Uuid,
    /// At most one unclaimed row exists per key; `None` never coalesces.
    pub coalesce_key: Option<String>,
    /// The job, as the push worker serialized it.
    pub payload: String,
    pub due_at: Timestamp,
}

/// A job that ran out of attempts (or was refused for good), kept for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadPush {
    pub id: Uuid,
    pub payload: String,
    pub attempts: u32,
    pub error: String,
    pub died_at: Timestamp,
}

#[async_trait]
pub trait PushStore: Send + Sync {
    // --- targets and settings ---
    /// Stores the target; if the user already has one with the same URL, replaces its
    /// device, keys and secret and keeps its id. Returns the target as stored.
    async fn add_push_target(&self, target: &PushTarget) -> Result<PushTarget, StoreError>;
    /// The user's targets, newest first.
    async fn push_targets(&self, user: UserId) -> Result<Vec<PushTarget>, StoreError>;
    /// Removes the user's target; false if the user has no target with that id.
    async fn remove_push_target(&self, user: UserId, id: PushTargetId) -> Result<bool, StoreError>;
    async fn set_content_free(&self, user: UserId, content_free: bool) -> Result<(), StoreError>;
    async fn content_free(&self, user: UserId) -> Result<bool, StoreError>;
    /// Mutes or unmutes the conversation for the user; false if they are not a member.
    async fn set_muted(
        &self,
        conversation: ConversationId,
        user: UserId,
        muted: bool,
    ) -> Result<bool, StoreError>;
    /// None when the user is not a member of the conversation.
    async fn push_context(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<PushContext>, StoreError>;
    /// Moves the member's pushed watermark forward to `seq`; false if it already was
    /// at or past it (another worker pushed this burst).
    async fn advance_pushed(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: u64,
    ) -> Result<bool, StoreError>;
    /// The value stored under `name`, storing `candidate` first if there is none: the
    /// first replica to start generates a key, every replica then uses that one.
    async fn server_key(&self, name: &str, candidate: &str) -> Result<String, StoreError>;

    // --- the embedded queue ---
    /// Queues the row; false (and nothing queued) when an unclaimed row with the same
    /// coalesce key is already waiting.
    async fn enqueue_push(&self, job: &QueuedPush) -> Result<bool, StoreError>;
    /// Leases up to `limit` rows that are due at `now` and not leased (or whose lease
    /// ran out) to `worker` until `lease_until`, earliest due first.
    async fn claim_pushes(
        &self,
        worker: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedPush>, StoreError>;
    /// Removes a finished row.
    async fn finish_push(&self, id: Uuid) -> Result<(), StoreError>;
    /// Replaces the row's payload and makes it due again at `due_at`, unleased.
    async fn reschedule_push(
        &self,
        id: Uuid,
        payload: &str,
        due_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Moves the row to the dead letters, in one transaction.
    async fn dead_letter_push(
        &self,
        id: Uuid,
        payload: &str,
        attempts: u32,
        error: &str,
    ) -> Result<(), StoreError>;
    /// The newest dead letters, newest first.
    async fn dead_pushes(&self, limit: u32) -> Result<Vec<DeadPush>, StoreError>;
}
