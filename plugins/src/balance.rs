//! Endpoint selection for one upstream. Round robin and smooth weighted round robin are
//! lock-free over a precomputed schedule; least-outstanding and peak-EWMA use
//! power-of-two-choices over per-endpoint stats. Stats ([`EndpointStats`]) are shared
//! `Arc`s owned outside the policy snapshot so a reload keeps in-flight counts and latency.

pub use crate::endpoint_stats::{EndpointStats, InflightGuard};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an upstream picks among its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Weighted,
    LeastOutstanding,
    PeakEwma,
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

    /// Every endpoint's stats, in endpoint order.
    #[must_use]
    pub fn all_stats(&self) -> &[Arc<EndpointStats>] {
        &self.stats
    }

    /// Picks an available endpoint (healthy, not ejected) not in `tried` (all are eligible
    /// again once every available one was tried) and not cooling down at `now`, unless every
    /// such endpoint is cooling down. `None` when no endpoint is available.
    #[must_use]
    pub fn pick(&self, tried: &[usize], now: Instant) -> Option<usize> {
        let available = |i: &usize| self.stats[*i].is_available(now);
        let n = self.stats.len();
        let all_tried = (0..n).filter(available).all(|i| tried.contains(&i));
        let untried = |i: &usize| available(i) && (all_tried || !tried.contains(i));
        if !(0..n).any(|i| untried(&i)) {
            return None;
        }
        let warm = |i: &usize| untried(i) && !self.stats[*i].is_cooling(now);
        if (0..n).any(|i| warm(&i)) {
            self.pick_among(warm, now)
        } else {
            self.pick_among(untried, now)
        }
    }

    /// Whether an available endpoint not in `tried` is left at `now` (cooling down or not).
    #[must_use]
    pub fn offers_untried(&self, tried: &[usize], now: Instant) -> bool {
        (0..self.stats.len()).any(|i| !tried.contains(&i) && self.stats[i].is_available(now))
    }

    fn pick_among(&self, eligible: impl Fn(&usize) -> bool, now: Instant) -> Option<usize> {
        match self.strategy {
            Strategy::RoundRobin | Strategy::Weighted => {
                let len = self.schedule.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let own = self.schedule[start % len];
                if eligible(&own) {
                    return Some(own);
                }
                // The turn of an endpoint that is out goes to a random other slot, so its share
                // spreads over the rest by weight instead of landing on its neighbour.
                (0..SKIP_DRAWS)
                    .map(|_| self.schedule[(self.next_random() % len as u64) as usize])
                    .find(|i| eligible(i))
                    .or_else(|| self.schedule.iter().copied().find(|i| eligible(i)))
            }
            Strategy::LeastOutstanding => self.two_choices(eligible, |s| s.inflight() as f64),
            Strategy::PeakEwma => self.two_choices(eligible, |s| {
                s.latency_ns(now) * (s.inflight() as f64 + 1.0)
            }),
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

/// Random draws for a round-robin turn whose endpoint is out, before a plain scan.
const SKIP_DRAWS: usize = 16;

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
        assert!(b.offers_untried(&[0, 1], t0));
        assert!(!b.offers_untried(&[0, 1, 2], t0), "none left untried");
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
        // Left alone while the other keeps answering, the slow one's estimate decays: within
        // seconds it is tried again.
        let later = t0 + Duration::from_secs(15);
        s[1].observe(Duration::from_millis(5), later);
        assert!(s[0].latency_ns(later) < s[1].latency_ns(later));
        assert!((0..20).any(|_| b.pick(&[], later) == Some(0)));
        // A fast answer then keeps it below the other's.
        s[0].observe(Duration::from_millis(1), later);
        assert!(s[0].latency_ns(later) < s[1].latency_ns(later));
    }

    #[test]
    fn an_endpoint_out_spreads_its_turns_over_the_others() {
        let t0 = Instant::now();
        let s = stats(3, t0);
        let b = Balancer::new(Strategy::RoundRobin, &[1, 1, 1], s.clone());
        s[2].eject_until(t0 + Duration::from_secs(5));
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[b.pick(&[], t0).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        let share = counts[0] as f64 / 3000.0;
        assert!((0.45..0.55).contains(&share), "even split, got {counts:?}");
    }

    #[test]
    fn unhealthy_and_ejected_endpoints_are_skipped_and_none_when_all_are_out() {
        let t0 = Instant::now();
        let s = stats(3, t0);
        let b = Balancer::new(Strategy::RoundRobin, &[1, 1, 1], s.clone());
        s[0].record_probe(false, 1, 1);
        s[1].eject_until(t0 + Duration::from_secs(5));
        assert!((0..6).all(|_| b.pick(&[], t0) == Some(2)));
        assert_eq!(b.pick(&[2], t0), Some(2), "the only one left, tried or not");
        s[2].eject_until(t0 + Duration::from_secs(5));
        assert_eq!(b.pick(&[], t0), None, "every endpoint is out");
        assert!(
            b.pick(&[], t0 + Duration::from_secs(5)).is_some(),
            "back in"
        );
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
