//! `Client`: authenticated unary calls over one HTTP/2 channel.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::cursors::Cursors;
use crate::error::Error;
use crate::proto;
use crate::proto::auth_service_client::AuthServiceClient;
use crate::proto::chat_service_client::ChatServiceClient;
use crate::proto::push_service_client::PushServiceClient;
use crate::session::{Session, SessionOptions};

/// Attempts of one send before its error is returned (all with the same client_msg_id).
pub(crate) const SEND_ATTEMPTS: u32 = 6;

/// A logged-in device session.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The bearer token; keep it secret.
    pub token: String,
    /// Who is logged in.
    pub user: proto::User,
    /// When the token stops working.
    pub expires_at: Option<prost_types::Timestamp>,
}

/// Where a message goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// The direct conversation with this user name (created on first use).
    User(String),
    /// A conversation by id.
    Conversation(String),
}

/// Which page of history to fetch.
#[derive(Clone, Copy, Debug)]
pub enum Page {
    /// The newest messages.
    Latest,
    /// Messages with a seq below this one (scrolling back).
    Before(u64),
    /// Messages with a seq above this one (scrolling forward).
    After(u64),
}

/// One page of a conversation's messages, in ascending seq order.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// The messages, each with its status.
    pub messages: Vec<proto::Message>,
    /// More messages exist beyond this page in the direction asked.
    pub has_more: bool,
    /// Every member's watermarks.
    pub receipts: Vec<proto::Receipt>,
}

#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

pub(crate) type ChatStub = ChatServiceClient<InterceptedService<Channel, Bearer>>;

/// A connection to a chat server, optionally logged in.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    bearer: Bearer,
}

impl Client {
    /// Connects to `address` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(address: &str) -> Result<Self, Error> {
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|_| Error::InvalidAddress(address.to_owned()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await?;
        Ok(Client {
            channel,
            bearer: Bearer(None),
        })
    }

    /// Uses a channel made elsewhere (e.g. with a custom connector), not logged in.
    pub fn from_channel(channel: Channel) -> Self {
        Client {
            channel,
            bearer: Bearer(None),
        }
    }

    /// The same connection, authenticated with `token`.
    pub fn with_token(&self, token: &str) -> Result<Self, Error> {
        Ok(Client {
            channel: self.channel.clone(),
            bearer: Bearer(Some(bearer(token)?)),
        })
    }

    pub(crate) fn chat(&self) -> Result<ChatStub, Error> {
        if self.bearer.0.is_none() {
            return Err(Error::NotLoggedIn);
        }
        Ok(ChatServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        ))
    }

    fn push(&self) -> Result<PushServiceClient<InterceptedService<Channel, Bearer>>, Error> {
        if self.bearer.0.is_none() {
            return Err(Error::NotLoggedIn);
        }
        Ok(PushServiceClient::with_interceptor(
            self.channel.clone(),
            self.bearer.clone(),
        ))
    }

    fn auth(&self) -> AuthServiceClient<InterceptedService<Channel, Bearer>> {
        AuthServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    // --- accounts ---

    /// Creates an account and returns its first device session.
    pub async fn register(
        &self,
        name: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Credentials, Error> {
        let response = self
            .auth()
            .register(proto::RegisterRequest {
                name: name.to_owned(),
                password: password.to_owned(),
                device_name: device_name.to_owned(),
            })
            .await?;
        credentials(response.into_inner().session)
    }

    /// Opens a new device session for an existing account.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Credentials, Error> {
        let response = self
            .auth()
            .login(proto::LoginRequest {
                name: name.to_owned(),
                password: password.to_owned(),
                device_name: device_name.to_owned(),
            })
            .await?;
        credentials(response.into_inner().session)
    }

    /// Ends this device session; the token stops working.
    pub async fn logout(&self) -> Result<(), Error> {
        if self.bearer.0.is_none() {
            return Err(Error::NotLoggedIn);
        }
        self.auth().logout(proto::LogoutRequest {}).await?;
        Ok(())
    }

    // --- messages ---

    /// Sends `text`, with a fresh `client_msg_id`; see [`Client::send_with_id`].
    pub async fn send(&self, target: Target, text: &str) -> Result<proto::SendAck, Error> {
        self.send_with_id(target, &new_client_msg_id(), text).await
    }

    /// Sends `text` with the given idempotency key. Retryable failures are retried with
    /// the same key (jittered exponential backoff), so the message is stored at most once.
    pub async fn send_with_id(
        &self,
        target: Target,
        client_msg_id: &str,
        text: &str,
    ) -> Result<proto::SendAck, Error> {
        let message = send_message(target, client_msg_id, text);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let result = self
                .chat()?
                .send(proto::SendRequest {
                    message: Some(message.clone()),
                })
                .await;
            match result {
                Ok(response) => {
                    return response
                        .into_inner()
                        .ack
                        .ok_or_else(|| Error::Protocol("send answered without an ack".into()));
                }
                Err(status) => {
                    let error = Error::from(status);
                    if !error.is_retryable() || attempt >= SEND_ATTEMPTS {
                        return Err(error);
                    }
                    tokio::time::sleep(full_jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
    }

    /// A page of a conversation's history.
    pub async fn history(
        &self,
        conversation_id: &str,
        page: Page,
        limit: u32,
    ) -> Result<HistoryPage, Error> {
        use proto::get_history_request::Anchor;
        let anchor = match page {
            Page::Latest => None,
            Page::Before(seq) => Some(Anchor::BeforeSeq(seq)),
            Page::After(seq) => Some(Anchor::AfterSeq(seq)),
        };
        let r = self
            .chat()?
            .get_history(proto::GetHistoryRequest {
                conversation_id: conversation_id.to_owned(),
                anchor,
                limit,
            })
            .await?
            .into_inner();
        Ok(HistoryPage {
            messages: r.messages,
            has_more: r.has_more,
            receipts: r.receipts,
        })
    }

    // --- receipts and typing ---

    /// Records that this device has received everything up to `seq`.
    pub async fn ack(&self, conversation_id: &str, seq: u64) -> Result<proto::Receipt, Error> {
        let ack = proto::AckDelivered {
            conversation_id: conversation_id.to_owned(),
            seq,
        };
        let r = self
            .chat()?
            .ack(proto::AckRequest { ack: Some(ack) })
            .await?
            .into_inner();
        r.receipt
            .ok_or_else(|| Error::Protocol("ack answered without a receipt".into()))
    }

    /// Marks everything up to `seq` read (`0`: everything so far).
    pub async fn mark_read(
        &self,
        conversation_id: &str,
        seq: u64,
    ) -> Result<proto::Receipt, Error> {
        let mark = proto::MarkReadUpTo {
            conversation_id: conversation_id.to_owned(),
            seq,
        };
        let r = self
            .chat()?
            .mark_read(proto::MarkReadRequest { mark: Some(mark) })
            .await?
            .into_inner();
        r.receipt
            .ok_or_else(|| Error::Protocol("mark_read answered without a receipt".into()))
    }

    /// Tells the other members that the user is (or stopped) typing.
    pub async fn set_typing(&self, conversation_id: &str, typing: bool) -> Result<(), Error> {
        let signal = proto::TypingSignal {
            conversation_id: conversation_id.to_owned(),
            typing,
        };
        self.chat()?
            .set_typing(proto::SetTypingRequest {
                signal: Some(signal),
            })
            .await?;
        Ok(())
    }

    /// Keeps this device online (for sessions opened with `subscribe`).
    pub async fn heartbeat(&self) -> Result<(), Error> {
        self.chat()?.heartbeat(proto::HeartbeatRequest {}).await?;
        Ok(())
    }

    // --- conversations and presence ---

    /// The direct conversation with `peer`, created if needed.
    pub async fn open_direct(&self, peer: &str) -> Result<proto::Conversation, Error> {
        let r = self
            .chat()?
            .open_direct(proto::OpenDirectRequest {
                peer: peer.to_owned(),
            })
            .await?
            .into_inner();
        r.conversation
            .ok_or_else(|| Error::Protocol("open_direct answered without a conversation".into()))
    }

    /// The user's conversations, most recently active first.
    pub async fn conversations(&self) -> Result<Vec<proto::Conversation>, Error> {
        let r = self
            .chat()?
            .list_conversations(proto::ListConversationsRequest {})
            .await?
            .into_inner();
        Ok(r.conversations)
    }

    /// Online / last seen of users who share a conversation with the caller.
    pub async fn presence(&self, names: &[&str]) -> Result<Vec<proto::Presence>, Error> {
        let names = names.iter().map(|n| (*n).to_owned()).collect();
        let r = self
            .chat()?
            .get_presence(proto::GetPresenceRequest { names })
            .await?
            .into_inner();
        Ok(r.presences)
    }

    // --- push notifications ---

    /// Registers a webhook this device's pushes are POSTed to, signed with `secret`
    /// (HMAC-SHA256). Registering the same URL again replaces its secret.
    pub async fn add_webhook(&self, url: &str, secret: &str) -> Result<proto::PushTarget, Error> {
        self.add_push_target(proto::add_push_target_request::Kind::Webhook(
            proto::WebhookTarget {
                url: url.to_owned(),
                secret: secret.to_owned(),
            },
        ))
        .await
    }

    /// Registers a Web Push subscription (endpoint and base64url keys, as a browser's
    /// `PushSubscription.toJSON()` gives them).
    pub async fn add_web_push(
        &self,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
    ) -> Result<proto::PushTarget, Error> {
        self.add_push_target(proto::add_push_target_request::Kind::WebPush(
            proto::WebPushTarget {
                endpoint: endpoint.to_owned(),
                p256dh: p256dh.to_owned(),
                auth: auth.to_owned(),
            },
        ))
        .await
    }

    async fn add_push_target(
        &self,
        kind: proto::add_push_target_request::Kind,
    ) -> Result<proto::PushTarget, Error> {
        let r = self
            .push()?
            .add_push_target(proto::AddPushTargetRequest { kind: Some(kind) })
            .await?
            .into_inner();
        r.target
            .ok_or_else(|| Error::Protocol("add_push_target answered without a target".into()))
    }

    /// The user's push targets on every device, newest first.
    pub async fn push_targets(&self) -> Result<Vec<proto::PushTarget>, Error> {
        let r = self
            .push()?
            .list_push_targets(proto::ListPushTargetsRequest {})
            .await?
            .into_inner();
        Ok(r.targets)
    }

    /// Removes one of the user's push targets.
    pub async fn remove_push_target(&self, id: &str) -> Result<(), Error> {
        self.push()?
            .remove_push_target(proto::RemovePushTargetRequest { id: id.to_owned() })
            .await?;
        Ok(())
    }

    /// The user's push mode and the server's VAPID public key.
    pub async fn push_settings(&self) -> Result<proto::GetPushSettingsResponse, Error> {
        Ok(self
            .push()?
            .get_push_settings(proto::GetPushSettingsRequest {})
            .await?
            .into_inner())
    }

    /// Whether pushes carry the sender and text (`Content`) or only that something
    /// arrived (`ContentFree`).
    pub async fn set_push_mode(&self, mode: proto::PushMode) -> Result<(), Error> {
        self.push()?
            .set_push_mode(proto::SetPushModeRequest { mode: mode.into() })
            .await?;
        Ok(())
    }

    /// Mutes (no pushes) or unmutes one of the user's conversations.
    pub async fn set_muted(&self, conversation_id: &str, muted: bool) -> Result<(), Error> {
        self.push()?
            .set_muted(proto::SetMutedRequest {
                conversation_id: conversation_id.to_owned(),
                muted,
            })
            .await?;
        Ok(())
    }

    // --- the live session ---

    /// Opens a `Connect` stream that resumes after `cursors`.
    pub async fn open_session(
        &self,
        cursors: Cursors,
        options: SessionOptions,
    ) -> Result<Session, Error> {
        Session::open(self.chat()?, cursors, options).await
    }
}

/// The `authorization` header value for `token`.
pub(crate) fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Error> {
    MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Error::Protocol("token is not valid header text".into()))
}

fn credentials(session: Option<proto::DeviceSession>) -> Result<Credentials, Error> {
    let session = session.ok_or_else(|| Error::Protocol("no session in the answer".into()))?;
    Ok(Credentials {
        token: session.token,
        user: session
            .user
            .ok_or_else(|| Error::Protocol("no user in the session".into()))?,
        expires_at: session.expires_at,
    })
}

pub(crate) fn send_message(target: Target, client_msg_id: &str, text: &str) -> proto::SendMessage {
    use proto::send_message::Target as T;
    proto::SendMessage {
        client_msg_id: client_msg_id.to_owned(),
        target: Some(match target {
            Target::User(name) => T::Recipient(name),
            Target::Conversation(id) => T::ConversationId(id),
        }),
        text: text.to_owned(),
    }
}

/// A new idempotency key for a send.
pub fn new_client_msg_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A random delay in [0, cap): "full jitter", so retrying clients spread out.
pub(crate) fn full_jitter(cap: Duration) -> Duration {
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX).max(1);
    Duration::from_nanos(rand::random::<u64>() % nanos)
}
