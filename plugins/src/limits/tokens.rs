//! Tokens per key: a GCRA over token counts that reserves before the upstream call and settles
//! on the real usage after it (governor cannot refund, so this bucket is ours). The math is the
//! same as the Redis script's, so a key's budget means the same in process and across replicas:
//!
//! - `T = rate.interval` (one token's refill time), `span = burst × T`;
//! - state per key: the TAT (theoretical arrival time), in nanoseconds since `origin`;
//! - a TAT at or before `now` is a full bucket, the same as an absent key.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Decision, LimitState, Rate};

/// Map shards: enough that concurrent requests rarely share a lock, few enough to sweep cheaply.
const SHARDS: usize = 16;

/// Keyed token budgets: each key holds up to `burst` tokens and gets one back every `interval`.
#[derive(Debug)]
pub struct TokenBucket {
    /// One token's refill time, in nanoseconds (at least 1).
    interval: u64,
    burst: u64,
    /// `burst × interval`: how far a TAT may run ahead of now.
    span: u64,
    origin: Instant,
    /// TAT by key, sharded by the key's low bits (keys are already hashes).
    shards: [Mutex<HashMap<u64, u64>>; SHARDS],
}

/// The answer to [`TokenBucket::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub decision: Decision,
    /// Tokens taken: the request clamped to the bucket's size when allowed, 0 when limited.
    /// Pass it to [`TokenBucket::settle`] once the real usage is known.
    pub reserved: u64,
}

impl TokenBucket {
    /// An empty set of budgets; every `now` passed later is measured from `origin`.
    #[must_use]
    pub fn new(rate: Rate, origin: Instant) -> TokenBucket {
        let interval = u64::try_from(rate.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        TokenBucket {
            interval,
            burst: rate.burst,
            span: rate.burst.saturating_mul(interval),
            origin,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Takes `tokens` from `key`'s bucket if they fit. A request larger than the whole bucket is
    /// clamped to it, so it can still pass when the bucket is full. Nothing is stored when limited.
    pub fn reserve(&self, key: u64, tokens: u64, now: Instant) -> Reservation {
        let tokens = tokens.min(self.burst);
        let now = self.nanos(now);
        let mut shard = self.shard(key);
        let tat = shard.get(&key).map_or(now, |&tat| tat.max(now));
        let new_tat = tat.saturating_add(tokens.saturating_mul(self.interval));
        let ahead = new_tat - now;
        if ahead > self.span {
            return Reservation {
                decision: Decision::Limited {
                    state: self.state(tat - now),
                    retry_after: Duration::from_nanos(ahead - self.span),
                },
                reserved: 0,
            };
        }
        shard.insert(key, new_tat);
        Reservation {
            decision: Decision::Allowed(self.state(ahead)),
            reserved: tokens,
        }
    }

    /// Corrects a reservation to what the request really cost: a refund when `charged` is below
    /// `reserved`, a debt when above. A debt may push the TAT past the span, so later
    /// reservations wait until it is paid off; it counts from `now` when the bucket is full.
    pub fn settle(&self, key: u64, reserved: u64, charged: u64, now: Instant) {
        let now = self.nanos(now);
        let mut shard = self.shard(key);
        if charged > reserved {
            let debt = (charged - reserved).saturating_mul(self.interval);
            let tat = shard.entry(key).or_insert(now);
            *tat = (*tat).max(now).saturating_add(debt);
        } else if let Some(tat) = shard.get_mut(&key) {
            // An absent key is a full bucket: nothing to refund into.
            *tat = tat.saturating_sub((reserved - charged).saturating_mul(self.interval));
        }
    }

    /// Where `key` stands, without spending (for `x-ratelimit-*` headers).
    pub fn peek(&self, key: u64, now: Instant) -> LimitState {
        let now = self.nanos(now);
        let tat = self.shard(key).get(&key).map_or(now, |&tat| tat.max(now));
        self.state(tat - now)
    }

    /// Drops keys whose bucket is full again (their TAT is not after `now`) and says how many
    /// keys remain and what the emptiest of them has left. Call it periodically, not per request.
    pub fn sweep(&self, now: Instant) -> Swept {
        let now = self.nanos(now);
        let (mut keys, mut furthest) = (0, now);
        for shard in &self.shards {
            let mut shard = lock(shard);
            shard.retain(|_, tat| *tat > now);
            shard.shrink_to_fit();
            keys += shard.len();
            furthest = shard.values().copied().fold(furthest, u64::max);
        }
        Swept {
            keys,
            lowest_remaining: self.state(furthest - now).remaining,
        }
    }

    /// Keys currently tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }

    /// Whether no key is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket's headers when its TAT is `ahead` nanoseconds after now.
    fn state(&self, ahead: u64) -> LimitState {
        LimitState {
            limit: self.burst,
            remaining: self.span.saturating_sub(ahead) / self.interval,
            reset: Duration::from_nanos(ahead),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, HashMap<u64, u64>> {
        lock(&self.shards[(key % SHARDS as u64) as usize])
    }
}

/// What a sweep found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Keys whose bucket is not full.
    pub keys: usize,
    /// Tokens the emptiest bucket may still take at once (the capacity when all are full).
    pub lowest_remaining: u64,
}

/// Locks, recovering from poison: every update is a single insert or assignment.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: Duration = Duration::from_secs(60);

    /// 1000 tokens a minute: one every 60 ms.
    fn per_minute(origin: Instant) -> TokenBucket {
        TokenBucket::new(Rate::per(1000, MINUTE, 1000).expect("a valid rate"), origin)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_tenth_reservation_of_110_is_limited() {
        let t0 = Instant::now();
        let bucket = per_minute(t0);
        for i in 1..=9u64 {
            let r = bucket.reserve(1, 110, t0);
            assert_eq!(r.reserved, 110);
            assert_eq!(
                r.decision,
                Decision::Allowed(LimitState {
                    limit: 1000,
                    remaining: 1000 - 110 * i,
                    reset: ms(6_600 * i),
                })
            );
            bucket.settle(1, r.reserved, 110, t0);
        }
        let tenth = bucket.reserve(1, 110, t0);
        assert_eq!(tenth.reserved, 0);
        assert_eq!(
            tenth.decision,
            Decision::Limited {
                state: LimitState {
                    limit: 1000,
                    remaining: 10,
                    reset: ms(59_400),
                },
                // 100 tokens short, 60 ms each.
                retry_after: ms(6_000),
            }
        );
        assert!(bucket.reserve(1, 110, t0 + ms(6_000)).decision.is_allowed());
    }

    #[test]
    fn a_refund_lets_the_next_reservation_pass() {
        let t0 = Instant::now();
        let bucket = per_minute(t0);
        for _ in 0..9 {
            assert_eq!(bucket.reserve(1, 110, t0).reserved, 110);
        }
        assert!(!bucket.reserve(1, 110, t0).decision.is_allowed());
        // One request used 10 of its 110: 100 tokens (6 s) come back.
        bucket.settle(1, 110, 10, t0);
        // Peeking twice spends nothing: the reservation below still ends exactly at the span.
        assert_eq!(bucket.peek(1, t0).remaining, 110);
        assert_eq!(bucket.peek(1, t0).remaining, 110);
        assert_eq!(
            bucket.reserve(1, 110, t0).decision,
            Decision::Allowed(LimitState {
                limit: 1000,
                remaining: 0,
                reset: MINUTE,
            })
        );
    }

    #[test]
    fn debt_makes_later_reservations_wait() {
        let t0 = Instant::now();
        let bucket = per_minute(t0);
        assert_eq!(bucket.reserve(1, 100, t0).reserved, 100);
        // Reserved 100, used 1500: the TAT is 1500 tokens (90 s) ahead, 30 s past the span.
        bucket.settle(1, 100, 1_500, t0);
        assert_eq!(
            bucket.peek(1, t0),
            LimitState {
                limit: 1000,
                remaining: 0,
                reset: ms(90_000),
            }
        );
        let limited = bucket.reserve(1, 1, t0);
        assert_eq!(
            limited.decision,
            Decision::Limited {
                state: bucket.peek(1, t0),
                retry_after: ms(30_060),
            }
        );
        assert!(bucket.reserve(1, 1, t0 + ms(30_060)).decision.is_allowed());
        // A debt on an absent (full) key counts from now.
        bucket.settle(2, 0, 400, t0 + MINUTE);
        assert_eq!(bucket.peek(2, t0 + MINUTE).remaining, 600);
        // So does a debt on a stored but full bucket: the idle minute is not credit.
        assert_eq!(bucket.reserve(4, 10, t0).reserved, 10);
        bucket.settle(4, 10, 110, t0 + MINUTE);
        assert_eq!(bucket.peek(4, t0 + MINUTE).remaining, 900);
        // A refund on an absent key has nothing to return into.
        bucket.settle(3, 400, 0, t0);
        assert_eq!(bucket.len(), 3);
    }

    #[test]
    fn a_request_larger_than_the_bucket_is_clamped_to_it() {
        let t0 = Instant::now();
        let bucket = per_minute(t0);
        let r = bucket.reserve(1, 5_000, t0);
        assert_eq!(r.reserved, 1000);
        assert_eq!(
            r.decision,
            Decision::Allowed(LimitState {
                limit: 1000,
                remaining: 0,
                reset: MINUTE,
            })
        );
        assert_eq!(
            bucket.reserve(1, 1, t0).decision,
            Decision::Limited {
                state: LimitState {
                    limit: 1000,
                    remaining: 0,
                    reset: MINUTE,
                },
                retry_after: ms(60),
            }
        );
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_bucket() {
        let t0 = Instant::now();
        let bucket = per_minute(t0);
        let admitted: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..20)
                .map(|_| scope.spawn(|| bucket.reserve(1, 110, t0).reserved))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("no panic"))
                .collect()
        });
        assert_eq!(admitted.iter().filter(|&&r| r > 0).count(), 9);
        assert_eq!(admitted.iter().sum::<u64>(), 990);
    }

    #[test]
    fn sweep_drops_full_buckets() {
        let t0 = Instant::now();
        let bucket = per_minute(t0);
        for key in 0..100 {
            assert!(bucket.reserve(key, 10, t0).decision.is_allowed());
        }
        assert!(bucket.reserve(1_000, 500, t0).decision.is_allowed());
        assert_eq!(bucket.len(), 101);
        // 10 tokens refill in 600 ms, 500 in 30 s; a TAT exactly at now is a full bucket.
        assert_eq!(bucket.sweep(t0 + ms(599)).keys, 101);
        let swept = bucket.sweep(t0 + ms(600));
        assert_eq!(swept.keys, 1);
        // The emptiest key spent 500 of 1000 and got 10 back.
        assert_eq!(swept.lowest_remaining, 510);
        assert_eq!(bucket.peek(1_000, t0 + ms(600)).remaining, 510);
        let swept = bucket.sweep(t0 + ms(30_000));
        assert_eq!((swept.keys, swept.lowest_remaining), (0, 1000));
        assert!(bucket.is_empty());
        // An unseen key peeks as a full bucket and is not stored.
        assert_eq!(bucket.peek(5, t0).remaining, 1000);
        assert!(bucket.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u64),
        /// Settle the outstanding reservation picked by the index (modulo) at this charge.
        Settle(usize, u64),
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..80u64).prop_map(Op::Reserve),
            (any::<usize>(), 0..100u64).prop_map(|(pick, charged)| Op::Settle(pick, charged)),
            Just(Op::Sweep),
        ]
    }

    proptest! {
        /// Tokens taken in any window (reservations admitted, plus debts, minus refunds, up to
        /// an admitted reservation) never exceed `burst + W / T`: each step moves the TAT by at
        /// least its amount, and an admitted reservation leaves it at most a span ahead.
        #[test]
        fn tokens_in_any_window_stay_within_burst_plus_refill(
            steps in prop::collection::vec((0..40u64, op()), 1..120)
        ) {
            // 100 tokens a second, holding 50: one every 10 ms.
            let (interval_ms, burst) = (10u64, 50i128);
            let t0 = Instant::now();
            let bucket = TokenBucket::new(
                Rate::per(100, Duration::from_secs(1), 50).expect("a valid rate"),
                t0,
            );
            let mut elapsed_ms = 0;
            let mut outstanding: Vec<u64> = Vec::new();
            // (time in ms, tokens taken, whether an admitted reservation)
            let mut events: Vec<(u64, i128, bool)> = Vec::new();
            for (advance_ms, op) in steps {
                elapsed_ms += advance_ms;
                let now = t0 + ms(elapsed_ms);
                match op {
                    Op::Reserve(tokens) => {
                        let r = bucket.reserve(7, tokens, now);
                        let admitted = r.decision.is_allowed();
                        prop_assert_eq!(r.reserved, if admitted { tokens.min(50) } else { 0 });
                        if admitted {
                            outstanding.push(r.reserved);
                            events.push((elapsed_ms, i128::from(r.reserved), true));
                        }
                    }
                    Op::Settle(pick, charged) if !outstanding.is_empty() => {
                        let reserved = outstanding.swap_remove(pick % outstanding.len());
                        bucket.settle(7, reserved, charged, now);
                        let delta = i128::from(charged) - i128::from(reserved);
                        events.push((elapsed_ms, delta, false));
                    }
                    Op::Settle(..) => {}
                    Op::Sweep => {
                        bucket.sweep(now);
                    }
                }
            }
            for (i, &(start, _, _)) in events.iter().enumerate() {
                let mut taken = 0;
                for &(end, tokens, admitted) in &events[i..] {
                    taken += tokens;
                    if admitted {
                        let refill = i128::from((end - start) / interval_ms);
                        prop_assert!(taken <= burst + refill, "{taken} tokens in {start}..={end} ms");
                    }
                }
            }
        }
    }
}
