//! Who is online, from live sessions and their heartbeats (in memory, one process).
//!
//! A user is online while at least one device has an open stream and a heartbeat
//! younger than the presence timeout. The tracker only reports flips (online ->
//! offline and back); `chat` persists last seen and tells contacts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{DeviceId, UserId, UserRef};

struct DeviceState {
    streams: u32,
    last_beat: Instant,
}

struct UserState {
    user: UserRef,
    devices: HashMap<DeviceId, DeviceState>,
    online: bool,
}

pub struct PresenceTracker {
    users: Mutex<HashMap<UserId, UserState>>,
    timeout: Duration,
}

/// A change in a user's online state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flip {
    Online,
    Offline,
}

impl PresenceTracker {
    pub fn new(timeout: Duration) -> Self {
        PresenceTracker {
            users: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn is_fresh(&self, device: &DeviceState, now: Instant) -> bool {
        device.streams > 0 && now.duration_since(device.last_beat) <= self.timeout
    }

    /// Re-evaluates one user and reports a flip.
    fn settle(&self, state: &mut UserState, now: Instant) -> Option<Flip> {
        let online = state.devices.values().any(|d| self.is_fresh(d, now));
        if online == state.online {
            return None;
        }
        state.online = online;
        Some(if online { Flip::Online } else { Flip::Offline })
    }

    pub fn stream_opened(&self, user: &UserRef, device: DeviceId) -> Option<Flip> {
        let now = Instant::now();
        let mut users = self.users.lock().ok()?;
        let state = users.entry(user.id).or_insert_with(|| UserState {
            user: user.clone(),
            devices: HashMap::new(),
            online: false,
        });
        let d = state.devices.entry(device).or_insert(DeviceState {
            streams: 0,
            last_beat: now,
        });
        d.streams += 1;
        d.last_beat = now;
        self.settle(state, now)
    }

    pub fn stream_closed(&self, user: UserId, device: DeviceId) -> Option<Flip> {
        let now = Instant::now();
        let mut users = self.users.lock().ok()?;
        let state = users.get_mut(&user)?;
        if let Some(d) = state.devices.get_mut(&device) {
            d.streams = d.streams.saturating_sub(1);
            if d.streams == 0 {
                state.devices.remove(&device);
            }
        }
        let flip = self.settle(state, now);
        if state.devices.is_empty() && !state.online {
            users.remove(&user);
        }
        flip
    }

    /// A sign of life from a device with an open stream.
    pub fn heartbeat(&self, user: UserId, device: DeviceId) -> Option<Flip> {
        let now = Instant::now();
        let mut users = self.users.lock().ok()?;
        let state = users.get_mut(&user)?;
        state.devices.get_mut(&device)?.last_beat = now;
        self.settle(state, now)
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.users
            .lock()
            .ok()
            .and_then(|u| u.get(&user).map(|s| s.online))
            .unwrap_or(false)
    }

    /// Users whose last fresh device went stale since the previous sweep.
    pub fn sweep(&self) -> Vec<UserRef> {
        let now = Instant::now();
        let Ok(mut users) = self.users.lock() else {
            return Vec::new();
        };
        let mut offline = Vec::new();
        for state in users.values_mut() {
            if self.settle(state, now) == Some(Flip::Offline) {
                offline.push(state.user.clone());
            }
        }
        offline
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
        assert_eq!(p.stream_opened(&u, d1), Some(Flip::Online));
        assert_eq!(p.stream_opened(&u, d2), None);
        assert_eq!(p.stream_closed(u.id, d1), None);
        assert!(p.is_online(u.id));
        assert_eq!(p.stream_closed(u.id, d2), Some(Flip::Offline));
        assert!(!p.is_online(u.id));
    }

    #[test]
    fn stale_heartbeat_goes_offline_and_a_beat_revives() {
        let p = PresenceTracker::new(Duration::from_millis(20));
        let (u, d) = (user(), DeviceId(Uuid::new_v4()));
        p.stream_opened(&u, d);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(p.sweep(), vec![u.clone()]);
        assert!(p.sweep().is_empty());
        assert_eq!(p.heartbeat(u.id, d), Some(Flip::Online));
    }
}
