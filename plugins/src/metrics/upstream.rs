//! Per-endpoint families (`sluice_upstream_*{upstream,endpoint}`): requests, errors by kind,
//! retries, ejections, health, in-flight, latency estimate and connection reuse; and per
//! upstream, the retries its retry budget refused. The endpoint label is the URL from the
//! config without its userinfo (the caller strips the password), never anything a client sent.

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

#[derive(Clone)]
pub(super) struct UpstreamFamilies {
    requests: IntCounterVec,
    errors: IntCounterVec,
    retries: IntCounterVec,
    ejections: IntCounterVec,
    healthy: IntGaugeVec,
    inflight: IntGaugeVec,
    ewma: GaugeVec,
    connections: IntCounterVec,
    budget_exhausted: IntCounterVec,
}

const LABELS: [&str; 2] = ["upstream", "endpoint"];

impl UpstreamFamilies {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &LABELS);
        Ok(UpstreamFamilies {
            requests: counter(
                "sluice_upstream_requests_total",
                "Tries sent to an endpoint (a retried request counts once per endpoint tried)",
                &LABELS,
            )?,
            errors: counter(
                "sluice_upstream_errors_total",
                "Failed tries by kind: connect, timeout, status_5xx, reset (no answer), aborted (mid-response)",
                &["upstream", "endpoint", "kind"],
            )?,
            retries: counter(
                "sluice_upstream_retries_total",
                "Tries at an endpoint that were retried elsewhere",
                &LABELS,
            )?,
            ejections: counter(
                "sluice_upstream_ejections_total",
                "Times passive outlier detection took an endpoint out",
                &LABELS,
            )?,
            healthy: gauge(
                "sluice_upstream_healthy",
                "1 when the endpoint is in the balancer (healthy and not ejected), else 0",
            )?,
            inflight: gauge(
                "sluice_upstream_inflight",
                "Requests in flight at the endpoint",
            )?,
            ewma: GaugeVec::new(
                Opts::new(
                    "sluice_upstream_ewma_seconds",
                    "The balancer's peak-EWMA estimate of the endpoint's time to first byte",
                ),
                &LABELS,
            )?,
            connections: counter(
                "sluice_upstream_connections_total",
                "Upstream connections used, new or reused from the pool",
                &["upstream", "endpoint", "reused"],
            )?,
            budget_exhausted: counter(
                "sluice_upstream_retry_budget_exhausted_total",
                "Retries the upstream's retry budget refused (the failed try was answered as it was)",
                &["upstream"],
            )?,
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.ejections.clone()),
            Box::new(self.healthy.clone()),
            Box::new(self.inflight.clone()),
            Box::new(self.ewma.clone()),
            Box::new(self.connections.clone()),
            Box::new(self.budget_exhausted.clone()),
        ]
    }

    pub(super) fn budget_exhausted(&self, upstream: &str) -> IntCounter {
        self.budget_exhausted.with_label_values(&[upstream])
    }

    pub(super) fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        let labels = [upstream, endpoint];
        let error = |kind: TryFailure| {
            self.errors
                .with_label_values(&[upstream, endpoint, kind.name()])
        };
        EndpointMetrics {
            requests: self.requests.with_label_values(&labels),
            errors: TryFailure::ALL.map(error),
            retries: self.retries.with_label_values(&labels),
            ejections: self.ejections.with_label_values(&labels),
            healthy: self.healthy.with_label_values(&labels),
            inflight: self.inflight.with_label_values(&labels),
            ewma: self.ewma.with_label_values(&labels),
            connections: ConnectionMetrics {
                new: self
                    .connections
                    .with_label_values(&[upstream, endpoint, "false"]),
                reused: self
                    .connections
                    .with_label_values(&[upstream, endpoint, "true"]),
            },
        }
    }
}

/// How a try at an endpoint failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    Connect,
    Timeout,
    Status5xx,
    Reset,
    Aborted,
}

impl TryFailure {
    const ALL: [TryFailure; 5] = [
        TryFailure::Connect,
        TryFailure::Timeout,
        TryFailure::Status5xx,
        TryFailure::Reset,
        TryFailure::Aborted,
    ];

    /// The `kind` label.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TryFailure::Connect => "connect",
            TryFailure::Timeout => "timeout",
            TryFailure::Status5xx => "status_5xx",
            TryFailure::Reset => "reset",
            TryFailure::Aborted => "aborted",
        }
    }
}

/// One endpoint's handles, resolved when the policy is compiled. The gauges are set when
/// metrics are scraped, from the endpoint's live stats.
#[derive(Clone)]
pub struct EndpointMetrics {
    pub requests: IntCounter,
    errors: [IntCounter; 5],
    pub retries: IntCounter,
    pub ejections: IntCounter,
    pub healthy: IntGauge,
    pub inflight: IntGauge,
    pub ewma: Gauge,
    pub connections: ConnectionMetrics,
}

impl EndpointMetrics {
    pub fn failed(&self, kind: TryFailure) {
        if let Some(c) = self.errors.get(kind as usize) {
            c.inc();
        }
    }
}

/// New vs reused upstream connections for one endpoint.
#[derive(Clone)]
pub struct ConnectionMetrics {
    pub new: IntCounter,
    pub reused: IntCounter,
}

impl ConnectionMetrics {
    pub fn record(&self, reused: bool) {
        if reused {
            self.reused.inc()
        } else {
            self.new.inc()
        }
    }
}
