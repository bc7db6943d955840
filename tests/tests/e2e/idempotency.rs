//! Idempotent send: one stored message per (conversation, sender, client_msg_id), the
//! same answer to every retry, and no seq burnt by a duplicate.

use crate::STORE;
use chat_sdk::{Page, Target};
use chat_tests::{TestServer, seqs};

#[tokio::test]
async fn same_client_msg_id_twice_stores_one_message() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let to = || Target::User("riya".into());
    let first = alex
        .client
        .send_with_id(to(), "retry-1", "once")
        .await
        .expect("send");
    let second = alex
        .client
        .send_with_id(to(), "retry-1", "once")
        .await
        .expect("retry");
    assert_eq!(
        (first.seq, &first.message_id),
        (second.seq, &second.message_id)
    );
    assert_eq!(first.sent_at, second.sent_at);
    assert!(!first.duplicate);
    assert!(second.duplicate);

    let next = alex.client.send(to(), "next").await.expect("send");
    assert_eq!(next.seq, first.seq + 1, "a duplicate burns no seq");
    let page = alex
        .client
        .history(&first.conversation_id, Page::Latest, 50)
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), vec![1, 2]);
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_sends_with_one_id_from_two_connections_store_one_message() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    // A second connection (another channel) with the same credentials.
    let other = server
        .client()
        .await
        .with_token(&alex.creds.token)
        .expect("token");
    let session = alex.session().await;
    for round in 0..20 {
        let id = format!("race-{round}");
        let (a, b, c) = tokio::join!(
            alex.client
                .send_with_id(Target::User("riya".into()), &id, "race"),
            other.send_with_id(Target::User("riya".into()), &id, "race"),
            session.send_with_id(Target::User("riya".into()), &id, "race"),
        );
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        assert_eq!(a.seq, round + 1);
        assert!(
            [&b, &c]
                .iter()
                .all(|x| x.seq == a.seq && x.message_id == a.message_id)
        );
        assert_eq!(
            [&a, &b, &c].iter().filter(|x| !x.duplicate).count(),
            1,
            "exactly one stored it"
        );
    }
    let conv = alex.client.open_direct("riya").await.expect("open").id;
    let page = alex
        .client
        .history(&conv, Page::Latest, 100)
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), (1..=20).collect::<Vec<_>>());
    server.shutdown().await;
}
