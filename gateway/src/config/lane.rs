//! A route's lanes: where a request goes once its variant is known. A route without a split has
//! one lane (variant `""`); a split route has one per variant, each with its upstream, its
//! fallbacks and its own metric handles, so the request path never looks a label up.

use super::upstream::Upstream;
use http::header::{HeaderName, HeaderValue};
use prometheus::Histogram;
use sluice_plugins::metrics::{
    Metrics, RouteCacheMetrics, RouteMetrics, StatusCounters, UsageMetrics,
};
use std::sync::Arc;

pub struct Lane {
    /// The variant's name; empty on a route without a split.
    pub variant: String,
    pub upstream: Arc<Upstream>,
    /// Upstreams tried in order after `upstream`, each with its own response counters.
    pub fallback: Vec<Fallback>,
    /// Request headers the variant adds to what the upstream gets.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub metrics: RouteMetrics,
    pub cache_metrics: RouteCacheMetrics,
    /// Tokens and cost, on a route that meters them.
    pub usage: Option<UsageMetrics>,
}

/// An upstream a lane falls back to, and the lane's handles for its answers.
pub struct Fallback {
    pub upstream: Arc<Upstream>,
    pub served: StatusCounters,
    pub ttfb: Histogram,
}

/// What a lane is built from: the variant (`""` without a split), its upstream and headers.
pub(super) struct LanePlan<'a> {
    pub variant: &'a str,
    pub upstream: &'a Arc<Upstream>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Lane {
    /// Builds `plan`'s lane of `route`, skipping a fallback that is its own upstream; `metered`
    /// gives it token and cost counters.
    pub(super) fn new(
        route: &str,
        plan: LanePlan<'_>,
        fallbacks: &[&Arc<Upstream>],
        metered: bool,
        metrics: &Metrics,
    ) -> Lane {
        let LanePlan {
            variant,
            upstream,
            headers,
        } = plan;
        let own = metrics.route(route, &upstream.name, variant);
        own.served.export(200);
        Lane {
            variant: variant.to_string(),
            upstream: Arc::clone(upstream),
            fallback: fallbacks
                .iter()
                .filter(|up| up.name != upstream.name)
                .map(|up| {
                    let m = metrics.route(route, &up.name, variant);
                    Fallback {
                        upstream: Arc::clone(up),
                        served: m.served,
                        ttfb: m.ttfb,
                    }
                })
                .collect(),
            headers,
            metrics: own,
            cache_metrics: metrics.route_cache(route, variant),
            usage: metered.then(|| metrics.usage(route, variant)),
        }
    }

    /// The TTFB histogram for answers from the `hop`th upstream (labelled with its name).
    #[must_use]
    pub fn ttfb(&self, hop: usize) -> &Histogram {
        match hop.checked_sub(1).and_then(|k| self.fallback.get(k)) {
            Some(f) => &f.ttfb,
            None => &self.metrics.ttfb,
        }
    }

    /// Every upstream the lane can send to: its own, then its fallbacks in order.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        std::iter::once(&self.upstream).chain(self.fallback.iter().map(|f| &f.upstream))
    }

    /// The `hop`th upstream of the lane: 0 is its own, then its fallbacks in order.
    #[must_use]
    pub fn hop(&self, hop: usize) -> Option<&Upstream> {
        self.upstreams().nth(hop).map(Arc::as_ref)
    }
}
