//! Retries against an upstream that fails every request: the retry budget keeps the extra load
//! at about `ratio` of the requests (not `attempts` times), the client gets the upstream's own
//! answer once the budget says no, and backoff spaces the tries.

use futures_util::{stream, StreamExt};
use sluice_e2e::{chat_body, config, Gateway, Mock, UpstreamCalls};
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

    // After its retry-after, it is asked again (and the client still gets a 200).
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(start.elapsed())).await;
    for _ in 0..4 {
        assert_eq!(post_many(&gw, 1).await, [200]);
    }
    assert!(
        busy_calls.calls().await >= 2,
        "tried again once its 2 s passed"
    );
}
