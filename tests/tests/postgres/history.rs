//! History on a conversation of 100,000 messages: every page is right, and the query
//! the store runs reads one partition through its primary key.

use chat_sdk::{Page, Target};
use chat_server::store::postgres::{MESSAGES_AFTER, MESSAGES_BEFORE};
use chat_tests::{StoreKind, TestServer, seqs};
use serde_json::Value;
use sqlx::Row;

const MESSAGES: u64 = 100_000;
const PAGE: u32 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_of_100k_messages_pages_correctly_through_the_primary_key() {
    let server = TestServer::spawn(StoreKind::Postgres).await;
    let alex = server.user("alex").await;
    let riya = server.user("riya").await;
    server.user("sam").await;
    let conv = alex.client.open_direct("riya").await.expect("open").id;
    // A neighbour conversation whose messages must never leak into the pages.
    for i in 0..50 {
        alex.client
            .send(Target::User("sam".into()), &format!("noise {i}"))
            .await
            .expect("send");
    }

    // Bulk-load the big conversation as the store would have written it.
    let mut db = server.db.connect_postgres().await;
    sqlx::query(
        "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body, created_at) \
         SELECT $1::uuid, g, gen_random_uuid(), \
                CASE WHEN g % 2 = 0 THEN $2::uuid ELSE $3::uuid END, \
                'bulk-' || g, 'message ' || g, now() \
         FROM generate_series(1, $4::bigint) AS g",
    )
    .bind(&conv)
    .bind(&alex.creds.user.id)
    .bind(&riya.creds.user.id)
    .bind(MESSAGES as i64)
    .execute(&mut db)
    .await
    .expect("bulk insert");
    sqlx::query(
        "UPDATE conversations c SET last_seq = m.seq, last_message_at = m.created_at, \
             last_message_id = m.id, last_sender_id = m.sender_id, \
             last_client_msg_id = m.client_msg_id, last_body = m.body \
         FROM messages m WHERE c.id = $1::uuid AND m.conversation_id = c.id AND m.seq = $2",
    )
    .bind(&conv)
    .bind(MESSAGES as i64)
    .execute(&mut db)
    .await
    .expect("set last_seq");
    sqlx::query("ANALYZE messages")
        .execute(&mut db)
        .await
        .expect("analyze");

    // Scrolling back from the newest message to the first, page by page.
    let mut before = u64::MAX;
    let mut seen = Vec::new();
    loop {
        let page = match before {
            u64::MAX => alex.client.history(&conv, Page::Latest, PAGE).await,
            b => alex.client.history(&conv, Page::Before(b), PAGE).await,
        }
        .expect("history");
        let page_seqs = seqs(&page.messages);
        let first = page_seqs.first().copied().expect("a non-empty page");
        assert_eq!(
            page_seqs,
            (first..first + page_seqs.len() as u64).collect::<Vec<_>>(),
            "a page is contiguous and ascending"
        );
        assert!(page.messages.iter().all(|m| m.conversation_id == conv));
        seen.extend(page_seqs.into_iter().rev());
        if !page.has_more {
            break;
        }
        before = first;
    }
    assert_eq!(
        seen,
        (1..=MESSAGES).rev().collect::<Vec<_>>(),
        "every message once"
    );

    // Forward from the middle, and the bodies line up with the seqs.
    let page = alex
        .client
        .history(&conv, Page::After(50_000), PAGE)
        .await
        .expect("history");
    assert_eq!(seqs(&page.messages), (50_001..=50_200).collect::<Vec<_>>());
    assert!(page.has_more);
    assert_eq!(page.messages[0].text, "message 50001");
    let tail = alex
        .client
        .history(&conv, Page::After(MESSAGES - 10), PAGE)
        .await
        .expect("history");
    assert_eq!(seqs(&tail.messages).len(), 10);
    assert!(!tail.has_more);

    // The plans of the exact statements the store runs, for a custom plan (the first
    // executions of a prepared statement) and for the generic plan Postgres switches to.
    for (name, sql, seq) in [
        ("after", MESSAGES_AFTER, 50_000_i64),
        ("before", MESSAGES_BEFORE, 50_000_i64),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PREPARE history_{name} (uuid, bigint, bigint) AS {sql}"
        )))
        .execute(&mut db)
        .await
        .expect("prepare");
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .execute(&mut db)
                .await
                .expect("set plan mode");
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "EXPLAIN (FORMAT JSON) EXECUTE history_{name} ('{conv}', {seq}, {PAGE})"
            )))
            .fetch_one(&mut db)
            .await
            .expect("explain");
            let plan: Value = row.try_get(0).expect("json plan");
            let scans = message_scans(&plan);
            assert_eq!(
                scans.len(),
                1,
                "{name}/{mode}: exactly one partition is read: {plan:#}"
            );
            let (node, relation, index) = &scans[0];
            assert!(
                node == "Index Scan",
                "{name}/{mode}: an index scan, not {node}: {plan:#}"
            );
            assert_eq!(
                index,
                &format!("{relation}_pkey"),
                "{name}/{mode}: {plan:#}"
            );
            assert!(
                !contains_node(&plan, "Sort"),
                "{name}/{mode}: the index gives the order, no sort: {plan:#}"
            );
        }
    }
}

/// (node type, relation, index) of every plan node that reads a messages partition,
/// after pruning (partitions pruned at executor start-up are not listed).
fn message_scans(plan: &Value) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    walk(plan, &mut |node| {
        let relation = node["Relation Name"].as_str().unwrap_or_default();
        if relation.starts_with("messages") {
            found.push((
                node["Node Type"].as_str().unwrap_or_default().to_owned(),
                relation.to_owned(),
                node["Index Name"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    });
    found
}

fn contains_node(plan: &Value, node_type: &str) -> bool {
    let mut found = false;
    walk(plan, &mut |node| found |= node["Node Type"] == node_type);
    found
}

fn walk(value: &Value, visit: &mut impl FnMut(&Value)) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| walk(v, visit)),
        Value::Object(map) => {
            if map.contains_key("Node Type") {
                visit(value);
            }
            map.values().for_each(|v| walk(v, visit));
        }
        _ => {}
    }
}
