//! Presence shared by replicas, in Redis: the registry of who is online and where.
//!
//! Per user, a sorted set of devices (`REPLICA/DEVICE`, scored by last heartbeat in
//! ms) and a hash with the name, the last sign of life and what contacts were last
//! told. Both keys carry the user id as a hash tag, so one script updates them
//! atomically on a Redis Cluster too. The script replaces this replica's devices with
//! the ones it reports, drops devices whose heartbeat is older than the timeout
//! (whichever replica they were on: a killed replica's users expire this way), and
//! swaps the announced state, so exactly one replica announces each flip.
//!
//! A due set (user → when their oldest device expires) lets any replica find users
//! whose devices went stale on a replica that can no longer report it.

use std::sync::Arc;

use async_trait::async_trait;
use redis::{Script, Value};
use uuid::Uuid;

use super::{Announcement, PresenceRegistry, PresenceTracker, RegistryError};
use crate::domain::{Timestamp, UserId, UserName, UserRef};
use crate::redis_link::RedisLink;

const DUE_KEY: &str = "chat:presence:due";
/// Users settled per sweep of the due set.
const DUE_BATCH: isize = 500;

const SETTLE: &str = r"
local devices, state = KEYS[1], KEYS[2]
local now, timeout, replica, name = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local prefix = replica .. '/'
local listed = {}
for i = 5, #ARGV, 2 do listed[prefix .. ARGV[i]] = tonumber(ARGV[i + 1]) end
local last = tonumber(redis.call('HGET', state, 'last_active') or '0')
for _, m in ipairs(redis.call('ZRANGE', devices, 0, -1)) do
  if string.sub(m, 1, #prefix) == prefix and not listed[m] then
    local beat = tonumber(redis.call('ZSCORE', devices, m))
    -- A stream that closed was alive until now; a stale one since its last beat.
    if beat >= now - timeout then last = math.max(last, now) else last = math.max(last, beat) end
    redis.call('ZREM', devices, m)
  end
end
for m, beat in pairs(listed) do redis.call('ZADD', devices, beat, m) end
local newest = redis.call('ZRANGE', devices, -1, -1, 'WITHSCORES')
if newest[2] then last = math.max(last, tonumber(newest[2])) end
redis.call('ZREMRANGEBYSCORE', devices, '-inf', '(' .. (now - timeout))
local online = redis.call('ZCARD', devices) > 0
redis.call('HSET', state, 'last_active', last)
if name ~= '' then redis.call('HSET', state, 'name', name) end
local oldest = redis.call('ZRANGE', devices, 0, 0, 'WITHSCORES')
local due = -1
if oldest[2] then due = tonumber(oldest[2]) + timeout end
redis.call('PEXPIRE', devices, 2 * timeout + 60000)
-- What was announced outlives the devices by a week, so a quiet user is not
-- announced offline twice.
redis.call('PEXPIRE', state, 604800000)
local told = online and '1' or '0'
local changed = 0
if redis.call('HGET', state, 'announced') ~= told then
  redis.call('HSET', state, 'announced', told)
  changed = 1
end
return {changed, online and 1 or 0, last, redis.call('HGET', state, 'name') or '', due}
";

pub struct RedisRegistry {
    link: Arc<RedisLink>,
    /// This process's name in device entries: new per start, so a restarted replica
    /// never claims the devices of its previous life.
    replica: Uuid,
    timeout_ms: u64,
    script: Script,
}

fn devices_key(user: UserId) -> String {
    format!("chat:presence:{{{user}}}:devices")
}

fn state_key(user: UserId) -> String {
    format!("chat:presence:{{{user}}}:state")
}

fn failed(e: redis::RedisError) -> RegistryError {
    RegistryError(e.to_string())
}

impl RedisRegistry {
    pub fn new(link: Arc<RedisLink>, timeout: std::time::Duration) -> Self {
        RedisRegistry {
            link,
            replica: Uuid::new_v4(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            script: Script::new(SETTLE),
        }
    }
}

fn now_ms() -> i64 {
    Timestamp::now().micros() / 1000
}

#[async_trait]
impl PresenceRegistry for RedisRegistry {
    async fn settle(
        &self,
        user: UserId,
        tracker: &PresenceTracker,
    ) -> Result<Option<Announcement>, RegistryError> {
        let local = tracker.local_devices(user);
        let mut conn = self.link.commands().await.map_err(failed)?;
        let mut invocation = self.script.key(devices_key(user));
        invocation
            .key(state_key(user))
            .arg(now_ms())
            .arg(self.timeout_ms)
            .arg(self.replica.to_string())
            .arg(local.user.as_ref().map(|u| u.name.as_str()).unwrap_or(""));
        for (device, beat) in &local.devices {
            invocation.arg(device.to_string()).arg(beat.micros() / 1000);
        }
        let (changed, online, last, name, due): (i64, i64, i64, String, i64) =
            invocation.invoke_async(&mut conn).await.map_err(failed)?;
        let due_cmd = if due >= 0 {
            let mut c = redis::cmd("ZADD");
            c.arg(DUE_KEY).arg(due).arg(user.to_string());
            c
        } else {
            let mut c = redis::cmd("ZREM");
            c.arg(DUE_KEY).arg(user.to_string());
            c
        };
        due_cmd
            .query_async::<Value>(&mut conn)
            .await
            .map_err(failed)?;
        if changed == 0 {
            return Ok(None);
        }
        let user_ref = local.user.unwrap_or(UserRef {
            id: user,
            name: UserName::from_stored(name),
        });
        Ok(Some(Announcement {
            user: user_ref,
            online: online == 1,
            last_active: Timestamp(last.saturating_mul(1000)),
        }))
    }

    async fn online(
        &self,
        users: &[UserId],
        _tracker: &PresenceTracker,
    ) -> Result<Vec<bool>, RegistryError> {
        let conn = self.link.commands().await.map_err(failed)?;
        let fresh_since = now_ms() - i64::try_from(self.timeout_ms).unwrap_or(i64::MAX);
        let counts = futures::future::join_all(users.iter().map(|user| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("ZCOUNT");
            cmd.arg(devices_key(*user)).arg(fresh_since).arg("+inf");
            async move { cmd.query_async::<i64>(&mut conn).await }
        }))
        .await;
        counts
            .into_iter()
            .map(|c| c.map(|n| n > 0).map_err(failed))
            .collect()
    }

    async fn due(&self) -> Result<Vec<UserId>, RegistryError> {
        let mut conn = self.link.commands().await.map_err(failed)?;
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(DUE_KEY)
            .arg("-inf")
            .arg(now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(DUE_BATCH)
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        Ok(ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok().map(UserId))
            .collect())
    }
}
