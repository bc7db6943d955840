//! The one trait every push provider implements, and what a delivery attempt can end
//! in. The worker decides retries and dead letters from the outcome alone.

use async_trait::async_trait;

use super::http::{HttpError, PostResponse};
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

/// The outcome of an answered POST to an endpoint named `who` that reports a target
/// gone with one of the `gone` statuses: 2xx delivered; 408, 429 and 5xx may pass;
/// anything else would only be refused again.
pub(super) fn response_outcome(response: &PostResponse, who: &str, gone: &[u16]) -> Outcome {
    let status = response.status;
    let answered = format!("{who} answered HTTP {status}");
    match status {
        200..=299 => Outcome::Delivered,
        _ if gone.contains(&status) => Outcome::Gone(answered),
        408 | 429 | 500..=599 => Outcome::Retry(match response.retry_after {
            Some(after) => format!("{answered} (retry after {}s)", after.as_secs()),
            None => answered,
        }),
        _ => Outcome::Rejected(answered),
    }
}

/// A POST that got no answer: network failures may pass, a bad URL or request will not.
pub(super) fn error_outcome(error: &HttpError, who: &str) -> Outcome {
    if error.is_transient() {
        Outcome::Retry(format!("{who}: {error}"))
    } else {
        Outcome::Rejected(format!("{who}: {error}"))
    }
}
