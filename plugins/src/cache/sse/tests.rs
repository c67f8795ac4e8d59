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
    let body = Bytes::from_static(b"data: a\n\ndata: b\r\n\r\n: note\ndata: c\n\ndata: [DONE]\n\n");
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
