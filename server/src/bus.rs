//! The bus carries events from the writer to the sessions of their recipients, on
//! whatever process those sessions live. It is a doorbell, not a log: it may drop
//! events, and sessions recover anything missed from the store.
//!
//! `InProcessBus` is the embedded default: one process, delivery straight to its hub.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{Event, UserId};
use crate::hub::Hub;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `event` to every session of each recipient. Called only after the
    /// change the event describes has been committed.
    async fn publish(&self, recipients: &[UserId], event: Event);
}

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
        for user in recipients {
            self.hub.deliver(*user, &event);
        }
    }
}
