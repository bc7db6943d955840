//! Who is online, from live sessions and their heartbeats.
//!
//! A user is online while at least one device has an open stream and a heartbeat
//! younger than the presence timeout. The tracker knows this process's devices. A
//! registry decides what contacts are told: `LocalRegistry` from the tracker alone
//! (one process), `RedisRegistry` from every replica's devices in Redis. Either way
//! it remembers what was last announced: flips can be decided concurrently, so the
//! announcer always publishes the current state rather than the flip that woke it,
//! and stale flips never reach anyone.

mod redis;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{DeviceId, Timestamp, UserId, UserRef};

pub use self::redis::RedisRegistry;

#[derive(Debug, thiserror::Error)]
#[error("presence registry: {0}")]
pub struct RegistryError(pub String);

/// The shared record of who is online, and what their contacts were last told.
#[async_trait]
pub trait PresenceRegistry: Send + Sync + 'static {
    /// Records this process's devices of `user` (from `tracker`) and returns the
    /// user's state if contacts have not been told it yet, marking it told.
    async fn settle(
        &self,
        user: UserId,
        tracker: &PresenceTracker,
    ) -> Result<Option<Announcement>, RegistryError>;

    /// Whether each user is online anywhere.
    async fn online(
        &self,
        users: &[UserId],
        tracker: &PresenceTracker,
    ) -> Result<Vec<bool>, RegistryError>;

    /// Users whose devices elsewhere may have gone stale (a replica died with them):
    /// settling them tells their contacts.
    async fn due(&self) -> Result<Vec<UserId>, RegistryError> {
        Ok(Vec::new())
    }
}

/// One process: the tracker is the whole truth.
pub struct LocalRegistry;

#[async_trait]
impl PresenceRegistry for LocalRegistry {
    async fn settle(
        &self,
        user: UserId,
        tracker: &PresenceTracker,
    ) -> Result<Option<Announcement>, RegistryError> {
        Ok(tracker.take_announcement(user))
    }

    async fn online(
        &self,
        users: &[UserId],
        tracker: &PresenceTracker,
    ) -> Result<Vec<bool>, RegistryError> {
        Ok(users.iter().map(|u| tracker.is_online(*u)).collect())
    }
}

/// This process's live devices of one user, for a registry shared with other replicas.
#[derive(Debug)]
pub struct LocalDevices {
    pub user: Option<UserRef>,
    /// Each device with an open, fresh stream here, with its last heartbeat.
    pub devices: Vec<(DeviceId, Timestamp)>,
}

/// What a heartbeat changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// The user came back online.
    Flipped,
    /// Nothing changed, but a shared registry should hear the device is alive.
    Refresh,
    Quiet,
}

struct DeviceState {
    streams: u32,
    last_beat: Instant,
    /// When a shared registry was last told of this device.
    last_reported: Instant,
    /// `last_beat` on the wall clock, which other replicas share.
    last_beat_at: Timestamp,
}

struct UserState {
    user: UserRef,
    devices: HashMap<DeviceId, DeviceState>,
    online: bool,
    /// What contacts were last told; None if never announced.
    announced: Option<bool>,
    /// The last sign of life: what "last seen" shows when the user goes offline.
    last_active: Timestamp,
}

/// The state to announce for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub user: UserRef,
    pub online: bool,
    pub last_active: Timestamp,
}

pub struct PresenceTracker {
    users: Mutex<HashMap<UserId, UserState>>,
    timeout: Duration,
}

impl PresenceTracker {
    pub fn new(timeout: Duration) -> Self {
        PresenceTracker {
            users: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Re-evaluates one user; true when their online state changed.
    fn settle(&self, state: &mut UserState, now: Instant) -> bool {
        let online = state
            .devices
            .values()
            .any(|d| d.streams > 0 && now.duration_since(d.last_beat) <= self.timeout);
        let changed = online != state.online;
        state.online = online;
        changed
    }

    /// A device opened a stream; true if the user came online.
    pub fn stream_opened(&self, user: &UserRef, device: DeviceId) -> bool {
        let now = Instant::now();
        let Ok(mut users) = self.users.lock() else {
            return false;
        };
        let state = users.entry(user.id).or_insert_with(|| UserState {
            user: user.clone(),
            devices: HashMap::new(),
            online: false,
            announced: None,
            last_active: Timestamp::now(),
        });
        let d = state.devices.entry(device).or_insert(DeviceState {
            streams: 0,
            last_beat: now,
            last_reported: now,
            last_beat_at: Timestamp::now(),
        });
        d.streams += 1;
        d.last_beat = now;
        d.last_beat_at = Timestamp::now();
        state.last_active = Timestamp::now();
        self.settle(state, now)
    }

    /// A device closed a stream; true if the user went offline.
    pub fn stream_closed(&self, user: UserId, device: DeviceId) -> bool {
        let now = Instant::now();
        let Ok(mut users) = self.users.lock() else {
            return false;
        };
        let Some(state) = users.get_mut(&user) else {
            return false;
        };
        if let Some(d) = state.devices.get_mut(&device) {
            d.streams = d.streams.saturating_sub(1);
            if d.streams == 0 {
                state.devices.remove(&device);
            }
        }
        if state.online {
            state.last_active = Timestamp::now();
        }
        self.settle(state, now)
    }

    /// A sign of life from a device with an open stream: whether the user came back
    /// online, or is due to tell a shared registry it is still alive.
    pub fn heartbeat(&self, user: UserId, device: DeviceId) -> Beat {
        let now = Instant::now();
        let Ok(mut users) = self.users.lock() else {
            return Beat::Quiet;
        };
        let Some(state) = users.get_mut(&user) else {
            return Beat::Quiet;
        };
        let Some(d) = state.devices.get_mut(&device) else {
            return Beat::Quiet;
        };
        d.last_beat = now;
        // Every client frame is a sign of life, so beats can come thousands of times a
        // second; a shared registry hears of them a few times per timeout.
        let refresh = now.duration_since(d.last_reported) >= self.timeout / 4;
        if refresh {
            d.last_reported = now;
            d.last_beat_at = Timestamp::now();
        }
        state.last_active = Timestamp::now();
        if self.settle(state, now) {
            Beat::Flipped
        } else if refresh {
            Beat::Refresh
        } else {
            Beat::Quiet
        }
    }

    /// This process's fresh devices of `user`. Forgets a user with no devices left:
    /// with a shared registry, the tracker holds only what is live here.
    pub fn local_devices(&self, user: UserId) -> LocalDevices {
        let now = Instant::now();
        let Ok(mut users) = self.users.lock() else {
            return LocalDevices {
                user: None,
                devices: Vec::new(),
            };
        };
        let Some(state) = users.get_mut(&user) else {
            return LocalDevices {
                user: None,
                devices: Vec::new(),
            };
        };
        self.settle(state, now);
        let devices: Vec<(DeviceId, Timestamp)> = state
            .devices
            .iter()
            .filter(|(_, d)| d.streams > 0 && now.duration_since(d.last_beat) <= self.timeout)
            .map(|(id, d)| (*id, d.last_beat_at))
            .collect();
        let local = LocalDevices {
            user: Some(state.user.clone()),
            devices,
        };
        if state.devices.is_empty() {
            users.remove(&user);
        }
        local
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.users
            .lock()
            .ok()
            .and_then(|u| u.get(&user).map(|s| s.online))
            .unwrap_or(false)
    }

    /// Users whose last fresh device went stale.
    pub fn sweep(&self) -> Vec<UserId> {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&self, now: Instant) -> Vec<UserId> {
        let Ok(mut users) = self.users.lock() else {
            return Vec::new();
        };
        users
            .iter_mut()
            .filter_map(|(id, state)| self.settle(state, now).then_some(*id))
            .collect()
    }

    /// The user's current state if contacts have not been told it yet; marks it told.
    /// Forgets users who are offline, announced, and have no devices.
    pub fn take_announcement(&self, user: UserId) -> Option<Announcement> {
        let mut users = self.users.lock().ok()?;
        let state = users.get_mut(&user)?;
        let pending = (state.announced != Some(state.online)).then(|| {
            state.announced = Some(state.online);
            Announcement {
                user: state.user.clone(),
                online: state.online,
                last_active: state.last_active,
            }
        });
        if !state.online && state.devices.is_empty() {
            users.remove(&user);
        }
        pending
    }

    /// Everyone online now: whose last seen a checkpoint records.
    pub fn online_users(&self) -> Vec<UserId> {
        self.users
            .lock()
            .map(|u| {
                u.iter()
                    .filter(|(_, s)| s.online)
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserName;
    use uuid::Uuid;

    fn user() -> UserRef {
        UserRef {
            id: UserId(Uuid::new_v4()),
            name: UserName::from_stored("u".into()),
        }
    }

    #[test]
    fn online_while_a_stream_is_open_and_fresh() {
        let p = PresenceTracker::new(Duration::from_millis(50));
        let (u, d1, d2) = (user(), DeviceId(Uuid::new_v4()), DeviceId(Uuid::new_v4()));
        assert!(p.stream_opened(&u, d1));
        assert!(!p.stream_opened(&u, d2));
        assert!(!p.stream_closed(u.id, d1));
        assert!(p.is_online(u.id));
        assert!(p.stream_closed(u.id, d2));
        assert!(!p.is_online(u.id));
    }

    #[test]
    fn stale_heartbeat_goes_offline_and_a_beat_revives() {
        let p = PresenceTracker::new(Duration::from_millis(20));
        let (u, d) = (user(), DeviceId(Uuid::new_v4()));
        p.stream_opened(&u, d);
        assert!(p.sweep().is_empty(), "fresh");
        let later = Instant::now() + Duration::from_millis(40);
        assert_eq!(p.sweep_at(later), vec![u.id]);
        assert!(p.sweep_at(later).is_empty(), "reported once");
        assert_eq!(p.heartbeat(u.id, d), Beat::Flipped);
    }

    #[test]
    fn announcements_carry_the_current_state_once() {
        let p = PresenceTracker::new(Duration::from_secs(10));
        let (u, d) = (user(), DeviceId(Uuid::new_v4()));
        p.stream_opened(&u, d);
        p.stream_closed(u.id, d);
        p.stream_opened(&u, d);
        // Three flips were decided; contacts hear only the state that holds now.
        let a = p.take_announcement(u.id).expect("pending");
        assert!(a.online);
        assert_eq!(p.take_announcement(u.id), None);
        p.stream_closed(u.id, d);
        assert!(!p.take_announcement(u.id).expect("offline pending").online);
        assert_eq!(
            p.take_announcement(u.id),
            None,
            "forgotten once offline and told"
        );
    }
}
