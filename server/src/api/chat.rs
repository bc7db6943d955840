//! `chat.v1.ChatService`: the session streams (Connect, Subscribe), the unary calls
//! that mirror Connect's client frames, and the read APIs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::v1 as pb;
use futures::StreamExt;
use pb::client_frame::Kind as In;
use pb::server_frame::Kind as Out;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::auth::Auth;
use crate::chat::{Chat, HistoryAnchor};
use crate::domain::ConversationId;
use crate::error::ChatError;
use crate::session::{self, FrameStream, Session};
use crate::store::DeviceSession;

/// How long a new Connect stream may take to send its `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ChatApi {
    chat: Arc<Chat>,
    auth: Arc<Auth>,
    shutdown: CancellationToken,
}

impl ChatApi {
    pub fn new(chat: Arc<Chat>, auth: Arc<Auth>, shutdown: CancellationToken) -> Self {
        ChatApi {
            chat,
            auth,
            shutdown,
        }
    }

    async fn device<T>(&self, request: &Request<T>) -> Result<DeviceSession, Status> {
        Ok(self.auth.authenticate(request.metadata()).await?)
    }

    fn open(
        &self,
        device: DeviceSession,
        cursors: Vec<pb::Cursor>,
    ) -> Result<(Session, FrameStream), Status> {
        let mut resume = HashMap::new();
        for c in cursors {
            let id = ConversationId::parse(&c.conversation_id, "cursor conversation_id")?;
            let seq = resume.entry(id).or_insert(0);
            *seq = c.seq.max(*seq);
        }
        Ok(session::open(
            self.chat.clone(),
            device,
            resume,
            &self.shutdown,
        ))
    }
}

/// Answers one client frame of a Connect stream. Failures become `error` frames and
/// the stream goes on.
async fn handle_frame(chat: &Chat, session: &Session, frame: pb::ClientFrame) {
    let device = &session.device;
    chat.heartbeat(device);
    let request_id = frame.request_id;
    let result = match frame.kind {
        None => Err(ChatError::InvalidArgument("empty client frame".into())),
        Some(In::Hello(_)) => Err(ChatError::FailedPrecondition(
            "hello was already sent".into(),
        )),
        Some(In::Heartbeat(_)) => Ok(None),
        Some(In::Send(send)) => {
            let client_msg_id = send.client_msg_id.clone();
            match chat.send(device, convert::send_input(send)).await {
                Ok(appended) => Ok(Some(convert::frame(Out::SendAck(convert::send_ack(
                    &appended,
                ))))),
                Err(e) => {
                    session
                        .emit(convert::error_frame(request_id, e, client_msg_id))
                        .await;
                    return;
                }
            }
        }
        Some(In::Ack(ack)) => chat
            .ack_delivered(device.user.id, &ack.conversation_id, ack.seq)
            .await
            .map(|_| None),
        Some(In::MarkRead(mark)) => chat
            .mark_read(device.user.id, &mark.conversation_id, mark.seq)
            .await
            .map(|_| None),
        Some(In::Typing(t)) => chat
            .typing(&device.user, &t.conversation_id, t.typing)
            .await
            .map(|_| None),
    };
    match result {
        Ok(Some(frame)) => {
            session.emit(frame).await;
        }
        Ok(None) => {}
        Err(e) => {
            session
                .emit(convert::error_frame(request_id, e, String::new()))
                .await;
        }
    }
}

fn required<T>(field: Option<T>, name: &str) -> Result<T, Status> {
    field.ok_or_else(|| Status::invalid_argument(format!("{name} is required")))
}

#[tonic::async_trait]
impl pb::chat_service_server::ChatService for ChatApi {
    type ConnectStream = futures::stream::BoxStream<'static, Result<pb::ConnectResponse, Status>>;
    type SubscribeStream =
        futures::stream::BoxStream<'static, Result<pb::SubscribeResponse, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let device = self.device(&request).await?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello frame within 10 s"))??;
        let hello = match first.and_then(|r| r.frame).and_then(|f| f.kind) {
            Some(In::Hello(hello)) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first frame of Connect must be hello",
                ));
            }
        };
        let (session, frames) = self.open(device, hello.cursors)?;
        let chat = self.chat.clone();
        let reader = session.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = reader.closed() => break,
                    next = inbound.message() => next,
                };
                match next {
                    Ok(Some(pb::ConnectRequest { frame: Some(frame) })) => {
                        handle_frame(&chat, &reader, frame).await
                    }
                    Ok(Some(pb::ConnectRequest { frame: None })) => {
                        let e = ChatError::InvalidArgument("empty request".into());
                        reader.emit(convert::error_frame(0, e, String::new())).await;
                    }
                    // A half-close only ends what the client sends: the session goes on
                    // serving frames until the client drops the response stream.
                    Ok(None) => return,
                    // A broken or oversized frame, or a vanished client: end the session
                    // with the reason, so a client still listening knows why.
                    Err(status) => {
                        reader.close_with(crate::error::decode_error_as_invalid_argument(status));
                        return;
                    }
                }
            }
        });
        let stream = frames.map(|f| f.map(|frame| pb::ConnectResponse { frame: Some(frame) }));
        Ok(Response::new(stream.boxed()))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let device = self.device(&request).await?;
        let (_session, frames) = self.open(device, request.into_inner().cursors)?;
        let stream = frames.map(|f| f.map(|frame| pb::SubscribeResponse { frame: Some(frame) }));
        Ok(Response::new(stream.boxed()))
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let device = self.device(&request).await?;
        let message = required(request.into_inner().message, "message")?;
        let appended = self
            .chat
            .send(&device, convert::send_input(message))
            .await?;
        Ok(Response::new(pb::SendResponse {
            ack: Some(convert::send_ack(&appended)),
        }))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let device = self.device(&request).await?;
        let ack = required(request.into_inner().ack, "ack")?;
        let receipt = self
            .chat
            .ack_delivered(device.user.id, &ack.conversation_id, ack.seq)
            .await?;
        Ok(Response::new(pb::AckResponse {
            receipt: Some(convert::receipt(&receipt)),
        }))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let device = self.device(&request).await?;
        let mark = required(request.into_inner().mark, "mark")?;
        let receipt = self
            .chat
            .mark_read(device.user.id, &mark.conversation_id, mark.seq)
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            receipt: Some(convert::receipt(&receipt)),
        }))
    }

    async fn set_typing(
        &self,
        request: Request<pb::SetTypingRequest>,
    ) -> Result<Response<pb::SetTypingResponse>, Status> {
        let device = self.device(&request).await?;
        let signal = required(request.into_inner().signal, "signal")?;
        self.chat
            .typing(&device.user, &signal.conversation_id, signal.typing)
            .await?;
        Ok(Response::new(pb::SetTypingResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let device = self.device(&request).await?;
        self.chat.heartbeat(&device);
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    async fn open_direct(
        &self,
        request: Request<pb::OpenDirectRequest>,
    ) -> Result<Response<pb::OpenDirectResponse>, Status> {
        let device = self.device(&request).await?;
        let peer = request.into_inner().peer;
        let id = self.chat.open_direct(&device.user, &peer).await?;
        let view = self
            .chat
            .conversations(device.user.id, Some(id))
            .await?
            .into_iter()
            .next();
        let conversation = match view {
            Some(view) => convert::conversation(&view),
            None => pb::Conversation {
                id: id.to_string(),
                kind: pb::ConversationKind::Direct.into(),
                peer: self
                    .chat
                    .peer_of_direct(device.user.id, id)
                    .await?
                    .as_ref()
                    .map(convert::user),
                ..Default::default()
            },
        };
        Ok(Response::new(pb::OpenDirectResponse {
            conversation: Some(conversation),
        }))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let device = self.device(&request).await?;
        let r = request.into_inner();
        let anchor = match r.anchor {
            None => HistoryAnchor::Latest,
            Some(pb::get_history_request::Anchor::BeforeSeq(seq)) => HistoryAnchor::Before(seq),
            Some(pb::get_history_request::Anchor::AfterSeq(seq)) => HistoryAnchor::After(seq),
        };
        let page = self
            .chat
            .history(device.user.id, &r.conversation_id, anchor, r.limit)
            .await?;
        Ok(Response::new(pb::GetHistoryResponse {
            messages: page
                .messages
                .iter()
                .map(|(m, s)| convert::message(m, *s))
                .collect(),
            has_more: page.has_more,
            receipts: page.receipts.iter().map(convert::receipt).collect(),
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let device = self.device(&request).await?;
        let views = self.chat.conversations(device.user.id, None).await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: views.iter().map(convert::conversation).collect(),
        }))
    }

    async fn get_presence(
        &self,
        request: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let device = self.device(&request).await?;
        let names = request.into_inner().names;
        let states = self.chat.presence_of_names(&device.user, &names).await?;
        Ok(Response::new(pb::GetPresenceResponse {
            presences: states.iter().map(convert::presence).collect(),
        }))
    }
}
