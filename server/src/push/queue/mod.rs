//! The durable push queue: one trait, a Redis Stream behind it when replicas share
//! Redis, a table in the store otherwise.
//!
//! Both give the same guarantees: a queued job survives the process that queued it; a
//! claimed job belongs to one worker until done, retried or dead-lettered, or until
//! its lease runs out (the worker died), when any worker may claim it again; and a
//! burst job that is queued and not yet claimed absorbs further bursts for the same
//! (user, conversation).

mod redis;
mod table;

pub use redis::RedisQueue;
pub use table::TableQueue;

use async_trait::async_trait;

use super::job::PushJob;
use crate::domain::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// A job a worker holds, with what the queue needs to finish it.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The queue's own handle (a stream entry id, a row id).
    pub handle: String,
    pub job: PushJob,
}

/// A job that was given up, as kept for operators.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub job: String,
    pub attempts: u32,
    pub error: String,
    pub died_at: Timestamp,
}

#[async_trait]
pub trait PushQueue: Send + Sync {
    /// Queues the job to become due at `due`; false when it was absorbed by a waiting
    /// burst with the same coalesce key.
    async fn enqueue(&self, job: &PushJob, due: Timestamp) -> Result<bool, QueueError>;
    /// Claims up to `limit` due jobs (new ones, and ones whose worker's lease ran
    /// out). Claiming a burst lets the next burst for its key queue again.
    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, QueueError>;
    /// The job is finished.
    async fn done(&self, claimed: &Claimed) -> Result<(), QueueError>;
    /// Replaces the job by `next`, due at `due`.
    async fn retry(
        &self,
        claimed: &Claimed,
        next: &PushJob,
        due: Timestamp,
    ) -> Result<(), QueueError>;
    /// Gives the job up, keeping it with its attempts and last error.
    async fn dead_letter(
        &self,
        claimed: &Claimed,
        attempts: u32,
        error: &str,
    ) -> Result<(), QueueError>;
    /// The newest dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
}
