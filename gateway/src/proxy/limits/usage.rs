//! The response side of token budgets: a sink that meters what the upstream's answer cost,
//! and the filter that hides the usage chunk from a client that did not ask for it.

use crate::proxy::sink::{is_event_stream, ClientFilter, ResponseSink, StreamEnd};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use sluice_plugins::limits::usage::{Metered, UsageChunkFilter, UsageMeter};

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
