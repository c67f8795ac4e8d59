//! Retries against an upstream that fails every request: the retry budget keeps the extra load
//! at about `ratio` of the requests (not `attempts` times), the client gets the upstream's own
//! answer once the budget says no (counted, and named in a gateway error), and backoff spaces
//! the tries. A streamed body up to `retry.buffer` is replayed on another endpoint.

mod resilience_support;

use futures_util::{stream, StreamExt};
use resilience_support::{ep, gateway_yaml, upstream};
use sluice_e2e::{chat_body, config, metric_sum, sha256, Answer, Gateway, Mock, UpstreamCalls};
use std::time::{Duration, Instant};

/// A route that reads the body (a model glob), so a retried request still has it.
const ROUTE: &str =
    "  - name: chat\n    match: { path_prefix: /v1, model: \"mock-*\" }\n    upstream: up\n";

/// `n` POSTs, 8 at a time: their statuses.
async fn post_many(gw: &Gateway, n: usize) -> Vec<u16> {
    let c = reqwest::Client::new();
    stream::iter(0..n)
        .map(|_| {
            let req = c
                .post(format!("{}/v1/chat/completions", gw.url))
                .header("content-type", "application/json")
                .body(chat_body("mock-gpt-4o", 64, false));
            async move { req.send().await.map_or(0, |r| r.status().as_u16()) }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

#[tokio::test]
async fn a_failing_upstream_gets_at_most_its_budget_of_retries() {
    // Three endpoints, so every request has two others to retry on.
    let mocks: Vec<Mock> = (0..3)
        .map(|i| Mock::start(&format!("failing-{i}"), &["--status", "503"]))
        .collect();
    let mut calls: Vec<UpstreamCalls> = mocks.iter().map(UpstreamCalls::of).collect();
    let urls: Vec<&str> = mocks.iter().map(|m| m.url.as_str()).collect();
    let retry = "    retry: { attempts: 2, on: [503], budget: { ratio: 0.2, min_per_second: 1, window: 10s } }\n";
    let gw = Gateway::start(&config(&urls, retry, ROUTE));
    let statuses = post_many(&gw, 300).await;
    assert!(
        statuses.iter().all(|s| *s == 503),
        "every client gets the upstream's 503, relayed: {statuses:?}"
    );
    let mut upstream = 0;
    for c in &mut calls {
        upstream += c.calls().await;
    }
    println!("300 requests → {upstream} upstream calls (no budget: 900)");
    // 300 first tries, 20% of them, and the floor of 1/s over the 10 s window.
    assert!(
        (300..=300 + 60 + 10).contains(&upstream),
        "{upstream} upstream calls"
    );
}

#[tokio::test]
async fn backoff_spaces_the_tries() {
    let mock = Mock::start("failing-slowly", &["--status", "503"]);
    let retry = "    retry: { attempts: 2, on: [503], backoff: { base: 150ms, max: 150ms } }\n";
    let gw = Gateway::start(&config(&[&mock.url], retry, ROUTE));
    let start = Instant::now();
    assert_eq!(post_many(&gw, 1).await, [503]);
    let took = start.elapsed();
    // Two waits of 75-150 ms each before the second and third tries.
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_endpoint_answering_429_with_retry_after_is_left_alone_that_long() {
    let busy = Mock::start("busy", &["--status", "429", "--retry-after", "2"]);
    let fine = Mock::start("fine", &[]);
    let mut busy_calls = UpstreamCalls::of(&busy);
    let retry = "    retry: { attempts: 1, on: [429] }\n";
    let gw = Gateway::start(&config(&[&busy.url, &fine.url], retry, ROUTE));
    let start = Instant::now();
    let mut statuses = Vec::new();
    while start.elapsed() < Duration::from_millis(1200) {
        statuses.extend(post_many(&gw, 1).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "clients see the other endpoint's answers: {statuses:?}"
    );
    let during = busy_calls.calls().await;
    println!(
        "{} requests in 1.2 s; the busy endpoint got {during}",
        statuses.len()
    );
    assert_eq!(during, 1, "asked once, then left alone for its 2 s");

    // After its retry-after (counted from the first answer, which a loaded machine delays),
    // it is asked again (and the client still gets a 200).
    tokio::time::sleep(Duration::from_millis(2400).saturating_sub(start.elapsed())).await;
    for _ in 0..4 {
        assert_eq!(post_many(&gw, 1).await, [200]);
    }
    assert!(
        busy_calls.calls().await >= 2,
        "tried again once its 2 s passed"
    );
}

const EXHAUSTED: &str = "sluice_upstream_retry_budget_exhausted_total";

#[tokio::test]
async fn a_retry_the_budget_refuses_is_counted_and_named() {
    let mocks: Vec<Mock> = (0..2)
        .map(|i| Mock::start(&format!("failing-{i}"), &["--status", "503"]))
        .collect();
    let urls: Vec<&str> = mocks.iter().map(|m| m.url.as_str()).collect();
    // No retry fits in this budget.
    let retry = "    retry: { attempts: 1, on: [timeout, 503], budget: { ratio: 0, min_per_second: 0 } }\n    timeouts: { first_byte: 200ms }\n";
    let gw = Gateway::start(&config(&urls, retry, ROUTE));
    assert_eq!(
        post_many(&gw, 10).await,
        [503; 10],
        "the upstream's 503s, relayed"
    );
    let m = gw.metrics().await;
    assert_eq!(metric_sum(&m, EXHAUSTED, &[("upstream", "up")]), 10.0);

    // A failure the gateway answers itself (a first-byte timeout) says why it was not retried.
    let c = reqwest::Client::new();
    for _ in 0..3 {
        let answer = Answer::read(
            c.post(format!("{}/v1/chat/completions", gw.url))
                .header("x-mock-latency-ms", "1000")
                .body(chat_body("mock-gpt-4o", 64, false)),
        )
        .await;
        assert_eq!(answer.status, 504, "{answer:?}");
        let message = answer.json()["error"]["message"].to_string();
        assert!(message.contains("retry budget"), "{message}");
    }
    let m = gw.metrics().await;
    assert_eq!(metric_sum(&m, EXHAUSTED, &[("upstream", "up")]), 13.0);
    let log = gw.log_until(|l| l.contains("retry budget"));
    assert!(log.contains("retry budget"), "{log}");
}

/// A route that reads nothing of the body, so it streams through.
const PASSTHROUGH: &str = "  - name: pass\n    match: { path_prefix: /v1 }\n    upstream: up\n";

/// `body` sent whole (with a content-length) or, when `chunked`, in 3 KiB chunks.
fn upload(body: &[u8], chunked: bool) -> reqwest::Body {
    if !chunked {
        return body.to_vec().into();
    }
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(3 * 1024).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(stream::iter(chunks))
}

/// POSTs `body` to the gateway with an `x-route` header.
async fn post_to(gw: &Gateway, to: &str, body: &[u8], chunked: bool) -> Answer {
    Answer::read(
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", gw.url))
            .header("x-route", to)
            .header("content-type", "application/json")
            .body(upload(body, chunked)),
    )
    .await
}

#[tokio::test]
async fn a_streamed_body_is_replayed_when_a_status_is_retried() {
    let busy = Mock::start("busy", &["--status", "503"]);
    let fine = Mock::start("fine", &[]);
    let mut busy_calls = UpstreamCalls::of(&busy);
    let retry =
        "    balance: round_robin\n    retry: { attempts: 1, on: [503], budget: { ratio: 1 } }\n";
    let gw = Gateway::start(&config(&[&busy.url, &fine.url], retry, PASSTHROUGH));
    for i in 0..20 {
        let body = chat_body(&format!("m-{i}"), 8 * 1024, false);
        let answer = post_to(&gw, "pass", &body, i % 2 == 1).await;
        let what = format!("request {i} (chunked: {})", i % 2 == 1);
        assert_eq!(answer.status, 200, "{what}: {answer:?}");
        assert_eq!(answer.header("x-mock-instance"), Some("fine"), "{what}");
        assert_eq!(
            answer.header("x-mock-body-sha256"),
            Some(sha256(&body).as_str()),
            "{what}: the replayed body differs"
        );
    }
    let retried = busy_calls.calls().await;
    eprintln!("20 streamed 8 KiB bodies, all 200 from the fine endpoint; {retried} first went to the 503 one");
    assert!(retried >= 5, "the busy endpoint was tried first: {retried}");
}

#[tokio::test]
async fn a_streamed_body_over_the_retry_buffer_works_but_is_not_retried() {
    let fine = Mock::start("fine", &[]);
    let busy: Vec<Mock> = (0..2)
        .map(|i| Mock::start(&format!("busy-{i}"), &["--status", "503"]))
        .collect();
    let mut calls: Vec<UpstreamCalls> = busy.iter().map(UpstreamCalls::of).collect();
    let retry = "    retry: { attempts: 1, on: [503], buffer: 64KiB, budget: { ratio: 1 } }\n";
    let to = |name: &str, up: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /v1, headers: {{ x-route: {name} }} }}\n    upstream: {up}\n")
    };
    let gw = Gateway::start(&gateway_yaml(
        &[
            upstream("ok", &[ep(&fine.url)], retry),
            upstream("failing", &[ep(&busy[0].url), ep(&busy[1].url)], retry),
        ],
        &[to("ok", "ok"), to("failing", "failing")].concat(),
    ));
    let large = chat_body("m", 200 * 1024, false);
    for chunked in [false, true] {
        let answer = post_to(&gw, "ok", &large, chunked).await;
        assert_eq!(answer.status, 200, "chunked {chunked}: {answer:?}");
        assert_eq!(
            answer.header("x-mock-body-sha256"),
            Some(sha256(&large).as_str())
        );
    }
    let mut total = 0;
    for (n, chunked) in [false, true].into_iter().enumerate() {
        let answer = post_to(&gw, "failing", &large, chunked).await;
        assert_eq!(answer.status, 503, "relayed: {answer:?}");
        total = 0;
        for c in &mut calls {
            total += c.calls().await;
        }
        assert_eq!(
            total,
            n as u64 + 1,
            "200 KiB over a 64 KiB buffer is not retried"
        );
    }
    // Under the buffer, the same failure is retried on the other endpoint.
    let small = chat_body("m", 8 * 1024, false);
    assert_eq!(post_to(&gw, "failing", &small, true).await.status, 503);
    let mut after = 0;
    for c in &mut calls {
        after += c.calls().await;
    }
    assert_eq!(after, total + 2, "an 8 KiB body is tried on both endpoints");
}
