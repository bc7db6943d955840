//! The schema is what `migrations/postgres` says: `messages` hash-partitioned by
//! conversation into 16 partitions, keyed by (conversation_id, seq), with the
//! idempotency key unique per (conversation, sender). Applied by `chat-server migrate`.

use chat_tests::{StoreKind, TestDb, workspace_bin};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_subcommand_creates_the_partitioned_layout() {
    let db = TestDb::new(StoreKind::Postgres).await;
    for run in ["first", "second"] {
        let out = tokio::process::Command::new(workspace_bin("chat-server"))
            .args(["migrate", "--database-url", db.url()])
            .env_remove("DATABASE_URL")
            .output()
            .await
            .expect("run chat-server migrate");
        assert!(
            out.status.success(),
            "{run} migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut conn = db.connect_postgres().await;

    let partitioned = sqlx::query(
        "SELECT p.partstrat::text AS strategy, p.partnatts::int AS columns, a.attname::text AS key \
         FROM pg_partitioned_table p \
         JOIN pg_class c ON c.oid = p.partrelid \
         JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] \
         WHERE c.relname = 'messages'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("pg_partitioned_table");
    assert_eq!(partitioned.len(), 1, "messages is partitioned");
    let row = &partitioned[0];
    assert_eq!(row.get::<String, _>("strategy"), "h", "by hash");
    assert_eq!(row.get::<i32, _>("columns"), 1);
    assert_eq!(row.get::<String, _>("key"), "conversation_id");

    let partitions = sqlx::query(
        "SELECT child.relname::text AS name, pg_get_expr(child.relpartbound, child.oid) AS bound \
         FROM pg_inherits i \
         JOIN pg_class parent ON parent.oid = i.inhparent \
         JOIN pg_class child ON child.oid = i.inhrelid \
         WHERE parent.relname = 'messages' ORDER BY child.relname",
    )
    .fetch_all(&mut conn)
    .await
    .expect("pg_inherits");
    let found: Vec<(String, String)> = partitions
        .iter()
        .map(|r| (r.get("name"), r.get("bound")))
        .collect();
    let expected: Vec<(String, String)> = (0..16)
        .map(|i| {
            (
                format!("messages_p{i:02}"),
                format!("FOR VALUES WITH (modulus 16, remainder {i})"),
            )
        })
        .collect();
    assert_eq!(found, expected);

    let mut keys: Vec<String> = sqlx::query(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint \
         WHERE conrelid = 'messages'::regclass AND contype IN ('p', 'u')",
    )
    .fetch_all(&mut conn)
    .await
    .expect("constraints")
    .iter()
    .map(|r| r.get("def"))
    .collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "PRIMARY KEY (conversation_id, seq)".to_owned(),
            "UNIQUE (conversation_id, sender_id, client_msg_id)".to_owned(),
        ]
    );

    let member_index: String = sqlx::query(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'members' AND indexname = 'members_by_user'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("members_by_user exists")
    .get("indexdef");
    assert!(
        member_index.ends_with("(user_id, conversation_id)"),
        "{member_index}"
    );
}
