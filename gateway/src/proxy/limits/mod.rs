//! The limit phases: request rates before the cache lookup, token reservations after a miss,
//! settlement with the real usage when the response ended. Buckets are local engines or, for
//! `shared: true`, Redis scripts with the local bucket (limit / instances) as the fallback;
//! the engines live in `sluice_plugins::limits`, this is the adapter.

mod buckets;
mod headers;
mod usage;

use super::ctx::RequestCtx;
use super::identity::bucket_key;
use super::phases::Flow;
use super::respond::ForwardError;
use super::Gateway;
use crate::config::policy::{LimitKey, Route};
use buckets::Reservation;
use headers::{rate_headers, Kind};
use pingora::proxy::Session;
use sluice_plugins::limits::usage::{
    ensure_include_usage, estimate_prompt_tokens, requested_completion_tokens,
};
use sluice_plugins::limits::{Decision, LimitState};
use sluice_plugins::metrics::Rejection;
use sluice_plugins::openai_error::GatewayError;
use std::time::Instant;
pub use usage::{StripUsage, UsageSink};

/// Token reservations of one request, settled when its response ended.
#[derive(Default)]
pub struct Reserved {
    reservations: Vec<Reservation>,
    /// The prompt's estimate, charged for a stream cut short without usage.
    prompt_estimate: u64,
}

/// Checks every request limit of the route; the first that refuses answers 429.
pub async fn admit_requests(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<Flow, ForwardError> {
    let Some(limits) = &route.limits else {
        return Ok(Flow::Next);
    };
    let mut tightest: Option<LimitState> = None;
    for limit in &limits.requests {
        let key = key_of(&limit.common.key, session, ctx)?;
        let decision = buckets::check(gw.shared_limits(), &route.name, limit, key).await;
        limit.common.metrics.decided(decision.is_allowed());
        tightest = headers::tighter(tightest, decision.state());
        if let Decision::Limited { state, retry_after } = decision {
            route.limit_metrics.reject(Rejection::RateLimit);
            ctx.response_headers
                .extend(rate_headers(Kind::Requests, state));
            return Err(refuse(&limit.common.name, Kind::Requests, retry_after));
        }
    }
    if let Some(state) = tightest {
        ctx.response_headers
            .extend(rate_headers(Kind::Requests, state));
    }
    // Where the key stands in its token budgets, for an answer that reserves nothing (a cache
    // hit); a reservation replaces it. Shared budgets are not asked: a Redis round trip per
    // lookup would cost more than the header is worth.
    let now = Instant::now();
    let mut budgets: Option<LimitState> = None;
    for limit in limits.tokens.iter().filter(|l| !l.common.shared) {
        let key = key_of(&limit.common.key, session, ctx)?;
        budgets = headers::tighter(budgets, limit.local.peek(key, now));
    }
    if let Some(state) = budgets {
        ctx.response_headers
            .extend(rate_headers(Kind::Tokens, state));
    }
    Ok(Flow::Next)
}

/// Reserves the request's estimated tokens in every token budget; 429 when one cannot take
/// them. (A token-limited route meters usage, so the usage phase asks a stream for it.)
pub async fn admit_tokens(
    gw: &Gateway,
    session: &Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<Flow, ForwardError> {
    let Some(limits) = route.limits.as_ref().filter(|l| !l.tokens.is_empty()) else {
        return Ok(Flow::Next);
    };
    let Some(body) = ctx.json()? else {
        return Ok(Flow::Next);
    };
    let prompt = estimate_prompt_tokens(body);
    let completion = requested_completion_tokens(body);
    let mut reserved = Reserved {
        reservations: Vec::new(),
        prompt_estimate: prompt,
    };
    let mut tightest: Option<LimitState> = None;
    let mut refused = None;
    let now = Instant::now();
    for (index, limit) in limits.tokens.iter().enumerate() {
        let key = bucket_key(&limit.common.key, session, Some(body));
        let want = prompt + completion.unwrap_or(limit.default_max_tokens);
        let reserved_now = buckets::reserve(
            gw.shared_limits(),
            &route.name,
            limit,
            index,
            key,
            want,
            now,
        )
        .await;
        limit.common.metrics.decided(reserved_now.is_ok());
        match reserved_now {
            Ok((state, r)) => {
                tightest = headers::tighter(tightest, state);
                route.limit_metrics.reserved.inc_by(r.amount());
                reserved.reservations.push(r);
            }
            Err((state, retry_after)) => {
                tightest = Some(state);
                refused = Some((&limit.common.name, retry_after));
                break;
            }
        }
    }
    // The reservations' answer replaces the peek `admit_requests` put in the headers.
    ctx.response_headers
        .retain(|(name, _)| !headers::is_tokens(name));
    if let Some(state) = tightest {
        ctx.response_headers
            .extend(rate_headers(Kind::Tokens, state));
    }
    if let Some((limit, retry_after)) = refused {
        route.limit_metrics.reject(Rejection::TokenBudget);
        buckets::release(gw.shared_limits(), &route.name, limits, reserved).await;
        return Err(refuse(limit, Kind::Tokens, retry_after));
    }
    ctx.reserved = Some(reserved);
    Ok(Flow::Next)
}

/// Settles the reservations with what the response cost: the upstream's usage, else the
/// prompt estimate plus the completion tokens counted as they streamed; nothing when no
/// upstream answered or it answered an error.
pub async fn settle(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    route: &Route,
    used: Option<&mut UsageSink>,
) {
    let Some(reserved) = ctx.reserved.take() else {
        return;
    };
    let Some(limits) = &route.limits else {
        return;
    };
    let charged = used.map_or(0, |u| u.charged(reserved.prompt_estimate));
    route.limit_metrics.charged.inc_by(charged);
    buckets::settle(gw.shared_limits(), &route.name, limits, reserved, charged).await;
}

/// Charges a cache answer's tokens to the budgets that count hits (hits are never refused).
pub async fn charge_hit(gw: &Gateway, session: &Session, ctx: &mut RequestCtx, route: &Route) {
    let Some(limits) = &route.limits else {
        return;
    };
    if ctx.hit_tokens == 0 || !limits.tokens.iter().any(|l| l.charge_cache_hits) {
        return;
    }
    let Ok(body) = ctx.json() else {
        return;
    };
    let mut reserved = Reserved::default();
    for (index, limit) in limits.tokens.iter().enumerate() {
        if limit.charge_cache_hits {
            let key = bucket_key(&limit.common.key, session, body);
            reserved.reservations.push(Reservation::charge_only(
                gw.shared_limits(),
                &route.name,
                limit,
                index,
                key,
            ));
        }
    }
    route.limit_metrics.charged.inc_by(ctx.hit_tokens);
    buckets::settle(
        gw.shared_limits(),
        &route.name,
        limits,
        reserved,
        ctx.hit_tokens,
    )
    .await;
}

/// Gives back what a request reserved but never used (it was refused or failed before the
/// upstream answered).
pub async fn release_unsettled(gw: &Gateway, ctx: &mut RequestCtx) {
    let Some(reserved) = ctx.reserved.take() else {
        return;
    };
    let Some(route) = ctx.route() else {
        return;
    };
    if let Some(limits) = &route.limits {
        buckets::release(gw.shared_limits(), &route.name, limits, reserved).await;
    }
}

/// The bucket a request draws from; the body is parsed only for a `body:user` key.
fn key_of(key: &LimitKey, session: &Session, ctx: &mut RequestCtx) -> Result<u64, ForwardError> {
    let body = match key {
        LimitKey::BodyUser => ctx.json()?,
        _ => None,
    };
    Ok(bucket_key(key, session, body))
}

/// A stream is asked for its usage chunk; when the client did not ask, the chunk is stripped
/// from what it sees.
pub fn ask_for_usage(ctx: &mut RequestCtx) -> Result<(), ForwardError> {
    if ctx.rewrite_json(ensure_include_usage)? {
        ctx.strip_usage = true;
    }
    Ok(())
}

fn refuse(limit: &str, kind: Kind, retry_after: std::time::Duration) -> ForwardError {
    let what = match kind {
        Kind::Requests => "requests",
        Kind::Tokens => "tokens",
    };
    ForwardError::Respond(GatewayError::rate_limited(limit, what, retry_after))
}
