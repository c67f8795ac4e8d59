//! Requests per key: governor's keyed GCRA. One bucket per client (a `u64` hash of its identity,
//! computed by the caller), all with the same [`Rate`]; idle buckets are swept so a flood of
//! distinct keys cannot grow memory without bound.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Decision, LimitState, Rate};

/// A keyed request limiter: each key may send `rate.burst` requests at once and gets one back
/// every `rate.interval`. Generic over the clock so tests can drive time by hand.
#[derive(Debug)]
pub struct RequestRate<C: Clock = DefaultClock> {
    limiter: RateLimiter<u64, DashMapStateStore<u64>, C, StateInformationMiddleware>,
    rate: Rate,
}

impl RequestRate {
    /// A limiter on the monotonic default clock.
    #[must_use]
    pub fn new(rate: Rate) -> RequestRate {
        RequestRate::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock> RequestRate<C> {
    /// A limiter on `clock`. A zero interval or burst (which [`Rate::per`] never builds) is
    /// raised to the smallest governor accepts rather than panicking.
    pub fn with_clock(rate: Rate, clock: C) -> RequestRate<C> {
        let interval = rate.interval.max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(u32::try_from(rate.burst).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        // `interval` is non-zero, so the fallback never applies; it keeps `new` infallible.
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        RequestRate {
            limiter: RateLimiter::new(quota, DashMapStateStore::default(), clock),
            rate: Rate {
                interval,
                burst: u64::from(burst.get()),
            },
        }
    }

    /// Spends one request from `key`'s bucket, or says how long until it could.
    pub fn check(&self, key: u64) -> Decision {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                Decision::Allowed(LimitState {
                    limit: self.rate.burst,
                    remaining,
                    // Governor hides the exact TAT; this rounds up to the next whole request.
                    reset: self.intervals(self.rate.burst.saturating_sub(remaining)),
                })
            }
            Err(not_until) => {
                // The clock is read again here, after the check: never tell a client "now".
                let retry_after = not_until
                    .wait_time_from(self.limiter.clock().now())
                    .max(Duration::from_millis(1));
                Decision::Limited {
                    state: LimitState {
                        limit: self.rate.burst,
                        remaining: 0,
                        // Once one request fits, the other `burst - 1` refill behind it.
                        reset: retry_after
                            .saturating_add(self.intervals(self.rate.burst.saturating_sub(1))),
                    },
                    retry_after,
                }
            }
        }
    }

    /// Evicts keys whose bucket is full again (indistinguishable from a new key) and gives the
    /// map's memory back. Call it periodically, not per request.
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// `count` refill intervals.
    fn intervals(&self, count: u64) -> Duration {
        self.rate
            .interval
            .saturating_mul(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const SECOND: Duration = Duration::from_secs(1);

    fn ten_per_second(clock: &FakeRelativeClock) -> RequestRate<FakeRelativeClock> {
        let rate = Rate::per(10, SECOND, 10).expect("a valid rate");
        RequestRate::with_clock(rate, clock.clone())
    }

    fn allowed(decision: Decision) -> LimitState {
        match decision {
            Decision::Allowed(state) => state,
            Decision::Limited { .. } => panic!("expected Allowed, got {decision:?}"),
        }
    }

    #[test]
    fn burst_then_limited_with_exact_retry_after() {
        let clock = FakeRelativeClock::default();
        let limiter = ten_per_second(&clock);
        for i in 1..=10u64 {
            let state = allowed(limiter.check(7));
            assert_eq!(state.limit, 10);
            assert_eq!(state.remaining, 10 - i);
            assert_eq!(state.reset, Duration::from_millis(100 * i));
        }
        // 10 ms after the burst the first token is 90 ms away.
        clock.advance(Duration::from_millis(10));
        assert_eq!(
            limiter.check(7),
            Decision::Limited {
                state: LimitState {
                    limit: 10,
                    remaining: 0,
                    reset: Duration::from_millis(990),
                },
                retry_after: Duration::from_millis(90),
            }
        );
    }

    #[test]
    fn refills_after_the_clock_advances() {
        let clock = FakeRelativeClock::default();
        let limiter = ten_per_second(&clock);
        for _ in 0..10 {
            assert!(limiter.check(1).is_allowed());
        }
        assert!(!limiter.check(1).is_allowed());
        clock.advance(Duration::from_millis(300));
        for _ in 0..3 {
            assert!(limiter.check(1).is_allowed());
        }
        assert!(!limiter.check(1).is_allowed());
        clock.advance(SECOND);
        assert_eq!(allowed(limiter.check(1)).remaining, 9);
    }

    #[test]
    fn keys_are_independent() {
        let clock = FakeRelativeClock::default();
        let limiter = ten_per_second(&clock);
        for _ in 0..10 {
            assert!(limiter.check(1).is_allowed());
        }
        assert!(!limiter.check(1).is_allowed());
        assert_eq!(allowed(limiter.check(2)).remaining, 9);
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn sweep_drops_idle_keys_and_keeps_busy_ones() {
        let clock = FakeRelativeClock::default();
        let limiter = ten_per_second(&clock);
        for key in 0..100 {
            assert!(limiter.check(key).is_allowed());
        }
        for _ in 0..9 {
            assert!(limiter.check(1_000).is_allowed());
        }
        assert_eq!(limiter.len(), 101);
        // One request refills in 100 ms; ten take a second.
        clock.advance(Duration::from_millis(500));
        limiter.sweep();
        assert_eq!(limiter.len(), 1);
        assert_eq!(allowed(limiter.check(1_000)).remaining, 5);
        clock.advance(Duration::from_secs(2));
        limiter.sweep();
        assert!(limiter.is_empty());
    }

    #[test]
    fn ten_per_second_under_forty_per_second_for_five_seconds_admits_59() {
        let clock = FakeRelativeClock::default();
        let limiter = ten_per_second(&clock);
        let mut admitted = 0;
        for _ in 0..200 {
            if limiter.check(3).is_allowed() {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(25));
        }
        // The burst of 10, then one per 100 ms over the 4.975 s until the last request.
        assert_eq!(admitted, 10 + 49);
    }
}
