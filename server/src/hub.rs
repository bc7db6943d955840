//! The registry of sessions connected to this process, and delivery to them.
//!
//! Delivery never blocks: each session has a bounded inbox, and a session whose inbox
//! is full is closed with UNAVAILABLE (it resumes from its cursors when it reconnects,
//! and the store has everything). So one slow consumer cannot stall fan-out to others,
//! and memory stays bounded by sessions x inbox capacity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::domain::{DeviceId, Event, UserId};

/// Ends one session's stream, with the status the client will see.
#[derive(Clone)]
pub struct Closer {
    token: CancellationToken,
    reason: Arc<Mutex<Option<Status>>>,
}

impl Closer {
    pub fn new(token: CancellationToken) -> Self {
        Closer {
            token,
            reason: Arc::new(Mutex::new(None)),
        }
    }

    /// Closes with an error status; the first reason given wins.
    pub fn close_with(&self, status: Status) {
        if let Ok(mut reason) = self.reason.lock() {
            reason.get_or_insert(status);
        }
        self.token.cancel();
    }

    /// Closes the stream normally (the client went away or hung up).
    pub fn close(&self) {
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn take_reason(&self) -> Option<Status> {
        self.reason.lock().ok().and_then(|mut r| r.take())
    }
}

/// What a session's inbox carries.
#[derive(Clone, Debug)]
pub enum Inbound {
    Event(Event),
    /// Events may have been lost on the way (the bus was cut off): read everything
    /// newer than the session's cursors from the store.
    Resync,
}

struct Registered {
    id: u64,
    device: DeviceId,
    inbox: mpsc::Sender<Inbound>,
    closer: Closer,
}

pub struct Hub {
    sessions: Mutex<HashMap<UserId, Vec<Registered>>>,
    next_id: AtomicU64,
    inbox_capacity: usize,
    /// Told when a user's last local session leaves, so the bus can stop listening.
    vacated: Mutex<Option<mpsc::UnboundedSender<UserId>>>,
}

/// A session's place in the hub; dropping it removes the session.
pub struct Registration {
    hub: Arc<Hub>,
    user: UserId,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::SESSIONS).decrement(1.0);
        self.hub.remove(self.user, self.id);
    }
}

impl Hub {
    pub fn new(inbox_capacity: usize) -> Arc<Self> {
        Arc::new(Hub {
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            inbox_capacity: inbox_capacity.max(1),
            vacated: Mutex::new(None),
        })
    }

    /// Reports each user whose last local session left on `tx`.
    pub fn report_vacated(&self, tx: mpsc::UnboundedSender<UserId>) {
        if let Ok(mut vacated) = self.vacated.lock() {
            *vacated = Some(tx);
        }
    }

    /// Adds a session of `user`; events for the user arrive on the returned inbox.
    pub fn register(
        self: &Arc<Self>,
        user: UserId,
        device: DeviceId,
        closer: Closer,
    ) -> (Registration, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(self.inbox_capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::SESSIONS).increment(1.0);
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.entry(user).or_default().push(Registered {
                id,
                device,
                inbox: tx,
                closer,
            });
        }
        (
            Registration {
                hub: self.clone(),
                user,
                id,
            },
            rx,
        )
    }

    fn remove(&self, user: UserId, id: u64) {
        if let Ok(mut sessions) = self.sessions.lock()
            && let Some(list) = sessions.get_mut(&user)
        {
            list.retain(|r| r.id != id);
            if list.is_empty() {
                sessions.remove(&user);
                if let Ok(vacated) = self.vacated.lock()
                    && let Some(tx) = vacated.as_ref()
                {
                    let _ = tx.send(user);
                }
            }
        }
    }

    /// True while `user` has a session on this process.
    pub fn is_present(&self, user: UserId) -> bool {
        self.sessions
            .lock()
            .map(|s| s.contains_key(&user))
            .unwrap_or(false)
    }

    /// Every user with a session on this process.
    pub fn present_users(&self) -> Vec<UserId> {
        self.sessions
            .lock()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Makes every local session of `user` catch up from the store.
    pub fn resync(&self, user: UserId) {
        let Ok(sessions) = self.sessions.lock() else {
            return;
        };
        for session in sessions.get(&user).into_iter().flatten() {
            Self::offer(user, session, Inbound::Resync);
        }
    }

    /// Makes every local session catch up from the store.
    pub fn resync_all(&self) {
        let Ok(sessions) = self.sessions.lock() else {
            return;
        };
        for (user, list) in sessions.iter() {
            for session in list {
                Self::offer(*user, session, Inbound::Resync);
            }
        }
    }

    /// Hands the event to every local session of `user` without waiting.
    pub fn deliver(&self, user: UserId, event: &Event) {
        let Ok(sessions) = self.sessions.lock() else {
            return;
        };
        let Some(list) = sessions.get(&user) else {
            return;
        };
        for session in list {
            Self::offer(user, session, Inbound::Event(event.clone()));
        }
    }

    fn offer(user: UserId, session: &Registered, inbound: Inbound) {
        match session.inbox.try_send(inbound) {
            Ok(()) => {}
            // Typing and presence are ephemeral: dropping one loses nothing that
            // matters, and must not let a chatty peer knock a session offline.
            Err(mpsc::error::TrySendError::Full(Inbound::Event(
                Event::Typing { .. } | Event::Presence(_),
            ))) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%user, session = session.id, "session fell behind; closing it");
                metrics::counter!(crate::metrics::SLOW_CLOSES).increment(1);
                session.closer.close_with(Status::unavailable(
                    "session fell behind; reconnect to resume from your cursors",
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Closes every session of one device (after logout) with `status`.
    pub fn close_device(&self, user: UserId, device: DeviceId, status: Status) {
        let Ok(sessions) = self.sessions.lock() else {
            return;
        };
        for session in sessions.get(&user).into_iter().flatten() {
            if session.device == device {
                session.closer.close_with(status.clone());
            }
        }
    }

    /// Number of connected sessions, for metrics and tests.
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .map(|s| s.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}
