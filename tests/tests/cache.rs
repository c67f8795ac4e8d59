//! The prompt cache end to end on one gateway: keys that ignore spelling, hits that never
//! reach the upstream, stream/plain conversion, single-flight, cache directives, expiry, purge,
//! what is never stored, and the official SDK reading a cached stream. The shared Redis tier
//! and the disk tier are in `cache_tiers.rs`.

mod cache_support;

use cache_support::{chat, gateway, post};
use futures_util::future::join_all;
use serde_json::Value;
use sluice_e2e::{chat_body, config, run_python_check, Answer, Gateway, Mock, UpstreamCalls};
use std::time::{Duration, Instant};

// === Helpers ===

/// The `data:` payloads of an SSE body, in order.
fn data_lines(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The content a stream carries, assembled from its deltas.
fn streamed_content(body: &str) -> String {
    data_lines(body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

fn assert_complete_stream(a: &Answer, what: &str) {
    assert_eq!(a.status, 200, "{what}: {a:?}");
    assert_eq!(
        a.header("content-type"),
        Some("text/event-stream"),
        "{what}: {a:?}"
    );
    assert!(
        a.header("content-length").is_none(),
        "{what}: a stream has no content-length: {a:?}"
    );
    assert!(
        a.body.ends_with("data: [DONE]\n\n"),
        "{what}: must end with [DONE]: {:?}",
        a.body
    );
}

async fn purge(gw: &Gateway, body: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/admin/cache/purge", gw.admin))
        .body(body.to_string())
        .send()
        .await
        .expect("purge");
    assert_eq!(resp.status(), 200, "purge {body}");
    resp.json().await.expect("purge JSON")
}

// === 1. Keys ===

#[tokio::test]
async fn spelling_differences_hit_and_real_differences_miss() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(
        &mock,
        "      key: { normalize: { whitespace: collapse } }\n",
        "",
    );
    let c = reqwest::Client::new();
    let auth = [("authorization", "Bearer k1")];
    let first = post(
        &gw,
        &c,
        r#"{"model":"m","messages":[{"role":"user","content":"hello big world"}],"temperature":0}"#,
        &auth,
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.cache(), "miss", "{first:?}");
    assert_eq!(up.calls().await, 1);

    let same = [
        (
            "key order",
            r#"{"temperature":0,"messages":[{"content":"hello big world","role":"user"}],"model":"m"}"#,
        ),
        (
            "whitespace",
            r#"{"model":"m","messages":[{"role":"user","content":"  hello \n big\t\tworld   "}],"temperature":0}"#,
        ),
        (
            "0.0 for 0",
            r#"{"model":"m","messages":[{"role":"user","content":"hello big world"}],"temperature":0.0}"#,
        ),
        (
            "extra user field",
            r#"{"model":"m","messages":[{"role":"user","content":"hello big world"}],"temperature":0,"user":"alice"}"#,
        ),
    ];
    for (what, body) in same {
        let a = post(&gw, &c, body, &auth).await;
        assert_eq!(a.status, 200, "{what}: {a:?}");
        assert_eq!(a.cache(), "hit", "{what}: {a:?}");
        assert_eq!(a.body, first.body, "{what}: the cached answer");
    }
    assert_eq!(up.calls().await, 1, "hits never reach the upstream");

    let differ = [
        (
            "other content",
            r#"{"model":"m","messages":[{"role":"user","content":"hello small world"}],"temperature":0}"#,
            "Bearer k1",
        ),
        (
            "other model",
            r#"{"model":"m2","messages":[{"role":"user","content":"hello big world"}],"temperature":0}"#,
            "Bearer k1",
        ),
        (
            "other API key",
            r#"{"model":"m","messages":[{"role":"user","content":"hello big world"}],"temperature":0}"#,
            "Bearer other",
        ),
    ];
    for (i, (what, body, key)) in differ.into_iter().enumerate() {
        let a = post(&gw, &c, body, &[("authorization", key)]).await;
        assert_eq!(a.status, 200, "{what}: {a:?}");
        assert_eq!(a.cache(), "miss", "{what}: {a:?}");
        if what != "other API key" {
            // (The mock's answer depends on the body only, so another key gets the same text.)
            assert_ne!(a.body, first.body, "{what}: not the first answer");
        }
        assert_eq!(up.calls().await, 2 + i as u64, "{what}");
    }
}

// === 2. Repeats and large prompts ===

#[tokio::test]
async fn repeats_and_a_400k_prompt_never_reach_the_upstream() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, "", "");
    let c = reqwest::Client::new();
    let body = chat("m", "repeat me", false);
    let first = post(&gw, &c, body.clone(), &[]).await;
    assert_eq!((first.status, first.cache()), (200, "miss"));
    for i in 0..5 {
        let a = post(&gw, &c, body.clone(), &[]).await;
        assert_eq!((a.status, a.cache()), (200, "hit"), "repeat {i}");
        assert_eq!(a.body, first.body);
        assert!(a.header("age").is_some(), "a hit carries age: {a:?}");
    }
    assert_eq!(up.calls().await, 1);

    let big = chat_body("m", 400_000, false);
    let a = post(&gw, &c, big.clone(), &[]).await;
    assert_eq!((a.status, a.cache()), (200, "miss"), "{}", gw.log_text());
    assert!(
        a.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with(&format!("reply-{}", &sluice_e2e::sha256(&big)[..8])),
        "the upstream got the whole body"
    );
    assert_eq!(up.calls().await, 2);
    let b = post(&gw, &c, big, &[]).await;
    assert_eq!((b.status, b.cache()), (200, "hit"));
    assert_eq!(b.body, a.body);
    assert_eq!(up.calls().await, 2, "the 400 KB prompt was cached");
}

// === 3. Streams ===

#[tokio::test]
async fn streams_and_plain_answers_convert_both_ways() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, "", "");
    let c = reqwest::Client::new();

    // stream, then stream
    let s1 = post(&gw, &c, chat("m", "stream twice", true), &[]).await;
    assert_eq!(s1.cache(), "miss", "{s1:?}");
    assert_complete_stream(&s1, "upstream stream");
    let s2 = post(&gw, &c, chat("m", "stream twice", true), &[]).await;
    assert_eq!(s2.cache(), "hit", "{s2:?}");
    assert_complete_stream(&s2, "cached stream");
    assert_eq!(data_lines(&s2.body), data_lines(&s1.body), "same events");
    assert_eq!(up.calls().await, 1);

    // stream, then plain
    let s = post(&gw, &c, chat("m", "stream then plain", true), &[]).await;
    assert_eq!(s.cache(), "miss");
    assert_complete_stream(&s, "upstream stream");
    let p = post(&gw, &c, chat("m", "stream then plain", false), &[]).await;
    assert_eq!((p.status, p.cache()), (200, "hit"), "{p:?}");
    assert!(
        p.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{p:?}"
    );
    let content = streamed_content(&s.body);
    assert!(
        content.starts_with("reply-") && content.ends_with(" tok15"),
        "{content}"
    );
    assert_eq!(
        p.json()["choices"][0]["message"]["content"].as_str(),
        Some(content.as_str()),
        "plain hit assembled from the stream: {}",
        p.body
    );
    assert_eq!(up.calls().await, 2);

    // plain, then stream
    let p = post(&gw, &c, chat("m", "plain then stream", false), &[]).await;
    assert_eq!((p.status, p.cache()), (200, "miss"));
    let s = post(&gw, &c, chat("m", "plain then stream", true), &[]).await;
    assert_eq!(s.cache(), "hit", "{s:?}");
    assert_complete_stream(&s, "stream synthesized from a plain answer");
    assert_eq!(
        Some(streamed_content(&s.body).as_str()),
        p.json()["choices"][0]["message"]["content"].as_str(),
        "stream hit content: {}",
        s.body
    );
    assert_eq!(up.calls().await, 3);
}

// === 4. Single-flight ===

#[tokio::test]
async fn concurrent_identical_plain_requests_make_one_upstream_call() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, "", "");
    let c = reqwest::Client::new();
    let body = chat("m", "forty at once", false);
    let answers =
        join_all((0..40).map(|_| post(&gw, &c, body.clone(), &[("x-mock-latency-ms", "300")])))
            .await;
    assert_eq!(up.calls().await, 1, "one upstream call for 40 requests");
    let first = &answers[0].body;
    let mut results = std::collections::BTreeMap::<&str, usize>::new();
    for a in &answers {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(&a.body, first, "all bodies equal");
        *results.entry(a.cache()).or_default() += 1;
    }
    assert_eq!(results.get("miss"), Some(&1), "{results:?}");
    assert_eq!(
        results.get("coalesced").copied().unwrap_or(0) + results.get("hit").copied().unwrap_or(0),
        39,
        "{results:?}"
    );
    assert!(
        results.get("coalesced").copied().unwrap_or(0) > 0,
        "requests during the 300 ms flight are coalesced: {results:?}"
    );
}

#[tokio::test]
async fn concurrent_identical_streams_make_one_upstream_call() {
    let mock = Mock::start("a", &["--token-delay-ms", "50", "--tokens", "8"]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, "", "");
    let c = reqwest::Client::new();
    let body = chat("m", "ten streams at once", true);
    let answers = join_all((0..10).map(|_| post(&gw, &c, body.clone(), &[]))).await;
    assert_eq!(up.calls().await, 1, "one upstream call for 10 streams");
    let events = data_lines(&answers[0].body);
    assert_eq!(events.len(), 10, "8 tokens + stop + DONE: {events:?}");
    let mut results = std::collections::BTreeMap::<&str, usize>::new();
    for a in &answers {
        assert_complete_stream(a, &format!("a {} stream", a.cache()));
        assert_eq!(
            data_lines(&a.body),
            events,
            "every event, in order ({})",
            a.cache()
        );
        *results.entry(a.cache()).or_default() += 1;
    }
    assert_eq!(results.get("miss"), Some(&1), "{results:?}");
}

// === 5. Directives, expiry, purge, what is never stored ===

#[tokio::test]
async fn no_cache_refreshes_and_no_store_bypasses() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, "", "");
    let c = reqwest::Client::new();
    let body = chat("m", "directives", false);
    let first = post(&gw, &c, body.clone(), &[]).await;
    assert_eq!(first.cache(), "miss");
    assert_eq!(up.calls().await, 1);

    // no-cache: to the upstream again, and its answer (3 tokens this time) replaces the entry.
    let fresh = post(
        &gw,
        &c,
        body.clone(),
        &[("cache-control", "no-cache"), ("x-mock-tokens", "3")],
    )
    .await;
    assert_eq!((fresh.status, fresh.cache()), (200, "miss"), "{fresh:?}");
    assert_eq!(up.calls().await, 2, "no-cache skips the lookup");
    assert_ne!(fresh.body, first.body);
    let after = post(&gw, &c, body.clone(), &[]).await;
    assert_eq!(after.cache(), "hit");
    assert_eq!(after.body, fresh.body, "no-cache refreshed the entry");
    assert_eq!(up.calls().await, 2);

    // no-store on a cached request: not read.
    let a = post(&gw, &c, body.clone(), &[("cache-control", "no-store")]).await;
    assert_eq!((a.status, a.cache()), (200, "bypass"), "{a:?}");
    assert_eq!(up.calls().await, 3);

    // no-store on a new request: not written either.
    let other = chat("m", "never stored", false);
    let a = post(&gw, &c, other.clone(), &[("cache-control", "no-store")]).await;
    assert_eq!((a.status, a.cache()), (200, "bypass"), "{a:?}");
    assert_eq!(up.calls().await, 4);
    let a = post(&gw, &c, other, &[]).await;
    assert_eq!(a.cache(), "miss", "no-store must not store: {a:?}");
    assert_eq!(up.calls().await, 5);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let mock = Mock::start("a", &[]);
    let gw = Gateway::start(&config(
        &[&mock.url],
        "",
        "  - name: chat\n    match: { model: \"*\" }\n    upstream: up\n    cache:\n      ttl: 1s\n",
    ));
    let c = reqwest::Client::new();
    let body = chat("m", "short lived", false);
    let start = Instant::now();
    assert_eq!(post(&gw, &c, body.clone(), &[]).await.cache(), "miss");
    let a = post(&gw, &c, body.clone(), &[]).await;
    assert_eq!(a.cache(), "hit", "fresh right after: {a:?}");
    let expired_at = loop {
        let a = post(&gw, &c, body.clone(), &[]).await;
        if a.cache() == "miss" {
            break start.elapsed();
        }
        assert_eq!(a.cache(), "hit", "{a:?}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still a hit {:?} after storing with ttl 1s",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        expired_at >= Duration::from_millis(900),
        "expired early: {expired_at:?}"
    );
}

#[tokio::test]
async fn purge_all_and_by_route() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, "", "");
    let c = reqwest::Client::new();
    let (x, y) = (chat("m", "purge x", false), chat("m", "purge y", false));
    for b in [&x, &y] {
        assert_eq!(post(&gw, &c, b.clone(), &[]).await.cache(), "miss");
        assert_eq!(post(&gw, &c, b.clone(), &[]).await.cache(), "hit");
    }

    // A purge of a route that does not exist is a 404 (a typo must not look like success)
    // and leaves chat's entries alone.
    let unknown = c
        .post(format!("{}/admin/cache/purge", gw.admin))
        .body(r#"{"route":"nope"}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(unknown.status(), 404);
    assert_eq!(post(&gw, &c, x.clone(), &[]).await.cache(), "hit");

    let v = purge(&gw, "{}").await;
    assert!(v["removed"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(v["tiers"]["memory"], 2, "{v}");
    let calls = up.calls().await;
    assert_eq!(post(&gw, &c, x.clone(), &[]).await.cache(), "miss");
    assert_eq!(post(&gw, &c, y.clone(), &[]).await.cache(), "miss");
    assert_eq!(up.calls().await, calls + 2);

    let v = purge(&gw, r#"{"route":"chat"}"#).await;
    assert!(v["removed"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(post(&gw, &c, x, &[]).await.cache(), "miss");
}

#[tokio::test]
async fn errors_and_aborted_streams_are_never_stored() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, "", "");
    let c = reqwest::Client::new();
    for status in ["500", "400"] {
        let body = chat("m", &format!("fails with {status}"), false);
        let a = post(&gw, &c, body.clone(), &[("x-mock-status", status)]).await;
        assert_eq!(a.status.to_string(), status, "{a:?}");
        let calls = up.calls().await;
        let b = post(&gw, &c, body, &[]).await;
        assert_eq!(
            (b.status, b.cache()),
            (200, "miss"),
            "a {status} must not be stored: {b:?}"
        );
        assert_eq!(up.calls().await, calls + 1);
    }

    let body = chat("m", "aborted stream", true);
    let a = post(&gw, &c, body.clone(), &[("x-mock-abort-after", "2")]).await;
    assert!(
        !a.body.contains("[DONE]"),
        "the upstream cut the stream: {a:?}"
    );
    let calls = up.calls().await;
    let b = post(&gw, &c, body.clone(), &[]).await;
    assert_eq!(
        b.cache(),
        "miss",
        "an aborted stream must not be stored: {b:?}"
    );
    assert_complete_stream(&b, "the retry");
    assert_eq!(up.calls().await, calls + 1);
    // ...while the complete one is.
    assert_eq!(post(&gw, &c, body, &[]).await.cache(), "hit");
}

// === 6. The official SDK ===

#[test]
fn openai_sdk_streams_a_cache_hit() {
    let mock = Mock::start("a", &[]);
    let gw = gateway(&mock, "", "");
    let stdout = run_python_check("openai_cache_check.py", &gw);
    assert!(stdout.contains("openai sdk: cached stream ok"), "{stdout}");
}
