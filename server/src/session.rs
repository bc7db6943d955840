//! One connected device: the stream of frames the server sends it.
//!
//! A session registers in the hub before it reads the store, so nothing committed
//! in between is missed. It then replays every conversation from the client's cursors
//! (or from the user's delivered watermark), says "caught up", and forwards live
//! events, keeping the last seq it sent per conversation: an older seq is a duplicate
//! and is dropped, a jump is filled from the store first. So a client sees every
//! message once, in order, whatever the bus lost.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use chat_proto::v1 as pb;
use futures::{Stream, StreamExt};
use pb::server_frame::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::api::convert;
use crate::chat::Chat;
use crate::domain::{ConversationId, Event, MessageStatus};
use crate::error::ChatError;
use crate::hub::{Closer, Inbound, Registration};
use crate::store::DeviceSession;

/// Frames buffered towards one client before the session waits for it to read. They
/// travel boxed: a channel allocates its first block of slots up front, and a slot the
/// size of a `ServerFrame` made that block several KiB of every idle session.
const OUTBOUND_FRAMES: usize = 64;
/// Messages read from the store per page during catch-up and gap fills.
const REPLAY_PAGE: u32 = 500;

pub type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::ServerFrame, Status>> + Send>>;

/// The handle the transport keeps to answer requests on the session's stream.
#[derive(Clone)]
pub struct Session {
    pub device: DeviceSession,
    out: mpsc::Sender<Box<pb::ServerFrame>>,
    closer: Closer,
}

impl Session {
    /// Queues a frame (an ack or an error) for the client; false once the session ended.
    pub async fn emit(&self, frame: pb::ServerFrame) -> bool {
        tokio::select! {
            biased;
            _ = self.closer.token().cancelled() => false,
            sent = self.out.send(Box::new(frame)) => sent.is_ok(),
        }
    }

    pub fn close_with(&self, status: Status) {
        self.closer.close_with(status);
    }

    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closer.token().cancelled()
    }
}

/// Starts a session for `device` resuming from `cursors`; returns its handle and the
/// stream of frames to send.
pub fn open(
    chat: Arc<Chat>,
    device: DeviceSession,
    cursors: HashMap<ConversationId, u64>,
    shutdown: &CancellationToken,
) -> (Session, FrameStream) {
    let closer = Closer::new(shutdown.child_token());
    let (out, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
    let (registration, inbox) = chat.hub.register(device.user.id, device.id, closer.clone());
    let session = Session {
        device: device.clone(),
        out: out.clone(),
        closer: closer.clone(),
    };
    let worker = Worker {
        chat,
        device,
        client_cursors: cursors,
        cursors: HashMap::new(),
        inbox,
        out,
        closer: closer.clone(),
        _registration: registration,
    };
    let span = tracing::info_span!(
        "session",
        user = %worker.device.user.name,
        device = %worker.device.id
    );
    tokio::spawn(tracing::Instrument::instrument(worker.run(), span));

    let ended = closer.token().clone().cancelled_owned();
    let shutdown = shutdown.clone();
    let tail = futures::stream::once(async move {
        closer.take_reason().or_else(|| {
            shutdown
                .is_cancelled()
                .then(|| Status::unavailable("server is shutting down; reconnect to resume"))
        })
    })
    .filter_map(|reason| futures::future::ready(reason.map(Err)));
    let frames = ReceiverStream::new(out_rx)
        .map(|frame| Ok(*frame))
        .take_until(ended)
        .chain(tail);
    (session, Box::pin(frames))
}

/// Why the worker stopped.
enum Stop {
    /// The client left or the session was closed from outside.
    Closed,
    Failed(ChatError),
}

impl From<ChatError> for Stop {
    fn from(e: ChatError) -> Self {
        Stop::Failed(e)
    }
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Self {
        Stop::Failed(e.into())
    }
}

struct Worker {
    chat: Arc<Chat>,
    device: DeviceSession,
    client_cursors: HashMap<ConversationId, u64>,
    /// The last seq sent to this client, per conversation.
    cursors: HashMap<ConversationId, u64>,
    inbox: mpsc::Receiver<Inbound>,
    out: mpsc::Sender<Box<pb::ServerFrame>>,
    closer: Closer,
    _registration: Registration,
}

impl Worker {
    async fn run(mut self) {
        tracing::debug!("session opened");
        self.chat.stream_opened(&self.device);
        let _offline = PresenceGuard {
            chat: self.chat.clone(),
            device: self.device.clone(),
        };
        match self.serve().await {
            Ok(()) | Err(Stop::Closed) => {
                tracing::debug!("session closed");
                self.closer.close();
            }
            Err(Stop::Failed(e)) => {
                tracing::warn!(error = %e, user = %self.device.user.name, "session failed");
                self.closer.close_with(Status::from(e));
            }
        }
    }

    async fn serve(&mut self) -> Result<(), Stop> {
        self.emit(convert::frame(Kind::Welcome(pb::Welcome {
            session_id: Uuid::new_v4().to_string(),
            user: Some(convert::user(&self.device.user)),
            heartbeat_interval: prost_types::Duration::try_from(
                self.chat.limits.heartbeat_interval,
            )
            .ok(),
        })))
        .await?;
        // Listening starts before the store is read, so a message committed in between
        // arrives live and is dropped as a duplicate rather than missed.
        self.chat.bus.listen(self.device.user.id).await;
        self.catch_up().await?;
        let expires_in = self
            .device
            .expires_at
            .to_system_time()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let expired = tokio::time::sleep(expires_in);
        tokio::pin!(expired);
        let quiet_for = self.chat.limits.heartbeat_interval;
        let quiet = tokio::time::sleep(quiet_for);
        tokio::pin!(quiet);
        loop {
            let event = tokio::select! {
                biased;
                _ = self.closer.token().cancelled() => return Err(Stop::Closed),
                _ = self.out.closed() => return Err(Stop::Closed),
                _ = &mut expired => {
                    return Err(Stop::Failed(ChatError::Unauthenticated(
                        "token expired, log in again".into(),
                    )));
                }
                event = self.inbox.recv() => event,
                // A quiet stream says it is alive, so that a client whose transport has no
                // pings (grpc-web over HTTP/1.1) can tell it from a dead one.
                _ = &mut quiet => {
                    self.emit(convert::frame(Kind::KeepAlive(pb::KeepAlive {}))).await?;
                    quiet.as_mut().reset(tokio::time::Instant::now() + quiet_for);
                    continue;
                }
            };
            match event {
                Some(Inbound::Resync) => {
                    self.resync().await?;
                    quiet
                        .as_mut()
                        .reset(tokio::time::Instant::now() + quiet_for);
                }
                Some(Inbound::Event(event)) => {
                    self.forward(event).await?;
                    quiet
                        .as_mut()
                        .reset(tokio::time::Instant::now() + quiet_for);
                }
                None => return Err(Stop::Closed),
            }
        }
    }

    /// Runs one store read in a turn. Many sessions reconnecting at once take turns at
    /// the pool, so that none waits past the pool's timeout. The turn covers the read
    /// only, never the sending of what it read: a slow client must not hold the store
    /// from the others. While it waits, the session says it is alive, so that the client
    /// does not give up on a silent stream.
    async fn read<T>(
        &self,
        read: impl Future<Output = Result<T, crate::store::StoreError>>,
    ) -> Result<T, Stop> {
        let acquire = self.chat.catch_up_turns.acquire();
        tokio::pin!(acquire);
        let quiet_for = self.chat.limits.heartbeat_interval;
        let _turn = loop {
            tokio::select! {
                biased;
                _ = self.closer.token().cancelled() => return Err(Stop::Closed),
                permit = &mut acquire => break permit.map_err(|_| Stop::Closed)?,
                _ = tokio::time::sleep(quiet_for) => {
                    self.emit(convert::frame(Kind::KeepAlive(pb::KeepAlive {}))).await?;
                }
            }
        };
        Ok(read.await?)
    }

    /// Replays everything after the resume points, then the peers' receipts, then
    /// "caught up" with the cursors the client now holds.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let positions = self
            .read(self.chat.store.positions(self.device.user.id))
            .await?;
        for p in positions {
            // A returning device (it sent cursors) has never seen a conversation it
            // has no cursor for: replay it all. A new device starts after what the
            // user's other devices have received, and pages back through history.
            let from = match self.client_cursors.get(&p.conversation_id) {
                Some(&seq) => seq.min(p.last_seq),
                None if !self.client_cursors.is_empty() => 0,
                None => p.delivered_seq,
            };
            self.cursors.insert(p.conversation_id, from);
            self.fill(p.conversation_id, p.last_seq).await?;
        }
        let receipts = self
            .read(self.chat.store.peer_receipts(self.device.user.id))
            .await?;
        for receipt in receipts {
            self.emit(convert::frame(Kind::Receipt(convert::receipt(&receipt))))
                .await?;
        }
        let mut cursors: Vec<pb::Cursor> = self
            .cursors
            .iter()
            .map(|(c, &seq)| pb::Cursor {
                conversation_id: c.to_string(),
                seq,
            })
            .collect();
        cursors.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        self.emit(convert::frame(Kind::CaughtUp(pb::CaughtUp { cursors })))
            .await
    }

    /// Sends everything stored after this session's cursors: the bus lost events, so
    /// the store says what they were. Receipts are re-sent too; clients keep them
    /// monotonic.
    async fn resync(&mut self) -> Result<(), Stop> {
        metrics::counter!(crate::metrics::RESYNCS).increment(1);
        let positions = self
            .read(self.chat.store.positions(self.device.user.id))
            .await?;
        for p in positions {
            self.fill(p.conversation_id, p.last_seq).await?;
        }
        let receipts = self
            .read(self.chat.store.peer_receipts(self.device.user.id))
            .await?;
        for receipt in receipts {
            self.emit(convert::frame(Kind::Receipt(convert::receipt(&receipt))))
                .await?;
        }
        Ok(())
    }

    /// Sends the stored messages after this session's cursor up to `through`.
    async fn fill(&mut self, conversation: ConversationId, through: u64) -> Result<(), Stop> {
        loop {
            let cursor = self.cursors.get(&conversation).copied().unwrap_or(0);
            if cursor >= through {
                return Ok(());
            }
            let want = u32::try_from(through - cursor)
                .unwrap_or(u32::MAX)
                .min(REPLAY_PAGE);
            let page = self
                .read(self.chat.store.messages_after(conversation, cursor, want))
                .await?;
            if page.is_empty() {
                return Ok(());
            }
            for message in page {
                let seq = message.seq;
                self.emit(convert::frame(Kind::Message(convert::message(
                    &message,
                    MessageStatus::Sent,
                ))))
                .await?;
                self.cursors.insert(conversation, seq);
            }
        }
    }

    async fn forward(&mut self, event: Event) -> Result<(), Stop> {
        if let Event::Message(message) = &event {
            let conversation = message.conversation_id;
            let cursor = self.cursors.get(&conversation).copied().unwrap_or(0);
            if message.seq <= cursor {
                return Ok(());
            }
            if message.seq > cursor + 1 {
                tracing::debug!(%conversation, cursor, seq = message.seq, "gap; filling from the store");
                metrics::counter!(crate::metrics::GAP_FILLS).increment(1);
                self.fill(conversation, message.seq - 1).await?;
            }
            self.emit(convert::event_frame(&event)).await?;
            self.cursors.insert(conversation, message.seq);
            return Ok(());
        }
        self.emit(convert::event_frame(&event)).await
    }

    async fn emit(&self, frame: pb::ServerFrame) -> Result<(), Stop> {
        if matches!(frame.kind, Some(Kind::Message(_))) {
            metrics::counter!(crate::metrics::DELIVERIES).increment(1);
        }
        tokio::select! {
            biased;
            _ = self.closer.token().cancelled() => Err(Stop::Closed),
            sent = self.out.send(Box::new(frame)) => sent.map_err(|_| Stop::Closed),
        }
    }
}

/// Marks the device's stream closed for presence, however the worker ends.
struct PresenceGuard {
    chat: Arc<Chat>,
    device: DeviceSession,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.chat.stream_closed(&self.device);
    }
}
