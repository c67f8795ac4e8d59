//! What a finished request was, as one record: the access log and the metrics both read it,
//! so neither learns how the proxy is built and logging records nothing as a side effect.

use crate::config::keys::ClientKey;
use crate::config::policy::{Lane, Route};
use crate::config::Policy;
use bytes::Bytes;
use sluice_plugins::metrics::{GenAiRequest, Metrics, Operation, PhaseTimes};
use sluice_plugins::trace_context::TraceParent;
use std::time::{Duration, Instant};

/// One request, from the first byte in to the last byte out.
pub struct Finished<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a Route>,
    /// The route's lane (its A/B variant) the request took.
    pub lane: Option<&'a Lane>,
    /// Which of the route's upstreams answered: 0 its own, then its fallbacks.
    pub hop: usize,
    pub endpoint: Option<&'a str>,
    /// The status the client got, if a response head was sent.
    pub status: Option<u16>,
    /// Whether that status came from an upstream (vs. made by the gateway or a cache hit).
    pub served: bool,
    pub duration: Duration,
    pub ttfb: Option<Duration>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// `hit`, `miss`, `bypass`, `coalesced`, or empty when the route does not cache.
    pub cache: &'static str,
    pub error: Option<&'a str>,
    /// The caller's gateway key, when it presented one of `keys:`.
    pub key: Option<&'a ClientKey>,
    /// `x-request-id` as the client and the upstream saw it (empty if never stamped).
    pub request_id: &'a str,
    /// Whether that id is the client's own (else it is the trace id).
    pub client_request_id: bool,
    /// The trace the request belongs to, with sluice's span.
    pub trace: Option<&'a TraceParent>,
    /// The client's span, the parent of sluice's, when it sent one.
    pub parent_span: Option<[u8; 8]>,
    /// What the answer used, on a route that meters usage.
    pub usage: Option<&'a RequestUsage>,
    /// When the request started, for the instants of its tries.
    pub start: Instant,
    /// Every try at an upstream, in order.
    pub tries: &'a [TryRecord],
    /// The request's and response's bodies, on a route with `log_bodies: true`.
    pub bodies: Option<&'a LoggedBodies>,
    /// What each phase of the request path took.
    pub phases: &'a PhaseTimes,
    /// When the answer's first body bytes went to the client.
    pub first_body: Option<Instant>,
    /// The request's `model`, when it was read.
    pub model: Option<&'a str>,
}

impl Finished<'_> {
    /// The time sluice itself spent: all of it but the tries' time at the upstream.
    #[must_use]
    pub fn gateway_time(&self) -> Duration {
        let upstream: Duration = self.tries.iter().map(|t| t.end - t.start).sum();
        self.duration.saturating_sub(upstream)
    }
}

/// The first bytes of a request's and its response's bodies, for the usage log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggedBodies {
    pub request: Bytes,
    pub response: Vec<u8>,
    /// Whether either was longer than what was kept.
    pub truncated: bool,
}

/// One try at an upstream endpoint, for its trace span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryRecord {
    pub hop: usize,
    pub endpoint: usize,
    /// The try's span id (never 0): the `traceparent` parent the endpoint saw.
    pub span: u64,
    pub start: Instant,
    pub end: Instant,
    pub status: Option<u16>,
    /// Why it failed (`connect`, `timeout`, `5xx`...), if it did.
    pub failure: Option<&'static str>,
}

/// One answer's tokens and cost, as counted in `sluice_tokens_total` and `sluice_cost_usd_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestUsage {
    /// The request's `model`.
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// `None` when `pricing:` has no price for the model.
    pub cost_usd: Option<f64>,
}

/// Sets the gauges read from live state when metrics are scraped rather than on every request:
/// each endpoint's (healthy, in flight, latency estimate) and each local key budget's balance.
/// Healthy means no health check fails it, no ejection holds it, and its last tries (as many
/// as eject, 5 without `outlier:`) did not all fail.
pub fn refresh_gauges(policy: &Policy, now: Instant) {
    for budget in policy.keys.all.iter().filter_map(|k| k.budget.as_ref()) {
        budget.refresh_gauge();
    }
    for up in policy.routes.iter().flat_map(Route::upstreams) {
        let streak = up.outlier.unwrap_or_default().consecutive_failures;
        for (ep, stats) in up.endpoints.iter().zip(up.balancer.all_stats()) {
            ep.metrics
                .healthy
                .set(i64::from(stats.looks_healthy(now, streak)));
            ep.metrics
                .inflight
                .set(i64::try_from(stats.inflight()).unwrap_or(i64::MAX));
            ep.metrics.ewma.set(stats.latency_ns(now) / 1e9);
        }
    }
}

/// Records a finished request in the route's (or the unrouted) metrics.
pub fn record_metrics(f: &Finished<'_>, policy: &Policy) {
    match (f.route, f.status) {
        (Some(r), status) => {
            // Answered before the split phase (a bad body, say): no variant to count it under.
            let (metrics, fallback) = match f.lane {
                Some(l) => (&l.metrics, l.fallback.as_slice()),
                None => (&r.unassigned, &[][..]),
            };
            metrics.duration.observe(f.duration.as_secs_f64());
            r.gateway_time.observe(f.gateway_time(), f.phases);
            record_genai(f, &policy.metrics);
            if let Some(status) = status {
                if f.served {
                    match f.hop.checked_sub(1).and_then(|k| fallback.get(k)) {
                        Some(fallback) => fallback.served.inc(status),
                        None => metrics.served.inc(status),
                    }
                } else {
                    metrics.local.inc(status);
                }
            }
        }
        (None, Some(status)) => policy.unrouted.inc(status),
        (None, None) => {}
    }
}

/// The request in the OpenTelemetry GenAI families, when its path is one of their operations.
fn record_genai(f: &Finished<'_>, metrics: &Metrics) {
    let Some(operation) = Operation::from_path(f.path) else {
        return;
    };
    let provider = f
        .lane
        .and_then(|l| l.hop(f.hop))
        .map_or("", |u| u.name.as_str());
    let code;
    let error_type = match f.status {
        Some(status) if status >= 400 => {
            code = status.to_string();
            code.as_str()
        }
        None => "aborted",
        Some(_) if f.error.is_some() => "aborted",
        Some(_) => "",
    };
    metrics.record_genai(&GenAiRequest {
        operation,
        provider,
        model: f.model.unwrap_or(""),
        duration: f.duration,
        error_type,
        first_token: f.first_body.map(|t| t.saturating_duration_since(f.start)),
        input_tokens: f.usage.map(|u| u.input_tokens),
        output_tokens: f.usage.map(|u| u.output_tokens),
    });
}
