//! A sending device: its own `Connect` stream, driven frame by frame with the generated
//! stub.
//!
//! Receivers use `chat_sdk::Session`, but a sender cannot: an open-loop sender must keep
//! many sends in flight while it reads the stream, and `Session` reads events through
//! `&mut self` while each send borrows `&self` until its ack. Writing `send` frames and
//! reading `send_ack` frames directly also keeps the generator cheap (no waiter per send),
//! so it measures the server rather than itself. Otherwise the device behaves as the SDK
//! does: it heartbeats at the server's interval and acknowledges delivery of its own
//! messages, which the server echoes to every device of the sender.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chat_proto::v1 as pb;
use futures::StreamExt;
use pb::chat_service_client::ChatServiceClient;
use pb::client_frame::Kind as In;
use pb::server_frame::Kind as Out;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// Frames queued towards the server. Above the load generator's in-flight cap, so a send
/// finds the queue full only when the connection itself is stuck.
const OUTBOUND_FRAMES: usize = 2048;

/// What the server said, reduced to what a sender needs.
pub(crate) enum Frame {
    /// A send was stored: its client_msg_id.
    Ack(String),
    /// A request failed; for a send, `client_msg_id` is set.
    Refused(pb::Error),
    /// The stream ended, normally (`None`) or with a status.
    Ended(Option<tonic::Status>),
}

/// One device's live stream, for sending. Dropping it ends the stream.
pub(crate) struct SenderDevice {
    frames: mpsc::Sender<pb::ConnectRequest>,
    inbound: tonic::Streaming<pb::ConnectResponse>,
    conversation_id: String,
    echoes: Arc<EchoAcks>,
    stop: CancellationToken,
}

impl Drop for SenderDevice {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SenderDevice {
    /// Opens a stream authenticated with `token` that sends into `conversation_id`, and
    /// waits for the server's welcome.
    pub(crate) async fn open(
        channel: Channel,
        token: &str,
        conversation_id: String,
    ) -> anyhow::Result<Self> {
        let header: MetadataValue<Ascii> = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| anyhow!("the token is not valid header text"))?;
        let mut stub = ChatServiceClient::with_interceptor(
            channel,
            move |mut request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
                request
                    .metadata_mut()
                    .insert("authorization", header.clone());
                Ok(request)
            },
        );
        let (frames, outbound) = mpsc::channel(OUTBOUND_FRAMES);
        let stop = CancellationToken::new();
        frames
            .try_send(request(In::Hello(pb::Hello {
                cursors: Vec::new(),
            })))
            .map_err(|_| anyhow!("queueing hello"))?;
        let mut inbound = stub
            .connect(ReceiverStream::new(outbound).take_until(stop.clone().cancelled_owned()))
            .await
            .context("opening the Connect stream")?
            .into_inner();
        let welcome = match inbound.message().await.context("waiting for welcome")? {
            Some(pb::ConnectResponse {
                frame:
                    Some(pb::ServerFrame {
                        kind: Some(Out::Welcome(welcome)),
                    }),
            }) => welcome,
            other => bail!("the stream did not start with welcome: {other:?}"),
        };
        let interval = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(15));
        tokio::spawn(heartbeats(interval, frames.clone(), stop.clone()));
        let echoes = Arc::new(EchoAcks::default());
        tokio::spawn(ack_echoes(
            conversation_id.clone(),
            echoes.clone(),
            frames.clone(),
            stop.clone(),
        ));
        Ok(SenderDevice {
            frames,
            inbound,
            conversation_id,
            echoes,
            stop,
        })
    }

    /// Queues a send without waiting: false when the queue is full or the stream is gone.
    /// `client_msg_id` doubles as the text, so a message can be told apart by eye too.
    pub(crate) fn try_send(&self, client_msg_id: String) -> bool {
        let text = format!("bench {client_msg_id}");
        let message = pb::SendMessage {
            client_msg_id,
            target: Some(pb::send_message::Target::ConversationId(
                self.conversation_id.clone(),
            )),
            text,
        };
        self.frames.try_send(request(In::Send(message))).is_ok()
    }

    /// The next frame that matters to a sender. Cancel-safe: the only await is the
    /// stream's own `message()`, so it can sit in a `select!`.
    pub(crate) async fn next_frame(&mut self) -> Frame {
        loop {
            let kind = match self.inbound.message().await {
                Ok(Some(response)) => response.frame.and_then(|f| f.kind),
                Ok(None) => return Frame::Ended(None),
                Err(status) => return Frame::Ended(Some(status)),
            };
            match kind {
                Some(Out::SendAck(ack)) => return Frame::Ack(ack.client_msg_id),
                Some(Out::Error(error)) => return Frame::Refused(error),
                Some(Out::Message(message)) => self.echoes.record(message.seq),
                // Receipts, presence, keep-alives: nothing a sender measures.
                _ => {}
            }
        }
    }
}

fn request(kind: In) -> pb::ConnectRequest {
    pb::ConnectRequest {
        frame: Some(pb::ClientFrame {
            request_id: 0,
            kind: Some(kind),
        }),
    }
}

/// The highest seq of the sender's own messages seen, not yet acknowledged: a burst
/// costs one ack, as in the SDK.
#[derive(Default)]
struct EchoAcks {
    latest: AtomicU64,
    notify: Notify,
}

impl EchoAcks {
    fn record(&self, seq: u64) {
        self.latest.fetch_max(seq, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

async fn ack_echoes(
    conversation_id: String,
    echoes: Arc<EchoAcks>,
    frames: mpsc::Sender<pb::ConnectRequest>,
    stop: CancellationToken,
) {
    let mut acked = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = echoes.notify.notified() => {}
        }
        let latest = echoes.latest.load(Ordering::Relaxed);
        if latest <= acked {
            continue;
        }
        let ack = In::Ack(pb::AckDelivered {
            conversation_id: conversation_id.clone(),
            seq: latest,
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = frames.send(request(ack)) => {
                if sent.is_err() {
                    return;
                }
            }
        }
        acked = latest;
    }
}

async fn heartbeats(
    every: Duration,
    frames: mpsc::Sender<pb::ConnectRequest>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let beat = request(In::Heartbeat(pb::HeartbeatSignal {}));
        tokio::select! {
            _ = stop.cancelled() => return,
            sent = frames.send(beat) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}
