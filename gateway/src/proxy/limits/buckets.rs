//! Where a limit's decision is made: the Redis bucket for a shared limit while Redis answers,
//! else the local bucket (for a shared limit: limit / instances, counted as a fallback).

use crate::config::limits::LimitCommon;
use crate::config::policy::{RequestLimit, RouteLimits, TokenLimit};
use sluice_plugins::limits::shared::SharedBuckets;
use sluice_plugins::limits::{Decision, LimitState};
use std::time::{Duration, Instant};

/// Token reservations of one request, settled when its response ended.
#[derive(Debug, Default)]
pub struct Reserved {
    pub(super) reservations: Vec<Reservation>,
    /// The prompt's estimate, charged for a stream cut short without usage.
    pub(super) prompt_estimate: u64,
}

/// Where a reservation was made, so it is settled in the same bucket.
#[derive(Debug)]
enum Place {
    Local,
    Shared(String),
}

/// Tokens held in one budget for one request.
#[derive(Debug)]
pub struct Reservation {
    /// Index into the route's token limits.
    limit: usize,
    key: u64,
    amount: u64,
    place: Place,
}

impl Reservation {
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// A reservation of nothing, to charge a cost after the fact (a cache hit's tokens).
    pub fn charge_only(
        shared: Option<&SharedBuckets>,
        route: &str,
        limit: &TokenLimit,
        index: usize,
        key: u64,
    ) -> Reservation {
        let place = match redis_for(shared, limit.common.shared) {
            Some(s) => Place::Shared(s.bucket(route, &limit.common.name, key)),
            None => Place::Local,
        };
        Reservation {
            limit: index,
            key,
            amount: 0,
            place,
        }
    }
}

fn redis_for(shared: Option<&SharedBuckets>, wanted: bool) -> Option<&SharedBuckets> {
    shared.filter(|s| wanted && s.is_up())
}

/// The Redis answer for `n` units of a shared limit's bucket, with the bucket's name; `None`
/// (counted as a fallback) when the limit is shared but Redis does not answer, and when it is
/// not shared at all: the local bucket decides then.
async fn from_redis(
    shared: Option<&SharedBuckets>,
    route: &str,
    c: &LimitCommon,
    key: u64,
    n: u64,
) -> Option<((Decision, u64), String)> {
    if !c.shared {
        return None;
    }
    if let Some(s) = redis_for(shared, true) {
        let bucket = s.bucket(route, &c.name, key);
        if let Ok(answer) = s.reserve(&bucket, n, c.rate).await {
            return Some((answer, bucket));
        }
    }
    c.metrics.fallback.inc();
    None
}

/// One request against a request limit.
pub async fn check(
    shared: Option<&SharedBuckets>,
    route: &str,
    limit: &RequestLimit,
    key: u64,
) -> Decision {
    match from_redis(shared, route, &limit.common, key, 1).await {
        Some(((decision, _), _)) => decision,
        None => limit.local.check(key),
    }
}

/// Reserves `want` tokens: the state for the headers and the reservation, or the state and
/// when to retry.
pub async fn reserve(
    shared: Option<&SharedBuckets>,
    route: &str,
    limit: &TokenLimit,
    index: usize,
    key: u64,
    want: u64,
    now: Instant,
) -> Result<(LimitState, Reservation), (LimitState, Duration)> {
    let ((decision, amount), place) =
        match from_redis(shared, route, &limit.common, key, want).await {
            Some((answer, bucket)) => (answer, Place::Shared(bucket)),
            None => {
                let local = limit.local.reserve(key, want, now);
                ((local.decision, local.reserved), Place::Local)
            }
        };
    match decision {
        Decision::Allowed(state) => Ok((
            state,
            Reservation {
                limit: index,
                key,
                amount,
                place,
            },
        )),
        Decision::Limited { state, retry_after } => Err((state, retry_after)),
    }
}

/// Settles every reservation at `charged` tokens.
pub async fn settle(
    shared: Option<&SharedBuckets>,
    route: &str,
    limits: &RouteLimits,
    reserved: Reserved,
    charged: u64,
) {
    let now = Instant::now();
    for r in reserved.reservations {
        let Some(limit) = limits.tokens.get(r.limit) else {
            continue;
        };
        match r.place {
            Place::Local => limit.local.settle(r.key, r.amount, charged, now),
            Place::Shared(bucket) => {
                let delta = i64::try_from(charged).unwrap_or(i64::MAX)
                    - i64::try_from(r.amount).unwrap_or(i64::MAX);
                if let Some(s) = shared {
                    if delta != 0 && s.settle(&bucket, delta, limit.common.rate).await.is_err() {
                        tracing::debug!(route, limit = %limit.common.name, "token settlement lost: redis unreachable");
                    }
                }
            }
        }
    }
}

/// Gives every reservation back.
pub async fn release(
    shared: Option<&SharedBuckets>,
    route: &str,
    limits: &RouteLimits,
    reserved: Reserved,
) {
    settle(shared, route, limits, reserved, 0).await;
}
