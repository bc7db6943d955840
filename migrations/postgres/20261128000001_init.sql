-- The chat schema on PostgreSQL. SQLite mirrors it without partitions.
--
-- Every query on `messages` names one conversation, and `messages` is hash-partitioned
-- by conversation_id: the same key Citus would distribute it by when one primary is not
-- enough (see ARCHITECTURE.md, "Postgres layout").

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    -- Byte order, as on SQLite, whatever the database's locale (names are ASCII).
    name          text COLLATE "C" NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL,
    last_seen_at  timestamptz
);

-- One row per device session; the bearer token is stored only as its SHA-256.
CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  text NOT NULL UNIQUE,
    device_name text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- `last_seq` is the per-conversation sequence: a send increments it under the row lock
-- in the same statement that inserts the message, so seqs are gapless. The newest
-- message is kept on the row too, so the conversation list never reads `messages`
-- across conversations.
CREATE TABLE conversations (
    id                 uuid PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('direct', 'group')),
    last_seq           bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at         timestamptz NOT NULL,
    last_message_at    timestamptz,
    last_message_id    uuid,
    last_sender_id     uuid,
    last_client_msg_id text,
    last_body          text
);

CREATE TABLE members (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    delivered_seq   bigint NOT NULL DEFAULT 0 CHECK (delivered_seq >= 0),
    read_seq        bigint NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
    joined_at       timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, user_id),
    CHECK (read_seq <= delivered_seq)
);
-- The conversation list, reconnect positions and unread counts (last_seq - read_seq)
-- start from the user.
CREATE INDEX members_by_user ON members (user_id, conversation_id);

-- Message history. The primary key serves every history page and catch-up read
-- (conversation_id = $1 AND seq > / < $2 ORDER BY seq); the unique key makes sends
-- idempotent per (conversation, sender, client_msg_id). Both hold the partition key, as
-- Postgres requires.
--
-- 16 hash partitions: the modulus is effectively permanent (changing it rewrites the
-- table), so it is sized for growth: at a billion messages each partition holds about
-- 60 million rows, small enough for per-partition vacuum and index builds, while
-- planning a query that names one conversation prunes to one partition in constant
-- time. Past one primary, distribute by conversation_id (Citus) instead.
CREATE TABLE messages (
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL CHECK (seq > 0),
    id              uuid NOT NULL,
    sender_id       uuid NOT NULL REFERENCES users (id),
    client_msg_id   text NOT NULL,
    body            text NOT NULL,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, client_msg_id)
) PARTITION BY HASH (conversation_id);

CREATE TABLE messages_p00 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 0);
CREATE TABLE messages_p01 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 1);
CREATE TABLE messages_p02 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 2);
CREATE TABLE messages_p03 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 3);
CREATE TABLE messages_p04 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 4);
CREATE TABLE messages_p05 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 5);
CREATE TABLE messages_p06 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 6);
CREATE TABLE messages_p07 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 7);
CREATE TABLE messages_p08 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 8);
CREATE TABLE messages_p09 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 9);
CREATE TABLE messages_p10 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 10);
CREATE TABLE messages_p11 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 11);
CREATE TABLE messages_p12 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 12);
CREATE TABLE messages_p13 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 13);
CREATE TABLE messages_p14 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 14);
CREATE TABLE messages_p15 PARTITION OF messages FOR VALUES WITH (MODULUS 16, REMAINDER 15);
