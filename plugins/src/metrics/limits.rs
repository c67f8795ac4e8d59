//! The limits' families: rate-limit decisions, token reservations and charges, rejections by
//! reason, and each upstream's admission queue.

use super::{Metrics, LATENCY_BUCKETS};
use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

#[derive(Clone)]
pub(super) struct LimitFamilies {
    decisions: IntCounterVec,
    fallbacks: IntCounterVec,
    keys: IntGaugeVec,
    reserved: IntCounterVec,
    charged: IntCounterVec,
    rejections: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_wait: HistogramVec,
    redis_errors: IntCounter,
    key_spend: CounterVec,
    queue_max: IntGaugeVec,
    token_remaining: IntGaugeVec,
    key_budget_remaining: GaugeVec,
}

impl LimitFamilies {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(LimitFamilies {
            decisions: counter(
                "sluice_ratelimit_decisions_total",
                "Limit checks by route, limit and result (allowed, limited)",
                &["route", "limit", "result"],
            )?,
            fallbacks: counter(
                "sluice_ratelimit_fallbacks_total",
                "Shared-limit checks decided by the local fallback bucket because Redis was unreachable",
                &["route", "limit"],
            )?,
            keys: IntGaugeVec::new(
                Opts::new(
                    "sluice_ratelimit_keys",
                    "Client keys with a local bucket that is not full, by route and limit",
                ),
                &["route", "limit"],
            )?,
            reserved: counter(
                "sluice_tokens_reserved_total",
                "Tokens reserved on admission (estimate), by route",
                &["route"],
            )?,
            charged: counter(
                "sluice_tokens_charged_total",
                "Tokens charged when responses ended (usage, or counted from the stream), by route",
                &["route"],
            )?,
            rejections: counter(
                "sluice_rejections_total",
                "Requests refused before the upstream, by route and reason",
                &["route", "reason"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "sluice_queue_depth",
                    "Requests waiting for an upstream's concurrency slot",
                ),
                &["upstream"],
            )?,
            queue_wait: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_queue_wait_seconds",
                    "Time requests waited in an upstream's admission queue",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["upstream"],
            )?,
            redis_errors: IntCounter::new(
                "sluice_ratelimit_redis_errors_total",
                "Failed Redis operations of the shared limits",
            )?,
            key_spend: CounterVec::new(
                Opts::new(
                    "sluice_key_spend_usd_total",
                    "US dollars spent by each client key with a budget, at pricing: prices",
                ),
                &["key", "team"],
            )?,
            queue_max: IntGaugeVec::new(
                Opts::new(
                    "sluice_queue_max",
                    "How many requests an upstream's admission queue holds (its `queue.max`)",
                ),
                &["upstream"],
            )?,
            token_remaining: IntGaugeVec::new(
                Opts::new(
                    "sluice_token_budget_remaining",
                    "Tokens the emptiest bucket of a token limit may still take (this instance's buckets)",
                ),
                &["route", "limit"],
            )?,
            key_budget_remaining: GaugeVec::new(
                Opts::new(
                    "sluice_key_budget_remaining_usd",
                    "US dollars left in a client key's budget (a budget kept by this instance)",
                ),
                &["key", "team"],
            )?,
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.decisions.clone()),
            Box::new(self.fallbacks.clone()),
            Box::new(self.keys.clone()),
            Box::new(self.reserved.clone()),
            Box::new(self.charged.clone()),
            Box::new(self.rejections.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.queue_wait.clone()),
            Box::new(self.redis_errors.clone()),
            Box::new(self.key_spend.clone()),
            Box::new(self.queue_max.clone()),
            Box::new(self.token_remaining.clone()),
            Box::new(self.key_budget_remaining.clone()),
        ]
    }
}

/// Why a request was refused before reaching the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    RateLimit,
    TokenBudget,
    QueueFull,
    QueueTimeout,
}

impl Rejection {
    const ALL: [Rejection; 4] = [
        Rejection::RateLimit,
        Rejection::TokenBudget,
        Rejection::QueueFull,
        Rejection::QueueTimeout,
    ];

    /// The `reason` label.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Rejection::RateLimit => "rate_limit",
            Rejection::TokenBudget => "token_budget",
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
        }
    }
}

/// One limit's handles on one route.
#[derive(Clone)]
pub struct LimitMetrics {
    pub allowed: IntCounter,
    pub limited: IntCounter,
    pub fallback: IntCounter,
    pub keys: IntGauge,
}

impl LimitMetrics {
    pub fn decided(&self, allowed: bool) {
        if allowed {
            self.allowed.inc();
        } else {
            self.limited.inc();
        }
    }
}

/// A route's token and rejection handles.
#[derive(Clone)]
pub struct RouteLimitMetrics {
    pub reserved: IntCounter,
    pub charged: IntCounter,
    rejections: [IntCounter; 4],
}

impl RouteLimitMetrics {
    pub fn reject(&self, reason: Rejection) {
        if let Some(i) = Rejection::ALL.iter().position(|r| *r == reason) {
            self.rejections[i].inc();
        }
    }
}

/// An upstream's admission queue handles.
#[derive(Clone)]
pub struct QueueMetrics {
    pub depth: IntGauge,
    pub wait: Histogram,
    /// The queue's capacity, set when the policy is compiled.
    pub max: IntGauge,
}

impl Metrics {
    /// Handles for limit `limit` of route `route`.
    #[must_use]
    pub fn limit(&self, route: &str, limit: &str) -> LimitMetrics {
        let l = &self.limits;
        LimitMetrics {
            allowed: l.decisions.with_label_values(&[route, limit, "allowed"]),
            limited: l.decisions.with_label_values(&[route, limit, "limited"]),
            fallback: l.fallbacks.with_label_values(&[route, limit]),
            keys: l.keys.with_label_values(&[route, limit]),
        }
    }

    /// The spend counter of client key `key` (of `team`, or empty).
    #[must_use]
    pub fn key_spend(&self, key: &str, team: &str) -> Counter {
        self.limits.key_spend.with_label_values(&[key, team])
    }

    /// A route's token and rejection handles.
    #[must_use]
    pub fn route_limits(&self, route: &str) -> RouteLimitMetrics {
        let l = &self.limits;
        RouteLimitMetrics {
            reserved: l.reserved.with_label_values(&[route]),
            charged: l.charged.with_label_values(&[route]),
            rejections: Rejection::ALL.map(|r| l.rejections.with_label_values(&[route, r.name()])),
        }
    }

    /// An upstream's admission queue handles.
    #[must_use]
    pub fn queue(&self, upstream: &str) -> QueueMetrics {
        let l = &self.limits;
        QueueMetrics {
            depth: l.queue_depth.with_label_values(&[upstream]),
            wait: l.queue_wait.with_label_values(&[upstream]),
            max: l.queue_max.with_label_values(&[upstream]),
        }
    }

    /// What the emptiest bucket of token limit `limit` on `route` has left.
    #[must_use]
    pub fn token_budget_remaining(&self, route: &str, limit: &str) -> IntGauge {
        self.limits
            .token_remaining
            .with_label_values(&[route, limit])
    }

    /// What client key `key` (of `team`, or empty) has left of a budget this instance keeps.
    #[must_use]
    pub fn key_budget_remaining(&self, key: &str, team: &str) -> Gauge {
        self.limits
            .key_budget_remaining
            .with_label_values(&[key, team])
    }

    /// Failed Redis operations of the shared limits.
    #[must_use]
    pub fn limits_redis_errors(&self) -> IntCounter {
        self.limits.redis_errors.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::{Metrics, Rejection};

    #[test]
    fn limit_families_count_by_route_limit_and_reason() {
        let m = Metrics::new("0").unwrap();
        let l = m.limit("chat", "per-key");
        l.decided(true);
        l.decided(false);
        l.decided(false);
        let r = m.route_limits("chat");
        r.reserved.inc_by(120);
        r.reject(Rejection::QueueFull);
        m.queue("local").wait.observe(0.2);
        let text = m.encode();
        for line in [
            r#"sluice_ratelimit_decisions_total{limit="per-key",result="allowed",route="chat"} 1"#,
            r#"sluice_ratelimit_decisions_total{limit="per-key",result="limited",route="chat"} 2"#,
            r#"sluice_tokens_reserved_total{route="chat"} 120"#,
            r#"sluice_rejections_total{reason="queue_full",route="chat"} 1"#,
            r#"sluice_rejections_total{reason="rate_limit",route="chat"} 0"#,
            r#"sluice_queue_wait_seconds_count{upstream="local"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
