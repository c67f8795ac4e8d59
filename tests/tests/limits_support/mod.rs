//! Helpers shared by the limits end-to-end tests (`limits.rs`, `limits_rate.rs`): a gateway
//! with a limited route, one answer read whole, and the assertions on 429s and rate headers.
#![allow(dead_code)] // each test binary uses its own subset

use futures_util::future::join_all;
use serde_json::json;
pub use sluice_e2e::Answer;
use sluice_e2e::{config, Gateway, Mock};
use std::time::{Duration, Instant};

/// A gateway over `mock` with one route `chat` for `/v1` carrying `limits` (YAML flow maps).
pub fn gateway(mock: &Mock, limits: &[&str]) -> Gateway {
    let lines: String = limits.iter().map(|l| format!("      - {l}\n")).collect();
    let route = format!(
        "  - name: chat\n    match: {{ path_prefix: /v1 }}\n    upstream: up\n    limits:\n{lines}"
    );
    Gateway::start(&config(&[&mock.url], "", &route))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// POSTs `body` to the chat endpoint with the API key `key` and `headers`.
pub fn request(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req
}

/// Checks a 429 from limit `param` of `kind` (`requests` or `tokens`); its `retry-after-ms`.
pub fn assert_limited(a: &Answer, param: &str, kind: &str) -> u64 {
    assert_eq!(a.status, 429, "{a:?}");
    let ms = a.number("retry-after-ms");
    assert!(ms >= 1, "a refusal says when to retry: {a:?}");
    assert_eq!(
        a.number("retry-after"),
        ms.div_ceil(1000),
        "retry-after is retry-after-ms in whole seconds, rounded up: {a:?}"
    );
    let e = &a.json()["error"];
    assert_eq!(e["type"], "rate_limit_exceeded", "{a:?}");
    assert_eq!(e["code"], "rate_limit_exceeded", "{a:?}");
    assert_eq!(e["param"], param, "{a:?}");
    for what in ["limit", "remaining", "reset"] {
        let name = format!("x-ratelimit-{what}-{kind}");
        assert!(a.header(&name).is_some(), "a 429 carries {name}: {a:?}");
    }
    ms
}

/// Checks the `x-ratelimit-*-{kind}` trio of an admitted answer; the remaining count.
pub fn assert_rate_headers(a: &Answer, kind: &str, limit: u64) -> u64 {
    assert_eq!(
        a.number(&format!("x-ratelimit-limit-{kind}")),
        limit,
        "{a:?}"
    );
    let remaining = a.number(&format!("x-ratelimit-remaining-{kind}"));
    assert!(remaining <= limit, "{a:?}");
    let reset = a.header(&format!("x-ratelimit-reset-{kind}"));
    assert!(
        reset.is_some_and(|r| r.ends_with('s') && r.starts_with(|c: char| c.is_ascii_digit())),
        "x-ratelimit-reset-{kind} is a duration like 100ms or 6m0s: {a:?}"
    );
    remaining
}

/// Sends `count` requests with API key `key`, one every `every` whatever the answers take;
/// the answers and the time from the first send to the last.
pub async fn paced(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    every: Duration,
    count: usize,
) -> (Vec<Answer>, Duration) {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut tick = tokio::time::interval(every);
    let mut tasks = Vec::new();
    let (mut first, mut last) = (None, Instant::now());
    for _ in 0..count {
        tick.tick().await;
        last = Instant::now();
        first.get_or_insert(last);
        tasks.push(tokio::spawn(Answer::read(request(
            client,
            base,
            key,
            &body,
            &[],
        ))));
    }
    let answers = join_all(tasks).await.into_iter().map(|t| t.expect("task"));
    (answers.collect(), last - first.unwrap_or(last))
}
