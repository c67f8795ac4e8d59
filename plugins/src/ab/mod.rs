//! A/B experiments: which variant a request gets ([`split`]), and the analysis behind
//! `sluice ab-report`: what each variant did, read from metrics ([`exposition`]), compared
//! against the baseline with fixed-horizon and always-valid tests ([`stats`], [`report`]).

pub mod exposition;
pub mod report;
pub mod split;
pub mod stats;

use serde::Serialize;

/// A latency histogram over one window: per-bucket counts (not cumulative) under ascending
/// upper bounds in seconds, the last bound `f64::INFINITY`; `sum` is the total of all samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
}

/// What one variant of a route did over the report's window (or since start, for totals).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VariantTotals {
    pub variant: String,
    /// Requests answered (`sluice_requests_total`, every code).
    pub requests: u64,
    /// Of those, answered with a 5xx (by the upstream or by sluice).
    pub errors: u64,
    /// `sluice_request_duration_seconds`: request start to last byte.
    pub duration: Histogram,
    /// `sluice_upstream_ttfb_seconds`, summed over upstreams.
    pub ttfb: Histogram,
    /// `sluice_cache_requests_total`: lookups answered from a tier or a coalesced flight.
    pub cache_hits: u64,
    /// Every cache lookup (hit, coalesced, miss, bypass); 0 when the route does not cache.
    pub cache_lookups: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `sluice_cost_usd_total`; 0 without `pricing:`.
    pub cost_usd: f64,
}
