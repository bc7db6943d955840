//! Per-user send rate limit: a token bucket per user, refilled continuously.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::UserId;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<UserId, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter {
            per_second: if per_second > 0.0 { per_second } else { 1.0 },
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token; false when the user is over the limit.
    pub fn try_acquire(&self, user: UserId) -> bool {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let (tokens, last) = buckets.entry(user).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets buckets that have refilled, so idle users cost no memory.
    pub fn prune(&self) {
        let now = Instant::now();
        let full_after =
            Duration::try_from_secs_f64(self.burst / self.per_second).unwrap_or(Duration::MAX);
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|_, (_, last)| now.duration_since(*last) < full_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn burst_then_refuse() {
        let limiter = RateLimiter::new(1.0, 3);
        let u = UserId(Uuid::new_v4());
        assert!((0..3).all(|_| limiter.try_acquire(u)));
        assert!(!limiter.try_acquire(u));
        assert!(limiter.try_acquire(UserId(Uuid::new_v4())));
    }
}
