//! The one trait every push provider implements, and what a delivery attempt can end
//! in. The worker decides retries and dead letters from the outcome alone.

use async_trait::async_trait;

use super::notification::Notification;
use crate::store::PushTarget;

/// How one delivery attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint accepted it.
    Delivered,
    /// A failure that may pass: a timeout, a refused connection, 408, 429, 5xx.
    Retry(String),
    /// The endpoint says the target no longer exists (404 / 410 from a push service):
    /// the target is removed.
    Gone(String),
    /// Refused for good (another 4xx, a malformed target): straight to the dead letters.
    Rejected(String),
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// Delivers the notification to the target. Never panics, never retries itself.
    async fn deliver(&self, target: &PushTarget, notification: &Notification) -> Outcome;
}
