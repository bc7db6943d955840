//! The chat core: every operation a client can ask for, independent of transport.
//!
//! Both the native `Connect` stream and the browser's unary calls end up here, so
//! they behave the same. The order inside each operation is the product's promise:
//! validate, check membership, commit to the store, and only then publish to the bus.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::directory::Directory;
use crate::domain::{
    ClientMsgId, ConversationId, Event, Message, MessageStatus, MessageText, PresenceState,
    Receipt, Timestamp, UserId, UserName, UserRef,
};
use crate::error::ChatError;
use crate::hub::Hub;
use crate::presence::{Beat, PresenceRegistry, PresenceTracker};
use crate::push::Push;
use crate::ratelimit::RateLimiter;
use crate::store::{Appended, ConversationSummary, DeviceSession, NewMessage, Store};

/// Limits that protect the server and other users.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub send_rate_per_second: f64,
    pub send_burst: u32,
    pub heartbeat_interval: Duration,
    pub presence_timeout: Duration,
    /// Store reads sessions run at once (catch-up, resync, gap fills); the others wait
    /// their turn rather than all queueing for the pool and timing out.
    pub catch_up_concurrency: usize,
}

/// Where a send goes.
#[derive(Clone, Debug)]
pub enum Target {
    Conversation(String),
    Recipient(String),
}

/// A send as the client asked for it, before validation.
#[derive(Clone, Debug)]
pub struct SendInput {
    pub client_msg_id: String,
    pub target: Option<Target>,
    pub text: String,
}

/// Which page of history to read.
#[derive(Clone, Copy, Debug)]
pub enum HistoryAnchor {
    Latest,
    Before(u64),
    After(u64),
}

pub struct HistoryPage {
    pub messages: Vec<(Message, MessageStatus)>,
    pub has_more: bool,
    pub receipts: Vec<Receipt>,
}

pub struct ConversationView {
    pub summary: ConversationSummary,
    pub peer_presence: Option<PresenceState>,
}

pub const HISTORY_DEFAULT_LIMIT: u32 = 50;
pub const HISTORY_MAX_LIMIT: u32 = 200;
pub const CONVERSATIONS_MAX: u32 = 1000;

/// Users whose presence may have changed, each queued at most once: memory is bounded
/// by the number of users, however many flips happen while the announcer is busy.
#[derive(Default)]
struct ChangedUsers {
    queue: Mutex<(VecDeque<UserId>, HashSet<UserId>)>,
    notify: Notify,
}

impl ChangedUsers {
    fn push(&self, user: UserId) {
        if let Ok(mut q) = self.queue.lock()
            && q.1.insert(user)
        {
            q.0.push_back(user);
            self.notify.notify_one();
        }
    }

    fn pop(&self) -> Option<UserId> {
        let mut q = self.queue.lock().ok()?;
        let user = q.0.pop_front()?;
        q.1.remove(&user);
        Some(user)
    }
}

/// Typing signals each user may send per second (and in a burst): they are cheap to
/// send and land in other people's queues.
const TYPING_PER_SECOND: u32 = 5;
const TYPING_BURST: u32 = 20;

pub struct Chat {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub hub: Arc<Hub>,
    pub presence: Arc<PresenceTracker>,
    pub registry: Arc<dyn PresenceRegistry>,
    pub push: Arc<Push>,
    pub limits: Limits,
    /// Names and direct conversations already read from the store.
    directory: Directory,
    /// Turns at a session's store reads (see `Limits::catch_up_concurrency`).
    pub catch_up_turns: Arc<tokio::sync::Semaphore>,
    limiter: RateLimiter,
    typing_limiter: RateLimiter,
    /// Users whose presence may have changed, for the announcer task.
    changed: ChangedUsers,
}

impl Chat {
    pub fn new(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        registry: Arc<dyn PresenceRegistry>,
        presence: Arc<PresenceTracker>,
        push: Arc<Push>,
        hub: Arc<Hub>,
        limits: Limits,
    ) -> Self {
        Chat {
            registry,
            push,
            presence,
            limiter: RateLimiter::new(limits.send_rate_per_second, limits.send_burst),
            typing_limiter: RateLimiter::new(f64::from(TYPING_PER_SECOND), TYPING_BURST),
            changed: ChangedUsers::default(),
            directory: Directory::default(),
            catch_up_turns: Arc::new(tokio::sync::Semaphore::new(
                limits.catch_up_concurrency.max(1),
            )),
            store,
            bus,
            hub,
            limits,
        }
    }

    // --- messages ---

    pub async fn send(
        &self,
        device: &DeviceSession,
        input: SendInput,
    ) -> Result<Appended, ChatError> {
        let started = std::time::Instant::now();
        let result = self.store_and_publish(device, input).await;
        if let Ok(appended) = &result {
            let outcome = if appended.duplicate {
                "duplicate"
            } else {
                "stored"
            };
            metrics::counter!(crate::metrics::SENDS, "outcome" => outcome).increment(1);
            metrics::histogram!(crate::metrics::SEND_SECONDS)
                .record(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn store_and_publish(
        &self,
        device: &DeviceSession,
        input: SendInput,
    ) -> Result<Appended, ChatError> {
        let me = &device.user;
        let client_msg_id = ClientMsgId::parse(input.client_msg_id)?;
        let text = MessageText::parse(input.text, self.limits.max_message_bytes)?;
        // Resolve the target and its members without writing anything: a refused send
        // stores nothing.
        let (conversation, members, new_peer) = match input.target {
            None => {
                return Err(ChatError::InvalidArgument(
                    "a send needs a conversation_id or a recipient".into(),
                ));
            }
            Some(Target::Conversation(id)) => {
                let id = ConversationId::parse(&id, "conversation_id")?;
                (id, self.members_as(id, me.id).await?, None)
            }
            Some(Target::Recipient(name)) => {
                let peer = self.direct_peer(me, &name).await?;
                let id = ConversationId::direct(me.id, peer.id);
                (id, vec![me.id, peer.id], Some(peer.id))
            }
        };
        if !self.limiter.try_acquire(me.id) {
            // A retry of a message already stored gets its original ack at any rate.
            if let Some(message) = self
                .store
                .find_sent(conversation, me.id, &client_msg_id)
                .await?
            {
                return Ok(Appended {
                    message,
                    duplicate: true,
                });
            }
            return Err(ChatError::RateLimited(
                "too many messages; slow down and retry".into(),
            ));
        }
        if let Some(peer) = new_peer
            && self.directory.direct_members(conversation).is_none()
        {
            self.store.ensure_direct(me.id, peer).await?;
            self.directory
                .remember_members(conversation, &[me.id, peer]);
        }
        let new = NewMessage {
            conversation_id: conversation,
            sender: me.clone(),
            client_msg_id,
            text,
        };
        // A retry rings the doorbells again in case the first publish was lost (sessions
        // drop duplicates by seq), and queues its pushes again in case the first
        // attempt died before it could (the queue coalesces, the worker skips what
        // was pushed). Queueing pushes does not hold the ack.
        let push = self.push.clone();
        self.commit_then_publish(move |store, bus| async move {
            let appended = store.append_message(new).await?;
            bus.publish(&members, Event::Message(Arc::new(appended.message.clone())))
                .await;
            push.message_stored(&members, &appended.message).await;
            Ok(appended)
        })
        .await
    }

    /// Runs a commit and the publish that follows it in their own task, so that a
    /// caller who goes away after the commit (a cancelled call, an expired deadline)
    /// cannot skip the publish.
    async fn commit_then_publish<T, F, Fut>(&self, work: F) -> Result<T, ChatError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>, Arc<dyn Bus>) -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::store::StoreError>> + Send + 'static,
    {
        let task = tokio::spawn(work(self.store.clone(), self.bus.clone()));
        match task.await {
            Ok(result) => Ok(result?),
            Err(e) => Err(ChatError::Unexpected(format!("commit task: {e}"))),
        }
    }

    pub async fn history(
        &self,
        me: UserId,
        conversation: &str,
        anchor: HistoryAnchor,
        limit: u32,
    ) -> Result<HistoryPage, ChatError> {
        let conversation = ConversationId::parse(conversation, "conversation_id")?;
        // The members' receipts, read first, are the membership check too.
        let receipts = self.store.members(conversation).await?;
        if !receipts.iter().any(|r| r.user.id == me) {
            return Err(not_found_conversation());
        }
        let limit = match limit {
            0 => HISTORY_DEFAULT_LIMIT,
            n => n.min(HISTORY_MAX_LIMIT),
        };
        // One extra row tells whether another page exists.
        let (mut messages, has_more) = match anchor {
            HistoryAnchor::Latest | HistoryAnchor::Before(_) => {
                let before = match anchor {
                    HistoryAnchor::Before(seq) => seq,
                    _ => u64::MAX >> 1,
                };
                let mut page = self
                    .store
                    .messages_before(conversation, before, limit + 1)
                    .await?;
                let more = page.len() > limit as usize;
                if more {
                    page.remove(0);
                }
                (page, more)
            }
            HistoryAnchor::After(seq) => {
                let mut page = self
                    .store
                    .messages_after(conversation, seq, limit + 1)
                    .await?;
                let more = page.len() > limit as usize;
                page.truncate(limit as usize);
                (page, more)
            }
        };
        let messages = messages
            .drain(..)
            .map(|m| {
                let status = MessageStatus::derive(m.seq, m.sender.id, &receipts);
                (m, status)
            })
            .collect();
        Ok(HistoryPage {
            messages,
            has_more,
            receipts,
        })
    }

    // --- receipts ---

    /// Records that the device has received everything up to `seq`.
    pub async fn ack_delivered(
        &self,
        me: UserId,
        conversation: &str,
        seq: u64,
    ) -> Result<Receipt, ChatError> {
        let conversation = ConversationId::parse(conversation, "conversation_id")?;
        self.advance(me, conversation, seq, 0).await
    }

    /// Records that the user has read everything up to `seq` (0: up to the latest).
    pub async fn mark_read(
        &self,
        me: UserId,
        conversation: &str,
        seq: u64,
    ) -> Result<Receipt, ChatError> {
        let conversation = ConversationId::parse(conversation, "conversation_id")?;
        let seq = if seq == 0 { u64::MAX >> 1 } else { seq };
        self.advance(me, conversation, seq, seq).await
    }

    async fn advance(
        &self,
        me: UserId,
        conversation: ConversationId,
        delivered: u64,
        read: u64,
    ) -> Result<Receipt, ChatError> {
        let members = self.members_as(conversation, me).await?;
        let update = self
            .commit_then_publish(move |store, bus| async move {
                let update = store
                    .advance_receipt(conversation, me, delivered, read)
                    .await?;
                if let Some(update) = &update
                    && update.changed
                {
                    bus.publish(&members, Event::Receipt(update.receipt.clone()))
                        .await;
                }
                Ok(update)
            })
            .await?;
        Ok(update.ok_or_else(not_found_conversation)?.receipt)
    }

    // --- typing ---

    pub async fn typing(
        &self,
        me: &UserRef,
        conversation: &str,
        typing: bool,
    ) -> Result<(), ChatError> {
        let conversation = ConversationId::parse(conversation, "conversation_id")?;
        let mut others = self.members_as(conversation, me.id).await?;
        if !self.typing_limiter.try_acquire(me.id) {
            return Err(ChatError::RateLimited("too many typing signals".into()));
        }
        others.retain(|u| *u != me.id);
        self.bus
            .publish(
                &others,
                Event::Typing {
                    conversation_id: conversation,
                    user: me.clone(),
                    typing,
                },
            )
            .await;
        Ok(())
    }

    // --- conversations ---

    /// The direct conversation with the named user, created on first use.
    pub async fn open_direct(&self, me: &UserRef, peer: &str) -> Result<ConversationId, ChatError> {
        let peer = self.direct_peer(me, peer).await?;
        Ok(self.store.ensure_direct(me.id, peer.id).await?)
    }

    /// The named user, as the other member of a direct conversation with `me`.
    async fn direct_peer(&self, me: &UserRef, name: &str) -> Result<UserRef, ChatError> {
        let peer = self.find_user(name).await?;
        if peer.id == me.id {
            return Err(ChatError::InvalidArgument(
                "cannot open a conversation with yourself".into(),
            ));
        }
        Ok(peer)
    }

    pub async fn peer_of_direct(
        &self,
        me: UserId,
        conversation: ConversationId,
    ) -> Result<Option<UserRef>, ChatError> {
        Ok(self
            .store
            .members(conversation)
            .await?
            .into_iter()
            .map(|r| r.user)
            .find(|u| u.id != me))
    }

    /// The user's conversations (all, or only one), each with the peer's presence.
    pub async fn conversations(
        &self,
        me: UserId,
        only: Option<ConversationId>,
    ) -> Result<Vec<ConversationView>, ChatError> {
        let summaries = self
            .store
            .conversations_of(me, only, CONVERSATIONS_MAX)
            .await?;
        let peer = |s: &ConversationSummary| match s.others.as_slice() {
            [peer] => Some(peer.user.clone()),
            _ => None,
        };
        // Online from the registry; last seen of everyone offline in one query.
        let peers: Vec<UserId> = summaries.iter().filter_map(peer).map(|u| u.id).collect();
        let online: std::collections::HashSet<UserId> = peers
            .iter()
            .zip(self.online(&peers).await)
            .filter_map(|(id, online)| online.then_some(*id))
            .collect();
        let offline: Vec<UserId> = peers
            .iter()
            .filter(|id| !online.contains(id))
            .copied()
            .collect();
        let last_seen: std::collections::HashMap<UserId, Timestamp> =
            self.store.last_seen(&offline).await?.into_iter().collect();
        Ok(summaries
            .into_iter()
            .map(|summary| {
                let peer_presence = peer(&summary).map(|user| {
                    let online = online.contains(&user.id);
                    let last_seen = if online {
                        None
                    } else {
                        last_seen.get(&user.id).copied()
                    };
                    PresenceState {
                        user,
                        online,
                        last_seen,
                    }
                });
                ConversationView {
                    summary,
                    peer_presence,
                }
            })
            .collect())
    }

    // --- presence ---

    /// Presence of the named users; each must be the caller or share a conversation
    /// with them, or the answer is NOT_FOUND (presence is not public).
    pub async fn presence_of_names(
        &self,
        me: &UserRef,
        names: &[String],
    ) -> Result<Vec<PresenceState>, ChatError> {
        if names.is_empty() {
            return Err(ChatError::InvalidArgument("name at least one user".into()));
        }
        if names.len() > 100 {
            return Err(ChatError::InvalidArgument(
                "at most 100 users per call".into(),
            ));
        }
        let contacts = self.store.contacts(me.id).await?;
        let mut out = Vec::with_capacity(names.len());
        for raw in names {
            let name = UserName::parse(raw).map_err(|_| not_found_user(raw))?;
            let user = if name == me.name {
                me.clone()
            } else {
                contacts
                    .iter()
                    .find(|c| c.name == name)
                    .cloned()
                    .ok_or_else(|| not_found_user(raw))?
            };
            out.push(self.presence_of(user).await?);
        }
        Ok(out)
    }

    /// Whether the user has a live session on any replica (as far as is known).
    pub async fn is_online(&self, user: UserId) -> bool {
        self.online(&[user]).await.first().copied().unwrap_or(false)
    }

    /// Whether each user is online. If the registry cannot answer, this process's own
    /// sessions are the best knowledge left: a degraded answer beats a failed list.
    async fn online(&self, users: &[UserId]) -> Vec<bool> {
        match self.registry.online(users, &self.presence).await {
            Ok(online) => online,
            Err(e) => {
                metrics::counter!(crate::metrics::PRESENCE_ERRORS).increment(1);
                tracing::warn!(error = %e, "presence registry unavailable; answering from local sessions");
                users.iter().map(|u| self.presence.is_online(*u)).collect()
            }
        }
    }

    async fn presence_of(&self, user: UserRef) -> Result<PresenceState, ChatError> {
        if self.is_online(user.id).await {
            return Ok(PresenceState {
                user,
                online: true,
                last_seen: None,
            });
        }
        let last_seen = self
            .store
            .last_seen(&[user.id])
            .await?
            .first()
            .map(|(_, t)| *t);
        Ok(PresenceState {
            user,
            online: false,
            last_seen,
        })
    }

    pub fn stream_opened(&self, device: &DeviceSession) {
        if self.presence.stream_opened(&device.user, device.id) {
            self.changed.push(device.user.id);
        }
    }

    pub fn stream_closed(&self, device: &DeviceSession) {
        if self.presence.stream_closed(device.user.id, device.id) {
            self.changed.push(device.user.id);
        }
    }

    /// A sign of life. Besides flips, a few beats per presence timeout are settled:
    /// a shared registry learns that the device is still alive this way.
    pub fn heartbeat(&self, device: &DeviceSession) {
        match self.presence.heartbeat(device.user.id, device.id) {
            Beat::Flipped | Beat::Refresh => self.changed.push(device.user.id),
            Beat::Quiet => {}
        }
    }

    /// Expires stale heartbeats and forgets idle rate-limit buckets; runs periodically.
    pub async fn sweep(&self) {
        self.limiter.prune();
        self.typing_limiter.prune();
        for user in self.presence.sweep() {
            self.changed.push(user);
        }
        match self.registry.due().await {
            Ok(users) => users.into_iter().for_each(|u| self.changed.push(u)),
            Err(e) => {
                metrics::counter!(crate::metrics::PRESENCE_ERRORS).increment(1);
                tracing::debug!(error = %e, "could not read users due for expiry");
            }
        }
    }

    /// Records "last seen now" for everyone online, so a crash or a stop loses little.
    pub async fn checkpoint_last_seen(&self) {
        let online = self.presence.online_users();
        if online.is_empty() {
            return;
        }
        if let Err(e) = self.store.set_last_seen(&online, Timestamp::now()).await {
            tracing::warn!(error = %e, "could not checkpoint last seen");
        }
    }

    /// Tells contacts about presence changes, one user at a time, in the order they
    /// happened, always with the user's current state (a stale flip is never sent).
    /// Going offline persists last seen first.
    pub async fn run_announcer(&self, stop: CancellationToken) {
        // Users the registry could not settle, retried after a pause.
        let mut failed: Vec<UserId> = Vec::new();
        loop {
            while let Some(user) = self.changed.pop() {
                if !self.announce(user).await {
                    failed.push(user);
                }
            }
            let retry = tokio::time::sleep(if failed.is_empty() {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(1)
            });
            tokio::select! {
                _ = self.changed.notify.notified() => {}
                _ = retry => failed.drain(..).for_each(|u| self.changed.push(u)),
                _ = stop.cancelled() => {
                    // Stopping: finish what is queued, then return.
                    while let Some(user) = self.changed.pop() {
                        self.announce(user).await;
                    }
                    return;
                }
            }
        }
    }

    /// Settles one user and tells their contacts if their state changed; false if the
    /// registry could not be reached (the caller retries).
    async fn announce(&self, user: UserId) -> bool {
        let state = match self.registry.settle(user, &self.presence).await {
            Ok(Some(state)) => state,
            Ok(None) => return true,
            Err(e) => {
                metrics::counter!(crate::metrics::PRESENCE_ERRORS).increment(1);
                tracing::debug!(error = %e, %user, "could not settle presence");
                return false;
            }
        };
        if !state.online
            && let Err(e) = self.store.set_last_seen(&[user], state.last_active).await
        {
            tracing::warn!(error = %e, user = %state.user.name, "could not persist last seen");
        }
        let event = Event::Presence(PresenceState {
            online: state.online,
            last_seen: (!state.online).then_some(state.last_active),
            user: state.user,
        });
        match self.store.contacts(user).await {
            Ok(contacts) => {
                let ids: Vec<UserId> = contacts.iter().map(|c| c.id).collect();
                self.bus.publish(&ids, event).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not announce presence"),
        }
        true
    }

    /// Ends every live stream of a device whose session was revoked.
    pub fn device_logged_out(&self, device: &DeviceSession) {
        self.hub.close_device(
            device.user.id,
            device.id,
            tonic::Status::unauthenticated("logged out"),
        );
    }

    // --- helpers ---

    async fn find_user(&self, raw: &str) -> Result<UserRef, ChatError> {
        let name = UserName::parse(raw).map_err(|_| not_found_user(raw))?;
        if let Some(user) = self.directory.user(&name) {
            return Ok(user);
        }
        let user = self
            .store
            .user_by_name(&name)
            .await?
            .map(|c| c.user)
            .ok_or_else(|| not_found_user(raw))?;
        self.directory.remember_user(&user);
        Ok(user)
    }

    /// The members of a conversation, read once, as seen by `user`: NOT_FOUND unless
    /// `user` is one of them.
    async fn members_as(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Vec<UserId>, ChatError> {
        let members: Vec<UserId> = match self.directory.direct_members(conversation) {
            Some(members) => members.to_vec(),
            None => {
                let members: Vec<UserId> = self
                    .store
                    .members(conversation)
                    .await?
                    .into_iter()
                    .map(|r| r.user.id)
                    .collect();
                self.directory.remember_members(conversation, &members);
                members
            }
        };
        if !members.contains(&user) {
            return Err(not_found_conversation());
        }
        Ok(members)
    }
}

fn not_found_conversation() -> ChatError {
    ChatError::NotFound("conversation not found".into())
}

fn not_found_user(name: &str) -> ChatError {
    ChatError::NotFound(format!("user {name} not found"))
}
