//! `chat.v1.AuthService`: register, log in, log out.

use std::sync::Arc;

use chat_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::Auth;
use crate::chat::Chat;

pub struct AuthApi {
    auth: Arc<Auth>,
    chat: Arc<Chat>,
}

impl AuthApi {
    pub fn new(auth: Arc<Auth>, chat: Arc<Chat>) -> Self {
        AuthApi { auth, chat }
    }
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        let issued = self
            .auth
            .register(&r.name, r.password, &r.device_name)
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            session: Some(super::convert::device_session(issued)),
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = request.into_inner();
        let issued = self.auth.login(&r.name, r.password, &r.device_name).await?;
        Ok(Response::new(pb::LoginResponse {
            session: Some(super::convert::device_session(issued)),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let device = self.auth.authenticate(request.metadata()).await?;
        self.auth.logout(device.id).await?;
        self.chat.device_logged_out(&device);
        Ok(Response::new(pb::LogoutResponse {}))
    }
}
