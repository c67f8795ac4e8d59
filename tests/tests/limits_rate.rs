//! Request rates end to end (issue 7, the local part): a rate per API key under a paced
//! overload with another key unaffected, and the memory that 20,000 keys cost.

mod limits_support;

use futures_util::{stream, StreamExt};
use limits_support::*;
use serde_json::json;
use sluice_e2e::{metric_sum, rss, Gateway, Mock};
use std::time::{Duration, Instant};

// === Request rates ===

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

// === Memory ===

/// Sends one request per key (`{prefix}-0`...), `concurrency` at a time; how many were 200.
async fn one_each(c: &reqwest::Client, gw: &Gateway, prefix: &str, keys: usize) -> usize {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    stream::iter(0..keys)
        .map(|i| Answer::read(request(c, &gw.url, &format!("{prefix}-{i}"), &body, &[])))
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
