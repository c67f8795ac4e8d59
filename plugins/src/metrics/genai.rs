//! The OpenTelemetry GenAI semantic conventions' metrics, under their Prometheus names
//! (`gen_ai.server.request.duration` → `gen_ai_server_request_duration_seconds`, attribute dots
//! → underscores), so dashboards built for the conventions read sluice as they read a model server.

use super::Metrics;
use prometheus::{Histogram, HistogramOpts, HistogramVec};
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Distinct model names a process labels before the rest count as `other`: the model is the
/// client's to choose, and a label must not let a client grow the series without bound.
pub const MAX_MODELS: usize = 64;

// The conventions' advised bucket boundaries.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
const TOKEN_BUCKETS: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// `gen_ai.operation.name` of an OpenAI-compatible endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    TextCompletion,
    Embeddings,
}

impl Operation {
    /// The operation a request path names, if it is one of the conventions'.
    #[must_use]
    pub fn from_path(path: &str) -> Option<Operation> {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Operation::Chat)
        } else if path.ends_with("/completions") {
            Some(Operation::TextCompletion)
        } else if path.ends_with("/embeddings") {
            Some(Operation::Embeddings)
        } else {
            None
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// One finished request, as the conventions describe it.
#[derive(Debug, Clone, Copy)]
pub struct GenAiRequest<'a> {
    pub operation: Operation,
    /// `gen_ai.provider.name`: the upstream's configured name.
    pub provider: &'a str,
    /// `gen_ai.request.model`; empty when the route did not read the body.
    pub model: &'a str,
    pub duration: Duration,
    /// `error.type`: empty on success.
    pub error_type: &'a str,
    /// Request start to the first body byte of a successful answer.
    pub first_token: Option<Duration>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

#[derive(Clone)]
pub(super) struct GenAiFamilies {
    /// Tells registries apart in the per-thread cache of handles.
    id: u64,
    duration: HistogramVec,
    first_token: HistogramVec,
    per_token: HistogramVec,
    tokens: HistogramVec,
    models: Arc<Mutex<HashSet<String>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The labels of the series one kind of request records into.
struct SeriesKey {
    families: u64,
    operation: Operation,
    provider: String,
    model: String,
    error_type: String,
}

impl SeriesKey {
    fn of(families: u64, r: &GenAiRequest<'_>) -> SeriesKey {
        SeriesKey {
            families,
            operation: r.operation,
            provider: r.provider.to_string(),
            model: r.model.to_string(),
            error_type: r.error_type.to_string(),
        }
    }

    fn is(&self, families: u64, r: &GenAiRequest<'_>) -> bool {
        self.families == families
            && self.operation == r.operation
            && self.provider == r.provider
            && self.model == r.model
            && self.error_type == r.error_type
    }
}

struct Series {
    duration: Histogram,
    /// Only successes record these, so a failure's labels resolve none.
    success: Option<SuccessSeries>,
}

struct SuccessSeries {
    first_token: Histogram,
    per_token: Histogram,
    input: Histogram,
    output: Histogram,
}

thread_local! {
    // The last request's series: a route's requests mostly share them, and resolving labels
    // (hashing, a lock per family) costs more than everything else recorded per request.
    static LAST: RefCell<Option<(SeriesKey, Series)>> = const { RefCell::new(None) };
}

const LABELS: &[&str] = &[
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
];

impl GenAiFamilies {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        let histogram = |name: &str, help: &str, buckets: &[f64], extra: Option<&str>| {
            let mut labels = LABELS.to_vec();
            labels.extend(extra);
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &labels,
            )
        };
        Ok(GenAiFamilies {
            duration: histogram(
                "gen_ai_server_request_duration_seconds",
                "GenAI request duration (OpenTelemetry gen_ai.server.request.duration)",
                DURATION_BUCKETS,
                Some("error_type"),
            )?,
            first_token: histogram(
                "gen_ai_server_time_to_first_token_seconds",
                "Time to the first token of a successful answer (gen_ai.server.time_to_first_token)",
                TTFT_BUCKETS,
                None,
            )?,
            per_token: histogram(
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token after the first (gen_ai.server.time_per_output_token)",
                TPOT_BUCKETS,
                None,
            )?,
            tokens: histogram(
                "gen_ai_client_token_usage",
                "Tokens used per request, by type (gen_ai.client.token.usage)",
                TOKEN_BUCKETS,
                Some("gen_ai_token_type"),
            )?,
            models: Arc::default(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.duration.clone()),
            Box::new(self.first_token.clone()),
            Box::new(self.per_token.clone()),
            Box::new(self.tokens.clone()),
        ]
    }

    /// Runs `record` on the series `r` records into, resolved once per thread while requests
    /// keep their labels (borrowed, not cloned: a clone is five atomic increments).
    fn with_series(&self, r: &GenAiRequest<'_>, record: impl FnOnce(&Series)) {
        LAST.with_borrow_mut(|last| {
            if let Some((_, series)) = last.as_ref().filter(|(k, _)| k.is(self.id, r)) {
                return record(series);
            }
            let key = SeriesKey::of(self.id, r);
            let model = self.model_label(&key.model);
            let base = [key.operation.name(), key.provider.as_str(), model];
            let [op, provider, model] = base;
            let series = Series {
                duration: self
                    .duration
                    .with_label_values(&[op, provider, model, &key.error_type]),
                success: key.error_type.is_empty().then(|| SuccessSeries {
                    first_token: self.first_token.with_label_values(&base),
                    per_token: self.per_token.with_label_values(&base),
                    input: self
                        .tokens
                        .with_label_values(&[op, provider, model, "input"]),
                    output: self
                        .tokens
                        .with_label_values(&[op, provider, model, "output"]),
                }),
            };
            record(&series);
            *last = Some((key, series));
        });
    }

    /// The label for `model`: itself among the first [`MAX_MODELS`] names seen, else `other`.
    fn model_label<'m>(&self, model: &'m str) -> &'m str {
        let mut seen = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        if model.is_empty() || seen.contains(model) {
            return model;
        }
        if seen.len() < MAX_MODELS {
            seen.insert(model.to_string());
            return model;
        }
        "other"
    }
}

impl Metrics {
    /// Records one request in the GenAI families.
    pub fn record_genai(&self, r: &GenAiRequest<'_>) {
        self.genai.with_series(r, |series| {
            series.duration.observe(r.duration.as_secs_f64());
            let Some(success) = &series.success else {
                return;
            };
            if let Some(first) = r.first_token {
                success.first_token.observe(first.as_secs_f64());
                if let Some(after) = r.output_tokens.filter(|n| *n > 1) {
                    let rest = r.duration.saturating_sub(first).as_secs_f64();
                    #[allow(clippy::cast_precision_loss)] // token counts are far below 2^52
                    success.per_token.observe(rest / (after - 1) as f64);
                }
            }
            let counts = [
                (&success.input, r.input_tokens),
                (&success.output, r.output_tokens),
            ];
            for (histogram, count) in counts {
                if let Some(count) = count {
                    #[allow(clippy::cast_precision_loss)]
                    histogram.observe(count as f64);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{GenAiRequest, Operation, MAX_MODELS};
    use crate::metrics::Metrics;
    use std::time::Duration;

    fn request(model: &str) -> GenAiRequest<'_> {
        GenAiRequest {
            operation: Operation::Chat,
            provider: "openai",
            model,
            duration: Duration::from_millis(1100),
            error_type: "",
            first_token: Some(Duration::from_millis(100)),
            input_tokens: Some(12),
            output_tokens: Some(11),
        }
    }

    #[test]
    fn paths_name_the_conventions_operations() {
        assert_eq!(
            Operation::from_path("/v1/chat/completions"),
            Some(Operation::Chat)
        );
        assert_eq!(
            Operation::from_path("/v1/completions/"),
            Some(Operation::TextCompletion)
        );
        assert_eq!(
            Operation::from_path("/v1/embeddings"),
            Some(Operation::Embeddings)
        );
        assert_eq!(Operation::from_path("/v1/models"), None);
    }

    #[test]
    fn a_success_records_duration_first_token_per_token_and_usage() {
        let m = Metrics::new("0").unwrap();
        m.record_genai(&request("gpt-4o"));
        let text = m.encode();
        let base = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="gpt-4o""#;
        for series in [
            format!(r#"gen_ai_server_request_duration_seconds_count{{error_type="",{base}}} 1"#),
            format!("gen_ai_server_time_to_first_token_seconds_sum{{{base}}} 0.1"),
            // (1.1 s - 0.1 s) over the 10 tokens after the first
            format!("gen_ai_server_time_per_output_token_seconds_sum{{{base}}} 0.1"),
            format!(r#"gen_ai_client_token_usage_sum{{{base},gen_ai_token_type="input"}} 12"#),
            format!(r#"gen_ai_client_token_usage_sum{{{base},gen_ai_token_type="output"}} 11"#),
        ] {
            assert!(text.contains(&series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn an_error_records_only_its_duration_with_its_type() {
        let m = Metrics::new("0").unwrap();
        m.record_genai(&GenAiRequest {
            error_type: "503",
            ..request("gpt-4o")
        });
        let text = m.encode();
        assert!(text.contains(r#"gen_ai_server_request_duration_seconds_count{error_type="503""#));
        assert!(!text.contains("gen_ai_server_time_to_first_token_seconds_count"));
        assert!(!text.contains("gen_ai_client_token_usage_count"));
    }

    #[test]
    fn models_past_the_cap_count_as_other() {
        let m = Metrics::new("0").unwrap();
        let names: Vec<String> = (0..=MAX_MODELS).map(|i| format!("m{i}")).collect();
        for name in &names {
            m.record_genai(&request(name));
        }
        m.record_genai(&request("m0"));
        let text = m.encode();
        assert!(text.contains(r#"gen_ai_request_model="other""#));
        assert!(!text.contains(&format!(r#"gen_ai_request_model="m{MAX_MODELS}""#)));
        let m0 = r#"gen_ai_server_request_duration_seconds_count{error_type="",gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="m0"} 2"#;
        assert!(text.contains(m0), "{text}");
    }
}
