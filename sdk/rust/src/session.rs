//! `Session`: one live `Connect` stream, turned into one ordered stream of typed events.
//!
//! The session drops messages it already holds (by conversation and seq), acknowledges
//! delivery of the rest (coalesced: one ack per conversation per burst), heartbeats at
//! the interval the server asks for, and matches send acks to the sends awaiting them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::client::{ChatStub, Target, new_client_msg_id, send_message};
use crate::cursors::Cursors;
use crate::error::Error;
use crate::proto;
use proto::client_frame::Kind as In;
use proto::server_frame::Kind as Out;

/// Events buffered for the application before the session stops reading the stream.
const EVENT_BUFFER: usize = 1024;
/// Added to twice the server's heartbeat interval before a silent stream counts as dead.
const SILENCE_SLACK: Duration = Duration::from_secs(2);

/// How a session behaves.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Acknowledge delivery of every message as it arrives (what a messaging app does).
    pub auto_ack: bool,
    /// Heartbeat at this interval instead of the one the server asks for; `Some(ZERO)`
    /// turns heartbeats off (the device then shows offline after the presence timeout).
    pub heartbeat_interval: Option<Duration>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            auto_ack: true,
            heartbeat_interval: None,
        }
    }
}

/// Something that happened, in the order the server sent it.
#[derive(Clone, Debug)]
pub enum Event {
    /// A message, seen for the first time by this client.
    Message(proto::Message),
    /// A member's delivered / read watermarks moved forward (never reported backwards).
    Receipt(proto::Receipt),
    /// A contact came online or went offline.
    Presence(proto::Presence),
    /// A member started or stopped typing.
    Typing(proto::Typing),
    /// Everything stored before the session started has been replayed; the cursors
    /// are where the server's replay ended in each conversation.
    CaughtUp(Cursors),
    /// A request sent on the stream (not a send) failed.
    Error(proto::Error),
    /// The stream ended: `None` when closed normally, else the status it ended with.
    Closed(Option<tonic::Status>),
}

/// Sends awaiting their ack; `None` once the stream has ended (new sends fail fast).
type PendingSends = Mutex<Option<HashMap<String, oneshot::Sender<Result<proto::SendAck, Error>>>>>;

fn take_waiter(
    shared: &Shared,
    client_msg_id: &str,
) -> Option<oneshot::Sender<Result<proto::SendAck, Error>>> {
    let mut pending = shared.pending.lock().ok()?;
    pending.as_mut()?.remove(client_msg_id)
}

struct Shared {
    cursors: Mutex<Cursors>,
    pending: PendingSends,
    receipts: Mutex<ReceiptBook>,
}

impl Shared {
    /// Merges a receipt into what is known; None when it moves nothing forward.
    fn merge_receipt(&self, r: proto::Receipt) -> Option<proto::Receipt> {
        self.receipts.lock().ok()?.merge(r)
    }
}

/// The highest (delivered, read) seen per (conversation, user): receipts published by
/// concurrent requests can arrive out of order, a replay after a reconnect repeats them,
/// and a watermark never goes back.
#[derive(Debug, Default)]
pub(crate) struct ReceiptBook(HashMap<(String, String), (u64, u64)>);

impl ReceiptBook {
    /// Merges a receipt into what is known; None when it moves nothing forward.
    pub(crate) fn merge(&mut self, mut r: proto::Receipt) -> Option<proto::Receipt> {
        let user = r.user.as_ref().map(|u| u.id.clone()).unwrap_or_default();
        let key = (r.conversation_id.clone(), user);
        if let Some(&(delivered, read)) = self.0.get(&key) {
            if r.delivered_seq <= delivered && r.read_seq <= read {
                return None;
            }
            r.delivered_seq = r.delivered_seq.max(delivered);
            r.read_seq = r.read_seq.max(read);
        }
        self.0.insert(key, (r.delivered_seq, r.read_seq));
        Some(r)
    }
}

/// A live session. Dropping it ends the stream.
pub struct Session {
    user: proto::User,
    events: mpsc::Receiver<Event>,
    handle: SessionHandle,
    stop: CancellationToken,
}

/// The writing half of a session: frames on the stream, and sends matched to their acks.
/// Cheap to clone; the reconnecting session's outbox writes through it while the
/// connection task reads the events.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    frames: mpsc::Sender<proto::ConnectRequest>,
    shared: Arc<Shared>,
    next_request: Arc<AtomicU64>,
}

impl SessionHandle {
    /// Writes a send on the stream; the receiver answers with its ack or error frame, or
    /// with [`Error::SessionClosed`] if the stream ends first.
    pub(crate) async fn start_send(
        &self,
        message: proto::SendMessage,
    ) -> Result<oneshot::Receiver<Result<proto::SendAck, Error>>, Error> {
        let (tx, rx) = oneshot::channel();
        {
            // Scoped: the lock is released before the write below waits.
            let mut pending = self
                .shared
                .pending
                .lock()
                .map_err(|_| Error::SessionClosed)?;
            let Some(pending) = pending.as_mut() else {
                return Err(Error::SessionClosed);
            };
            pending.insert(message.client_msg_id.clone(), tx);
        }
        self.frame(In::Send(message)).await?;
        Ok(rx)
    }

    /// Writes a send on the stream and waits for its answer.
    pub(crate) async fn send(&self, message: proto::SendMessage) -> Result<proto::SendAck, Error> {
        let answer = self.start_send(message).await?;
        answer.await.map_err(|_| Error::SessionClosed)?
    }

    pub(crate) async fn ack(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.frame(In::Ack(proto::AckDelivered {
            conversation_id: conversation_id.to_owned(),
            seq,
        }))
        .await
    }

    pub(crate) async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.frame(In::MarkRead(proto::MarkReadUpTo {
            conversation_id: conversation_id.to_owned(),
            seq,
        }))
        .await
    }

    pub(crate) async fn typing(&self, conversation_id: &str, typing: bool) -> Result<(), Error> {
        self.frame(In::Typing(proto::TypingSignal {
            conversation_id: conversation_id.to_owned(),
            typing,
        }))
        .await
    }

    async fn frame(&self, kind: In) -> Result<(), Error> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.frames
            .send(request(id, kind))
            .await
            .map_err(|_| Error::SessionClosed)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Session {
    pub(crate) async fn open(
        mut stub: ChatStub,
        cursors: Cursors,
        options: SessionOptions,
    ) -> Result<Self, Error> {
        let (frames, outbound) = mpsc::channel(256);
        let stop = CancellationToken::new();
        let hello = In::Hello(proto::Hello {
            cursors: cursors.to_proto(),
        });
        frames
            .send(request(0, hello))
            .await
            .map_err(|_| Error::SessionClosed)?;
        let mut inbound = stub
            .connect(
                // Closing the session half-closes the request stream too.
                ReceiverStream::new(outbound).take_until(stop.clone().cancelled_owned()),
            )
            .await?
            .into_inner();
        let welcome = match inbound.message().await? {
            Some(proto::ConnectResponse {
                frame:
                    Some(proto::ServerFrame {
                        kind: Some(Out::Welcome(w)),
                    }),
            }) => w,
            _ => {
                return Err(Error::Protocol(
                    "the stream did not start with welcome".into(),
                ));
            }
        };
        let user = welcome
            .user
            .ok_or_else(|| Error::Protocol("welcome without a user".into()))?;
        let shared = Arc::new(Shared {
            cursors: Mutex::new(cursors),
            pending: Mutex::new(Some(HashMap::new())),
            receipts: Mutex::new(ReceiptBook::default()),
        });
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);

        let acks = options.auto_ack.then(|| {
            let acks = Arc::new(PendingAcks::default());
            tokio::spawn(ack_loop(acks.clone(), frames.clone(), stop.clone()));
            acks
        });
        let interval = options
            .heartbeat_interval
            .or_else(|| {
                welcome
                    .heartbeat_interval
                    .and_then(|d| Duration::try_from(d).ok())
            })
            .unwrap_or(Duration::from_secs(15));
        if !interval.is_zero() {
            tokio::spawn(heartbeat_loop(interval, frames.clone(), stop.clone()));
        }
        // The server writes at least every heartbeat interval (a keep-alive when there
        // is nothing else), so a longer silence means a dead path, found long before
        // TCP or HTTP/2 keepalive would notice.
        let server_interval = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(15));
        let silence_limit = server_interval * 2 + SILENCE_SLACK;
        tokio::spawn(read_loop(
            inbound,
            shared.clone(),
            events_tx,
            acks,
            silence_limit,
            stop.clone(),
        ));
        Ok(Session {
            user,
            events,
            handle: SessionHandle {
                frames,
                shared,
                next_request: Arc::new(AtomicU64::new(1)),
            },
            stop,
        })
    }

    /// The writing half, for the reconnecting session.
    pub(crate) fn handle(&self) -> SessionHandle {
        self.handle.clone()
    }

    /// The logged-in user.
    pub fn user(&self) -> &proto::User {
        &self.user
    }

    /// The next event; `None` after [`Event::Closed`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The cursors a later session should resume from.
    pub fn cursors(&self) -> Cursors {
        self.handle
            .shared
            .cursors
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Sends `text` on the stream with a fresh `client_msg_id` and waits for its ack.
    pub async fn send(&self, target: Target, text: &str) -> Result<proto::SendAck, Error> {
        self.send_with_id(target, &new_client_msg_id(), text).await
    }

    /// Sends with the given idempotency key: if the session ends before the ack, send
    /// again with the same key (on any session) and the message is stored once.
    pub async fn send_with_id(
        &self,
        target: Target,
        client_msg_id: &str,
        text: &str,
    ) -> Result<proto::SendAck, Error> {
        self.handle
            .send(send_message(target, client_msg_id, text))
            .await
    }

    /// Acknowledges delivery up to `seq` (done automatically with `auto_ack`).
    pub async fn ack(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.handle.ack(conversation_id, seq).await
    }

    /// Marks the conversation read up to `seq` (`0`: everything so far).
    pub async fn mark_read(&self, conversation_id: &str, seq: u64) -> Result<(), Error> {
        self.handle.mark_read(conversation_id, seq).await
    }

    /// Tells the other members the user is typing (or stopped).
    pub async fn typing(&self, conversation_id: &str, typing: bool) -> Result<(), Error> {
        self.handle.typing(conversation_id, typing).await
    }

    /// Ends the stream; events already received can still be read.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

fn server_cursors(cursors: &[proto::Cursor]) -> Cursors {
    let mut out = Cursors::new();
    for c in cursors {
        out.advance(&c.conversation_id, c.seq);
    }
    out
}

fn request(request_id: u64, kind: In) -> proto::ConnectRequest {
    proto::ConnectRequest {
        frame: Some(proto::ClientFrame {
            request_id,
            kind: Some(kind),
        }),
    }
}

async fn read_loop(
    mut inbound: tonic::Streaming<proto::ConnectResponse>,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    acks: Option<Arc<PendingAcks>>,
    silence_limit: Duration,
    stop: CancellationToken,
) {
    let end = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break None,
            next = tokio::time::timeout(silence_limit, inbound.message()) => next,
        };
        let frame = match next {
            Ok(Ok(Some(response))) => response.frame.and_then(|f| f.kind),
            Ok(Ok(None)) => break None,
            Ok(Err(status)) => break Some(status),
            Err(_) => {
                break Some(tonic::Status::unavailable(format!(
                    "nothing from the server for {} s",
                    silence_limit.as_secs()
                )));
            }
        };
        let event = match frame {
            Some(Out::Message(message)) => {
                let fresh = shared
                    .cursors
                    .lock()
                    .map(|mut c| c.advance(&message.conversation_id, message.seq))
                    .unwrap_or(true);
                if !fresh {
                    continue;
                }
                if let Some(acks) = &acks {
                    acks.record(&message.conversation_id, message.seq);
                }
                Event::Message(message)
            }
            Some(Out::SendAck(ack)) => {
                let waiter = take_waiter(&shared, &ack.client_msg_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(ack));
                }
                continue;
            }
            Some(Out::Error(error)) => {
                let waiter = (!error.client_msg_id.is_empty())
                    .then(|| take_waiter(&shared, &error.client_msg_id))
                    .flatten();
                match waiter {
                    Some(waiter) => {
                        let status = tonic::Status::new(
                            chat_proto::code_from_name(&error.code),
                            error.message,
                        );
                        let _ = waiter.send(Err(Error::Status(status)));
                        continue;
                    }
                    None => Event::Error(error),
                }
            }
            Some(Out::CaughtUp(caught_up)) => {
                if let Ok(mut cursors) = shared.cursors.lock() {
                    for c in &caught_up.cursors {
                        cursors.advance(&c.conversation_id, c.seq);
                    }
                }
                Event::CaughtUp(server_cursors(&caught_up.cursors))
            }
            Some(Out::Receipt(r)) => match shared.merge_receipt(r) {
                Some(r) => Event::Receipt(r),
                None => continue,
            },
            Some(Out::Presence(p)) => Event::Presence(p),
            Some(Out::Typing(t)) => Event::Typing(t),
            // Keep-alives only show the stream is alive (they feed the silence limit).
            Some(Out::Welcome(_)) | Some(Out::KeepAlive(_)) | None => continue,
        };
        let delivered = tokio::select! {
            _ = stop.cancelled() => false,
            sent = events.send(event) => sent.is_ok(),
        };
        if !delivered {
            break None;
        }
    };
    stop.cancel();
    let waiting = shared.pending.lock().ok().and_then(|mut p| p.take());
    for (_, waiter) in waiting.into_iter().flatten() {
        let _ = waiter.send(Err(Error::SessionClosed));
    }
    let _ = events.send(Event::Closed(end)).await;
}

/// The highest seq to acknowledge per conversation, not yet sent: a burst of messages
/// costs one ack per conversation, and memory is bounded by the number of conversations.
#[derive(Default)]
struct PendingAcks {
    latest: Mutex<HashMap<String, u64>>,
    notify: tokio::sync::Notify,
}

impl PendingAcks {
    fn record(&self, conversation_id: &str, seq: u64) {
        if let Ok(mut latest) = self.latest.lock() {
            let entry = latest.entry(conversation_id.to_owned()).or_insert(0);
            *entry = (*entry).max(seq);
        }
        self.notify.notify_one();
    }

    fn take(&self) -> HashMap<String, u64> {
        self.latest
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
}

/// Sends delivery acks for whatever arrived since the last batch.
async fn ack_loop(
    acks: Arc<PendingAcks>,
    frames: mpsc::Sender<proto::ConnectRequest>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = acks.notify.notified() => {}
        }
        for (conversation_id, seq) in acks.take() {
            let ack = In::Ack(proto::AckDelivered {
                conversation_id,
                seq,
            });
            if frames.send(request(0, ack)).await.is_err() {
                return;
            }
        }
    }
}

async fn heartbeat_loop(
    every: Duration,
    frames: mpsc::Sender<proto::ConnectRequest>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if frames.send(request(0, In::Heartbeat(proto::HeartbeatSignal {}))).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(delivered_seq: u64, read_seq: u64) -> proto::Receipt {
        proto::Receipt {
            conversation_id: "c".into(),
            user: Some(proto::User {
                id: "u".into(),
                name: "riya".into(),
            }),
            delivered_seq,
            read_seq,
        }
    }

    #[test]
    fn receipts_only_move_forward() {
        let shared = Shared {
            cursors: Mutex::new(Cursors::new()),
            pending: Mutex::new(Some(HashMap::new())),
            receipts: Mutex::new(ReceiptBook::default()),
        };
        let seen = |r| {
            shared
                .merge_receipt(r)
                .map(|r| (r.delivered_seq, r.read_seq))
        };
        assert_eq!(seen(receipt(0, 0)), Some((0, 0)));
        assert_eq!(seen(receipt(0, 0)), None, "nothing new");
        assert_eq!(seen(receipt(5, 2)), Some((5, 2)));
        assert_eq!(seen(receipt(4, 1)), None, "late and stale");
        assert_eq!(
            seen(receipt(4, 3)),
            Some((5, 3)),
            "never reported backwards"
        );
    }
}
