//! The metrics registry. Families are created once; the gateway resolves per-route handles
//! when it compiles a policy, so the request path never looks labels up by string.
//! Label values come only from config names (routes, upstreams, variants) and status codes.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

mod ab;
mod cache;
mod gateway_time;
mod genai;
mod limits;
mod upstream;

pub use ab::UsageMetrics;
pub use cache::{CacheResult, CacheTier, RouteCacheMetrics, TierMetrics};
pub use gateway_time::{GatewayTimeMetrics, Phase, PhaseTimes, GATEWAY_BUCKETS};
pub use genai::{GenAiRequest, Operation, MAX_MODELS};
pub use limits::{LimitMetrics, QueueMetrics, Rejection, RouteLimitMetrics};
pub use upstream::{ConnectionMetrics, EndpointMetrics, TryFailure};

/// Latency buckets in seconds: sub-millisecond gateway overhead up to long generations.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Every metric family sluice exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttfb: HistogramVec,
    inflight: IntGaugeVec,
    reloads: IntCounterVec,
    cache: cache::CacheFamilies,
    limits: limits::LimitFamilies,
    upstreams: upstream::UpstreamFamilies,
    ab: ab::AbFamilies,
    gateway: gateway_time::GatewayFamilies,
    genai: genai::GenAiFamilies,
}

impl Metrics {
    /// Registers all families; `version` goes into `sluice_build_info`.
    pub fn new(version: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_requests_total",
                "Requests answered, by route, upstream, variant and status code",
            ),
            &["route", "upstream", "variant", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_request_duration_seconds",
                "Time from request start to the last response byte",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "variant"],
        )?;
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "sluice_upstream_ttfb_seconds",
                "Time from sending to the upstream to its response header",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "upstream", "variant"],
        )?;
        let inflight = IntGaugeVec::new(
            Opts::new(
                "sluice_inflight_requests",
                "Requests being served, by route",
            ),
            &["route"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "sluice_config_reloads_total",
                "Configuration reloads, by result",
            ),
            &["result"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("sluice_build_info", "Build information"),
            &["version"],
        )?;
        build_info.with_label_values(&[version]).set(1);
        let cache = cache::CacheFamilies::new()?;
        let limits = limits::LimitFamilies::new()?;
        let upstreams = upstream::UpstreamFamilies::new()?;
        let ab = ab::AbFamilies::new()?;
        let gateway = gateway_time::GatewayFamilies::new()?;
        let genai = genai::GenAiFamilies::new()?;
        // CPU, resident memory, open files, start time: the standard `process_*` families.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for c in cache
            .collectors()
            .into_iter()
            .chain(limits.collectors())
            .chain(upstreams.collectors())
            .chain(ab.collectors())
            .chain(gateway.collectors())
            .chain(genai.collectors())
        {
            registry.register(c)?;
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(ttfb.clone()),
            Box::new(inflight.clone()),
            Box::new(reloads.clone()),
            Box::new(build_info),
        ] {
            registry.register(c)?;
        }
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            requests,
            duration,
            ttfb,
            inflight,
            reloads,
            cache,
            limits,
            upstreams,
            ab,
            gateway,
            genai,
        })
    }

    /// Handles for one route (and the upstream it sends to), resolved once per policy.
    #[must_use]
    pub fn route(&self, route: &str, upstream: &str, variant: &str) -> RouteMetrics {
        RouteMetrics {
            duration: self.duration.with_label_values(&[route, variant]),
            ttfb: self.ttfb.with_label_values(&[route, upstream, variant]),
            inflight: self.inflight.with_label_values(&[route]),
            served: self.codes(route, upstream, variant),
            local: self.codes(route, "", variant),
        }
    }

    /// Counters for requests no route matched.
    #[must_use]
    pub fn unrouted(&self) -> StatusCounters {
        self.codes("", "", "")
    }

    /// Handles for one endpoint of an upstream.
    #[must_use]
    pub fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        self.upstreams.endpoint(upstream, endpoint)
    }

    /// The count of retries `upstream`'s retry budget refused.
    #[must_use]
    pub fn retry_budget_exhausted(&self, upstream: &str) -> IntCounter {
        self.upstreams.budget_exhausted(upstream)
    }

    /// Counts one reload attempt.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// The Prometheus text exposition of every family.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn codes(&self, route: &str, upstream: &str, variant: &str) -> StatusCounters {
        StatusCounters {
            family: self.requests.clone(),
            labels: [route.to_string(), upstream.to_string(), variant.to_string()],
            by_code: (0..600).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// Pre-resolved handles for one route.
#[derive(Clone)]
pub struct RouteMetrics {
    pub duration: Histogram,
    pub ttfb: Histogram,
    pub inflight: IntGauge,
    /// Responses that came from the upstream.
    pub served: StatusCounters,
    /// Responses the gateway made itself before any upstream answered (400, 413, 502, ...).
    pub local: StatusCounters,
}

/// `sluice_requests_total` for fixed route/upstream/variant labels; a status code's counter is
/// resolved on its first use and then read lock-free.
#[derive(Clone)]
pub struct StatusCounters {
    family: IntCounterVec,
    labels: [String; 3],
    by_code: Box<[OnceLock<IntCounter>]>,
}

impl StatusCounters {
    /// Counts one response with `status`.
    pub fn inc(&self, status: u16) {
        if let Some(counter) = self.counter(status) {
            counter.inc();
        }
    }

    /// Exports `status`'s series at 0 before its first response, so a rate over a window that
    /// starts before the first request (Prometheus' `increase`) sees all of them.
    pub fn export(&self, status: u16) {
        let _ = self.counter(status);
    }

    fn counter(&self, status: u16) -> Option<&IntCounter> {
        let slot = self.by_code.get(usize::from(status))?;
        Some(slot.get_or_init(|| {
            let code = status.to_string();
            let [route, upstream, variant] = &self.labels;
            self.family
                .with_label_values(&[route.as_str(), upstream, variant, &code])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn exports_conventional_families() {
        let m = Metrics::new("1.2.3").unwrap();
        let r = m.route("chat", "local", "");
        r.served.inc(200);
        r.served.inc(200);
        r.local.inc(413);
        r.duration.observe(0.02);
        m.endpoint("local", "http://a:1").connections.record(true);
        m.reload(false);
        let text = m.encode();
        assert!(
            text.contains(
                r#"sluice_requests_total{code="200",route="chat",upstream="local",variant=""} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"sluice_requests_total{code="413",route="chat",upstream="",variant=""} 1"#
        ));
        assert!(
            text.contains(r#"sluice_request_duration_seconds_count{route="chat",variant=""} 1"#)
        );
        assert!(
            text.contains(r#"sluice_upstream_connections_total{endpoint="http://a:1",reused="true",upstream="local"} 1"#)
        );
        assert!(text.contains(r#"sluice_config_reloads_total{result="error"} 1"#));
        assert!(text.contains(r#"sluice_config_reloads_total{result="ok"} 0"#));
        assert!(text.contains(r#"sluice_build_info{version="1.2.3"} 1"#));
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{family} ")), "{family} missing");
        }
    }

    #[test]
    fn cache_families_count_by_route_result_and_tier() {
        use super::{CacheResult, CacheTier};
        let m = Metrics::new("0").unwrap();
        let c = m.route_cache("chat", "");
        c.record(CacheResult::Hit(CacheTier::Redis));
        c.record(CacheResult::Miss);
        c.saved_tokens.inc_by(7);
        m.cache_tier(CacheTier::Disk).bytes.set(123);
        let text = m.encode();
        assert!(text.contains(
            r#"sluice_cache_requests_total{result="hit",route="chat",tier="redis",variant=""} 1"#
        ));
        assert!(text.contains(
            r#"sluice_cache_requests_total{result="miss",route="chat",tier="",variant=""} 1"#
        ));
        assert!(text.contains(r#"sluice_cache_saved_tokens_total{route="chat"} 7"#));
        assert!(text.contains(r#"sluice_cache_bytes{tier="disk"} 123"#));
    }

    #[test]
    fn out_of_range_status_is_ignored() {
        let m = Metrics::new("0").unwrap();
        m.unrouted().inc(999);
        assert!(!m.encode().contains("999"));
    }
}
