//! The limit phases: request rates before the cache lookup, token reservations after a miss,
//! settlement with the real usage when the response ended. Buckets are local engines or, for
//! `shared: true`, Redis scripts with the local bucket (limit / instances) as the fallback;
//! the engines live in `sluice_plugins::limits`, this is the adapter.

mod buckets;
mod budget;
mod headers;

use super::body::Body;
use super::identity::{bucket_key, Caller};
use super::stop::{Header, Stop};
use super::usage::UsageSink;
use crate::config::limits::LimitScope;
use crate::config::policy::LimitKey;
use buckets::Reservation;
pub use buckets::Reserved;
pub use budget::{release_budget, reserve_budget, settle_budget, BudgetHold};
use headers::{rate_headers, Kind};
use pingora::proxy::Session;
use sluice_plugins::limits::shared::SharedBuckets;
use sluice_plugins::limits::usage::{estimate_prompt_tokens, requested_completion_tokens};
use sluice_plugins::limits::{Decision, LimitState};
use sluice_plugins::metrics::Rejection;
use sluice_plugins::openai_error::GatewayError;
use std::time::{Duration, Instant};

/// Checks every request limit of the scope; the first that refuses answers 429. Returns the
/// `x-ratelimit-*` headers of the tightest request limit and of the local token budgets.
pub async fn admit_requests(
    shared: Option<&SharedBuckets>,
    scope: LimitScope<'_>,
    session: &Session,
    caller: Caller<'_>,
    body: &mut Body,
) -> Result<Vec<Header>, Stop> {
    let limits = scope.limits;
    let mut out = Vec::new();
    let mut tightest: Option<LimitState> = None;
    for limit in &limits.requests {
        let key = key_of(&limit.common.key, session, caller, body)?;
        let decision = buckets::check(shared, scope.name, limit, key).await;
        limit.common.metrics.decided(decision.is_allowed());
        tightest = headers::tighter(tightest, decision.state());
        if let Decision::Limited { state, retry_after } = decision {
            scope.metrics.reject(Rejection::RateLimit);
            return Err(refuse(
                &limit.common.name,
                Kind::Requests,
                state,
                retry_after,
            ));
        }
    }
    if let Some(state) = tightest {
        out.extend(rate_headers(Kind::Requests, state));
    }
    // Where the key stands in its token budgets, for an answer that reserves nothing (a cache
    // hit); a reservation replaces it. Shared budgets are not asked: a Redis round trip per
    // lookup would cost more than the header is worth.
    let now = Instant::now();
    let mut budgets: Option<LimitState> = None;
    for limit in limits.tokens.iter().filter(|l| !l.common.shared) {
        let key = key_of(&limit.common.key, session, caller, body)?;
        budgets = headers::tighter(budgets, limit.local.peek(key, now));
    }
    if let Some(state) = budgets {
        out.extend(rate_headers(Kind::Tokens, state));
    }
    Ok(out)
}

/// Reserves the request's estimated tokens in every token budget; 429 when one cannot take
/// them. Returns the reservations (none without a budget or a JSON body) and the token
/// headers, which replace the peek `admit_requests` made.
pub async fn reserve_tokens(
    shared: Option<&SharedBuckets>,
    scope: LimitScope<'_>,
    session: &Session,
    caller: Caller<'_>,
    body: &mut Body,
) -> Result<(Option<Reserved>, Vec<Header>), Stop> {
    let limits = scope.limits;
    if limits.tokens.is_empty() {
        return Ok((None, Vec::new()));
    }
    let Some(json) = body.json()? else {
        return Ok((None, Vec::new()));
    };
    let prompt = estimate_prompt_tokens(json);
    let completion = requested_completion_tokens(json);
    let mut reserved = Reserved {
        reservations: Vec::new(),
        prompt_estimate: prompt,
    };
    let mut tightest: Option<LimitState> = None;
    let now = Instant::now();
    for (index, limit) in limits.tokens.iter().enumerate() {
        let key = bucket_key(&limit.common.key, session, caller, Some(json));
        let want = prompt + completion.unwrap_or(limit.default_max_tokens);
        let reserved_now = buckets::reserve(shared, scope.name, limit, index, key, want, now).await;
        limit.common.metrics.decided(reserved_now.is_ok());
        match reserved_now {
            Ok((state, r)) => {
                tightest = headers::tighter(tightest, state);
                scope.metrics.reserved.inc_by(r.amount());
                reserved.reservations.push(r);
            }
            Err((state, retry_after)) => {
                scope.metrics.reject(Rejection::TokenBudget);
                buckets::release(shared, scope.name, limits, reserved).await;
                return Err(refuse(&limit.common.name, Kind::Tokens, state, retry_after));
            }
        }
    }
    let headers = tightest.map_or_else(Vec::new, |s| rate_headers(Kind::Tokens, s).into());
    Ok((Some(reserved), headers))
}

/// Settles the reservations with what the response cost: the upstream's usage, else the
/// prompt estimate plus the completion tokens counted as they streamed; nothing when no
/// upstream answered or it answered an error.
pub async fn settle(
    shared: Option<&SharedBuckets>,
    scope: LimitScope<'_>,
    reserved: Reserved,
    used: Option<&mut UsageSink>,
) {
    let charged = used.map_or(0, |u| u.charged(reserved.prompt_estimate));
    scope.metrics.charged.inc_by(charged);
    buckets::settle(shared, scope.name, scope.limits, reserved, charged).await;
}

/// Gives back what a request reserved but never used (it was refused or failed before the
/// upstream answered).
pub async fn release(shared: Option<&SharedBuckets>, scope: LimitScope<'_>, reserved: Reserved) {
    buckets::release(shared, scope.name, scope.limits, reserved).await;
}

/// Charges a cache answer's `tokens` to the budgets that count hits (hits are never refused).
pub async fn charge_hit(
    shared: Option<&SharedBuckets>,
    scope: LimitScope<'_>,
    session: &Session,
    caller: Caller<'_>,
    body: &mut Body,
    tokens: u64,
) {
    let limits = scope.limits;
    if tokens == 0 || !limits.tokens.iter().any(|l| l.charge_cache_hits) {
        return;
    }
    let Ok(json) = body.json() else {
        return;
    };
    let mut reserved = Reserved::default();
    for (index, limit) in limits.tokens.iter().enumerate() {
        if limit.charge_cache_hits {
            let key = bucket_key(&limit.common.key, session, caller, json);
            reserved.reservations.push(Reservation::charge_only(
                shared, scope.name, limit, index, key,
            ));
        }
    }
    scope.metrics.charged.inc_by(tokens);
    buckets::settle(shared, scope.name, limits, reserved, tokens).await;
}

/// The bucket a request draws from; the body is parsed only for a `body:user` key.
fn key_of(
    key: &LimitKey,
    session: &Session,
    caller: Caller<'_>,
    body: &mut Body,
) -> Result<u64, Stop> {
    let json = match key {
        LimitKey::BodyUser => body.json()?,
        _ => None,
    };
    Ok(bucket_key(key, session, caller, json))
}

/// The 429 a refusing limit answers, with where the limit stands.
fn refuse(limit: &str, kind: Kind, state: LimitState, retry_after: Duration) -> Stop {
    let what = match kind {
        Kind::Requests => "requests",
        Kind::Tokens => "tokens",
    };
    Stop::Respond {
        error: Box::new(GatewayError::rate_limited(limit, what, retry_after)),
        headers: rate_headers(kind, state).into(),
    }
}

#[cfg(test)]
mod tests;
