//! What the push pipeline keeps in SQLite (see `store::push`): targets, settings, the
//! pushed watermark, server keys and the embedded push queue.
//!
//! Every write goes through the one writer connection, like the rest of the store; so
//! the queue needs no row locks: a claim is one statement, and no other write runs
//! while it does.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::{SqliteStore, classify, message_from_row, seq_col, seq_param, string_col, uuid_col};
use crate::domain::{ConversationId, DeviceId, PushTargetId, Timestamp, UserId, UserName, UserRef};
use crate::store::StoreError;
use crate::store::push::{DeadPush, PushContext, PushEndpoint, PushStore, PushTarget, QueuedPush};

/// A statement reading targets (with their device's name), filtered by `$filter`.
macro_rules! select_targets {
    ($filter:literal) => {
        concat!(
            "SELECT t.id, t.user_id, t.device_id, s.device_name, t.kind, t.url, t.secret, \
             t.p256dh, t.auth, t.created_at \
             FROM push_targets t JOIN sessions s ON s.id = t.device_id WHERE ",
            $filter
        )
    };
}

/// Everything a push worker reads about one member, in one statement. The newest message
/// is read by `seq = last_seq` (SQLite keeps no copy of it on the conversation), under the
/// column names `message_from_row` expects; the badge sums the member's unread messages
/// over all their conversations.
const PUSH_CONTEXT: &str = "SELECT m.conversation_id, m.user_id, ru.name AS user_name, \
            c.last_seq, m.delivered_seq, m.read_seq, m.pushed_seq, m.muted, \
            ru.push_content_free, \
            (SELECT coalesce(sum(ac.last_seq - am.read_seq), 0) \
             FROM members am JOIN conversations ac ON ac.id = am.conversation_id \
             WHERE am.user_id = m.user_id) AS total_unread, \
            lm.seq, lm.id, lm.sender_id, su.name AS sender_name, lm.client_msg_id, lm.body, \
            lm.created_at \
     FROM members m \
     JOIN conversations c ON c.id = m.conversation_id \
     JOIN users ru ON ru.id = m.user_id \
     LEFT JOIN messages lm ON lm.conversation_id = c.id AND lm.seq = c.last_seq \
     LEFT JOIN users su ON su.id = lm.sender_id \
     WHERE m.conversation_id = ?1 AND m.user_id = ?2";

/// Leases the earliest due rows that nobody holds (or whose holder's lease ran out).
const CLAIM: &str = "UPDATE push_jobs SET lease_until = ?1, leased_by = ?2 \
     WHERE id IN (SELECT id FROM push_jobs \
                  WHERE due_at <= ?3 AND (lease_until IS NULL OR lease_until < ?3) \
                  ORDER BY due_at LIMIT ?4) \
     RETURNING id, coalesce_key, payload, due_at";

/// Makes a row wait again. It keeps absorbing bursts under its coalesce key, unless a
/// newer row already waits under that key (queued while this one was leased): then it
/// gives the key up, as two waiting rows cannot share it. Both run; the pushed
/// watermark makes the later one a no-op if there is nothing new.
const RESCHEDULE: &str = "UPDATE push_jobs SET payload = ?1, due_at = ?2, lease_until = NULL, \
         leased_by = NULL, \
         coalesce_key = CASE WHEN EXISTS (SELECT 1 FROM push_jobs w \
             WHERE w.coalesce_key = push_jobs.coalesce_key AND w.lease_until IS NULL \
               AND w.id <> push_jobs.id) \
             THEN NULL ELSE coalesce_key END \
     WHERE id = ?3";

fn time_col(row: &SqliteRow, col: &str) -> Result<Timestamp, StoreError> {
    Ok(Timestamp(row.try_get(col).map_err(StoreError::Database)?))
}

fn bool_col(row: &SqliteRow, col: &str) -> Result<bool, StoreError> {
    row.try_get(col).map_err(StoreError::Database)
}

fn target_from_row(row: &SqliteRow) -> Result<PushTarget, StoreError> {
    let id = uuid_col(row, "id")?;
    let url = string_col(row, "url")?;
    let secret: Option<String> = row.try_get("secret").map_err(StoreError::Database)?;
    let p256dh: Option<Vec<u8>> = row.try_get("p256dh").map_err(StoreError::Database)?;
    let auth: Option<Vec<u8>> = row.try_get("auth").map_err(StoreError::Database)?;
    let endpoint = match (string_col(row, "kind")?.as_str(), secret, p256dh, auth) {
        ("webhook", Some(secret), None, None) => PushEndpoint::Webhook { url, secret },
        ("web_push", None, Some(p256dh), Some(auth)) => PushEndpoint::WebPush {
            endpoint: url,
            p256dh,
            auth,
        },
        (kind, ..) => {
            return Err(StoreError::Corrupt(format!(
                "push target {id} of kind {kind} has the wrong keys"
            )));
        }
    };
    Ok(PushTarget {
        id: PushTargetId(id),
        user: UserId(uuid_col(row, "user_id")?),
        device: DeviceId(uuid_col(row, "device_id")?),
        device_name: string_col(row, "device_name")?,
        endpoint,
        created_at: time_col(row, "created_at")?,
    })
}

fn queued_from_row(row: &SqliteRow) -> Result<QueuedPush, StoreError> {
    Ok(QueuedPush {
        id: uuid_col(row, "id")?,
        coalesce_key: row.try_get("coalesce_key").map_err(StoreError::Database)?,
        payload: string_col(row, "payload")?,
        due_at: time_col(row, "due_at")?,
    })
}

#[async_trait]
impl PushStore for SqliteStore {
    // --- targets and settings ---

    async fn add_push_target(&self, target: &PushTarget) -> Result<PushTarget, StoreError> {
        let (secret, p256dh, auth) = match &target.endpoint {
            PushEndpoint::Webhook { secret, .. } => (Some(secret.as_str()), None, None),
            PushEndpoint::WebPush { p256dh, auth, .. } => {
                (None, Some(p256dh.as_slice()), Some(auth.as_slice()))
            }
        };
        // The upsert and the read of the device's name in one transaction, so a logout
        // cannot come between them.
        let mut tx = self.writer.begin().await.map_err(classify)?;
        sqlx::query(
            "INSERT INTO push_targets \
                 (id, user_id, device_id, kind, url, secret, p256dh, auth, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (user_id, url) DO UPDATE SET device_id = excluded.device_id, \
                 kind = excluded.kind, secret = excluded.secret, p256dh = excluded.p256dh, \
                 auth = excluded.auth",
        )
        .bind(target.id.to_string())
        .bind(target.user.to_string())
        .bind(target.device.to_string())
        .bind(target.endpoint.kind())
        .bind(target.endpoint.url())
        .bind(secret)
        .bind(p256dh)
        .bind(auth)
        .bind(target.created_at.micros())
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        // Read back by (user, url): on a replace the stored id and created_at are the
        // first registration's.
        let row = sqlx::query(select_targets!("t.user_id = ? AND t.url = ?"))
            .bind(target.user.to_string())
            .bind(target.endpoint.url())
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        let stored = target_from_row(&row)?;
        tx.commit().await.map_err(classify)?;
        Ok(stored)
    }

    async fn push_targets(&self, user: UserId) -> Result<Vec<PushTarget>, StoreError> {
        let rows = sqlx::query(select_targets!(
            "t.user_id = ? ORDER BY t.created_at DESC, t.id DESC"
        ))
        .bind(user.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.iter().map(target_from_row).collect()
    }

    async fn remove_push_target(&self, user: UserId, id: PushTargetId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM push_targets WHERE id = ? AND user_id = ?")
            .bind(id.to_string())
            .bind(user.to_string())
            .execute(&self.writer)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_content_free(&self, user: UserId, content_free: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET push_content_free = ? WHERE id = ?")
            .bind(content_free)
            .bind(user.to_string())
            .execute(&self.writer)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn content_free(&self, user: UserId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT push_content_free FROM users WHERE id = ?")
            .bind(user.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?;
        // An unknown user has the default.
        row.map_or(Ok(false), |row| bool_col(&row, "push_content_free"))
    }

    async fn set_muted(
        &self,
        conversation: ConversationId,
        user: UserId,
        muted: bool,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE members SET muted = ? WHERE conversation_id = ? AND user_id = ?")
                .bind(muted)
                .bind(conversation.to_string())
                .bind(user.to_string())
                .execute(&self.writer)
                .await
                .map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn push_context(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<PushContext>, StoreError> {
        let row = sqlx::query(PUSH_CONTEXT)
            .bind(conversation.to_string())
            .bind(user.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?;
        let Some(row) = row else {
            return Ok(None);
        };
        // No message row: the conversation is empty.
        let has_message = row
            .try_get::<Option<i64>, _>("seq")
            .map_err(StoreError::Database)?
            .is_some();
        let last_message = if has_message {
            Some(message_from_row(&row)?)
        } else {
            None
        };
        Ok(Some(PushContext {
            recipient: UserRef {
                id: UserId(uuid_col(&row, "user_id")?),
                name: UserName::from_stored(string_col(&row, "user_name")?),
            },
            last_seq: seq_col(&row, "last_seq")?,
            delivered_seq: seq_col(&row, "delivered_seq")?,
            read_seq: seq_col(&row, "read_seq")?,
            pushed_seq: seq_col(&row, "pushed_seq")?,
            muted: bool_col(&row, "muted")?,
            content_free: bool_col(&row, "push_content_free")?,
            last_message,
            total_unread: seq_col(&row, "total_unread")?,
        }))
    }

    async fn advance_pushed(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE members SET pushed_seq = ?1 \
             WHERE conversation_id = ?2 AND user_id = ?3 AND pushed_seq < ?1",
        )
        .bind(seq_param(seq))
        .bind(conversation.to_string())
        .bind(user.to_string())
        .execute(&self.writer)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn server_key(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO server_keys (name, value, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(Timestamp::now().micros())
        .execute(&self.writer)
        .await
        .map_err(classify)?;
        // Whoever wrote first, this is the key now (committed, so the readers see it).
        let row = sqlx::query("SELECT value FROM server_keys WHERE name = ?")
            .bind(name)
            .fetch_one(&self.reader)
            .await
            .map_err(classify)?;
        string_col(&row, "value")
    }

    // --- the embedded queue ---

    async fn enqueue_push(&self, job: &QueuedPush) -> Result<bool, StoreError> {
        // No conflict target: the one to skip is the partial unique index on waiting
        // rows' coalesce keys.
        let done = sqlx::query(
            "INSERT INTO push_jobs (id, coalesce_key, payload, due_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(job.coalesce_key.as_deref())
        .bind(&job.payload)
        .bind(job.due_at.micros())
        .execute(&self.writer)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn claim_pushes(
        &self,
        worker: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedPush>, StoreError> {
        let rows = sqlx::query(CLAIM)
            .bind(lease_until.micros())
            .bind(worker)
            .bind(now.micros())
            .bind(i64::from(limit))
            .fetch_all(&self.writer)
            .await
            .map_err(classify)?;
        let mut claimed = rows
            .iter()
            .map(queued_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING does not keep the subquery's order.
        claimed.sort_by_key(|job| (job.due_at, job.id));
        Ok(claimed)
    }

    async fn finish_push(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM push_jobs WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn reschedule_push(
        &self,
        id: Uuid,
        payload: &str,
        due_at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(RESCHEDULE)
            .bind(payload)
            .bind(due_at.micros())
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn dead_letter_push(
        &self,
        id: Uuid,
        payload: &str,
        attempts: u32,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(classify)?;
        sqlx::query("DELETE FROM push_jobs WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        // Kept even when the row is gone (a queue other than this table, or a second
        // call): a repeat changes nothing.
        sqlx::query(
            "INSERT INTO push_dead_letters (id, payload, attempts, error, died_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.to_string())
        .bind(payload)
        .bind(i64::from(attempts))
        .bind(error)
        .bind(Timestamp::now().micros())
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(())
    }

    async fn dead_pushes(&self, limit: u32) -> Result<Vec<DeadPush>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, payload, attempts, error, died_at FROM push_dead_letters \
             ORDER BY died_at DESC, id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let attempts: i64 = row.try_get("attempts").map_err(StoreError::Database)?;
                Ok(DeadPush {
                    id: uuid_col(row, "id")?,
                    payload: string_col(row, "payload")?,
                    attempts: u32::try_from(attempts)
                        .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
                    error: string_col(row, "error")?,
                    died_at: time_col(row, "died_at")?,
                })
            })
            .collect()
    }
}
