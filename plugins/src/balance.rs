//! Endpoint selection for one upstream. Round robin and smooth weighted round robin are
//! lock-free over a precomputed schedule; least-outstanding and peak-EWMA use
//! power-of-two-choices over per-endpoint stats. Stats ([`EndpointStats`]) are shared
//! `Arc`s owned outside the policy snapshot so a reload keeps in-flight counts and latency.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How an upstream picks among its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Weighted,
    LeastOutstanding,
    PeakEwma,
}

/// Live load and latency of one endpoint; survives policy reloads.
#[derive(Debug)]
pub struct EndpointStats {
    inflight: AtomicUsize,
    ewma: Mutex<PeakEwma>,
    /// Until when (ns after `origin`) the endpoint asked not to be sent requests (a 429 or 503
    /// with `retry-after`); 0 when it did not.
    cool_until: AtomicU64,
    origin: Instant,
}

/// The longest an endpoint's `retry-after` keeps it out, whatever it asks.
const MAX_COOL_DOWN: Duration = Duration::from_secs(60);

/// Peak-sensitive EWMA of response latency: jumps up to a slower sample at once, decays
/// towards faster ones, so a slowing endpoint is avoided quickly and re-tried gradually.
#[derive(Debug, Clone, Copy)]
struct PeakEwma {
    cost_ns: f64,
    stamp: Instant,
}

/// Decay window of the EWMA.
const EWMA_DECAY: Duration = Duration::from_secs(10);
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
            origin: now,
        }
    }

    /// The endpoint answered "not now" (429 or 503 with `retry-after`): keep requests away from
    /// it for `wait` (at most a minute), while another endpoint can take them.
    pub fn cool_for(&self, wait: Duration, now: Instant) {
        let until = now.saturating_duration_since(self.origin) + wait.min(MAX_COOL_DOWN);
        let until = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.cool_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether the endpoint asked to be left alone at `now`.
    #[must_use]
    pub fn is_cooling(&self, now: Instant) -> bool {
        let at = u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(u64::MAX);
        at < self.cool_until.load(Ordering::Relaxed)
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
            let elapsed = now.saturating_duration_since(e.stamp).as_secs_f64();
            let w = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
            e.cost_ns = e.cost_ns * w + sample * (1.0 - w);
        }
        e.stamp = now;
    }

    /// The current latency estimate, decayed to `now`.
    #[must_use]
    pub fn latency_ns(&self) -> f64 {
        self.ewma.lock().map(|e| e.cost_ns).unwrap_or(f64::MAX)
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

/// How long an answer asks to be left alone: `retry-after-ms` (OpenAI's), else `retry-after`
/// in seconds (whole or decimal; an HTTP date is not honoured).
#[must_use]
pub fn requested_wait(retry_after: Option<&str>, retry_after_ms: Option<&str>) -> Option<Duration> {
    let parse = |v: Option<&str>, unit: f64| {
        let n: f64 = v?.trim().parse().ok()?;
        (n.is_finite() && n > 0.0).then(|| Duration::from_secs_f64((n * unit).min(3600.0)))
    };
    parse(retry_after_ms, 0.001).or_else(|| parse(retry_after, 1.0))
}

/// Picks an endpoint index for each request.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    stats: Vec<Arc<EndpointStats>>,
    /// Endpoint order for (weighted) round robin, one slot per unit of weight, interleaved.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
    rng: AtomicU64,
}

impl Balancer {
    /// `weights[i]` and `stats[i]` describe endpoint `i`. Weights of 0 are treated as 1.
    #[must_use]
    pub fn new(strategy: Strategy, weights: &[u32], stats: Vec<Arc<EndpointStats>>) -> Self {
        debug_assert_eq!(weights.len(), stats.len());
        let schedule = match strategy {
            Strategy::Weighted => smooth_weighted_schedule(weights),
            _ => (0..weights.len()).collect(),
        };
        Balancer {
            strategy,
            stats,
            schedule,
            cursor: AtomicUsize::new(0),
            rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        }
    }

    #[must_use]
    pub fn stats(&self, index: usize) -> Option<&Arc<EndpointStats>> {
        self.stats.get(index)
    }

    /// Picks an endpoint not in `tried` (all are eligible again once every one was tried) and
    /// not cooling down at `now`, unless every such endpoint is cooling down.
    #[must_use]
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let n = self.stats.len();
        if n == 0 {
            return None;
        }
        let untried = |i: &usize| tried.len() >= n || !tried.contains(i);
        let warm = |i: &usize| untried(i) && !self.stats[*i].is_cooling(now);
        if (0..n).any(|i| warm(&i)) {
            self.pick_among(warm)
        } else {
            self.pick_among(untried)
        }
    }

    fn pick_among(&self, eligible: impl Fn(&usize) -> bool) -> Option<usize> {
        match self.strategy {
            Strategy::RoundRobin | Strategy::Weighted => {
                let len = self.schedule.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| self.schedule[(start + k) % len])
                    .find(|i| eligible(i))
            }
            Strategy::LeastOutstanding => self.two_choices(eligible, |s| s.inflight() as f64),
            Strategy::PeakEwma => {
                self.two_choices(eligible, |s| s.latency_ns() * (s.inflight() as f64 + 1.0))
            }
        }
    }

    /// Power of two choices: two random eligible endpoints, the cheaper one wins.
    fn two_choices(
        &self,
        eligible: impl Fn(&usize) -> bool,
        cost: impl Fn(&EndpointStats) -> f64,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.stats.len()).filter(|i| eligible(i)).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            len => {
                let r = self.next_random();
                let a = candidates[(r % len as u64) as usize];
                let mut b = candidates[((r >> 32) % (len as u64 - 1)) as usize];
                if b == a {
                    b = candidates[len - 1];
                }
                let (ca, cb) = (cost(&self.stats[a]), cost(&self.stats[b]));
                Some(if cb < ca { b } else { a })
            }
        }
    }

    /// xorshift64*: cheap, lock-free, good enough to spread picks.
    fn next_random(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle of picks.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1))).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(n: usize, now: Instant) -> Vec<Arc<EndpointStats>> {
        (0..n).map(|_| Arc::new(EndpointStats::new(now))).collect()
    }

    #[test]
    fn weighted_follows_weights_and_interleaves() {
        let t0 = Instant::now();
        let b = Balancer::new(Strategy::Weighted, &[3, 1], stats(2, t0));
        let picks: Vec<usize> = (0..8).filter_map(|_| b.pick(&[], t0)).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(picks[..4], [0, 0, 1, 0]);
    }

    #[test]
    fn round_robin_skips_tried() {
        let t0 = Instant::now();
        let b = Balancer::new(Strategy::RoundRobin, &[1, 1, 1], stats(3, t0));
        for _ in 0..6 {
            let i = b.pick(&[0, 1], t0).unwrap();
            assert_eq!(i, 2);
        }
        assert!(b.pick(&[0, 1, 2], t0).is_some(), "all tried: start over");
    }

    #[test]
    fn least_outstanding_prefers_idle() {
        let t0 = Instant::now();
        let s = stats(2, t0);
        let _busy: Vec<_> = (0..5).map(|_| s[0].start()).collect();
        let b = Balancer::new(Strategy::LeastOutstanding, &[1, 1], s);
        for _ in 0..20 {
            assert_eq!(b.pick(&[], t0), Some(1));
        }
    }

    #[test]
    fn peak_ewma_avoids_slow_then_forgives() {
        let t0 = Instant::now();
        let s = stats(2, t0);
        s[0].observe(Duration::from_millis(500), t0);
        s[1].observe(Duration::from_millis(5), t0);
        let b = Balancer::new(Strategy::PeakEwma, &[1, 1], s.clone());
        assert!((0..20).all(|_| b.pick(&[], t0) == Some(1)));
        // Sixty seconds of fast answers decay the peak below the other endpoint's.
        s[0].observe(Duration::from_millis(1), t0 + Duration::from_secs(60));
        assert!(s[0].latency_ns() < s[1].latency_ns());
    }

    #[test]
    fn inflight_guard_counts() {
        let s = Arc::new(EndpointStats::new(Instant::now()));
        let g = s.start();
        assert_eq!(s.inflight(), 1);
        drop(g);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn empty_upstream_picks_nothing() {
        let b = Balancer::new(Strategy::RoundRobin, &[], vec![]);
        assert_eq!(b.pick(&[], Instant::now()), None);
    }

    #[test]
    fn retry_after_headers_are_read() {
        let s = Duration::from_secs_f64;
        assert_eq!(requested_wait(Some("2"), None), Some(s(2.0)));
        assert_eq!(requested_wait(Some("1.5"), Some("250")), Some(s(0.25)));
        assert_eq!(
            requested_wait(Some("Wed, 21 Oct 2015 07:28:00 GMT"), None),
            None
        );
        assert_eq!(requested_wait(Some("-1"), Some("x")), None);
        assert_eq!(requested_wait(None, None), None);
    }

    #[test]
    fn an_endpoint_that_asked_for_time_is_skipped_until_then() {
        let t0 = Instant::now();
        let s = stats(2, t0);
        let b = Balancer::new(Strategy::RoundRobin, &[1, 1], s.clone());
        s[0].cool_for(Duration::from_secs(2), t0);
        let soon = t0 + Duration::from_millis(1900);
        assert!(
            (0..10).all(|_| b.pick(&[], soon) == Some(1)),
            "0 is cooling"
        );
        let picks: Vec<_> = (0..4)
            .filter_map(|_| b.pick(&[], t0 + Duration::from_secs(2)))
            .collect();
        assert!(
            picks.contains(&0) && picks.contains(&1),
            "back after 2 s: {picks:?}"
        );
        // When every endpoint left is cooling, one is still picked (better than none).
        s[1].cool_for(Duration::from_secs(5), t0);
        assert!(b.pick(&[], soon).is_some());
        assert_eq!(
            b.pick(&[1], soon),
            Some(0),
            "the untried one, cooling or not"
        );
        // A wish for an hour is capped at a minute.
        s[0].cool_for(Duration::from_secs(3600), t0);
        assert!(!s[0].is_cooling(t0 + Duration::from_secs(61)));
    }
}
