//! The prompt cache's shared tiers end to end: two gateways sharing Redis, through its outage
//! and back, and the disk tier across a restart and within its byte bound.

mod cache_support;

use cache_support::{chat, gateway, post};
use futures_util::future::join_all;
use sluice_e2e::{metric_value, Answer, Gateway, Mock, RedisServer, UpstreamCalls, PATIENCE};
use std::path::PathBuf;
use std::time::{Duration, Instant};

// === Helpers ===

fn requests_metric(result: &str, tier: &str) -> String {
    format!(
        "sluice_cache_requests_total{{result=\"{result}\",route=\"chat\",tier=\"{tier}\",variant=\"\"}}"
    )
}

// === 1. Redis ===

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
        let before = redis.dbsize();
        let w = post(a, c, body.clone(), &[]).await;
        assert_eq!(w.status, 200, "{w:?}");
        let stored = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < stored && redis.dbsize() <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if redis.dbsize() > before {
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
    while redis.dbsize() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        redis.dbsize() > 0,
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

// === 2. Disk ===

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
