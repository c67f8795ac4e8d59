//! Usage metering: asking a stream for its usage chunk before it is forwarded, the sink that
//! meters what the answer cost (for token budgets and the variant's token and cost counters),
//! and the filter that hides the usage chunk from a client that did not ask for it.

use super::body::Body;
use super::sink::{is_event_stream, ClientFilter, ResponseSink, StreamEnd};
use super::stop::Stop;
use crate::config::policy::Lane;
use crate::config::split::Pricing;
use crate::observe::RequestUsage;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use sluice_plugins::limits::usage::{
    ensure_include_usage, estimate_prompt_tokens, Metered, UsageChunkFilter, UsageMeter,
};

/// Asks a stream for its usage chunk; `true` when the client did not ask for it itself, so
/// the chunk is stripped from what it sees. Best effort: a body that is not a JSON object is
/// sent as it came.
pub fn ask_for_usage(body: &mut Body) -> Result<bool, Stop> {
    if body.json().is_err() {
        return Ok(false);
    }
    body.rewrite_json(ensure_include_usage)
}

/// Counts the answer's tokens and, for a priced model, its cost in the lane's counters, and
/// returns what it counted.
pub fn count(
    lane: &Lane,
    pricing: &Pricing,
    body: &mut Body,
    meter: &mut UsageSink,
) -> Option<RequestUsage> {
    let usage = lane.usage.as_ref()?;
    let json = body.json().ok()??;
    let (prompt, completion) = meter.tokens(|| estimate_prompt_tokens(json))?;
    usage.prompt.inc_by(prompt);
    usage.completion.inc_by(completion);
    let model = json.get("model").and_then(serde_json::Value::as_str);
    let cost = model.and_then(|m| pricing.cost(m, prompt, completion));
    if let Some(cost) = cost {
        usage.cost_usd.inc_by(cost);
    }
    Some(RequestUsage {
        model: model.unwrap_or_default().to_string(),
        input_tokens: prompt,
        output_tokens: completion,
        cost_usd: cost,
    })
}

/// Meters one response: its reported usage, or the completion tokens it streamed.
#[derive(Default)]
pub struct UsageSink {
    status: u16,
    meter: Option<UsageMeter>,
    metered: Option<Metered>,
}

impl UsageSink {
    /// Tokens to charge: the upstream's `usage` total; else, for an answer that is not an
    /// error, the prompt's estimate plus the completion tokens counted; nothing otherwise.
    pub fn charged(&mut self, prompt_estimate: u64) -> u64 {
        self.finish();
        let Some(metered) = &self.metered else {
            return 0;
        };
        if let Some(usage) = &metered.usage {
            return usage.total;
        }
        if !(200..400).contains(&self.status) {
            return 0;
        }
        prompt_estimate + metered.streamed_completion_tokens
    }

    /// Prompt and completion tokens the answer cost: the upstream's `usage`; else, for an
    /// answer that is not an error, the prompt's estimate and the completion tokens counted.
    pub fn tokens(&mut self, prompt_estimate: impl FnOnce() -> u64) -> Option<(u64, u64)> {
        self.finish();
        let metered = self.metered.as_ref()?;
        if let Some(usage) = &metered.usage {
            return Some((usage.prompt, usage.completion));
        }
        (200..400)
            .contains(&self.status)
            .then(|| (prompt_estimate(), metered.streamed_completion_tokens))
    }

    fn finish(&mut self) {
        if let Some(meter) = self.meter.take() {
            self.metered = Some(meter.finish());
        }
    }
}

impl ResponseSink for UsageSink {
    fn on_head(&mut self, head: &ResponseHeader) {
        self.status = head.status.as_u16();
        self.meter = Some(UsageMeter::new(is_event_stream(head)));
        self.metered = None;
    }

    fn on_chunk(&mut self, chunk: &Bytes) {
        if let Some(meter) = &mut self.meter {
            meter.feed(chunk);
        }
    }

    fn on_end(&mut self, _end: StreamEnd) {
        self.finish();
    }
}

/// Strips the usage chunk sluice asked the upstream for from what the client sees.
#[derive(Default)]
pub struct StripUsage(UsageChunkFilter);

impl ClientFilter for StripUsage {
    fn filter(&mut self, chunk: &Bytes) -> Bytes {
        self.0.filter(chunk)
    }

    fn finish(&mut self) -> Bytes {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::compile_text;
    use bytes::Bytes;

    #[test]
    fn a_stream_is_asked_for_usage_and_the_client_that_did_not_ask_is_spared_it() {
        let mut body = Body::of(Bytes::from_static(br#"{"stream":true}"#));
        assert!(ask_for_usage(&mut body).unwrap(), "sluice asked: strip it");
        let sent: serde_json::Value = serde_json::from_slice(body.bytes().unwrap()).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let mut asked = Body::of(Bytes::from_static(
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#,
        ));
        assert!(
            !ask_for_usage(&mut asked).unwrap(),
            "the client asked: keep it"
        );
        assert!(!ask_for_usage(&mut Body::of(Bytes::from_static(b"[1]"))).unwrap());
    }

    #[test]
    fn an_answer_is_counted_in_its_variants_tokens_and_cost() {
        let p = compile_text("upstreams:\n  a: { endpoints: [{ url: \"http://127.0.0.1:1\" }] }\npricing:\n  m: { input: 1, output: 2 }\nroutes:\n  - name: chat\n    upstream: a\n    split:\n      variants: [ { name: only, weight: 1 } ]\n").unwrap();
        let lane = &p.routes[0].lanes[0];
        let mut meter = UsageSink::default();
        let head = ResponseHeader::build(200, None).unwrap();
        meter.on_head(&head);
        meter.on_chunk(&Bytes::from_static(
            br#"{"usage":{"prompt_tokens":1000000,"completion_tokens":500000,"total_tokens":1500000}}"#,
        ));
        meter.on_end(StreamEnd::Complete);
        let mut body = Body::of(Bytes::from_static(br#"{"model":"m"}"#));
        let counted = count(lane, &p.pricing, &mut body, &mut meter).unwrap();
        assert_eq!(
            (counted.model.as_str(), counted.input_tokens),
            ("m", 1_000_000)
        );
        let usage = lane.usage.as_ref().unwrap();
        assert_eq!(
            (usage.prompt.get(), usage.completion.get()),
            (1_000_000, 500_000)
        );
        assert!(
            (usage.cost_usd.get() - 2.0).abs() < 1e-9,
            "{}",
            usage.cost_usd.get()
        );
    }
}
