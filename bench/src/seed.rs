//! Rows written straight into the server's Postgres database, as the server itself would
//! have written them.
//!
//! Registering through the API costs an argon2 hash per user, far too slow for thousands
//! of users, so the benchmark inserts users and device sessions itself: a token it makes
//! up, stored as the server stores tokens (`server/src/auth.rs`: SHA-256, lower-case hex).
//! Direct conversations get the id the server derives (`ConversationId::direct`) and both
//! members; seeded messages have gapless seqs, and the conversation row (`last_seq`, the
//! preview columns) and the sender's watermarks agree with them, as after real sends.
//! Every statement carries a batch as arrays (`UNNEST`) or generates it
//! (`generate_series`), so seeding costs a few round trips per thousand rows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use chat_server::domain::{ConversationId, UserId};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use crate::accounts::{Account, PairAccount};

/// Users (and their sessions) per statement.
const USERS_PER_STATEMENT: usize = 5_000;
/// Conversations (and their members) per statement.
const CONVERSATIONS_PER_STATEMENT: usize = 5_000;
/// Messages per statement, roughly (whole conversations per statement).
const MESSAGES_PER_STATEMENT: u64 = 100_000;
/// Message statements running at once.
const PARALLEL_STATEMENTS: usize = 4;

pub(crate) async fn pool(url: &str, size: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(size.max(1))
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await
        // Not the URL itself: it may hold a password.
        .context("connecting to --database-url")
}

/// A user written by [`users`], with the id conversations need.
pub(crate) struct SeededUser {
    pub(crate) id: Uuid,
    pub(crate) account: Account,
}

const INSERT_USERS: &str = "INSERT INTO users (id, name, password_hash, created_at) \
     SELECT id, name, 'bench: no password, log in with the seeded token', now() \
     FROM UNNEST($1::uuid[], $2::text[]) AS u(id, name)";

const INSERT_SESSIONS: &str = "INSERT INTO sessions (id, user_id, token_hash, device_name, created_at, expires_at) \
     SELECT gen_random_uuid(), user_id, token_hash, 'bench', now(), now() + interval '365 days' \
     FROM UNNEST($1::uuid[], $2::text[]) AS s(user_id, token_hash)";

/// Users named `names`, each with one device session.
pub(crate) async fn users(pool: &PgPool, names: Vec<String>) -> anyhow::Result<Vec<SeededUser>> {
    let users: Vec<SeededUser> = names
        .into_iter()
        .map(|name| SeededUser {
            id: Uuid::now_v7(),
            account: Account {
                name,
                token: new_token(),
            },
        })
        .collect();
    for chunk in users.chunks(USERS_PER_STATEMENT) {
        let ids: Vec<Uuid> = chunk.iter().map(|u| u.id).collect();
        let names: Vec<String> = chunk.iter().map(|u| u.account.name.clone()).collect();
        let hashes: Vec<String> = chunk.iter().map(|u| token_hash(&u.account.token)).collect();
        let mut tx = pool.begin().await?;
        sqlx::query(INSERT_USERS)
            .bind(ids.clone())
            .bind(names)
            .execute(&mut *tx)
            .await
            .context("seeding users")?;
        sqlx::query(INSERT_SESSIONS)
            .bind(ids)
            .bind(hashes)
            .execute(&mut *tx)
            .await
            .context("seeding sessions")?;
        tx.commit().await?;
    }
    Ok(users)
}

const INSERT_CONVERSATIONS: &str = "INSERT INTO conversations (id, kind, created_at) \
     SELECT id, 'direct', now() FROM UNNEST($1::uuid[]) AS c(id)";

const INSERT_MEMBERS: &str = "INSERT INTO members (conversation_id, user_id, role, joined_at) \
     SELECT conversation_id, user_id, 'member', now() \
     FROM UNNEST($1::uuid[], $2::uuid[]) AS m(conversation_id, user_id)";

/// The direct conversation of each pair of users, with both members; returns their ids.
pub(crate) async fn direct_conversations(
    pool: &PgPool,
    pairs: &[(Uuid, Uuid)],
) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = pairs
        .iter()
        .map(|&(a, b)| ConversationId::direct(UserId(a), UserId(b)).0)
        .collect();
    for (pairs, ids) in pairs
        .chunks(CONVERSATIONS_PER_STATEMENT)
        .zip(ids.chunks(CONVERSATIONS_PER_STATEMENT))
    {
        let mut member_conversations = Vec::with_capacity(2 * ids.len());
        let mut member_users = Vec::with_capacity(2 * ids.len());
        for (&(a, b), &id) in pairs.iter().zip(ids) {
            member_conversations.extend([id, id]);
            member_users.extend([a, b]);
        }
        let mut tx = pool.begin().await?;
        sqlx::query(INSERT_CONVERSATIONS)
            .bind(ids.to_vec())
            .execute(&mut *tx)
            .await
            .context("seeding conversations")?;
        sqlx::query(INSERT_MEMBERS)
            .bind(member_conversations)
            .bind(member_users)
            .execute(&mut *tx)
            .await
            .context("seeding members")?;
        tx.commit().await?;
    }
    Ok(ids)
}

/// `$3` messages from the given sender in each given conversation, in one statement: the
/// messages (seq 1..=$3, a millisecond apart), then the conversation row as the last
/// send leaves it, then the sender's watermarks (their own messages count as read). The
/// receiver's watermarks stay at 0: everything is waiting for them.
const INSERT_MESSAGES: &str = "WITH batch AS ( \
         SELECT conversation_id, sender_id \
         FROM UNNEST($1::uuid[], $2::uuid[]) AS b(conversation_id, sender_id)), \
     inserted AS ( \
         INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body, created_at) \
         SELECT b.conversation_id, s, gen_random_uuid(), b.sender_id, 'seed-' || s, \
                'seeded message ' || s, \
                now() - ($3::bigint - s)::float8 * interval '1 millisecond' \
         FROM batch b CROSS JOIN generate_series(1::bigint, $3::bigint) AS s \
         RETURNING conversation_id, seq, id, sender_id, client_msg_id, body, created_at), \
     latest AS ( \
         UPDATE conversations c SET last_seq = i.seq, last_message_at = i.created_at, \
             last_message_id = i.id, last_sender_id = i.sender_id, \
             last_client_msg_id = i.client_msg_id, last_body = i.body \
         FROM inserted i WHERE c.id = i.conversation_id AND i.seq = $3::bigint) \
     UPDATE members m SET delivered_seq = $3::bigint, read_seq = $3::bigint \
     FROM batch b WHERE m.conversation_id = b.conversation_id AND m.user_id = b.sender_id";

/// `per_conversation` messages in each (conversation, sender), statements in parallel.
pub(crate) async fn messages(
    pool: &PgPool,
    conversations: &[(Uuid, Uuid)],
    per_conversation: u64,
) -> anyhow::Result<()> {
    if per_conversation == 0 || conversations.is_empty() {
        return Ok(());
    }
    let count = i64::try_from(per_conversation).context("too many messages per conversation")?;
    let per_statement = usize::try_from(MESSAGES_PER_STATEMENT / per_conversation)
        .unwrap_or(1)
        .max(1);
    let total = conversations.len() as u64 * per_conversation;
    let done = AtomicU64::new(0);
    let done = &done;
    let started = std::time::Instant::now();
    futures::stream::iter(
        conversations
            .chunks(per_statement)
            .map(Ok::<_, anyhow::Error>),
    )
    .try_for_each_concurrent(PARALLEL_STATEMENTS, |chunk| async move {
        let ids: Vec<Uuid> = chunk.iter().map(|c| c.0).collect();
        let senders: Vec<Uuid> = chunk.iter().map(|c| c.1).collect();
        sqlx::query(INSERT_MESSAGES)
            .bind(ids)
            .bind(senders)
            .bind(count)
            .execute(pool)
            .await
            .context("seeding messages")?;
        let rows = chunk.len() as u64 * per_conversation;
        let before = done.fetch_add(rows, Ordering::Relaxed);
        // A line per tenth of the way, for seeds that take minutes.
        if (before * 10 / total) != ((before + rows) * 10 / total) {
            eprintln!(
                "seeded {} of {total} messages ({:.0} s)",
                before + rows,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    })
    .await
}

/// `n` sender → receiver pairs, each with its direct conversation.
pub(crate) async fn pairs(pool: &PgPool, run: &str, n: usize) -> anyhow::Result<Vec<PairAccount>> {
    let names = (0..n)
        .flat_map(|i| [format!("{run}s{i}"), format!("{run}r{i}")])
        .collect();
    let mut users = users(pool, names).await?.into_iter();
    let mut pairs = Vec::with_capacity(n);
    while let (Some(sender), Some(receiver)) = (users.next(), users.next()) {
        pairs.push((sender, receiver));
    }
    let ids: Vec<(Uuid, Uuid)> = pairs.iter().map(|(s, r)| (s.id, r.id)).collect();
    let conversations = direct_conversations(pool, &ids).await?;
    analyze(pool).await?;
    Ok(pairs
        .into_iter()
        .zip(conversations)
        .map(|((sender, receiver), conversation)| PairAccount {
            sender: sender.account,
            receiver: receiver.account,
            conversation_id: conversation.to_string(),
        })
        .collect())
}

/// `receivers` users, each with `messages` waiting from one sender; returns the receivers.
pub(crate) async fn catch_up(
    pool: &PgPool,
    run: &str,
    receivers: usize,
    messages_each: u64,
) -> anyhow::Result<Vec<Account>> {
    let mut names = vec![format!("{run}cs")];
    names.extend((0..receivers).map(|i| format!("{run}c{i}")));
    let mut users = users(pool, names).await?.into_iter();
    let Some(sender) = users.next() else {
        bail!("seeding the sender failed");
    };
    let receivers: Vec<SeededUser> = users.collect();
    let pairs: Vec<(Uuid, Uuid)> = receivers.iter().map(|r| (sender.id, r.id)).collect();
    let conversations = direct_conversations(pool, &pairs).await?;
    let with_sender: Vec<(Uuid, Uuid)> = conversations.iter().map(|&c| (c, sender.id)).collect();
    messages(pool, &with_sender, messages_each).await?;
    analyze(pool).await?;
    Ok(receivers.into_iter().map(|r| r.account).collect())
}

/// A conversation of the history data set and a member's token to read it with.
pub(crate) struct HistoryTarget {
    pub(crate) conversation_id: String,
    pub(crate) token: String,
    pub(crate) messages: u64,
}

const HISTORY_TABLES: &str = "CREATE TABLE IF NOT EXISTS bench_meta ( \
         key text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now()); \
     CREATE TABLE IF NOT EXISTS bench_history ( \
         key text NOT NULL, conversation_id uuid NOT NULL, token text NOT NULL, \
         messages bigint NOT NULL)";

/// The history data set: `rows` messages over `conversations` conversations. Seeding ten
/// million rows takes minutes, so it happens once per database: a row in `bench_meta`
/// says the data set is there, and `bench_history` keeps the tokens to read it with
/// (the sessions table holds only their hashes).
pub(crate) async fn history(
    pool: &PgPool,
    run: &str,
    rows: u64,
    conversations: usize,
) -> anyhow::Result<Vec<HistoryTarget>> {
    sqlx::raw_sql(HISTORY_TABLES).execute(pool).await?;
    let key = format!("history rows={rows} conversations={conversations}");
    let seeded = sqlx::query("SELECT 1 FROM bench_meta WHERE key = $1")
        .bind(key.clone())
        .fetch_optional(pool)
        .await?
        .is_some();
    if seeded {
        println!("history data set already seeded ({key})");
        let found: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT conversation_id, token, messages FROM bench_history WHERE key = $1",
        )
        .bind(key)
        .fetch_all(pool)
        .await?;
        return Ok(found
            .into_iter()
            .map(|(id, token, messages)| HistoryTarget {
                conversation_id: id.to_string(),
                token,
                messages: u64::try_from(messages).unwrap_or(0),
            })
            .collect());
    }

    let per_conversation = rows / conversations.max(1) as u64;
    if conversations == 0 || per_conversation == 0 {
        bail!("--rows {rows} over --conversations {conversations}: no messages to seed");
    }
    println!(
        "seeding {} messages over {conversations} conversations",
        per_conversation * conversations as u64
    );
    let names = (0..conversations)
        .flat_map(|i| [format!("{run}hs{i}"), format!("{run}hr{i}")])
        .collect();
    let mut users = users(pool, names).await?.into_iter();
    let mut pairs = Vec::with_capacity(conversations);
    while let (Some(sender), Some(reader)) = (users.next(), users.next()) {
        pairs.push((sender, reader));
    }
    let ids: Vec<(Uuid, Uuid)> = pairs.iter().map(|(s, r)| (s.id, r.id)).collect();
    let conversation_ids = direct_conversations(pool, &ids).await?;
    let with_sender: Vec<(Uuid, Uuid)> = conversation_ids
        .iter()
        .zip(&pairs)
        .map(|(&c, (sender, _))| (c, sender.id))
        .collect();
    messages(pool, &with_sender, per_conversation).await?;

    let targets: Vec<HistoryTarget> = conversation_ids
        .iter()
        .zip(pairs)
        .map(|(c, (_, reader))| HistoryTarget {
            conversation_id: c.to_string(),
            token: reader.account.token,
            messages: per_conversation,
        })
        .collect();
    let per = i64::try_from(per_conversation)?;
    let mut tx = pool.begin().await?;
    for chunk in targets.chunks(CONVERSATIONS_PER_STATEMENT) {
        let ids: Vec<Uuid> = chunk
            .iter()
            .map(|t| Uuid::parse_str(&t.conversation_id))
            .collect::<Result<_, _>>()?;
        let tokens: Vec<String> = chunk.iter().map(|t| t.token.clone()).collect();
        sqlx::query(
            "INSERT INTO bench_history (key, conversation_id, token, messages) \
             SELECT $1::text, c, t, $4::bigint FROM UNNEST($2::uuid[], $3::text[]) AS h(c, t)",
        )
        .bind(key.clone())
        .bind(ids)
        .bind(tokens)
        .bind(per)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("INSERT INTO bench_meta (key) VALUES ($1)")
        .bind(key)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    analyze(pool).await?;
    Ok(targets)
}

/// Fresh statistics after a bulk seed, as autovacuum keeps them on a database that grew
/// by use: without them the planner takes the seeded tables for the empty ones it last
/// saw, and plans scans and hash joins where an index lookup is right.
async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("ANALYZE users, sessions, conversations, members, messages")
        .execute(pool)
        .await
        .context("analyzing the seeded tables")?;
    Ok(())
}

/// A token in the server's format (opaque to it: only the hash is compared).
fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("ct_bench_{hex}")
}

/// As `server/src/auth.rs` stores a token: SHA-256, lower-case hex.
fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
