//! Active health checks as plain decisions: what a probe expects, when each endpoint is due
//! for its next probe, and which endpoints are no longer configured. The prober that sends
//! the requests lives in the gateway; the verdicts live in [`EndpointStats`].
//!
//! [`EndpointStats`]: crate::endpoint_stats::EndpointStats

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How one upstream's endpoints are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Path (and query) of the probe request, e.g. `/health`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Statuses that pass; empty means any 2xx.
    pub expect: Vec<u16>,
    /// Failed probes in a row that mark an endpoint unhealthy.
    pub unhealthy_after: u32,
    /// Passed probes in a row that mark it healthy again.
    pub healthy_after: u32,
}

impl HealthPolicy {
    /// Whether a probe answered with `status` passes.
    #[must_use]
    pub fn passes(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }
}

/// When each probed endpoint is next due, by a stable key (upstream and endpoint URL).
#[derive(Debug, Default)]
pub struct ProbeSchedule {
    next: HashMap<(String, String), Instant>,
}

impl ProbeSchedule {
    /// Whether `key` is due at `now` for a probe every `interval`; if so, books the next one.
    /// A key seen for the first time is due at once.
    pub fn take_due(&mut self, key: (&str, &str), interval: Duration, now: Instant) -> bool {
        let owned = (key.0.to_string(), key.1.to_string());
        match self.next.get_mut(&owned) {
            Some(next) if *next > now => false,
            Some(next) => {
                *next = now + interval;
                true
            }
            None => {
                self.next.insert(owned, now + interval);
                true
            }
        }
    }

    /// Forgets every key not in `live` (an endpoint or upstream removed by a reload).
    pub fn retain(&mut self, live: &HashSet<(String, String)>) {
        self.next.retain(|k, _| live.contains(k));
    }

    /// The earliest next probe, if any is booked.
    #[must_use]
    pub fn next_due(&self) -> Option<Instant> {
        self.next.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_statuses_default_to_2xx() {
        let mut p = HealthPolicy {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            expect: vec![],
            unhealthy_after: 2,
            healthy_after: 2,
        };
        assert!(p.passes(200) && p.passes(204));
        assert!(!p.passes(301) && !p.passes(503));
        p.expect = vec![200, 418];
        assert!(p.passes(418) && !p.passes(204));
    }

    #[test]
    fn each_key_is_due_once_per_interval_and_removed_keys_are_forgotten() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut sched = ProbeSchedule::default();
        assert!(
            sched.take_due(("up", "http://a"), s(2), t0),
            "new: due at once"
        );
        assert!(!sched.take_due(("up", "http://a"), s(2), t0 + s(1)));
        assert!(sched.take_due(("up", "http://b"), s(2), t0 + s(1)));
        assert_eq!(sched.next_due(), Some(t0 + s(2)));
        assert!(sched.take_due(("up", "http://a"), s(2), t0 + s(2)));
        let live: HashSet<_> = [("up".to_string(), "http://b".to_string())].into();
        sched.retain(&live);
        assert_eq!(sched.next_due(), Some(t0 + s(3)), "a forgotten");
    }
}
