//! History pages both ways with no gaps or repeats, and a bounded page size.

use crate::STORE;
use chat_sdk::Page;
use chat_tests::{TestServer, seqs};

#[tokio::test]
async fn pages_backward_and_forward_without_gaps_or_repeats() {
    let server = TestServer::spawn(STORE).await;
    let alex = server.user("alex").await;
    let _riya = server.user("riya").await;
    let mut conv = String::new();
    for i in 1..=230 {
        conv = alex.send("riya", &format!("h{i}")).await.conversation_id;
    }

    // Backward from the latest.
    let mut backward = Vec::new();
    let mut page = alex
        .client
        .history(&conv, Page::Latest, 50)
        .await
        .expect("latest");
    assert_eq!(seqs(&page.messages), (181..=230).collect::<Vec<_>>());
    loop {
        let first = page.messages.first().map(|m| m.seq);
        backward.splice(0..0, page.messages.clone());
        if !page.has_more {
            break;
        }
        page = alex
            .client
            .history(&conv, Page::Before(first.expect("non-empty page")), 50)
            .await
            .expect("page");
        assert!(page.messages.len() <= 50);
    }
    assert_eq!(seqs(&backward), (1..=230).collect::<Vec<_>>());
    assert!(backward.iter().all(|m| m.text == format!("h{}", m.seq)));

    // Forward from the start.
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let page = alex
            .client
            .history(&conv, Page::After(after), 64)
            .await
            .expect("page");
        forward.extend(page.messages.clone());
        match page.messages.last() {
            Some(last) if page.has_more => after = last.seq,
            _ => break,
        }
    }
    assert_eq!(seqs(&forward), (1..=230).collect::<Vec<_>>());

    // The page size is bounded by the server whatever the client asks.
    let big = alex
        .client
        .history(&conv, Page::Latest, 10_000)
        .await
        .expect("big page");
    assert_eq!(big.messages.len(), 200);
    assert!(big.has_more);
    let default = alex
        .client
        .history(&conv, Page::Latest, 0)
        .await
        .expect("default page");
    assert_eq!(default.messages.len(), 50);
    server.shutdown().await;
}
