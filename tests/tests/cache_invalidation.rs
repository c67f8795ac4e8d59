//! Purges and refreshes on one instance reach the others: two gateways share a Redis; an answer
//! B holds in its own memory tier is gone from it within a second of a purge sent to A, and
//! replaced within a second of A's `no-cache` refresh.

mod cache_support;

use cache_support::{chat, gateway, post};
use sluice_e2e::{Gateway, Mock, RedisServer};
use std::time::{Duration, Instant};

/// Two gateways with a caching route over one mock, sharing one Redis.
struct Pair {
    a: Gateway,
    b: Gateway,
    redis: RedisServer,
    _mock: Mock,
}

impl Pair {
    fn start() -> Pair {
        let mock = Mock::start("a", &[]);
        let redis = RedisServer::start();
        let top = format!(
            "redis:\n  url: \"{}\"\n  timeout: 200ms\ncache:\n  redis: true\n",
            redis.url()
        );
        let (a, b) = (gateway(&mock, "", &top), gateway(&mock, "", &top));
        Pair {
            a,
            b,
            redis,
            _mock: mock,
        }
    }
}

/// Waits (up to 5 s) until the background writer has put an entry into Redis.
async fn stored_in(redis: &RedisServer) {
    let stored = Instant::now() + Duration::from_secs(5);
    while redis.dbsize() == 0 && Instant::now() < stored {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_purge_on_one_instance_empties_the_others_memory_within_a_second() {
    let Pair { a, b, redis, _mock } = Pair::start();
    let c = reqwest::Client::new();
    let body = chat("m", "purge me everywhere", false);

    assert_eq!(post(&a, &c, body.clone(), &[]).await.cache(), "miss");
    stored_in(&redis).await;
    // B finds it in Redis, then holds it in its own memory tier.
    assert_eq!(post(&b, &c, body.clone(), &[]).await.cache(), "hit");
    assert_eq!(post(&b, &c, body.clone(), &[]).await.cache(), "hit");

    let purged = c
        .post(format!("{}/admin/cache/purge", a.admin))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let told = Instant::now();
    let log = b.log_until(|l| l.contains("cache purged by another instance"));
    assert!(
        log.contains("cache purged by another instance") && told.elapsed() < Duration::from_secs(1),
        "B did not hear of the purge within 1 s ({:?}):\n{log}",
        told.elapsed()
    );
    assert_eq!(redis.dbsize(), 0, "A's purge empties Redis");
    assert_eq!(
        post(&b, &c, body, &[]).await.cache(),
        "miss",
        "B still answered from its memory tier"
    );
}

#[tokio::test]
async fn a_no_cache_refresh_on_one_instance_replaces_the_others_copy_within_a_second() {
    let Pair { a, b, redis, _mock } = Pair::start();
    let c = reqwest::Client::new();
    let body = chat("m", "refresh me everywhere", false);

    let first = post(&a, &c, body.clone(), &[]).await;
    assert_eq!(first.cache(), "miss");
    stored_in(&redis).await;
    let held = post(&b, &c, body.clone(), &[]).await;
    assert_eq!(
        (held.cache(), held.body.as_str()),
        ("hit", first.body.as_str())
    );

    // A fresh answer (the mock writes fewer tokens this time) replaces the entry.
    let fresh = [("cache-control", "no-cache"), ("x-mock-tokens", "3")];
    let refreshed = post(&a, &c, body.clone(), &fresh).await;
    assert_ne!(refreshed.body, first.body);

    // B's memory hits change nothing, so asking until it answers the fresh body is safe.
    let told = Instant::now();
    loop {
        let now = post(&b, &c, body.clone(), &[]).await;
        if now.body == refreshed.body {
            break;
        }
        assert!(
            told.elapsed() < Duration::from_secs(1),
            "B still answers its old copy {:?} after {:?}:\n{}",
            now.cache(),
            told.elapsed(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
