//! The stream side: the meter on SSE bodies, the usage chunk filter, and any split of both,
//! which the cache's reading of the whole stream agrees with.

use super::*;
use crate::cache::{sse as cache_sse, BodyForm};
use crate::sse::tests::{cut, split};
use proptest::prelude::*;

// === meter ===

#[test]
fn meters_an_openai_stream_with_include_usage() {
    let stream = openai_events(true).concat();
    let got = metered(true, &[stream.as_bytes()]);
    assert_eq!(got.usage, usage(19, 10, 29));
    assert_eq!(got.streamed_completion_tokens, 7);
}

#[test]
fn counts_a_stream_without_usage() {
    let stream = openai_events(false).concat();
    let got = metered(true, &[stream.as_bytes()]);
    assert_eq!(
        got,
        Metered {
            usage: None,
            streamed_completion_tokens: 7
        }
    );
    // mock-llm's text completion stream: "reply-1a2b3c4d" (4), " tok1" (2), " tok2" (2).
    let mut mock = String::new();
    for (text, finish) in [
        ("reply-1a2b3c4d", None),
        (" tok1", None),
        (" tok2", None),
        ("", Some("stop")),
    ] {
        mock += &event(
            &json!({"id": "cmpl-1a2b", "object": "text_completion", "created": 0,
            "model": "mock", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}),
        );
    }
    mock += "data: [DONE]\n\n";
    assert_eq!(
        metered(true, &[mock.as_bytes()]).streamed_completion_tokens,
        8
    );
}

#[test]
fn counts_reasoning_tool_calls_and_choices_over_any_line_ending() {
    let call = |name: Option<&str>, arguments: &str| {
        let mut call = json!({"index": 0, "function": {"arguments": arguments}});
        if let Some(name) = name {
            call["id"] = json!("call_9");
            call["function"]["name"] = json!(name);
        }
        openai_chunk(json!({"tool_calls": [call]}), None, false)
    };
    let two = json!({"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": "Hi"}}, {"index": 1, "delta": {"content": "Hey"}}]});
    let stream = [
        format!(
            "data: {}\r\r",
            openai_chunk(json!({"reasoning_content": "Let me think"}), None, false)
        ),
        format!(
            ": keep-alive\r\n\r\ndata: {}\r\n\r\n",
            call(Some("get_weather"), "")
        ),
        format!(
            "event: message\nid: 3\ndata: {}\n\n",
            call(None, "{\"city\":")
        ),
        format!("data: {}\r\r", call(None, "\"Paris\"}")),
        format!("data: {two}\r\n\r\n"),
        "data: [DONE]\r\r".into(),
    ]
    .concat();
    // 3 ("Let me think") + 3 ("get_weather") + 2 + 2 (arguments) + 1 + 1 (one per choice).
    assert_eq!(
        metered(true, &[stream.as_bytes()]).streamed_completion_tokens,
        12
    );
}

#[test]
fn meters_an_unterminated_last_event_and_a_bare_cr_at_the_end() {
    let usage_event = format!("data: {}", openai_usage_chunk());
    assert_eq!(
        metered(true, &[usage_event.as_bytes()]).usage,
        usage(19, 10, 29)
    );
    let cr = format!("{usage_event}\r\r");
    assert_eq!(metered(true, &[cr.as_bytes()]).usage, usage(19, 10, 29));
}

// === filter ===

#[test]
fn strips_only_the_usage_chunk() {
    let events = openai_events(true);
    let stream = events.concat();
    let usage_event = event(&openai_usage_chunk());
    let want = stream.replace(&usage_event, "");
    assert_eq!(want.len(), stream.len() - usage_event.len());
    assert_eq!(filtered(&[stream.as_bytes()]), want.as_bytes());
    // One write per event, as the upstream sends them: each comes back as it went, the usage one empty.
    let mut filter = UsageChunkFilter::new();
    for e in &events {
        let out = filter.filter(e.as_bytes());
        let dropped = *e == usage_event;
        assert_eq!(out.as_ref(), if dropped { &b""[..] } else { e.as_bytes() });
    }
    assert!(filter.finish().is_empty());
    let no_usage = openai_events(false).concat();
    assert_eq!(filtered(&[no_usage.as_bytes()]), no_usage.as_bytes());
}

#[test]
fn keeps_usage_chunks_that_carry_choices_or_null() {
    let mut with_choice = openai_chunk(json!({"content": "x"}), Some("stop"), false);
    with_choice["usage"] = openai_usage_chunk()["usage"].clone();
    let mut null_usage = openai_usage_chunk();
    null_usage["usage"] = Value::Null;
    let stream = format!(
        "{}{}: \"usage\"\n\n",
        event(&with_choice),
        event(&null_usage)
    );
    assert_eq!(filtered(&[stream.as_bytes()]), stream.as_bytes());
    assert_eq!(metered(true, &[stream.as_bytes()]).usage, usage(19, 10, 29));
}

#[test]
fn holds_an_incomplete_event_until_its_blank_line() {
    let usage_event = format!("data: {}\r\n\r\n", openai_usage_chunk());
    let (usage_head, usage_tail) = usage_event.split_at(usage_event.len() - 1);
    let mut filter = UsageChunkFilter::new();
    assert_eq!(filter.filter(b"data: {\"a\":1}\r\n\r").as_ref(), b"");
    assert_eq!(
        filter.filter(b"\ndata: [DO").as_ref(),
        b"data: {\"a\":1}\r\n\r\n"
    );
    assert_eq!(filter.filter(b"NE]\r\r").as_ref(), b"", "a last \\r waits");
    let out = filter.filter(usage_head.as_bytes());
    assert_eq!(out.as_ref(), b"data: [DONE]\r\r");
    assert_eq!(filter.filter(usage_tail.as_bytes()).as_ref(), b"");
    assert_eq!(filter.filter(b"\n\ndata: cut").as_ref(), b"\n\n");
    assert_eq!(filter.finish().as_ref(), b"data: cut");
    assert!(filter.finish().is_empty());
}

#[test]
fn passes_an_event_too_long_to_hold_and_meters_the_rest() {
    let huge = [
        b"data: {\"choices\":[{\"text\":\"".as_slice(),
        &vec![b'x'; MAX_HELD + (1 << 20)],
    ]
    .concat();
    let after = event(&json!({"choices": [{"index": 0, "text": "done"}], "usage": null}));
    let usage_event = event(&openai_usage_chunk());
    let stream = [
        &huge,
        &b"\"}]}\n\n"[..],
        after.as_bytes(),
        usage_event.as_bytes(),
    ]
    .concat();
    let pieces: Vec<&[u8]> = stream.chunks(1 << 20).collect();
    let got = filtered(&pieces);
    assert_eq!(got.len(), stream.len() - usage_event.len());
    assert!(got == stream[..got.len()], "the long event passes whole");
    let got = metered(true, &pieces);
    assert_eq!(got.usage, usage(19, 10, 29));
    assert_eq!(got.streamed_completion_tokens, 1, "only the event after it");
}

// === any split ===

/// A stream of content chunks in mixed line endings, with OpenAI's usage chunk when asked; the
/// bytes, and where the usage event lies in them.
fn built_stream(
    contents: &[String],
    endings: &[usize],
    include_usage: bool,
) -> (Vec<u8>, Option<Range>) {
    const ENDINGS: [&str; 3] = ["\n", "\r\n", "\r"];
    let ending = |i: usize| ENDINGS[endings[i % endings.len()] % ENDINGS.len()];
    let mut out = String::new();
    let mut usage_at = None;
    for (i, content) in contents.iter().enumerate() {
        let chunk = openai_chunk(json!({"content": content}), None, include_usage);
        let le = ending(i);
        if i % 3 == 1 {
            out += &format!(": keep-alive{le}{le}id: {i}{le}");
        }
        out += &format!("data: {chunk}{le}{le}");
    }
    if include_usage {
        let start = out.len();
        out += &format!("data: {}\r\n\r\n", openai_usage_chunk());
        usage_at = Some(start..out.len());
    }
    out += &format!("data: [DONE]{0}{0}", ending(contents.len()));
    (out.into_bytes(), usage_at)
}

type Range = std::ops::Range<usize>;

proptest! {
    #[test]
    fn any_split_meters_and_filters_as_the_whole(
        contents in prop::collection::vec("[a-z é漢\"\\\\]{0,9}", 1..7),
        endings in prop::collection::vec(0usize..3, 1..4),
        include_usage: bool,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let (stream, usage_at) = built_stream(&contents, &endings, include_usage);
        let pieces = cut(&stream, &cuts);
        let whole = metered(true, &[stream.as_slice()]);
        prop_assert_eq!(metered(true, &pieces), whole);
        let tokens: u64 = contents.iter().map(|c| (c.len() as u64).div_ceil(4)).sum();
        prop_assert_eq!(whole.streamed_completion_tokens, tokens);
        prop_assert_eq!(whole.usage, usage_at.as_ref().and_then(|_| usage(19, 10, 29)));
        let mut want = stream.clone();
        if let Some(at) = usage_at {
            want.drain(at);
        }
        prop_assert_eq!(filtered(&pieces), want.clone());
        prop_assert_eq!(filtered(&[stream.as_slice()]), want);
        // The cache, reading the whole stream, sees the events the meter saw in pieces.
        let seen: Vec<Vec<u8>> = split(&pieces).into_iter().map(|(raw, ..)| raw).collect();
        let replayed = cache_sse::split_events(&Bytes::from(stream.clone()));
        prop_assert_eq!(replayed.iter().map(|e| e.to_vec()).collect::<Vec<_>>(), seen);
        let total = whole.usage.map_or(0, |u| u.total);
        prop_assert_eq!(cache_sse::total_tokens(BodyForm::Sse, &stream), total);
        prop_assert!(cache_sse::ended_cleanly(&stream));
        let assembled: Value = serde_json::from_slice(&cache_sse::assemble(&stream).unwrap_or_default())
            .unwrap_or_default();
        prop_assert_eq!(&assembled["choices"][0]["message"]["content"], &json!(contents.concat()));
    }
}
