//! The embedded store: SQLite in WAL mode through sqlx.
//!
//! Writes go through a pool of exactly one connection, so SQLite's single writer is an
//! explicit queue in this process instead of `SQLITE_BUSY` retries; reads use a separate
//! pool and see every committed write (WAL). `synchronous = FULL` makes a commit durable
//! before a send is acknowledged. A connection of its own checkpoints the WAL beside the
//! writer, which never does. Grouped writes are in `writes.rs`.

mod push;
mod writes;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tokio_util::sync::CancellationToken;
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

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
    stop_checkpoints: CancellationToken,
    appends: GroupCommit<AppendWrite>,
    receipts: GroupCommit<ReceiptWrite>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies the migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        // As on Postgres: a call that cannot get the database within the statement
        // timeout fails with UNAVAILABLE, and the client retries it.
        let wait = options.statement_timeout.max(Duration::from_secs(1));
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Database)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(wait);
        // A commit that crosses the autocheckpoint threshold copies the WAL into the
        // database and fsyncs it before it returns, and on the one writer that stalls
        // every send queued behind it. So a connection of its own copies the WAL beside
        // the writer (`checkpoint_loop`), and the writer's own checkpoints come seldom
        // and find almost everything copied already. They are still needed: only a
        // checkpoint that no write overtakes copies the whole WAL, and only then does
        // the next transaction start the WAL over, so without them it grew for as long
        // as sends kept coming (5 GB in a minute at 5,000 messages/s).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(wait)
            .connect_with(
                connect
                    .clone()
                    .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES),
            )
            .await
            .map_err(classify)?;
        sqlx::migrate!("../migrations/sqlite").run(&writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(wait)
            .connect_with(connect.clone())
            .await
            .map_err(classify)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.pool_size.max(1))
            .acquire_timeout(wait)
            .connect_with(connect.read_only(true))
            .await
            .map_err(classify)?;
        let stop_checkpoints = CancellationToken::new();
        tokio::spawn(checkpoint_loop(
            checkpointer.clone(),
            stop_checkpoints.clone(),
        ));
        // One committer: SQLite has one writer, and a group in flight is a group
        // that cannot grow.
        let grouped = Arc::new(writes::Writer {
            pool: writer.clone(),
        });
        Ok(SqliteStore {
            appends: GroupCommit::start(grouped.clone(), 1, MAX_BATCH),
            receipts: GroupCommit::start(grouped, 1, MAX_BATCH),
            writer,
            reader,
            checkpointer,
            stop_checkpoints,
        })
    }
}

/// How often the WAL is copied back into the database beside the writer.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL pages (16 MiB) past which a commit of the writer checkpoints too (SQLite's default
/// is 1,000): rarely, and with little left to copy.
const WRITER_CHECKPOINT_PAGES: &str = "4000";

/// Checkpoints the WAL beside the writer. PASSIVE never waits for the writer or for
/// readers: it copies what no reader still needs.
async fn checkpoint_loop(pool: SqlitePool, stop: CancellationToken) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next pass retries");
        }
    }
}

/// Writes per group transaction.
const MAX_BATCH: usize = 512;

/// Sorts sqlx errors into "retry later" and "something is wrong".
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e)
        }
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
            let busy = db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6));
            if busy {
                StoreError::Unavailable(e)
            } else if db.is_unique_violation() {
                StoreError::Conflict
            } else {
                StoreError::Database(e)
            }
        }
        _ => StoreError::Database(e),
    }
}

fn uuid_col(row: &SqliteRow, col: &str) -> Result<Uuid, StoreError> {
    let s: String = row.try_get(col).map_err(StoreError::Database)?;
    Uuid::parse_str(&s).map_err(|_| StoreError::Corrupt(format!("{col} is not a uuid: {s}")))
}

fn seq_col(row: &SqliteRow, col: &str) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(col).map_err(StoreError::Database)?;
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} is negative")))
}

fn string_col(row: &SqliteRow, col: &str) -> Result<String, StoreError> {
    row.try_get(col).map_err(StoreError::Database)
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn message_from_row(row: &SqliteRow) -> Result<Message, StoreError> {
    Ok(Message {
        conversation_id: ConversationId(uuid_col(row, "conversation_id")?),
        seq: seq_col(row, "seq")?,
        id: MessageId(uuid_col(row, "id")?),
        sender: UserRef {
            id: UserId(uuid_col(row, "sender_id")?),
            name: UserName::from_stored(string_col(row, "sender_name")?),
        },
        client_msg_id: ClientMsgId::from_stored(string_col(row, "client_msg_id")?),
        text: MessageText::from_stored(string_col(row, "body")?),
        sent_at: Timestamp(row.try_get("created_at").map_err(StoreError::Database)?),
    })
}

fn receipt_from_row(row: &SqliteRow) -> Result<Receipt, StoreError> {
    Ok(Receipt {
        conversation_id: ConversationId(uuid_col(row, "conversation_id")?),
        user: UserRef {
            id: UserId(uuid_col(row, "user_id")?),
            name: UserName::from_stored(string_col(row, "user_name")?),
        },
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
    select_messages!("m.conversation_id = ? AND m.sender_id = ? AND m.client_msg_id = ?");

const PEER_RECEIPTS: &str = "SELECT o.conversation_id, o.user_id, u.name AS user_name, o.delivered_seq, o.read_seq \
     FROM members mine \
     JOIN members o ON o.conversation_id = mine.conversation_id AND o.user_id <> mine.user_id \
     JOIN users u ON u.id = o.user_id \
     WHERE mine.user_id = ?";

#[async_trait]
impl Store for SqliteStore {
    async fn close(&self) {
        self.stop_checkpoints.cancel();
        self.reader.close().await;
        self.checkpointer.close().await;
        self.writer.close().await;
    }

    // --- users ---

    async fn create_user(
        &self,
        name: &UserName,
        password_hash: &str,
    ) -> Result<UserRef, StoreError> {
        let id = UserId(Uuid::now_v7());
        sqlx::query("INSERT INTO users (id, name, password_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(id.to_string())
            .bind(name.as_str())
            .bind(password_hash)
            .bind(Timestamp::now().micros())
            .execute(&self.writer)
            .await
            .map_err(classify)?;
        Ok(UserRef {
            id,
            name: name.clone(),
        })
    }

    async fn user_by_name(&self, name: &UserName) -> Result<Option<UserCredentials>, StoreError> {
        let row = sqlx::query("SELECT id, name, password_hash FROM users WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?;
        row.map(|row| {
            Ok(UserCredentials {
                user: UserRef {
                    id: UserId(uuid_col(&row, "id")?),
                    name: UserName::from_stored(string_col(&row, "name")?),
                },
                password_hash: string_col(&row, "password_hash")?,
            })
        })
        .transpose()
    }

    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<(UserId, Timestamp)>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // One query for any number of users: the ids travel as a JSON array.
        let ids: Vec<String> = users.iter().map(|u| format!("\"{u}\"")).collect();
        let rows = sqlx::query(
            "SELECT id, last_seen_at FROM users \
             WHERE id IN (SELECT value FROM json_each(?)) AND last_seen_at IS NOT NULL",
        )
        .bind(format!("[{}]", ids.join(",")))
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let at: i64 = row.try_get("last_seen_at").map_err(StoreError::Database)?;
                Ok((UserId(uuid_col(row, "id")?), Timestamp(at)))
            })
            .collect()
    }

    async fn set_last_seen(&self, users: &[UserId], at: Timestamp) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(classify)?;
        for user in users {
            sqlx::query(
                "UPDATE users SET last_seen_at = max(coalesce(last_seen_at, 0), ?) WHERE id = ?",
            )
            .bind(at.micros())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
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
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(session.id.to_string())
        .bind(session.user.id.to_string())
        .bind(token_hash)
        .bind(&session.device_name)
        .bind(session.created_at.micros())
        .bind(session.expires_at.micros())
        .execute(&self.writer)
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
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await
        .map_err(classify)?;
        row.map(|row| {
            Ok(DeviceSession {
                id: DeviceId(uuid_col(&row, "id")?),
                user: UserRef {
                    id: UserId(uuid_col(&row, "user_id")?),
                    name: UserName::from_stored(string_col(&row, "name")?),
                },
                device_name: string_col(&row, "device_name")?,
                created_at: Timestamp(row.try_get("created_at").map_err(StoreError::Database)?),
                expires_at: Timestamp(row.try_get("expires_at").map_err(StoreError::Database)?),
            })
        })
        .transpose()
    }

    async fn delete_session(&self, id: DeviceId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(classify)?;
        Ok(())
    }

    // --- conversations and members ---

    async fn ensure_direct(&self, a: UserId, b: UserId) -> Result<ConversationId, StoreError> {
        let id = ConversationId::direct(a, b);
        let exists = sqlx::query("SELECT 1 FROM conversations WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?;
        if exists.is_some() {
            return Ok(id);
        }
        let now = Timestamp::now().micros();
        let mut tx = self.writer.begin().await.map_err(classify)?;
        sqlx::query(
            "INSERT OR IGNORE INTO conversations (id, kind, created_at) VALUES (?, 'direct', ?)",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        for user in [a, b] {
            sqlx::query(
                "INSERT OR IGNORE INTO members (conversation_id, user_id, role, joined_at) \
                 VALUES (?, ?, 'member', ?)",
            )
            .bind(id.to_string())
            .bind(user.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)?;
        Ok(id)
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<Receipt>, StoreError> {
        let rows = sqlx::query(select_members!("m.conversation_id = ? ORDER BY u.name"))
            .bind(conversation.to_string())
            .fetch_all(&self.reader)
            .await
            .map_err(classify)?;
        rows.iter().map(receipt_from_row).collect()
    }

    async fn membership(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Receipt>, StoreError> {
        let row = sqlx::query(select_members!("m.conversation_id = ? AND m.user_id = ?"))
            .bind(conversation.to_string())
            .bind(user.to_string())
            .fetch_optional(&self.reader)
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
        let uid = user.to_string();
        let only = only.map(|c| c.to_string());
        let convs = sqlx::query(
            "SELECT c.id AS conversation_id, c.kind, c.last_seq, m.user_id, u.name AS user_name, \
                    m.delivered_seq, m.read_seq, m.muted \
             FROM members m \
             JOIN conversations c ON c.id = m.conversation_id \
             JOIN users u ON u.id = m.user_id \
             WHERE m.user_id = ?1 AND c.last_seq > 0 AND (?2 IS NULL OR c.id = ?2) \
             ORDER BY coalesce(c.last_message_at, c.created_at) DESC, c.id \
             LIMIT ?3",
        )
        .bind(&uid)
        .bind(&only)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        let others = sqlx::query(
            "SELECT o.conversation_id, o.user_id, u.name AS user_name, o.delivered_seq, o.read_seq \
             FROM members mine \
             JOIN members o ON o.conversation_id = mine.conversation_id AND o.user_id <> mine.user_id \
             JOIN users u ON u.id = o.user_id \
             WHERE mine.user_id = ?1 AND (?2 IS NULL OR mine.conversation_id = ?2)",
        )
        .bind(&uid)
        .bind(&only)
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        let lasts = sqlx::query(
            "SELECT m.conversation_id, m.seq, m.id, m.sender_id, u.name AS sender_name, \
                    m.client_msg_id, m.body, m.created_at \
             FROM members mine \
             JOIN conversations c ON c.id = mine.conversation_id \
             JOIN messages m ON m.conversation_id = c.id AND m.seq = c.last_seq \
             JOIN users u ON u.id = m.sender_id \
             WHERE mine.user_id = ?1 AND (?2 IS NULL OR mine.conversation_id = ?2)",
        )
        .bind(&uid)
        .bind(&only)
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;

        let mut others_by_conv: std::collections::HashMap<ConversationId, Vec<Receipt>> =
            Default::default();
        for row in &others {
            let r = receipt_from_row(row)?;
            others_by_conv.entry(r.conversation_id).or_default().push(r);
        }
        let mut last_by_conv: std::collections::HashMap<ConversationId, Message> =
            Default::default();
        for row in &lasts {
            let m = message_from_row(row)?;
            last_by_conv.insert(m.conversation_id, m);
        }
        convs
            .iter()
            .map(|row| {
                let own = receipt_from_row(row)?;
                let kind = match string_col(row, "kind")?.as_str() {
                    "direct" => ConversationKind::Direct,
                    "group" => ConversationKind::Group,
                    other => return Err(StoreError::Corrupt(format!("conversation kind {other}"))),
                };
                Ok(ConversationSummary {
                    id: own.conversation_id,
                    kind,
                    last_seq: seq_col(row, "last_seq")?,
                    last_message: last_by_conv.remove(&own.conversation_id),
                    others: others_by_conv
                        .remove(&own.conversation_id)
                        .unwrap_or_default(),
                    muted: row.try_get("muted").map_err(StoreError::Database)?,
                    own,
                })
            })
            .collect()
    }

    async fn positions(&self, user: UserId) -> Result<Vec<Position>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.id, c.last_seq, m.delivered_seq, m.read_seq \
             FROM members m JOIN conversations c ON c.id = m.conversation_id WHERE m.user_id = ?",
        )
        .bind(user.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(Position {
                    conversation_id: ConversationId(uuid_col(row, "id")?),
                    last_seq: seq_col(row, "last_seq")?,
                    delivered_seq: seq_col(row, "delivered_seq")?,
                    read_seq: seq_col(row, "read_seq")?,
                })
            })
            .collect()
    }

    async fn peer_receipts(&self, user: UserId) -> Result<Vec<Receipt>, StoreError> {
        let rows = sqlx::query(PEER_RECEIPTS)
            .bind(user.to_string())
            .fetch_all(&self.reader)
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
             WHERE mine.user_id = ? AND c.last_seq > 0",
        )
        .bind(user.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(UserRef {
                    id: UserId(uuid_col(row, "id")?),
                    name: UserName::from_stored(string_col(row, "name")?),
                })
            })
            .collect()
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
            .bind(conversation.to_string())
            .bind(sender.to_string())
            .bind(client_msg_id.as_str())
            .fetch_optional(&self.reader)
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
        let rows = sqlx::query(select_messages!(
            "m.conversation_id = ? AND m.seq > ? ORDER BY m.seq ASC LIMIT ?"
        ))
        .bind(conversation.to_string())
        .bind(seq_param(after))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
        let rows = sqlx::query(select_messages!(
            "m.conversation_id = ? AND m.seq < ? ORDER BY m.seq DESC LIMIT ?"
        ))
        .bind(conversation.to_string())
        .bind(seq_param(before))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
