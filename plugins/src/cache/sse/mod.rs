//! Record and replay of Server-Sent Event bodies, and the conversions between a streamed
//! OpenAI completion and its JSON form. They let one cache entry answer both a `stream: true`
//! and a plain request for the same prompt, so the stream flag stays out of the key.

use super::BodyForm;
use crate::sse::{self, Event};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Top-level fields a completion and its chunks share.
const SHARED_FIELDS: &[&str] = &[
    "id",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

/// Chat delta strings that stream in pieces, in the order a reply streams them.
const TEXT_FIELDS: &[&str] = &["reasoning_content", "reasoning", "content", "refusal"];

/// The two completion APIs that stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    /// The kind named by a chunk's `object`.
    fn of_chunk(object: &str) -> Option<Kind> {
        match object {
            "chat.completion.chunk" => Some(Kind::Chat),
            "text_completion" => Some(Kind::Text),
            _ => None,
        }
    }

    fn completion_object(self) -> &'static str {
        match self {
            Kind::Chat => "chat.completion",
            Kind::Text => "text_completion",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        }
    }
}

// === events ===

/// The events of an SSE body, each with its terminating blank line, in order (for replay as
/// separate writes), lines ending in any of SSE's endings. An unterminated tail comes back as
/// a last slice, so the slices always add up to the body.
#[must_use]
pub fn split_events(body: &Bytes) -> Vec<Bytes> {
    let mut at = 0;
    let slice = |event: Event<'_>| {
        at += event.raw.len();
        body.slice(at - event.raw.len()..at)
    };
    sse::events(body).map(slice).collect()
}

/// Whether an SSE body ended cleanly: its last event with data is a terminated `data: [DONE]`.
#[must_use]
pub fn ended_cleanly(body: &[u8]) -> bool {
    let mut clean = false;
    for event in sse::events(body) {
        if let Some(data) = event.data() {
            clean = event.terminated && data.as_ref() == sse::DONE;
        }
    }
    clean
}

/// The JSON objects a stream carries up to `[DONE]`; None when one is not a JSON object.
fn chunks(body: &[u8]) -> Option<Vec<Map<String, Value>>> {
    let mut out = Vec::new();
    for event in sse::events(body) {
        let Some(data) = event.data() else {
            continue;
        };
        if data.as_ref() == sse::DONE {
            break;
        }
        match serde_json::from_slice(&data).ok()? {
            Value::Object(chunk) => out.push(chunk),
            _ => return None,
        }
    }
    Some(out)
}

// === assemble ===

/// One choice as its deltas add up.
#[derive(Debug, Default)]
struct ChoiceState {
    role: Option<Value>,
    /// Concatenated strings: [`TEXT_FIELDS`] for chat, `text` for text completions.
    texts: BTreeMap<&'static str, String>,
    tool_calls: BTreeMap<u64, CallState>,
    function_call: Option<CallState>,
    finish_reason: Option<Value>,
    logprobs: Option<Map<String, Value>>,
}

/// One tool (or legacy function) call as its deltas add up.
#[derive(Debug, Default)]
struct CallState {
    id: Option<Value>,
    kind: Option<Value>,
    name: Option<Value>,
    arguments: String,
}

/// Sets `slot` from the first non-null, non-empty value.
fn set_once(slot: &mut Option<Value>, value: Option<&Value>) {
    let given = value.filter(|v| !v.is_null() && v.as_str() != Some(""));
    if slot.is_none() {
        *slot = given.cloned();
    }
}

fn append(texts: &mut BTreeMap<&'static str, String>, field: &'static str, value: Option<&Value>) {
    if let Some(piece) = value.and_then(Value::as_str) {
        texts.entry(field).or_default().push_str(piece);
    }
}

impl CallState {
    fn merge(&mut self, call: &Value) {
        set_once(&mut self.id, call.get("id"));
        set_once(&mut self.kind, call.get("type"));
        // Tool calls nest name and arguments in `function`; the legacy `function_call` does not.
        let function = call.get("function").unwrap_or(call);
        set_once(&mut self.name, function.get("name"));
        if let Some(piece) = function.get("arguments").and_then(Value::as_str) {
            self.arguments.push_str(piece);
        }
    }

    fn function(&self) -> Value {
        let name = self.name.clone().unwrap_or_else(|| json!(""));
        json!({"name": name, "arguments": self.arguments})
    }
}

impl ChoiceState {
    fn merge(&mut self, kind: Kind, part: &Value) {
        match kind {
            Kind::Chat => {
                let delta = part.get("delta").unwrap_or(&Value::Null);
                set_once(&mut self.role, delta.get("role"));
                for field in TEXT_FIELDS {
                    append(&mut self.texts, field, delta.get(*field));
                }
                let calls = delta.get("tool_calls").and_then(Value::as_array);
                for (position, call) in calls.into_iter().flatten().enumerate() {
                    let index = call.get("index").and_then(Value::as_u64);
                    let state = self.tool_calls.entry(index.unwrap_or(position as u64));
                    state.or_default().merge(call);
                }
                if let Some(call) = delta.get("function_call").filter(|c| c.is_object()) {
                    self.function_call
                        .get_or_insert_with(CallState::default)
                        .merge(call);
                }
            }
            Kind::Text => append(&mut self.texts, "text", part.get("text")),
        }
        if let Some(reason) = part.get("finish_reason").filter(|r| !r.is_null()) {
            self.finish_reason = Some(reason.clone());
        }
        if let Some(logprobs) = part.get("logprobs").and_then(Value::as_object) {
            let merged = self.logprobs.get_or_insert_with(Map::new);
            for (key, value) in logprobs {
                // Token lists (`content`, `tokens`, `token_logprobs`, ...) add up; the rest is kept.
                match (merged.get_mut(key), value) {
                    (Some(Value::Array(have)), Value::Array(more)) => {
                        have.extend(more.iter().cloned())
                    }
                    (Some(_), Value::Null) => {}
                    _ => {
                        merged.insert(key.clone(), value.clone());
                    }
                }
            }
        }
    }

    fn into_json(mut self, kind: Kind, index: u64) -> Value {
        let mut choice = Map::new();
        choice.insert("index".into(), index.into());
        match kind {
            Kind::Chat => {
                let mut message = Map::new();
                let role = self.role.take().unwrap_or_else(|| json!("assistant"));
                message.insert("role".into(), role);
                let calls = !self.tool_calls.is_empty() || self.function_call.is_some();
                // As OpenAI does: no text beside a call is `content: null`, not "".
                let content = self
                    .texts
                    .remove("content")
                    .filter(|c| !(calls && c.is_empty()));
                message.insert("content".into(), content.map_or(Value::Null, Value::String));
                for (field, text) in std::mem::take(&mut self.texts) {
                    message.insert(field.into(), text.into());
                }
                if !self.tool_calls.is_empty() {
                    let tool_calls = self.tool_calls.values().map(|call| {
                        let id = call.id.clone().unwrap_or(Value::Null);
                        let kind = call.kind.clone().unwrap_or_else(|| json!("function"));
                        json!({"id": id, "type": kind, "function": call.function()})
                    });
                    message.insert("tool_calls".into(), tool_calls.collect());
                }
                if let Some(call) = &self.function_call {
                    message.insert("function_call".into(), call.function());
                }
                choice.insert("message".into(), Value::Object(message));
            }
            Kind::Text => {
                let text = self.texts.remove("text").unwrap_or_default();
                choice.insert("text".into(), text.into());
            }
        }
        if let Some(logprobs) = self.logprobs {
            choice.insert("logprobs".into(), Value::Object(logprobs));
        }
        let finish = self.finish_reason.unwrap_or(Value::Null);
        choice.insert("finish_reason".into(), finish);
        Value::Object(choice)
    }
}

/// The JSON completion equivalent to a recorded stream (chat.completion.chunk → chat.completion;
/// text_completion chunks → text_completion), or None if the stream is not an OpenAI
/// completion stream.
#[must_use]
pub fn assemble(body: &[u8]) -> Option<Vec<u8>> {
    let (mut kind, mut fallback_kind) = (None, None);
    let mut shared = Map::new();
    let mut choices: BTreeMap<u64, ChoiceState> = BTreeMap::new();
    let mut usage = None;
    for chunk in chunks(body)? {
        let chunk_kind = match chunk.get("object").and_then(Value::as_str) {
            // Azure opens with an untyped chunk of `prompt_filter_results` and no choices.
            None | Some("") => None,
            Some(object) => Some(Kind::of_chunk(object)?),
        };
        fallback_kind = fallback_kind.or(chunk_kind);
        let parts = chunk.get("choices").and_then(Value::as_array);
        let parts = parts.map(Vec::as_slice).unwrap_or_default();
        if !parts.is_empty() {
            // The usage chunk's `object` may differ (the mock labels it chat); choices may not.
            let part_kind = chunk_kind?;
            if *kind.get_or_insert(part_kind) != part_kind {
                return None;
            }
            for (position, part) in parts.iter().enumerate() {
                let index = part.get("index").and_then(Value::as_u64);
                let state = choices.entry(index.unwrap_or(position as u64));
                state.or_default().merge(part_kind, part);
            }
        }
        for field in SHARED_FIELDS {
            let value = chunk.get(*field).filter(|v| !v.is_null());
            // A later real value replaces a placeholder ("" id, 0 created) from an opening chunk.
            if let (Some(value), true) = (value, shared.get(*field).is_none_or(is_placeholder)) {
                shared.insert((*field).to_string(), value.clone());
            }
        }
        if let Some(found) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = Some(found.clone());
        }
    }
    let kind = kind.or(fallback_kind)?;
    let mut completion = shared;
    completion.insert("object".into(), kind.completion_object().into());
    let choices = choices.into_iter().map(|(i, c)| c.into_json(kind, i));
    completion.insert("choices".into(), choices.collect());
    if let Some(usage) = usage {
        completion.insert("usage".into(), usage);
    }
    serde_json::to_vec(&Value::Object(completion)).ok()
}

fn is_placeholder(value: &Value) -> bool {
    value.as_str() == Some("") || value.as_u64() == Some(0)
}

// === synthesize ===

/// One SSE event carrying `value`.
fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// The deltas that stream a chat `message`: role, each text, each tool call, the function call.
fn chat_deltas(message: &Value) -> Vec<Value> {
    let role = message
        .get("role")
        .cloned()
        .unwrap_or_else(|| json!("assistant"));
    let mut deltas = vec![json!({"role": role})];
    for field in TEXT_FIELDS {
        if let Some(text) = message.get(*field).filter(|t| t.is_string()) {
            let mut delta = Map::new();
            delta.insert((*field).to_string(), text.clone());
            deltas.push(Value::Object(delta));
        }
    }
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for (index, call) in calls.into_iter().flatten().enumerate() {
        if let Some(call) = call.as_object() {
            let mut call = call.clone();
            call.insert("index".into(), index.into());
            deltas.push(json!({"tool_calls": [call]}));
        }
    }
    if let Some(call) = message.get("function_call").filter(|c| c.is_object()) {
        deltas.push(json!({"function_call": call}));
    }
    deltas
}

/// The SSE events equivalent to a JSON completion (chat.completion or text_completion), ending
/// with `data: [DONE]\n\n`; None for other JSON (embeddings etc.).
#[must_use]
pub fn synthesize(json: &[u8]) -> Option<Vec<Bytes>> {
    let completion: Value = serde_json::from_slice(json).ok()?;
    let kind = match completion.get("object").and_then(Value::as_str)? {
        "chat.completion" => Kind::Chat,
        "text_completion" => Kind::Text,
        _ => return None,
    };
    let mut head = Map::new();
    for field in SHARED_FIELDS {
        if let Some(value) = completion.get(*field).filter(|v| !v.is_null()) {
            head.insert((*field).to_string(), value.clone());
        }
    }
    head.insert("object".into(), kind.chunk_object().into());
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut chunk = head.clone();
        chunk.insert("choices".into(), choices);
        if let Some(usage) = usage {
            chunk.insert("usage".into(), usage.clone());
        }
        event(&Value::Object(chunk))
    };
    let mut events = Vec::new();
    for choice in completion.get("choices")?.as_array()? {
        let index = choice.get("index").cloned().unwrap_or_else(|| json!(0));
        let mut last = match kind {
            Kind::Chat => {
                let message = choice.get("message").unwrap_or(&Value::Null);
                for delta in chat_deltas(message) {
                    let part = json!({"index": index, "delta": delta, "finish_reason": null});
                    events.push(chunk(json!([part]), None));
                }
                json!({"index": index, "delta": {}})
            }
            Kind::Text => {
                let text = choice.get("text").cloned().unwrap_or_else(|| json!(""));
                let part = json!({"index": index, "text": text, "finish_reason": null});
                events.push(chunk(json!([part]), None));
                json!({"index": index, "text": ""})
            }
        };
        // Logprobs ride on the closing chunk: assembled back, they are the same lists.
        if let Some(logprobs) = choice.get("logprobs").filter(|l| !l.is_null()) {
            last["logprobs"] = logprobs.clone();
        }
        last["finish_reason"] = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        events.push(chunk(json!([last]), None));
    }
    if let Some(usage) = completion.get("usage").filter(|u| !u.is_null()) {
        events.push(chunk(json!([]), Some(usage)));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(events)
}

// === usage ===

/// `usage.total_tokens` of a JSON body or of a stream's usage chunk (0 when absent).
#[must_use]
pub fn total_tokens(form: BodyForm, body: &[u8]) -> u64 {
    let total = |v: &Value| v.get("usage")?.get("total_tokens")?.as_u64();
    match form {
        BodyForm::Json => serde_json::from_slice(body).ok().as_ref().and_then(total),
        BodyForm::Sse => {
            let events: Vec<_> = sse::events(body).collect();
            // The usage chunk comes last.
            events.into_iter().rev().find_map(|event| {
                let data = event.data().filter(|d| sse::names_usage(d))?;
                total(&serde_json::from_slice(&data).ok()?)
            })
        }
    }
    .unwrap_or(0)
}

#[cfg(test)]
mod tests;
