//! The analysis behind `sluice report`: what each route did over a window (traffic, latency,
//! where the time went, cache, limits) and findings that say what looks wrong and what to do
//! about it. Pure: it reads a [`Scrape`] whose counters are already increases over the window
//! (two scrapes' [`difference`](crate::ab::exposition::difference), or Prometheus
//! `increase()` results in the same shape) and whose gauges are current, so every rule is
//! tested on plain inputs.

mod findings;
mod routes;
mod text;

use crate::ab::exposition::Scrape;
use serde::Serialize;

pub use findings::{Finding, Kind, Severity};

/// Below this many requests (or lookups, or tries) in the window a ratio is not judged: on low
/// traffic one slow or failed request would read as a trend.
pub const MIN_REQUESTS: u64 = 20;

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Seconds the numbers cover; `None` for totals since start when the start is unknown.
    pub window_s: Option<f64>,
    pub routes: Vec<RouteSummary>,
    pub upstreams: Vec<UpstreamSummary>,
    /// Most severe first.
    pub findings: Vec<Finding>,
}

/// What one route did over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteSummary {
    pub route: String,
    /// Requests answered (`sluice_requests_total`, every code).
    pub requests: u64,
    /// `requests / window_s`; `None` without a window.
    pub rps: Option<f64>,
    /// Of those, answered with a 5xx (by the upstream or by sluice).
    pub errors_5xx: u64,
    /// `sluice_request_duration_seconds` quantiles; `None` without requests.
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    /// Shares of the requests' total time: waiting for the upstream, in sluice itself
    /// (queue wait included), and queued. `None` when sluice does not export
    /// `sluice_gateway_seconds` (or `sluice_gateway_phase_seconds` for the queue).
    pub upstream_share: Option<f64>,
    pub gateway_share: Option<f64>,
    pub queue_share: Option<f64>,
    /// `sluice_gateway_seconds` p99.
    pub gateway_p99_s: Option<f64>,
    /// Cache lookups by result; `cache_hit_rate` is (hit + coalesced) / lookups, `None` when the
    /// route made no lookups (it does not cache).
    pub cache_lookups: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_bypasses: u64,
    pub cache_hit_rate: Option<f64>,
    /// Upstream seconds and tokens the hits did not spend.
    pub cache_saved_s: f64,
    pub cache_saved_tokens: u64,
    /// Requests refused with 429 by a rate limit or token budget (`sluice_rejections_total`).
    pub rate_limited: u64,
    /// `limited` decisions per limit name (`sluice_ratelimit_decisions_total`).
    pub limited_by: Vec<Count>,
    /// Requests refused by the upstream's queue (503: `queue_full`, `queue_timeout`).
    pub queue_rejected: u64,
}

/// A count under a name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Count {
    pub name: String,
    pub count: u64,
}

/// What one upstream's endpoints did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamSummary {
    pub upstream: String,
    pub endpoints: Vec<EndpointSummary>,
    /// `sluice_queue_wait_seconds`: requests that waited and the p99 wait; 0/`None` without a queue.
    pub queued: u64,
    pub queue_wait_p99_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSummary {
    pub endpoint: String,
    /// Tries sent (`sluice_upstream_requests_total`).
    pub requests: u64,
    /// Failed tries (`sluice_upstream_errors_total`, every kind).
    pub errors: u64,
    /// The balancer's latency estimate now (`sluice_upstream_ewma_seconds`).
    pub ewma_s: Option<f64>,
    pub ejections: u64,
    /// `sluice_upstream_healthy` now.
    pub healthy: Option<bool>,
}

/// Summarizes every route and upstream in `scrape` (increases over `window_s`) and judges them.
#[must_use]
pub fn analyze(scrape: &Scrape, window_s: Option<f64>) -> Report {
    let routes = routes::routes(scrape, window_s);
    let upstreams = routes::upstreams(scrape);
    let findings = findings::judge(scrape, &routes, &upstreams);
    Report {
        window_s,
        routes,
        upstreams,
        findings,
    }
}

#[cfg(test)]
mod tests;
