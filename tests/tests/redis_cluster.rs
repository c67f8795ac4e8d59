//! sluice on a real Redis Cluster (issue 20: `redis: { cluster: [seeds] }`), three instances
//! on one 3-master/3-replica cluster: a shared limit is one budget, a cached answer stored by
//! one instance is a Redis hit on the others and a purge empties every master, and a master
//! killed under load fails no request and the limit is shared again once its replica took over.

mod cache_support;
mod redis_cluster_support;

use cache_support::{chat, gateway as caching_gateway, post};
use futures_util::future::join_all;
use redis_cluster_support::{counts, redis_top, FALLBACKS, REDIS_ERRORS};
use sluice_e2e::load::{assert_answered, assert_near, client, fire, tally, Load};
use sluice_e2e::{config, metric_value, Gateway, Mock, UpstreamCalls, PATIENCE};
use sluice_testkit::RedisCluster;
use std::time::{Duration, Instant};

/// Three gateways over `mock` with route `chat` for `/v1` carrying one `limit` (a flow map's
/// inside), on `cluster`.
fn limited(mock: &Mock, cluster: &RedisCluster, limit: &str) -> [Gateway; 3] {
    let route = format!(
        "  - name: chat\n    match: {{ path_prefix: /v1 }}\n    upstream: up\n    limits:\n      - {{ {limit} }}\n"
    );
    let yaml = format!("{}{}", config(&[&mock.url], "", &route), redis_top(cluster));
    [(); 3].map(|()| Gateway::start(&yaml))
}

// === 1. One request budget for three instances ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_admit_one_shared_budget_on_a_cluster() {
    let mock = Mock::start("a", &[]);
    let cluster = RedisCluster::start();
    // `instances` left at 1: an instance deciding alone would admit all 60 itself.
    let [a, b, c] = limited(
        &mock,
        &cluster,
        "name: shared-rpm, key: route, requests_per_minute: 60, shared: true",
    );
    let gws = [&a, &b, &c];
    let client = client();

    // 150 requests round-robin, 15 at a time: one budget of 60 (plus 1/s refill), not 3 × 60.
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..10 {
        let round = (0..15).map(|i| fire(client.clone(), gws[i % 3].url.clone(), None));
        answers.extend(join_all(round).await);
    }
    let took = started.elapsed().as_secs_f64();
    let bad: Vec<&String> = answers.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(bad.is_empty(), "not 200/429: {bad:?}\n{}", a.log_text());
    let admitted = answers.iter().filter(|r| **r == Ok(200)).count();
    assert_near(
        &format!("150 requests over three instances in {took:.2}s"),
        admitted,
        60.0 + took,
        0.1,
    );
    for (metric, n) in [
        (FALLBACKS, counts(&gws, FALLBACKS).await),
        (REDIS_ERRORS, counts(&gws, REDIS_ERRORS).await),
    ] {
        assert_eq!(
            n,
            [0.0; 3],
            "{metric} per instance with the cluster healthy\nA:\n{}",
            a.log_text()
        );
    }
    assert!(
        cluster.dbsize_total() > 0,
        "the bucket lives in the cluster"
    );
}

// === 2. The cache's Redis tier ===

fn cache_hits(tier: &str) -> String {
    format!(
        "sluice_cache_requests_total{{result=\"hit\",route=\"chat\",tier=\"{tier}\",variant=\"\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_stored_by_one_instance_is_a_redis_hit_on_the_others_until_purged() {
    const PROMPTS: usize = 12;
    let mock = Mock::start("a", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let cluster = RedisCluster::start();
    let top = format!("{}cache:\n  redis: true\n", redis_top(&cluster));
    let [a, b, c] = [(); 3].map(|()| caching_gateway(&mock, "", &top));
    let client = reqwest::Client::new();
    let body = |i: usize| chat("m", &format!("prompt {i}"), false);

    let mut stored = Vec::new();
    for i in 0..PROMPTS {
        let w = post(&a, &client, body(i), &[]).await;
        assert_eq!((w.status, w.cache()), (200, "miss"), "{w:?}");
        stored.push(w.body);
    }
    // Writes to Redis are in the background; the entries' keys spread over the masters.
    let deadline = Instant::now() + PATIENCE;
    while cluster.dbsize_total() < PROMPTS as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sizes = cluster.dbsizes();
    assert!(
        sizes.iter().sum::<u64>() >= PROMPTS as u64,
        "A wrote {sizes:?} keys for {PROMPTS} answers:\n{}",
        a.log_text()
    );
    assert!(
        sizes.iter().filter(|n| **n > 0).count() > 1,
        "{PROMPTS} entries on one master: {sizes:?}"
    );

    // The first half: hits on B and C, from Redis, A's very answers.
    let half = PROMPTS / 2;
    for gw in [&b, &c] {
        for (i, stored) in stored.iter().enumerate().take(half) {
            let r = post(gw, &client, body(i), &[]).await;
            assert_eq!(
                (r.status, r.cache()),
                (200, "hit"),
                "prompt {i}: {r:?}\n{}",
                gw.log_text()
            );
            assert_eq!(&r.body, stored, "prompt {i}");
        }
        let m = gw.metrics_when(&cache_hits("redis"), half as f64).await;
        assert_eq!(metric_value(&m, &cache_hits("redis")), half as f64, "{m}");
    }
    assert_eq!(up.calls().await, PROMPTS as u64);

    // A purge on A empties every master.
    let purged: serde_json::Value = client
        .post(format!("{}/admin/cache/purge", a.admin))
        .body("{}")
        .send()
        .await
        .expect("purge")
        .json()
        .await
        .expect("purge answer");
    assert_eq!(
        purged["tiers"]["redis"],
        PROMPTS,
        "{purged}; keys per master: {:?}\nA:\n{}",
        cluster.dbsizes(),
        a.log_text()
    );
    assert_eq!(
        cluster.dbsize_total(),
        0,
        "left after the purge: {:?}",
        cluster.dbsizes()
    );

    // The second half, never read by B or C: gone from Redis, so misses. Each prompt is
    // asked once, since a miss stores the answer again.
    for i in half..PROMPTS {
        let gw = [&b, &c][i % 2];
        let r = post(gw, &client, body(i), &[]).await;
        assert_eq!((r.status, r.cache()), (200, "miss"), "prompt {i}: {r:?}");
    }
    for gw in [&b, &c] {
        let m = gw.metrics().await;
        assert_eq!(metric_value(&m, &cache_hits("redis")), half as f64, "{m}");
    }
}

// === 3. A master killed under load ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_no_request_and_the_limit_is_shared_again_after_failover() {
    const RPS: f64 = 10.0;
    let mock = Mock::start("a", &[]);
    let mut cluster = RedisCluster::start();
    let [a, b, c] = limited(
        &mock,
        &cluster,
        "name: shared-rps, key: route, requests_per_second: 10, burst: 10, shared: true, instances: 3",
    );
    let gws = [&a, &b, &c];
    let client = client();

    // 10/s to each instance, 30/s in all, against one 10/s budget.
    let load = Load::start(&client, &gws, 10, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counts(&gws, FALLBACKS).await, [0.0; 3], "before the kill");
    // Kill the master holding the bucket, so the limit loses its Redis.
    let sizes = cluster.dbsizes();
    let holder = (0..sizes.len()).max_by_key(|i| sizes[*i]).expect("masters");
    assert!(sizes[holder] > 0, "no bucket in the cluster: {sizes:?}");
    let t_kill = Instant::now();
    let dead = cluster.kill_master(holder);
    tokio::task::block_in_place(|| cluster.wait_promoted());
    let promoted_after = t_kill.elapsed();

    // Recovered: the fallback counters stop rising (two scrapes 2 s apart agree).
    let mut last = counts(&gws, FALLBACKS).await;
    let fell_back = last.iter().sum::<f64>();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = counts(&gws, FALLBACKS).await;
        if now == last {
            break;
        }
        last = now;
        assert!(
            t_kill.elapsed() < Duration::from_secs(30),
            "still falling back 30 s after the kill: {last:?}\nA:\n{}",
            a.log_text()
        );
    }
    let t_shared = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t_end = Instant::now();
    let after = counts(&gws, FALLBACKS).await;
    let shots = load.finish().await;
    assert_answered(&shots, &gws);

    println!(
        "master {dead} killed; replica promoted after {promoted_after:.2?}; {fell_back} checks \
         decided locally by then, {last:?} per instance once steady ({:.2?} after the kill)",
        t_shared - t_kill
    );
    assert!(
        fell_back > 0.0,
        "no limit check noticed the dead master: the test did not exercise the failover"
    );
    assert_eq!(
        after, last,
        "fallbacks went on once the instances were shared again"
    );
    let per_gateway: [_; 3] = tally(&shots, t_shared, t_end);
    let (sent, admitted) = (per_gateway.iter()).fold((0, 0), |(s, a), (n, ok)| (s + n, a + ok));
    println!("shared again: {admitted} of {sent} admitted");
    assert_near(
        "after the failover, one budget",
        admitted,
        RPS * (t_end - t_shared).as_secs_f64(),
        0.15,
    );
}
