//! Token accounting for budgets: an estimate of a request's tokens before the call, and what a
//! response really cost, read from the upstream's `usage` or counted from the streamed text.
//! Bytes and JSON in, numbers out; the gateway feeds response chunks as they pass.

use crate::sse::{self, Event, Splitter, MAX_HELD};
use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Text bytes per estimated token (OpenAI's rule of thumb for English is 4 characters).
const BYTES_PER_TOKEN: u64 = 4;

/// Tokens each chat message costs beyond its text (OpenAI cookbook).
const TOKENS_PER_MESSAGE: u64 = 4;

/// Tokens that prime the assistant's reply in a chat (OpenAI cookbook).
const REPLY_PRIMING: u64 = 3;

/// The strings a chat message or delta carries as the model's own text.
const SAID_FIELDS: &[&str] = &["content", "reasoning_content", "reasoning", "refusal"];

// === estimates before the call ===

/// The tokens a request's prompt will cost, estimated cheaply before the call: one token per 4
/// bytes of UTF-8 (rounded up) of every text the model reads, plus OpenAI's per-message
/// overhead. Bytes rather than characters, so non-Latin scripts are not underestimated.
#[must_use]
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let (mut bytes, mut tokens) = (0, 0);
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        tokens += REPLY_PRIMING + TOKENS_PER_MESSAGE * messages.len() as u64;
        for message in messages {
            bytes += text_len(message.get("content")) + text_len(message.get("name"));
            bytes += calls_len(message);
        }
    }
    for key in ["tools", "functions"] {
        if let Some(definitions) = body.get(key).filter(|v| !v.is_null()) {
            bytes += definitions.to_string().len() as u64;
        }
    }
    for key in ["prompt", "input"] {
        let (text, ids) = input_len(body.get(key));
        bytes += text;
        tokens += ids;
    }
    tokens + bytes.div_ceil(BYTES_PER_TOKEN)
}

/// The most completion tokens a request asks for: `max_completion_tokens`, else `max_tokens`,
/// times `n`; None when neither is a non-negative integer.
#[must_use]
pub fn requested_completion_tokens(body: &Map<String, Value>) -> Option<u64> {
    let limit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body.get(*key).filter(|v| !v.is_null()))?
        .as_u64()?;
    let n = body.get("n").and_then(Value::as_u64).filter(|n| *n > 1);
    Some(limit.saturating_mul(n.unwrap_or(1)))
}

/// Whether the client asked for a stream's usage chunk (`stream_options.include_usage`).
#[must_use]
pub fn asks_for_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        == Some(&Value::Bool(true))
}

/// Makes a `"stream": true` body ask for `stream_options.include_usage`, so the upstream reports
/// usage at the stream's end. True when the client had not asked for it itself: the gateway
/// must then strip the usage chunk ([`UsageChunkFilter`]) from what the client sees.
pub fn ensure_include_usage(body: &mut Map<String, Value>) -> bool {
    if body.get("stream") != Some(&Value::Bool(true)) || asks_for_usage(body) {
        return false;
    }
    let options = body
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if options.is_null() {
        *options = Value::Object(Map::new());
    }
    // Any other shape is the client's error for the upstream to report, not ours to rewrite.
    let Some(options) = options.as_object_mut() else {
        return false;
    };
    options.insert("include_usage".into(), Value::Bool(true));
    true
}

/// Bytes of a string, or of the `text` of each part of a content array.
fn text_len(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(text)) => text.len() as u64,
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(|text| text.len() as u64)
            .sum(),
        _ => 0,
    }
}

/// Bytes of the names and arguments of a message's tool calls and legacy function call.
fn calls_len(message: &Value) -> u64 {
    let tools = message.get("tool_calls").and_then(Value::as_array);
    let functions = tools
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("function"));
    let legacy = message.get("function_call");
    functions
        .chain(legacy)
        .map(|f| text_len(f.get("name")) + text_len(f.get("arguments")))
        .sum()
}

/// A `prompt` or `input`: bytes of its strings, and its tokens given as ids (one per integer).
fn input_len(value: Option<&Value>) -> (u64, u64) {
    let items = match value {
        Some(Value::Array(items)) => items.as_slice(),
        Some(one) => std::slice::from_ref(one),
        None => &[],
    };
    items.iter().fold((0, 0), |(bytes, ids), item| match item {
        Value::String(text) => (bytes + text.len() as u64, ids),
        Value::Number(_) => (bytes, ids + 1),
        Value::Array(more) => (bytes, ids + more.len() as u64),
        _ => (bytes, ids),
    })
}

// === what a response cost ===

/// Token counts as an upstream reports them in `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `prompt_tokens` (0 when absent).
    pub prompt: u64,
    /// `completion_tokens` (0 when absent, as for embeddings).
    pub completion: u64,
    /// `total_tokens`, or prompt + completion when absent.
    pub total: u64,
}

impl Usage {
    /// A `usage` object with at least one count; None for null or anything else.
    fn from_json(usage: &Value) -> Option<Usage> {
        let count = |field: &str| usage.get(field).and_then(Value::as_u64);
        let (prompt, completion) = (count("prompt_tokens"), count("completion_tokens"));
        let total = count("total_tokens");
        prompt.or(completion).or(total)?;
        let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        let total = total.unwrap_or(prompt.saturating_add(completion));
        Some(Usage {
            prompt,
            completion,
            total,
        })
    }
}

/// What a metered response cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metered {
    /// The upstream's own `usage` (a stream's last non-null one); None when it sent none.
    pub usage: Option<Usage>,
    /// Completion tokens counted from the answer's text, 4 bytes per token per choice (per
    /// chunk when streamed); the settlement when `usage` is None.
    pub streamed_completion_tokens: u64,
}

impl Metered {
    /// Adds what one completion or stream chunk says: its usage, and its answer's tokens.
    fn read(&mut self, response: &Value) {
        if let Some(usage) = response.get("usage").and_then(Usage::from_json) {
            self.usage = Some(usage);
        }
        let choices = response.get("choices").and_then(Value::as_array);
        let tokens = choices
            .into_iter()
            .flatten()
            .map(|choice| answer_len(choice).div_ceil(BYTES_PER_TOKEN));
        self.streamed_completion_tokens =
            tokens.fold(self.streamed_completion_tokens, u64::saturating_add);
    }
}

/// Bytes of the text a choice (or a chunk's delta of it) carries.
fn answer_len(choice: &Value) -> u64 {
    let text = text_len(choice.get("text"));
    let said = choice.get("delta").or_else(|| choice.get("message"));
    let said_len = |said: &Value| {
        let fields = SAID_FIELDS.iter().map(|field| text_len(said.get(*field)));
        fields.sum::<u64>() + calls_len(said)
    };
    text + said.map_or(0, said_len)
}

/// Reads what a response cost as its body passes, chunk by chunk, split anywhere.
#[derive(Debug)]
pub struct UsageMeter {
    form: MeterForm,
}

#[derive(Debug)]
enum MeterForm {
    /// The JSON body so far; None once it outgrew [`MAX_HELD`], the cap of a stream's event.
    Json(Option<Vec<u8>>),
    /// A stream is read event by event, holding only the incomplete one.
    Sse(Splitter, Metered),
}

impl UsageMeter {
    /// A meter for a Server-Sent Events body (`sse`) or a JSON one.
    #[must_use]
    pub fn new(sse: bool) -> UsageMeter {
        let form = if sse {
            MeterForm::Sse(Splitter::default(), Metered::default())
        } else {
            MeterForm::Json(Some(Vec::new()))
        };
        UsageMeter { form }
    }

    /// Takes the next piece of the response body.
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.form {
            MeterForm::Json(Some(held)) if held.len() + chunk.len() <= MAX_HELD => {
                held.extend_from_slice(chunk);
            }
            // Past the cap the usage is given up rather than the body held in memory.
            MeterForm::Json(body) => *body = None,
            MeterForm::Sse(splitter, metered) => splitter.push(chunk, |e| read_event(metered, e)),
        }
    }

    /// What the whole response cost. A stream's unterminated last event still counts: the
    /// upstream produced those tokens even if it did not end the event.
    #[must_use]
    pub fn finish(self) -> Metered {
        match self.form {
            MeterForm::Json(body) => {
                let mut metered = Metered::default();
                if let Some(response) = body.and_then(|b| serde_json::from_slice(&b).ok()) {
                    metered.read(&response);
                }
                metered
            }
            MeterForm::Sse(mut splitter, mut metered) => {
                splitter.finish(|e| read_event(&mut metered, e));
                metered
            }
        }
    }
}

/// Reads a whole event's chunk; pieces of one too long to hold are not read.
fn read_event(metered: &mut Metered, event: Event<'_>) {
    let Some(data) = event.data().filter(|_| event.whole) else {
        return;
    };
    if data.as_ref() != sse::DONE {
        if let Ok(chunk) = serde_json::from_slice::<Value>(&data) {
            metered.read(&chunk);
        }
    }
}

/// Strips the usage-only chunk(s) from a stream on its way to a client that did not ask for
/// them, passing every other byte through unchanged and in order.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    splitter: Splitter,
}

impl UsageChunkFilter {
    /// A filter at the start of a stream.
    #[must_use]
    pub fn new() -> UsageChunkFilter {
        UsageChunkFilter::default()
    }

    /// What may be sent now of everything fed so far: whole events, the usage-only ones
    /// removed. An incomplete trailing event is held until a later chunk completes it.
    pub fn filter(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(self.splitter.held_len() + chunk.len());
        self.splitter
            .push(chunk, |e| pass_unless_usage_only(&mut out, e));
        out.freeze()
    }

    /// What is still held at the stream's end: an event a final `\r` ends is filtered like any
    /// other, an unterminated rest passes as it is.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.splitter.held_len());
        self.splitter
            .finish(|e| pass_unless_usage_only(&mut out, e));
        out.freeze()
    }
}

/// Appends an event to what the client gets, unless it is the usage-only chunk.
fn pass_unless_usage_only(out: &mut BytesMut, event: Event<'_>) {
    if !(event.terminated && is_usage_only(event)) {
        out.extend_from_slice(event.raw);
    }
}

/// Whether a whole event is a `data:` chunk with `"choices": []` and a non-null `usage`.
fn is_usage_only(event: Event<'_>) -> bool {
    /// Reads only the two fields, skipping the rest without building values.
    #[derive(Deserialize)]
    struct Probe {
        choices: Option<Vec<IgnoredAny>>,
        usage: Option<IgnoredAny>,
    }
    let data = event.data().filter(|d| event.whole && sse::names_usage(d));
    let Some(data) = data else {
        return false;
    };
    serde_json::from_slice::<Probe>(&data)
        .is_ok_and(|p| p.usage.is_some() && p.choices.is_some_and(|c| c.is_empty()))
}

#[cfg(test)]
mod tests;
