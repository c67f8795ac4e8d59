//! A retry budget per upstream: retries may add at most `ratio` of the requests seen over a
//! sliding window, plus a small floor per second so a quiet upstream can still retry. A
//! failing upstream then gets at most (1 + ratio) × its requests, not (1 + attempts) ×, and
//! cannot be buried by its own retries. Time is an argument; the window moves in whole seconds.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The shape of a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetShape {
    /// Retries allowed per request seen in the window (0.2 = 20%).
    pub ratio: f64,
    /// Retries allowed per second of window whatever the traffic.
    pub min_per_second: u32,
    /// How far back requests and retries count.
    pub window: Duration,
}

/// Requests and retries per second, over the window.
pub struct RetryBudget {
    shape: BudgetShape,
    origin: Instant,
    seconds: Mutex<Window>,
}

struct Window {
    /// (requests, retries) per second, indexed by second modulo its length.
    slots: Vec<(u64, u64)>,
    /// The last second written (since `origin`).
    head: u64,
}

impl RetryBudget {
    /// An empty budget; every `now` later is measured from `origin`.
    #[must_use]
    pub fn new(shape: BudgetShape, origin: Instant) -> RetryBudget {
        let secs = usize::try_from(shape.window.as_secs().max(1)).unwrap_or(usize::MAX);
        RetryBudget {
            shape,
            origin,
            seconds: Mutex::new(Window {
                slots: vec![(0, 0); secs.min(3600)],
                head: 0,
            }),
        }
    }

    /// Counts one request (its first try).
    pub fn record_request(&self, now: Instant) {
        self.with_window(now, |slot, _| slot.0 += 1);
    }

    /// Spends one retry if the budget allows it.
    pub fn try_retry(&self, now: Instant) -> bool {
        self.with_window(now, |slot, allowed| {
            if allowed {
                slot.1 += 1;
            }
            allowed
        })
    }

    /// Moves the window to `now`, then runs `f` on the current second's slot and whether a
    /// retry fits in the budget.
    fn with_window<T>(&self, now: Instant, f: impl FnOnce(&mut (u64, u64), bool) -> T) -> T {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let mut w = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        let len = w.slots.len() as u64;
        // Clear the seconds that slid out since the last write (at most the whole window).
        let stale = second.saturating_sub(w.head).min(len);
        for s in 1..=stale {
            let i = ((w.head + s) % len) as usize;
            w.slots[i] = (0, 0);
        }
        w.head = w.head.max(second);
        let (requests, retries) = w
            .slots
            .iter()
            .fold((0u64, 0u64), |(a, b), (r, t)| (a + r, b + t));
        let floor = f64::from(self.shape.min_per_second) * len as f64;
        let allowed = (retries as f64) < floor + self.shape.ratio * requests as f64;
        let i = (second % len) as usize;
        f(&mut w.slots[i], allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32, window_secs: u64) -> (RetryBudget, Instant) {
        let origin = Instant::now();
        let shape = BudgetShape {
            ratio,
            min_per_second,
            window: Duration::from_secs(window_secs),
        };
        (RetryBudget::new(shape, origin), origin)
    }

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let (b, t0) = budget(0.2, 1, 10);
        for _ in 0..100 {
            b.record_request(t0);
        }
        // 20% of 100 plus 1/s over 10 s.
        let granted = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 30);
        assert!(!b.try_retry(t0));
    }

    #[test]
    fn a_failing_upstream_gets_at_most_one_plus_ratio_times_its_requests() {
        let (b, t0) = budget(0.2, 0, 10);
        let mut sent = 0u64;
        // Every request fails and wants two retries, for a minute, 50 requests a second.
        for ms in (0..60_000u64).step_by(20) {
            let now = t0 + Duration::from_millis(ms);
            b.record_request(now);
            sent += 1;
            for _ in 0..2 {
                if b.try_retry(now) {
                    sent += 1;
                }
            }
        }
        let requests = 3000.0;
        assert!(sent as f64 <= requests * 1.2 + 1.0, "sent {sent}");
        assert!(sent as f64 >= requests * 1.19, "the budget is used: {sent}");
    }

    #[test]
    fn the_window_slides_and_the_floor_lets_a_quiet_upstream_retry() {
        let (b, t0) = budget(0.0, 2, 5);
        assert_eq!((0..20).filter(|_| b.try_retry(t0)).count(), 10);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            (0..20).filter(|_| b.try_retry(later)).count(),
            10,
            "the spent retries slid out of the window"
        );
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| b.try_retry(much_later)).count(), 10);
    }
}
