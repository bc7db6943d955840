//! Grouped writes on the one writer connection: sends and receipts, each group one
//! transaction (one fsync).
//!
//! A group runs as a few statements over all its writes at once, with the writes passed
//! as one JSON array (`json_each`), because every statement is a round trip to sqlx's
//! SQLite thread and a statement per write made those round trips the bound. Only the
//! common case takes that way: a group holding a retried send, or anything that fails,
//! is rolled back and applied write by write (`in_one_transaction`), and a write that
//! fails there is isolated by a savepoint (`with_savepoints`).

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::{Connection, Row};

use super::{FIND_SENT, classify, message_from_row, receipt_from_row, seq_col, seq_param};
use crate::domain::{Message, Receipt};
use crate::store::group_commit::{AppendWrite, ApplyBatch, ReceiptWrite};
use crate::store::{Appended, ReceiptUpdate, StoreError};

/// Sends and receipts go through the one writer connection in groups: one
/// transaction, so one fsync, per group.
pub(super) struct Writer {
    pub(super) pool: SqlitePool,
}

#[async_trait]
impl ApplyBatch<AppendWrite> for Writer {
    async fn apply(&self, batch: Vec<AppendWrite>) -> Vec<Result<Appended, StoreError>> {
        if batch.len() > 1 {
            match append_group(&self.pool, &batch).await {
                Ok(Grouped::Committed(results)) => return results,
                Ok(Grouped::OneByOne) => {}
                Err(e) => {
                    tracing::debug!(error = %e, size = batch.len(), "send group failed; one by one")
                }
            }
            metrics::counter!(crate::metrics::GROUP_FALLBACKS, "write" => "send").increment(1);
        }
        in_one_transaction(&self.pool, batch, |tx, w| Box::pin(append_in(tx, w))).await
    }
}

#[async_trait]
impl ApplyBatch<ReceiptWrite> for Writer {
    async fn apply(
        &self,
        batch: Vec<ReceiptWrite>,
    ) -> Vec<Result<Option<ReceiptUpdate>, StoreError>> {
        if batch.len() > 1 {
            match advance_group(&self.pool, &batch).await {
                Ok(results) => return results,
                Err(e) => {
                    tracing::debug!(error = %e, size = batch.len(), "receipt group failed; one by one");
                    metrics::counter!(crate::metrics::GROUP_FALLBACKS, "write" => "receipt")
                        .increment(1);
                }
            }
        }
        in_one_transaction(&self.pool, batch, |tx, w| Box::pin(advance_in(tx, w))).await
    }
}

/// How a group went on the fast way.
enum Grouped<O> {
    /// Committed: one result per write.
    Committed(Vec<Result<O, StoreError>>),
    /// Rolled back untouched: the group holds a case only the write-by-write way
    /// answers (a retried send, a conversation that does not exist).
    OneByOne,
}

/// How many of a group's sends are retries of stored messages.
const GROUP_PRIOR: &str = "SELECT count(*) FROM json_each(?1) j \
     JOIN messages m ON m.conversation_id = j.value->>0 AND m.sender_id = j.value->>1 \
       AND m.client_msg_id = j.value->>2";
/// Takes the next seq of each conversation (at most one send per conversation in a group).
const GROUP_NEXT_SEQ: &str = "UPDATE conversations \
     SET last_seq = last_seq + 1, last_message_at = j.value->>1 \
     FROM json_each(?1) j WHERE conversations.id = j.value->>0 \
     RETURNING id, last_seq";
const GROUP_INSERT: &str = "INSERT INTO messages \
     (conversation_id, seq, id, sender_id, client_msg_id, body, created_at) \
     SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6 \
     FROM json_each(?1)";
/// The sender's own message is not unread for them (as in `append_in`).
const GROUP_OWN_READ: &str = "UPDATE members \
     SET delivered_seq = max(delivered_seq, j.value->>2), read_seq = j.value->>2 \
     FROM json_each(?1) j \
     WHERE members.conversation_id = j.value->>0 AND members.user_id = j.value->>1 \
       AND members.read_seq = (j.value->>2) - 1";

/// Appends a group of fresh sends, at most one per conversation, in four statements.
async fn append_group(
    pool: &SqlitePool,
    batch: &[AppendWrite],
) -> Result<Grouped<Appended>, StoreError> {
    let keys = json_rows(batch, |w| {
        json!([
            w.new.conversation_id.to_string(),
            w.new.sender.id.to_string(),
            w.new.client_msg_id.as_str()
        ])
    });
    let mut tx = pool.begin().await.map_err(classify)?;
    let prior: i64 = sqlx::query_scalar(GROUP_PRIOR)
        .bind(&keys)
        .fetch_one(&mut *tx)
        .await
        .map_err(classify)?;
    if prior > 0 {
        tx.rollback().await.map_err(classify)?;
        return Ok(Grouped::OneByOne);
    }
    let bumps = json_rows(batch, |w| {
        json!([w.new.conversation_id.to_string(), w.at.micros()])
    });
    let rows = sqlx::query(GROUP_NEXT_SEQ)
        .bind(&bumps)
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
    let mut seqs = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("id").map_err(StoreError::Database)?;
        seqs.insert(id, seq_col(row, "last_seq")?);
    }
    let mut stored = Vec::with_capacity(batch.len());
    for write in batch {
        match seqs.get(&write.new.conversation_id.to_string()) {
            Some(&seq) => stored.push(seq),
            None => {
                tx.rollback().await.map_err(classify)?;
                return Ok(Grouped::OneByOne);
            }
        }
    }
    let rows = json_rows(batch.iter().zip(&stored), |(w, seq)| {
        json!([
            w.new.conversation_id.to_string(),
            seq,
            w.id.to_string(),
            w.new.sender.id.to_string(),
            w.new.client_msg_id.as_str(),
            w.new.text.as_str(),
            w.at.micros()
        ])
    });
    sqlx::query(GROUP_INSERT)
        .bind(&rows)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
    let own = json_rows(batch.iter().zip(&stored), |(w, seq)| {
        json!([
            w.new.conversation_id.to_string(),
            w.new.sender.id.to_string(),
            seq
        ])
    });
    sqlx::query(GROUP_OWN_READ)
        .bind(&own)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
    if let Err(e) = tx.commit().await {
        return Ok(Grouped::Committed(group_failed(batch.len(), classify(e))));
    }
    Ok(Grouped::Committed(
        batch
            .iter()
            .zip(stored)
            .map(|(w, seq)| {
                Ok(Appended {
                    message: Message {
                        conversation_id: w.new.conversation_id,
                        seq,
                        id: w.id,
                        sender: w.new.sender.clone(),
                        client_msg_id: w.new.client_msg_id.clone(),
                        text: w.new.text.clone(),
                        sent_at: w.at,
                    },
                    duplicate: false,
                })
            })
            .collect(),
    ))
}

/// A group statement's rows as one JSON array of arrays, which the statement reads back
/// with `json_each` (`value->>0` is a row's first column).
fn json_rows<T>(items: impl IntoIterator<Item = T>, row: impl FnMut(T) -> Value) -> String {
    Value::Array(items.into_iter().map(row).collect()).to_string()
}

/// Every input's member row with its conversation's last seq; `ord` is the input's index.
const GROUP_RECEIPTS: &str = "SELECT j.key AS ord, m.conversation_id, m.user_id, \
            u.name AS user_name, m.delivered_seq, m.read_seq, c.last_seq \
     FROM json_each(?1) j \
     JOIN members m ON m.conversation_id = j.value->>0 AND m.user_id = j.value->>1 \
     JOIN conversations c ON c.id = m.conversation_id \
     JOIN users u ON u.id = m.user_id";
const GROUP_MOVE_RECEIPTS: &str = "UPDATE members \
     SET delivered_seq = j.value->>2, read_seq = j.value->>3 \
     FROM json_each(?1) j \
     WHERE members.conversation_id = j.value->>0 AND members.user_id = j.value->>1";

/// Advances a group of receipts in a transaction of its own.
async fn advance_group(
    pool: &SqlitePool,
    batch: &[ReceiptWrite],
) -> Result<Vec<Result<Option<ReceiptUpdate>, StoreError>>, StoreError> {
    let mut tx = pool.begin().await.map_err(classify)?;
    let updates = advance_rows(&mut tx, batch).await?;
    if let Err(e) = tx.commit().await {
        return Ok(group_failed(batch.len(), classify(e)));
    }
    Ok(updates.into_iter().map(Ok).collect())
}

/// Advances receipts, at most one per member, in two statements: read them all, move the
/// ones that move. `None` for a receipt of someone not a member.
async fn advance_rows(
    conn: &mut SqliteConnection,
    batch: &[ReceiptWrite],
) -> Result<Vec<Option<ReceiptUpdate>>, StoreError> {
    let keys = json_rows(batch, |w| {
        json!([w.conversation.to_string(), w.user.to_string()])
    });
    let rows = sqlx::query(GROUP_RECEIPTS)
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?;
    let mut out: Vec<Option<ReceiptUpdate>> = (0..batch.len()).map(|_| None).collect();
    let mut moves = Vec::new();
    for row in &rows {
        let ord: i64 = row.try_get("ord").map_err(StoreError::Database)?;
        let Some(index) = usize::try_from(ord).ok().filter(|&i| i < batch.len()) else {
            return Err(StoreError::Corrupt(format!(
                "receipt group row {ord} has no write"
            )));
        };
        let write = &batch[index];
        let update = advanced(receipt_from_row(row)?, seq_col(row, "last_seq")?, write);
        if update.changed {
            moves.push(json!([
                write.conversation.to_string(),
                write.user.to_string(),
                seq_param(update.receipt.delivered_seq),
                seq_param(update.receipt.read_seq)
            ]));
        }
        out[index] = Some(update);
    }
    if !moves.is_empty() {
        sqlx::query(GROUP_MOVE_RECEIPTS)
            .bind(Value::Array(moves).to_string())
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }
    Ok(out)
}

/// Where a receipt write takes a member's watermarks: forward only, never past the
/// conversation's last seq, and delivered never behind read.
fn advanced(current: Receipt, last_seq: u64, write: &ReceiptWrite) -> ReceiptUpdate {
    let read = current.read_seq.max(write.read.min(last_seq));
    let delivered = current
        .delivered_seq
        .max(write.delivered.min(last_seq))
        .max(read);
    let changed = read != current.read_seq || delivered != current.delivered_seq;
    ReceiptUpdate {
        receipt: Receipt {
            delivered_seq: delivered,
            read_seq: read,
            ..current
        },
        changed,
    }
}

type Op<W, O> = for<'c> fn(&'c mut SqliteConnection, W) -> BoxFuture<'c, Result<O, StoreError>>;

/// Applies a group as one transaction. The fast way runs every write straight in the
/// transaction; a write that fails (rare: a missing conversation, a broken row) may
/// have changed something before it failed, so then the whole transaction is rolled
/// back and the group applied again with a savepoint per write, which keeps the others.
async fn in_one_transaction<W: Clone + Send, O: Send>(
    pool: &SqlitePool,
    batch: Vec<W>,
    op: Op<W, O>,
) -> Vec<Result<O, StoreError>> {
    let size = batch.len();
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return group_failed(size, classify(e)),
    };
    let mut results = Vec::with_capacity(size);
    for write in batch.iter().cloned() {
        match op(&mut tx, write).await {
            Ok(out) => results.push(Ok(out)),
            Err(_) => {
                if let Err(e) = tx.rollback().await {
                    return group_failed(size, classify(e));
                }
                return with_savepoints(pool, batch, op).await;
            }
        }
    }
    if let Err(e) = tx.commit().await {
        return group_failed(size, classify(e));
    }
    results
}

/// The careful way: one savepoint per write, so a write that fails leaves the others in.
async fn with_savepoints<W: Send, O: Send>(
    pool: &SqlitePool,
    batch: Vec<W>,
    op: Op<W, O>,
) -> Vec<Result<O, StoreError>> {
    let size = batch.len();
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => return group_failed(size, classify(e)),
    };
    let mut results = Vec::with_capacity(size);
    for write in batch {
        let result = match tx.begin().await {
            Ok(mut savepoint) => match op(&mut savepoint, write).await {
                Ok(out) => savepoint.commit().await.map(|_| out).map_err(classify),
                Err(e) => {
                    let _ = savepoint.rollback().await;
                    Err(e)
                }
            },
            Err(e) => Err(classify(e)),
        };
        results.push(result);
    }
    if let Err(e) = tx.commit().await {
        return group_failed(size, classify(e));
    }
    results
}

/// The same failure for every write of a group: the first gets the error itself,
/// the others its description, with the same retryability.
fn group_failed<O>(size: usize, error: StoreError) -> Vec<Result<O, StoreError>> {
    let transient = error.is_transient();
    let text = error.to_string();
    let mut out = vec![Err(error)];
    out.extend((1..size).map(|_| {
        let cause = sqlx::Error::Io(std::io::Error::other(format!(
            "group commit failed: {text}"
        )));
        Err(if transient {
            StoreError::Unavailable(cause)
        } else {
            StoreError::Database(cause)
        })
    }));
    out.truncate(size);
    out
}

async fn append_in(tx: &mut SqliteConnection, write: AppendWrite) -> Result<Appended, StoreError> {
    let AppendWrite { id, at: now, new } = write;
    let conv = new.conversation_id.to_string();
    let sender = new.sender.id.to_string();
    // A retry finds its original before anything is incremented, so it burns no seq.
    let existing = sqlx::query(FIND_SENT)
        .bind(&conv)
        .bind(&sender)
        .bind(new.client_msg_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify)?;
    if let Some(row) = existing {
        let message = message_from_row(&row)?;
        return Ok(Appended {
            message,
            duplicate: true,
        });
    }
    let row = sqlx::query(
        "UPDATE conversations SET last_seq = last_seq + 1, last_message_at = ? \
         WHERE id = ? RETURNING last_seq",
    )
    .bind(now.micros())
    .bind(&conv)
    .fetch_optional(&mut *tx)
    .await
    .map_err(classify)?;
    let Some(row) = row else {
        return Err(StoreError::Corrupt(format!(
            "conversation {conv} does not exist"
        )));
    };
    let seq = seq_col(&row, "last_seq")?;
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&conv)
    .bind(seq_param(seq))
    .bind(id.to_string())
    .bind(&sender)
    .bind(new.client_msg_id.as_str())
    .bind(new.text.as_str())
    .bind(now.micros())
    .execute(&mut *tx)
    .await
    .map_err(classify)?;
    // The sender's own message is not unread for them. Only when they had read
    // everything before it, though: a send must not mark the peer's unread
    // messages as read.
    sqlx::query(
        "UPDATE members SET delivered_seq = max(delivered_seq, ?1), read_seq = ?1 \
         WHERE conversation_id = ?2 AND user_id = ?3 AND read_seq = ?1 - 1",
    )
    .bind(seq_param(seq))
    .bind(&conv)
    .bind(&sender)
    .execute(&mut *tx)
    .await
    .map_err(classify)?;
    Ok(Appended {
        message: Message {
            conversation_id: new.conversation_id,
            seq,
            id,
            sender: new.sender,
            client_msg_id: new.client_msg_id,
            text: new.text,
            sent_at: now,
        },
        duplicate: false,
    })
}

/// One receipt, in the caller's transaction: the group's statements over one write.
async fn advance_in(
    tx: &mut SqliteConnection,
    write: ReceiptWrite,
) -> Result<Option<ReceiptUpdate>, StoreError> {
    Ok(advance_rows(tx, std::slice::from_ref(&write))
        .await?
        .pop()
        .flatten())
}
