//! Trace export over OTLP/HTTP (JSON): a span per request (sluice's, kind server) and one per
//! try at an upstream (kind client), with the OpenTelemetry GenAI attributes. Spans are sent by
//! a background thread in batches; a collector that is down costs a warning, never a request.

use crate::observe::Finished;
use serde_json::{json, Value};
use sluice_plugins::trace_context::hex;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Spans waiting for the exporter; beyond this, spans are dropped.
const QUEUE_SPANS: usize = 16_384;
/// Spans per POST at most, and the longest a span waits for its batch.
const BATCH_SPANS: usize = 512;
const BATCH_WINDOW: Duration = Duration::from_millis(200);

/// The exporter thread's inbox.
pub struct OtlpExporter {
    tx: SyncSender<Value>,
}

impl OtlpExporter {
    /// Starts the exporter posting to `url` (`<endpoint>/v1/traces`).
    pub fn start(url: String) -> Result<OtlpExporter, String> {
        let (tx, rx) = sync_channel(QUEUE_SPANS);
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_batches(&url, rx))
            .map_err(|e| format!("otlp: cannot start the exporter: {e}"))?;
        Ok(OtlpExporter { tx })
    }

    /// Queues the request's spans; a full queue drops them.
    pub fn export(&self, f: &Finished<'_>) {
        for span in spans(f, SystemTime::now()) {
            if self.tx.try_send(span).is_err() {
                tracing::debug!("otlp: exporter behind, a span was dropped");
            }
        }
    }
}

fn export_batches(url: &str, rx: Receiver<Value>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "otlp: no runtime, spans are not exported");
            return;
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_SPANS {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let body = json!({"resourceSpans": [{
            "resource": {"attributes": [attr("service.name", "sluice")]},
            "scopeSpans": [{"scope": {"name": "sluice", "version": env!("CARGO_PKG_VERSION")},
                            "spans": batch}],
        }]});
        let sent = runtime.block_on(async { client.post(url).json(&body).send().await });
        let ok = sent.as_ref().is_ok_and(|r| r.status().is_success());
        if !ok && !failing {
            let why = sent.map_or_else(|e| e.to_string(), |r| format!("status {}", r.status()));
            tracing::warn!(reason = %why, "otlp: export failed; spans are dropped until it works");
        }
        failing = !ok;
    }
}

/// The request's span and one per try, `now` being when it finished.
fn spans(f: &Finished<'_>, now: SystemTime) -> Vec<Value> {
    let Some(trace) = f.trace else {
        return Vec::new();
    };
    let trace_id = trace.trace_id().to_string();
    let finished_at = Instant::now();
    let wall = |at: Instant| {
        nanos(now).saturating_sub(finished_at.saturating_duration_since(at).as_nanos())
    };
    let operation = operation(f.path);
    let model = f.usage.map(|u| u.model.as_str()).filter(|m| !m.is_empty());
    let mut attributes = vec![
        attr("http.request.method", f.method),
        attr("url.path", f.path),
        attr("sluice.request_id", f.request_id),
    ];
    if let Some(op) = operation {
        attributes.push(attr("gen_ai.operation.name", op));
    }
    if let Some(up) = f.lane.and_then(|l| l.hop(f.hop)) {
        attributes.push(attr("gen_ai.provider.name", &up.name));
    }
    if let Some(model) = model {
        attributes.push(attr("gen_ai.request.model", model));
    }
    if let Some(u) = f.usage {
        attributes.push(int_attr("gen_ai.usage.input_tokens", u.input_tokens));
        attributes.push(int_attr("gen_ai.usage.output_tokens", u.output_tokens));
    }
    if let Some(status) = f.status {
        attributes.push(int_attr("http.response.status_code", u64::from(status)));
    }
    for (key, value) in [
        ("sluice.route", f.route.map(|r| r.name.as_str())),
        ("sluice.variant", f.lane.map(|l| l.variant.as_str())),
        ("sluice.cache.result", Some(f.cache)),
        ("sluice.key", f.key.map(|k| k.name.as_str())),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            attributes.push(attr(key, v));
        }
    }
    let failed = f.status.is_none_or(|s| s >= 500) || f.error.is_some();
    let request_span = hex(&trace.span_id);
    let name = match (operation, model) {
        (Some(op), Some(model)) => format!("{op} {model}"),
        (Some(op), None) => op.to_string(),
        _ => format!("{} {}", f.method, f.route.map_or("", |r| r.name.as_str())),
    };
    let mut out = vec![json!({
        "traceId": trace_id,
        "spanId": request_span,
        "parentSpanId": f.parent_span.map_or(String::new(), |p| hex(&p)),
        "name": name,
        "kind": 2,
        "startTimeUnixNano": wall(f.start).to_string(),
        "endTimeUnixNano": nanos(now).to_string(),
        "attributes": attributes,
        "status": {"code": if failed { 2 } else { 1 }},
    })];
    for t in f.tries {
        let up = f.lane.and_then(|l| l.hop(t.hop));
        let mut attributes = vec![int_attr("sluice.hop", t.hop as u64)];
        if let Some(up) = up {
            attributes.push(attr("gen_ai.provider.name", &up.name));
            if let Some(ep) = up.endpoints.get(t.endpoint) {
                attributes.push(attr("server.address", &ep.url));
            }
        }
        if let Some(status) = t.status {
            attributes.push(int_attr("http.response.status_code", u64::from(status)));
        }
        if let Some(failure) = t.failure {
            attributes.push(attr("error.type", failure));
        }
        if let Some(model) = model {
            attributes.push(attr("gen_ai.request.model", model));
        }
        out.push(json!({
            "traceId": trace_id,
            "spanId": hex(&t.span.to_be_bytes()),
            "parentSpanId": request_span,
            "name": operation.map_or_else(|| "upstream".to_string(), |op| format!("{op} upstream")),
            "kind": 3,
            "startTimeUnixNano": wall(t.start).to_string(),
            "endTimeUnixNano": wall(t.end).to_string(),
            "attributes": attributes,
            "status": {"code": if t.failure.is_some() { 2 } else { 1 }},
        }));
    }
    out
}

/// The GenAI operation of an OpenAI-style path.
fn operation(path: &str) -> Option<&'static str> {
    let path = path.trim_end_matches('/');
    if path.ends_with("/chat/completions") || path.ends_with("/responses") {
        Some("chat")
    } else if path.ends_with("/completions") {
        Some("text_completion")
    } else if path.ends_with("/embeddings") {
        Some("embeddings")
    } else {
        None
    }
}

fn attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int_attr(key: &str, value: u64) -> Value {
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_paths_name_their_genai_operation() {
        assert_eq!(operation("/v1/chat/completions"), Some("chat"));
        assert_eq!(operation("/v1/completions"), Some("text_completion"));
        assert_eq!(operation("/v1/embeddings/"), Some("embeddings"));
        assert_eq!(operation("/v1/models"), None);
    }
}
