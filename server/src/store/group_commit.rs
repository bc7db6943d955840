//! Group commit: concurrent sends share one transaction, so one durable commit (one
//! fsync) pays for many messages while each send is still acknowledged only after
//! its own message is committed.
//!
//! Writes queue up; a few committer tasks each take whatever has queued (up to a
//! batch) and hand it to the store, at most one write per key per round (a message
//! per conversation, a receipt per member): a conversation's messages get their seqs
//! in the order they queued, and a store can apply a round without ordering writes
//! on one row. When the queue is empty a write goes alone at once, so a quiet server
//! adds no latency. Receipts batch the same way: each is its own durable write.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Appended, NewMessage, ReceiptUpdate, StoreError};
use crate::domain::{ConversationId, MessageId, Timestamp, UserId};

/// Writes waiting for a committer; past this, a writer waits for room.
const QUEUE: usize = 16_384;

/// A write that can share a transaction with others.
pub(crate) trait Batched: Send + 'static {
    /// What a round may hold only once: writes with the same key are applied in
    /// separate rounds, in the order they queued.
    type Key: Eq + Hash + Send;
    type Output: Send + 'static;
    fn key(&self) -> Self::Key;
}

/// A store that can apply several writes at once.
#[async_trait]
pub(crate) trait ApplyBatch<W: Batched>: Send + Sync + 'static {
    /// Applies every write in one transaction where it can; one result per write, in
    /// order. A write that fails alone must not fail the others.
    async fn apply(&self, batch: Vec<W>) -> Vec<Result<W::Output, StoreError>>;
}

struct Queued<W: Batched> {
    write: W,
    reply: oneshot::Sender<Result<W::Output, StoreError>>,
}

pub(crate) struct GroupCommit<W: Batched> {
    queue: mpsc::Sender<Queued<W>>,
}

impl<W: Batched> GroupCommit<W> {
    /// Starts `committers` tasks applying batches of at most `max_batch` through
    /// `store`. They end when the `GroupCommit` is dropped.
    pub(crate) fn start(
        store: Arc<dyn ApplyBatch<W>>,
        committers: usize,
        max_batch: usize,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..committers.max(1) {
            tokio::spawn(commit_loop(store.clone(), rx.clone(), max_batch.max(1)));
        }
        GroupCommit { queue }
    }

    /// Applies `write` with its group; returns once it is committed.
    pub(crate) async fn apply(&self, write: W) -> Result<W::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closing = || StoreError::Unavailable(sqlx::Error::PoolClosed);
        self.queue
            .send(Queued { write, reply })
            .await
            .map_err(|_| closing())?;
        answer.await.map_err(|_| closing())?
    }
}

async fn commit_loop<W: Batched>(
    store: Arc<dyn ApplyBatch<W>>,
    rx: Arc<Mutex<mpsc::Receiver<Queued<W>>>>,
    max_batch: usize,
) {
    let mut taken = Vec::with_capacity(max_batch);
    loop {
        // One committer takes a batch while the others commit theirs.
        let received = rx.lock().await.recv_many(&mut taken, max_batch).await;
        if received == 0 {
            return;
        }
        for round in rounds(std::mem::take(&mut taken)) {
            let (writes, replies): (Vec<W>, Vec<_>) =
                round.into_iter().map(|q| (q.write, q.reply)).unzip();
            let results = store.apply(writes).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }
}

/// Splits a batch into rounds with at most one write per key each, keeping each
/// key's writes in queue order.
fn rounds<W: Batched>(batch: Vec<Queued<W>>) -> Vec<Vec<Queued<W>>> {
    let mut rounds: Vec<Vec<Queued<W>>> = Vec::new();
    let mut seen: Vec<HashSet<W::Key>> = Vec::new();
    for queued in batch {
        let key = queued.write.key();
        let slot = match seen.iter().position(|s| !s.contains(&key)) {
            Some(slot) => slot,
            None => {
                rounds.push(Vec::new());
                seen.push(HashSet::new());
                rounds.len() - 1
            }
        };
        seen[slot].insert(key);
        rounds[slot].push(queued);
    }
    rounds
}

/// A message on its way to the store, with the id and time it is stored with.
#[derive(Clone)]
pub(crate) struct AppendWrite {
    pub(crate) id: MessageId,
    pub(crate) at: Timestamp,
    pub(crate) new: NewMessage,
}

impl AppendWrite {
    pub(crate) fn new(new: NewMessage) -> Self {
        AppendWrite {
            id: MessageId(uuid::Uuid::now_v7()),
            at: Timestamp::now(),
            new,
        }
    }
}

impl Batched for AppendWrite {
    type Key = ConversationId;
    type Output = Appended;
    fn key(&self) -> ConversationId {
        self.new.conversation_id
    }
}

/// A member's watermarks moving forward (see `Store::advance_receipt`).
#[derive(Clone)]
pub(crate) struct ReceiptWrite {
    pub(crate) conversation: ConversationId,
    pub(crate) user: UserId,
    pub(crate) delivered: u64,
    pub(crate) read: u64,
}

impl Batched for ReceiptWrite {
    type Key = (ConversationId, UserId);
    type Output = Option<ReceiptUpdate>;
    fn key(&self) -> (ConversationId, UserId) {
        (self.conversation, self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Write(&'static str, u32);

    impl Batched for Write {
        type Key = &'static str;
        type Output = ();
        fn key(&self) -> &'static str {
            self.0
        }
    }

    #[test]
    fn rounds_hold_one_write_per_key_in_queue_order() {
        let batch: Vec<Queued<Write>> = [("a", 1), ("b", 2), ("a", 3), ("a", 4)]
            .into_iter()
            .map(|(k, n)| Queued {
                write: Write(k, n),
                reply: oneshot::channel().0,
            })
            .collect();
        let order: Vec<Vec<u32>> = rounds(batch)
            .iter()
            .map(|r| r.iter().map(|q| q.write.1).collect())
            .collect();
        assert_eq!(order, vec![vec![1, 2], vec![3], vec![4]]);
    }
}
