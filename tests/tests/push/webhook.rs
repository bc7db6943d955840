//! Webhook pushes: one signed notification per burst, none while online or muted,
//! retries until delivered, dead letters when the receiver keeps failing, and a job
//! whose worker was killed delivered by another replica.

use std::collections::HashSet;
use std::time::Duration;

use chat_sdk::proto::PushMode;
use chat_tests::{PushReceiver, Received, RedisServer, Reply, ServerProcess, StoreKind, TestDb};
use sqlx::Connection;

use crate::{PUSH_FLAGS, SECRET, Setup, send, user, wait_counter};

/// The signature a receiver checks: HMAC-SHA256 over "<timestamp>.<body>".
fn assert_signed(request: &Received) {
    let timestamp = request.header("x-chat-timestamp");
    assert!(!timestamp.is_empty(), "no x-chat-timestamp");
    let signature = request
        .header("x-chat-signature")
        .strip_prefix("sha256=")
        .expect("x-chat-signature: sha256=<hex>");
    let signature: Vec<u8> = (0..signature.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&signature[i..i + 2], 16).expect("hex"))
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&request.body);
    ring::hmac::verify(&key, &signed, &signature).expect("the signature verifies");
    // And it covers the body: one flipped byte fails.
    let mut tampered = signed.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 1;
    }
    assert!(ring::hmac::verify(&key, &tampered, &signature).is_err());
}

async fn a_burst_is_one_signed_notification(store: StoreKind, extra: &[&str]) {
    let setup = Setup::start(store, extra).await;
    let (alex, _riya, receiver) = setup
        .alex_and_riya_with_webhook(&[], Reply::Status(200))
        .await;

    // Riya has no session: three quick messages are one burst.
    send(&alex, "riya", "lunch?").await;
    send(&alex, "riya", "at noon").await;
    let last = send(&alex, "riya", "the usual place").await;
    // Queueing runs beside the acks: wait until all three are queued or absorbed.
    let queued = |m: &str| crate::counter(m, "chat_push_queued_total", &[]);
    let coalesced = |m: &str| crate::counter(m, "chat_push_coalesced_total", &[]);
    let deadline = tokio::time::Instant::now() + chat_tests::DEADLINE;
    loop {
        let metrics = setup.server.metrics().await;
        if queued(&metrics) + coalesced(&metrics) >= 3 {
            assert_eq!(queued(&metrics), 1, "the burst is one job");
            assert_eq!(coalesced(&metrics), 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pushes were never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setup
        .wait_counter("chat_push_sent_total", &[("provider", "webhook")], 1)
        .await;

    let received = receiver.received();
    assert_eq!(received.len(), 1, "exactly one notification: {received:?}");
    let push = &received[0];
    assert_eq!(push.method, "POST");
    assert_eq!(push.header("content-type"), "application/json");
    assert_signed(push);
    let body = push.json();
    assert_eq!(body["user"], "riya");
    assert_eq!(body["title"], "alex");
    assert_eq!(body["sender"], "alex");
    assert_eq!(body["body"], "the usual place");
    assert_eq!(body["unread"], 3);
    assert_eq!(body["badge"], 3);
    assert_eq!(body["seq"], last.seq);
    assert_eq!(body["conversation_id"], last.conversation_id);
    assert_eq!(body["delivery_id"], push.header("x-chat-delivery"));
    assert_eq!(setup.counter("chat_push_notifications_total", &[]).await, 1);
}

#[tokio::test]
async fn a_burst_to_someone_offline_is_one_signed_notification() {
    a_burst_is_one_signed_notification(StoreKind::Sqlite, &[]).await;
}

#[tokio::test]
async fn a_burst_is_one_notification_through_the_redis_queue() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    a_burst_is_one_signed_notification(StoreKind::Postgres, &["--redis-url", &url]).await;
}

#[tokio::test]
async fn nobody_is_pushed_while_online() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let (alex, riya, receiver) = setup
        .alex_and_riya_with_webhook(&[], Reply::Status(200))
        .await;

    let mut session = riya
        .open_session(
            chat_sdk::Cursors::new(),
            chat_sdk::SessionOptions::default(),
        )
        .await
        .expect("session");
    chat_tests::messages_until_caught_up(&mut session).await;
    send(&alex, "riya", "you there?").await;
    chat_tests::expect_event(&mut session, "the message, live", |e| match e {
        chat_sdk::Event::Message(m) if m.text == "you there?" => Some(()),
        _ => None,
    })
    .await;
    setup
        .wait_counter("chat_push_suppressed_total", &[("reason", "online")], 1)
        .await;
    assert_eq!(setup.counter("chat_push_queued_total", &[]).await, 0);

    // Once she is gone, the next message is pushed: the receiver works, so the
    // silence above was the suppression.
    session.close();
    drop(session);
    let deadline = tokio::time::Instant::now() + chat_tests::DEADLINE;
    loop {
        send(&alex, "riya", "ok, later").await;
        if setup.counter("chat_push_queued_total", &[]).await > 0 {
            break;
        }
        // Her stream's end reaches the server asynchronously.
        assert!(
            tokio::time::Instant::now() < deadline,
            "riya never went offline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup
        .wait_counter("chat_push_sent_total", &[("provider", "webhook")], 1)
        .await;
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json()["body"], "ok, later");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_notification_after_retries() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let (alex, _riya, receiver) = setup
        .alex_and_riya_with_webhook(
            &[Reply::Status(500), Reply::Status(500)],
            Reply::Status(200),
        )
        .await;

    send(&alex, "riya", "lunch?").await;
    setup
        .wait_counter("chat_push_sent_total", &[("provider", "webhook")], 1)
        .await;
    let received = receiver.received();
    let answers: Vec<Option<u16>> = received.iter().map(|r| r.answered).collect();
    assert_eq!(answers, [Some(500), Some(500), Some(200)]);
    let ids: HashSet<&str> = received
        .iter()
        .map(|r| r.header("x-chat-delivery"))
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same delivery id");
    for r in &received {
        assert_signed(r);
    }
    assert_eq!(
        setup
            .counter("chat_push_retried_total", &[("provider", "webhook")])
            .await,
        2
    );
    assert_eq!(setup.counter("chat_push_dead_lettered_total", &[]).await, 0);
}

#[tokio::test]
async fn a_receiver_that_always_fails_ends_in_the_dead_letters() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let (alex, _riya, receiver) = setup
        .alex_and_riya_with_webhook(&[], Reply::Status(503))
        .await;

    send(&alex, "riya", "lunch?").await;
    setup
        .wait_counter(
            "chat_push_dead_lettered_total",
            &[("provider", "webhook")],
            1,
        )
        .await;
    // --push-max-attempts 4
    assert_eq!(receiver.received().len(), 4);
    assert_eq!(
        setup
            .counter("chat_push_retried_total", &[("provider", "webhook")])
            .await,
        3
    );
    assert_eq!(setup.counter("chat_push_sent_total", &[]).await, 0);

    // The dead letter keeps the job, its attempts and the last error.
    let mut db = sqlx::SqliteConnection::connect(setup.db.url())
        .await
        .expect("open the database");
    let (payload, attempts, error): (String, i64, String) =
        sqlx::query_as("SELECT payload, attempts, error FROM push_dead_letters")
            .fetch_one(&mut db)
            .await
            .expect("one dead letter");
    assert_eq!(attempts, 4);
    assert!(error.contains("503"), "{error}");
    let job: serde_json::Value = serde_json::from_str(&payload).expect("job JSON");
    assert_eq!(job["notification"]["body"], "lunch?");
}

#[tokio::test]
async fn content_free_pushes_hold_no_text_and_muted_conversations_none() {
    let setup = Setup::start(StoreKind::Sqlite, &[]).await;
    let (alex, riya, receiver) = setup
        .alex_and_riya_with_webhook(&[], Reply::Status(200))
        .await;
    riya.set_push_mode(PushMode::ContentFree)
        .await
        .expect("content-free");
    assert_eq!(
        riya.push_settings().await.expect("settings").mode(),
        PushMode::ContentFree
    );

    send(&alex, "riya", "the secret plans").await;
    setup.wait_counter("chat_push_sent_total", &[], 1).await;
    let push = &receiver.received()[0];
    assert_signed(push);
    let raw = String::from_utf8_lossy(&push.body);
    assert!(!raw.contains("secret plans"), "{raw}");
    assert!(!raw.contains("alex"), "no sender either: {raw}");
    let body = push.json();
    assert!(body.get("body").is_none() && body.get("sender").is_none());
    assert_eq!(body["title"], "New message");
    assert_eq!(body["badge"], 1);

    // Muted: stored, counted unread, not pushed.
    let conversation = riya.open_direct("alex").await.expect("open").id;
    riya.set_muted(&conversation, true).await.expect("mute");
    let listed = riya.conversations().await.expect("list");
    assert!(listed.iter().any(|c| c.id == conversation && c.muted));
    send(&alex, "riya", "more plans").await;
    setup
        .wait_counter("chat_push_suppressed_total", &[("reason", "muted")], 1)
        .await;
    assert_eq!(receiver.received().len(), 1);

    // Unmuted, the next burst is pushed again, with both unread counted.
    riya.set_muted(&conversation, false).await.expect("unmute");
    send(&alex, "riya", "still there?").await;
    setup.wait_counter("chat_push_sent_total", &[], 2).await;
    let body = receiver.received()[1].json();
    assert_eq!(body["unread"], 3);
    assert_eq!(body["title"], "3 new messages");
}

#[tokio::test]
async fn a_job_whose_worker_was_killed_is_delivered_by_another_replica() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let db = TestDb::new(StoreKind::Postgres).await;
    let mut flags: Vec<&str> = PUSH_FLAGS.to_vec();
    flags.extend_from_slice(&["--redis-url", &redis_url]);
    let mut first = ServerProcess::start_with(&db, &flags).await;
    let alex = user(&first.url, "alex").await;
    let riya = user(&first.url, "riya").await;
    // The first request is never answered: its worker is stuck in the delivery.
    let receiver = PushReceiver::start(&[Reply::Hang], Reply::Status(200)).await;
    riya.add_webhook(&receiver.url, SECRET)
        .await
        .expect("add webhook");

    send(&alex, "riya", "lunch?").await;
    let stuck = receiver.wait_for(1).await;
    first.sigkill().await;

    // A second replica claims the job once the dead worker's lease runs out.
    let second = ServerProcess::start_with(&db, &flags).await;
    wait_counter(
        &second,
        "chat_push_sent_total",
        &[("provider", "webhook")],
        1,
    )
    .await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1].answered, Some(200));
    let ids: HashSet<&str> = received
        .iter()
        .map(|r| r.header("x-chat-delivery"))
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "the re-delivery carries the same delivery id, so the receiver can drop it"
    );
    assert_eq!(stuck[0].json(), received[1].json());
}

#[tokio::test]
async fn nobody_online_on_another_replica_is_queued_for_a_push() {
    let redis = RedisServer::start().await;
    let redis_url = redis.url();
    let db = TestDb::new(StoreKind::Postgres).await;
    let mut flags: Vec<&str> = PUSH_FLAGS.to_vec();
    flags.extend_from_slice(&["--redis-url", &redis_url]);
    let first = ServerProcess::start_with(&db, &flags).await;
    let second = ServerProcess::start_with(&db, &flags).await;
    let alex = user(&first.url, "alex").await;
    let riya = user(&second.url, "riya").await;
    let receiver = PushReceiver::start(&[], Reply::Status(200)).await;
    riya.add_webhook(&receiver.url, SECRET)
        .await
        .expect("add webhook");

    // Riya is connected to the second replica; the first sees her online in the
    // registry (a conversation with a message makes them contacts).
    let mut session = riya
        .open_session(
            chat_sdk::Cursors::new(),
            chat_sdk::SessionOptions::default(),
        )
        .await
        .expect("session");
    chat_tests::messages_until_caught_up(&mut session).await;
    send(&riya, "alex", "hello alex").await;
    let deadline = tokio::time::Instant::now() + chat_tests::DEADLINE;
    while !alex.presence(&["riya"]).await.expect("presence")[0].online {
        assert!(
            tokio::time::Instant::now() < deadline,
            "riya never showed online"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    send(&alex, "riya", "hi, over there").await;
    chat_tests::expect_event(&mut session, "the message, live", |e| match e {
        chat_sdk::Event::Message(m) if m.text == "hi, over there" => Some(()),
        _ => None,
    })
    .await;
    wait_counter(
        &first,
        "chat_push_suppressed_total",
        &[("reason", "online")],
        1,
    )
    .await;
    let metrics = first.metrics().await;
    assert_eq!(crate::counter(&metrics, "chat_push_queued_total", &[]), 0);
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn a_device_that_stopped_heartbeating_is_pushed() {
    let setup = Setup::start(
        StoreKind::Sqlite,
        &["--presence-timeout", "1s", "--heartbeat-interval", "300ms"],
    )
    .await;
    let (alex, riya, receiver) = setup
        .alex_and_riya_with_webhook(&[], Reply::Status(200))
        .await;
    send(&riya, "alex", "brb").await;

    // Her stream stays open, but the device no longer shows signs of life (nor does
    // it acknowledge what arrives): a phone gone into a tunnel.
    let silent = chat_sdk::SessionOptions {
        heartbeat_interval: Some(Duration::ZERO),
        auto_ack: false,
    };
    let mut session = riya
        .open_session(chat_sdk::Cursors::new(), silent)
        .await
        .expect("session");
    chat_tests::messages_until_caught_up(&mut session).await;
    let deadline = tokio::time::Instant::now() + chat_tests::DEADLINE;
    loop {
        let riya_now = &alex.presence(&["riya"]).await.expect("presence")[0];
        if !riya_now.online && riya_now.last_seen.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "riya never timed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    send(&alex, "riya", "are you there?").await;
    setup
        .wait_counter("chat_push_sent_total", &[("provider", "webhook")], 1)
        .await;
    assert_eq!(receiver.received()[0].json()["body"], "are you there?");
    assert_eq!(
        setup
            .counter("chat_push_suppressed_total", &[("reason", "online")])
            .await,
        0
    );
    drop(session);
}
