//! The cache phase: key the request, answer a hit from the tiers, coalesce identical misses
//! behind one upstream call (single-flight), and hand the forward phase a recorder for the
//! miss it leads. The engines live in `sluice_plugins::cache`; this is the adapter.

mod recorder;
mod replay;
mod request;

use super::ctx::RequestCtx;
use super::headers::X_SLUICE_CACHE;
use super::phases::Flow;
use super::respond::ForwardError;
use crate::config::policy::Route;
use http::header::{HeaderName, HeaderValue};
use pingora::proxy::Session;
pub use recorder::{CacheRecorder, EntryPlan};
use replay::Replay;
use request::Directives;
use serde_json::{Map, Value};
use sluice_plugins::cache::flight::{FlightEvent, Follower, Role};
use sluice_plugins::cache::key::KeyContext;
use sluice_plugins::cache::{Entry, PromptCache};
use sluice_plugins::limits::usage::asks_for_usage;
use sluice_plugins::metrics::CacheResult;
use std::sync::Arc;

/// Looks the request up; `Done` when it was answered from the cache or a coalesced flight.
pub async fn lookup(
    cache: &PromptCache,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
    now_ms: u64,
) -> Result<Flow, ForwardError> {
    let Some(policy) = &route.cache else {
        return Ok(Flow::Next);
    };
    let req = session.req_header();
    let directives = Directives::from_headers(&req.headers, policy);
    let scope = request::scope(&req.headers, &policy.scope);
    let path = req.uri.path().to_string();
    let variant = &route.lane(ctx.lane_index()).variant;
    let keyed = ctx
        .json()?
        .filter(|j| !directives.no_store && policy.when.admits(j))
        .map(|json| {
            let key = policy.key.key(
                json,
                &KeyContext {
                    route: &route.name,
                    path: &path,
                    scope: &scope,
                    variant,
                },
            );
            (key, Wants::of(json))
        });
    let Some((key, wants)) = keyed else {
        settle(ctx, route, CacheResult::Bypass, None);
        return Ok(Flow::Next);
    };
    if !directives.no_cache {
        if let Some((entry, tier)) = cache.store.get(key, &route.name, now_ms).await {
            if let Some(replay) = Replay::of(&entry, wants.stream, now_ms) {
                if policy.adaptive {
                    cache.store.extend(key, &entry, now_ms);
                }
                settle(ctx, route, CacheResult::Hit(tier), Some(&entry));
                let replay = replay.for_client(wants.usage);
                let written = replay
                    .write(session, &route.name, &ctx.response_headers)
                    .await?;
                answered(ctx, entry.status, written);
                return Ok(Flow::Done);
            }
        }
    }
    let plan = EntryPlan {
        key,
        route: route.name.clone(),
        ttl: directives.ttl.unwrap_or(policy.ttl),
        max_ttl: policy.max_ttl,
        adaptive: policy.adaptive,
        now_ms,
    };
    let leader = match cache.flights.join(key) {
        Role::Leader(leader) => Some(leader),
        Role::Follower(mut follower) => {
            let mut headers = ctx.response_headers.clone();
            headers.push(cache_header(CacheResult::Coalesced));
            let answer = follow(session, &mut follower, &route.name, wants, &headers, now_ms);
            match answer.await? {
                Some((status, written, entry)) => {
                    answered(ctx, status, written);
                    settle(ctx, route, CacheResult::Coalesced, entry.as_deref());
                    return Ok(Flow::Done);
                }
                // The leader failed before we wrote anything: go on our own.
                None => None,
            }
        }
    };
    settle(ctx, route, CacheResult::Miss, None);
    ctx.recording = Some(CacheRecorder::new(plan, Arc::clone(&cache.store), leader));
    Ok(Flow::Next)
}

/// What the client asked for: a stream, and the usage chunk in it.
#[derive(Debug, Clone, Copy)]
struct Wants {
    stream: bool,
    usage: bool,
}

impl Wants {
    fn of(json: &Map<String, Value>) -> Wants {
        Wants {
            stream: json.get("stream").and_then(Value::as_bool) == Some(true),
            usage: asks_for_usage(json),
        }
    }
}

/// Waits on a leader: `Some((status, bytes written, entry))` when answered, `None` when the
/// leader failed before anything was written.
async fn follow(
    session: &mut Session,
    follower: &mut Follower,
    route: &str,
    wants: Wants,
    headers: &[(HeaderName, HeaderValue)],
    now_ms: u64,
) -> Result<Option<(u16, usize, Option<Arc<Entry>>)>, ForwardError> {
    let entry = if wants.stream {
        match follower.next().await {
            FlightEvent::Head(head) if head.sse => {
                let status = head.status;
                let live = replay::Live {
                    route,
                    headers,
                    strip_usage: !wants.usage,
                };
                let (written, entry) = live.follow(session, follower, head).await?;
                return Ok(Some((status, written, Some(entry))));
            }
            FlightEvent::Complete(entry) => Some(entry),
            FlightEvent::Failed => None,
            FlightEvent::Head(_) | FlightEvent::Chunk(_) => follower.finished().await,
        }
    } else {
        follower.finished().await
    };
    let Some(entry) = entry else { return Ok(None) };
    let Some(replay) = Replay::of(&entry, wants.stream, now_ms) else {
        return Ok(None);
    };
    let written = replay
        .for_client(wants.usage)
        .write(session, route, headers)
        .await?;
    Ok(Some((entry.status, written, Some(entry))))
}

/// Records an answer written from the cache.
fn answered(ctx: &mut RequestCtx, status: u16, written: usize) {
    ctx.status = Some(status);
    ctx.served = false;
    ctx.bytes_out += written;
}

/// The lookup's result: the context's `cache` field and header, the route's counters, what a
/// hit saved.
fn settle(ctx: &mut RequestCtx, route: &Route, result: CacheResult, entry: Option<&Entry>) {
    ctx.cache = result.name();
    ctx.response_headers.push(cache_header(result));
    let metrics = &route.lane(ctx.lane_index()).cache_metrics;
    metrics.record(result);
    if let Some(entry) = entry {
        metrics
            .saved_seconds
            .inc_by(entry.upstream_ms as f64 / 1000.0);
        metrics.saved_tokens.inc_by(entry.tokens);
        ctx.hit_tokens = entry.tokens;
    }
}

fn cache_header(result: CacheResult) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(X_SLUICE_CACHE),
        HeaderValue::from_static(result.name()),
    )
}
