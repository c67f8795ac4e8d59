//! The request path, in order: ids → normalize the target → route (reading the body when a
//! model glob needs it) → who is calling (the route's `auth:`, the key's routes) → read the body
//! (when the route's features need it) → the key's models → split (A/B lane) → request rates →
//! cache lookup → token reservations, the key's budget, the usage ask and the upstream's
//! concurrency slot (after a miss) → forward → settle. This is the one module that knows every
//! phase: each phase takes what it reads and returns what it makes, and the hand-offs between
//! them (body, headers, reservations, recorder, permit) live on this module's stack. The first
//! phase that stops the request ends it; a route without a feature pays nothing for its phase.

use super::admission;
use super::auth;
use super::body::Body;
use super::cache::{self, CacheRecorder, Lookup};
use super::capture::BodyCapture;
use super::ctx::RequestCtx;
use super::forward::{Attempt, Forwarder};
use super::headers::X_REQUEST_ID;
use super::limits::{self, BudgetHold, Reserved};
use super::record::Record;
use super::respond;
use super::route;
use super::sink::Tee;
use super::split;
use super::stop::{merge_headers, Header, Stop};
use super::target;
use super::trace;
use super::usage::{self, StripUsage, UsageSink};
use crate::config::keys::Auth;
use crate::config::limits::LimitScope;
use crate::config::policy::{Lane, Route};
use crate::config::Policy;
use http::header::HeaderName;
use pingora::proxy::Session;
use sluice_plugins::cache::PromptCache;
use sluice_plugins::limits::gate::GatePermit;
use sluice_plugins::limits::shared::SharedBuckets;
use sluice_plugins::metrics::{CacheResult, Phase};
use std::sync::Arc;
use std::time::Instant;

/// The engines that outlive a policy: the forwarder's pools, the cache tiers and flights, the
/// Redis buckets of shared limits.
pub struct Engines {
    pub forwarder: Forwarder,
    /// When a route caches.
    pub cache: Option<Arc<PromptCache>>,
    /// When a limit is shared.
    pub shared_limits: Option<Arc<SharedBuckets>>,
}

impl Engines {
    fn shared(&self) -> Option<&SharedBuckets> {
        self.shared_limits.as_deref()
    }
}

/// Runs the phases under `policy`; a gateway-made answer is written here. `Err` says why the
/// client connection must be dropped (a response cut short, a client gone).
pub async fn run(
    engines: &Engines,
    policy: &Policy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), String> {
    let ids = trace::stamp(session.req_header_mut());
    let mut headers = vec![(
        HeaderName::from_static(X_REQUEST_ID),
        ids.request_id.clone(),
    )];
    ctx.record.ids = Some(ids);
    let mut laps = Laps::start();
    let entered = enter(session, policy).await;
    laps.lap(&mut ctx.record, Phase::Route);
    let outcome = match entered {
        Err(stop) => Err(stop),
        Ok(routed) => {
            ctx.enter_route(routed.index, routed.route);
            let mut holds = Holds::default();
            let on = On {
                engines,
                policy,
                route: routed.route,
            };
            let outcome = on
                .serve(
                    routed.body,
                    session,
                    &mut ctx.record,
                    &mut headers,
                    &mut holds,
                    laps,
                )
                .await;
            // Refused or failed before an upstream answered: what it held goes back.
            for (scope, reserved) in holds.tokens {
                limits::release(engines.shared(), scope, reserved).await;
            }
            if let Some(hold) = holds.budget {
                limits::release_budget(engines.shared(), hold).await;
            }
            outcome
        }
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(Stop::Respond {
            error,
            headers: more,
        }) => {
            merge_headers(&mut headers, more);
            let route = ctx.record.route.and_then(|i| policy.routes.get(i));
            let name = route.map(|r| r.name.as_str());
            respond::error(session, &mut ctx.record, name, &error, headers).await;
            Ok(())
        }
        Err(Stop::Aborted(why)) => Err(why),
    }
}

async fn enter<'p>(session: &mut Session, policy: &'p Policy) -> Result<route::Routed<'p>, Stop> {
    target::normalize(session.req_header_mut())?;
    route::select(session, policy).await
}

/// One request on its route.
struct On<'a> {
    engines: &'a Engines,
    policy: &'a Policy,
    route: &'a Route,
}

/// What a request holds in token budgets (the route's, its key's) and its key's dollar budget
/// until its answer ends.
#[derive(Default)]
struct Holds<'p> {
    tokens: Vec<(LimitScope<'p>, Reserved)>,
    budget: Option<BudgetHold>,
}

/// What the phases before the forward hand it.
struct Handoff {
    recorder: Option<CacheRecorder>,
    strip_usage: bool,
    permit: Option<GatePermit>,
    /// Where the forward's set-up starts.
    laps: Laps,
}

/// Times consecutive phases: each lap charges the time since the previous one to a phase, so
/// the phases add up to the gateway's time before the forward.
#[derive(Clone, Copy)]
struct Laps(Instant);

impl Laps {
    fn start() -> Laps {
        Laps(Instant::now())
    }

    fn lap(&mut self, record: &mut Record, phase: Phase) {
        let now = Instant::now();
        record
            .phases
            .add(phase, now.saturating_duration_since(self.0));
        self.0 = now;
    }
}

impl<'a> On<'a> {
    async fn serve(
        &self,
        mut body: Body,
        session: &mut Session,
        record: &mut Record,
        headers: &mut Vec<Header>,
        holds: &mut Holds<'a>,
        mut laps: Laps,
    ) -> Result<(), Stop> {
        let (route, shared) = (self.route, self.engines.shared());
        let caller = auth::authenticate(&self.policy.keys, route, session.req_header_mut())?;
        record.key = caller.cloned();
        laps.lap(record, Phase::Route);
        if route.needs.body {
            let read = body
                .read_if_streamed(session, self.policy.max_body_bytes)
                .await;
            laps.lap(record, Phase::BodyRead);
            read?;
        }
        record.bytes_in = body.len();
        auth::allow_model(caller, route, &mut body)?;
        let req = session.req_header_mut();
        let chosen = split::choose(route.split.as_ref(), req, caller, &mut body)?;
        let lane = route.lanes.get(chosen.lane).ok_or_else(|| {
            Stop::Aborted(format!("route {} has no lane {}", route.name, chosen.lane))
        })?;
        record.lane = Some(chosen.lane);
        headers.extend(chosen.header);
        laps.lap(record, Phase::Split);
        // The route's limits, then (on a route with auth:) the caller's key's own.
        let key_scope = caller
            .filter(|_| route.auth != Auth::None)
            .and_then(|k| k.limit_scope());
        let scopes = [route.limit_scope(), key_scope];
        for scope in scopes.into_iter().flatten() {
            let admitted = limits::admit_requests(shared, scope, session, caller, &mut body).await;
            laps.lap(record, Phase::Limits);
            merge_headers(headers, admitted?);
        }
        let recorder = match (&self.engines.cache, &route.cache) {
            (Some(cache), Some(_)) => {
                let now = unix_ms();
                let looked =
                    cache::lookup(cache, session, route, lane, caller, &mut body, headers, now);
                let looked = looked.await;
                laps.lap(record, Phase::CacheLookup);
                match looked? {
                    Lookup::Answered(answered) => {
                        record.cache = answered.result.name();
                        record.answered_locally(answered.status, answered.written);
                        record.first_body = Some(laps.0);
                        record.model = body.parsed_model().map(str::to_owned);
                        let tokens = answered.tokens;
                        for scope in scopes.into_iter().flatten() {
                            limits::charge_hit(shared, scope, session, caller, &mut body, tokens)
                                .await;
                        }
                        laps.lap(record, Phase::Limits);
                        return Ok(());
                    }
                    Lookup::Miss(recorder) => {
                        note_cache(record, headers, CacheResult::Miss);
                        Some(recorder)
                    }
                    Lookup::Bypass => {
                        note_cache(record, headers, CacheResult::Bypass);
                        None
                    }
                }
            }
            _ => None,
        };
        for scope in scopes.into_iter().flatten() {
            let reserved = limits::reserve_tokens(shared, scope, session, caller, &mut body).await;
            laps.lap(record, Phase::Limits);
            let (held, more) = reserved?;
            holds.tokens.extend(held.map(|h| (scope, h)));
            merge_headers(headers, more);
        }
        if route.auth != Auth::None {
            let pricing = &self.policy.pricing;
            let reserved = limits::reserve_budget(shared, caller, pricing, &mut body).await;
            laps.lap(record, Phase::Limits);
            holds.budget = reserved?;
        }
        let strip_usage = route.needs.usage && usage::ask_for_usage(&mut body)?;
        let watch = !body.is_streamed();
        let permit = if lane.upstream.admission.is_some() {
            laps.lap(record, Phase::ForwardSetup);
            let admitted =
                admission::admit(session, &lane.upstream, &route.limit_metrics, watch).await;
            laps.lap(record, Phase::QueueWait);
            admitted?
        } else {
            None
        };
        let handoff = Handoff {
            recorder,
            strip_usage,
            permit,
            laps,
        };
        // Boxed: the forward's state (~10 KiB) is then made only for requests that forward, not
        // copied into every request's future (a cache hit's included).
        Box::pin(self.forward(lane, body, session, record, headers, holds, handoff)).await
    }

    /// Forwards through a tee that feeds the recorder and the meter, then settles the token
    /// reservations and counts the usage.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        lane: &Lane,
        mut body: Body,
        session: &mut Session,
        record: &mut Record,
        headers: &mut Vec<Header>,
        holds: &mut Holds<'a>,
        handoff: Handoff,
    ) -> Result<(), Stop> {
        let route = self.route;
        let Handoff {
            mut recorder,
            strip_usage,
            permit,
            laps,
        } = handoff;
        let mut meter = (!holds.tokens.is_empty() || route.needs.usage).then(UsageSink::default);
        let mut strip = strip_usage.then(StripUsage::default);
        let mut tee = Tee::new(std::mem::take(headers));
        if let Some(r) = recorder.as_mut() {
            tee.add(r);
        }
        if let Some(m) = meter.as_mut() {
            tee.add(m);
        }
        if let Some(s) = strip.as_mut() {
            tee.filter_client(s);
        }
        let mut capture = route.log_bodies.then(BodyCapture::default);
        if let Some(c) = capture.as_mut() {
            tee.add(c);
        }
        let max_body = self.policy.max_body_bytes;
        let forwarder = &self.engines.forwarder;
        let trace = record.ids.as_ref().map(|i| &i.trace);
        let attempt = forwarder
            .forward(session, route, lane, &body, max_body, trace, &mut tee)
            .await;
        if let Some(first) = attempt.tries.first() {
            let setup = first.start.saturating_duration_since(laps.0);
            record.phases.add(Phase::ForwardSetup, setup);
        }
        record.first_body = tee.first_body;
        record.model = body.parsed_model().map(str::to_owned);
        // What was not sent goes on an answer made instead.
        *headers = tee.take_headers();
        drop(tee);
        drop(recorder);
        drop(permit);
        record.bodies = capture.map(|c| c.logged(body.bytes()));
        let shared = self.engines.shared();
        for (scope, held) in holds.tokens.drain(..) {
            limits::settle(shared, scope, held, meter.as_mut()).await;
        }
        if let Some(meter) = meter.as_mut().filter(|_| route.needs.usage) {
            record.usage = usage::count(lane, &self.policy.pricing, &mut body, meter);
        }
        if let Some(hold) = holds.budget.take() {
            let cost = record.usage.as_ref().and_then(|u| u.cost_usd);
            limits::settle_budget(shared, hold, cost).await;
        }
        record_attempt(record, attempt)
    }
}

/// Takes in what the forwarder did; its outcome is the request's.
fn record_attempt(record: &mut Record, attempt: Attempt) -> Result<(), Stop> {
    if let Some(status) = attempt.status {
        record.status = Some(status);
        record.served = true;
    }
    record.bytes_out += attempt.bytes_out;
    record.upstream = Some(attempt.tried);
    record.tries = attempt.tries;
    attempt.outcome
}

/// A lookup that leaves the request to the upstream: logged, and named on the answer.
fn note_cache(record: &mut Record, headers: &mut Vec<Header>, result: CacheResult) {
    record.cache = result.name();
    headers.push(cache::header(result));
}

/// The wall clock in Unix ms: cache entries age across instances, so they use real time.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
