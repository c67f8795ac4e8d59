//! Limits shared across gateways through Redis (issue 7): two instances admit one request
//! budget and one token budget between them; Redis killed under load degrades each instance to
//! its local share (limit / instances, 200 or 429, never 5xx) and comes back shared without a
//! restart; an unreachable Redis at startup still serves from the local fallback.

use futures_util::future::join_all;
use serde_json::{json, Value};
use sluice_e2e::load::{assert_answered, assert_near, client, fire, tally, Load};
use sluice_e2e::{config, free_port, metric_sum, Gateway, Mock, RedisServer, PATIENCE};
use std::time::{Duration, Instant};

// === Helpers ===

const FALLBACKS: &str = "sluice_ratelimit_fallbacks_total";
const KEY: &str = "Bearer sk-shared";
/// The shared request limit: 10/s, burst 10, two instances (5/s, burst 5 each when alone).
const RPS: f64 = 10.0;
const BURST: f64 = 10.0;
const SHARED_RPS: &str = "name: shared-rps, key: api_key, requests_per_second: 10, burst: 10, \
                          shared: true, instances: 2";

/// A gateway config: route `chat` over `mock` with one `limit` (a flow map's inside), Redis at
/// `redis_url`.
fn limited(mock: &Mock, redis_url: &str, limit: &str) -> String {
    let route = format!(
        "  - name: chat\n    match: {{ path_prefix: /v1 }}\n    upstream: up\n    limits:\n      - {{ {limit} }}\n"
    );
    format!(
        "{}redis:\n  url: \"{redis_url}\"\n  timeout: 100ms\n",
        config(&[&mock.url], "", &route)
    )
}

async fn fallbacks(gw: &Gateway) -> f64 {
    metric_sum(&gw.metrics().await, FALLBACKS, &[])
}

/// No limit check was decided locally: Redis answered every one.
async fn assert_shared(gws: &[&Gateway]) {
    for (i, gw) in gws.iter().enumerate() {
        let n = fallbacks(gw).await;
        assert_eq!(
            n, 0.0,
            "gateway {i} decided {n} checks locally with Redis up"
        );
    }
}

// === 1. One request budget for two instances ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_one_shared_request_budget() {
    let mock = Mock::start("a", &[]);
    let redis = RedisServer::start();
    let yaml = limited(&mock, &redis.url(), SHARED_RPS);
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    let c = client();

    // 20 at once to A alone (another key): the whole burst (10), not A's local share (5).
    let started = Instant::now();
    let probe = Some("Bearer sk-probe");
    let burst = join_all((0..20).map(|_| fire(c.clone(), a.url.clone(), probe))).await;
    let took = started.elapsed().as_secs_f64();
    assert!(burst.iter().all(Result::is_ok), "{burst:?}");
    let admitted = burst.iter().filter(|r| **r == Ok(200)).count();
    println!("burst of 20 on A alone in {took:.2}s: {admitted} admitted");
    assert!(
        admitted as f64 >= BURST && admitted as f64 <= BURST + RPS * took + 1.0,
        "A alone admits the shared burst of 10 (plus its refill over {took:.2}s): {admitted}"
    );

    // ~20 req/s to each for 4 s: one budget (10 + 10 × 4 ≈ 50), not two (≈ 100).
    let load = Load::start(&c, &[&a, &b], 20, Some(KEY));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let shots = load.finish().await;
    assert_answered(&shots, &[&a, &b]);
    let (first, last) = (shots[0].at, shots[shots.len() - 1].at);
    let span = (last - first).as_secs_f64();
    let [(sent_a, ok_a), (sent_b, ok_b)] = tally(&shots, first, last + Duration::from_millis(1));
    println!("4 s of load: A {ok_a}/{sent_a} admitted, B {ok_b}/{sent_b} admitted");
    assert_near(
        "two instances, one shared budget",
        ok_a + ok_b,
        BURST + RPS * span,
        0.15,
    );
    assert_shared(&[&a, &b]).await;
    assert!(redis.dbsize() > 0, "the buckets live in Redis");
}

// === 2. One token budget for two instances ===

/// A chat body whose completion is `max_tokens` long, with 200 characters of prompt.
fn token_body(max_tokens: u64) -> String {
    let content = "lorem ipsum dolor sit amet ".repeat(8)[..200].to_string();
    json!({"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_spend_one_shared_token_budget() {
    const BUDGET: u64 = 2000;
    const COMPLETION: u64 = 40;
    let mock = Mock::start("a", &[]);
    let redis = RedisServer::start();
    let yaml = limited(
        &mock,
        &redis.url(),
        "name: shared-tpm, key: api_key, tokens_per_minute: 2000, shared: true, instances: 2",
    );
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    let c = client();

    // mock-llm charges body bytes / 4 + the completion's tokens; sluice reserves
    // ceil(chars / 4) + 4 + 3 + max_tokens. Pick max_tokens so the two agree.
    let prompt = token_body(COMPLETION).len() as u64 / 4;
    let estimate = 200 / 4 + 4 + 3;
    let body = token_body(COMPLETION + prompt - estimate);
    assert_eq!(body.len() as u64 / 4, prompt, "max_tokens kept its width");
    let cost = prompt + COMPLETION;
    let fair = BUDGET as f64 / cost as f64;

    // The first two thirds of the budget on A alone (more than its local half), then A and B
    // in turn, until both refuse.
    let alone = (fair * 2.0 / 3.0).ceil() as usize;
    let (mut ok, mut refused_in_a_row, mut i) = ([0usize; 2], 0, 0);
    let mut refusal: Option<(Value, reqwest::header::HeaderMap)> = None;
    let started = Instant::now();
    while refused_in_a_row < 4 && i < 3 * fair as usize {
        let gw = if i < alone { 0 } else { i % 2 };
        let resp = c
            .post(format!("{}/v1/chat/completions", [&a, &b][gw].url))
            .header("authorization", KEY)
            .header("content-type", "application/json")
            .header("x-mock-tokens", COMPLETION.to_string())
            .body(body.clone())
            .send()
            .await
            .expect("chat request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        match status {
            200 => (ok[gw], refused_in_a_row) = (ok[gw] + 1, 0),
            429 => {
                refused_in_a_row += 1;
                refusal.get_or_insert((serde_json::from_str(&text).expect("JSON"), headers));
            }
            _ => panic!("request {i} to gateway {gw}: {status} {text}"),
        }
        i += 1;
    }
    assert!(
        ok[0] >= alone,
        "A alone spent {} of the first {alone}",
        ok[0]
    );
    // The budget refills at 2000/min while this runs.
    let refill = BUDGET as f64 / 60.0 * started.elapsed().as_secs_f64();
    println!(
        "cost {cost} tokens per request ({} bytes of body), budget {BUDGET}: A {} + B {} admitted",
        body.len(),
        ok[0],
        ok[1]
    );
    let expected = (BUDGET as f64 + refill) / cost as f64;
    assert_near(
        "two instances, one token budget",
        ok[0] + ok[1],
        expected,
        0.0,
    );
    let (err, headers) = refusal.expect("the budget ran out");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded", "{err}");
    assert_eq!(err["error"]["param"], "shared-tpm", "{err}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_shared(&[&a, &b]).await;
    assert!(redis.dbsize() > 0, "the budget lives in Redis");
}

// === 3. Redis killed under load ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_shares_and_recovers_without_restart() {
    let mock = Mock::start("a", &[]);
    let mut redis = RedisServer::start();
    let yaml = limited(&mock, &redis.url(), SHARED_RPS);
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    let gws = [&a, &b];
    let c = client();

    let t_start = Instant::now();
    let load = Load::start(&c, &gws, 20, Some(KEY));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_kill = Instant::now();
    redis.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = [fallbacks(&a).await, fallbacks(&b).await];
    let t_restart = Instant::now();
    tokio::task::block_in_place(|| redis.restart());

    // Back: each instance's fallback counter stops rising (while the load goes on).
    let t_up = Instant::now();
    let mut last = out;
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = [fallbacks(&a).await, fallbacks(&b).await];
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if still_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(
            t_up.elapsed() < PATIENCE,
            "still falling back {PATIENCE:?} after Redis came back: fallbacks {now:?}\nA:\n{}\nB:\n{}",
            a.log_text(),
            b.log_text()
        );
    }
    let t_shared = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t_end = Instant::now();
    let after = [fallbacks(&a).await, fallbacks(&b).await];
    let shots = load.finish().await;
    assert_answered(&shots, &gws);

    let secs = |from: Instant, to: Instant| (to - from).as_secs_f64();
    let phase = |name: &str, from: Instant, to: Instant| {
        let t = tally::<2>(&shots, from, to);
        let d = secs(from, to);
        println!(
            "{name} ({d:.2}s): (sent, admitted) A {:?}, B {:?}",
            t[0], t[1]
        );
        t
    };
    let before = phase("shared, before the outage", t_start, t_kill);
    let outage = phase("Redis down", t_kill, t_restart);
    phase("Redis back, instances recovering", t_restart, t_shared);
    let recovered = phase("shared again", t_shared, t_end);
    println!(
        "fallbacks: {out:?} at the restart, {last:?} once steady ({:.2}s after Redis answered), {after:?} at the end",
        secs(t_up, still_since)
    );

    assert_near(
        "before the outage, one budget",
        before[0].1 + before[1].1,
        BURST + RPS * secs(t_start, t_kill),
        0.15,
    );
    // While Redis is down each instance enforces 5/s with a burst of 5 by itself: between
    // 5/s from an empty bucket and 5 + 5/s from a full one, with a generous margin. Not the
    // whole limit (10 + 10/s), not fail-open (20/s), not fail-closed (0).
    let t = secs(t_kill, t_restart);
    let (share, share_burst) = (RPS / 2.0, BURST / 2.0);
    let (low, high) = (0.6 * share * t - 1.0, 1.3 * (share_burst + share * t) + 1.0);
    for (name, (sent, ok), fell) in [("A", outage[0], out[0]), ("B", outage[1], out[1])] {
        assert!(
            (low..=high).contains(&(ok as f64)),
            "{name} admitted {ok} of {sent} in {t:.2}s of outage; its local share allows {low:.1}..{high:.1}"
        );
        assert!(fell > 0.0, "{name} counted no fallback during the outage");
    }
    assert_eq!(
        after, last,
        "fallbacks went on after the instances were shared again"
    );
    // Recovered: the Redis bucket has been drained by the load since, so ≈ 10/s in all.
    assert_near(
        "after recovery, one budget",
        recovered[0].1 + recovered[1].1,
        RPS * secs(t_shared, t_end),
        0.15,
    );
}

// === 4. Unreachable Redis at startup ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_at_startup_serves_from_the_local_share() {
    let mock = Mock::start("a", &[]);
    // A port nothing listens on.
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&limited(&mock, &nowhere, SHARED_RPS));
    let c = client();

    let started = Instant::now();
    let answers = join_all((0..20).map(|_| fire(c.clone(), gw.url.clone(), Some(KEY)))).await;
    let took = started.elapsed().as_secs_f64();
    assert!(
        answers.iter().all(Result::is_ok),
        "{answers:?}\n{}",
        gw.log_text()
    );
    let admitted = answers.iter().filter(|r| **r == Ok(200)).count() as f64;
    let m = gw
        .metrics_until(|m| metric_sum(m, FALLBACKS, &[]) >= 20.0)
        .await;
    println!(
        "20 at once with Redis unreachable, in {took:.2}s: {admitted} admitted, {} fallbacks, {} redis errors",
        metric_sum(&m, FALLBACKS, &[]),
        metric_sum(&m, "sluice_ratelimit_redis_errors_total", &[])
    );
    // The local share: burst 5 (of 10) plus 5/s over the time the burst took.
    assert!(
        admitted >= BURST / 2.0 && admitted <= BURST / 2.0 + RPS / 2.0 * took + 1.0,
        "admitted {admitted} of 20 in {took:.2}s; the local share is 5 at once, then 5/s"
    );
    assert_eq!(
        metric_sum(&m, FALLBACKS, &[]),
        20.0,
        "every check was decided locally:\n{m}"
    );
}
