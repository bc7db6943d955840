//! The bus is only a doorbell: when it loses events, sessions fill the gaps from the
//! store and the client still sees every message once, in order.

use crate::STORE;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chat_server::bus::Bus;
use chat_server::domain::{Event, UserId};
use chat_tests::{TestServer, messages_through, messages_until_caught_up, seqs};

/// Drops every message event whose seq is a multiple of 3, and counts the drops.
struct LossyBus {
    inner: Arc<dyn Bus>,
    dropped: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Bus for LossyBus {
    async fn publish(&self, recipients: &[UserId], event: Event) {
        if let Event::Message(m) = &event
            && m.seq % 3 == 0
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.publish(recipients, event).await;
    }
}

#[tokio::test]
async fn lost_doorbells_are_filled_from_the_store() {
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let layer: chat_server::BusLayer = Box::new(move |inner| {
        Arc::new(LossyBus {
            inner,
            dropped: counter,
        })
    });
    let server = TestServer::spawn_layered(STORE, &[], Some(layer)).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let mut session = riya.session().await;
    messages_until_caught_up(&mut session).await;

    let mut conv = String::new();
    for i in 1..=31 {
        conv = alex.send("riya", &format!("m{i}")).await.conversation_id;
    }
    let got = messages_through(&mut session, &conv, 31).await;
    assert_eq!(seqs(&got), (1..=31).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m.text == format!("m{}", m.seq)));
    assert_eq!(
        dropped.load(Ordering::Relaxed),
        10,
        "the bus really lost events"
    );
    server.shutdown().await;
}
