//! A compiled route: its lanes (one per A/B variant), split, cache, limits and what its
//! features need from a request, built from a route that passed every check.

use super::cache::RouteCache;
use super::keys::Auth;
use super::lane::{Lane, LanePlan};
use super::limits::{CheckedLimit, LimitScope, RouteLimits};
use super::needs::Needs;
use super::shared::SharedState;
use super::spec::RouteSpec;
use super::split::{CheckedSplit, RouteSplit};
use super::upstream::Upstream;
use sluice_plugins::metrics::{GatewayTimeMetrics, RouteLimitMetrics, RouteMetrics};
use sluice_plugins::router::RouteMatcher;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Route {
    pub name: String,
    /// One lane per variant of `split`, or one (variant `""`) without a split; never empty.
    pub lanes: Vec<Lane>,
    /// The route's A/B variants, if it splits.
    pub split: Option<RouteSplit>,
    /// Counts answers made before a variant was assigned (variant `""`).
    pub unassigned: RouteMetrics,
    /// The time sluice itself spends on the route's requests, in all and per phase.
    pub gateway_time: GatewayTimeMetrics,
    /// The route's cache policy, if it caches.
    pub cache: Option<RouteCache>,
    /// The route's request rates and token budgets, if any.
    pub limits: Option<RouteLimits>,
    /// Tokens reserved and charged, requests refused (by limits or the upstream's queue).
    pub limit_metrics: RouteLimitMetrics,
    /// What its features need from a request: the union of each one's `needs()`.
    pub needs: Needs,
    /// Whether a caller needs one of the gateway's keys.
    pub auth: Auth,
    /// The usage log records this route's bodies.
    pub log_bodies: bool,
}

impl Route {
    /// The route's limits as the limits phase takes them, if it has any.
    #[must_use]
    pub fn limit_scope(&self) -> Option<LimitScope<'_>> {
        Some(LimitScope {
            name: &self.name,
            limits: self.limits.as_ref()?,
            metrics: &self.limit_metrics,
        })
    }

    /// Lane `i`, or the first for an index out of range.
    #[must_use]
    pub fn lane(&self, i: usize) -> &Lane {
        let last = self.lanes.len().saturating_sub(1);
        &self.lanes[i.min(last)]
    }

    /// Every upstream the route can send to (a shared one once per lane that uses it).
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.lanes.iter().flat_map(Lane::upstreams)
    }
}

/// A route that passed every check, waiting for its upstream and metric handles.
pub(super) struct CheckedRoute<'a> {
    pub spec: &'a RouteSpec,
    pub matcher: RouteMatcher,
    pub cache: Option<RouteCache>,
    pub limits: Vec<CheckedLimit>,
    pub split: Option<CheckedSplit<'a>>,
}

/// Builds the route on the attached upstreams (`policy_needs`: what the key rules and the
/// usage log need of every request); `None` if its upstream is missing (checked before).
pub(super) fn build_route(
    r: CheckedRoute<'_>,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    priced: bool,
    policy_needs: Needs,
    shared: &SharedState,
) -> Option<(Route, RouteMatcher)> {
    let upstream = upstreams.get(r.spec.upstream.as_str())?;
    let name = &r.spec.name;
    let limits = super::limits::attach(name, r.limits, &shared.limit_buckets, &shared.metrics);
    let fallbacks: Vec<&Arc<Upstream>> = r
        .spec
        .fallback
        .iter()
        .filter_map(|f| upstreams.get(f.as_str()))
        .collect();
    let (split, variant_lanes) = match r.split {
        Some(CheckedSplit { split, lanes }) => (Some(split), lanes),
        None => (None, Vec::new()),
    };
    let plans: Vec<LanePlan<'_>> = match &split {
        None => vec![LanePlan {
            variant: "",
            upstream,
            headers: Vec::new(),
        }],
        Some(s) => s
            .variants
            .iter()
            .zip(variant_lanes)
            .map(|(v, l)| LanePlan {
                variant: &v.name,
                upstream: l
                    .upstream
                    .and_then(|u| upstreams.get(u))
                    .unwrap_or(upstream),
                headers: l.headers,
            })
            .collect(),
    };
    // A model glob, a fallback (which replays the body) and logged bodies read the body whole.
    let needs = [
        Needs::body_if(
            r.matcher.model.is_some() || !r.spec.fallback.is_empty() || r.spec.log_bodies,
        ),
        policy_needs,
        r.cache.as_ref().map_or(Needs::NONE, RouteCache::needs),
        limits.as_ref().map_or(Needs::NONE, RouteLimits::needs),
        split.as_ref().map_or(Needs::NONE, RouteSplit::needs),
    ]
    .into_iter()
    .chain(plans.iter().map(|p| p.upstream.needs()))
    .fold(Needs::NONE, |a, b| a | b)
    .with_pricing(priced);
    let lanes = plans
        .into_iter()
        .map(|p| Lane::new(name, p, &fallbacks, needs.usage, &shared.metrics))
        .collect();
    let route = Route {
        name: name.clone(),
        lanes,
        split,
        unassigned: shared.metrics.route(name, "", ""),
        gateway_time: shared.metrics.gateway_time(name),
        needs,
        auth: r.spec.auth,
        log_bodies: r.spec.log_bodies,
        limits,
        limit_metrics: shared.metrics.route_limits(name),
        cache: r.cache,
    };
    Some((route, r.matcher))
}
