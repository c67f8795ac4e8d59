//! What an experiment's variants cost: tokens and dollars per route and variant, and the
//! configured weights (so a dashboard can set the planned share beside the actual one).

use super::Metrics;
use prometheus::{Counter, CounterVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone)]
pub(super) struct AbFamilies {
    tokens: IntCounterVec,
    cost: CounterVec,
    weights: IntGaugeVec,
    /// The weight series exported now, so the next policy removes only the ones it dropped.
    weight_labels: Arc<Mutex<Vec<[String; 3]>>>,
}

impl AbFamilies {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        Ok(AbFamilies {
            tokens: IntCounterVec::new(
                Opts::new(
                    "sluice_tokens_total",
                    "Tokens upstreams billed, by route, variant and kind (prompt, completion)",
                ),
                &["route", "variant", "kind"],
            )?,
            cost: CounterVec::new(
                Opts::new(
                    "sluice_cost_usd_total",
                    "What upstream answers cost in US dollars, from the tokens and `pricing:`",
                ),
                &["route", "variant"],
            )?,
            weights: IntGaugeVec::new(
                Opts::new(
                    "sluice_split_weight",
                    "A variant's configured weight; position 0 is the first (the baseline)",
                ),
                &["route", "variant", "position"],
            )?,
            weight_labels: Arc::default(),
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.tokens.clone()),
            Box::new(self.cost.clone()),
            Box::new(self.weights.clone()),
        ]
    }
}

/// One route variant's token and cost counters.
#[derive(Clone)]
pub struct UsageMetrics {
    pub prompt: IntCounter,
    pub completion: IntCounter,
    pub cost_usd: Counter,
}

impl Metrics {
    /// The usage handles of a route's variant (`""` on a route without a split).
    #[must_use]
    pub fn usage(&self, route: &str, variant: &str) -> UsageMetrics {
        let t = &self.ab.tokens;
        UsageMetrics {
            prompt: t.with_label_values(&[route, variant, "prompt"]),
            completion: t.with_label_values(&[route, variant, "completion"]),
            cost_usd: self.ab.cost.with_label_values(&[route, variant]),
        }
    }

    /// Exports `(route, variant, weight)` in config order and removes the variants a reload
    /// dropped; new series are set first, so a scrape never sees a route without weights.
    pub fn set_split_weights(&self, weights: &[(&str, &str, u32)]) {
        let mut current = Vec::with_capacity(weights.len());
        let mut position = 0;
        let mut route = None;
        for (r, variant, weight) in weights {
            position = if route == Some(*r) { position + 1 } else { 0 };
            route = Some(*r);
            let labels = [r.to_string(), variant.to_string(), position.to_string()];
            self.ab
                .weights
                .with_label_values(&labels.each_ref().map(String::as_str))
                .set(i64::from(*weight));
            current.push(labels);
        }
        let mut exported = self
            .ab
            .weight_labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for gone in exported.iter().filter(|l| !current.contains(l)) {
            let _ = self
                .ab
                .weights
                .remove_label_values(&gone.each_ref().map(String::as_str));
        }
        *exported = current;
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn usage_and_weights_are_exported_per_variant() {
        let m = Metrics::new("0").unwrap();
        let u = m.usage("chat", "candidate");
        u.prompt.inc_by(10);
        u.completion.inc_by(5);
        u.cost_usd.inc_by(0.25);
        m.set_split_weights(&[("chat", "old", 1)]);
        m.set_split_weights(&[("chat", "control", 80), ("chat", "candidate", 20)]);
        let text = m.encode();
        for line in [
            r#"sluice_tokens_total{kind="prompt",route="chat",variant="candidate"} 10"#,
            r#"sluice_tokens_total{kind="completion",route="chat",variant="candidate"} 5"#,
            r#"sluice_cost_usd_total{route="chat",variant="candidate"} 0.25"#,
            r#"sluice_split_weight{position="0",route="chat",variant="control"} 80"#,
            r#"sluice_split_weight{position="1",route="chat",variant="candidate"} 20"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains(r#"variant="old""#), "{text}");
    }
}
