//! Rate limits and token budgets end to end (issue 7, the local part): a request rate per API
//! key under a paced overload, token budgets charged by the upstream's usage (plain answers,
//! streams with and without usage), reservations under concurrency, and the memory that
//! 20,000 keys cost. Admission control (concurrency slots and queues) is in `limits_queue.rs`.

use futures_util::future::join_all;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use sluice_e2e::{config, metric_sum, Gateway, Mock};
use std::time::{Duration, Instant};

// === Helpers ===

/// A gateway over `mock` with one route `chat` for `/v1` carrying `limits` (YAML flow maps).
fn gateway(mock: &Mock, limits: &[&str]) -> Gateway {
    let lines: String = limits.iter().map(|l| format!("      - {l}\n")).collect();
    let route = format!(
        "  - name: chat\n    match: {{ path_prefix: /v1 }}\n    upstream: up\n    limits:\n{lines}"
    );
    Gateway::start(&config(&[&mock.url], "", &route))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// One answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header that must be a whole number.
    fn number(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} must be a whole number: {self:?}"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The `data:` payloads of an SSE body, in order.
    fn events(&self) -> Vec<&str> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect()
    }
}

/// POSTs `body` to the chat endpoint with the API key `key` and `headers`.
fn request(
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

async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("an answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("the whole body");
    Answer {
        status,
        headers,
        body,
    }
}

/// Checks a 429 from limit `param` of `kind` (`requests` or `tokens`); its `retry-after-ms`.
fn assert_limited(a: &Answer, param: &str, kind: &str) -> u64 {
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
fn assert_rate_headers(a: &Answer, kind: &str, limit: u64) -> u64 {
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
async fn paced(
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
        tasks.push(tokio::spawn(answer(request(client, base, key, &body, &[]))));
    }
    let answers = join_all(tasks).await.into_iter().map(|t| t.expect("task"));
    (answers.collect(), last - first.unwrap_or(last))
}

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
        let a = answer(request(client, &gw.url, key, body, headers)).await;
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

// === 1. Request rates ===

#[tokio::test]
async fn a_request_rate_admits_its_burst_then_its_rate_and_other_keys_are_unaffected() {
    let mock = Mock::start("rate", &[]);
    let gw = gateway(
        &mock,
        &["{ name: per-key-rps, key: api_key, requests_per_second: 10, burst: 10 }"],
    );
    let c = client();
    // Key A at 40 req/s for 5 s, key B at 5 req/s meanwhile.
    let ((a, a_span), (b, _)) = tokio::join!(
        paced(&c, &gw.url, "key-a", Duration::from_millis(25), 200),
        paced(&c, &gw.url, "key-b", Duration::from_millis(200), 25),
    );

    let a_ok = a.iter().filter(|x| x.status == 200).count();
    let a_limited = a.len() - a_ok;
    // GCRA: the burst at once, then one per 100 ms of the sending span (60 for 5 s).
    let expected = 10.0 + 10.0 * a_span.as_secs_f64();
    println!(
        "key A: {a_ok} of {} admitted over {a_span:?} (expected {expected:.1})",
        a.len()
    );
    assert!(
        (a_ok as f64 - expected).abs() <= 0.15 * expected,
        "key A admitted {a_ok}, expected {expected:.1} ±15%"
    );
    let mut waits = Vec::new();
    for x in &a {
        if x.status == 200 {
            assert!(assert_rate_headers(x, "requests", 10) <= 10);
        } else {
            let ms = assert_limited(x, "per-key-rps", "requests");
            // The next request is due within one interval (100 ms), not when the bucket is full.
            assert!(ms <= 150, "retry-after-ms {ms} for a 10/s limit: {x:?}");
            waits.push(ms);
        }
    }
    println!(
        "key A retry-after-ms: min {:?}, max {:?}",
        waits.iter().min(),
        waits.iter().max()
    );
    for x in &b {
        assert_eq!(x.status, 200, "key B stays under its own limit: {x:?}");
        assert_rate_headers(x, "requests", 10);
    }

    let decisions = "sluice_ratelimit_decisions_total";
    let labels = |result| {
        [
            ("route", "chat"),
            ("limit", "per-key-rps"),
            ("result", result),
        ]
    };
    let allowed = (a_ok + b.len()) as f64;
    let m = gw
        .metrics_until(|m| metric_sum(m, decisions, &labels("allowed")) >= allowed)
        .await;
    assert_eq!(
        metric_sum(&m, decisions, &labels("limited")),
        a_limited as f64,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, decisions, &labels("allowed")),
        allowed,
        "{m}"
    );
    let rejected = metric_sum(
        &m,
        "sluice_rejections_total",
        &[("route", "chat"), ("reason", "rate_limit")],
    );
    assert_eq!(rejected, a_limited as f64, "{m}");
}

// === 2. Token budgets ===

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

    let charged: u64 = ok
        .iter()
        .map(|a| a.json()["usage"]["total_tokens"].as_u64().unwrap())
        .sum();
    let route = [("route", "chat")];
    let m = gw
        .metrics_until(|m| metric_sum(m, "sluice_tokens_charged_total", &route) >= charged as f64)
        .await;
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
    let a = answer(request(&c, &gw.url, "asks", &asked, &headers)).await;
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
    let all = join_all((0..20).map(|_| answer(request(&c, &gw.url, "k", &body, &headers)))).await;
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

    let charged: u64 = ok
        .iter()
        .map(|a| a.json()["usage"]["total_tokens"].as_u64().unwrap())
        .sum();
    let route = [("route", "chat")];
    let m = gw
        .metrics_until(|m| metric_sum(m, "sluice_tokens_charged_total", &route) >= charged as f64)
        .await;
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

// === 3. Memory ===

/// The resident set of process `pid` in bytes (`VmRSS` in /proc).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Sends one request per key (`{prefix}-0`...), `concurrency` at a time; how many were 200.
async fn one_each(c: &reqwest::Client, gw: &Gateway, prefix: &str, keys: usize) -> usize {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    stream::iter(0..keys)
        .map(|i| answer(request(c, &gw.url, &format!("{prefix}-{i}"), &body, &[])))
        .buffer_unordered(32)
        .filter(|a| std::future::ready(a.status == 200))
        .count()
        .await
}

#[tokio::test]
async fn twenty_thousand_keys_cost_bounded_memory() {
    const KEYS: usize = 20_000;
    let mock = Mock::start("memory", &[]);
    // Per hour, so no bucket is full again (and swept) during the test: every key is held.
    let gw = gateway(
        &mock,
        &["{ name: per-key, key: api_key, requests_per_hour: 10 }"],
    );
    let c = client();
    let pid = gw.proc.child.id();
    assert_eq!(one_each(&c, &gw, "warm", 500).await, 500, "warm-up");
    let before = rss(pid);
    let start = Instant::now();
    let ok = one_each(&c, &gw, "key", KEYS).await;
    let took = start.elapsed();
    let after = rss(pid);
    let growth = after.saturating_sub(before);
    println!(
        "{KEYS} keys in {took:?}: RSS {:.1} -> {:.1} MiB, growth {:.2} MiB = {} bytes per key",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        growth / KEYS as u64
    );
    assert_eq!(ok, KEYS, "every key sends once, under its limit");
    let keys = [("route", "chat"), ("limit", "per-key")];
    let m = gw
        .metrics_until(|m| metric_sum(m, "sluice_ratelimit_keys", &keys) >= KEYS as f64)
        .await;
    assert!(
        metric_sum(&m, "sluice_ratelimit_keys", &keys) >= KEYS as f64,
        "the buckets measured are held: {m}"
    );
    assert!(growth < 64 << 20, "RSS grew {growth} bytes for {KEYS} keys");
}
