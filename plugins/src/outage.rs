//! Failure bookkeeping shared by the slow tiers: every failed operation is counted, but only
//! the first of an outage is logged (and its end), so a dead tier does not flood the log with
//! one line per request.

use prometheus::IntCounter;
use std::sync::atomic::{AtomicBool, Ordering};

pub(super) struct Outage {
    tier: &'static str,
    failing: AtomicBool,
    errors: IntCounter,
}

impl Outage {
    /// `failing` is the starting state (Redis starts down until it first answers).
    pub(super) fn new(tier: &'static str, errors: IntCounter, failing: bool) -> Self {
        Outage {
            tier,
            failing: AtomicBool::new(failing),
            errors,
        }
    }

    #[must_use]
    pub(super) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Counts `count` failed operations; logs a warning if this starts an outage. Returns
    /// whether it did.
    pub(super) fn failed(&self, count: u64, what: &str, error: &dyn std::fmt::Display) -> bool {
        self.errors.inc_by(count);
        let started = !self.failing.swap(true, Ordering::AcqRel);
        if started {
            tracing::warn!(
                tier = self.tier,
                "cache: {} {what} failed: {error}; tier skipped until it recovers",
                self.tier
            );
        }
        started
    }

    /// Ends the starting outage without a log line (the caller says what happened).
    pub(super) fn clear(&self) {
        self.failing.store(false, Ordering::Release);
    }

    /// Ends an outage (logged once); returns whether one was going on.
    pub(super) fn recovered(&self) -> bool {
        if !self.is_failing() {
            return false;
        }
        let ended = self.failing.swap(false, Ordering::AcqRel);
        if ended {
            tracing::info!(tier = self.tier, "cache: {} answers again", self.tier);
        }
        ended
    }
}
