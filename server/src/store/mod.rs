//! The message store: the single source of truth. One trait, one implementation per
//! backend; methods are grouped by entity (users, sessions, conversations, messages,
//! receipts) in the same order in every backend.
//!
//! The store knows nothing of protobuf or sessions. It enforces, inside its
//! transactions, the invariants that need atomicity: gapless per-conversation `seq`,
//! idempotent sends keyed by (conversation, sender, client_msg_id), and forward-only
//! receipt watermarks clamped to `last_seq`.

pub(crate) mod group_commit;
pub mod postgres;
pub mod push;
pub mod sqlite;

pub use push::{DeadPush, PushContext, PushEndpoint, PushStore, PushTarget, QueuedPush};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{
    ClientMsgId, ConversationId, ConversationKind, DeviceId, Message, MessageText, Receipt,
    Timestamp, UserId, UserName, UserRef,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot create the database directory: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Worth retrying: the database was busy or unreachable, nothing was decided.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A user with the stored password hash, for login.
#[derive(Clone, Debug)]
pub struct UserCredentials {
    pub user: UserRef,
    pub password_hash: String,
}

/// A device session as stored: the token itself is never stored, only its hash.
#[derive(Clone, Debug)]
pub struct DeviceSession {
    pub id: DeviceId,
    pub user: UserRef,
    pub device_name: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    pub sender: UserRef,
    pub client_msg_id: ClientMsgId,
    pub text: MessageText,
}

/// The result of a send: the stored message, and whether it was stored earlier by a
/// send with the same idempotency key (then nothing new was stored).
#[derive(Clone, Debug)]
pub struct Appended {
    pub message: Message,
    pub duplicate: bool,
}

/// One conversation as its member sees it in their list.
#[derive(Clone, Debug)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub last_seq: u64,
    pub last_message: Option<Message>,
    pub own: Receipt,
    /// Every other member's receipt (one for a direct conversation).
    pub others: Vec<Receipt>,
    /// The member muted it: no pushes.
    pub muted: bool,
}

/// A member's own watermarks in one conversation, beside its last seq.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    pub conversation_id: ConversationId,
    pub last_seq: u64,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// A member's position before and after a receipt update.
#[derive(Clone, Debug)]
pub struct ReceiptUpdate {
    pub receipt: Receipt,
    pub changed: bool,
}

/// How the store connects, whatever the backend.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Connections in the pool (Postgres), or read connections (SQLite, which writes
    /// through one).
    pub pool_size: u32,
    /// Longest a statement may run, and longest a call waits for a free connection.
    pub statement_timeout: Duration,
}

/// Which backend a database URL names.
enum Backend<'a> {
    Sqlite { path: &'a str },
    Postgres,
}

fn backend(url: &str) -> Result<Backend<'_>, StoreError> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        Ok(Backend::Sqlite { path })
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl(redacted_url(url)))
    }
}

/// Opens the store the URL's scheme names and brings its schema up to date.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match backend(url)? {
        Backend::Sqlite { path } => {
            create_parent_dir(path)?;
            Ok(Arc::new(sqlite::SqliteStore::open(url, options).await?))
        }
        Backend::Postgres => Ok(Arc::new(postgres::PostgresStore::open(url, options).await?)),
    }
}

/// Brings the schema at `url` up to date without serving: `chat-server migrate`.
pub async fn migrate(url: &str, options: &StoreOptions) -> Result<(), StoreError> {
    match backend(url)? {
        Backend::Sqlite { path } => {
            create_parent_dir(path)?;
            let store = sqlite::SqliteStore::open(url, options).await?;
            store.close().await;
            Ok(())
        }
        Backend::Postgres => postgres::PostgresStore::migrate(url).await,
    }
}

/// The URL with its password masked, for logs and error messages.
pub fn redacted_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!(
                "{}{user}:***@{host}{}",
                &url[..scheme_end],
                &url[authority_end..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn create_parent_dir(path: &str) -> Result<(), StoreError> {
    // Strip URL parameters such as `?mode=rwc` before treating it as a path.
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

#[async_trait]
pub trait Store: PushStore + Send + Sync + 'static {
    /// Closes the connections, waiting for the ones in use to come back.
    async fn close(&self);

    // --- users ---
    /// Creates a user; `Conflict` if the name is taken.
    async fn create_user(
        &self,
        name: &UserName,
        password_hash: &str,
    ) -> Result<UserRef, StoreError>;
    async fn user_by_name(&self, name: &UserName) -> Result<Option<UserCredentials>, StoreError>;
    /// Last seen of each given user that has one.
    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<(UserId, Timestamp)>, StoreError>;
    /// Records `at` as last seen of each user (never moving it back), in one transaction.
    async fn set_last_seen(&self, users: &[UserId], at: Timestamp) -> Result<(), StoreError>;

    // --- device sessions ---
    async fn create_session(
        &self,
        session: &DeviceSession,
        token_hash: &str,
    ) -> Result<(), StoreError>;
    async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceSession>, StoreError>;
    async fn delete_session(&self, id: DeviceId) -> Result<(), StoreError>;

    // --- conversations and members ---
    /// Creates the direct conversation of two users if it does not exist yet.
    async fn ensure_direct(&self, a: UserId, b: UserId) -> Result<ConversationId, StoreError>;
    /// Every member's receipt; empty if the conversation does not exist.
    async fn members(&self, conversation: ConversationId) -> Result<Vec<Receipt>, StoreError>;
    /// The user's receipt, or None when they are not a member.
    async fn membership(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Receipt>, StoreError>;
    /// The user's conversations that hold messages, most recently active first, at most
    /// `limit`; with `only`, just that one (if the user is in it).
    async fn conversations_of(
        &self,
        user: UserId,
        only: Option<ConversationId>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError>;
    /// Where the user stands in each of their conversations: what a reconnect resumes from.
    async fn positions(&self, user: UserId) -> Result<Vec<Position>, StoreError>;
    /// The receipts of everyone else in the user's conversations.
    async fn peer_receipts(&self, user: UserId) -> Result<Vec<Receipt>, StoreError>;
    /// Everyone who shares a conversation with the user: who sees their presence.
    async fn contacts(&self, user: UserId) -> Result<Vec<UserRef>, StoreError>;

    // --- messages ---
    /// Stores a message with `seq = last_seq + 1`, or returns the message stored earlier
    /// with the same (conversation, sender, client_msg_id). Returns after commit.
    async fn append_message(&self, message: NewMessage) -> Result<Appended, StoreError>;
    /// The message the sender stored earlier with this idempotency key, if any.
    async fn find_sent(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError>;
    /// Messages with seq > `after`, ascending, at most `limit`.
    async fn messages_after(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// Messages with seq < `before`, the newest `limit` of them, ascending.
    async fn messages_before(
        &self,
        conversation: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError>;

    // --- receipts ---
    /// Moves the member's watermarks forward to at least the given values, clamped to
    /// the conversation's last seq; read implies delivered. None when not a member.
    async fn advance_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        delivered_seq: u64,
        read_seq: u64,
    ) -> Result<Option<ReceiptUpdate>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redacted_url("postgres://chat:s3cr3t@db:5432/chat"),
            "postgres://chat:***@db:5432/chat"
        );
        assert_eq!(
            redacted_url("postgres://chat@db/chat?sslmode=require"),
            "postgres://chat@db/chat?sslmode=require"
        );
        assert_eq!(
            redacted_url("mysql://u:p@h/x?note=a@b"),
            "mysql://u:***@h/x?note=a@b"
        );
        assert_eq!(
            redacted_url("sqlite://chat-data/chat.db"),
            "sqlite://chat-data/chat.db"
        );
    }
}
