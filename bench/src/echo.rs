//! The transport ceiling's server: `chat.v1.ChatService` over tonic that stores and fans
//! out nothing. Its `Connect` answers `hello` with `welcome` (so the benchmark's sender
//! devices can talk to it unchanged) and every `send` with a `send_ack` at once; every
//! other method is UNIMPLEMENTED. What it sustains is what gRPC streaming alone costs on
//! this machine.

use chat_proto::v1 as pb;
use futures::StreamExt;
use futures::stream::BoxStream;
use pb::chat_service_server::{ChatService, ChatServiceServer};
use pb::client_frame::Kind as In;
use pb::server_frame::Kind as Out;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

struct Echo;

/// Serves the echo service on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ChatServiceServer::new(Echo))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await?;
    Ok(())
}

/// The answer to one client frame, if it gets one.
fn answer(
    frame: Result<pb::ConnectRequest, Status>,
) -> Option<Result<pb::ConnectResponse, Status>> {
    let kind = match frame {
        Ok(request) => request.frame.and_then(|f| f.kind),
        Err(status) => return Some(Err(status)),
    };
    let reply = match kind {
        Some(In::Hello(_)) => Out::Welcome(pb::Welcome::default()),
        Some(In::Send(send)) => Out::SendAck(pb::SendAck {
            client_msg_id: send.client_msg_id,
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Ok(pb::ConnectResponse {
        frame: Some(pb::ServerFrame { kind: Some(reply) }),
    }))
}

fn unimplemented() -> Status {
    Status::unimplemented("the echo server only answers Connect")
}

#[tonic::async_trait]
impl ChatService for Echo {
    type ConnectStream = BoxStream<'static, Result<pb::ConnectResponse, Status>>;
    type SubscribeStream = BoxStream<'static, Result<pb::SubscribeResponse, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let answers = request
            .into_inner()
            .filter_map(|frame| std::future::ready(answer(frame)));
        Ok(Response::new(answers.boxed()))
    }

    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(unimplemented())
    }

    async fn send(
        &self,
        _: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        Err(unimplemented())
    }

    async fn ack(&self, _: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        Err(unimplemented())
    }

    async fn mark_read(
        &self,
        _: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        Err(unimplemented())
    }

    async fn set_typing(
        &self,
        _: Request<pb::SetTypingRequest>,
    ) -> Result<Response<pb::SetTypingResponse>, Status> {
        Err(unimplemented())
    }

    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Err(unimplemented())
    }

    async fn open_direct(
        &self,
        _: Request<pb::OpenDirectRequest>,
    ) -> Result<Response<pb::OpenDirectResponse>, Status> {
        Err(unimplemented())
    }

    async fn get_history(
        &self,
        _: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        Err(unimplemented())
    }

    async fn list_conversations(
        &self,
        _: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        Err(unimplemented())
    }

    async fn get_presence(
        &self,
        _: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        Err(unimplemented())
    }
}
