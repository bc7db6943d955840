//! What the push pipeline keeps in Postgres (see `store::push`): targets, settings, the
//! pushed watermark, server keys and the embedded push queue.
//!
//! Several replicas share the queue: a claim locks the rows it leases with
//! `FOR UPDATE SKIP LOCKED`, so two workers never lease the same row and never wait for
//! each other.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{
    PostgresStore, classify, get, last_message, seq_col, seq_param, time_col, to_time, user_ref,
};
use crate::domain::{ConversationId, DeviceId, PushTargetId, Timestamp, UserId};
use crate::store::StoreError;
use crate::store::push::{DeadPush, PushContext, PushEndpoint, PushStore, PushTarget, QueuedPush};

/// Stores a target, or replaces the keys and device of the user's target with the same
/// URL (keeping its id and created_at), and returns it with its device's name. The
/// session exists: the insert's foreign key check locked it against a logout.
const ADD_TARGET: &str = "WITH t AS ( \
         INSERT INTO push_targets \
             (id, user_id, device_id, kind, url, secret, p256dh, auth, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (user_id, url) DO UPDATE SET device_id = EXCLUDED.device_id, \
             kind = EXCLUDED.kind, secret = EXCLUDED.secret, p256dh = EXCLUDED.p256dh, \
             auth = EXCLUDED.auth \
         RETURNING *) \
     SELECT t.id, t.user_id, t.device_id, s.device_name, t.kind, t.url, t.secret, t.p256dh, \
            t.auth, t.created_at \
     FROM t JOIN sessions s ON s.id = t.device_id";

const TARGETS: &str = "SELECT t.id, t.user_id, t.device_id, s.device_name, t.kind, t.url, \
            t.secret, t.p256dh, t.auth, t.created_at \
     FROM push_targets t JOIN sessions s ON s.id = t.device_id \
     WHERE t.user_id = $1 ORDER BY t.created_at DESC, t.id DESC";

/// Everything a push worker reads about one member, in one statement. The newest message
/// comes from the conversation row's preview columns, as in `conversations_of`; the
/// badge sums the member's unread messages over all their conversations.
const PUSH_CONTEXT: &str = "SELECT m.user_id, ru.name AS user_name, c.last_seq, \
            m.delivered_seq, m.read_seq, m.pushed_seq, m.muted, ru.push_content_free, \
            (SELECT coalesce(sum(ac.last_seq - am.read_seq), 0)::bigint \
             FROM members am JOIN conversations ac ON ac.id = am.conversation_id \
             WHERE am.user_id = m.user_id) AS total_unread, \
            c.last_message_id, c.last_sender_id, s.name AS last_sender_name, \
            c.last_client_msg_id, c.last_body, c.last_message_at \
     FROM members m \
     JOIN conversations c ON c.id = m.conversation_id \
     JOIN users ru ON ru.id = m.user_id \
     LEFT JOIN users s ON s.id = c.last_sender_id \
     WHERE m.conversation_id = $1 AND m.user_id = $2";

/// Leases the earliest due rows that nobody holds (or whose holder's lease ran out).
/// Rows another replica is claiming right now are skipped, not waited for; a row whose
/// claim committed meanwhile is re-checked on its new version, so its fresh lease keeps
/// it out.
const CLAIM: &str = "UPDATE push_jobs SET lease_until = $1, leased_by = $2 \
     WHERE id IN (SELECT id FROM push_jobs \
                  WHERE due_at <= $3 AND (lease_until IS NULL OR lease_until < $3) \
                  ORDER BY due_at LIMIT $4 \
                  FOR UPDATE SKIP LOCKED) \
     RETURNING id, coalesce_key, payload, due_at";

/// Makes a row wait again. It keeps absorbing bursts under its coalesce key, unless a
/// newer row already waits under that key (queued while this one was leased): then it
/// gives the key up, as two waiting rows cannot share it. Both run; the pushed
/// watermark makes the later one a no-op if there is nothing new.
const RESCHEDULE: &str = "UPDATE push_jobs SET payload = $1, due_at = $2, lease_until = NULL, \
         leased_by = NULL, \
         coalesce_key = CASE WHEN EXISTS (SELECT 1 FROM push_jobs w \
             WHERE w.coalesce_key = push_jobs.coalesce_key AND w.lease_until IS NULL \
               AND w.id <> push_jobs.id) \
             THEN NULL ELSE coalesce_key END \
     WHERE id = $3";

/// `RESCHEDULE` when a row under the same key was queued after its check (another
/// replica's insert committing in between): the row gives the key up unconditionally.
const RESCHEDULE_WITHOUT_KEY: &str = "UPDATE push_jobs SET payload = $1, due_at = $2, \
         lease_until = NULL, leased_by = NULL, coalesce_key = NULL \
     WHERE id = $3";

/// Moves a row to the dead letters: one statement, so one transaction. The dead letter
/// is kept even when the row is gone (a queue other than this table, or a second call):
/// a repeat changes nothing.
const DEAD_LETTER: &str = "WITH gone AS (DELETE FROM push_jobs WHERE id = $1) \
     INSERT INTO push_dead_letters (id, payload, attempts, error, died_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING";

fn target_from_row(row: &PgRow) -> Result<PushTarget, StoreError> {
    let id: Uuid = get(row, "id")?;
    let url: String = get(row, "url")?;
    let endpoint = match (
        get::<String>(row, "kind")?.as_str(),
        get::<Option<String>>(row, "secret")?,
        get::<Option<Vec<u8>>>(row, "p256dh")?,
        get::<Option<Vec<u8>>>(row, "auth")?,
    ) {
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
        user: UserId(get(row, "user_id")?),
        device: DeviceId(get(row, "device_id")?),
        device_name: get(row, "device_name")?,
        endpoint,
        created_at: time_col(row, "created_at")?,
    })
}

fn queued_from_row(row: &PgRow) -> Result<QueuedPush, StoreError> {
    Ok(QueuedPush {
        id: get(row, "id")?,
        coalesce_key: get(row, "coalesce_key")?,
        payload: get(row, "payload")?,
        due_at: time_col(row, "due_at")?,
    })
}

#[async_trait]
impl PushStore for PostgresStore {
    // --- targets and settings ---

    async fn add_push_target(&self, target: &PushTarget) -> Result<PushTarget, StoreError> {
        let (secret, p256dh, auth) = match &target.endpoint {
            PushEndpoint::Webhook { secret, .. } => (Some(secret.as_str()), None, None),
            PushEndpoint::WebPush { p256dh, auth, .. } => {
                (None, Some(p256dh.as_slice()), Some(auth.as_slice()))
            }
        };
        let row = sqlx::query(ADD_TARGET)
            .bind(target.id.0)
            .bind(target.user.0)
            .bind(target.device.0)
            .bind(target.endpoint.kind())
            .bind(target.endpoint.url())
            .bind(secret)
            .bind(p256dh)
            .bind(auth)
            .bind(to_time(target.created_at)?)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        target_from_row(&row)
    }

    async fn push_targets(&self, user: UserId) -> Result<Vec<PushTarget>, StoreError> {
        let rows = sqlx::query(TARGETS)
            .bind(user.0)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(target_from_row).collect()
    }

    async fn remove_push_target(&self, user: UserId, id: PushTargetId) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM push_targets WHERE id = $1 AND user_id = $2")
            .bind(id.0)
            .bind(user.0)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_content_free(&self, user: UserId, content_free: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET push_content_free = $1 WHERE id = $2")
            .bind(content_free)
            .bind(user.0)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn content_free(&self, user: UserId) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT push_content_free FROM users WHERE id = $1")
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        // An unknown user has the default.
        row.map_or(Ok(false), |row| get(&row, "push_content_free"))
    }

    async fn set_muted(
        &self,
        conversation: ConversationId,
        user: UserId,
        muted: bool,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE members SET muted = $1 WHERE conversation_id = $2 AND user_id = $3",
        )
        .bind(muted)
        .bind(conversation.0)
        .bind(user.0)
        .execute(&self.pool)
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
            .bind(conversation.0)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let last_seq = seq_col(&row, "last_seq")?;
        Ok(Some(PushContext {
            recipient: user_ref(&row, "user_id", "user_name")?,
            last_seq,
            delivered_seq: seq_col(&row, "delivered_seq")?,
            read_seq: seq_col(&row, "read_seq")?,
            pushed_seq: seq_col(&row, "pushed_seq")?,
            muted: get(&row, "muted")?,
            content_free: get(&row, "push_content_free")?,
            last_message: last_message(&row, conversation, last_seq)?,
            total_unread: seq_col(&row, "total_unread")?,
        }))
    }

    async fn advance_pushed(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: u64,
    ) -> Result<bool, StoreError> {
        // Two workers racing: the second waits for the first's row lock, then sees its
        // watermark and changes nothing.
        let done = sqlx::query(
            "UPDATE members SET pushed_seq = $1 \
             WHERE conversation_id = $2 AND user_id = $3 AND pushed_seq < $1",
        )
        .bind(seq_param(seq))
        .bind(conversation.0)
        .bind(user.0)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected() > 0)
    }

    async fn server_key(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO server_keys (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(to_time(Timestamp::now())?)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        // A second statement, so a second snapshot: it sees the key of a replica whose
        // insert won the race, which one statement's snapshot would not.
        let row = sqlx::query("SELECT value FROM server_keys WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        get(&row, "value")
    }

    // --- the embedded queue ---

    async fn enqueue_push(&self, job: &QueuedPush) -> Result<bool, StoreError> {
        // No conflict target: the one to skip is the partial unique index on waiting
        // rows' coalesce keys.
        let done = sqlx::query(
            "INSERT INTO push_jobs (id, coalesce_key, payload, due_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(job.id)
        .bind(job.coalesce_key.as_deref())
        .bind(&job.payload)
        .bind(to_time(job.due_at)?)
        .execute(&self.pool)
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
            .bind(to_time(lease_until)?)
            .bind(worker)
            .bind(to_time(now)?)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
        sqlx::query("DELETE FROM push_jobs WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
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
        let due_at = to_time(due_at)?;
        let kept = sqlx::query(RESCHEDULE)
            .bind(payload)
            .bind(due_at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(classify);
        match kept {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict) => {
                sqlx::query(RESCHEDULE_WITHOUT_KEY)
                    .bind(payload)
                    .bind(due_at)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn dead_letter_push(
        &self,
        id: Uuid,
        payload: &str,
        attempts: u32,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(DEAD_LETTER)
            .bind(id)
            .bind(payload)
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
            .bind(error)
            .bind(to_time(Timestamp::now())?)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn dead_pushes(&self, limit: u32) -> Result<Vec<DeadPush>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, payload, attempts, error, died_at FROM push_dead_letters \
             ORDER BY died_at DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let attempts: i32 = get(row, "attempts")?;
                Ok(DeadPush {
                    id: get(row, "id")?,
                    payload: get(row, "payload")?,
                    attempts: u32::try_from(attempts)
                        .map_err(|_| StoreError::Corrupt(format!("attempts {attempts}")))?,
                    error: get(row, "error")?,
                    died_at: time_col(row, "died_at")?,
                })
            })
            .collect()
    }
}
