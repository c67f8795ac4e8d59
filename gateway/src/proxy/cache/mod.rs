//! The cache phase: key the request, answer a hit from the tiers, coalesce identical misses
//! behind one upstream call (single-flight), and hand the forward phase a recorder for the
//! miss it leads. The engines live in `sluice_plugins::cache`; this is the adapter.

mod recorder;
mod replay;
mod request;

use super::body::Body;
use super::headers::X_SLUICE_CACHE;
use super::identity::Caller;
use super::stop::{Header, Stop};
use crate::config::policy::{Lane, Route};
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

/// What the lookup did.
pub enum Lookup {
    /// The request is not cached (no policy, `no-store`, `when:` said no, not a JSON body).
    Bypass,
    /// Answered from the cache or a coalesced flight: the client has its response.
    Answered(Answered),
    /// Not found: forward it, recording the answer (and feeding followers) with this.
    Miss(CacheRecorder),
}

/// A response written from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub result: CacheResult,
    pub status: u16,
    pub written: usize,
    /// The tokens the answer stands for (charged when a budget counts hits).
    pub tokens: u64,
}

/// Looks the request up on the route's cache; a hit or a coalesced answer is written with
/// `headers` (the phases' so far) plus `x-sluice-cache`. Counted in the lane's cache metrics.
#[allow(clippy::too_many_arguments)]
pub async fn lookup(
    cache: &PromptCache,
    session: &mut Session,
    route: &Route,
    lane: &Lane,
    caller: Caller<'_>,
    body: &mut Body,
    headers: &[Header],
    now_ms: u64,
) -> Result<Lookup, Stop> {
    let Some(policy) = &route.cache else {
        return Ok(Lookup::Bypass);
    };
    let req = session.req_header();
    let directives = Directives::from_headers(&req.headers, policy);
    let scope = request::scope(&req.headers, &policy.scope, caller);
    let path = req.uri.path().to_string();
    let keyed = body
        .json()?
        .filter(|j| !directives.no_store && policy.when.admits(j))
        .map(|json| {
            let key = policy.key.key(
                json,
                &KeyContext {
                    route: &route.name,
                    path: &path,
                    scope: &scope,
                    variant: &lane.variant,
                },
            );
            (key, Wants::of(json))
        });
    let Some((key, wants)) = keyed else {
        count(lane, CacheResult::Bypass, None);
        return Ok(Lookup::Bypass);
    };
    if !directives.no_cache {
        if let Some((entry, tier)) = cache.store.get(key, &route.name, now_ms).await {
            if let Some(replay) = Replay::of(&entry, wants.stream, now_ms) {
                if policy.adaptive {
                    cache.store.extend(key, &entry, now_ms);
                }
                let result = CacheResult::Hit(tier);
                count(lane, result, Some(&entry));
                let mut headers = headers.to_vec();
                headers.push(header(result));
                let replay = replay.for_client(wants.usage);
                let written = replay.write(session, &route.name, &headers).await?;
                return Ok(Lookup::Answered(Answered {
                    result,
                    status: entry.status,
                    written,
                    tokens: entry.tokens,
                }));
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
        refresh: directives.no_cache,
    };
    let leader = match cache.flights.join(key) {
        Role::Leader(leader) => Some(leader),
        Role::Follower(mut follower) => {
            let result = CacheResult::Coalesced;
            let mut headers = headers.to_vec();
            headers.push(header(result));
            let answer = follow(session, &mut follower, &route.name, wants, &headers, now_ms);
            match answer.await? {
                Some((status, written, entry)) => {
                    count(lane, result, entry.as_deref());
                    return Ok(Lookup::Answered(Answered {
                        result,
                        status,
                        written,
                        tokens: entry.map_or(0, |e| e.tokens),
                    }));
                }
                // The leader failed before we wrote anything: go on our own.
                None => None,
            }
        }
    };
    count(lane, CacheResult::Miss, None);
    Ok(Lookup::Miss(CacheRecorder::new(
        plan,
        Arc::clone(&cache.store),
        leader,
    )))
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
) -> Result<Option<(u16, usize, Option<Arc<Entry>>)>, Stop> {
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

/// Counts the lookup's result in the lane's cache metrics, and what a hit saved.
fn count(lane: &Lane, result: CacheResult, entry: Option<&Entry>) {
    let metrics = &lane.cache_metrics;
    metrics.record(result);
    if let Some(entry) = entry {
        metrics
            .saved_seconds
            .inc_by(entry.upstream_ms as f64 / 1000.0);
        metrics.saved_tokens.inc_by(entry.tokens);
    }
}

/// The `x-sluice-cache` header naming the lookup's result.
#[must_use]
pub fn header(result: CacheResult) -> Header {
    (
        HeaderName::from_static(X_SLUICE_CACHE),
        HeaderValue::from_static(result.name()),
    )
}

#[cfg(test)]
mod tests;
