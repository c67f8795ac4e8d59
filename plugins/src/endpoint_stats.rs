//! What the gateway knows about one endpoint, kept outside the policy snapshot so a reload
//! keeps it: requests in flight, latency (peak EWMA), a `retry-after` cool-down, passive
//! ejection and active health. The balancer reads it on every pick, so the hot fields are
//! atomics; the rarely written ones sit behind small mutexes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Live load, latency and availability of one endpoint; survives policy reloads.
#[derive(Debug)]
pub struct EndpointStats {
    inflight: AtomicUsize,
    ewma: Mutex<PeakEwma>,
    /// Until when (ns after `origin`) the endpoint asked not to be sent requests (a 429 or 503
    /// with `retry-after`); 0 when it did not.
    cool_until: AtomicU64,
    /// Until when (ns after `origin`) passive outlier detection keeps it out; 0 when it does not.
    ejected_until: AtomicU64,
    /// Failures in a row (connect errors, timeouts, 5xx) since the last success.
    pub(crate) failures: AtomicU32,
    /// How often it was ejected lately, which sets how long the next ejection lasts.
    pub(crate) ejections: Mutex<EjectionHistory>,
    /// The active health check's verdict (true until a check says otherwise).
    healthy: AtomicBool,
    probes: Mutex<ProbeStreak>,
    origin: Instant,
}

/// Ejections of one endpoint: the current multiplier of the base time, and when the last
/// ejection ended (the multiplier decays by one per base time spent back in service).
#[derive(Debug, Default)]
pub(crate) struct EjectionHistory {
    pub multiplier: u32,
    pub ended: Option<Instant>,
}

/// Consecutive probe results of one kind.
#[derive(Debug, Default)]
struct ProbeStreak {
    passing: bool,
    count: u32,
}

/// The longest an endpoint's `retry-after` keeps it out, whatever it asks.
const MAX_COOL_DOWN: Duration = Duration::from_secs(60);

/// Peak-sensitive EWMA of response latency: jumps up to a slower sample at once, decays
/// towards faster ones and, unused, towards zero (as tower's does), so a slowing endpoint is
/// avoided quickly and tried again within seconds once it may have recovered.
#[derive(Debug, Clone, Copy)]
struct PeakEwma {
    cost_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// The weight left to the estimate after the time since its last sample.
    fn decay(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
        (-elapsed / EWMA_DECAY.as_secs_f64()).exp()
    }
}

/// Decay window of the EWMA: short, so a recovered endpoint gets traffic back in seconds.
const EWMA_DECAY: Duration = Duration::from_secs(3);
/// Latency assumed for an endpoint that has not answered yet (optimistic, so it gets tried).
const EWMA_DEFAULT: Duration = Duration::from_millis(1);

impl EndpointStats {
    #[must_use]
    pub fn new(now: Instant) -> Self {
        EndpointStats {
            inflight: AtomicUsize::new(0),
            ewma: Mutex::new(PeakEwma {
                cost_ns: EWMA_DEFAULT.as_nanos() as f64,
                stamp: now,
            }),
            cool_until: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: Mutex::new(EjectionHistory::default()),
            healthy: AtomicBool::new(true),
            probes: Mutex::new(ProbeStreak::default()),
            origin: now,
        }
    }

    fn offset(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The endpoint answered "not now" (429 or 503 with `retry-after`): keep requests away from
    /// it for `wait` (at most a minute), while another endpoint can take them.
    pub fn cool_for(&self, wait: Duration, now: Instant) {
        let until = self.offset(now + wait.min(MAX_COOL_DOWN));
        self.cool_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether the endpoint asked to be left alone at `now`.
    #[must_use]
    pub fn is_cooling(&self, now: Instant) -> bool {
        self.offset(now) < self.cool_until.load(Ordering::Relaxed)
    }

    /// Keeps the endpoint out of the balancer until `until`.
    pub(crate) fn eject_until(&self, until: Instant) {
        self.ejected_until
            .store(self.offset(until).max(1), Ordering::Relaxed);
    }

    /// Whether passive outlier detection keeps the endpoint out at `now`.
    #[must_use]
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.offset(now) < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Ends an ejection early (a passing health check); returns whether it was ejected.
    pub fn readmit(&self, now: Instant) -> bool {
        let was = self.is_ejected(now);
        if was {
            self.ejected_until.store(0, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
            if let Ok(mut h) = self.ejections.lock() {
                h.ended = Some(now);
            }
        }
        was
    }

    /// Whether the active health check last judged the endpoint healthy.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the balancer may send requests to it at `now`: healthy and not ejected.
    #[must_use]
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }

    /// Counts a failed try in the endpoint's streak; returns the streak's length. Outlier
    /// detection counts through it too, so without it the streak still says who is failing.
    pub fn record_failed_try(&self) -> u32 {
        self.failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Whether nothing says the endpoint is failing at `now`: its health check passes (or there
    /// is none), it is not ejected, and its last `streak` tries did not all fail. This is what
    /// the `healthy` gauge shows, where an upstream without checks has no other verdict.
    #[must_use]
    pub fn looks_healthy(&self, now: Instant, streak: u32) -> bool {
        self.is_available(now) && self.failures.load(Ordering::Relaxed) < streak.max(1)
    }

    /// Counts one probe result; the verdict flips after `unhealthy_after` failures or
    /// `healthy_after` passes in a row. Returns the new verdict when it flipped.
    pub fn record_probe(
        &self,
        passed: bool,
        unhealthy_after: u32,
        healthy_after: u32,
    ) -> Option<bool> {
        let Ok(mut streak) = self.probes.lock() else {
            return None;
        };
        if streak.passing == passed {
            streak.count = streak.count.saturating_add(1);
        } else {
            *streak = ProbeStreak {
                passing: passed,
                count: 1,
            };
        }
        let healthy = self.is_healthy();
        let flips = if passed {
            !healthy && streak.count >= healthy_after
        } else {
            healthy && streak.count >= unhealthy_after
        };
        if flips {
            self.healthy.store(passed, Ordering::Relaxed);
        }
        flips.then_some(passed)
    }

    #[must_use]
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Records one observed latency (time to first byte) at `now`.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let Ok(mut e) = self.ewma.lock() else { return };
        let sample = rtt.as_nanos() as f64;
        if sample > e.cost_ns {
            e.cost_ns = sample;
        } else {
            let w = e.decay(now);
            e.cost_ns = e.cost_ns * w + sample * (1.0 - w);
        }
        e.stamp = now;
    }

    /// The latency estimate at `now`, decayed since the last answer.
    #[must_use]
    pub fn latency_ns(&self, now: Instant) -> f64 {
        self.ewma
            .lock()
            .map(|e| e.cost_ns * e.decay(now))
            .unwrap_or(f64::MAX)
    }

    /// Marks a request as started on this endpoint until the guard drops.
    #[must_use]
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(Arc::clone(self))
    }
}

/// Decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InflightGuard(Arc<EndpointStats>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_guard_counts() {
        let s = Arc::new(EndpointStats::new(Instant::now()));
        let g = s.start();
        assert_eq!(s.inflight(), 1);
        drop(g);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn health_flips_only_after_a_streak() {
        let s = EndpointStats::new(Instant::now());
        assert!(s.is_healthy(), "healthy until a check says otherwise");
        assert_eq!(s.record_probe(false, 2, 3), None);
        assert_eq!(s.record_probe(true, 2, 3), None, "a pass breaks the streak");
        assert_eq!(s.record_probe(false, 2, 3), None);
        assert_eq!(s.record_probe(false, 2, 3), Some(false));
        assert!(!s.is_healthy() && !s.is_available(Instant::now()));
        assert_eq!(
            s.record_probe(false, 2, 3),
            None,
            "no flip while staying down"
        );
        assert_eq!(s.record_probe(true, 2, 3), None);
        assert_eq!(s.record_probe(true, 2, 3), None);
        assert_eq!(s.record_probe(true, 2, 3), Some(true));
        assert!(s.is_healthy());
    }

    #[test]
    fn a_failure_streak_reads_unhealthy_until_a_success() {
        let t0 = Instant::now();
        let s = EndpointStats::new(t0);
        for n in 1..=4 {
            assert_eq!(s.record_failed_try(), n);
            assert!(s.looks_healthy(t0, 5), "{n} failures in a row");
        }
        s.record_failed_try();
        assert!(!s.looks_healthy(t0, 5));
        assert!(s.is_available(t0), "the balancer still picks it");
        let shared = [Arc::new(s)];
        crate::outlier::OutlierPolicy::record_success(&shared, 0);
        assert!(shared[0].looks_healthy(t0, 5));
        shared[0].eject_until(t0 + Duration::from_secs(1));
        assert!(!shared[0].looks_healthy(t0, 5), "ejected");
    }

    #[test]
    fn ejection_lasts_until_its_time_or_a_readmission() {
        let t0 = Instant::now();
        let s = EndpointStats::new(t0);
        s.eject_until(t0 + Duration::from_secs(30));
        assert!(s.is_ejected(t0 + Duration::from_secs(29)));
        assert!(!s.is_available(t0 + Duration::from_secs(29)));
        assert!(!s.is_ejected(t0 + Duration::from_secs(30)));
        assert!(s.readmit(t0 + Duration::from_secs(1)));
        assert!(s.is_available(t0 + Duration::from_secs(1)));
        assert!(
            !s.readmit(t0 + Duration::from_secs(2)),
            "nothing to readmit"
        );
    }
}
