//! The prompt cache end to end: keys that ignore spelling, hits that never reach the
//! upstream, stream/plain conversion, single-flight, cache directives, expiry, purge, what is
//! never stored, the shared Redis tier with its outage, the disk tier across restarts, and the
//! official SDK reading a cached stream.

use futures_util::future::join_all;
use serde_json::{json, Value};
use sluice_e2e::{
    chat_body, config, metric_value, run_python_check, Answer, Gateway, Mock, RedisServer,
    UpstreamCalls, PATIENCE,
};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

// === Helpers ===

/// A caching route `chat` over upstream `up`, with `extra` lines (6-space indent) under its
/// `cache:`.
fn cache_route(extra: &str) -> String {
    format!(
        "  - name: chat\n    match: {{ model: \"*\" }}\n    upstream: up\n    cache:\n      ttl: 60s\n{extra}"
    )
}

/// A gateway over `mock` with the caching route and `top` appended at the top level.
fn gateway(mock: &Mock, cache_extra: &str, top: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{top}",
        config(&[&mock.url], "", &cache_route(cache_extra))
    ))
}

/// POSTs `body` to the chat endpoint with `headers`, reads the whole answer.
async fn post(
    gw: &Gateway,
    client: &reqwest::Client,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("chat request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    // A body the upstream cut short is kept for the test to look at, not a failure here.
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| format!("<body error: {e}>"));
    Answer {
        status,
        headers,
        body,
    }
}

/// A small chat body.
fn chat(model: &str, content: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
        .to_string()
}

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

fn requests_metric(result: &str, tier: &str) -> String {
    format!(
        "sluice_cache_requests_total{{result=\"{result}\",route=\"chat\",tier=\"{tier}\",variant=\"\"}}"
    )
}

/// Sends a RESP command (no arguments) to redis on `port`; the reply line.
fn redis_cmd(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "*1\r\n${}\r\n{cmd}\r\n", cmd.len()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim_end().to_string())
}

fn redis_dbsize(port: u16) -> u64 {
    redis_cmd(port, "DBSIZE")
        .and_then(|l| l.strip_prefix(':').and_then(|n| n.parse().ok()))
        .unwrap_or(0)
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

// === 6. Redis ===

fn redis_top(redis: &RedisServer) -> String {
    format!(
        "redis:\n  url: \"{}\"\n  timeout: 100ms\ncache:\n  redis: true\n",
        redis.url()
    )
}

/// Until `deadline`: A stores a fresh prompt, and once Redis holds something B asks for it.
/// Returns B's answer to the first prompt that made it to Redis.
async fn shared_hit(
    a: &Gateway,
    b: &Gateway,
    redis: &RedisServer,
    c: &reqwest::Client,
    tag: &str,
) -> Option<Answer> {
    let deadline = Instant::now() + PATIENCE;
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        let body = chat("m", &format!("{tag} {i}"), false);
        let before = redis_dbsize(redis.port());
        let w = post(a, c, body.clone(), &[]).await;
        assert_eq!(w.status, 200, "{w:?}");
        let stored = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < stored && redis_dbsize(redis.port()) <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if redis_dbsize(redis.port()) > before {
            return Some(post(b, c, body, &[]).await);
        }
    }
    None
}

#[tokio::test]
async fn two_instances_share_redis_and_survive_its_outage() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let mut redis = RedisServer::start();
    let top = redis_top(&redis);
    let (a, b) = (gateway(&mock, "", &top), gateway(&mock, "", &top));
    let c = reqwest::Client::new();

    let body = chat("m", "shared", false);
    let wa = post(&a, &c, body.clone(), &[]).await;
    assert_eq!(wa.cache(), "miss");
    let deadline = Instant::now() + PATIENCE;
    while redis_dbsize(redis.port()) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        redis_dbsize(redis.port()) > 0,
        "A wrote nothing to Redis:\n{}",
        a.log_text()
    );
    let hb = post(&b, &c, body.clone(), &[]).await;
    assert_eq!(
        hb.cache(),
        "hit",
        "B hits what A stored: {hb:?}\n{}",
        b.log_text()
    );
    assert_eq!(hb.body, wa.body);
    assert_eq!(up.calls().await, 1);
    let m = b.metrics_when(&requests_metric("hit", "redis"), 1.0).await;
    assert_eq!(
        metric_value(&m, &requests_metric("hit", "redis")),
        1.0,
        "{m}"
    );

    // Outage: every request is still answered, and L1 still hits.
    redis.stop();
    let load = join_all((0..30).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        let body = if i % 3 == 0 {
            body.clone()
        } else {
            chat("m", &format!("during the outage {i}"), false)
        };
        post(gw, &c, body, &[])
    }))
    .await;
    for (i, r) in load.iter().enumerate() {
        assert_eq!(r.status, 200, "request {i} during the outage: {r:?}");
    }
    for gw in [&a, &b] {
        let r = post(gw, &c, body.clone(), &[]).await;
        assert_eq!(
            (r.status, r.cache()),
            (200, "hit"),
            "L1 during the outage: {r:?}"
        );
    }

    // Back: a new entry written by A after the restart is a hit in B.
    redis.restart();
    let r = shared_hit(&a, &b, &redis, &c, "after the restart").await;
    let r = r.unwrap_or_else(|| {
        panic!(
            "A never wrote to the restarted Redis within {PATIENCE:?}:\nA:\n{}\nB:\n{}",
            a.log_text(),
            b.log_text()
        )
    });
    assert_eq!(
        r.cache(),
        "hit",
        "B reads Redis again: {r:?}\n{}",
        b.log_text()
    );
    let m = b.metrics_when(&requests_metric("hit", "redis"), 2.0).await;
    assert_eq!(
        metric_value(&m, &requests_metric("hit", "redis")),
        2.0,
        "{m}"
    );
}

// === 7. Disk ===

#[tokio::test]
async fn disk_tier_survives_a_restart_and_stays_within_its_bytes() {
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache");
    let top = format!(
        "cache:\n  disk: {{ path: \"{}\", max_bytes: 1MiB }}\n",
        path.display()
    );
    let c = reqwest::Client::new();
    let body = chat("m", "kept on disk", false);
    let first = {
        let gw = gateway(&mock, "", &top);
        let a = post(&gw, &c, body.clone(), &[]).await;
        assert_eq!(a.cache(), "miss");
        let m = gw
            .metrics_when("sluice_cache_entries{tier=\"disk\"}", 1.0)
            .await;
        assert_eq!(
            metric_value(&m, "sluice_cache_entries{tier=\"disk\"}"),
            1.0,
            "{m}"
        );
        a
    };
    let gw = gateway(&mock, "", &top);
    let a = post(&gw, &c, body.clone(), &[]).await;
    assert_eq!(
        a.cache(),
        "hit",
        "after the restart: {a:?}\n{}",
        gw.log_text()
    );
    assert_eq!(a.body, first.body);
    assert_eq!(up.calls().await, 1);
    let m = gw.metrics_when(&requests_metric("hit", "disk"), 1.0).await;
    assert_eq!(
        metric_value(&m, &requests_metric("hit", "disk")),
        1.0,
        "{m}"
    );

    // ~3 MiB of distinct entries of ~140 KB each into a 1 MiB tier.
    const MAX: f64 = 1024.0 * 1024.0;
    let evictions = "sluice_cache_evictions_total{tier=\"disk\"}";
    let mut file_sizes = Vec::new();
    for round in 0..2 {
        for i in 0..22 {
            let a = post(
                &gw,
                &c,
                chat("m", &format!("big answer {round} {i}"), false),
                &[("x-mock-tokens", "20000")],
            )
            .await;
            assert_eq!((a.status, a.cache()), (200, "miss"));
            assert!(a.body.len() > 120_000, "{}", a.body.len());
        }
        let m = gw.metrics_when(evictions, 1.0 + 20.0 * round as f64).await;
        let bytes = metric_value(&m, "sluice_cache_bytes{tier=\"disk\"}");
        assert!(metric_value(&m, evictions) >= 1.0, "the tier evicted: {m}");
        assert!(
            bytes > 0.0 && bytes <= MAX,
            "disk bytes {bytes} vs max {MAX}: {m}"
        );
        file_sizes.push(
            walk(&path)
                .iter()
                .map(|p| p.metadata().map_or(0, |m| m.len()))
                .sum::<u64>(),
        );
    }
    // The bound is on the entries the tier holds. The redb file itself is larger (copy-on-write
    // pages, freed lazily; 2.4-5 MB for this 1 MiB tier were seen): compaction is future work.
    eprintln!("disk file sizes after each 3 MiB round: {file_sizes:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// === 8. The official SDK ===

#[test]
fn openai_sdk_streams_a_cache_hit() {
    let mock = Mock::start("a", &[]);
    let gw = gateway(&mock, "", "");
    let stdout = run_python_check("openai_cache_check.py", &gw);
    assert!(stdout.contains("openai sdk: cached stream ok"), "{stdout}");
}
