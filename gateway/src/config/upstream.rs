//! Upstreams as the proxy uses them: endpoints, the balancer over them, timeouts, retry
//! policy, health checks, outlier ejection and headers to set. Compiled from an
//! [`UpstreamSpec`], checking every field on the way.

use super::endpoint::{parse_endpoint_url, Endpoint, EndpointUrl, PeerTemplate, Timeouts};
use super::errors::Errors;
use super::locate::{field_path, Seg};
use super::needs::Needs;
use super::resilience::{compile_health, compile_outlier};
use super::shared::SharedState;
use super::spec::{BalanceSpec, RetryOnSpec, UpstreamSpec};
use http::header::{HeaderName, HeaderValue};
use pingora::utils::tls::WrappedX509;
use prometheus::IntCounter;
use sluice_plugins::balance::{Balancer, Strategy};
use sluice_plugins::health::HealthPolicy;
use sluice_plugins::limits::gate::ConcurrencyGate;
use sluice_plugins::metrics::QueueMetrics;
use sluice_plugins::outlier::OutlierPolicy;
use sluice_plugins::retry_budget::{BudgetShape, RetryBudget};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balancer: Balancer,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// How many retries the upstream may take, whatever `attempts` says.
    pub retry_budget: RetryBudget,
    /// Retries the budget refused (`sluice_upstream_retry_budget_exhausted_total`).
    pub budget_exhausted: IntCounter,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub idle_timeout: Duration,
    /// Admission control, when `max_concurrency` is set.
    pub admission: Option<Admission>,
    /// Active health checks, when `health:` is set.
    pub health: Option<HealthPolicy>,
    /// Passive outlier ejection, when `outlier:` is set.
    pub outlier: Option<OutlierPolicy>,
}

/// How many requests the upstream takes at once, and how long the others may wait.
pub struct Admission {
    pub gate: Arc<ConcurrencyGate>,
    /// Whether requests may wait for a slot (a queue of at least one).
    pub queues: bool,
    pub timeout: Duration,
    pub metrics: QueueMetrics,
}

/// `max_concurrency` and its queue as configured: (max, queue max, queue timeout).
#[derive(Debug, Clone, Copy)]
struct AdmissionSpec {
    max: usize,
    queue_max: usize,
    timeout: Duration,
}

/// When a failed try is tried again on another endpoint.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on_connect: bool,
    pub on_timeout: bool,
    pub statuses: Vec<u16>,
    /// Wait before retry n: `base` × 2ⁿ up to `max`, jittered down to half.
    pub backoff: Option<(Duration, Duration)>,
    /// The first bytes of a streamed request body kept for a retry (`retry.buffer`).
    pub buffer: usize,
}

impl RetryPolicy {
    #[must_use]
    pub fn on_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

impl Upstream {
    /// A queued request notices its client leaving only once its body is read.
    #[must_use]
    pub fn needs(&self) -> Needs {
        Needs::body_if(self.admission.as_ref().is_some_and(|a| a.queues))
    }

    /// Spends one retry from the budget; a refusal is counted.
    pub fn spend_retry(&self, now: Instant) -> bool {
        let granted = self.retry_budget.try_retry(now);
        if !granted {
            self.budget_exhausted.inc();
        }
        granted
    }
}

/// An upstream that passed every check, before it is attached to the shared state (endpoint
/// stats, metric handles): a file with errors must not leave traces there.
pub(super) struct CheckedUpstream {
    name: String,
    endpoints: Vec<CheckedEndpoint>,
    weights: Vec<u32>,
    strategy: Strategy,
    timeouts: Timeouts,
    retry: RetryPolicy,
    budget: BudgetShape,
    set_headers: Vec<(HeaderName, HeaderValue)>,
    idle_timeout: Duration,
    admission: Option<AdmissionSpec>,
    health: Option<HealthPolicy>,
    outlier: Option<OutlierPolicy>,
    dns_ttl: Duration,
}

struct CheckedEndpoint {
    parsed: EndpointUrl,
    authority: HeaderValue,
    template: PeerTemplate,
}

impl CheckedUpstream {
    pub(super) fn attach(self, shared: &SharedState) -> Upstream {
        let stats = self
            .endpoints
            .iter()
            .map(|ep| shared.stats_for(&self.name, &ep.parsed.url))
            .collect();
        let admission = self.admission.map(|a| {
            let metrics = shared.metrics.queue(&self.name);
            metrics
                .max
                .set(i64::try_from(a.queue_max).unwrap_or(i64::MAX));
            Admission {
                gate: shared.gate_for(&self.name, a.max, a.queue_max),
                queues: a.queue_max > 0,
                timeout: a.timeout,
                metrics,
            }
        });
        let endpoints = self
            .endpoints
            .into_iter()
            .map(|ep| {
                let metrics = shared.metrics.endpoint(&self.name, &ep.parsed.url);
                Endpoint::new(ep.parsed, ep.authority, ep.template, self.dns_ttl, metrics)
            })
            .collect();
        let budget_exhausted = shared.metrics.retry_budget_exhausted(&self.name);
        Upstream {
            admission,
            budget_exhausted,
            balancer: Balancer::new(self.strategy, &self.weights, stats),
            name: self.name,
            endpoints,
            health: self.health,
            outlier: self.outlier,
            timeouts: self.timeouts,
            retry: self.retry,
            retry_budget: RetryBudget::new(self.budget, Instant::now()),
            set_headers: self.set_headers,
            idle_timeout: self.idle_timeout,
        }
    }
}

/// Checks and builds the upstream `name`, recording every problem; `None` when there was one.
pub(super) fn compile_upstream(
    errors: &mut Errors,
    name: &str,
    up: &UpstreamSpec,
) -> Option<CheckedUpstream> {
    let before = errors.count();
    let base = field_path!["upstreams", name];
    let ca = match &up.tls.ca_file {
        Some(file) => load_ca(file)
            .map_err(|m| errors.at(&field_path![base; "tls", "ca_file"], m))
            .ok(),
        None => None,
    };
    let timeouts = Timeouts {
        connect: up.timeouts.connect.0,
        first_byte: up.timeouts.first_byte.0,
        idle: up.timeouts.idle.0,
    };
    if up.endpoints.is_empty() {
        errors.at(
            &field_path![base; "endpoints"],
            "must list at least one endpoint",
        );
    }
    let mut endpoints = Vec::new();
    let mut weights = Vec::new();
    for (i, ep) in up.endpoints.iter().enumerate() {
        let at = |field: &str| field_path![base; "endpoints", i, field];
        if ep.weight == 0 {
            errors.at(&at("weight"), "must be at least 1");
        }
        let parsed = match parse_endpoint_url(&ep.url) {
            Ok(p) => p,
            Err(m) => {
                errors.at(&at("url"), m);
                continue;
            }
        };
        let Ok(authority) = HeaderValue::from_str(&parsed.authority) else {
            errors.at(&at("url"), format!("`{}` has an invalid host", parsed.url));
            continue;
        };
        let template = PeerTemplate {
            tls: parsed.tls,
            sni: up.tls.sni.clone().unwrap_or_else(|| parsed.host.clone()),
            verify: up.tls.verify,
            ca: ca.clone(),
            http2: up.pool.http2,
            max_h2_streams: up.pool.max_h2_streams,
            timeouts,
            idle_timeout: up.pool.idle_timeout.0,
        };
        // A host name is resolved on first use, never at load.
        endpoints.push(CheckedEndpoint {
            parsed,
            authority,
            template,
        });
        weights.push(ep.weight);
    }
    let strategy = match up.balance {
        BalanceSpec::RoundRobin => Strategy::RoundRobin,
        BalanceSpec::Weighted => Strategy::Weighted,
        BalanceSpec::LeastOutstanding => Strategy::LeastOutstanding,
        BalanceSpec::PeakEwma => Strategy::PeakEwma,
    };
    let retry = compile_retry(errors, &base, up);
    let budget = compile_budget(errors, &base, up);
    let set_headers =
        super::split::compile_headers(errors, &field_path![base; "set_headers"], &up.set_headers);
    let admission = compile_admission(errors, &base, up);
    let health = compile_health(errors, &base, up.health.as_ref());
    let outlier = compile_outlier(errors, &base, up.outlier.as_ref());
    if up.pool.max_h2_streams == 0 {
        errors.at(
            &field_path![base; "pool", "max_h2_streams"],
            "must be at least 1",
        );
    }
    if up.dns_ttl.0 < Duration::from_secs(1) {
        errors.at(&field_path![base; "dns_ttl"], "must be at least 1s");
    }
    (errors.count() == before).then(|| CheckedUpstream {
        name: name.to_string(),
        endpoints,
        weights,
        strategy,
        timeouts,
        retry,
        budget,
        set_headers,
        admission,
        health,
        outlier,
        dns_ttl: up.dns_ttl.0,
        idle_timeout: up.pool.idle_timeout.0,
    })
}

fn compile_retry(errors: &mut Errors, base: &[Seg], up: &UpstreamSpec) -> RetryPolicy {
    let mut retry = RetryPolicy {
        attempts: up.retry.attempts,
        buffer: usize::try_from(up.retry.buffer.0).unwrap_or(usize::MAX),
        ..RetryPolicy::default()
    };
    for (i, on) in up.retry.on.iter().enumerate() {
        match on {
            RetryOnSpec::Status(s) if (400..=599).contains(s) => retry.statuses.push(*s),
            RetryOnSpec::Event(e) if e == "connect" => retry.on_connect = true,
            RetryOnSpec::Event(e) if e == "timeout" => retry.on_timeout = true,
            _ => errors.at(
                &field_path![base; "retry", "on", i],
                "expected `connect`, `timeout` or a status code 400-599",
            ),
        }
    }
    if let Some(b) = &up.retry.backoff {
        if b.base.0.is_zero() || b.max.0 < b.base.0 {
            errors.at(
                &field_path![base; "retry", "backoff"],
                "needs 0 < base <= max",
            );
        }
        retry.backoff = Some((b.base.0, b.max.0));
    }
    retry
}

fn compile_budget(errors: &mut Errors, base: &[Seg], up: &UpstreamSpec) -> BudgetShape {
    let b = &up.retry.budget;
    let at = |field: &str| field_path![base; "retry", "budget", field];
    if !(0.0..=10.0).contains(&b.ratio) {
        errors.at(&at("ratio"), "must be between 0 and 10");
    }
    if b.window.0 < Duration::from_secs(1) || b.window.0 > Duration::from_secs(3600) {
        errors.at(&at("window"), "must be between 1s and 1h");
    }
    BudgetShape {
        ratio: b.ratio,
        min_per_second: b.min_per_second,
        window: b.window.0,
    }
}

/// Reads a PEM bundle of CA certificates.
fn load_ca(path: &str) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = item.map_err(|e| format!("{path}: bad PEM: {e}"))?.to_vec();
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{path}: bad certificate: {e}"))?;
        certs.push(WrappedX509::new(der, pingora::utils::tls::parse_x509));
    }
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(certs.into())
}

fn compile_admission(
    errors: &mut Errors,
    base: &[Seg],
    up: &UpstreamSpec,
) -> Option<AdmissionSpec> {
    let queue = up.queue.as_ref();
    let Some(max) = up.max_concurrency else {
        if queue.is_some() {
            errors.at(
                &field_path![base; "queue"],
                "a queue needs `max_concurrency` on the upstream",
            );
        }
        return None;
    };
    if max == 0 {
        errors.at(&field_path![base; "max_concurrency"], "must be at least 1");
    }
    let timeout = queue.map_or(Duration::ZERO, |q| q.timeout.0);
    if queue.is_some() && timeout.is_zero() {
        errors.at(
            &field_path![base; "queue", "timeout"],
            "must be more than 0",
        );
    }
    Some(AdmissionSpec {
        max,
        queue_max: queue.map_or(0, |q| q.max),
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backoff_and_budget_are_checked() {
        let text = "\
upstreams:
  u:
    endpoints: [ { url: \"http://127.0.0.1:1\" } ]
    retry: { attempts: 1, backoff: { base: 2s, max: 1s }, budget: { ratio: -1, window: 0s } }
routes:
  - { name: r, upstream: u }
";
        let errs = super::super::policy::compile_text(text)
            .map(|_| ())
            .unwrap_err();
        for expected in [
            "upstreams.u.retry.backoff: needs 0 < base <= max",
            "upstreams.u.retry.budget.ratio: must be between 0 and 10",
            "upstreams.u.retry.budget.window: must be between 1s and 1h",
        ] {
            assert!(
                errs.iter().any(|e| e.contains(expected)),
                "{expected} in {errs:?}"
            );
        }
        let good = text
            .replace("base: 2s", "base: 100ms")
            .replace("ratio: -1, window: 0s", "ratio: 0.1");
        let p = super::super::policy::compile_text(&good).unwrap();
        let retry = &p.routes[0].lanes[0].upstream.retry;
        assert_eq!(
            retry.backoff,
            Some((Duration::from_millis(100), Duration::from_secs(1)))
        );
    }
}
