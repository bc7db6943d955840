//! Sends and receipts on Postgres, alone or in groups (see `store::group_commit`).
//!
//! A group is one statement over arrays (UNNEST): one round trip and one commit for
//! the whole group, which is where the throughput of a busy server comes from. It
//! touches several conversations, the one place that does: Citus would run it per
//! shard. Anything unusual in a group (a retry racing its original on another replica,
//! a deadlock with another group) fails the statement as a whole, and then each write
//! goes again alone through the one-row statement, whose answers cover every case.

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::types::time::OffsetDateTime;
use uuid::Uuid;

use super::{
    FIND_SENT, MEMBERSHIP, classify, get, message_from_row, receipt_from_row, seq_col, seq_param,
    time_col, to_time, user_ref,
};
use crate::domain::{ConversationId, Message, MessageId, MessageText, Receipt};
use crate::store::group_commit::{AppendWrite, ApplyBatch, ReceiptWrite};
use crate::store::{Appended, ReceiptUpdate, StoreError};

/// Writes per group statement.
pub(super) const MAX_BATCH: usize = 256;

pub(super) struct Writer {
    pool: PgPool,
}

impl Writer {
    pub(super) fn new(pool: PgPool) -> Self {
        Writer { pool }
    }
}

/// One send in one statement, so it is atomic and needs no explicit transaction.
///
/// - `prior`: a retry of a stored send finds its original here and changes nothing
///   (no lock, no seq). It reads the statement's snapshot, so two copies racing each
///   other both miss it: then the unique key stops the second, and the whole statement
///   rolls back (no seq burnt).
/// - `c`: the UPDATE takes the conversation's row lock, so concurrent sends to one
///   conversation queue here, and each increments the latest committed `last_seq`.
/// - `own`: the sender's own message is not unread for them, but only when they had
///   read everything before it. The condition sits in the SET, not the WHERE: after
///   waiting on the lock, Postgres re-evaluates SET expressions on the newest row
///   version, while a WHERE that failed on the old snapshot would skip the row for good.
const APPEND: &str = "WITH prior AS ( \
         SELECT seq, id, body, created_at FROM messages \
         WHERE conversation_id = $1 AND sender_id = $3 AND client_msg_id = $4), \
     c AS ( \
         UPDATE conversations SET last_seq = last_seq + 1, last_message_at = $6, \
             last_message_id = $2, last_sender_id = $3, last_client_msg_id = $4, last_body = $5 \
         WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM prior) RETURNING last_seq), \
     m AS ( \
         INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body, created_at) \
         SELECT $1, c.last_seq, $2, $3, $4, $5, $6 FROM c RETURNING seq), \
     own AS ( \
         UPDATE members SET \
             delivered_seq = CASE WHEN read_seq = m.seq - 1 \
                 THEN GREATEST(delivered_seq, m.seq) ELSE delivered_seq END, \
             read_seq = CASE WHEN read_seq = m.seq - 1 THEN m.seq ELSE read_seq END \
         FROM m WHERE conversation_id = $1 AND user_id = $3) \
     SELECT seq, NULL::uuid AS id, NULL::text AS body, NULL::timestamptz AS created_at, \
            false AS duplicate FROM m \
     UNION ALL \
     SELECT seq, id, body, created_at, true FROM prior";

pub(super) async fn append_one(pool: &PgPool, write: AppendWrite) -> Result<Appended, StoreError> {
    let AppendWrite { id, at: now, new } = write;
    let stored = sqlx::query(APPEND)
        .bind(new.conversation_id.0)
        .bind(id.0)
        .bind(new.sender.id.0)
        .bind(new.client_msg_id.as_str())
        .bind(new.text.as_str())
        .bind(to_time(now)?)
        .fetch_optional(pool)
        .await
        .map_err(classify);
    match stored {
        Ok(Some(row)) if get::<bool>(&row, "duplicate")? => Ok(Appended {
            message: Message {
                conversation_id: new.conversation_id,
                seq: seq_col(&row, "seq")?,
                id: MessageId(get(&row, "id")?),
                sender: new.sender,
                client_msg_id: new.client_msg_id,
                text: MessageText::from_stored(get(&row, "body")?),
                sent_at: time_col(&row, "created_at")?,
            },
            duplicate: true,
        }),
        Ok(Some(row)) => Ok(Appended {
            message: Message {
                conversation_id: new.conversation_id,
                seq: seq_col(&row, "seq")?,
                id,
                sender: new.sender,
                client_msg_id: new.client_msg_id,
                text: new.text,
                sent_at: now,
            },
            duplicate: false,
        }),
        Ok(None) => Err(StoreError::Corrupt(format!(
            "conversation {} does not exist",
            new.conversation_id
        ))),
        // A copy of this send committed while this one waited for the lock: the
        // statement rolled back whole, so the seq was not burnt; answer with the
        // original.
        Err(StoreError::Conflict) => {
            let original = sqlx::query(FIND_SENT)
                .bind(new.conversation_id.0)
                .bind(new.sender.id.0)
                .bind(new.client_msg_id.as_str())
                .fetch_optional(pool)
                .await
                .map_err(classify)?;
            match original.as_ref().map(message_from_row).transpose()? {
                Some(message) => Ok(Appended {
                    message,
                    duplicate: true,
                }),
                None => Err(StoreError::Corrupt(format!(
                    "unique violation on a send to {} without a stored original",
                    new.conversation_id
                ))),
            }
        }
        Err(e) => Err(e),
    }
}

pub(super) async fn advance_one(
    pool: &PgPool,
    write: ReceiptWrite,
) -> Result<Option<ReceiptUpdate>, StoreError> {
    let ReceiptWrite {
        conversation,
        user,
        delivered: delivered_seq,
        read: read_seq,
    } = write;
    // One statement: clamp to last_seq, only forward, read implies delivered. The
    // WHERE skips the write when nothing would move; then the row is read as is.
    let row = sqlx::query(
        "UPDATE members m \
         SET read_seq = GREATEST(m.read_seq, LEAST($4, c.last_seq)), \
             delivered_seq = GREATEST(m.delivered_seq, LEAST($3, c.last_seq), LEAST($4, c.last_seq)) \
         FROM conversations c, users u \
         WHERE m.conversation_id = $1 AND m.user_id = $2 \
           AND c.id = m.conversation_id AND u.id = m.user_id \
           AND (LEAST($4, c.last_seq) > m.read_seq \
                OR GREATEST(LEAST($3, c.last_seq), LEAST($4, c.last_seq)) > m.delivered_seq) \
         RETURNING m.conversation_id, m.user_id, u.name AS user_name, m.delivered_seq, m.read_seq",
    )
    .bind(conversation.0)
    .bind(user.0)
    .bind(seq_param(delivered_seq))
    .bind(seq_param(read_seq))
    .fetch_optional(pool)
    .await
    .map_err(classify)?;
    if let Some(row) = row {
        return Ok(Some(ReceiptUpdate {
            receipt: receipt_from_row(&row)?,
            changed: true,
        }));
    }
    let row = sqlx::query(MEMBERSHIP)
        .bind(conversation.0)
        .bind(user.0)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    Ok(row
        .as_ref()
        .map(receipt_from_row)
        .transpose()?
        .map(|receipt| ReceiptUpdate {
            receipt,
            changed: false,
        }))
}

/// Many sends, at most one per conversation, in one statement: the one-row statement
/// above over arrays. Conversation rows are locked in id order first (the one-time
/// `count(*)` over `locked` runs before the update touches a row), so groups on several
/// replicas never wait on each other in a cycle; the sender's row in `members` moves as
/// in `APPEND`. One row per input comes back (`ord`), or none for a send to a
/// conversation that does not exist. No step joins two of the statement's own CTEs:
/// each passes on what the next needs through `RETURNING`. The committers allow only
/// nested loops, and a nested loop over two CTEs is quadratic in the group, which made
/// large groups slow, and a server that fell behind slower still.
const APPEND_BATCH: &str = "WITH input AS ( \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
             $6::timestamptz[]) WITH ORDINALITY \
             AS t(conversation_id, id, sender_id, client_msg_id, body, created_at, ord)), \
     prior AS ( \
         SELECT i.ord, m.seq, m.id, m.body, m.created_at FROM input i \
         CROSS JOIN LATERAL ( \
             SELECT seq, id, body, created_at FROM messages \
             WHERE conversation_id = i.conversation_id AND sender_id = i.sender_id \
               AND client_msg_id = i.client_msg_id) m), \
     fresh AS ( \
         SELECT i.* FROM input i WHERE NOT EXISTS (SELECT 1 FROM prior p WHERE p.ord = i.ord)), \
     locked AS ( \
         SELECT c.id FROM conversations c WHERE c.id IN (SELECT conversation_id FROM fresh) \
         ORDER BY c.id FOR UPDATE), \
     c AS ( \
         UPDATE conversations SET last_seq = conversations.last_seq + 1, \
             last_message_at = f.created_at, last_message_id = f.id, \
             last_sender_id = f.sender_id, last_client_msg_id = f.client_msg_id, \
             last_body = f.body \
         FROM fresh f \
         WHERE conversations.id = f.conversation_id \
           AND (SELECT count(*) FROM locked) >= 0 \
         RETURNING f.ord, conversations.id AS conversation_id, conversations.last_seq AS seq, \
             f.id, f.sender_id, f.client_msg_id, f.body, f.created_at), \
     m AS ( \
         INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body, created_at) \
         SELECT conversation_id, seq, id, sender_id, client_msg_id, body, created_at FROM c), \
     own AS ( \
         UPDATE members SET \
             delivered_seq = CASE WHEN members.read_seq = c.seq - 1 \
                 THEN GREATEST(members.delivered_seq, c.seq) ELSE members.delivered_seq END, \
             read_seq = CASE WHEN members.read_seq = c.seq - 1 THEN c.seq ELSE members.read_seq END \
         FROM c WHERE members.conversation_id = c.conversation_id \
           AND members.user_id = c.sender_id) \
     SELECT ord, seq, NULL::uuid AS id, NULL::text AS body, \
            NULL::timestamptz AS created_at, false AS duplicate FROM c \
     UNION ALL \
     SELECT ord, seq, id, body, created_at, true FROM prior";

/// Many receipts, at most one per member, in one statement: `ADVANCE` over arrays.
/// Returns every member's row as the statement found it, and the moved rows again as
/// they are after it (`changed`); joining the two in SQL would be a nested loop over
/// two CTEs (see `APPEND_BATCH`).
const ADVANCE_BATCH: &str = "WITH input AS ( \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) \
             WITH ORDINALITY AS t(conversation_id, user_id, delivered, read, ord)), \
     moved AS ( \
         UPDATE members m \
         SET read_seq = GREATEST(m.read_seq, LEAST(i.read, c.last_seq)), \
             delivered_seq = GREATEST(m.delivered_seq, LEAST(i.delivered, c.last_seq), \
                 LEAST(i.read, c.last_seq)) \
         FROM input i, conversations c \
         WHERE m.conversation_id = i.conversation_id AND m.user_id = i.user_id \
           AND c.id = m.conversation_id \
           AND (LEAST(i.read, c.last_seq) > m.read_seq \
                OR GREATEST(LEAST(i.delivered, c.last_seq), LEAST(i.read, c.last_seq)) \
                   > m.delivered_seq) \
         RETURNING i.ord, m.conversation_id, m.user_id, m.delivered_seq, m.read_seq) \
     SELECT moved.ord, moved.conversation_id, moved.user_id, u.name AS user_name, \
            moved.delivered_seq, moved.read_seq, true AS changed \
     FROM moved JOIN users u ON u.id = moved.user_id \
     UNION ALL \
     SELECT i.ord, m.conversation_id, m.user_id, u.name AS user_name, m.delivered_seq, \
            m.read_seq, false AS changed \
     FROM input i \
     JOIN members m ON m.conversation_id = i.conversation_id AND m.user_id = i.user_id \
     JOIN users u ON u.id = m.user_id";

#[async_trait]
impl ApplyBatch<AppendWrite> for Writer {
    async fn apply(&self, mut batch: Vec<AppendWrite>) -> Vec<Result<Appended, StoreError>> {
        if batch.len() == 1
            && let Some(write) = batch.pop()
        {
            return vec![append_one(&self.pool, write).await];
        }
        match append_batch(&self.pool, &batch).await {
            Ok(rows) => answers(batch, rows),
            Err(e) => {
                tracing::debug!(error = %e, size = batch.len(), "send group failed; one by one");
                metrics::counter!(crate::metrics::GROUP_FALLBACKS, "write" => "send").increment(1);
                let mut results = Vec::with_capacity(batch.len());
                for write in batch {
                    results.push(append_one(&self.pool, write).await);
                }
                results
            }
        }
    }
}

/// What a group statement said about one send.
struct Stored {
    seq: u64,
    /// The original's id, text and time when the send was a retry.
    original: Option<(MessageId, String, OffsetDateTime)>,
}

async fn append_batch(
    pool: &PgPool,
    batch: &[AppendWrite],
) -> Result<Vec<Option<Stored>>, StoreError> {
    let mut conversations = Vec::with_capacity(batch.len());
    let mut ids = Vec::with_capacity(batch.len());
    let mut senders = Vec::with_capacity(batch.len());
    let mut keys = Vec::with_capacity(batch.len());
    let mut bodies = Vec::with_capacity(batch.len());
    let mut times = Vec::with_capacity(batch.len());
    for w in batch {
        conversations.push(w.new.conversation_id.0);
        ids.push(w.id.0);
        senders.push(w.new.sender.id.0);
        keys.push(w.new.client_msg_id.as_str());
        bodies.push(w.new.text.as_str());
        times.push(to_time(w.at)?);
    }
    let rows = sqlx::query(APPEND_BATCH)
        .bind(&conversations)
        .bind(&ids)
        .bind(&senders)
        .bind(&keys)
        .bind(&bodies)
        .bind(&times)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    let mut out: Vec<Option<Stored>> = (0..batch.len()).map(|_| None).collect();
    for row in &rows {
        let slot = answer_slot(&mut out, row)?;
        let original = if get::<bool>(row, "duplicate")? {
            Some((
                MessageId(get::<Uuid>(row, "id")?),
                get::<String>(row, "body")?,
                get::<OffsetDateTime>(row, "created_at")?,
            ))
        } else {
            None
        };
        *slot = Some(Stored {
            seq: seq_col(row, "seq")?,
            original,
        });
    }
    Ok(out)
}

fn answers(
    batch: Vec<AppendWrite>,
    rows: Vec<Option<Stored>>,
) -> Vec<Result<Appended, StoreError>> {
    batch
        .into_iter()
        .zip(rows)
        .map(|(AppendWrite { id, at, new }, stored)| {
            let Some(stored) = stored else {
                return Err(StoreError::Corrupt(format!(
                    "conversation {} does not exist",
                    new.conversation_id
                )));
            };
            let (id, text, sent_at, duplicate) = match stored.original {
                Some((id, body, created_at)) => (
                    id,
                    MessageText::from_stored(body),
                    crate::domain::Timestamp::from(std::time::SystemTime::from(created_at)),
                    true,
                ),
                None => (id, new.text, at, false),
            };
            Ok(Appended {
                message: Message {
                    conversation_id: new.conversation_id,
                    seq: stored.seq,
                    id,
                    sender: new.sender,
                    client_msg_id: new.client_msg_id,
                    text,
                    sent_at,
                },
                duplicate,
            })
        })
        .collect()
}

#[async_trait]
impl ApplyBatch<ReceiptWrite> for Writer {
    async fn apply(
        &self,
        mut batch: Vec<ReceiptWrite>,
    ) -> Vec<Result<Option<ReceiptUpdate>, StoreError>> {
        if batch.len() == 1
            && let Some(write) = batch.pop()
        {
            return vec![advance_one(&self.pool, write).await];
        }
        match advance_batch(&self.pool, &batch).await {
            Ok(updates) => updates.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::debug!(error = %e, size = batch.len(), "receipt group failed; one by one");
                metrics::counter!(crate::metrics::GROUP_FALLBACKS, "write" => "receipt")
                    .increment(1);
                let mut results = Vec::with_capacity(batch.len());
                for write in batch {
                    results.push(advance_one(&self.pool, write).await);
                }
                results
            }
        }
    }
}

async fn advance_batch(
    pool: &PgPool,
    batch: &[ReceiptWrite],
) -> Result<Vec<Option<ReceiptUpdate>>, StoreError> {
    let conversations: Vec<Uuid> = batch.iter().map(|w| w.conversation.0).collect();
    let users: Vec<Uuid> = batch.iter().map(|w| w.user.0).collect();
    let delivered: Vec<i64> = batch.iter().map(|w| seq_param(w.delivered)).collect();
    let read: Vec<i64> = batch.iter().map(|w| seq_param(w.read)).collect();
    let rows = sqlx::query(ADVANCE_BATCH)
        .bind(&conversations)
        .bind(&users)
        .bind(&delivered)
        .bind(&read)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    let mut out: Vec<Option<ReceiptUpdate>> = (0..batch.len()).map(|_| None).collect();
    for row in &rows {
        let slot = answer_slot(&mut out, row)?;
        // A member that moved has two rows: the moved one, and the one the statement's
        // snapshot read, as it was before. The moved one is the answer.
        if slot.as_ref().is_some_and(|answer| answer.changed) {
            continue;
        }
        *slot = Some(ReceiptUpdate {
            receipt: Receipt {
                conversation_id: ConversationId(get(row, "conversation_id")?),
                user: user_ref(row, "user_id", "user_name")?,
                delivered_seq: seq_col(row, "delivered_seq")?,
                read_seq: seq_col(row, "read_seq")?,
            },
            changed: get::<bool>(row, "changed")?,
        });
    }
    Ok(out)
}

/// Where the answer in `row` goes: its input's place (`ord`, from 1).
fn answer_slot<'a, T>(
    out: &'a mut [Option<T>],
    row: &PgRow,
) -> Result<&'a mut Option<T>, StoreError> {
    let ord = get::<i64>(row, "ord")?;
    usize::try_from(ord - 1)
        .ok()
        .and_then(|i| out.get_mut(i))
        .ok_or_else(|| StoreError::Corrupt(format!("group answer for input {ord}")))
}
