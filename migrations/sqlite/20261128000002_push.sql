-- Push notifications on SQLite: per-device targets, per-user and per-member settings,
-- how far each member has been pushed, server keys, and the embedded push queue.
-- Mirrors the Postgres migration. Ids are UUIDs in text form; times are Unix
-- microseconds; booleans are 0/1.

-- Pushes without sender or text: the push service (and whoever runs it) sees only that
-- something arrived.
ALTER TABLE users ADD COLUMN push_content_free INTEGER NOT NULL DEFAULT 0
    CHECK (push_content_free IN (0, 1));

-- A muted conversation gets no pushes. `pushed_seq` is the highest seq a notification
-- covered: a worker moves it forward only if nobody did, so a burst is pushed once even
-- when two workers (or a retry after a crash) handle it.
ALTER TABLE members ADD COLUMN muted INTEGER NOT NULL DEFAULT 0 CHECK (muted IN (0, 1));
ALTER TABLE members ADD COLUMN pushed_seq INTEGER NOT NULL DEFAULT 0 CHECK (pushed_seq >= 0);

-- Where a device wants its notifications. A target belongs to the session that
-- registered it, so a logged-out device stops getting pushes. One target per user and
-- URL: registering the same URL again (a new device key, a renewed subscription)
-- replaces it.
CREATE TABLE push_targets (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('webhook', 'web_push')),
    url        TEXT NOT NULL,
    -- Webhooks are signed with `secret`; Web Push encrypts to `p256dh` and `auth`.
    secret     TEXT,
    p256dh     BLOB,
    auth       BLOB,
    created_at INTEGER NOT NULL,
    UNIQUE (user_id, url),
    CHECK ((kind = 'webhook' AND secret IS NOT NULL AND p256dh IS NULL AND auth IS NULL)
        OR (kind = 'web_push' AND secret IS NULL AND p256dh IS NOT NULL AND auth IS NOT NULL))
);
-- A user's targets, newest first.
CREATE INDEX push_targets_by_user ON push_targets (user_id, created_at);
-- A logout deletes the session's targets (ON DELETE CASCADE) without a scan.
CREATE INDEX push_targets_by_device ON push_targets (device_id);

-- Keys the server generates once and every replica then shares (VAPID).
CREATE TABLE server_keys (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- The push queue when there is no Redis. A worker claims due rows by leasing them; a
-- lease that runs out (a crashed worker) makes the row claimable again.
CREATE TABLE push_jobs (
    id           TEXT PRIMARY KEY,
    coalesce_key TEXT,
    payload      TEXT NOT NULL,
    due_at       INTEGER NOT NULL,
    lease_until  INTEGER,
    leased_by    TEXT,
    CHECK ((lease_until IS NULL) = (leased_by IS NULL))
);
-- At most one waiting (unleased) row per coalesce key: a burst of messages is one job,
-- and `INSERT ... ON CONFLICT DO NOTHING` skips the rest. A claimed row leaves the index,
-- so the next burst queues behind it. NULL keys never collide.
CREATE UNIQUE INDEX push_jobs_waiting_by_key ON push_jobs (coalesce_key)
    WHERE lease_until IS NULL;
-- Claiming reads the earliest due rows.
CREATE INDEX push_jobs_by_due ON push_jobs (due_at);

-- Jobs that ran out of attempts or were refused for good, kept for inspection.
CREATE TABLE push_dead_letters (
    id       TEXT PRIMARY KEY,
    payload  TEXT NOT NULL,
    attempts INTEGER NOT NULL CHECK (attempts >= 0),
    error    TEXT NOT NULL,
    died_at  INTEGER NOT NULL
);
-- Newest first, and pruning the oldest.
CREATE INDEX push_dead_letters_by_time ON push_dead_letters (died_at);
