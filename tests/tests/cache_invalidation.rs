//! A purge on one instance reaches the others: two gateways share a Redis; an answer B holds in
//! its own memory tier is gone from it within a second of a purge sent to A.

mod cache_support;

use cache_support::{chat, gateway, post};
use sluice_e2e::{Mock, RedisServer};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_purge_on_one_instance_empties_the_others_memory_within_a_second() {
    let mock = Mock::start("a", &[]);
    let redis = RedisServer::start();
    let top = format!(
        "redis:\n  url: \"{}\"\n  timeout: 200ms\ncache:\n  redis: true\n",
        redis.url()
    );
    let (a, b) = (gateway(&mock, "", &top), gateway(&mock, "", &top));
    let c = reqwest::Client::new();
    let body = chat("m", "purge me everywhere", false);

    assert_eq!(post(&a, &c, body.clone(), &[]).await.cache(), "miss");
    let stored = Instant::now() + Duration::from_secs(5);
    while redis.dbsize() == 0 && Instant::now() < stored {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
