//! The production store: PostgreSQL through sqlx, with `messages` hash-partitioned by
//! conversation (see `migrations/postgres`).
//!
//! Every statement on `messages` names one conversation, so the schema stays
//! distributable by conversation_id. A send is one statement (increment `last_seq`
//! under the conversation's row lock, insert, move the sender's watermarks), so it is
//! atomic without an explicit transaction and costs one round trip; a unique violation
//! on the idempotency key rolls the whole statement back, so a duplicate burns no seq.

mod push;
mod writes;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::time::OffsetDateTime;
use sqlx::{ConnectOptions, Connection, Row};
use uuid::Uuid;

use super::group_commit::{AppendWrite, GroupCommit, ReceiptWrite};
use super::{
    Appended, ConversationSummary, DeviceSession, NewMessage, Position, ReceiptUpdate, Store,
    StoreError, StoreOptions, UserCredentials,
};
use crate::domain::{
    ClientMsgId, ConversationId, ConversationKind, DeviceId, Message, MessageId, MessageText,
    Receipt, Timestamp, UserId, UserName, UserRef,
};

pub struct PostgresStore {
    pool: PgPool,
    appends: GroupCommit<AppendWrite>,
    receipts: GroupCommit<ReceiptWrite>,
}

impl PostgresStore {
    /// Connects to `url` and applies the migrations (under sqlx's advisory lock, so
    /// replicas starting together migrate once).
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        Self::migrate(url).await?;
        let pool = connect(url, options).await?;
        // Few committers, so that writes queue while a group commits and the next group
        // is large: with as many committers as writes in flight, every group would be
        // one write again. Two keep a commit's round trip from idling the other.
        let writers = connect_writers(url, options).await?;
        let committers = (writer_connections(options) as usize / 2).max(1);
        let writer = Arc::new(writes::Writer::new(writers));
        Ok(PostgresStore {
            appends: GroupCommit::start(writer.clone(), committers, writes::MAX_BATCH),
            receipts: GroupCommit::start(writer, committers, writes::MAX_BATCH),
            pool,
        })
    }

    /// Applies the migrations on a connection of its own, without the statement
    /// timeout: waiting for another replica's migration (sqlx's advisory lock) or
    /// building an index may take longer than any request should.
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        let mut conn = PgConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .application_name("chat-server migrate")
            .connect()
            .await
            .map_err(classify)?;
        let result = sqlx::migrate!("../migrations/postgres")
            .run(&mut conn)
            .await;
        let _ = conn.close().await;
        Ok(result?)
    }
}

/// Connections that commit grouped writes, out of the pool size.
fn writer_connections(options: &StoreOptions) -> u32 {
    (options.pool_size / 2).clamp(1, 2 * COMMITTERS as u32)
}

/// The pool for reads and single writes: the pool size less the writers'.
async fn connect(url: &str, options: &StoreOptions) -> Result<PgPool, StoreError> {
    let readers = options
        .pool_size
        .saturating_sub(writer_connections(options))
        .max(1);
    pool(url, options, readers, &[]).await
}

/// The committers' pool. Their group statements join arrays to tables by key; the
/// planner, which cannot know an array holds a few hundred rows, would hash-join them
/// with full scans of `members` and `conversations` (and of every `messages`
/// partition). Without hash and merge joins every lookup goes through its index. Nor
/// may it scan a table whole: with statistics taken while `messages` was empty, it
/// looked retries up by scanning each partition once per send, and a server at
/// 3,000 sends/s fell to under 1,000.
async fn connect_writers(url: &str, options: &StoreOptions) -> Result<PgPool, StoreError> {
    let settings = [
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
        ("enable_seqscan", "off"),
    ];
    pool(url, options, writer_connections(options), &settings).await
}

async fn pool(
    url: &str,
    options: &StoreOptions,
    size: u32,
    settings: &[(&str, &str)],
) -> Result<PgPool, StoreError> {
    // At least 1 ms: a statement_timeout of 0 would mean "no timeout".
    let timeout_ms = options.statement_timeout.as_millis().max(1).to_string();
    let connect = PgConnectOptions::from_str(url)
        .map_err(StoreError::Database)?
        .application_name("chat-server")
        // A statement stuck behind a lock or a sick disk fails (and the send is retried
        // by the client with the same id) instead of holding a pool connection forever.
        .options([("statement_timeout", timeout_ms.as_str())])
        .options(settings.iter().copied());
    PgPoolOptions::new()
        .max_connections(size.max(1))
        // While the database is down a call waits this long for a connection, then
        // fails with UNAVAILABLE; the pool reconnects by itself when it is back.
        .acquire_timeout(options.statement_timeout.max(Duration::from_secs(1)))
        // No ping before each use: it doubled the round trips of a send. A connection
        // that died meanwhile fails its statement with UNAVAILABLE, which callers retry,
        // and the pool replaces it.
        .test_before_acquire(false)
        .connect_with(connect)
        .await
        .map_err(classify)
}

/// Sorts sqlx errors into "retry later" and "something is wrong", by SQLSTATE.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.is_unique_violation() {
                StoreError::Conflict
            } else if is_transient_sqlstate(&code) {
                StoreError::Unavailable(e)
            } else {
                StoreError::Database(e)
            }
        }
        _ => StoreError::Database(e),
    }
}

/// SQLSTATEs after which nothing was decided and a retry can succeed.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(
            code,
            "25006" // read_only_sql_transaction: a standby, e.g. mid-failover
            | "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "53300" // too_many_connections
            | "55P03" // lock_not_available
            | "57014" // query_canceled (statement timeout)
            | "57P01" // admin_shutdown
            | "57P02" // crash_shutdown
            | "57P03" // cannot_connect_now
        )
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(col).map_err(StoreError::Database)
}

fn seq_col(row: &PgRow, col: &str) -> Result<u64, StoreError> {
    let v: i64 = get(row, col)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} is negative")))
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn time_col(row: &PgRow, col: &str) -> Result<Timestamp, StoreError> {
    let at: OffsetDateTime = get(row, col)?;
    Ok(from_time(at))
}

fn from_time(at: OffsetDateTime) -> Timestamp {
    Timestamp(i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX))
}

fn to_time(at: Timestamp) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.micros()) * 1000)
        .map_err(|_| StoreError::Corrupt(format!("timestamp {} out of range", at.micros())))
}

fn user_ref(row: &PgRow, id: &str, name: &str) -> Result<UserRef, StoreError> {
    Ok(UserRef {
        id: UserId(get(row, id)?),
        name: UserName::from_stored(get(row, name)?),
    })
}

fn message_from_row(row: &PgRow) -> Result<Message, StoreError> {
    Ok(Message {
        conversation_id: ConversationId(get(row, "conversation_id")?),
        seq: seq_col(row, "seq")?,
        id: MessageId(get(row, "id")?),
        sender: user_ref(row, "sender_id", "sender_name")?,
        client_msg_id: ClientMsgId::from_stored(get(row, "client_msg_id")?),
        text: MessageText::from_stored(get(row, "body")?),
        sent_at: time_col(row, "created_at")?,
    })
}

fn receipt_from_row(row: &PgRow) -> Result<Receipt, StoreError> {
    Ok(Receipt {
        conversation_id: ConversationId(get(row, "conversation_id")?),
        user: user_ref(row, "user_id", "user_name")?,
        delivered_seq: seq_col(row, "delivered_seq")?,
        read_seq: seq_col(row, "read_seq")?,
    })
}

/// A statement reading whole messages (with their sender's name), filtered by `$filter`.
macro_rules! select_messages {
    ($filter:literal) => {
        concat!(
            "SELECT m.conversation_id, m.seq, m.id, m.sender_id, u.name AS sender_name, \
             m.client_msg_id, m.body, m.created_at \
             FROM messages m JOIN users u ON u.id = m.sender_id WHERE ",
            $filter
        )
    };
}

/// A statement reading members' receipts (with their names), filtered by `$filter`.
macro_rules! select_members {
    ($filter:literal) => {
        concat!(
            "SELECT m.conversation_id, m.user_id, u.name AS user_name, m.delivered_seq, \
             m.read_seq FROM members m JOIN users u ON u.id = m.user_id WHERE ",
            $filter
        )
    };
}

const FIND_SENT: &str =
    select_messages!("m.conversation_id = $1 AND m.sender_id = $2 AND m.client_msg_id = $3");

/// Committer tasks per kind of write (sends, receipts); each holds a connection only
/// while it commits.
const COMMITTERS: usize = 2;

/// One member's receipt in one conversation.
const MEMBERSHIP: &str = select_members!("m.conversation_id = $1 AND m.user_id = $2");

/// A page of history after a seq: one conversation, one partition, the primary key's
/// order. Public so that a test can assert on its plan.
pub const MESSAGES_AFTER: &str =
    select_messages!("m.conversation_id = $1 AND m.seq > $2 ORDER BY m.seq ASC LIMIT $3");

/// A page of history before a seq, newest first (reversed by the caller).
pub const MESSAGES_BEFORE: &str =
    select_messages!("m.conversation_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3");

#[async_trait]
impl Store for PostgresStore {
    async fn close(&self) {
        self.pool.close().await;
    }

    // --- users ---

    async fn create_user(
        &self,
        name: &UserName,
        password_hash: &str,
    ) -> Result<UserRef, StoreError> {
        let id = UserId(Uuid::now_v7());
        sqlx::query(
            "INSERT INTO users (id, name, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.0)
        .bind(name.as_str())
        .bind(password_hash)
        .bind(to_time(Timestamp::now())?)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(UserRef {
            id,
            name: name.clone(),
        })
    }

    async fn user_by_name(&self, name: &UserName) -> Result<Option<UserCredentials>, StoreError> {
        let row = sqlx::query("SELECT id, name, password_hash FROM users WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.map(|row| {
            Ok(UserCredentials {
                user: user_ref(&row, "id", "name")?,
                password_hash: get(&row, "password_hash")?,
            })
        })
        .transpose()
    }

    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<(UserId, Timestamp)>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = users.iter().map(|u| u.0).collect();
        let rows = sqlx::query(
            "SELECT id, last_seen_at FROM users WHERE id = ANY($1) AND last_seen_at IS NOT NULL",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| Ok((UserId(get(row, "id")?), time_col(row, "last_seen_at")?)))
            .collect()
    }

    async fn set_last_seen(&self, users: &[UserId], at: Timestamp) -> Result<(), StoreError> {
        if users.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = users.iter().map(|u| u.0).collect();
        sqlx::query(
            "UPDATE users SET last_seen_at = GREATEST(last_seen_at, $1) WHERE id = ANY($2)",
        )
        .bind(to_time(at)?)
        .bind(ids)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    // --- device sessions ---

    async fn create_session(
        &self,
        session: &DeviceSession,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, user_id, token_hash, device_name, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session.id.0)
        .bind(session.user.id.0)
        .bind(token_hash)
        .bind(&session.device_name)
        .bind(to_time(session.created_at)?)
        .bind(to_time(session.expires_at)?)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<DeviceSession>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.name, s.device_name, s.created_at, s.expires_at \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        row.map(|row| {
            Ok(DeviceSession {
                id: DeviceId(get(&row, "id")?),
                user: user_ref(&row, "user_id", "name")?,
                device_name: get(&row, "device_name")?,
                created_at: time_col(&row, "created_at")?,
                expires_at: time_col(&row, "expires_at")?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, id: DeviceId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    // --- conversations and members ---

    async fn ensure_direct(&self, a: UserId, b: UserId) -> Result<ConversationId, StoreError> {
        let id = ConversationId::direct(a, b);
        let exists = sqlx::query("SELECT 1 FROM conversations WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        if exists.is_some() {
            return Ok(id);
        }
        // Two first messages racing meet here: both inserts are no-ops but one.
        let now = to_time(Timestamp::now())?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query(
            "INSERT INTO conversations (id, kind, created_at) VALUES ($1, 'direct', $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.0)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        sqlx::query(
            "INSERT INTO members (conversation_id, user_id, role, joined_at) \
             SELECT $1, u, 'member', $3 FROM unnest($2::uuid[]) AS u \
             ON CONFLICT (conversation_id, user_id) DO NOTHING",
        )
        .bind(id.0)
        .bind(vec![a.0, b.0])
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(id)
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<Receipt>, StoreError> {
        let rows = sqlx::query(select_members!("m.conversation_id = $1 ORDER BY u.name"))
            .bind(conversation.0)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(receipt_from_row).collect()
    }

    async fn membership(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Receipt>, StoreError> {
        let row = sqlx::query(MEMBERSHIP)
            .bind(conversation.0)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.as_ref().map(receipt_from_row).transpose()
    }

    async fn conversations_of(
        &self,
        user: UserId,
        only: Option<ConversationId>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let only = only.map(|c| c.0);
        // The newest message comes from the conversation row, not from `messages`.
        let convs = sqlx::query(
            "SELECT c.id AS conversation_id, c.kind, c.last_seq, m.user_id, u.name AS user_name, \
                    m.delivered_seq, m.read_seq, m.muted, \
                    c.last_message_id, c.last_sender_id, s.name AS last_sender_name, \
                    c.last_client_msg_id, c.last_body, c.last_message_at \
             FROM members m \
             JOIN conversations c ON c.id = m.conversation_id \
             JOIN users u ON u.id = m.user_id \
             LEFT JOIN users s ON s.id = c.last_sender_id \
             WHERE m.user_id = $1 AND c.last_seq > 0 AND ($2::uuid IS NULL OR c.id = $2) \
             ORDER BY coalesce(c.last_message_at, c.created_at) DESC, c.id \
             LIMIT $3",
        )
        .bind(user.0)
        .bind(only)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let others = sqlx::query(
            "SELECT o.conversation_id, o.user_id, u.name AS user_name, o.delivered_seq, o.read_seq \
             FROM members mine \
             JOIN members o ON o.conversation_id = mine.conversation_id AND o.user_id <> mine.user_id \
             JOIN users u ON u.id = o.user_id \
             WHERE mine.user_id = $1 AND ($2::uuid IS NULL OR mine.conversation_id = $2)",
        )
        .bind(user.0)
        .bind(only)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;

        let mut others_by_conv: std::collections::HashMap<ConversationId, Vec<Receipt>> =
            Default::default();
        for row in &others {
            let r = receipt_from_row(row)?;
            others_by_conv.entry(r.conversation_id).or_default().push(r);
        }
        convs
            .iter()
            .map(|row| {
                let own = receipt_from_row(row)?;
                let kind = match get::<String>(row, "kind")?.as_str() {
                    "direct" => ConversationKind::Direct,
                    "group" => ConversationKind::Group,
                    other => return Err(StoreError::Corrupt(format!("conversation kind {other}"))),
                };
                let last_seq = seq_col(row, "last_seq")?;
                Ok(ConversationSummary {
                    id: own.conversation_id,
                    kind,
                    last_seq,
                    last_message: last_message(row, own.conversation_id, last_seq)?,
                    others: others_by_conv
                        .remove(&own.conversation_id)
                        .unwrap_or_default(),
                    muted: get(row, "muted")?,
                    own,
                })
            })
            .collect()
    }

    async fn positions(&self, user: UserId) -> Result<Vec<Position>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, c.last_seq, m.delivered_seq, m.read_seq \
             FROM members m JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = $1",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(Position {
                    conversation_id: ConversationId(get(row, "id")?),
                    last_seq: seq_col(row, "last_seq")?,
                    delivered_seq: seq_col(row, "delivered_seq")?,
                    read_seq: seq_col(row, "read_seq")?,
                })
            })
            .collect()
    }

    async fn peer_receipts(&self, user: UserId) -> Result<Vec<Receipt>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.conversation_id, o.user_id, u.name AS user_name, o.delivered_seq, o.read_seq \
             FROM members mine \
             JOIN members o ON o.conversation_id = mine.conversation_id AND o.user_id <> mine.user_id \
             JOIN users u ON u.id = o.user_id \
             WHERE mine.user_id = $1",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter().map(receipt_from_row).collect()
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserRef>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT u.id, u.name FROM members mine \
             JOIN members o ON o.conversation_id = mine.conversation_id AND o.user_id <> mine.user_id \
             JOIN conversations c ON c.id = mine.conversation_id \
             JOIN users u ON u.id = o.user_id \
             WHERE mine.user_id = $1 AND c.last_seq > 0",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter().map(|row| user_ref(row, "id", "name")).collect()
    }

    // --- messages ---

    async fn append_message(&self, new: NewMessage) -> Result<Appended, StoreError> {
        self.appends.apply(AppendWrite::new(new)).await
    }

    async fn find_sent(
        &self,
        conversation: ConversationId,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query(FIND_SENT)
            .bind(conversation.0)
            .bind(sender.0)
            .bind(client_msg_id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.as_ref().map(message_from_row).transpose()
    }

    async fn messages_after(
        &self,
        conversation: ConversationId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = sqlx::query(MESSAGES_AFTER)
            .bind(conversation.0)
            .bind(seq_param(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(message_from_row).collect()
    }

    async fn messages_before(
        &self,
        conversation: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let rows = sqlx::query(MESSAGES_BEFORE)
            .bind(conversation.0)
            .bind(seq_param(before))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        let mut messages = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(messages)
    }

    // --- receipts ---

    async fn advance_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        delivered_seq: u64,
        read_seq: u64,
    ) -> Result<Option<ReceiptUpdate>, StoreError> {
        self.receipts
            .apply(ReceiptWrite {
                conversation,
                user,
                delivered: delivered_seq,
                read: read_seq,
            })
            .await
    }
}

/// The newest message of a conversation, from the preview columns of its row.
fn last_message(
    row: &PgRow,
    conversation_id: ConversationId,
    last_seq: u64,
) -> Result<Option<Message>, StoreError> {
    let Some(id) = get::<Option<Uuid>>(row, "last_message_id")? else {
        return Ok(None);
    };
    let (Some(sender_id), Some(sender_name), Some(client_msg_id), Some(body), Some(at)) = (
        get::<Option<Uuid>>(row, "last_sender_id")?,
        get::<Option<String>>(row, "last_sender_name")?,
        get::<Option<String>>(row, "last_client_msg_id")?,
        get::<Option<String>>(row, "last_body")?,
        get::<Option<OffsetDateTime>>(row, "last_message_at")?,
    ) else {
        return Err(StoreError::Corrupt(format!(
            "conversation {conversation_id} has a partial last message"
        )));
    };
    Ok(Some(Message {
        conversation_id,
        seq: last_seq,
        id: MessageId(id),
        sender: UserRef {
            id: UserId(sender_id),
            name: UserName::from_stored(sender_name),
        },
        client_msg_id: ClientMsgId::from_stored(client_msg_id),
        text: MessageText::from_stored(body),
        sent_at: from_time(at),
    }))
}
