//! One conformance suite for the `Store` trait: every case runs on SQLite and on
//! PostgreSQL, each on a fresh database, through `chat_server::store::open` exactly as
//! the server opens it. A behaviour the chat core relies on belongs here, so that a
//! backend cannot quietly differ.

use std::sync::Arc;
use std::time::Duration;

use chat_server::domain::{
    ClientMsgId, ConversationId, ConversationKind, DeviceId, MessageText, Timestamp, UserId,
    UserName, UserRef,
};
use chat_server::store::{DeviceSession, NewMessage, Store, StoreError, StoreOptions};
use chat_tests::{StoreKind, TestDb};

/// A store on a database of its own.
struct Fixture {
    store: Arc<dyn Store>,
    _db: TestDb,
}

async fn open(kind: StoreKind) -> Fixture {
    let db = TestDb::new(kind).await;
    let store = chat_server::store::open(
        db.url(),
        &StoreOptions {
            pool_size: 8,
            statement_timeout: Duration::from_secs(10),
        },
    )
    .await
    .expect("open the store");
    Fixture { store, _db: db }
}

/// Generates one test per backend for each case: `sqlite::case` and `postgres::case`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::open(chat_tests::StoreKind::Sqlite).await;
                    super::$case(fixture.store.as_ref()).await;
                    fixture.store.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::open(chat_tests::StoreKind::Postgres).await;
                    super::$case(fixture.store.as_ref()).await;
                    fixture.store.close().await;
                }
            )*
        }
    };
}

conformance!(
    user_names_are_unique,
    last_seen_only_moves_forward,
    device_sessions_round_trip,
    direct_conversations_are_shared_and_idempotent,
    membership_is_per_user,
    appends_are_gapless_and_read_back_exactly,
    a_duplicate_send_returns_the_original_and_burns_no_seq,
    the_same_key_from_different_senders_is_two_messages,
    concurrent_appends_get_distinct_gapless_seqs,
    concurrent_duplicates_store_one_row,
    sending_marks_own_message_read_only_when_caught_up,
    concurrent_sends_from_one_sender_keep_their_own_messages_read,
    members_are_ordered_by_name_bytes,
    append_to_a_missing_conversation_fails_cleanly,
    history_pages_both_ways,
    receipts_clamp_and_only_move_forward,
    receipts_of_non_members_are_none,
    conversation_list_orders_and_summarises,
    positions_peers_and_contacts,
);

fn name(raw: &str) -> UserName {
    UserName::parse(raw).expect("valid name")
}

async fn user(store: &dyn Store, raw: &str) -> UserRef {
    store
        .create_user(&name(raw), "$argon2id$not-a-real-hash")
        .await
        .expect("create user")
}

fn text(raw: &str) -> MessageText {
    MessageText::parse(raw.to_owned(), 64 * 1024).expect("valid text")
}

fn key(raw: &str) -> ClientMsgId {
    ClientMsgId::parse(raw.to_owned()).expect("valid key")
}

async fn send(store: &dyn Store, conv: ConversationId, from: &UserRef, k: &str, body: &str) -> u64 {
    let appended = store
        .append_message(NewMessage {
            conversation_id: conv,
            sender: from.clone(),
            client_msg_id: key(k),
            text: text(body),
        })
        .await
        .expect("append");
    assert!(!appended.duplicate, "{k} is new");
    appended.message.seq
}

async fn pair(store: &dyn Store) -> (UserRef, UserRef, ConversationId) {
    let alex = user(store, "alex").await;
    let riya = user(store, "riya").await;
    let conv = store
        .ensure_direct(alex.id, riya.id)
        .await
        .expect("ensure direct");
    (alex, riya, conv)
}

// --- users and sessions ---

async fn user_names_are_unique(store: &dyn Store) {
    let alex = user(store, "alex").await;
    let again = store.create_user(&name("alex"), "other").await;
    assert!(
        matches!(again, Err(StoreError::Conflict)),
        "a taken name is a conflict: {again:?}"
    );
    let found = store
        .user_by_name(&name("alex"))
        .await
        .expect("lookup")
        .expect("alex exists");
    assert_eq!(found.user, alex);
    assert_eq!(found.password_hash, "$argon2id$not-a-real-hash");
    assert!(
        store
            .user_by_name(&name("nobody"))
            .await
            .expect("lookup")
            .is_none()
    );
}

async fn last_seen_only_moves_forward(store: &dyn Store) {
    let alex = user(store, "alex").await;
    let riya = user(store, "riya").await;
    let nobody = UserId(uuid::Uuid::now_v7());
    assert!(
        store
            .last_seen(&[alex.id, riya.id])
            .await
            .expect("read")
            .is_empty()
    );
    assert!(store.last_seen(&[]).await.expect("read").is_empty());

    store
        .set_last_seen(&[alex.id, riya.id, nobody], Timestamp(2_000_000_123_456))
        .await
        .expect("set");
    store
        .set_last_seen(&[alex.id], Timestamp(1_000_000_000_000))
        .await
        .expect("set earlier");
    store.set_last_seen(&[], Timestamp(0)).await.expect("no-op");
    let mut seen = store
        .last_seen(&[alex.id, riya.id, nobody])
        .await
        .expect("read");
    seen.sort();
    let mut expected = vec![
        (alex.id, Timestamp(2_000_000_123_456)),
        (riya.id, Timestamp(2_000_000_123_456)),
    ];
    expected.sort();
    assert_eq!(seen, expected, "exact to the microsecond, never moved back");
}

async fn device_sessions_round_trip(store: &dyn Store) {
    let alex = user(store, "alex").await;
    let session = DeviceSession {
        id: DeviceId(uuid::Uuid::now_v7()),
        user: alex.clone(),
        device_name: "laptop – ünïcode".into(),
        created_at: Timestamp(1_764_000_000_123_456),
        expires_at: Timestamp(1_766_592_000_654_321),
    };
    store
        .create_session(&session, "hash-1")
        .await
        .expect("create");
    let duplicate = store.create_session(&session, "hash-1").await;
    assert!(matches!(duplicate, Err(StoreError::Conflict)));
    let found = store
        .session_by_token_hash("hash-1")
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(found.id, session.id);
    assert_eq!(found.user, alex);
    assert_eq!(found.device_name, session.device_name);
    assert_eq!(found.created_at, session.created_at);
    assert_eq!(found.expires_at, session.expires_at);
    assert!(
        store
            .session_by_token_hash("hash-2")
            .await
            .expect("lookup")
            .is_none()
    );
    store.delete_session(session.id).await.expect("delete");
    store
        .delete_session(session.id)
        .await
        .expect("deleting twice is fine");
    assert!(
        store
            .session_by_token_hash("hash-1")
            .await
            .expect("lookup")
            .is_none()
    );
}

// --- conversations ---

async fn direct_conversations_are_shared_and_idempotent(store: &dyn Store) {
    let alex = user(store, "alex").await;
    let riya = user(store, "riya").await;
    // Both sides opening at once meet in one conversation.
    let (a, b) = tokio::join!(
        store.ensure_direct(alex.id, riya.id),
        store.ensure_direct(riya.id, alex.id)
    );
    let (a, b) = (a.expect("alex opens"), b.expect("riya opens"));
    assert_eq!(a, b);
    assert_eq!(a, ConversationId::direct(alex.id, riya.id));
    assert_eq!(
        store.ensure_direct(alex.id, riya.id).await.expect("again"),
        a
    );
    let members = store.members(a).await.expect("members");
    assert_eq!(
        members.iter().map(|r| r.user.clone()).collect::<Vec<_>>(),
        vec![alex.clone(), riya.clone()],
        "both members, ordered by name"
    );
    assert!(
        members
            .iter()
            .all(|r| r.delivered_seq == 0 && r.read_seq == 0)
    );
    // An empty conversation is not listed and makes nobody a contact.
    assert!(
        store
            .conversations_of(alex.id, None, 100)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(store.contacts(alex.id).await.expect("contacts").is_empty());
}

async fn membership_is_per_user(store: &dyn Store) {
    let (alex, _riya, conv) = pair(store).await;
    let sam = user(store, "sam").await;
    let mine = store
        .membership(conv, alex.id)
        .await
        .expect("membership")
        .expect("alex is a member");
    assert_eq!(mine.user, alex);
    assert_eq!(mine.conversation_id, conv);
    assert!(
        store
            .membership(conv, sam.id)
            .await
            .expect("membership")
            .is_none()
    );
    let unknown = ConversationId(uuid::Uuid::now_v7());
    assert!(store.members(unknown).await.expect("members").is_empty());
    assert!(
        store
            .membership(unknown, alex.id)
            .await
            .expect("membership")
            .is_none()
    );
}

// --- messages ---

async fn appends_are_gapless_and_read_back_exactly(store: &dyn Store) {
    let (alex, riya, conv) = pair(store).await;
    let bodies = [
        "lunch?",
        "🍜 ramen — at 12:30?",
        "Multi\nline\ttext with \"quotes\" and 'apostrophes' and \\ backslashes",
    ];
    let mut sent = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let from = if i % 2 == 0 { &alex } else { &riya };
        let appended = store
            .append_message(NewMessage {
                conversation_id: conv,
                sender: from.clone(),
                client_msg_id: key(&format!("k{i}")),
                text: text(body),
            })
            .await
            .expect("append");
        assert!(!appended.duplicate);
        assert_eq!(appended.message.seq, i as u64 + 1, "seq is last_seq + 1");
        sent.push(appended.message);
    }
    let long = "x".repeat(4096);
    let seq = send(store, conv, &alex, "long", &long).await;
    assert_eq!(seq, 4);

    let stored = store.messages_after(conv, 0, 100).await.expect("history");
    assert_eq!(stored.len(), 4);
    assert_eq!(&stored[..3], &sent[..], "stored exactly as acknowledged");
    assert_eq!(stored[3].text.as_str(), long);
    let found = store
        .find_sent(conv, riya.id, &key("k1"))
        .await
        .expect("find")
        .expect("riya's message");
    assert_eq!(found, sent[1]);
    assert!(
        store
            .find_sent(conv, alex.id, &key("k1"))
            .await
            .expect("find")
            .is_none(),
        "keys are per sender"
    );
}

async fn a_duplicate_send_returns_the_original_and_burns_no_seq(store: &dyn Store) {
    let (alex, _riya, conv) = pair(store).await;
    let first = send(store, conv, &alex, "same", "hello").await;
    let retry = store
        .append_message(NewMessage {
            conversation_id: conv,
            sender: alex.clone(),
            client_msg_id: key("same"),
            text: text("a different body is ignored"),
        })
        .await
        .expect("retry");
    assert!(retry.duplicate);
    assert_eq!(retry.message.seq, first);
    assert_eq!(retry.message.text.as_str(), "hello");
    assert_eq!(send(store, conv, &alex, "next", "next").await, first + 1);
    assert_eq!(
        store.messages_after(conv, 0, 100).await.expect("h").len(),
        2
    );
}

async fn the_same_key_from_different_senders_is_two_messages(store: &dyn Store) {
    let (alex, riya, conv) = pair(store).await;
    assert_eq!(send(store, conv, &alex, "k", "from alex").await, 1);
    assert_eq!(send(store, conv, &riya, "k", "from riya").await, 2);
}

async fn concurrent_appends_get_distinct_gapless_seqs(store: &dyn Store) {
    let (alex, riya, conv) = pair(store).await;
    let sends = (0..200).map(|i| {
        let from = if i % 2 == 0 {
            alex.clone()
        } else {
            riya.clone()
        };
        async move {
            store
                .append_message(NewMessage {
                    conversation_id: conv,
                    sender: from,
                    client_msg_id: key(&format!("c{i}")),
                    text: text(&format!("message {i}")),
                })
                .await
                .expect("append")
        }
    });
    let appended = futures::future::join_all(sends).await;
    let mut seqs: Vec<u64> = appended.iter().map(|a| a.message.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let stored = store.messages_after(conv, 0, 500).await.expect("history");
    assert_eq!(stored.len(), 200);
    for a in &appended {
        assert_eq!(stored[a.message.seq as usize - 1], a.message);
    }
}

async fn concurrent_duplicates_store_one_row(store: &dyn Store) {
    let (alex, _riya, conv) = pair(store).await;
    let sends = (0..20).map(|_| {
        store.append_message(NewMessage {
            conversation_id: conv,
            sender: alex.clone(),
            client_msg_id: key("racing"),
            text: text("once"),
        })
    });
    let results: Vec<_> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.expect("append"))
        .collect();
    assert_eq!(results.iter().filter(|a| !a.duplicate).count(), 1);
    assert!(results.iter().all(|a| a.message == results[0].message));
    assert_eq!(results[0].message.seq, 1);
    assert_eq!(
        send(store, conv, &alex, "after", "after").await,
        2,
        "no seq burnt"
    );
}

async fn sending_marks_own_message_read_only_when_caught_up(store: &dyn Store) {
    let (alex, riya, conv) = pair(store).await;
    send(store, conv, &alex, "a1", "hi").await;
    let alex_pos = store
        .membership(conv, alex.id)
        .await
        .expect("m")
        .expect("member");
    assert_eq!((alex_pos.delivered_seq, alex_pos.read_seq), (1, 1));
    // Riya has not read seq 1, so her reply does not mark it read for her.
    send(store, conv, &riya, "r1", "hey").await;
    let riya_pos = store
        .membership(conv, riya.id)
        .await
        .expect("m")
        .expect("member");
    assert_eq!((riya_pos.delivered_seq, riya_pos.read_seq), (0, 0));
}

async fn concurrent_sends_from_one_sender_keep_their_own_messages_read(store: &dyn Store) {
    // One user sending from several devices at once: each send must see the previous
    // one's watermark move, or their own messages would turn unread for good.
    let (alex, _riya, conv) = pair(store).await;
    let sends = (0..50).map(|i| {
        store.append_message(NewMessage {
            conversation_id: conv,
            sender: alex.clone(),
            client_msg_id: key(&format!("d{i}")),
            text: text("from one of my devices"),
        })
    });
    for result in futures::future::join_all(sends).await {
        result.expect("append");
    }
    let own = store
        .membership(conv, alex.id)
        .await
        .expect("m")
        .expect("member");
    assert_eq!((own.delivered_seq, own.read_seq), (50, 50));
    assert_eq!(send(store, conv, &alex, "after", "and one more").await, 51);
    let own = store
        .membership(conv, alex.id)
        .await
        .expect("m")
        .expect("member");
    assert_eq!((own.delivered_seq, own.read_seq), (51, 51));
}

async fn members_are_ordered_by_name_bytes(store: &dyn Store) {
    // In bytes '-' < '_'; a locale collation (the Postgres test databases use ICU
    // en-US) puts "a_b" first.
    let underscore = user(store, "a_b").await;
    let dash = user(store, "a-c").await;
    let conv = store
        .ensure_direct(dash.id, underscore.id)
        .await
        .expect("open");
    let names: Vec<String> = store
        .members(conv)
        .await
        .expect("members")
        .iter()
        .map(|r| r.user.name.as_str().to_owned())
        .collect();
    assert_eq!(names, vec!["a-c".to_owned(), "a_b".to_owned()]);
}

async fn append_to_a_missing_conversation_fails_cleanly(store: &dyn Store) {
    let alex = user(store, "alex").await;
    let result = store
        .append_message(NewMessage {
            conversation_id: ConversationId(uuid::Uuid::now_v7()),
            sender: alex,
            client_msg_id: key("k"),
            text: text("into the void"),
        })
        .await;
    assert!(result.is_err(), "{result:?}");
    assert!(!result.expect_err("failed").is_transient());
}

async fn history_pages_both_ways(store: &dyn Store) {
    let (alex, _riya, conv) = pair(store).await;
    for i in 1..=25 {
        send(store, conv, &alex, &format!("h{i}"), &format!("m{i}")).await;
    }
    let seqs = |ms: Vec<chat_server::domain::Message>| ms.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.messages_after(conv, 0, 10).await.expect("h")),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(store.messages_after(conv, 20, 10).await.expect("h")),
        (21..=25).collect::<Vec<_>>()
    );
    assert!(
        store
            .messages_after(conv, 25, 10)
            .await
            .expect("h")
            .is_empty()
    );
    assert_eq!(
        seqs(store.messages_before(conv, u64::MAX, 10).await.expect("h")),
        (16..=25).collect::<Vec<_>>(),
        "the newest page, ascending"
    );
    assert_eq!(
        seqs(store.messages_before(conv, 5, 10).await.expect("h")),
        (1..=4).collect::<Vec<_>>()
    );
    assert!(
        store
            .messages_before(conv, 1, 10)
            .await
            .expect("h")
            .is_empty()
    );
    let other = ConversationId(uuid::Uuid::now_v7());
    assert!(
        store
            .messages_after(other, 0, 10)
            .await
            .expect("h")
            .is_empty()
    );
}

// --- receipts ---

async fn receipts_clamp_and_only_move_forward(store: &dyn Store) {
    let (alex, riya, conv) = pair(store).await;
    for i in 1..=5 {
        send(store, conv, &alex, &format!("r{i}"), "m").await;
    }
    let update = store
        .advance_receipt(conv, riya.id, 3, 0)
        .await
        .expect("ack")
        .expect("member");
    assert!(update.changed);
    assert_eq!(
        (update.receipt.delivered_seq, update.receipt.read_seq),
        (3, 0)
    );
    assert_eq!(update.receipt.user, riya);

    let back = store
        .advance_receipt(conv, riya.id, 1, 0)
        .await
        .expect("ack")
        .expect("member");
    assert!(!back.changed, "never backwards");
    assert_eq!((back.receipt.delivered_seq, back.receipt.read_seq), (3, 0));

    let read = store
        .advance_receipt(conv, riya.id, 0, 4)
        .await
        .expect("read")
        .expect("member");
    assert!(read.changed);
    assert_eq!(
        (read.receipt.delivered_seq, read.receipt.read_seq),
        (4, 4),
        "read implies delivered"
    );

    let beyond = store
        .advance_receipt(conv, riya.id, 1_000, 1_000)
        .await
        .expect("ack")
        .expect("member");
    assert_eq!(
        (beyond.receipt.delivered_seq, beyond.receipt.read_seq),
        (5, 5),
        "clamped to last_seq"
    );
    let stored = store
        .membership(conv, riya.id)
        .await
        .expect("m")
        .expect("member");
    assert_eq!((stored.delivered_seq, stored.read_seq), (5, 5));

    // Concurrent acks from several devices end at the highest.
    send(store, conv, &alex, "r6", "m").await;
    let acks = (0..=6)
        .rev()
        .map(|seq| store.advance_receipt(conv, riya.id, seq, 0));
    for result in futures::future::join_all(acks).await {
        result.expect("ack").expect("member");
    }
    let stored = store
        .membership(conv, riya.id)
        .await
        .expect("m")
        .expect("member");
    assert_eq!((stored.delivered_seq, stored.read_seq), (6, 5));
}

async fn receipts_of_non_members_are_none(store: &dyn Store) {
    let (alex, _riya, conv) = pair(store).await;
    send(store, conv, &alex, "k", "m").await;
    let sam = user(store, "sam").await;
    assert!(
        store
            .advance_receipt(conv, sam.id, 1, 1)
            .await
            .expect("ack")
            .is_none()
    );
    let unknown = ConversationId(uuid::Uuid::now_v7());
    assert!(
        store
            .advance_receipt(unknown, alex.id, 1, 1)
            .await
            .expect("ack")
            .is_none()
    );
}

async fn conversation_list_orders_and_summarises(store: &dyn Store) {
    let (alex, riya, with_riya) = pair(store).await;
    let sam = user(store, "sam").await;
    let with_sam = store.ensure_direct(alex.id, sam.id).await.expect("open");
    send(store, with_riya, &riya, "r1", "first").await;
    send(store, with_sam, &sam, "s1", "second").await;
    // Timestamps have microsecond precision: make "more recent" unambiguous.
    tokio::time::sleep(Duration::from_millis(2)).await;
    send(store, with_riya, &riya, "r2", "latest").await;

    let list = store
        .conversations_of(alex.id, None, 100)
        .await
        .expect("list");
    assert_eq!(
        list.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![with_riya, with_sam],
        "most recently active first"
    );
    let first = &list[0];
    assert_eq!(first.kind, ConversationKind::Direct);
    assert_eq!(first.last_seq, 2);
    let last = first.last_message.as_ref().expect("a last message");
    assert_eq!(last.seq, 2);
    assert_eq!(last.text.as_str(), "latest");
    assert_eq!(last.sender, riya);
    assert_eq!(last.client_msg_id.as_str(), "r2");
    let stored = store.messages_after(with_riya, 1, 1).await.expect("h");
    assert_eq!(last, &stored[0], "the summary is the stored message");
    assert_eq!(first.own.user, alex);
    assert_eq!((first.own.delivered_seq, first.own.read_seq), (0, 0));
    assert_eq!(first.others.len(), 1);
    assert_eq!(first.others[0].user, riya);
    assert_eq!(
        (first.others[0].delivered_seq, first.others[0].read_seq),
        (2, 2)
    );

    let limited = store
        .conversations_of(alex.id, None, 1)
        .await
        .expect("list");
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].id, with_riya);
    let only = store
        .conversations_of(alex.id, Some(with_sam), 100)
        .await
        .expect("list");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, with_sam);
    assert_eq!(
        only[0].last_message.as_ref().map(|m| m.text.as_str()),
        Some("second")
    );
    // Not a member: nothing.
    assert!(
        store
            .conversations_of(riya.id, Some(with_sam), 100)
            .await
            .expect("list")
            .is_empty()
    );
}

async fn positions_peers_and_contacts(store: &dyn Store) {
    let (alex, riya, with_riya) = pair(store).await;
    let sam = user(store, "sam").await;
    let with_sam = store.ensure_direct(alex.id, sam.id).await.expect("open");
    send(store, with_riya, &alex, "a1", "hi").await;
    send(store, with_riya, &alex, "a2", "there").await;
    store
        .advance_receipt(with_riya, riya.id, 2, 1)
        .await
        .expect("ack")
        .expect("member");

    let mut positions = store.positions(alex.id).await.expect("positions");
    positions.sort_by_key(|p| p.last_seq);
    assert_eq!(positions.len(), 2, "empty conversations have positions too");
    assert_eq!(positions[0].conversation_id, with_sam);
    assert_eq!(positions[0].last_seq, 0);
    assert_eq!(positions[1].conversation_id, with_riya);
    assert_eq!(
        (
            positions[1].last_seq,
            positions[1].delivered_seq,
            positions[1].read_seq
        ),
        (2, 2, 2)
    );

    let peers = store.peer_receipts(alex.id).await.expect("peers");
    let riya_receipt = peers
        .iter()
        .find(|r| r.user.id == riya.id)
        .expect("riya's receipt");
    assert_eq!(riya_receipt.conversation_id, with_riya);
    assert_eq!((riya_receipt.delivered_seq, riya_receipt.read_seq), (2, 1));
    assert!(peers.iter().all(|r| r.user.id != alex.id));

    // Sam shares only an empty conversation with Alex: not a contact yet.
    assert_eq!(
        store.contacts(alex.id).await.expect("contacts"),
        vec![riya.clone()]
    );
    assert_eq!(
        store.contacts(riya.id).await.expect("contacts"),
        vec![alex.clone()]
    );
    assert!(store.contacts(sam.id).await.expect("contacts").is_empty());
}
