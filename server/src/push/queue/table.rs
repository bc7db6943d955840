//! The push queue as a table in the store: the embedded default, and Postgres without
//! Redis. Rows are leased to a worker (`claim_pushes`), so a worker that dies leaves
//! its rows to be claimed again when the lease runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::{Claimed, DeadLetter, PushQueue, QueueError};
use crate::domain::Timestamp;
use crate::push::job::PushJob;
use crate::store::{QueuedPush, Store};

pub struct TableQueue {
    store: Arc<dyn Store>,
    worker: String,
    lease: Duration,
    /// Coalesce keys this process queued, each with the due time of its row: until then
    /// no worker can have claimed the row, so another burst for the key is absorbed
    /// without a write (on SQLite a write is an fsync).
    waiting: Mutex<HashMap<String, Timestamp>>,
}

impl TableQueue {
    pub fn new(store: Arc<dyn Store>, worker: String, lease: Duration) -> Self {
        TableQueue {
            store,
            worker,
            lease,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    fn known_waiting(&self, key: &str, now: Timestamp) -> bool {
        self.waiting
            .lock()
            .is_ok_and(|waiting| waiting.get(key).is_some_and(|due| *due > now))
    }

    fn remember_waiting(&self, key: String, due: Timestamp) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(key, due);
        }
    }
}

fn row_id(claimed: &Claimed) -> Uuid {
    // Handles are the rows' ids, which are the jobs' ids.
    Uuid::parse_str(&claimed.handle).unwrap_or(claimed.job.id)
}

#[async_trait]
impl PushQueue for TableQueue {
    async fn enqueue(&self, job: &PushJob, due: Timestamp) -> Result<bool, QueueError> {
        let key = job.coalesce_key();
        if let Some(key) = &key
            && self.known_waiting(key, Timestamp::now())
        {
            return Ok(false);
        }
        let queued = self
            .store
            .enqueue_push(&QueuedPush {
                id: job.id,
                coalesce_key: key.clone(),
                payload: job.encode(),
                due_at: due,
            })
            .await?;
        if queued && let Some(key) = key {
            self.remember_waiting(key, due);
        }
        Ok(queued)
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, QueueError> {
        let now = Timestamp::now();
        let rows = self
            .store
            .claim_pushes(
                &self.worker,
                now,
                now.after(self.lease),
                u32::try_from(limit).unwrap_or(u32::MAX),
            )
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            match PushJob::decode(&row.payload) {
                Ok(job) => claimed.push(Claimed {
                    handle: row.id.to_string(),
                    job,
                }),
                Err(e) => {
                    // Not a job this version understands: keep it for an operator
                    // rather than retrying it forever.
                    tracing::error!(id = %row.id, error = %e, "undecodable push job");
                    self.store
                        .dead_letter_push(row.id, &row.payload, 0, &format!("undecodable: {e}"))
                        .await?;
                }
            }
        }
        // Forgotten here, off the send path: claimed keys, and keys whose rows are due
        // (another process's worker may have claimed those).
        if let Ok(mut waiting) = self.waiting.lock() {
            for c in &claimed {
                if let Some(key) = c.job.coalesce_key() {
                    waiting.remove(&key);
                }
            }
            waiting.retain(|_, due| *due > now);
        }
        Ok(claimed)
    }

    async fn done(&self, claimed: &Claimed) -> Result<(), QueueError> {
        Ok(self.store.finish_push(row_id(claimed)).await?)
    }

    async fn retry(
        &self,
        claimed: &Claimed,
        next: &PushJob,
        due: Timestamp,
    ) -> Result<(), QueueError> {
        Ok(self
            .store
            .reschedule_push(row_id(claimed), &next.encode(), due)
            .await?)
    }

    async fn dead_letter(
        &self,
        claimed: &Claimed,
        attempts: u32,
        error: &str,
    ) -> Result<(), QueueError> {
        Ok(self
            .store
            .dead_letter_push(row_id(claimed), &claimed.job.encode(), attempts, error)
            .await?)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .store
            .dead_pushes(u32::try_from(limit).unwrap_or(u32::MAX))
            .await?
            .into_iter()
            .map(|d| DeadLetter {
                job: d.payload,
                attempts: d.attempts,
                error: d.error,
                died_at: d.died_at,
            })
            .collect())
    }
}
