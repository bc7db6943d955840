//! The push queue in Redis, shared by every replica: a stream with one consumer group
//! for due jobs, a sorted set for jobs not due yet (the grace period, retry backoff),
//! a capped stream of dead letters, and a marker per waiting burst.
//!
//! Every key carries the `{chat:push}` hash tag, so on a Redis Cluster they live in one
//! slot and each step below is one atomic script. A claimed entry stays in the group's
//! pending list until it is acknowledged; an entry idle there for longer than the lease
//! belonged to a worker that died, and XAUTOCLAIM hands it to another.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::{Script, Value};

use super::{Claimed, DeadLetter, PushQueue, QueueError};
use crate::domain::Timestamp;
use crate::push::job::PushJob;
use crate::redis_link::RedisLink;

const STREAM: &str = "{chat:push}:jobs";
const DELAYED: &str = "{chat:push}:delayed";
const DEAD: &str = "{chat:push}:dead";
const GROUP: &str = "pushers";
/// Dead letters kept (approximately): enough to investigate, bounded memory.
const DEAD_KEPT: usize = 10_000;
/// A burst marker outlives any sane grace period; it only matters if a worker died
/// between claiming and releasing it.
const MARKER_TTL: Duration = Duration::from_secs(3600);
/// Delayed jobs moved to the stream per claim.
const PROMOTE_BATCH: usize = 500;

fn marker(key: &str) -> String {
    format!("{{chat:push}}:burst:{key}")
}

/// Queues a job in the delayed set, unless its burst marker exists.
const ENQUEUE: &str = r"
if ARGV[3] ~= '' then
  if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Moves due jobs from the delayed set to the stream.
const PROMOTE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
";

/// Deletes a burst marker if it is still this job's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Acknowledges an entry, and optionally queues its successor or buries it.
const FINISH: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
elseif ARGV[3] == 'dead' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
    'job', ARGV[5], 'attempts', ARGV[6], 'error', ARGV[7], 'at', ARGV[4])
end
return 1
";

pub struct RedisQueue {
    link: Arc<RedisLink>,
    consumer: String,
    lease: Duration,
    enqueue: Script,
    promote: Script,
    release: Script,
    finish: Script,
}

fn millis(t: Timestamp) -> i64 {
    t.micros() / 1000
}

impl RedisQueue {
    /// `consumer` names this worker in the group (the replica's id).
    pub fn new(link: Arc<RedisLink>, consumer: String, lease: Duration) -> Self {
        RedisQueue {
            link,
            consumer,
            lease,
            enqueue: Script::new(ENQUEUE),
            promote: Script::new(PROMOTE),
            release: Script::new(RELEASE),
            finish: Script::new(FINISH),
        }
    }

    /// Creates the group (and the stream) if missing: on first use, and again after a
    /// Redis restart that lost them.
    async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.link.commands().await?;
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(STREAM)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_new(&self, limit: usize) -> redis::RedisResult<Vec<(String, String)>> {
        let mut conn = self.link.commands().await?;
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(limit)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">")
            .query_async(&mut conn)
            .await?;
        Ok(stream_entries(reply))
    }

    /// Entries whose worker has held them longer than the lease.
    async fn reclaim(&self, limit: usize) -> redis::RedisResult<Vec<(String, String)>> {
        let mut conn = self.link.commands().await?;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(STREAM)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        // [next cursor, [entries], [ids of entries deleted meanwhile]]
        Ok(match reply {
            Value::Array(mut parts) if parts.len() >= 2 => entries(parts.swap_remove(1)),
            _ => Vec::new(),
        })
    }

    async fn finish(
        &self,
        handle: &str,
        action: &str,
        due: Timestamp,
        job: &str,
        attempts: u32,
        error: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.link.commands().await?;
        self.finish
            .key(STREAM)
            .key(DELAYED)
            .key(DEAD)
            .arg(GROUP)
            .arg(handle)
            .arg(action)
            .arg(millis(due))
            .arg(job)
            .arg(attempts)
            .arg(error)
            .arg(DEAD_KEPT)
            .invoke_async::<Value>(&mut conn)
            .await?;
        Ok(())
    }
}

/// The entries of an XREADGROUP reply (RESP3: a map of stream to entries; RESP2: an
/// array of [stream, entries]).
fn stream_entries(reply: Value) -> Vec<(String, String)> {
    match reply {
        Value::Map(streams) => streams.into_iter().flat_map(|(_, e)| entries(e)).collect(),
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => entries(pair.swap_remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `[[id, [field, value, ...]], ...]` as (id, value of `job`).
fn entries(value: Value) -> Vec<(String, String)> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut pair) = item else {
                return None;
            };
            if pair.len() != 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id = text(pair.pop()?)?;
            let fields = match fields {
                Value::Array(f) => f,
                Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => return None,
            };
            let mut it = fields.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if text(k).as_deref() == Some("job") {
                    return Some((id, text(v)?));
                }
            }
            None
        })
        .collect()
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn is_missing_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

#[async_trait]
impl PushQueue for RedisQueue {
    async fn enqueue(&self, job: &PushJob, due: Timestamp) -> Result<bool, QueueError> {
        let key = job.coalesce_key();
        let mut conn = self.link.commands().await?;
        let queued: i64 = self
            .enqueue
            .key(DELAYED)
            .key(key.as_deref().map_or_else(|| DELAYED.to_owned(), marker))
            .arg(millis(due))
            .arg(job.encode())
            .arg(
                key.as_ref()
                    .map_or_else(String::new, |_| job.id.to_string()),
            )
            .arg(u64::try_from(MARKER_TTL.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut conn)
            .await?;
        Ok(queued == 1)
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Claimed>, QueueError> {
        {
            let mut conn = self.link.commands().await?;
            self.promote
                .key(DELAYED)
                .key(STREAM)
                .arg(millis(Timestamp::now()))
                .arg(PROMOTE_BATCH)
                .invoke_async::<Value>(&mut conn)
                .await?;
        }
        let mut raw = match self.read_new(limit).await {
            Ok(raw) => raw,
            Err(e) if is_missing_group(&e) => {
                self.ensure_group().await?;
                self.read_new(limit).await?
            }
            Err(e) => return Err(e.into()),
        };
        if raw.len() < limit {
            raw.extend(self.reclaim(limit - raw.len()).await?);
        }
        let mut claimed = Vec::with_capacity(raw.len());
        for (handle, payload) in raw {
            match PushJob::decode(&payload) {
                Ok(job) => claimed.push(Claimed { handle, job }),
                Err(e) => {
                    tracing::error!(entry = %handle, error = %e, "undecodable push job");
                    // Not a job this version understands: keep it for an operator
                    // rather than retrying it forever.
                    self.finish(
                        &handle,
                        "dead",
                        Timestamp::now(),
                        &payload,
                        0,
                        &format!("undecodable: {e}"),
                    )
                    .await?;
                }
            }
        }
        // A claimed burst no longer absorbs new ones: messages from now on queue the
        // next burst, and this one reads the member's state after this point.
        let mut conn = self.link.commands().await?;
        for c in &claimed {
            if let Some(key) = c.job.coalesce_key() {
                self.release
                    .key(marker(&key))
                    .arg(c.job.id.to_string())
                    .invoke_async::<Value>(&mut conn)
                    .await?;
            }
        }
        Ok(claimed)
    }

    async fn done(&self, claimed: &Claimed) -> Result<(), QueueError> {
        self.finish(&claimed.handle, "done", Timestamp::now(), "", 0, "")
            .await
    }

    async fn retry(
        &self,
        claimed: &Claimed,
        next: &PushJob,
        due: Timestamp,
    ) -> Result<(), QueueError> {
        self.finish(&claimed.handle, "retry", due, &next.encode(), 0, "")
            .await
    }

    async fn dead_letter(
        &self,
        claimed: &Claimed,
        attempts: u32,
        error: &str,
    ) -> Result<(), QueueError> {
        self.finish(
            &claimed.handle,
            "dead",
            Timestamp::now(),
            &claimed.job.encode(),
            attempts,
            error,
        )
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut conn = self.link.commands().await?;
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(DEAD)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        let Value::Array(items) = reply else {
            return Ok(Vec::new());
        };
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let Value::Array(mut pair) = item else {
                    return None;
                };
                let fields = match pair.pop()? {
                    Value::Array(f) => f,
                    Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                    _ => return None,
                };
                let mut letter = DeadLetter {
                    job: String::new(),
                    attempts: 0,
                    error: String::new(),
                    died_at: Timestamp(0),
                };
                let mut it = fields.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    let v = text(v).unwrap_or_default();
                    match text(k).as_deref() {
                        Some("job") => letter.job = v,
                        Some("attempts") => letter.attempts = v.parse().unwrap_or(0),
                        Some("error") => letter.error = v,
                        Some("at") => {
                            letter.died_at = Timestamp(v.parse::<i64>().unwrap_or(0) * 1000)
                        }
                        _ => {}
                    }
                }
                Some(letter)
            })
            .collect())
    }
}
