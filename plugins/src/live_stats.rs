//! What the status page shows: per route, endpoint and variant figures over the last few
//! seconds, from two scrapes of sluice's own metrics, and a short history for sparklines.
//! Plain inputs (parsed scrapes, seconds), no clock and no I/O.

use crate::ab::exposition::{difference, is_cumulative, Sample, Scrape};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// How many points of history a route keeps (one per sample the page asks for).
pub const HISTORY_POINTS: usize = 180;

/// The `/admin/stats` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiveStats {
    /// Seconds the figures cover (0 before there are two samples).
    pub window_s: f64,
    pub routes: Vec<RouteStats>,
    pub endpoints: Vec<EndpointStats>,
    pub variants: Vec<VariantShare>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteStats {
    pub route: String,
    /// Answers in the window.
    pub requests: f64,
    pub rps: f64,
    /// Share of answers with a 5xx status.
    pub error_rate: Option<f64>,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    /// The 99th percentile of the time sluice itself spent (all but the upstream).
    pub gateway_p99_s: Option<f64>,
    /// Hits among lookups; `None` on a route that does not cache.
    pub cache_hit_rate: Option<f64>,
    /// 429 answers per second.
    pub rate_limited: f64,
    /// req/s at each earlier sample, oldest first.
    pub rps_history: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointStats {
    pub upstream: String,
    pub endpoint: String,
    pub healthy: bool,
    pub ewma_s: f64,
    pub inflight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantShare {
    pub route: String,
    pub variant: String,
    /// Share of the route's answers in the window.
    pub share: Option<f64>,
    /// The configured share (its weight over the route's total).
    pub weight_share: Option<f64>,
}

/// The figures between `old` and `new`, taken `window_s` apart. Both come from one process, so
/// its counters only grow; if they did not, the window counts nothing rather than guess.
#[must_use]
pub fn between(old: &Scrape, new: &Scrape, window_s: f64) -> LiveStats {
    let delta = difference(old, new, is_cumulative)
        .or_else(|_| difference(new, new, is_cumulative))
        .unwrap_or_default();
    let routes = route_names(new)
        .into_iter()
        .map(|route| route_stats(&delta, &route, window_s))
        .collect();
    LiveStats {
        window_s,
        routes,
        endpoints: endpoints(new),
        variants: variants(&delta),
    }
}

fn route_names(scrape: &Scrape) -> Vec<String> {
    let mut names: Vec<String> = scrape
        .matching("sluice_request_duration_seconds_count", &[])
        .filter_map(|s| s.label("route"))
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// One route's figures from `delta`, the window's increases.
fn route_stats(delta: &Scrape, route: &str, window_s: f64) -> RouteStats {
    let r = [("route", route)];
    let requests = delta.sum("sluice_requests_total", &r);
    let errors = delta
        .matching("sluice_requests_total", &r)
        .filter(|s| s.label("code").is_some_and(|c| c.starts_with('5')))
        .map(|s| s.value)
        .fold(0.0, |a, b| a + b);
    let limited = delta.sum(
        "sluice_requests_total",
        &[("route", route), ("code", "429")],
    );
    let cache = |result: &str| {
        delta.sum(
            "sluice_cache_requests_total",
            &[("route", route), ("result", result)],
        )
    };
    // A coalesced request was answered without its own upstream call: a hit.
    let (hits, misses) = (cache("hit") + cache("coalesced"), cache("miss"));
    let caches = delta.matching("sluice_cache_requests_total", &r).count() > 0;
    let per_second = |n: f64| if window_s > 0.0 { n / window_s } else { 0.0 };
    let durations = delta.histogram("sluice_request_duration_seconds", &r);
    RouteStats {
        route: route.to_string(),
        requests,
        rps: per_second(requests),
        error_rate: ratio(errors, requests),
        p50_s: durations.quantile(0.5),
        p99_s: durations.quantile(0.99),
        gateway_p99_s: delta.histogram("sluice_gateway_seconds", &r).quantile(0.99),
        cache_hit_rate: if caches {
            ratio(hits, hits + misses)
        } else {
            None
        },
        rate_limited: per_second(limited),
        rps_history: Vec::new(),
    }
}

fn endpoints(scrape: &Scrape) -> Vec<EndpointStats> {
    let gauge = |name: &str, s: &Sample| {
        let labels = [
            ("upstream", s.label("upstream").unwrap_or_default()),
            ("endpoint", s.label("endpoint").unwrap_or_default()),
        ];
        let value = scrape.matching(name, &labels).map(|g| g.value).next();
        value
    };
    scrape
        .matching("sluice_upstream_healthy", &[])
        .map(|s| EndpointStats {
            upstream: s.label("upstream").unwrap_or_default().to_string(),
            endpoint: s.label("endpoint").unwrap_or_default().to_string(),
            healthy: s.value >= 1.0,
            ewma_s: gauge("sluice_upstream_ewma_seconds", s).unwrap_or(0.0),
            inflight: gauge("sluice_upstream_inflight", s).unwrap_or(0.0),
        })
        .collect()
}

fn variants(delta: &Scrape) -> Vec<VariantShare> {
    let weights: Vec<&Sample> = delta.matching("sluice_split_weight", &[]).collect();
    let answers = |labels: &[(&str, &str)]| delta.sum("sluice_requests_total", labels);
    weights
        .iter()
        .map(|w| {
            let route = w.label("route").unwrap_or_default();
            let variant = w.label("variant").unwrap_or_default();
            let total_weight = weights
                .iter()
                .filter(|o| o.label("route") == Some(route))
                .map(|o| o.value)
                .fold(0.0, |a, b| a + b);
            VariantShare {
                route: route.to_string(),
                variant: variant.to_string(),
                share: ratio(
                    answers(&[("route", route), ("variant", variant)]),
                    answers(&[("route", route)]),
                ),
                weight_share: ratio(w.value, total_weight),
            }
        })
        .collect()
}

/// The scrapes the page's figures come from, and each route's req/s history.
#[derive(Debug, Default)]
pub struct History {
    /// `(seconds, scrape)`, oldest first; only the ones within [`Self::WINDOW_S`] of the newest.
    samples: VecDeque<(f64, Scrape)>,
    rps: BTreeMap<String, VecDeque<f64>>,
}

impl History {
    /// Figures are taken over about this many seconds (or what there is).
    pub const WINDOW_S: f64 = 5.0;
    /// Samples closer together than this reuse the newest (several pages open).
    pub const MIN_GAP_S: f64 = 0.5;

    /// Whether no sample was taken yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Whether a sample taken at `now_s` would be kept.
    #[must_use]
    pub fn wants_sample(&self, now_s: f64) -> bool {
        self.samples
            .back()
            .is_none_or(|(t, _)| now_s - t >= Self::MIN_GAP_S)
    }

    /// Adds a sample taken at `now_s` and returns the figures over the window it closes.
    pub fn add(&mut self, now_s: f64, scrape: Scrape) -> LiveStats {
        self.samples.push_back((now_s, scrape));
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now_s - t >= Self::WINDOW_S)
        {
            self.samples.pop_front();
        }
        let stats = self.current();
        for r in &stats.routes {
            let points = self.rps.entry(r.route.clone()).or_default();
            points.push_back(r.rps);
            if points.len() > HISTORY_POINTS {
                points.pop_front();
            }
        }
        self.rps
            .retain(|route, _| stats.routes.iter().any(|r| &r.route == route));
        self.with_history(stats)
    }

    /// The figures over the samples held now.
    #[must_use]
    pub fn latest(&self) -> LiveStats {
        self.with_history(self.current())
    }

    fn current(&self) -> LiveStats {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, old)), Some((t1, new))) if t1 > t0 => between(old, new, t1 - t0),
            (_, Some((_, new))) => between(new, new, 0.0),
            _ => LiveStats::default(),
        }
    }

    fn with_history(&self, mut stats: LiveStats) -> LiveStats {
        for r in &mut stats.routes {
            r.rps_history = self
                .rps
                .get(&r.route)
                .map(|p| p.iter().copied().collect())
                .unwrap_or_default();
        }
        stats
    }
}

#[cfg(test)]
mod tests;
