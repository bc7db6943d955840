//! Push notifications, end to end: real `chat-server` processes (so each has its own
//! metrics), users driven through the SDK and the CLI, and local HTTP receivers
//! standing in for webhook endpoints and Web Push services.
//!
//! Tests never wait for "long enough": they wait for the server's push counters to
//! show that every queued burst and delivery is finished, and only then count what the
//! receiver got.

mod cli;
mod web_push;
mod webhook;

use std::time::Duration;

use chat_sdk::{Client, Target};
use chat_tests::{DEADLINE, PushReceiver, Reply, ServerProcess, StoreKind, TestDb};

pub(crate) const SECRET: &str = "correct horse battery staple";

/// Short grace and fast retries, so that each scenario takes seconds.
pub(crate) const PUSH_FLAGS: [&str; 14] = [
    "--metrics-listen",
    "127.0.0.1:0",
    "--push-grace",
    "300ms",
    "--push-poll",
    "20ms",
    "--push-retry-base",
    "50ms",
    "--push-max-attempts",
    "4",
    "--push-timeout",
    "3s",
    "--push-lease",
    "6s",
];

/// A server process and a database of its own.
pub(crate) struct Setup {
    pub db: TestDb,
    pub server: ServerProcess,
}

impl Setup {
    pub(crate) async fn start(store: StoreKind, extra: &[&str]) -> Self {
        let db = TestDb::new(store).await;
        let mut flags: Vec<&str> = PUSH_FLAGS.to_vec();
        flags.extend_from_slice(extra);
        let server = ServerProcess::start_with(&db, &flags).await;
        Setup { db, server }
    }

    pub(crate) async fn user(&self, name: &str) -> Client {
        user(&self.server.url, name).await
    }

    /// Alex, and Riya with a webhook on a receiver answering `script`, then `then`.
    pub(crate) async fn alex_and_riya_with_webhook(
        &self,
        script: &[Reply],
        then: Reply,
    ) -> (Client, Client, PushReceiver) {
        let alex = self.user("alex").await;
        let riya = self.user("riya").await;
        let receiver = PushReceiver::start(script, then).await;
        riya.add_webhook(&receiver.url, SECRET)
            .await
            .expect("add webhook");
        (alex, riya, receiver)
    }

    /// The sum of a counter's series whose labels include all of `labels`.
    pub(crate) async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        counter(&self.server.metrics().await, name, labels)
    }

    /// Waits until the counter reaches `want`; fails at the deadline.
    pub(crate) async fn wait_counter(&self, name: &str, labels: &[(&str, &str)], want: u64) {
        wait_counter(&self.server, name, labels, want).await;
    }
}

pub(crate) async fn user(url: &str, name: &str) -> Client {
    let client = Client::connect(url).await.expect("connect");
    let creds = client
        .register(name, "correct horse battery", "test")
        .await
        .expect("register");
    client.with_token(&creds.token).expect("token")
}

pub(crate) async fn send(from: &Client, to: &str, text: &str) -> chat_sdk::proto::SendAck {
    from.send(Target::User(to.into()), text)
        .await
        .expect("send")
}

pub(crate) fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .map(|v| v as u64)
        .sum()
}

pub(crate) async fn wait_counter(
    server: &ServerProcess,
    name: &str,
    labels: &[(&str, &str)],
    want: u64,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let metrics = server.metrics().await;
        let got = counter(&metrics, name, labels);
        if got >= want {
            assert_eq!(got, want, "{name}{labels:?} went past {want}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {got}, never reached {want}"
        );
        // Polling the server's own counters: the event waited for is in another process.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
