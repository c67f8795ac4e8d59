//! Passive outlier ejection: an endpoint failing several requests in a row (connect errors,
//! timeouts, 5xx) is taken out of its upstream for a while, longer each time it happens again,
//! but never so many at once that the upstream is left with too few endpoints.

use crate::endpoint_stats::EndpointStats;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When and for how long endpoints of one upstream are ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat adds one more.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// The most endpoints of the upstream ejected at once, in percent (at least one may be).
    pub max_ejection_percent: u8,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierPolicy {
    /// Counts a failure of endpoint `index` of `endpoints` at `now`; returns how long it was
    /// ejected for, if this failure ejected it.
    #[must_use]
    pub fn record_failure(
        &self,
        endpoints: &[Arc<EndpointStats>],
        index: usize,
        now: Instant,
    ) -> Option<Duration> {
        let stats = endpoints.get(index)?;
        let failures = stats.record_failed_try();
        if failures < self.consecutive_failures.max(1) {
            return None;
        }
        // One ejection at a time per endpoint: the lock orders racing failures.
        let mut history = stats.ejections.lock().ok()?;
        if stats.is_ejected(now) {
            return None;
        }
        let ejected = endpoints.iter().filter(|s| s.is_ejected(now)).count();
        let allowed = (endpoints.len() * usize::from(self.max_ejection_percent) / 100).max(1);
        if ejected >= allowed {
            return None;
        }
        let base = self.base_ejection.max(Duration::from_millis(1));
        let served = history.ended.map_or(0, |ended| {
            now.saturating_duration_since(ended).as_nanos() / base.as_nanos()
        });
        let served = u32::try_from(served).unwrap_or(u32::MAX);
        history.multiplier = history.multiplier.saturating_sub(served).saturating_add(1);
        let length = base
            .saturating_mul(history.multiplier)
            .min(self.max_ejection);
        history.ended = Some(now + length);
        stats.eject_until(now + length);
        stats.failures.store(0, Ordering::Relaxed);
        Some(length)
    }

    /// The endpoint answered well: its failure streak ends.
    pub fn record_success(endpoints: &[Arc<EndpointStats>], index: usize) {
        if let Some(stats) = endpoints.get(index) {
            if stats.failures.load(Ordering::Relaxed) != 0 {
                stats.failures.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(n: usize, now: Instant) -> Vec<Arc<EndpointStats>> {
        (0..n).map(|_| Arc::new(EndpointStats::new(now))).collect()
    }

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn failures_in_a_row_eject_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let s = stats(4, t0);
        let p = policy();
        assert_eq!(p.record_failure(&s, 0, t0), None);
        assert_eq!(p.record_failure(&s, 0, t0), None);
        OutlierPolicy::record_success(&s, 0);
        assert_eq!(p.record_failure(&s, 0, t0), None);
        assert_eq!(p.record_failure(&s, 0, t0), None);
        assert_eq!(p.record_failure(&s, 0, t0), Some(Duration::from_secs(10)));
        assert!(s[0].is_ejected(t0 + Duration::from_secs(9)));
        assert!(!s[0].is_ejected(t0 + Duration::from_secs(10)), "readmitted");
    }

    #[test]
    fn repeats_grow_the_time_up_to_the_cap_and_decay_in_service() {
        let t0 = Instant::now();
        let s = stats(2, t0);
        let p = policy();
        let eject = |at: Instant| (0..3).find_map(|_| p.record_failure(&s, 0, at));
        assert_eq!(eject(t0), Some(Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(eject(t1), Some(Duration::from_secs(20)), "second: twice");
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(eject(t2), Some(Duration::from_secs(25)), "capped");
        // 25 s back in service takes two steps off the multiplier (3 → 1), then +1.
        let t3 = t2 + Duration::from_secs(25) + Duration::from_secs(25);
        assert_eq!(eject(t3), Some(Duration::from_secs(20)));
    }

    #[test]
    fn never_more_than_the_allowed_share_at_once_but_always_one() {
        let t0 = Instant::now();
        let p = policy();
        let s = stats(4, t0);
        let eject = |i: usize| (0..3).find_map(|_| p.record_failure(&s, i, t0));
        assert!(eject(0).is_some());
        assert!(eject(1).is_some());
        assert_eq!(eject(2), None, "50% of 4 are out already");
        assert!(!s[2].is_ejected(t0));
        let single = stats(1, t0);
        let eject_single = (0..3).find_map(|_| p.record_failure(&single, 0, t0));
        assert!(
            eject_single.is_some(),
            "a lone endpoint can still be ejected"
        );
    }
}
