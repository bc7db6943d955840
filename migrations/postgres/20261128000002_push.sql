-- Push notifications on PostgreSQL: per-device targets, per-user and per-member
-- settings, how far each member has been pushed, server keys, and the embedded push
-- queue. SQLite mirrors it. These tables are small and not partitioned; `messages`
-- keeps its layout.

-- Pushes without sender or text: the push service (and whoever runs it) sees only that
-- something arrived. A constant default adds the column without rewriting the table.
ALTER TABLE users ADD COLUMN push_content_free boolean NOT NULL DEFAULT false;

-- A muted conversation gets no pushes. `pushed_seq` is the highest seq a notification
-- covered: a worker moves it forward only if nobody did, so a burst is pushed once even
-- when two workers (or a retry after a crash) handle it.
ALTER TABLE members
    ADD COLUMN muted boolean NOT NULL DEFAULT false,
    ADD COLUMN pushed_seq bigint NOT NULL DEFAULT 0 CHECK (pushed_seq >= 0);

-- Where a device wants its notifications. A target belongs to the session that
-- registered it, so a logged-out device stops getting pushes. One target per user and
-- URL: registering the same URL again (a new device key, a renewed subscription)
-- replaces it.
CREATE TABLE push_targets (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('webhook', 'web_push')),
    url        text NOT NULL,
    -- Webhooks are signed with `secret`; Web Push encrypts to `p256dh` and `auth`.
    secret     text,
    p256dh     bytea,
    auth       bytea,
    created_at timestamptz NOT NULL,
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
    name       text PRIMARY KEY,
    value      text NOT NULL,
    created_at timestamptz NOT NULL
);

-- The push queue when there is no Redis. Workers on every replica claim due rows with
-- FOR UPDATE SKIP LOCKED and lease them; a lease that runs out (a crashed worker) makes
-- the row claimable again.
CREATE TABLE push_jobs (
    id           uuid PRIMARY KEY,
    coalesce_key text,
    payload      text NOT NULL,
    due_at       timestamptz NOT NULL,
    lease_until  timestamptz,
    leased_by    text,
    CHECK ((lease_until IS NULL) = (leased_by IS NULL))
);
COMMENT ON TABLE push_jobs IS
    'The push queue when no Redis is configured: rows with a due time and a lease. '
    'Claimed with FOR UPDATE SKIP LOCKED, so replicas never lease the same row; at most '
    'one unleased row per coalesce_key, so a burst of messages is one job.';
-- At most one waiting (unleased) row per coalesce key: a burst of messages is one job,
-- and `INSERT ... ON CONFLICT DO NOTHING` skips the rest. A claimed row leaves the index,
-- so the next burst queues behind it. NULL keys never collide.
CREATE UNIQUE INDEX push_jobs_waiting_by_key ON push_jobs (coalesce_key)
    WHERE lease_until IS NULL;
-- Claiming reads the earliest due rows.
CREATE INDEX push_jobs_by_due ON push_jobs (due_at);

-- Jobs that ran out of attempts or were refused for good, kept for inspection.
CREATE TABLE push_dead_letters (
    id       uuid PRIMARY KEY,
    payload  text NOT NULL,
    attempts integer NOT NULL CHECK (attempts >= 0),
    error    text NOT NULL,
    died_at  timestamptz NOT NULL
);
-- Newest first, and pruning the oldest.
CREATE INDEX push_dead_letters_by_time ON push_dead_letters (died_at);
