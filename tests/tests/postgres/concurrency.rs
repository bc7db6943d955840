//! Many connections, and two replicas, writing into one conversation at once.

use std::sync::Arc;

use chat_sdk::{Client, Page, Target, proto};
use chat_tests::{StoreKind, TestDb, TestServer, seqs};

/// Every message of a conversation, paging forward.
pub(crate) async fn all_messages(client: &Client, conversation_id: &str) -> Vec<proto::Message> {
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .history(conversation_id, Page::After(after), 200)
            .await
            .expect("history");
        stored.extend(page.messages.iter().cloned());
        match page.messages.last() {
            Some(last) if page.has_more => after = last.seq,
            _ => return stored,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_sending_into_one_conversation_get_gapless_seqs() {
    const CONNECTIONS: usize = 50;
    const EACH: usize = 20;
    const POOL: i64 = 8;
    let server = TestServer::spawn_with(
        StoreKind::Postgres,
        &["--database-pool-size", &POOL.to_string()],
    )
    .await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    let conv = alex.client.open_direct("riya").await.expect("open").id;

    // 50 separate HTTP/2 connections, half Alex's and half Riya's, all at once.
    let mut senders = Vec::new();
    for i in 0..CONNECTIONS {
        let (token, to) = if i % 2 == 0 {
            (&alex.creds.token, "riya")
        } else {
            (&riya.creds.token, "alex")
        };
        let client = Client::connect(&server.url)
            .await
            .expect("connect")
            .with_token(token)
            .expect("token");
        let to = to.to_owned();
        senders.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for j in 0..EACH {
                acks.push(
                    client
                        .send(Target::User(to.clone()), &format!("c{i} m{j}"))
                        .await
                        .expect("send"),
                );
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for sender in senders {
        acks.extend(sender.await.expect("sender"));
    }

    let total = (CONNECTIONS * EACH) as u64;
    let mut acked: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "no gaps, no repeats"
    );
    let stored = all_messages(&alex.client, &conv).await;
    assert_eq!(seqs(&stored), (1..=total).collect::<Vec<_>>());
    for ack in &acks {
        let row = &stored[ack.seq as usize - 1];
        assert_eq!(row.id, ack.message_id, "the ack names the stored row");
        assert_eq!(row.client_msg_id, ack.client_msg_id);
    }
    // 50 connections' worth of sends went through at most the configured pool (idle
    // connections stay open, so this counts every connection the pool opened).
    let mut db = server.db.connect_postgres().await;
    let opened: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'chat-server'",
    )
    .fetch_one(&mut db)
    .await
    .expect("pg_stat_activity");
    assert!(
        (1..=POOL).contains(&opened),
        "{opened} connections, pool of {POOL}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_msg_id_from_two_replicas_is_stored_once() {
    const ROUNDS: usize = 10;
    const CALLERS_PER_REPLICA: usize = 8;
    let db = Arc::new(TestDb::new(StoreKind::Postgres).await);
    let r1 = TestServer::spawn_on(db.clone(), &[], None).await;
    let r2 = TestServer::spawn_on(db.clone(), &[], None).await;
    let alex = r1.user("alex").await;
    r1.user("riya").await;
    let conv = alex.client.open_direct("riya").await.expect("open").id;

    let mut callers = Vec::new();
    for replica in [&r1, &r2] {
        for _ in 0..CALLERS_PER_REPLICA {
            callers.push(
                Client::connect(&replica.url)
                    .await
                    .expect("connect")
                    .with_token(&alex.creds.token)
                    .expect("token"),
            );
        }
    }
    for round in 0..ROUNDS {
        // Every caller sends the same key at the same moment, half through each replica.
        let key = format!("retry-storm-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(callers.len()));
        let sends = callers.iter().map(|client| {
            let (client, key, barrier) = (client.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                client
                    .send_with_id(Target::User("riya".into()), &key, "only once")
                    .await
                    .expect("send")
            })
        });
        let acks: Vec<proto::SendAck> = futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| r.expect("caller"))
            .collect();
        assert!(
            acks.iter()
                .all(|a| a.message_id == acks[0].message_id && a.seq == acks[0].seq),
            "every caller gets the one stored message: {acks:?}"
        );
        assert_eq!(acks[0].seq, round as u64 + 1, "no seq burnt by the losers");
    }
    let stored = all_messages(&alex.client, &conv).await;
    assert_eq!(seqs(&stored), (1..=ROUNDS as u64).collect::<Vec<_>>());
    let next = alex
        .client
        .send(Target::User("riya".into()), "after the storm")
        .await
        .expect("send");
    assert_eq!(next.seq, ROUNDS as u64 + 1);
    r1.shutdown().await;
    r2.shutdown().await;
}

/// Sends into many conversations at once share a commit (group commit), retries
/// racing their originals included: each conversation's seqs stay gapless, each
/// message is stored once, a retry gets its original's seq, and senders' own
/// messages do not count as unread for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_sends_into_many_conversations_stay_exact() {
    const PAIRS: usize = 30;
    const EACH: usize = 15;
    let server = TestServer::spawn_with(StoreKind::Postgres, &["--database-pool-size", "4"]).await;
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let sender = server.user(&format!("sender{i}")).await;
        let _peer = server.user(&format!("peer{i}")).await;
        pairs.push((sender, format!("peer{i}")));
    }
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|(sender, peer)| {
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for j in 0..EACH {
                    let id = uuid::Uuid::new_v4().to_string();
                    let text = format!("{peer} #{j}");
                    // The send and its retry race each other into the same groups.
                    let (first, retry) = tokio::join!(
                        sender
                            .client
                            .send_with_id(Target::User(peer.clone()), &id, &text),
                        sender
                            .client
                            .send_with_id(Target::User(peer.clone()), &id, &text)
                    );
                    let (first, retry) = (first.expect("send"), retry.expect("retry"));
                    assert_eq!(first.seq, retry.seq, "a retry gets its original's seq");
                    assert_eq!(first.message_id, retry.message_id);
                    assert!(
                        first.duplicate != retry.duplicate,
                        "exactly one of the two stored it"
                    );
                    acks.push(first);
                }
                (sender, acks)
            })
        })
        .collect();
    for task in tasks {
        let (sender, acks) = task.await.expect("sender task");
        let conversation = acks[0].conversation_id.clone();
        let stored = all_messages(&sender.client, &conversation).await;
        assert_eq!(
            seqs(&stored),
            (1..=EACH as u64).collect::<Vec<_>>(),
            "gapless, each message once"
        );
        let mut acked: Vec<u64> = acks.iter().map(|a| a.seq).collect();
        acked.sort_unstable();
        assert_eq!(acked, seqs(&stored));
        let list = sender.client.conversations().await.expect("list");
        assert_eq!(list[0].unread, 0, "own messages are not unread");
    }
}

/// Retries of sends into many conversations at once, through two replicas: each
/// replica's group meets the other replica's copies of the same keys, and whichever
/// loses the race (a unique violation fails the whole group statement) answers each
/// send alone. Every key is stored once, every caller gets the one stored message,
/// and no seq is burnt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_retries_racing_across_two_replicas_are_stored_once() {
    const PAIRS: usize = 16;
    const ROUNDS: u64 = 6;
    let db = Arc::new(TestDb::new(StoreKind::Postgres).await);
    let r1 = TestServer::spawn_on(db.clone(), &["--database-pool-size", "4"], None).await;
    let r2 = TestServer::spawn_on(db.clone(), &["--database-pool-size", "4"], None).await;
    let mut senders = Vec::new();
    for i in 0..PAIRS {
        let sender = r1.user(&format!("racer{i}")).await;
        r1.user(&format!("target{i}")).await;
        let via_r2 = Client::connect(&r2.url)
            .await
            .expect("connect")
            .with_token(&sender.creds.token)
            .expect("token");
        senders.push((sender.client.clone(), via_r2, format!("target{i}")));
    }
    let mut conversations = Vec::new();
    for round in 1..=ROUNDS {
        let barrier = Arc::new(tokio::sync::Barrier::new(2 * PAIRS));
        let mut sends = Vec::new();
        for (i, (via_r1, via_r2, peer)) in senders.iter().enumerate() {
            let key = format!("race-{i}-{round}");
            for client in [via_r1.clone(), via_r2.clone()] {
                let (key, peer, barrier) = (key.clone(), peer.clone(), barrier.clone());
                sends.push(tokio::spawn(async move {
                    barrier.wait().await;
                    client
                        .send_with_id(Target::User(peer), &key, "raced")
                        .await
                        .expect("send")
                }));
            }
        }
        let acks: Vec<proto::SendAck> = futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| r.expect("sender"))
            .collect();
        for pair in acks.chunks(2) {
            assert_eq!(
                pair[0].message_id, pair[1].message_id,
                "stored once: {pair:?}"
            );
            assert_eq!(pair[0].seq, round, "no seq burnt: {pair:?}");
            assert!(
                pair[0].duplicate != pair[1].duplicate,
                "one stored it: {pair:?}"
            );
        }
        if round == 1 {
            conversations = acks
                .chunks(2)
                .map(|p| p[0].conversation_id.clone())
                .collect();
        }
    }
    let (reader, _, _) = &senders[0];
    let stored = all_messages(reader, &conversations[0]).await;
    assert_eq!(seqs(&stored), (1..=ROUNDS).collect::<Vec<_>>());
    r1.shutdown().await;
    r2.shutdown().await;
}
