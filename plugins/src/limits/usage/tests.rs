use super::*;
use serde_json::json;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn parsed(body: &str) -> Map<String, Value> {
    serde_json::from_str(body).unwrap()
}

fn metered(sse: bool, pieces: &[&[u8]]) -> Metered {
    let mut meter = UsageMeter::new(sse);
    for piece in pieces {
        meter.feed(piece);
    }
    meter.finish()
}

fn filtered(pieces: &[&[u8]]) -> Vec<u8> {
    let mut filter = UsageChunkFilter::new();
    let mut out: Vec<u8> = pieces.iter().flat_map(|p| filter.filter(p)).collect();
    out.extend_from_slice(&filter.finish());
    out
}

fn usage(prompt: u64, completion: u64, total: u64) -> Option<Usage> {
    Some(Usage {
        prompt,
        completion,
        total,
    })
}

/// A chunk as OpenAI streams it; with include_usage every chunk carries `"usage": null`.
fn openai_chunk(delta: Value, finish: Option<&str>, include_usage: bool) -> Value {
    let mut chunk = json!({"id": "chatcmpl-B9", "object": "chat.completion.chunk",
        "created": 1_727_000_000, "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_f85bea6784",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
    if include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

fn openai_usage_chunk() -> Value {
    json!({"id": "chatcmpl-B9", "object": "chat.completion.chunk", "created": 1_727_000_000,
        "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_f85bea6784", "choices": [],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}}})
}

fn event(chunk: &Value) -> String {
    format!("data: {chunk}\n\n")
}

/// "Hello! How can I help?" over four content chunks (2 + 1 + 1 + 3 counted tokens).
fn openai_events(include_usage: bool) -> Vec<String> {
    let mut events = vec![event(&openai_chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
        include_usage,
    ))];
    for piece in ["Hello", "!", " How", " can I help?"] {
        let chunk = openai_chunk(json!({"content": piece}), None, include_usage);
        events.push(event(&chunk));
    }
    events.push(event(&openai_chunk(json!({}), Some("stop"), include_usage)));
    if include_usage {
        events.push(event(&openai_usage_chunk()));
    }
    events.push("data: [DONE]\n\n".into());
    events
}

// === estimates ===

#[test]
fn estimates_a_chat_with_parts_tool_calls_and_tools() {
    let body = object(
        json!({"model": "gpt-4o", "stream": true, "max_completion_tokens": 200,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "name": "ada", "content": [
                {"type": "text", "text": "What is the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/p.png"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C, clear"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "Current weather for a city", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}),
    );
    // Texts 28 + 3 + 29 + 11 + 16 + 12 ("°" is 2 bytes) = 99, tools' JSON 189: 288 bytes = 72
    // tokens; 4 messages × 4 + 3 = 19.
    assert_eq!(estimate_prompt_tokens(&body), 91);
    let legacy = object(json!({"messages": [
        {"role": "assistant", "content": null, "function_call": {"name": "f", "arguments": "{}"}}],
        "functions": [{"name": "f", "parameters": {}}]}));
    // 1 + 2 + `[{"name":"f","parameters":{}}]` (30) = 33 bytes = 9 tokens, + 4 + 3.
    assert_eq!(estimate_prompt_tokens(&legacy), 16);
}

#[test]
fn estimates_completions_and_embeddings_inputs() {
    let cases = [
        (
            r#"{"prompt": ["Say this is a test", "Say it twice"], "max_tokens": 7}"#,
            8,
        ),
        (r#"{"prompt": "Say this is a test"}"#, 5),
        (r#"{"prompt": [1212, 318, 257]}"#, 3),
        (r#"{"prompt": [[1212, 318], [257]]}"#, 3),
        (
            r#"{"input": "The food was delicious and the waiter..."}"#,
            10,
        ),
        (
            r#"{"input": ["a", "bb", "ccc"], "model": "text-embedding-3-small"}"#,
            2,
        ),
        (r#"{"input": "日本語"}"#, 3),
        (r#"{"prompt": "hi"}"#, 1),
        (r#"{"messages": []}"#, 3),
        (r#"{"model": "gpt-4o", "prompt": null}"#, 0),
    ];
    for (body, want) in cases {
        assert_eq!(estimate_prompt_tokens(&parsed(body)), want, "{body}");
    }
}

#[test]
fn reads_requested_completion_tokens() {
    let cases = [
        (r#"{"max_completion_tokens": 200}"#, Some(200)),
        (r#"{"max_tokens": 7, "n": 2}"#, Some(14)),
        (
            r#"{"max_completion_tokens": 100, "max_tokens": 50}"#,
            Some(100),
        ),
        (
            r#"{"max_completion_tokens": null, "max_tokens": 50, "n": 1}"#,
            Some(50),
        ),
        (r#"{"max_tokens": 50, "n": 0}"#, Some(50)),
        (
            r#"{"max_tokens": 18446744073709551615, "n": 3}"#,
            Some(u64::MAX),
        ),
        (r#"{"max_tokens": -1}"#, None),
        (r#"{"max_tokens": "100"}"#, None),
        (r#"{"max_tokens": 1.5}"#, None),
        (r#"{"max_completion_tokens": "x", "max_tokens": 50}"#, None),
        (r#"{"n": 2}"#, None),
    ];
    for (body, want) in cases {
        assert_eq!(requested_completion_tokens(&parsed(body)), want, "{body}");
    }
}

#[test]
fn asks_for_usage_on_streams_only_when_the_client_did_not() {
    let on = Some(r#"{"include_usage": true}"#);
    let cases = [
        (r#"{"stream": true}"#, true, on),
        (
            r#"{"stream": true, "stream_options": {"include_usage": false}}"#,
            true,
            on,
        ),
        (r#"{"stream": true, "stream_options": null}"#, true, on),
        (
            r#"{"stream": true, "stream_options": {"include_obfuscation": false}}"#,
            true,
            Some(r#"{"include_obfuscation": false, "include_usage": true}"#),
        ),
        (
            r#"{"stream": true, "stream_options": {"include_usage": true}}"#,
            false,
            on,
        ),
        (
            r#"{"stream": true, "stream_options": "yes"}"#,
            false,
            Some(r#""yes""#),
        ),
        (r#"{"stream": false}"#, false, None),
        (r#"{"stream": "true"}"#, false, None),
        (r#"{}"#, false, None),
    ];
    for (body, changed, options) in cases {
        let mut map = parsed(body);
        assert_eq!(ensure_include_usage(&mut map), changed, "{body}");
        let options: Option<Value> = options.map(|o| serde_json::from_str(o).unwrap());
        assert_eq!(map.get("stream_options"), options.as_ref(), "{body}");
        assert_eq!(map.get("stream"), parsed(body).get("stream"), "{body}");
        let stream = map.get("stream") == Some(&Value::Bool(true));
        let still_asks = options.as_ref().is_some_and(|o| o["include_usage"] == true);
        assert_eq!(asks_for_usage(&map), stream && still_asks, "{body}");
    }
    assert!(asks_for_usage(&parsed(
        r#"{"stream_options": {"include_usage": true}}"#
    )));
}

// === meter: JSON bodies ===

#[test]
fn meters_a_chat_completion_json() {
    let body = json!({"id": "chatcmpl-123", "object": "chat.completion", "created": 1_677_652_288,
        "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "message": {"role": "assistant",
            "content": "Hello! How can I help you today?", "refusal": null},
            "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
            "completion_tokens_details": {"reasoning_tokens": 0}}})
    .to_string();
    let (head, tail) = body.as_bytes().split_at(40);
    let got = metered(false, &[head, tail]);
    assert_eq!(got.usage, usage(12, 9, 21));
    assert_eq!(got.streamed_completion_tokens, 8, "32 bytes of content");
    let bare = json!({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}},
        {"index": 1, "message": {"role": "assistant", "content": "Sunny."}}]})
    .to_string();
    let got = metered(false, &[bare.as_bytes()]);
    assert_eq!(got.usage, None);
    assert_eq!(
        got.streamed_completion_tokens, 9,
        "27 bytes = 7, then 6 bytes = 2"
    );
}

#[test]
fn meters_an_embeddings_json() {
    let body = br#"{"object":"list","data":[{"object":"embedding","index":0,
        "embedding":[0.0023064255,-0.009327292,-0.0028842222]}],"model":"text-embedding-3-small",
        "usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let got = metered(false, &[body]);
    assert_eq!(got.usage, usage(8, 0, 8));
    assert_eq!(got.streamed_completion_tokens, 0);
    let no_total = br#"{"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
    assert_eq!(metered(false, &[no_total]).usage, usage(5, 2, 7));
}

#[test]
fn stops_buffering_a_json_body_over_the_cap() {
    let head = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"pad":""#;
    let pad = vec![b'x'; MAX_HELD - head.len() - 2];
    assert_eq!(metered(false, &[head, &pad, b"\"}"]).usage, usage(3, 4, 7));
    let over = metered(false, &[head, &pad, b" \"}"]);
    assert_eq!(over, Metered::default(), "one byte over the cap");
}

#[test]
fn reads_malformed_bodies_as_no_usage() {
    for body in [
        &br#"{"usage": {"prompt_tokens": 3"#[..],
        b"not json",
        b"[1, 2]",
        br#"{"usage": "lots"}"#,
        br#"{"usage": {}}"#,
        br#"{"usage": {"total_tokens": -1}, "choices": "none"}"#,
        b"",
    ] {
        let text = String::from_utf8_lossy(body);
        assert_eq!(metered(false, &[body]), Metered::default(), "{text}");
        let event = format!("data: {text}\n\n");
        assert_eq!(
            metered(true, &[event.as_bytes()]),
            Metered::default(),
            "{text}"
        );
    }
    let odd = b"data: {broken\n\n: comment\n\nevent: ping\n\ndata: [DONE]\n\ndata: \xff\xfe\n\n";
    assert_eq!(metered(true, &[odd]), Metered::default());
}

mod stream;
