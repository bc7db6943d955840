//! The scenarios, one module each, and the little they share: turning a round into a
//! table row, and counting failures while keeping the first one to show.

pub(crate) mod catch_up;
pub(crate) mod ceilings;
pub(crate) mod history;
pub(crate) mod idle;
pub(crate) mod latency;
pub(crate) mod throughput;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::load::RoundOutcome;
use crate::report::{Percentiles, Row};

pub(crate) fn row(scenario: &str, outcome: &RoundOutcome) -> Row {
    Row {
        scenario: scenario.to_owned(),
        target_rate: outcome.target_rate,
        achieved_rate: outcome.achieved_rate(),
        duration_s: outcome.duration.as_secs_f64(),
        sent: outcome.sent,
        acked: outcome.acked,
        delivered: outcome.delivered,
        errors: outcome.errors,
        lost: outcome.lost,
        ack: Percentiles::of(&outcome.ack),
        delivered_latency: Percentiles::of(&outcome.delivered_latency),
    }
}

/// Failures counted across tasks; the first one is kept to be shown.
#[derive(Default)]
pub(crate) struct Failures {
    count: AtomicU64,
    first: OnceLock<String>,
}

impl Failures {
    pub(crate) fn add(&self, what: impl FnOnce() -> String) {
        self.add_many(1, what);
    }

    pub(crate) fn add_many(&self, n: u64, what: impl FnOnce() -> String) {
        self.count.fetch_add(n, Ordering::Relaxed);
        if self.first.get().is_none() {
            let _ = self.first.set(what());
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Prints the count and the first failure, if any.
    pub(crate) fn print(&self) {
        if let Some(first) = self.first.get() {
            println!("{} failures; the first: {first}", self.count());
        }
    }
}
