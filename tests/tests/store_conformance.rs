//! One conformance suite for the `Store` trait: every case runs on SQLite and on
//! PostgreSQL, each on a fresh database, through `chat_server::store::open` exactly as
//! the server opens it. A behaviour the chat core relies on belongs here, so that a
//! backend cannot quietly differ.

use std::sync::Arc;
use std::time::Duration;

use chat_server::domain::{
    ClientMsgId, ConversationId, ConversationKind, DeviceId, MessageText, PushTargetId, Timestamp,
    UserId, UserName, UserRef,
};
use chat_server::store::{
    DeviceSession, NewMessage, PushEndpoint, PushTarget, QueuedPush, Store, StoreError,
    StoreOptions,
};
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
    failing_appends_in_a_group_leave_the_others_in,
    sends_and_receipts_across_many_conversations_at_once_are_exact,
    history_pages_both_ways,
    receipts_clamp_and_only_move_forward,
    receipts_of_non_members_are_none,
    conversation_list_orders_and_summarises,
    positions_peers_and_contacts,
    push_targets_replace_by_url_and_go_with_their_device,
    content_free_is_off_until_set,
    muting_is_per_member,
    push_context_reads_the_member_and_the_badge,
    pushed_watermark_only_moves_forward,
    server_keys_keep_the_first_write,
    queued_pushes_coalesce_while_unclaimed,
    claims_respect_due_times_and_leases,
    rescheduled_and_dead_pushes,
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

/// Sends that fail, queued together with sends that do not (so that they share groups):
/// each failure is its own, and the others are stored gapless, once each.
async fn failing_appends_in_a_group_leave_the_others_in(store: &dyn Store) {
    let (alex, _riya, conv) = pair(store).await;
    let missing = ConversationId(uuid::Uuid::now_v7());
    let sends = (0..60).map(|i| {
        let alex = alex.clone();
        let conversation_id = if i % 6 == 5 { missing } else { conv };
        async move {
            let result = store
                .append_message(NewMessage {
                    conversation_id,
                    sender: alex,
                    client_msg_id: key(&format!("g{i}")),
                    text: text(&format!("m{i}")),
                })
                .await;
            (conversation_id, result)
        }
    });
    let mut stored = Vec::new();
    for (conversation_id, result) in futures::future::join_all(sends).await {
        if conversation_id == missing {
            assert!(result.is_err(), "{result:?}");
        } else {
            let appended = result.expect("a send into an existing conversation");
            assert!(!appended.duplicate);
            stored.push(appended.message.seq);
        }
    }
    stored.sort_unstable();
    assert_eq!(stored, (1..=50).collect::<Vec<_>>());
    let rows = store.messages_after(conv, 0, 100).await.expect("read");
    assert_eq!(rows.len(), 50, "each stored once");
}

/// Sends into many conversations at once (so that groups hold one per conversation, the
/// stores' multi-row way), with retries of earlier sends mixed in, then receipts of
/// every member at once with a non-member's among them: each answer is its own, exact.
async fn sends_and_receipts_across_many_conversations_at_once_are_exact(store: &dyn Store) {
    const PAIRS: usize = 24;
    const ROUNDS: u64 = 4;
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let sender = user(store, &format!("s{i}")).await;
        let reader = user(store, &format!("r{i}")).await;
        let conv = store
            .ensure_direct(sender.id, reader.id)
            .await
            .expect("ensure direct");
        pairs.push((sender, reader, conv));
    }
    for round in 1..=ROUNDS {
        let sends = pairs.iter().enumerate().flat_map(|(i, (sender, _, conv))| {
            // Every third pair also retries its previous round's send in this round.
            let retry = (round > 1 && i % 3 == 0).then(|| (round - 1, true));
            std::iter::once((round, false))
                .chain(retry)
                .map(move |(k, is_retry)| async move {
                    let appended = store
                        .append_message(NewMessage {
                            conversation_id: *conv,
                            sender: sender.clone(),
                            client_msg_id: key(&format!("p{i}-{k}")),
                            text: text(&format!("pair {i} message {k}")),
                        })
                        .await
                        .expect("append");
                    (i, k, is_retry, appended)
                })
        });
        for (i, k, is_retry, appended) in futures::future::join_all(sends).await {
            let (sender, _, conv) = &pairs[i];
            assert_eq!(appended.duplicate, is_retry, "pair {i} message {k}");
            assert_eq!(appended.message.seq, k, "pair {i} message {k}");
            assert_eq!(appended.message.conversation_id, *conv);
            assert_eq!(&appended.message.sender, sender);
            assert_eq!(
                appended.message.text.as_str(),
                format!("pair {i} message {k}")
            );
            let stored = store
                .messages_after(*conv, k - 1, 1)
                .await
                .expect("read back");
            assert_eq!(stored, vec![appended.message], "pair {i} message {k}");
        }
    }
    for (i, (sender, reader, conv)) in pairs.iter().enumerate() {
        let stored = store.messages_after(*conv, 0, 100).await.expect("history");
        assert_eq!(stored.len() as u64, ROUNDS, "pair {i}: each stored once");
        let own = store
            .membership(*conv, sender.id)
            .await
            .expect("m")
            .expect("member");
        assert_eq!(
            (own.delivered_seq, own.read_seq),
            (ROUNDS, ROUNDS),
            "pair {i}"
        );
        let theirs = store
            .membership(*conv, reader.id)
            .await
            .expect("m")
            .expect("member");
        assert_eq!((theirs.delivered_seq, theirs.read_seq), (0, 0), "pair {i}");
    }

    // Readers acknowledge delivery of all (beyond the last seq: clamped), every other
    // reader reads up to 2, and an outsider's receipt rides in the same groups.
    let outsider = user(store, "outsider").await;
    let acks = pairs
        .iter()
        .enumerate()
        .map(|(i, (_, reader, conv))| async move {
            let read = if i % 2 == 0 { 2 } else { 0 };
            let update = store
                .advance_receipt(*conv, reader.id, ROUNDS + 10, read)
                .await
                .expect("ack");
            (i, read, update)
        });
    let stranger = store.advance_receipt(pairs[0].2, outsider.id, 1, 1);
    let (answers, stranger) = futures::join!(futures::future::join_all(acks), stranger);
    assert!(stranger.expect("ack").is_none(), "not a member");
    for (i, read, update) in answers {
        let (_, reader, conv) = &pairs[i];
        let update = update.expect("a member");
        assert!(update.changed, "pair {i}");
        assert_eq!(update.receipt.conversation_id, *conv);
        assert_eq!(&update.receipt.user, reader);
        assert_eq!(
            (update.receipt.delivered_seq, update.receipt.read_seq),
            (ROUNDS, read),
            "pair {i}"
        );
        let stored = store
            .membership(*conv, reader.id)
            .await
            .expect("m")
            .expect("member");
        assert_eq!(
            (stored.delivered_seq, stored.read_seq),
            (ROUNDS, read),
            "pair {i}"
        );
    }
    // The same receipts again move nothing, and say so.
    let again = pairs
        .iter()
        .map(|(_, reader, conv)| store.advance_receipt(*conv, reader.id, ROUNDS, 0));
    for update in futures::future::join_all(again).await {
        let update = update.expect("ack").expect("member");
        assert!(!update.changed);
        assert_eq!(update.receipt.delivered_seq, ROUNDS);
    }
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

// --- push ---

/// A device session of the user, for push targets to belong to.
async fn device(store: &dyn Store, user: &UserRef, device_name: &str) -> DeviceId {
    let session = DeviceSession {
        id: DeviceId(uuid::Uuid::now_v7()),
        user: user.clone(),
        device_name: device_name.into(),
        created_at: Timestamp(1_764_000_000_000_000),
        expires_at: Timestamp(1_766_592_000_000_000),
    };
    store
        .create_session(&session, &format!("hash-{}", session.id))
        .await
        .expect("create session");
    session.id
}

fn webhook(user: &UserRef, device: DeviceId, url: &str, secret: &str, at: i64) -> PushTarget {
    PushTarget {
        id: PushTargetId(uuid::Uuid::now_v7()),
        user: user.id,
        device,
        device_name: String::new(),
        endpoint: PushEndpoint::Webhook {
            url: url.into(),
            secret: secret.into(),
        },
        created_at: Timestamp(at),
    }
}

async fn push_targets_replace_by_url_and_go_with_their_device(store: &dyn Store) {
    let (alex, riya, _conv) = pair(store).await;
    let laptop = device(store, &alex, "laptop").await;
    let phone = device(store, &alex, "phone").await;
    let riya_phone = device(store, &riya, "riya's phone").await;

    let hook = webhook(
        &alex,
        laptop,
        "https://hooks.example/alex",
        "s1",
        1_764_000_000_000_001,
    );
    let stored = store.add_push_target(&hook).await.expect("add webhook");
    assert_eq!(
        stored,
        PushTarget {
            device_name: "laptop".into(),
            ..hook.clone()
        }
    );
    let subscription = PushTarget {
        id: PushTargetId(uuid::Uuid::now_v7()),
        user: alex.id,
        device: laptop,
        device_name: String::new(),
        endpoint: PushEndpoint::WebPush {
            endpoint: "https://push.example/send/abc".into(),
            p256dh: [4u8].into_iter().chain(1..=64).collect(),
            auth: (100..116).collect(),
        },
        created_at: Timestamp(1_764_000_000_000_002),
    };
    let web = store
        .add_push_target(&subscription)
        .await
        .expect("add web push");
    assert_eq!(
        web.endpoint, subscription.endpoint,
        "keys stored byte for byte"
    );
    // The same URL for another user is another target.
    let riyas = store
        .add_push_target(&webhook(
            &riya,
            riya_phone,
            "https://hooks.example/alex",
            "r1",
            1_764_000_000_000_003,
        ))
        .await
        .expect("add riya's");
    assert_ne!(riyas.id, hook.id);

    let listed = store.push_targets(alex.id).await.expect("list");
    assert_eq!(
        listed.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![subscription.id, hook.id],
        "newest first"
    );

    // Registering the URL again (another device, a new secret) replaces the target
    // and keeps its id and creation time.
    let again = webhook(
        &alex,
        phone,
        "https://hooks.example/alex",
        "s2",
        1_764_000_000_000_009,
    );
    let replaced = store.add_push_target(&again).await.expect("replace");
    assert_eq!(replaced.id, hook.id);
    assert_eq!(replaced.created_at, hook.created_at);
    assert_eq!(
        (replaced.device, replaced.device_name.as_str()),
        (phone, "phone")
    );
    assert_eq!(replaced.endpoint, again.endpoint);
    let listed = store.push_targets(alex.id).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&replaced));

    // Only the owner removes a target.
    assert!(
        !store
            .remove_push_target(riya.id, hook.id)
            .await
            .expect("remove")
    );
    assert!(
        store
            .remove_push_target(alex.id, hook.id)
            .await
            .expect("remove")
    );
    assert!(
        !store
            .remove_push_target(alex.id, hook.id)
            .await
            .expect("again")
    );
    assert_eq!(
        store.push_targets(alex.id).await.expect("list"),
        vec![web.clone()]
    );
    // A logout takes the device's targets with it.
    store.delete_session(laptop).await.expect("logout");
    assert!(store.push_targets(alex.id).await.expect("list").is_empty());
    assert_eq!(
        store.push_targets(riya.id).await.expect("list"),
        vec![riyas]
    );
}

async fn content_free_is_off_until_set(store: &dyn Store) {
    let alex = user(store, "alex").await;
    let riya = user(store, "riya").await;
    assert!(!store.content_free(alex.id).await.expect("read"));
    store.set_content_free(alex.id, true).await.expect("set");
    assert!(store.content_free(alex.id).await.expect("read"));
    assert!(
        !store.content_free(riya.id).await.expect("read"),
        "per user"
    );
    store.set_content_free(alex.id, false).await.expect("unset");
    assert!(!store.content_free(alex.id).await.expect("read"));
}

async fn muting_is_per_member(store: &dyn Store) {
    let (alex, riya, conv) = pair(store).await;
    let sam = user(store, "sam").await;
    send(store, conv, &riya, "m1", "hi").await;
    assert!(
        !store.set_muted(conv, sam.id, true).await.expect("mute"),
        "not a member"
    );
    assert!(store.set_muted(conv, alex.id, true).await.expect("mute"));
    let muted = |list: Vec<chat_server::store::ConversationSummary>| {
        list.iter().map(|c| (c.id, c.muted)).collect::<Vec<_>>()
    };
    assert_eq!(
        muted(
            store
                .conversations_of(alex.id, None, 100)
                .await
                .expect("list")
        ),
        vec![(conv, true)]
    );
    assert_eq!(
        muted(
            store
                .conversations_of(riya.id, None, 100)
                .await
                .expect("list")
        ),
        vec![(conv, false)]
    );
    let context = store
        .push_context(conv, alex.id)
        .await
        .expect("context")
        .expect("member");
    assert!(context.muted);
    assert!(store.set_muted(conv, alex.id, false).await.expect("unmute"));
    assert_eq!(
        muted(
            store
                .conversations_of(alex.id, None, 100)
                .await
                .expect("list")
        ),
        vec![(conv, false)]
    );
}

async fn push_context_reads_the_member_and_the_badge(store: &dyn Store) {
    let (alex, riya, with_alex) = pair(store).await;
    let sam = user(store, "sam").await;
    let with_sam = store.ensure_direct(riya.id, sam.id).await.expect("open");
    let empty = store.ensure_direct(alex.id, sam.id).await.expect("open");
    for i in 1..=3 {
        send(
            store,
            with_alex,
            &alex,
            &format!("a{i}"),
            &format!("from alex {i}"),
        )
        .await;
    }
    send(store, with_sam, &sam, "s1", "from sam 1").await;
    send(store, with_sam, &sam, "s2", "from sam 2").await;
    store
        .advance_receipt(with_alex, riya.id, 0, 1)
        .await
        .expect("read")
        .expect("member");
    store.set_content_free(riya.id, true).await.expect("set");

    let context = store
        .push_context(with_alex, riya.id)
        .await
        .expect("context")
        .expect("member");
    assert_eq!(context.recipient, riya);
    assert_eq!(
        (
            context.last_seq,
            context.delivered_seq,
            context.read_seq,
            context.pushed_seq
        ),
        (3, 1, 1, 0)
    );
    assert!(!context.muted);
    assert!(context.content_free);
    assert_eq!(context.total_unread, 2 + 2, "unread here and with sam");
    let newest = store.messages_after(with_alex, 2, 1).await.expect("h");
    assert_eq!(context.last_message.as_ref(), newest.first());
    assert_eq!(
        context.last_message.as_ref().map(|m| m.text.as_str()),
        Some("from alex 3")
    );

    // The sender has read their own messages; an empty conversation has no message.
    let own = store
        .push_context(with_alex, alex.id)
        .await
        .expect("context")
        .expect("member");
    assert_eq!((own.read_seq, own.total_unread), (3, 0));
    assert!(!own.content_free);
    let nothing_yet = store
        .push_context(empty, alex.id)
        .await
        .expect("context")
        .expect("member");
    assert_eq!(nothing_yet.last_seq, 0);
    assert!(nothing_yet.last_message.is_none());

    assert!(
        store
            .push_context(with_alex, sam.id)
            .await
            .expect("context")
            .is_none(),
        "not a member"
    );
    let unknown = ConversationId(uuid::Uuid::now_v7());
    assert!(
        store
            .push_context(unknown, riya.id)
            .await
            .expect("context")
            .is_none()
    );
}

async fn pushed_watermark_only_moves_forward(store: &dyn Store) {
    let (alex, riya, conv) = pair(store).await;
    let sam = user(store, "sam").await;
    for i in 1..=3 {
        send(store, conv, &alex, &format!("p{i}"), "m").await;
    }
    assert!(store.advance_pushed(conv, riya.id, 2).await.expect("push"));
    assert!(
        !store.advance_pushed(conv, riya.id, 2).await.expect("again"),
        "another worker pushed this burst"
    );
    assert!(!store.advance_pushed(conv, riya.id, 1).await.expect("back"));
    assert_eq!(
        store
            .push_context(conv, riya.id)
            .await
            .expect("context")
            .expect("member")
            .pushed_seq,
        2
    );
    assert!(store.advance_pushed(conv, riya.id, 3).await.expect("push"));
    assert_eq!(
        store
            .push_context(conv, riya.id)
            .await
            .expect("context")
            .expect("member")
            .pushed_seq,
        3
    );
    assert_eq!(
        store
            .push_context(conv, alex.id)
            .await
            .expect("context")
            .expect("member")
            .pushed_seq,
        0,
        "per member"
    );
    assert!(
        !store
            .advance_pushed(conv, sam.id, 3)
            .await
            .expect("not a member")
    );
}

async fn server_keys_keep_the_first_write(store: &dyn Store) {
    assert_eq!(
        store.server_key("vapid", "first").await.expect("key"),
        "first"
    );
    assert_eq!(
        store.server_key("vapid", "second").await.expect("key"),
        "first"
    );
    assert_eq!(
        store.server_key("other", "second").await.expect("key"),
        "second"
    );
    // Replicas starting together agree on one.
    let (a, b) = tokio::join!(
        store.server_key("racing", "a"),
        store.server_key("racing", "b")
    );
    let (a, b) = (a.expect("key"), b.expect("key"));
    assert_eq!(a, b);
    assert!(a == "a" || a == "b");
}

/// A fixed clock for the queue: every time is given, none is read.
const T0: i64 = 1_800_000_000_000_000;
const SECOND: i64 = 1_000_000;

fn job(key: Option<&str>, payload: &str, due_at: i64) -> QueuedPush {
    QueuedPush {
        id: uuid::Uuid::now_v7(),
        coalesce_key: key.map(str::to_owned),
        payload: payload.into(),
        due_at: Timestamp(due_at),
    }
}

async fn claim(store: &dyn Store, now: i64, lease: i64, limit: u32) -> Vec<QueuedPush> {
    store
        .claim_pushes("worker-1", Timestamp(now), Timestamp(now + lease), limit)
        .await
        .expect("claim")
}

async fn queued_pushes_coalesce_while_unclaimed(store: &dyn Store) {
    let first = job(Some("conv:riya"), "first", T0);
    assert!(store.enqueue_push(&first).await.expect("enqueue"));
    assert!(
        !store
            .enqueue_push(&job(Some("conv:riya"), "burst", T0))
            .await
            .expect("enqueue"),
        "the waiting row covers the burst"
    );
    let other_key = job(Some("conv:sam"), "other key", T0 + 1);
    assert!(store.enqueue_push(&other_key).await.expect("enqueue"));
    let unkeyed = [job(None, "a", T0 + 2), job(None, "b", T0 + 3)];
    for j in &unkeyed {
        assert!(
            store.enqueue_push(j).await.expect("enqueue"),
            "no key, no coalescing"
        );
    }
    assert_eq!(
        claim(store, T0 + 3, 30 * SECOND, 10).await,
        vec![
            first.clone(),
            other_key,
            unkeyed[0].clone(),
            unkeyed[1].clone()
        ],
        "exactly as queued, earliest due first"
    );
    // Once claimed, the next burst queues behind it, and coalesces again.
    let next = job(Some("conv:riya"), "next burst", T0 + 5 * SECOND);
    assert!(store.enqueue_push(&next).await.expect("enqueue"));
    assert!(
        !store
            .enqueue_push(&job(Some("conv:riya"), "more", T0 + 5 * SECOND))
            .await
            .expect("enqueue")
    );
    assert_eq!(
        claim(store, T0 + 5 * SECOND, 30 * SECOND, 10).await,
        vec![next]
    );
}

async fn claims_respect_due_times_and_leases(store: &dyn Store) {
    let due = job(None, "due", T0);
    let later = job(None, "later", T0 + 10 * SECOND);
    let earliest = job(None, "earliest", T0 - 5 * SECOND);
    for j in [&due, &later, &earliest] {
        assert!(store.enqueue_push(j).await.expect("enqueue"));
    }
    // A lease runs until T0 + 60 s for everything claimed below.
    let lease_end = T0 + 60 * SECOND;
    assert_eq!(
        claim(store, T0, lease_end - T0, 1).await,
        vec![earliest.clone()],
        "earliest due first, at most the limit"
    );
    assert_eq!(
        claim(store, T0, lease_end - T0, 10).await,
        vec![due.clone()]
    );
    let now = T0 + 10 * SECOND;
    assert_eq!(
        claim(store, now, lease_end - now, 10).await,
        vec![later.clone()],
        "due now; the others are leased"
    );
    assert!(claim(store, T0 + 30 * SECOND, SECOND, 10).await.is_empty());
    // The leases ran out (a crashed worker): claimable again, by anyone.
    let reclaimed = store
        .claim_pushes(
            "worker-2",
            Timestamp(lease_end + 1),
            Timestamp(lease_end + 61 * SECOND),
            10,
        )
        .await
        .expect("claim");
    assert_eq!(reclaimed, vec![earliest, due, later]);
    assert!(claim(store, lease_end + 2, SECOND, 10).await.is_empty());
}

async fn rescheduled_and_dead_pushes(store: &dyn Store) {
    let retried = job(Some("conv:riya"), "attempt 1", T0);
    let other = job(None, "other", T0);
    assert!(store.enqueue_push(&retried).await.expect("enqueue"));
    assert!(store.enqueue_push(&other).await.expect("enqueue"));
    // `other` stays leased through every claim below.
    assert_eq!(claim(store, T0, 1_000 * SECOND, 10).await.len(), 2);

    // A retry waits for its new due time, with its new payload, unleased.
    store
        .reschedule_push(retried.id, "attempt 2", Timestamp(T0 + 100 * SECOND))
        .await
        .expect("reschedule");
    assert!(claim(store, T0 + 50 * SECOND, SECOND, 10).await.is_empty());
    assert_eq!(
        claim(store, T0 + 100 * SECOND, 30 * SECOND, 10).await,
        vec![QueuedPush {
            payload: "attempt 2".into(),
            due_at: Timestamp(T0 + 100 * SECOND),
            ..retried.clone()
        }]
    );
    // A waiting retry still coalesces a burst under its key.
    store
        .reschedule_push(retried.id, "attempt 3", Timestamp(T0 + 200 * SECOND))
        .await
        .expect("reschedule");
    assert!(
        !store
            .enqueue_push(&job(Some("conv:riya"), "burst", T0 + 150 * SECOND))
            .await
            .expect("enqueue")
    );
    assert_eq!(
        claim(store, T0 + 200 * SECOND, 30 * SECOND, 10).await.len(),
        1
    );
    // While it was leased a newer row took the key: rescheduling it still works.
    let newer = job(Some("conv:riya"), "newer", T0 + 210 * SECOND);
    assert!(store.enqueue_push(&newer).await.expect("enqueue"));
    store
        .reschedule_push(retried.id, "attempt 4", Timestamp(T0 + 220 * SECOND))
        .await
        .expect("reschedule beside a waiting row with the same key");
    let both = claim(store, T0 + 220 * SECOND, 30 * SECOND, 10).await;
    assert_eq!(
        both.iter().map(|j| j.payload.as_str()).collect::<Vec<_>>(),
        vec!["newer", "attempt 4"]
    );

    // Out of attempts: out of the queue, into the dead letters.
    store
        .dead_letter_push(retried.id, "attempt 5", 5, "410 Gone")
        .await
        .expect("dead letter");
    tokio::time::sleep(Duration::from_millis(2)).await;
    store
        .dead_letter_push(other.id, "other", 1, "refused: no target")
        .await
        .expect("dead letter");
    store.finish_push(newer.id).await.expect("finish");
    assert!(
        claim(store, T0 + 1_000 * SECOND, SECOND, 10)
            .await
            .is_empty(),
        "nothing left to claim, leased or not"
    );
    let dead = store.dead_pushes(10).await.expect("dead");
    assert_eq!(
        dead.iter()
            .map(|d| (d.id, d.payload.as_str(), d.attempts, d.error.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (other.id, "other", 1, "refused: no target"),
            (retried.id, "attempt 5", 5, "410 Gone"),
        ],
        "newest first"
    );
    assert!(dead[0].died_at > dead[1].died_at);
    assert_eq!(store.dead_pushes(1).await.expect("dead").len(), 1);
}

/// SQLite's writer checkpoints only past 16 MiB of WAL (a checkpoint on the commit path
/// stalls every send queued behind it), so a connection of its own must copy the WAL
/// back into the database while the store runs: here 2 MB of messages reach it long
/// before the writer would have checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_copies_the_wal_into_the_database_while_running() {
    const MESSAGES: usize = 200;
    const TEXT_BYTES: usize = 10 * 1024;
    let fixture = open(StoreKind::Sqlite).await;
    let store = fixture.store.as_ref();
    let database = fixture._db.dir().join("chat.db");
    let (alex, _riya, conv) = pair(store).await;
    let body = "x".repeat(TEXT_BYTES);
    for i in 0..MESSAGES {
        send(store, conv, &alex, &format!("w{i}"), &body).await;
    }
    let written = (MESSAGES * TEXT_BYTES) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let size = std::fs::metadata(&database)
            .expect("the database file")
            .len();
        if size >= written {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the database file holds {size} bytes after {written} bytes of messages: \
             the WAL was not copied back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store
            .messages_after(conv, 0, 500)
            .await
            .expect("read")
            .len(),
        MESSAGES
    );
    fixture.store.close().await;
}
