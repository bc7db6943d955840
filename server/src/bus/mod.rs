//! The bus carries events from the writer to the sessions of their recipients, on
//! whatever process those sessions live. It is a doorbell, not a log: it may drop
//! events, and sessions recover anything missed from the store.
//!
//! `InProcessBus` is the embedded default: one process, delivery straight to its hub.
//! `RedisBus` joins replicas through Redis pub/sub, one channel per user.

mod redis;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{Event, UserId};
use crate::hub::Hub;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `event` to every session of each recipient. Called only after the
    /// change the event describes has been committed.
    async fn publish(&self, recipients: &[UserId], event: Event);

    /// Routes events for `user` to this process from now on; returns once a publish
    /// made after it is sure to arrive (or once the bus knows it is cut off, and will
    /// make every session catch up when it is back).
    async fn listen(&self, _user: UserId) {}

    /// How long this process has been cut off from the other replicas, if it is.
    fn cut_off_for(&self) -> Option<Duration> {
        None
    }
}

pub use self::redis::RedisBus;

pub struct InProcessBus {
    hub: Arc<Hub>,
}

impl InProcessBus {
    pub fn new(hub: Arc<Hub>) -> Self {
        InProcessBus { hub }
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, recipients: &[UserId], event: Event) {
        let started = std::time::Instant::now();
        for user in recipients {
            self.hub.deliver(*user, &event);
        }
        metrics::histogram!(crate::metrics::FANOUT_SECONDS, "path" => "local")
            .record(started.elapsed().as_secs_f64());
    }
}
