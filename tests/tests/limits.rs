//! Token budgets end to end (issue 7, the local part): budgets charged by the upstream's usage
//! (plain answers, streams with and without usage) and reservations under concurrency. Request
//! rates and memory are in `limits_rate.rs`, admission control in `limits_queue.rs`.

mod limits_support;

use futures_util::future::join_all;
use limits_support::*;
use serde_json::{json, Value};
use sluice_e2e::{metric_sum, Gateway, Mock};
use std::time::Instant;

// === Token arithmetic ===

/// What every budget test's request costs: its reservation and the mock's `usage.total_tokens`.
const COST: u64 = 110;

/// What sluice adds to a stream's body to get its usage (`stream_options.include_usage`).
const INCLUDE_USAGE: &str = r#","stream_options":{"include_usage":true}"#;

/// A request costing [`COST`] tokens: the body and its `x-mock-tokens` (completion tokens).
/// Reservation = prompt estimate (ceil(content chars / 4) + 4 per message + 3) + `max_tokens`;
/// the mock's usage = forwarded body bytes / 4 + completion tokens.
fn costly(stream: bool, include_usage: bool) -> (String, String) {
    let content = "abcd".repeat(40);
    let max_tokens = COST - prompt_estimate(&content);
    let mut body = json!({"model": "m", "max_tokens": max_tokens, "stream": stream,
                          "messages": [{"role": "user", "content": content}]});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    let body = body.to_string();
    let injected = if stream && !include_usage {
        INCLUDE_USAGE.len()
    } else {
        0
    };
    let completion = COST - (body.len() + injected) as u64 / 4;
    (body, completion.to_string())
}

fn prompt_estimate(content: &str) -> u64 {
    (content.chars().count() as u64).div_ceil(4) + 4 + 3
}

/// Sends `body` with API key `key` one request after another until one is refused (at most
/// `max`): the admitted answers and the refusal.
async fn until_refused(
    client: &reqwest::Client,
    gw: &Gateway,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
    max: usize,
) -> (Vec<Answer>, Answer) {
    let mut admitted = Vec::new();
    for _ in 0..max {
        let a = Answer::read(request(client, &gw.url, key, body, headers)).await;
        if a.status != 200 {
            return (admitted, a);
        }
        admitted.push(a);
    }
    panic!(
        "{max} requests with key {key} were all admitted; the first: {:?}",
        admitted.first()
    );
}

/// Checks a stream as the client gets it: complete, `completion` content deltas, and the
/// usage chunk only when `usage_wanted`.
fn assert_stream(a: &Answer, completion: usize, usage_wanted: bool) {
    let events = a.events();
    assert_eq!(events.last(), Some(&"[DONE]"), "ends with [DONE]: {a:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|_| panic!("chunk {e}")))
        .collect();
    let deltas = chunks
        .iter()
        .filter(|c| c.pointer("/choices/0/delta/content").is_some())
        .count();
    assert_eq!(deltas, completion, "every content chunk arrives: {a:?}");
    let usage: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"].as_array().is_some_and(Vec::is_empty))
        .collect();
    if usage_wanted {
        assert_eq!(
            usage.len(),
            1,
            "the client asked for the usage chunk: {a:?}"
        );
        assert!(
            usage[0]["usage"]["total_tokens"].as_u64().is_some(),
            "{a:?}"
        );
        assert!(
            chunks.last().is_some_and(|c| c["usage"].is_object()),
            "the usage chunk comes last before [DONE]: {a:?}"
        );
    } else {
        assert!(
            usage.is_empty() && !a.body.contains("\"usage\""),
            "the client did not ask for usage, so it never sees the chunk sluice asked for: {a:?}"
        );
    }
}

/// The usage the admitted answers reported, and /metrics once the gateway has charged it
/// (settlement follows the answer).
async fn settled(gw: &Gateway, ok: &[&Answer]) -> (u64, String) {
    let charged: u64 = ok
        .iter()
        .map(|a| a.json()["usage"]["total_tokens"].as_u64().unwrap())
        .sum();
    let route = [("route", "chat")];
    let m = gw
        .metrics_until(|m| metric_sum(m, "sluice_tokens_charged_total", &route) >= charged as f64)
        .await;
    (charged, m)
}

// === Token budgets ===

const TPM: &str = "{ name: per-key-tpm, key: api_key, tokens_per_minute: 1000 }";

#[tokio::test]
async fn a_token_budget_refuses_once_the_usage_has_spent_it() {
    let mock = Mock::start("tokens", &[]);
    let gw = gateway(&mock, &[TPM]);
    let c = client();
    let (body, completion) = costly(false, false);
    let (ok, refused) =
        until_refused(&c, &gw, "k", &body, &[("x-mock-tokens", &completion)], 20).await;
    println!("token budget: {} admitted at {COST} tokens each", ok.len());

    let mut remaining = Vec::new();
    for a in &ok {
        let total = a.json()["usage"]["total_tokens"].as_u64().expect("usage");
        assert!(
            total.abs_diff(COST) <= 3,
            "the test's arithmetic: usage {total}"
        );
        remaining.push(assert_rate_headers(a, "tokens", 1000));
    }
    // 1000 / 110: the 10th finds ~10 tokens left (a slow machine refills up to one more).
    assert!((8..=10).contains(&ok.len()), "admitted {}", ok.len());
    assert!(
        remaining.windows(2).all(|w| w[1] < w[0]),
        "each request spends from what is left: {remaining:?}"
    );
    let ms = assert_limited(&refused, "per-key-tpm", "tokens");
    // ~100 tokens short at 1000/min: about 6 s, not a whole minute.
    assert!(
        (1..=7_000).contains(&ms),
        "retry-after-ms {ms}: {refused:?}"
    );

    let (charged, m) = settled(&gw, &ok.iter().collect::<Vec<_>>()).await;
    let route = [("route", "chat")];
    assert_eq!(
        metric_sum(&m, "sluice_tokens_charged_total", &route),
        charged as f64,
        "{m}"
    );
    let reserved = metric_sum(&m, "sluice_tokens_reserved_total", &route) / ok.len() as f64;
    assert!(
        (100.0..=120.0).contains(&reserved),
        "reserved {reserved} per request: {m}"
    );
    let rejected = [("route", "chat"), ("reason", "token_budget")];
    assert_eq!(
        metric_sum(&m, "sluice_rejections_total", &rejected),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn streams_are_charged_with_or_without_usage_and_the_usage_chunk_shows_only_if_asked() {
    let mock = Mock::start("streams", &[]);
    let gw = gateway(&mock, &[TPM]);
    let c = client();

    // Streams whose client did not ask for usage: charged by the usage chunk sluice asks for.
    let (body, completion) = costly(true, false);
    let tokens = [("x-mock-tokens", completion.as_str())];
    let (ok, refused) = until_refused(&c, &gw, "plain", &body, &tokens, 20).await;
    println!("streams: {} admitted at {COST} tokens each", ok.len());
    assert!((8..=10).contains(&ok.len()), "admitted {}", ok.len());
    for a in &ok {
        assert_stream(a, completion.parse().unwrap(), false);
        assert_rate_headers(a, "tokens", 1000);
    }
    assert_limited(&refused, "per-key-tpm", "tokens");

    // A client that asks for usage gets the chunk.
    let (asked, asked_completion) = costly(true, true);
    let headers = [("x-mock-tokens", asked_completion.as_str())];
    let a = Answer::read(request(&c, &gw.url, "asks", &asked, &headers)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_stream(&a, asked_completion.parse().unwrap(), true);
    let total = a
        .events()
        .iter()
        .rev()
        .nth(1)
        .map(|u| serde_json::from_str::<Value>(u).unwrap());
    assert_eq!(
        total.and_then(|u| u["usage"]["total_tokens"].as_u64()),
        Some(COST),
        "the test's arithmetic: {a:?}"
    );

    // An upstream that reports no usage: charged the prompt estimate plus the streamed
    // completion, at least 1 token per content chunk and about chars / 4.
    let start = Instant::now();
    let no_usage = [
        ("x-mock-tokens", completion.as_str()),
        ("x-mock-no-usage", "1"),
    ];
    let (ok, refused) = until_refused(&c, &gw, "no-usage", &body, &no_usage, 40).await;
    let elapsed = start.elapsed();
    for a in &ok {
        assert_stream(a, completion.parse().unwrap(), false);
    }
    assert_limited(&refused, "per-key-tpm", "tokens");
    // Each admission needs COST tokens left; a request costs the estimate plus, per content
    // chunk, at least 1 and at most chars / 4 + 1.
    let chunks = (1..completion.parse::<usize>().unwrap()).map(|i| format!(" tok{i}").len());
    let chunks: Vec<usize> = [14].into_iter().chain(chunks).collect(); // "reply-" + 8 hex
    let estimate = prompt_estimate(&"abcd".repeat(40)) as f64;
    let least = estimate + chunks.len() as f64;
    let most = estimate + chunks.iter().map(|&c| c as f64 / 4.0 + 1.0).sum::<f64>();
    let refill = 1000.0 * elapsed.as_secs_f64() / 60.0;
    let bound = |spendable: f64, each: f64| (spendable / each).floor() as usize + 1;
    let (low, high) = (
        bound(1000.0 - COST as f64, most),
        bound(1000.0 + refill - COST as f64, least),
    );
    println!(
        "streams without usage: {} admitted (bounds {low}..={high}, {least}..={most:.0} tokens each)",
        ok.len()
    );
    assert!(
        (low..=high).contains(&ok.len()),
        "without usage {} streams were admitted, expected {low}..={high}",
        ok.len()
    );
}

#[tokio::test]
async fn concurrent_requests_reserve_before_they_spend() {
    let mock = Mock::start("reserve", &[]);
    let gw = gateway(
        &mock,
        &["{ name: per-key-tpm, key: api_key, tokens_per_minute: 600 }"],
    );
    let c = client();
    let (body, completion) = costly(false, false);
    // The upstream takes a second, so nothing is settled while the 20 arrive.
    let headers = [
        ("x-mock-tokens", completion.as_str()),
        ("x-mock-latency-ms", "1000"),
    ];
    let all =
        join_all((0..20).map(|_| Answer::read(request(&c, &gw.url, "k", &body, &headers)))).await;
    let ok: Vec<&Answer> = all.iter().filter(|a| a.status == 200).collect();
    println!(
        "20 concurrent against 600 tokens at {COST} each: {} admitted",
        ok.len()
    );
    assert!(
        (4..=6).contains(&ok.len()),
        "admitted {} (600 / {COST} fit 5)",
        ok.len()
    );
    for a in all.iter().filter(|a| a.status != 200) {
        assert_limited(a, "per-key-tpm", "tokens");
    }

    let (_, m) = settled(&gw, &ok).await;
    let route = [("route", "chat")];
    let (charged, reserved) = (
        metric_sum(&m, "sluice_tokens_charged_total", &route),
        metric_sum(&m, "sluice_tokens_reserved_total", &route),
    );
    println!("charged {charged}, reserved {reserved}");
    let bound = (600 + COST) as f64;
    assert!(
        charged <= bound,
        "charged {charged} > budget + one reservation: {m}"
    );
    assert!(
        reserved <= bound,
        "reserved {reserved} > budget + one reservation: {m}"
    );
}
