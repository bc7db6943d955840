//! Durability: everything acknowledged before a SIGKILL is there after a restart.

use crate::STORE;
use chat_sdk::{Client, Page, Target};
use chat_tests::{DEADLINE, ServerProcess, TestDb, seqs};

#[tokio::test]
async fn acked_messages_survive_sigkill() {
    let db = TestDb::new(STORE).await;
    let server = ServerProcess::start(&db).await;
    let client = Client::connect(&server.url).await.expect("connect");
    let alex = client
        .register("alex", "correct horse battery", "t")
        .await
        .expect("register");
    client
        .register("riya", "correct horse battery", "t")
        .await
        .expect("register");
    let alex_client = client.with_token(&alex.token).expect("token");
    let conv = alex_client.open_direct("riya").await.expect("open").id;

    // Sends race with the kill: every one that was acked must be stored.
    let (progress, mut acked_count) = tokio::sync::watch::channel(0usize);
    let sender = tokio::spawn({
        let alex_client = alex_client.clone();
        async move {
            let mut acked = Vec::new();
            for i in 0.. {
                match alex_client
                    .send(Target::User("riya".into()), &format!("m{i}"))
                    .await
                {
                    Ok(ack) => {
                        acked.push(ack);
                        let _ = progress.send(acked.len());
                    }
                    Err(_) => break,
                }
            }
            acked
        }
    });
    tokio::time::timeout(DEADLINE, acked_count.wait_for(|n| *n >= 50))
        .await
        .expect("sends did not progress")
        .expect("sender alive");
    server.kill().await;
    let acked = sender.await.expect("sender task");
    assert!(acked.len() >= 50);

    let restarted = ServerProcess::start(&db).await;
    // The token issued before the crash still works: sessions are stored, not in memory.
    let alex_client = Client::connect(&restarted.url)
        .await
        .expect("connect")
        .with_token(&alex.token)
        .expect("token");
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = alex_client
            .history(&conv, Page::After(after), 200)
            .await
            .expect("history");
        stored.extend(page.messages.clone());
        match page.messages.last() {
            Some(last) if page.has_more => after = last.seq,
            _ => break,
        }
    }
    assert_eq!(
        seqs(&stored),
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gapless after restart"
    );
    for ack in &acked {
        let m = stored
            .iter()
            .find(|m| m.seq == ack.seq)
            .expect("acked message is stored");
        assert_eq!(m.id, ack.message_id);
        assert_eq!(m.client_msg_id, ack.client_msg_id);
    }
    // And the store goes on from the right seq.
    let next = alex_client
        .send(Target::User("riya".into()), "after restart")
        .await
        .expect("send");
    assert_eq!(next.seq, stored.len() as u64 + 1);
    restarted.kill().await;
}
