//! Failure bookkeeping for a dependency that may go away (the cache's disk, a Redis): every
//! failed operation is counted, but only the first of an outage is logged (and its end), so a
//! dead dependency does not flood the log with one line per request.

use prometheus::IntCounter;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct Outage {
    /// Who uses the dependency, first in every log line ("cache", "limits").
    component: &'static str,
    /// The dependency ("redis", "disk").
    tier: &'static str,
    failing: AtomicBool,
    errors: IntCounter,
}

impl Outage {
    /// `failing` is the starting state (Redis starts down until it first answers).
    pub(crate) fn new(
        component: &'static str,
        tier: &'static str,
        errors: IntCounter,
        failing: bool,
    ) -> Self {
        Outage {
            component,
            tier,
            failing: AtomicBool::new(failing),
            errors,
        }
    }

    #[must_use]
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Counts `count` failed operations; logs a warning if this starts an outage. Returns
    /// whether it did.
    pub(crate) fn failed(&self, count: u64, what: &str, error: &dyn std::fmt::Display) -> bool {
        self.errors.inc_by(count);
        let started = !self.failing.swap(true, Ordering::AcqRel);
        if started {
            tracing::warn!(
                tier = self.tier,
                "{}: {} {what} failed: {error}; {} skipped until it recovers",
                self.component,
                self.tier,
                self.tier
            );
        }
        started
    }

    /// Ends the starting outage without a log line (the caller says what happened).
    pub(crate) fn clear(&self) {
        self.failing.store(false, Ordering::Release);
    }

    /// Ends an outage (logged once); returns whether one was going on.
    pub(crate) fn recovered(&self) -> bool {
        if !self.is_failing() {
            return false;
        }
        let ended = self.failing.swap(false, Ordering::AcqRel);
        if ended {
            tracing::info!(
                tier = self.tier,
                "{}: {} answers again",
                self.component,
                self.tier
            );
        }
        ended
    }
}
