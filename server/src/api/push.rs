//! `chat.v1.PushService`: push targets, push mode, muted conversations.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::Auth;
use crate::chat::Chat;
use crate::error::ChatError;
use crate::push::TargetInput;
use crate::store::{PushEndpoint, PushTarget};

pub struct PushApi {
    auth: Arc<Auth>,
    chat: Arc<Chat>,
}

impl PushApi {
    pub fn new(auth: Arc<Auth>, chat: Arc<Chat>) -> Self {
        PushApi { auth, chat }
    }
}

fn target(t: PushTarget) -> pb::PushTarget {
    let kind = match t.endpoint {
        // The secret is write-only: it is never sent back.
        PushEndpoint::Webhook { url, .. } => pb::push_target::Kind::Webhook(pb::WebhookTarget {
            url,
            secret: String::new(),
        }),
        PushEndpoint::WebPush {
            endpoint,
            p256dh,
            auth,
        } => pb::push_target::Kind::WebPush(pb::WebPushTarget {
            endpoint,
            p256dh: URL_SAFE_NO_PAD.encode(p256dh),
            auth: URL_SAFE_NO_PAD.encode(auth),
        }),
    };
    pb::PushTarget {
        id: t.id.to_string(),
        kind: Some(kind),
        device_name: t.device_name,
    }
}

fn mode(content_free: bool) -> pb::PushMode {
    if content_free {
        pb::PushMode::ContentFree
    } else {
        pb::PushMode::Content
    }
}

#[tonic::async_trait]
impl pb::push_service_server::PushService for PushApi {
    async fn add_push_target(
        &self,
        request: Request<pb::AddPushTargetRequest>,
    ) -> Result<Response<pb::AddPushTargetResponse>, Status> {
        let device = self.auth.authenticate(request.metadata()).await?;
        let input = match request.into_inner().kind {
            Some(pb::add_push_target_request::Kind::Webhook(w)) => TargetInput::Webhook {
                url: w.url,
                secret: w.secret,
            },
            Some(pb::add_push_target_request::Kind::WebPush(w)) => TargetInput::WebPush {
                endpoint: w.endpoint,
                p256dh: w.p256dh,
                auth: w.auth,
            },
            None => {
                return Err(ChatError::InvalidArgument(
                    "a push target needs a webhook or a web_push subscription".into(),
                )
                .into());
            }
        };
        let added = self
            .chat
            .push
            .add_target(device.user.id, device.id, input)
            .await?;
        Ok(Response::new(pb::AddPushTargetResponse {
            target: Some(target(added)),
        }))
    }

    async fn list_push_targets(
        &self,
        request: Request<pb::ListPushTargetsRequest>,
    ) -> Result<Response<pb::ListPushTargetsResponse>, Status> {
        let device = self.auth.authenticate(request.metadata()).await?;
        let targets = self.chat.push.targets(device.user.id).await?;
        Ok(Response::new(pb::ListPushTargetsResponse {
            targets: targets.into_iter().map(target).collect(),
        }))
    }

    async fn remove_push_target(
        &self,
        request: Request<pb::RemovePushTargetRequest>,
    ) -> Result<Response<pb::RemovePushTargetResponse>, Status> {
        let device = self.auth.authenticate(request.metadata()).await?;
        let id = request.into_inner().id;
        self.chat.push.remove_target(device.user.id, &id).await?;
        Ok(Response::new(pb::RemovePushTargetResponse {}))
    }

    async fn get_push_settings(
        &self,
        request: Request<pb::GetPushSettingsRequest>,
    ) -> Result<Response<pb::GetPushSettingsResponse>, Status> {
        let device = self.auth.authenticate(request.metadata()).await?;
        let content_free = self.chat.push.content_free(device.user.id).await?;
        Ok(Response::new(pb::GetPushSettingsResponse {
            mode: mode(content_free).into(),
            vapid_public_key: self.chat.push.vapid_public_key().to_owned(),
        }))
    }

    async fn set_push_mode(
        &self,
        request: Request<pb::SetPushModeRequest>,
    ) -> Result<Response<pb::SetPushModeResponse>, Status> {
        let device = self.auth.authenticate(request.metadata()).await?;
        let content_free = match request.into_inner().mode() {
            pb::PushMode::Content => false,
            pb::PushMode::ContentFree => true,
            pb::PushMode::Unspecified => {
                return Err(ChatError::InvalidArgument(
                    "mode must be PUSH_MODE_CONTENT or PUSH_MODE_CONTENT_FREE".into(),
                )
                .into());
            }
        };
        self.chat
            .push
            .set_content_free(device.user.id, content_free)
            .await?;
        Ok(Response::new(pb::SetPushModeResponse {
            mode: mode(content_free).into(),
        }))
    }

    async fn set_muted(
        &self,
        request: Request<pb::SetMutedRequest>,
    ) -> Result<Response<pb::SetMutedResponse>, Status> {
        let device = self.auth.authenticate(request.metadata()).await?;
        let r = request.into_inner();
        self.chat
            .push
            .set_muted(device.user.id, &r.conversation_id, r.muted)
            .await?;
        Ok(Response::new(pb::SetMutedResponse {}))
    }
}
