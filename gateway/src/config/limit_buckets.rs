//! The local limit buckets of every policy generation, by route and limit name. A reload that
//! keeps a limit's shape keeps its bucket (every client's standing in it); a new shape starts
//! afresh; a limit no policy uses any more is forgotten by the next sweep.

use prometheus::IntGauge;
use sluice_plugins::limits::rate::RequestRate;
use sluice_plugins::limits::tokens::TokenBucket;
use sluice_plugins::limits::Rate;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

type Registry<E, G> = Mutex<HashMap<(String, String), (Rate, Arc<E>, G)>>;

/// A token limit's gauges: keys tracked, and what its emptiest bucket has left.
#[derive(Clone)]
pub struct TokenGauges {
    pub keys: IntGauge,
    /// `None` for a key's dollar budget (its own gauge is in dollars, set at scrape).
    pub remaining: Option<IntGauge>,
}

/// Every local bucket, by route and limit name; a reload that changes a limit's shape starts
/// it afresh, one that keeps it keeps its state.
pub struct LimitBuckets {
    requests: Registry<RequestRate, IntGauge>,
    tokens: Registry<TokenBucket, TokenGauges>,
    /// The token buckets' time origin.
    origin: Instant,
}

impl Default for LimitBuckets {
    fn default() -> Self {
        LimitBuckets {
            requests: Mutex::default(),
            tokens: Mutex::default(),
            origin: Instant::now(),
        }
    }
}

impl LimitBuckets {
    pub(super) fn requests(
        &self,
        id: (String, String),
        rate: Rate,
        keys: IntGauge,
    ) -> Arc<RequestRate> {
        reuse(&self.requests, id, rate, keys, || RequestRate::new(rate))
    }

    pub(super) fn tokens(
        &self,
        id: (String, String),
        rate: Rate,
        gauges: TokenGauges,
    ) -> Arc<TokenBucket> {
        reuse(&self.tokens, id, rate, gauges, || {
            TokenBucket::new(rate, self.origin)
        })
    }

    /// Evicts full buckets (idle keys), forgets limits no policy uses, and updates the key and
    /// remaining-budget gauges.
    pub fn sweep(&self, now: Instant) {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        requests.retain(|_, (_, bucket, _)| Arc::strong_count(bucket) > 1);
        for (_, bucket, keys) in requests.values() {
            bucket.sweep();
            keys.set(i64::try_from(bucket.len()).unwrap_or(i64::MAX));
        }
        drop(requests);
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, (_, bucket, _)| Arc::strong_count(bucket) > 1);
        for (_, bucket, gauges) in tokens.values() {
            let swept = bucket.sweep(now);
            gauges
                .keys
                .set(i64::try_from(swept.keys).unwrap_or(i64::MAX));
            if let Some(remaining) = &gauges.remaining {
                remaining.set(i64::try_from(swept.lowest_remaining).unwrap_or(i64::MAX));
            }
        }
    }
}

fn reuse<E, G>(
    registry: &Registry<E, G>,
    id: (String, String),
    rate: Rate,
    gauges: G,
    make: impl FnOnce() -> E,
) -> Arc<E> {
    let mut map = registry.lock().unwrap_or_else(PoisonError::into_inner);
    match map.get(&id) {
        Some((shape, bucket, _)) if *shape == rate => Arc::clone(bucket),
        _ => {
            let bucket = Arc::new(make());
            map.insert(id, (rate, Arc::clone(&bucket), gauges));
            bucket
        }
    }
}
