//! The two kinds of push job, as they travel through either queue (JSON).
//!
//! A burst job says "a message was stored for someone who was not connected"; after
//! the grace period the worker reads the member's state and decides whether and what
//! to push. It fans out into one delivery job per target, which carries the finished
//! notification and its attempt count through retries.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::notification::Notification;
use crate::domain::{ConversationId, UserId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    /// Unique per job; kept across the retries of a delivery.
    pub id: Uuid,
    #[serde(flatten)]
    pub task: Task,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    Burst {
        user: Uuid,
        conversation: Uuid,
        /// The seq that queued the job; the burst covers everything after the member's
        /// pushed watermark up to the conversation's last seq when it runs.
        seq: u64,
    },
    Deliver {
        user: Uuid,
        target: Uuid,
        /// Failed attempts so far.
        attempts: u32,
        notification: Notification,
    },
}

impl PushJob {
    pub fn burst(user: UserId, conversation: ConversationId, seq: u64) -> Self {
        PushJob {
            id: Uuid::new_v4(),
            task: Task::Burst {
                user: user.0,
                conversation: conversation.0,
                seq,
            },
        }
    }

    /// The key that makes a burst one job: while one is waiting for a (user,
    /// conversation), more messages do not queue another.
    pub fn coalesce_key(&self) -> Option<String> {
        match &self.task {
            Task::Burst {
                user, conversation, ..
            } => Some(format!("{user}:{conversation}")),
            Task::Deliver { .. } => None,
        }
    }

    pub fn encode(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }
}
