//! The findings: each rule reads the window's numbers and says what looks wrong, how badly,
//! and what to do. Every ratio waits for [`MIN_REQUESTS`](super::MIN_REQUESTS) before judging.

use super::routes::{CACHE_EVICTIONS, GATEWAY, GATEWAY_PHASE};
use super::{RouteSummary, UpstreamSummary, MIN_REQUESTS};
use crate::ab::exposition::{count, Scrape};
use serde::Serialize;

/// An endpoint is slow when its latency estimate is this much above its peers' median...
pub const SLOW_GAP_S: f64 = 0.1;
/// ...and this many times it (so a 2 s model with a 2.1 s endpoint is not called slow).
pub const SLOW_RATIO: f64 = 1.5;
/// Tries an endpoint needs in the window before its estimate is trusted (it decays unused).
pub const MIN_TRIES: u64 = 5;
/// Failed tries (share of tries) from which an endpoint's errors are a warning, and critical.
pub const ERROR_WARNING: f64 = 0.01;
pub const ERROR_CRITICAL: f64 = 0.1;
/// Hit rates below this are low.
pub const LOW_HIT_RATE: f64 = 0.1;
/// Share of requests refused with 429 from which it is a warning, and critical.
pub const LIMITED_WARNING: f64 = 0.01;
pub const LIMITED_CRITICAL: f64 = 0.2;
/// A queue wait p99 above this is a warning.
pub const QUEUE_WAIT_P99_S: f64 = 0.1;
/// Gateway time: a p99 above this, or a share of the requests' time above `GATEWAY_SHARE`
/// while the mean is above `GATEWAY_MEAN_S` (a share alone is high in front of a fast mock).
pub const GATEWAY_P99_S: f64 = 0.05;
pub const GATEWAY_SHARE: f64 = 0.5;
pub const GATEWAY_MEAN_S: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SlowEndpoint,
    UpstreamErrors,
    Ejections,
    Queueing,
    RateLimited,
    GatewayOverhead,
    LowCacheHitRate,
}

impl Severity {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl Kind {
    /// As in the JSON report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::SlowEndpoint => "slow_endpoint",
            Kind::UpstreamErrors => "upstream_errors",
            Kind::Ejections => "ejections",
            Kind::Queueing => "queueing",
            Kind::RateLimited => "rate_limited",
            Kind::GatewayOverhead => "gateway_overhead",
            Kind::LowCacheHitRate => "low_cache_hit_rate",
        }
    }
}

/// One thing the report noticed; `route`, `upstream` and `endpoint` are `None` where they do
/// not apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub severity: Severity,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub endpoint: Option<String>,
    pub message: String,
    pub suggestion: String,
}

/// Where a finding is.
#[derive(Default)]
struct At<'a> {
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    endpoint: Option<&'a str>,
}

impl Finding {
    fn new(kind: Kind, severity: Severity, at: At<'_>, message: String, suggestion: &str) -> Self {
        Finding {
            kind,
            severity,
            route: at.route.map(str::to_string),
            upstream: at.upstream.map(str::to_string),
            endpoint: at.endpoint.map(str::to_string),
            message,
            suggestion: suggestion.to_string(),
        }
    }
}

pub(super) fn judge(
    scrape: &Scrape,
    routes: &[RouteSummary],
    upstreams: &[UpstreamSummary],
) -> Vec<Finding> {
    let mut found = Vec::new();
    for u in upstreams {
        slow_endpoints(u, &mut found);
        endpoint_health(u, &mut found);
        queue_wait(u, &mut found);
    }
    for r in routes {
        route_errors(r, &mut found);
        rate_limited(r, &mut found);
        queue_rejections(r, &mut found);
        gateway_overhead(scrape, r, &mut found);
        low_cache_hit_rate(scrape, r, &mut found);
    }
    found.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.kind.cmp(&b.kind))
            .then_with(|| {
                (&a.route, &a.upstream, &a.endpoint).cmp(&(&b.route, &b.upstream, &b.endpoint))
            })
    });
    found
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn ms(seconds: f64) -> String {
    format!("{:.0} ms", seconds * 1000.0)
}

/// The median of `values` (not empty).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

// === Upstreams ===

fn slow_endpoints(u: &UpstreamSummary, found: &mut Vec<Finding>) {
    let judged: Vec<(&str, f64)> = u
        .endpoints
        .iter()
        .filter(|e| e.requests >= MIN_TRIES)
        .filter_map(|e| Some((e.endpoint.as_str(), e.ewma_s.filter(|s| s.is_finite())?)))
        .collect();
    if judged.len() < 2 {
        return;
    }
    for (endpoint, ewma) in &judged {
        let mut peers: Vec<f64> = judged
            .iter()
            .filter(|(e, _)| e != endpoint)
            .map(|(_, s)| *s)
            .collect();
        let peer = median(&mut peers);
        if ewma - peer < SLOW_GAP_S || *ewma < peer * SLOW_RATIO {
            continue;
        }
        let severity = if ewma - peer >= 1.0 && *ewma >= peer * 4.0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        found.push(Finding::new(
            Kind::SlowEndpoint,
            severity,
            At { upstream: Some(&u.upstream), endpoint: Some(endpoint), ..At::default() },
            format!(
                "endpoint {endpoint} of upstream {} answers in about {} (latency estimate), {} slower than its peers' {}",
                u.upstream, ms(*ewma), ms(ewma - peer), ms(peer)
            ),
            "check that endpoint's host (load, model, region); `balance: peak_ewma` sends it less traffic, or take it out of the upstream",
        ));
    }
}

fn endpoint_health(u: &UpstreamSummary, found: &mut Vec<Finding>) {
    for e in &u.endpoints {
        let at = || At {
            upstream: Some(&u.upstream),
            endpoint: Some(&e.endpoint),
            ..At::default()
        };
        if e.requests >= MIN_REQUESTS && e.errors > 0 {
            let share = e.errors as f64 / e.requests as f64;
            if share >= ERROR_WARNING {
                found.push(Finding::new(
                    Kind::UpstreamErrors,
                    if share >= ERROR_CRITICAL { Severity::Critical } else { Severity::Warning },
                    at(),
                    format!(
                        "{} of {} tries at endpoint {} failed ({}: connect errors, timeouts, 5xx, resets)",
                        e.errors, e.requests, e.endpoint, percent(share)
                    ),
                    "see sluice_upstream_errors_total by kind and the endpoint's own logs; retries and outlier detection hide failures from clients only while other endpoints are healthy",
                ));
            }
        }
        if e.ejections > 0 {
            let down = e.healthy == Some(false);
            found.push(Finding::new(
                Kind::Ejections,
                if down { Severity::Critical } else { Severity::Warning },
                at(),
                format!(
                    "outlier detection ejected endpoint {} {} time(s){}",
                    e.endpoint,
                    e.ejections,
                    if down { "; it is still out" } else { "" }
                ),
                "the endpoint failed several tries in a row: check its health and logs; if it fails under load, give the upstream more endpoints or a queue",
            ));
        }
    }
}

fn queue_wait(u: &UpstreamSummary, found: &mut Vec<Finding>) {
    let Some(p99) = u.queue_wait_p99_s else {
        return;
    };
    if u.queued < MIN_REQUESTS || p99 < QUEUE_WAIT_P99_S {
        return;
    }
    found.push(Finding::new(
        Kind::Queueing,
        Severity::Warning,
        At { upstream: Some(&u.upstream), ..At::default() },
        format!("requests waited in upstream {}'s queue up to {} (p99)", u.upstream, ms(p99)),
        "the upstream's concurrency limit is the bottleneck: raise it if the model server has room, or add endpoints",
    ));
}

// === Routes ===

fn route_errors(r: &RouteSummary, found: &mut Vec<Finding>) {
    // A queue's 503s are the queueing findings'.
    let failed = r.errors_5xx.saturating_sub(r.queue_rejected);
    if r.requests < MIN_REQUESTS || failed == 0 {
        return;
    }
    let share = failed as f64 / r.requests as f64;
    if share < ERROR_WARNING {
        return;
    }
    found.push(Finding::new(
        Kind::UpstreamErrors,
        if share >= ERROR_CRITICAL { Severity::Critical } else { Severity::Warning },
        At { route: Some(&r.route), ..At::default() },
        format!(
            "{} of {} requests on route {} were answered with a 5xx ({})",
            failed, r.requests, r.route, percent(share)
        ),
        "the access log's `error` and `upstream` fields say which upstream failed and how; see the upstream findings",
    ));
}

fn rate_limited(r: &RouteSummary, found: &mut Vec<Finding>) {
    if r.rate_limited == 0 {
        return;
    }
    let share = r.rate_limited as f64 / r.requests.max(r.rate_limited) as f64;
    let severity = if r.requests < MIN_REQUESTS || share < LIMITED_WARNING {
        Severity::Info
    } else if share >= LIMITED_CRITICAL {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let by: Vec<String> = r
        .limited_by
        .iter()
        .map(|c| format!("{} ({})", c.name, c.count))
        .collect();
    let by = if by.is_empty() {
        String::new()
    } else {
        format!(" by {}", by.join(", "))
    };
    found.push(Finding::new(
        Kind::RateLimited,
        severity,
        At { route: Some(&r.route), ..At::default() },
        format!(
            "{} of {} requests on route {} were refused with 429 ({}){by}",
            r.rate_limited, r.requests, r.route, percent(share)
        ),
        "if this traffic is legitimate, raise the limit's rate or burst; otherwise tell the clients to honour retry-after and spread their requests",
    ));
}

fn queue_rejections(r: &RouteSummary, found: &mut Vec<Finding>) {
    if r.queue_rejected == 0 {
        return;
    }
    let share = r.queue_rejected as f64 / r.requests.max(r.queue_rejected) as f64;
    found.push(Finding::new(
        Kind::Queueing,
        if share >= LIMITED_CRITICAL { Severity::Critical } else { Severity::Warning },
        At { route: Some(&r.route), ..At::default() },
        format!(
            "{} of {} requests on route {} were refused with 503 by a full queue or a queue timeout ({})",
            r.queue_rejected, r.requests, r.route, percent(share)
        ),
        "raise the upstream's queue size or timeout to absorb bursts, or its concurrency if the model server has room",
    ));
}

fn gateway_overhead(scrape: &Scrape, r: &RouteSummary, found: &mut Vec<Finding>) {
    if r.requests < MIN_REQUESTS {
        return;
    }
    let gateway = scrape.histogram(GATEWAY, &[("route", &r.route)]);
    // Queue wait is part of the gateway's time, but the queueing findings judge it.
    let queued = scrape.histogram(
        GATEWAY_PHASE,
        &[("route", &r.route), ("phase", "queue_wait")],
    );
    let own_mean = gateway
        .mean()
        .map(|_| (gateway.sum - queued.sum).max(0.0) / gateway.total() as f64);
    let queue_share = r.queue_share.unwrap_or(0.0);
    let own_share = r.gateway_share.map(|g| (g - queue_share).max(0.0));
    let slow_p99 = r
        .gateway_p99_s
        .filter(|p| *p >= GATEWAY_P99_S && queue_share < 0.01);
    let heavy =
        own_share.filter(|s| *s >= GATEWAY_SHARE && own_mean.is_some_and(|m| m >= GATEWAY_MEAN_S));
    if slow_p99.is_none() && heavy.is_none() {
        return;
    }
    found.push(Finding::new(
        Kind::GatewayOverhead,
        Severity::Warning,
        At { route: Some(&r.route), ..At::default() },
        format!(
            "sluice itself spends {} (p99) of route {}'s requests, {} of their time{}",
            r.gateway_p99_s.map_or("?".to_string(), ms),
            r.route,
            own_share.map_or("?".to_string(), percent),
            // A hit is answered by sluice alone: all of its time is gateway time.
            if r.cache_hits > 0 { " (cache hits count whole)" } else { "" }
        ),
        "see sluice_gateway_phase_seconds for the phase that takes the time (body_read: slow clients or big bodies; cache_lookup: a slow cache tier; limits: Redis), and the process's CPU",
    ));
}

fn low_cache_hit_rate(scrape: &Scrape, r: &RouteSummary, found: &mut Vec<Finding>) {
    let Some(rate) = r.cache_hit_rate else { return };
    if r.cache_lookups < MIN_REQUESTS || rate >= LOW_HIT_RATE {
        return;
    }
    let evictions = count(scrape.sum(CACHE_EVICTIONS, &[]));
    let (why, suggestion) = if r.cache_bypasses * 2 >= r.cache_lookups {
        (
            format!("{} of the {} lookups bypassed the cache", r.cache_bypasses, r.cache_lookups),
            "requests that skip the cache: `cache-control: no-store`/`no-cache` from clients, no body, or requests the route's cache rules do not cache (see docs/cache.md)",
        )
    } else if r.cache_hits == 0 {
        (
            "no request repeated an earlier one: every lookup was a miss".to_string(),
            "caching only pays when identical requests repeat; if these prompts never do, turn the cache off on this route to save the lookups and the memory",
        )
    } else if evictions > 0 {
        (
            format!("the caches evicted {evictions} entries in the window"),
            "entries leave before they are asked for again: give the cache more room (max_bytes) or a longer ttl",
        )
    } else {
        (
            "few requests repeat".to_string(),
            "a longer ttl keeps entries for repeats further apart; check that clients send the same request (model, parameters, messages) each time",
        )
    };
    found.push(Finding::new(
        Kind::LowCacheHitRate,
        Severity::Warning,
        At {
            route: Some(&r.route),
            ..At::default()
        },
        format!(
            "route {} answered {} of {} cache lookups from the cache ({}): {why}",
            r.route,
            r.cache_hits,
            r.cache_lookups,
            percent(rate)
        ),
        suggestion,
    ));
}
