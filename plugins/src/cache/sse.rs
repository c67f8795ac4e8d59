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
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// `data: <chunk>` events then `data: [DONE]`, as an upstream sends them.
    fn stream_of(chunks: &[Value]) -> Vec<u8> {
        let mut out: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        out.push_str("data: [DONE]\n\n");
        out.into_bytes()
    }

    fn joined(events: &[Bytes]) -> Vec<u8> {
        events.concat()
    }

    /// What mock-llm's `stream_completion` sends, its usage chunk labelled chat even for text.
    fn mock_stream(chat: bool, tokens: &[&str], usage: Option<&Value>) -> Vec<u8> {
        let head =
            |object: &str| json!({"id": "cmpl-1", "object": object, "created": 0, "model": "mock"});
        let chunk = |content: Option<&str>, role: bool, finish: Option<&str>| {
            let mut c = head(if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            });
            c["choices"] = if chat {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(content) = content {
                    delta.insert("content".into(), json!(content));
                }
                json!([{"index": 0, "delta": delta, "finish_reason": finish}])
            } else {
                json!([{"index": 0, "text": content.unwrap_or(""), "finish_reason": finish}])
            };
            c
        };
        let mut chunks: Vec<Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| chunk(Some(t), i == 0, None))
            .collect();
        chunks.push(chunk(None, false, Some("stop")));
        if let Some(usage) = usage {
            let mut c = head("chat.completion.chunk");
            c["choices"] = json!([]);
            c["usage"] = usage.clone();
            chunks.push(c);
        }
        stream_of(&chunks)
    }

    /// What mock-llm's `completion` answers to the same request without `stream`.
    fn mock_completion(chat: bool, text: &str, usage: &Value) -> Value {
        let (object, choice) = if chat {
            let message = json!({"role": "assistant", "content": text});
            (
                "chat.completion",
                json!({"index": 0, "message": message, "finish_reason": "stop"}),
            )
        } else {
            (
                "text_completion",
                json!({"index": 0, "text": text, "finish_reason": "stop"}),
            )
        };
        json!({"id": "cmpl-1", "object": object, "created": 0, "model": "mock",
               "choices": [choice], "usage": usage})
    }

    /// An OpenAI-shaped chunk of choice 0 carrying `delta`.
    fn delta(delta: Value, finish: Option<&str>) -> Value {
        json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-4o", "system_fingerprint": "fp_1", "service_tier": "default",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    }

    fn call(index: u64, id: Option<&str>, name: Option<&str>, arguments: &str) -> Value {
        let mut call = json!({"index": index, "function": {"arguments": arguments}});
        if let (Some(id), Some(name)) = (id, name) {
            call["id"] = json!(id);
            call["type"] = json!("function");
            call["function"]["name"] = json!(name);
        }
        json!({"tool_calls": [call]})
    }

    fn usage() -> Value {
        json!({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})
    }

    #[test]
    fn assembles_the_mock_stream_into_the_mock_completion() {
        for chat in [true, false] {
            let stream = mock_stream(chat, &["reply-ab", " tok1", " tok2"], Some(&usage()));
            let want = mock_completion(chat, "reply-ab tok1 tok2", &usage());
            assert_eq!(parse(&assemble(&stream).unwrap()), want, "chat: {chat}");
            let bare = parse(&assemble(&mock_stream(chat, &["a"], None)).unwrap());
            assert!(bare.get("usage").is_none());
        }
    }

    #[test]
    fn assembles_tool_calls_split_over_chunks() {
        let first = json!({"role": "assistant", "content": null, "tool_calls":
            call(0, Some("call_a"), Some("weather"), "")["tool_calls"]});
        let stream = stream_of(&[
            delta(first, None),
            delta(call(0, None, None, "{\"ci"), None),
            delta(call(0, None, None, "ty\":\"Paris\"}"), None),
            delta(call(1, Some("call_b"), Some("time"), ""), None),
            delta(call(1, None, None, "{\"tz\":"), None),
            delta(call(1, None, None, "\"CET\"}"), None),
            delta(json!({}), Some("tool_calls")),
            json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [], "usage": usage()}),
        ]);
        let got = parse(&assemble(&stream).unwrap());
        let want = json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 1_700_000_000,
            "model": "gpt-4o", "system_fingerprint": "fp_1", "service_tier": "default",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{\"tz\":\"CET\"}"}}]}}],
            "usage": usage()});
        assert_eq!(got, want);
        let replayed = joined(&synthesize(&serde_json::to_vec(&got).unwrap()).unwrap());
        assert_eq!(parse(&assemble(&replayed).unwrap()), want, "round trip");
    }

    #[test]
    fn assembles_reasoning_refusal_logprobs_and_interleaved_choices() {
        let lp = |t: &str| json!({"content": [{"token": t, "logprob": -0.1}], "refusal": null});
        let mut second = delta(json!({"role": "assistant", "content": "B"}), Some("length"));
        second["choices"][0]["index"] = json!(1);
        let mut with_lp = delta(json!({"content": "lo"}), None);
        with_lp["choices"][0]["logprobs"] = lp("lo");
        let mut first_lp = delta(json!({"content": "hel"}), None);
        first_lp["choices"][0]["logprobs"] = lp("hel");
        let stream = stream_of(&[
            delta(
                json!({"role": "assistant", "reasoning_content": "think "}),
                None,
            ),
            second,
            delta(json!({"reasoning_content": "hard"}), None),
            first_lp,
            with_lp,
            delta(json!({"refusal": "no"}), Some("stop")),
        ]);
        let got = parse(&assemble(&stream).unwrap());
        let zero = &got["choices"][0];
        assert_eq!(zero["message"]["reasoning_content"], "think hard");
        assert_eq!(zero["message"]["content"], "hello");
        assert_eq!(zero["message"]["refusal"], "no");
        assert_eq!(
            zero["logprobs"]["content"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(got["choices"][1]["message"]["content"], "B");
        assert_eq!(got["choices"][1]["finish_reason"], "length");
        let replayed = joined(&synthesize(&serde_json::to_vec(&got).unwrap()).unwrap());
        assert_eq!(parse(&assemble(&replayed).unwrap()), got, "round trip");
    }

    #[test]
    fn synthesizes_openai_shaped_events() {
        let completion = mock_completion(true, "hi there", &usage());
        let events = synthesize(&serde_json::to_vec(&completion).unwrap()).unwrap();
        assert_eq!(events.len(), 5, "role, content, finish, usage, [DONE]");
        assert_eq!(events.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        for e in &events[..4] {
            assert!(e.starts_with(b"data: {") && e.ends_with(b"}\n\n"));
            let chunk = parse(&e[6..]);
            assert_eq!(
                (&chunk["object"], &chunk["id"]),
                (&json!("chat.completion.chunk"), &json!("cmpl-1"))
            );
        }
        assert_eq!(
            parse(&events[2][6..])["choices"][0]["finish_reason"],
            "stop"
        );
        assert_eq!(parse(&events[3][6..])["choices"], json!([]));
        let body = joined(&events);
        assert!(ended_cleanly(&body));
        assert_eq!(total_tokens(BodyForm::Sse, &body), 12);
        assert_eq!(parse(&assemble(&body).unwrap()), completion);
        let text = mock_completion(false, "plain", &usage());
        let events = synthesize(&serde_json::to_vec(&text).unwrap()).unwrap();
        assert_eq!(parse(&assemble(&joined(&events)).unwrap()), text);
    }

    #[test]
    fn rejects_what_is_not_a_completion() {
        for body in [
            &b""[..],
            b"garbage",
            b"data: {not json\n\n",
            b"data: [1]\n\n",
            b"data: {\"object\":\"list\",\"data\":[]}\n\ndata: [DONE]\n\n",
            b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n",
        ] {
            assert_eq!(assemble(body), None, "{}", String::from_utf8_lossy(body));
        }
        let mixed = stream_of(&[
            delta(json!({"content": "a"}), None),
            json!({"object": "text_completion", "choices": [{"index": 0, "text": "b"}]}),
        ]);
        assert_eq!(assemble(&mixed), None);
        let embeddings = json!({"object": "list", "data": [], "usage": {"total_tokens": 3}});
        assert_eq!(synthesize(&serde_json::to_vec(&embeddings).unwrap()), None);
        assert_eq!(synthesize(b"{"), None);
    }

    #[test]
    fn splits_events_on_both_separators_without_copying() {
        let body =
            Bytes::from_static(b"data: a\n\ndata: b\r\n\r\n: note\ndata: c\n\ndata: [DONE]\n\n");
        let events = split_events(&body);
        let texts: Vec<&[u8]> = events.iter().map(Bytes::as_ref).collect();
        assert_eq!(
            texts,
            [
                &b"data: a\n\n"[..],
                b"data: b\r\n\r\n",
                b": note\ndata: c\n\n",
                b"data: [DONE]\n\n"
            ]
        );
        let range = body.as_ptr_range();
        assert!(
            events.iter().all(|e| range.contains(&e.as_ptr())),
            "slices of the body"
        );
        let cut = Bytes::from_static(b"data: a\n\ndata: b");
        assert_eq!(
            split_events(&cut).concat(),
            cut.as_ref(),
            "an unterminated tail is kept"
        );
    }

    #[test]
    fn knows_a_clean_end_from_a_cut() {
        let whole = mock_stream(true, &["a", "b"], None);
        assert!(ended_cleanly(&whole));
        assert!(ended_cleanly(b"data: {}\r\n\r\ndata: [DONE]\r\n\r\n"));
        assert!(
            !ended_cleanly(&whole[..whole.len() - b"data: [DONE]\n\n".len()]),
            "cut before [DONE]"
        );
        assert!(
            !ended_cleanly(&whole[..whole.len() - 1]),
            "[DONE] unterminated"
        );
        assert!(!ended_cleanly(b"data: [DONE]\n\ndata: {}\n\n"));
        assert!(!ended_cleanly(b""));
    }

    #[test]
    fn reads_a_stream_alike_over_any_line_ending() {
        let lf = String::from_utf8(mock_stream(true, &["a", "b"], Some(&usage()))).unwrap();
        let want = assemble(lf.as_bytes());
        for ending in ["\r\n", "\r"] {
            let body = lf.replace('\n', ending);
            let body = body.as_bytes();
            assert!(ended_cleanly(body), "{ending:?}");
            assert_eq!(total_tokens(BodyForm::Sse, body), 12, "{ending:?}");
            let mut meter = crate::limits::usage::UsageMeter::new(true);
            meter.feed(body);
            let metered = meter.finish().usage.map(|u| u.total);
            assert_eq!(metered, Some(12), "the meter agrees: {ending:?}");
            assert_eq!(assemble(body), want, "{ending:?}");
            assert_eq!(split_events(&Bytes::copy_from_slice(body)).len(), 5);
        }
    }

    #[test]
    fn reads_total_tokens_from_either_form() {
        let json = serde_json::to_vec(&mock_completion(true, "x", &usage())).unwrap();
        assert_eq!(total_tokens(BodyForm::Json, &json), 12);
        assert_eq!(total_tokens(BodyForm::Json, b"{\"object\":\"x\"}"), 0);
        assert_eq!(total_tokens(BodyForm::Json, b"garbage"), 0);
        let stream = mock_stream(true, &["\"usage\""], Some(&usage()));
        assert_eq!(total_tokens(BodyForm::Sse, &stream), 12);
        assert_eq!(
            total_tokens(BodyForm::Sse, &mock_stream(true, &["\"usage\""], None)),
            0
        );
    }
}
