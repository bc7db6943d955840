//! PostgreSQL dies (`pg_ctl stop -m immediate`) while sends are in flight, on a
//! cluster of the test's own: nothing acknowledged is lost, what was in flight fails
//! retryably and goes through when retried with the same key, and the server recovers
//! without being restarted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chat_sdk::{Target, proto};
use chat_tests::{DEADLINE, PgCluster, TestDb, TestServer, raw_chat_stub, seqs};
use tokio::sync::watch;

use crate::concurrency::all_messages;

const SENDERS: usize = 8;

/// What one sender saw: acks and failures by client_msg_id.
#[derive(Default)]
struct Outcome {
    acked: Vec<proto::SendAck>,
    failed: Vec<(String, tonic::Code)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_a_database_crash_and_the_rest_succeed_on_retry() {
    let cluster = PgCluster::start().await;
    let db = Arc::new(TestDb::postgres_on(&cluster.admin_url()).await);
    // A short statement timeout makes calls that wait on the dead database fail fast.
    let server = TestServer::spawn_on(db, &["--database-statement-timeout", "1s"], None).await;
    let alex = server.user("alex").await;
    server.user("riya").await;
    let conv = alex.client.open_direct("riya").await.expect("open").id;

    let stop = Arc::new(AtomicBool::new(false));
    let (acked_tx, mut acked_rx) = watch::channel(0usize);
    let (failed_tx, mut failed_rx) = watch::channel(0usize);
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        // One attempt per send, straight through the generated stub: the SDK would
        // retry on its own and hide the failures this test is about.
        let mut stub = raw_chat_stub(&server.url, &alex.creds.token, None).await;
        let (stop, acked_tx, failed_tx) = (stop.clone(), acked_tx.clone(), failed_tx.clone());
        senders.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("s{s}-m{i}");
                i += 1;
                let sent = stub
                    .send(proto::SendRequest {
                        message: Some(proto::SendMessage {
                            client_msg_id: key.clone(),
                            target: Some(proto::send_message::Target::Recipient("riya".into())),
                            text: format!("message {key}"),
                        }),
                    })
                    .await;
                match sent {
                    Ok(response) => {
                        outcome.acked.push(response.into_inner().ack.expect("ack"));
                        acked_tx.send_modify(|n| *n += 1);
                    }
                    Err(status) => {
                        outcome.failed.push((key, status.code()));
                        failed_tx.send_modify(|n| *n += 1);
                    }
                }
            }
            outcome
        }));
    }

    let wait_acked = |rx: &mut watch::Receiver<usize>, at_least: usize| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(DEADLINE, rx.wait_for(|n| *n >= at_least))
                .await
                .unwrap_or_else(|_| panic!("fewer than {at_least} sends acknowledged in time"))
                .map(|n| *n)
                .expect("senders alive")
        }
    };
    wait_acked(&mut acked_rx, 100).await;
    cluster.stop_immediately().await;
    tokio::time::timeout(DEADLINE, failed_rx.wait_for(|n| *n >= SENDERS))
        .await
        .expect("sends fail while the database is down")
        .expect("senders alive");
    let acked_before_restart = *acked_rx.borrow();
    cluster.restart().await;
    // The same server process serves again once the database is back.
    wait_acked(&mut acked_rx, acked_before_restart + 100).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for sender in senders {
        let outcome = sender.await.expect("sender");
        acked.extend(outcome.acked);
        failed.extend(outcome.failed);
    }
    assert!(!failed.is_empty());
    let codes: BTreeMap<String, usize> = failed.iter().fold(BTreeMap::new(), |mut m, (_, c)| {
        *m.entry(format!("{c:?}")).or_default() += 1;
        m
    });
    assert!(
        failed
            .iter()
            .all(|(_, code)| *code == tonic::Code::Unavailable),
        "sends in flight fail with UNAVAILABLE, nothing else: {codes:?}"
    );

    // Retried with the same key, each failed send goes through exactly once (or turns
    // out to have been committed before the connection died: then the original).
    for (key, _) in &failed {
        let ack = alex
            .client
            .send_with_id(Target::User("riya".into()), key, &format!("message {key}"))
            .await
            .expect("retry succeeds");
        acked.push(ack);
    }

    let stored = all_messages(&alex.client, &conv).await;
    assert_eq!(
        seqs(&stored),
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gapless"
    );
    let by_key: HashMap<&str, &proto::Message> = stored
        .iter()
        .map(|m| (m.client_msg_id.as_str(), m))
        .collect();
    assert_eq!(by_key.len(), stored.len(), "every key stored once");
    assert_eq!(
        stored.len(),
        acked.len(),
        "every attempted send is stored, and nothing else"
    );
    for ack in &acked {
        let row = by_key
            .get(ack.client_msg_id.as_str())
            .unwrap_or_else(|| panic!("acked {} is stored", ack.client_msg_id));
        assert_eq!(row.seq, ack.seq);
        assert_eq!(row.id, ack.message_id);
    }
    server.shutdown().await;
}
