//! The per-route and per-upstream numbers of the report, read from the window's series.

use super::{Count, EndpointSummary, RouteSummary, UpstreamSummary};
use crate::ab::exposition::{count, Scrape};
use std::collections::BTreeSet;

pub(super) const REQUESTS: &str = "sluice_requests_total";
pub(super) const DURATION: &str = "sluice_request_duration_seconds";
pub(super) const GATEWAY: &str = "sluice_gateway_seconds";
pub(super) const GATEWAY_PHASE: &str = "sluice_gateway_phase_seconds";
pub(super) const CACHE: &str = "sluice_cache_requests_total";
pub(super) const CACHE_SAVED_SECONDS: &str = "sluice_cache_saved_seconds_total";
pub(super) const CACHE_SAVED_TOKENS: &str = "sluice_cache_saved_tokens_total";
pub(super) const CACHE_EVICTIONS: &str = "sluice_cache_evictions_total";
pub(super) const DECISIONS: &str = "sluice_ratelimit_decisions_total";
pub(super) const REJECTIONS: &str = "sluice_rejections_total";
pub(super) const QUEUE_WAIT: &str = "sluice_queue_wait_seconds";
pub(super) const UPSTREAM_REQUESTS: &str = "sluice_upstream_requests_total";
pub(super) const UPSTREAM_ERRORS: &str = "sluice_upstream_errors_total";
pub(super) const EWMA: &str = "sluice_upstream_ewma_seconds";
pub(super) const EJECTIONS: &str = "sluice_upstream_ejections_total";
pub(super) const HEALTHY: &str = "sluice_upstream_healthy";

/// The distinct non-empty values of `label` on the series of `families`, sorted.
pub(super) fn label_values(scrape: &Scrape, families: &[&str], label: &str) -> Vec<String> {
    let values: BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter(|s| families.iter().any(|f| s.name.starts_with(f)))
        .filter_map(|s| s.label(label))
        .filter(|v| !v.is_empty())
        .collect();
    values.into_iter().map(str::to_string).collect()
}

/// Whether any series of `family` is in the scrape (sluice exports it).
fn exported(scrape: &Scrape, family: &str) -> bool {
    scrape.samples.iter().any(|s| s.name.starts_with(family))
}

pub(super) fn routes(scrape: &Scrape, window_s: Option<f64>) -> Vec<RouteSummary> {
    label_values(scrape, &[REQUESTS, REJECTIONS, DECISIONS], "route")
        .into_iter()
        .map(|route| route_summary(scrape, route, window_s))
        .collect()
}

fn route_summary(scrape: &Scrape, route: String, window_s: Option<f64>) -> RouteSummary {
    let on = [("route", route.as_str())];
    let n = |name: &str, labels: &[(&str, &str)]| {
        let all: Vec<(&str, &str)> = on.iter().chain(labels).copied().collect();
        count(scrape.sum(name, &all))
    };
    let requests = n(REQUESTS, &[]);
    let errors_5xx = count(
        scrape
            .matching(REQUESTS, &on)
            .filter(|s| s.label("code").is_some_and(|c| c.starts_with('5')))
            .map(|s| s.value)
            .sum(),
    );
    let duration = scrape.histogram(DURATION, &on);
    let gateway = scrape.histogram(GATEWAY, &on);
    let queue = scrape.histogram(GATEWAY_PHASE, &[on[0], ("phase", "queue_wait")]);
    let share = |part: f64, exported: bool| {
        (exported && duration.sum > 0.0).then(|| (part / duration.sum).clamp(0.0, 1.0))
    };
    let gateway_share = share(gateway.sum, exported(scrape, GATEWAY));
    let hits = n(CACHE, &[("result", "hit")]) + n(CACHE, &[("result", "coalesced")]);
    let lookups = n(CACHE, &[]);
    let mut limited_by: Vec<Count> = label_values(scrape, &[DECISIONS], "limit")
        .into_iter()
        .map(|limit| Count {
            count: n(DECISIONS, &[("limit", &limit), ("result", "limited")]),
            name: limit,
        })
        .filter(|c| c.count > 0)
        .collect();
    limited_by.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
    RouteSummary {
        rps: window_s.filter(|w| *w > 0.0).map(|w| requests as f64 / w),
        requests,
        errors_5xx,
        p50_s: duration.quantile(0.5),
        p99_s: duration.quantile(0.99),
        upstream_share: gateway_share.map(|g| 1.0 - g),
        gateway_share,
        queue_share: share(queue.sum, exported(scrape, GATEWAY_PHASE)),
        gateway_p99_s: gateway.quantile(0.99),
        cache_lookups: lookups,
        cache_hits: hits,
        cache_misses: n(CACHE, &[("result", "miss")]),
        cache_bypasses: n(CACHE, &[("result", "bypass")]),
        cache_hit_rate: (lookups > 0).then(|| hits as f64 / lookups as f64),
        cache_saved_s: scrape.sum(CACHE_SAVED_SECONDS, &on).max(0.0),
        cache_saved_tokens: n(CACHE_SAVED_TOKENS, &[]),
        rate_limited: n(REJECTIONS, &[("reason", "rate_limit")])
            + n(REJECTIONS, &[("reason", "token_budget")]),
        limited_by,
        queue_rejected: n(REJECTIONS, &[("reason", "queue_full")])
            + n(REJECTIONS, &[("reason", "queue_timeout")]),
        route,
    }
}

pub(super) fn upstreams(scrape: &Scrape) -> Vec<UpstreamSummary> {
    let families = [
        UPSTREAM_REQUESTS,
        UPSTREAM_ERRORS,
        EWMA,
        EJECTIONS,
        QUEUE_WAIT,
    ];
    label_values(scrape, &families, "upstream")
        .into_iter()
        .map(|upstream| {
            let on = [("upstream", upstream.as_str())];
            let queue = scrape.histogram(QUEUE_WAIT, &on);
            let endpoints = label_values(scrape, &families[..4], "endpoint")
                .into_iter()
                .filter(|e| {
                    let at = [on[0], ("endpoint", e.as_str())];
                    families[..4]
                        .iter()
                        .any(|f| scrape.matching(f, &at).next().is_some())
                })
                .map(|endpoint| {
                    let at = [on[0], ("endpoint", endpoint.as_str())];
                    let gauge = |name: &str| scrape.matching(name, &at).map(|s| s.value).next();
                    EndpointSummary {
                        requests: count(scrape.sum(UPSTREAM_REQUESTS, &at)),
                        errors: count(scrape.sum(UPSTREAM_ERRORS, &at)),
                        ewma_s: gauge(EWMA),
                        ejections: count(scrape.sum(EJECTIONS, &at)),
                        healthy: gauge(HEALTHY).map(|v| v > 0.0),
                        endpoint,
                    }
                })
                .collect();
            UpstreamSummary {
                endpoints,
                queued: queue.total(),
                queue_wait_p99_s: queue.quantile(0.99),
                upstream,
            }
        })
        .collect()
}
