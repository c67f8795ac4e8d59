//! The request path, one function per phase (docs/architecture.md, "One request"):
//! normalize the target → route → read body (when a phase needs it) → split (A/B variant) → request rates → cache
//! lookup → token budgets, the usage ask and the upstream's concurrency slot (after a miss) →
//! forward → settle. Each phase returns [`Flow`]; a route without a phase's policy pays
//! nothing for it.

use super::admission;
use super::body::read_body;
use super::cache;
use super::ctx::{RequestBody, RequestCtx};
use super::limits::{self, StripUsage, UsageSink};
use super::respond::ForwardError;
use super::sink::Tee;
use super::Gateway;
use crate::config::policy::Route;
use crate::config::Policy;
use pingora::proxy::Session;
use sluice_plugins::body::RequestBody as ParsedBody;
use sluice_plugins::limits::usage::estimate_prompt_tokens;
use sluice_plugins::openai_error::GatewayError;
use sluice_plugins::request_target;
use sluice_plugins::router::HeadMatch;
use std::borrow::Cow;

/// Whether the request goes on to the next phase or was answered.
pub enum Flow {
    Next,
    Done,
}

/// Puts the normalized origin-form on the request, so routing, limits, the cache key and
/// the upstream all see one spelling of the path; a target without one is refused with 400.
pub fn normalize_target(session: &mut Session) -> Result<(), ForwardError> {
    let req = session.req_header();
    let normal = request_target::normalize(req.raw_path())
        .map_err(|e| ForwardError::Respond(GatewayError::invalid_path(&e.to_string())))?;
    // Borrowed: the target was already normal and in origin-form, so the URI holds it.
    if let Cow::Owned(normal) = normal {
        let uri = http::Uri::try_from(normal)
            .map_err(|e| ForwardError::Respond(GatewayError::invalid_path(&e.to_string())))?;
        session.req_header_mut().set_uri(uri);
    }
    Ok(())
}

/// Route match; reads the body when a route's model glob needs it.
pub async fn route(
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &Policy,
) -> Result<Flow, ForwardError> {
    let req = session.req_header();
    let index = match policy
        .router
        .select_head(&req.method, req.uri.path(), &req.headers)
    {
        HeadMatch::NoRoute => return Err(no_route(session)),
        HeadMatch::Route(i) => {
            ctx.body = if session.is_body_empty() {
                RequestBody::Empty
            } else {
                RequestBody::Stream
            };
            i
        }
        HeadMatch::NeedsBody => {
            let bytes = read(session, ctx, policy).await?;
            // No body (a GET, say) has no model; a body that is there must be JSON.
            let parsed = if bytes.is_empty() {
                None
            } else {
                Some(ParsedBody::parse(&bytes).map_err(|e| bad_json(&e))?)
            };
            let model = parsed.as_ref().and_then(ParsedBody::model);
            let req = session.req_header();
            policy
                .router
                .select_with_model(&req.method, req.uri.path(), &req.headers, model)
                .ok_or_else(|| no_route(session))?
        }
    };
    ctx.enter_route(index, &policy.routes[index]);
    Ok(Flow::Next)
}

/// Reads the body whole when the route's phases need it and routing has not read it yet.
pub async fn read_body_if_needed(
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &Policy,
    route: &Route,
) -> Result<Flow, ForwardError> {
    if route.reads_body && matches!(ctx.body, RequestBody::Stream) {
        read(session, ctx, policy).await?;
    }
    Ok(Flow::Next)
}

/// Answers from the cache, or prepares the recorder for a miss.
pub async fn cache_lookup(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<Flow, ForwardError> {
    match (&gw.cache, &route.cache) {
        (Some(cache), Some(_)) => cache::lookup(cache, session, ctx, route, unix_ms()).await,
        _ => Ok(Flow::Next),
    }
}

/// After a miss: reserves the request's tokens, then takes a slot at the upstream.
pub async fn admit_tokens_and_slot(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<Flow, ForwardError> {
    if route.limits.is_some() {
        limits::admit_tokens(gw, session, ctx, route).await?;
    }
    // Metering (token budgets included) asks a stream for its usage; it is best effort: a body
    // that is not a JSON object is sent as it came.
    if route.meters_usage && ctx.json().is_ok() {
        limits::ask_for_usage(ctx)?;
    }
    admission::admit(session, ctx, route).await?;
    Ok(Flow::Next)
}

/// Forwards to the route's upstream and settles what happened into the context: the
/// attempt, the tokens the answer cost, the upstream slot given back.
pub async fn forward(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<Flow, ForwardError> {
    let mut recorder = ctx.recording.take();
    let mut meter = (ctx.reserved.is_some() || route.meters_usage).then(UsageSink::default);
    let mut strip = ctx.strip_usage.then(StripUsage::default);
    let mut tee = Tee::new(std::mem::take(&mut ctx.response_headers));
    if let Some(r) = recorder.as_mut() {
        tee.add(r);
    }
    if let Some(m) = meter.as_mut() {
        tee.add(m);
    }
    if let Some(s) = strip.as_mut() {
        tee.filter_client(s);
    }
    let body = std::mem::take(&mut ctx.body);
    let lane = route.lane(ctx.lane_index());
    let max_body = ctx.policy.as_ref().map_or(usize::MAX, |p| p.max_body_bytes);
    let mut attempt = gw
        .forwarder
        .forward(session, route, lane, &body, max_body, &mut tee)
        .await;
    ctx.response_headers = tee.take_headers();
    drop(tee);
    drop(recorder);
    ctx.permit = None;
    ctx.body = body;
    limits::settle(gw, ctx, route, meter.as_mut()).await;
    if let Some(meter) = meter.as_mut().filter(|_| route.meters_usage) {
        count_usage(ctx, route, meter);
    }
    let outcome = std::mem::replace(&mut attempt.outcome, Ok(()));
    ctx.record_attempt(attempt);
    outcome.map(|()| Flow::Done)
}

/// Counts the answer's tokens and, for a priced model, its cost in the variant's counters.
fn count_usage(ctx: &mut RequestCtx, route: &Route, meter: &mut UsageSink) {
    let (Some(policy), Some(usage)) = (ctx.policy.clone(), &route.lane(ctx.lane_index()).usage)
    else {
        return;
    };
    let Ok(Some(body)) = ctx.json() else {
        return;
    };
    let Some((prompt, completion)) = meter.tokens(|| estimate_prompt_tokens(body)) else {
        return;
    };
    usage.prompt.inc_by(prompt);
    usage.completion.inc_by(completion);
    let model = body.get("model").and_then(serde_json::Value::as_str);
    if let Some(cost) = model.and_then(|m| policy.pricing.cost(m, prompt, completion)) {
        usage.cost_usd.inc_by(cost);
    }
}

/// Reads the whole body (up to the cap) into the context.
async fn read(
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &Policy,
) -> Result<bytes::Bytes, ForwardError> {
    let bytes = read_body(session, policy.max_body_bytes).await?;
    ctx.bytes_in = bytes.len();
    ctx.body = if bytes.is_empty() {
        RequestBody::Empty
    } else {
        RequestBody::Buffered(bytes.clone())
    };
    Ok(bytes)
}

/// The wall clock in Unix ms: cache entries age across instances, so they use real time.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn no_route(session: &Session) -> ForwardError {
    let req = session.req_header();
    ForwardError::Respond(GatewayError::no_route(req.method.as_str(), req.uri.path()))
}

fn bad_json(detail: &str) -> ForwardError {
    ForwardError::Respond(GatewayError::bad_json(detail))
}
