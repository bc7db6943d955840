//! The push worker: claims due jobs and runs them, a bounded number at a time.
//!
//! A burst job reads the member's state after the grace period and, if a push is
//! still owed, queues one delivery per target, then moves the member's pushed
//! watermark, then finishes: a worker that dies in between leaves the burst to be
//! claimed again, and its second run produces the same delivery id, so a receiver can
//! drop the repeat. A delivery job makes one attempt and then finishes, is retried
//! with backoff, or goes to the dead letters.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::job::{PushJob, Task};
use super::notification::Notification;
use super::provider::{Outcome, Provider};
use super::queue::{Claimed, PushQueue, QueueError};
use crate::chat::Chat;
use crate::domain::{ConversationId, PushTargetId, Timestamp, UserId};
use crate::store::{PushContext, PushEndpoint, StoreError};

/// Delivery ids are derived, not random, so that a burst run twice (its worker died)
/// names its notification the same way.
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x3f0c_9a7e_51b2_4d86_a0e4_7c1d_2b96_e853);
/// Retries never wait longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The text a content notification carries at most: a Web Push payload is one
/// 4 KiB record.
const MAX_BODY_BYTES: usize = 1024;

#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub poll: Duration,
}

pub struct PushWorker {
    chat: Arc<Chat>,
    queue: Arc<dyn PushQueue>,
    webhook: Arc<dyn Provider>,
    web_push: Arc<dyn Provider>,
    options: WorkerOptions,
}

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PushWorker {
    pub fn new(
        chat: Arc<Chat>,
        queue: Arc<dyn PushQueue>,
        webhook: Arc<dyn Provider>,
        web_push: Arc<dyn Provider>,
        options: WorkerOptions,
    ) -> Self {
        PushWorker {
            chat,
            queue,
            webhook,
            web_push,
            options,
        }
    }

    /// Claims and runs jobs until `stop`. Jobs in flight at the stop finish in their
    /// own tasks or, if the process ends first, are claimed again by another worker.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        loop {
            if stop.is_cancelled() {
                return;
            }
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self.queue.claim(free).await {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        metrics::counter!(crate::metrics::PUSH_QUEUE_ERRORS).increment(1);
                        tracing::warn!(error = %e, "could not claim push jobs");
                        Vec::new()
                    }
                }
            };
            let idle = claimed.is_empty();
            for job in claimed {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let worker = self.clone();
                tokio::spawn(async move {
                    worker.run_job(job).await;
                    drop(slot);
                });
            }
            if idle {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.options.poll) => {}
                }
            }
        }
    }

    async fn run_job(&self, claimed: Claimed) {
        let result = match &claimed.job.task {
            Task::Burst {
                user, conversation, ..
            } => {
                self.burst(&claimed, UserId(*user), ConversationId(*conversation))
                    .await
            }
            Task::Deliver {
                user,
                target,
                attempts,
                notification,
            } => {
                self.deliver(
                    &claimed,
                    UserId(*user),
                    PushTargetId(*target),
                    *attempts,
                    notification,
                )
                .await
            }
        };
        if let Err(e) = result {
            // The job stays claimed; when its lease runs out it is claimed again.
            metrics::counter!(crate::metrics::PUSH_QUEUE_ERRORS).increment(1);
            tracing::warn!(error = %e, job = %claimed.job.id, "push job failed; it will be retried");
        }
    }

    async fn burst(
        &self,
        claimed: &Claimed,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<(), JobError> {
        let store = &self.chat.store;
        let suppressed = |reason: &'static str| {
            metrics::counter!(crate::metrics::PUSH_SUPPRESSED, "reason" => reason).increment(1);
        };
        let Some(context) = store.push_context(conversation, user).await? else {
            suppressed("not_member");
            return Ok(self.queue.done(claimed).await?);
        };
        let reason = if context.muted {
            Some("muted")
        } else if context.delivered_seq >= context.last_seq {
            Some("delivered")
        } else if context.pushed_seq >= context.last_seq {
            Some("pushed")
        } else if self.chat.is_online(user).await {
            Some("online")
        } else {
            None
        };
        if let Some(reason) = reason {
            suppressed(reason);
            return Ok(self.queue.done(claimed).await?);
        }
        let targets = store.push_targets(user).await?;
        if targets.is_empty() {
            suppressed("no_targets");
            return Ok(self.queue.done(claimed).await?);
        }
        let notification = notification(conversation, &context);
        for target in &targets {
            let delivery = PushJob {
                id: Uuid::new_v4(),
                task: Task::Deliver {
                    user: user.0,
                    target: target.id.0,
                    attempts: 0,
                    notification: notification.clone(),
                },
            };
            self.queue.enqueue(&delivery, Timestamp::now()).await?;
            metrics::counter!(crate::metrics::PUSH_NOTIFICATIONS).increment(1);
        }
        store
            .advance_pushed(conversation, user, context.last_seq)
            .await?;
        Ok(self.queue.done(claimed).await?)
    }

    async fn deliver(
        &self,
        claimed: &Claimed,
        user: UserId,
        target: PushTargetId,
        attempts: u32,
        notification: &Notification,
    ) -> Result<(), JobError> {
        let targets = self.chat.store.push_targets(user).await?;
        let Some(target) = targets.into_iter().find(|t| t.id == target) else {
            // Removed since the burst: nothing to deliver to.
            return Ok(self.queue.done(claimed).await?);
        };
        let (provider, name) = match &target.endpoint {
            PushEndpoint::Webhook { .. } => (&self.webhook, "webhook"),
            PushEndpoint::WebPush { .. } => (&self.web_push, "web_push"),
        };
        let attempts = attempts.saturating_add(1);
        // The job as it stands after this attempt: what a retry queues, and what a dead
        // letter keeps.
        let after = PushJob {
            id: claimed.job.id,
            task: Task::Deliver {
                user: user.0,
                target: target.id.0,
                attempts,
                notification: notification.clone(),
            },
        };
        match provider.deliver(&target, notification).await {
            Outcome::Delivered => {
                metrics::counter!(crate::metrics::PUSH_SENT, "provider" => name).increment(1);
                self.queue.done(claimed).await?;
            }
            Outcome::Gone(why) => {
                metrics::counter!(crate::metrics::PUSH_TARGETS_GONE, "provider" => name)
                    .increment(1);
                tracing::info!(target = %target.id, %why, "push target is gone; removing it");
                self.chat.store.remove_push_target(user, target.id).await?;
                self.queue.done(claimed).await?;
            }
            Outcome::Retry(why) if attempts < self.options.max_attempts => {
                metrics::counter!(crate::metrics::PUSH_RETRIED, "provider" => name).increment(1);
                let wait = self.backoff(attempts);
                tracing::debug!(target = %target.id, %why, attempts, ?wait, "push failed; retrying");
                self.queue
                    .retry(claimed, &after, Timestamp::now().after(wait))
                    .await?;
            }
            Outcome::Retry(why) | Outcome::Rejected(why) => {
                metrics::counter!(crate::metrics::PUSH_DEAD_LETTERED, "provider" => name)
                    .increment(1);
                tracing::warn!(target = %target.id, %why, attempts, "push given up");
                let claimed = Claimed {
                    handle: claimed.handle.clone(),
                    job: after,
                };
                self.queue.dead_letter(&claimed, attempts, &why).await?;
            }
        }
        Ok(())
    }

    /// Exponential with full jitter over its upper half: retries of many failing
    /// deliveries spread out instead of arriving together.
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = self
            .options
            .retry_base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
            .min(MAX_BACKOFF);
        let half = exp / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// The notification for everything the member has not received, as of `context`.
fn notification(conversation: ConversationId, context: &PushContext) -> Notification {
    let unread = context.last_seq.saturating_sub(context.read_seq);
    let delivery_id = Uuid::new_v5(
        &DELIVERY_NAMESPACE,
        format!(
            "{}:{}:{}",
            context.recipient.id, conversation, context.last_seq
        )
        .as_bytes(),
    )
    .to_string();
    let content = context
        .last_message
        .as_ref()
        .filter(|_| !context.content_free);
    let (title, body, sender) = match content {
        Some(message) => (
            message.sender.name.as_str().to_owned(),
            Some(truncate(message.text.as_str(), MAX_BODY_BYTES)),
            Some(message.sender.name.as_str().to_owned()),
        ),
        None if unread > 1 => (format!("{unread} new messages"), None, None),
        None => ("New message".to_owned(), None, None),
    };
    let sent_at_ms = context
        .last_message
        .as_ref()
        .map_or(0, |m| m.sent_at.micros() / 1000);
    Notification {
        delivery_id,
        user: context.recipient.name.as_str().to_owned(),
        conversation_id: conversation.to_string(),
        seq: context.last_seq,
        unread,
        badge: context.total_unread,
        title,
        body,
        sender,
        sent_at_ms,
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
