//! Accounts and device sessions: argon2id password hashes, opaque bearer tokens.
//!
//! A token is 32 random bytes shown to the client once; the store keeps only its
//! SHA-256, so a leaked database does not leak sessions. Hashing runs on the blocking
//! pool with bounded concurrency: a burst of logins cannot starve the async runtime or
//! allocate unbounded argon2 memory (19 MiB each).

use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use password_hash::rand_core::OsRng;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::domain::{DeviceId, Password, Timestamp, UserName};
use crate::error::ChatError;
use crate::store::{DeviceSession, Store, StoreError};

/// A freshly issued session: the token is only ever known here and by the client.
pub struct IssuedSession {
    pub token: String,
    pub session: DeviceSession,
}

pub struct Auth {
    store: Arc<dyn Store>,
    hashing: Semaphore,
    token_ttl: Duration,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, token_ttl: Duration, hashing_concurrency: usize) -> Self {
        Auth {
            store,
            hashing: Semaphore::new(hashing_concurrency.max(1)),
            token_ttl,
        }
    }

    pub async fn register(
        &self,
        name: &str,
        password: String,
        device_name: &str,
    ) -> Result<IssuedSession, ChatError> {
        let name = UserName::parse(name)?;
        let password = Password::parse(password)?;
        let device_name = parse_device_name(device_name)?;
        let hash = self.hash(password).await?;
        let user = match self.store.create_user(&name, &hash).await {
            Ok(user) => user,
            Err(StoreError::Conflict) => {
                return Err(ChatError::AlreadyExists(format!(
                    "user name {name} is taken"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user = %user.name, "registered");
        self.issue(user, device_name).await
    }

    pub async fn login(
        &self,
        name: &str,
        password: String,
        device_name: &str,
    ) -> Result<IssuedSession, ChatError> {
        let denied = || ChatError::Unauthenticated("wrong user name or password".into());
        let name = UserName::parse(name).map_err(|_| denied())?;
        let device_name = parse_device_name(device_name)?;
        let Some(creds) = self.store.user_by_name(&name).await? else {
            return Err(denied());
        };
        if !self.verify(password, creds.password_hash).await? {
            return Err(denied());
        }
        self.issue(creds.user, device_name).await
    }

    pub async fn logout(&self, device: DeviceId) -> Result<(), ChatError> {
        self.store.delete_session(device).await?;
        Ok(())
    }

    /// Resolves `authorization: Bearer <token>` to a live device session.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<DeviceSession, ChatError> {
        let header = metadata.get("authorization").ok_or_else(|| {
            ChatError::Unauthenticated("missing authorization: Bearer <token>".into())
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                // The auth scheme is case-insensitive (RFC 9110).
                h.get(..7)
                    .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                    .map(|_| &h[7..])
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ChatError::Unauthenticated("authorization must be: Bearer <token>".into())
            })?;
        let session = self
            .store
            .session_by_token_hash(&token_hash(token))
            .await?
            .ok_or_else(|| ChatError::Unauthenticated("unknown or revoked token".into()))?;
        if session.expires_at <= Timestamp::now() {
            return Err(ChatError::Unauthenticated(
                "token expired, log in again".into(),
            ));
        }
        Ok(session)
    }

    async fn issue(
        &self,
        user: crate::domain::UserRef,
        device_name: String,
    ) -> Result<IssuedSession, ChatError> {
        let bytes: [u8; 32] = rand::random();
        let token = format!(
            "ct_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let now = Timestamp::now();
        let ttl = i64::try_from(self.token_ttl.as_micros()).unwrap_or(i64::MAX);
        let session = DeviceSession {
            id: DeviceId(Uuid::now_v7()),
            user,
            device_name,
            created_at: now,
            expires_at: Timestamp(now.micros().saturating_add(ttl)),
        };
        self.store
            .create_session(&session, &token_hash(&token))
            .await?;
        Ok(IssuedSession { token, session })
    }

    async fn hash(&self, password: Password) -> Result<String, ChatError> {
        self.off_runtime(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ChatError::Unexpected(format!("password hashing: {e}")))
        })
        .await
    }

    async fn verify(&self, password: String, hash: String) -> Result<bool, ChatError> {
        self.off_runtime(move || {
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| ChatError::Unexpected(format!("stored password hash: {e}")))?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    /// Runs argon2 work on the blocking pool, at most `hashing_concurrency` at a time.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ChatError> + Send + 'static,
    ) -> Result<T, ChatError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| ChatError::Unavailable("shutting down".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ChatError::Unexpected(format!("hashing task: {e}")))?
    }
}

fn parse_device_name(raw: &str) -> Result<String, ChatError> {
    let name = raw.trim();
    if name.len() > 64 || name.contains('\0') {
        return Err(ChatError::InvalidArgument(
            "device_name must be at most 64 bytes, no U+0000".into(),
        ));
    }
    Ok(if name.is_empty() {
        "unnamed device".into()
    } else {
        name.to_owned()
    })
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
