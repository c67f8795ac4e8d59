//! Tests with a real Redis: sharing, outages, recovery, promotion, purge, adaptive TTL.

use super::*;
use ::redis::AsyncCommands;

#[tokio::test]
async fn redis_shares_entries_between_stores() {
    let server = RedisServer::start();
    let (a, _) = open(&config(Some(&server), None));
    let (b, b_metrics) = open(&config(Some(&server), None));
    let e = entry("chat", 300, now(), 60_000);
    a.put(key(1), Arc::clone(&e));
    a.flush().await;

    let redis_key = format!("sluice:cache:chat:{{{}}}", key(1).hex());
    let exists: bool = raw_redis(&server)
        .await
        .exists(&redis_key)
        .await
        .expect("EXISTS");
    assert!(exists, "stored as {redis_key}");

    let (got, from) = b.get(key(1), "chat", now()).await.expect("a hit");
    assert_eq!((got.as_ref(), from), (e.as_ref(), CacheTier::Redis));
    assert_eq!(
        tier_of(&b, key(1), "chat", now()).await,
        Some(CacheTier::Memory)
    );
    assert_eq!(tier(&b_metrics, CacheTier::Redis).errors.get(), 0);
}

#[tokio::test]
async fn expired_entries_are_served_by_no_tier() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let at = now();
    let later = at + 120_000;
    {
        let (store, _) = open(&config(Some(&server), Some(dir.path())));
        store.put(key(1), entry("chat", 100, at, 60_000));
        store.put(key(2), entry("chat", 100, at - 10_000, 5_000));
        store.flush().await;
        assert_eq!(
            tier_of(&store, key(1), "chat", at).await,
            Some(CacheTier::Memory)
        );
        assert_eq!(tier_of(&store, key(1), "chat", later).await, None);
        assert_eq!(
            tier_of(&store, key(2), "chat", at).await,
            None,
            "expired when put"
        );
    }
    let (redis_only, _) = open(&config(Some(&server), None));
    assert_eq!(tier_of(&redis_only, key(1), "chat", later).await, None);
    assert_eq!(tier_of(&redis_only, key(2), "chat", at).await, None);
    assert_eq!(
        tier_of(&redis_only, key(1), "chat", at).await,
        Some(CacheTier::Redis)
    );
    let (disk_only, metrics) = open(&config(None, Some(dir.path())));
    assert_eq!(tier_of(&disk_only, key(2), "chat", at).await, None);
    assert_eq!(tier_of(&disk_only, key(1), "chat", later).await, None);
    disk_only.flush().await;
    assert_eq!(
        tier(&metrics, CacheTier::Disk).entries.get(),
        0,
        "removed when found expired"
    );
}

#[tokio::test]
async fn dead_redis_costs_lookups_nothing_and_is_counted() {
    let mut server = RedisServer::start();
    let (store, metrics) = open(&config(Some(&server), None));
    assert!(store.redis_up());
    store.put(key(1), entry("chat", 100, now(), 60_000));
    store.flush().await;
    server.stop();

    let started = Instant::now();
    for n in 0..50 {
        assert_eq!(
            tier_of(&store, key(1), "chat", now()).await,
            Some(CacheTier::Memory)
        );
        assert_eq!(tier_of(&store, key(1000 + n), "chat", now()).await, None);
        store.put(key(2000 + n), entry("chat", 100, now(), 60_000));
    }
    store.flush().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        tier_of(&store, key(2049), "chat", now()).await,
        Some(CacheTier::Memory)
    );
    assert!(!store.redis_up());
    assert!(tier(&metrics, CacheTier::Redis).errors.get() >= 1);
}

#[tokio::test]
async fn redis_is_used_again_when_it_returns() {
    let mut server = RedisServer::start();
    let (store, _) = open(&config(Some(&server), None));
    server.stop();
    assert_eq!(tier_of(&store, key(1), "chat", now()).await, None);
    assert!(!store.redis_up(), "the failed GET marks the tier down");

    server.restart();
    let came_back = eventually(Duration::from_secs(8), || async { store.redis_up() }).await;
    assert!(
        came_back,
        "the probe reconnects without reopening the store"
    );
    store.put(key(2), entry("chat", 100, now(), 60_000));
    store.flush().await;
    let (other, _) = open(&config(Some(&server), None));
    assert_eq!(
        tier_of(&other, key(2), "chat", now()).await,
        Some(CacheTier::Redis)
    );
    other.put(key(3), entry("chat", 100, now(), 60_000));
    other.flush().await;
    assert_eq!(
        tier_of(&store, key(3), "chat", now()).await,
        Some(CacheTier::Redis)
    );
}

#[tokio::test]
async fn redis_down_at_start_is_not_an_error() {
    let mut server = RedisServer::start();
    server.stop();
    let (store, _) = open(&config(Some(&server), None));
    assert!(!store.redis_up());
    store.put(key(1), entry("chat", 100, now(), 60_000));
    assert_eq!(
        tier_of(&store, key(1), "chat", now()).await,
        Some(CacheTier::Memory)
    );
    server.restart();
    assert!(eventually(Duration::from_secs(8), || async { store.redis_up() }).await);
}

#[tokio::test]
async fn corrupt_redis_value_is_a_miss_and_deleted() {
    let server = RedisServer::start();
    let (store, metrics) = open(&config(Some(&server), None));
    let redis_key = format!("sluice:cache:chat:{{{}}}", key(1).hex());
    let mut raw = raw_redis(&server).await;
    let () = raw.set(&redis_key, b"\x01garbage").await.expect("SET");
    assert_eq!(tier_of(&store, key(1), "chat", now()).await, None);
    store.flush().await;
    let exists: bool = raw.exists(&redis_key).await.expect("EXISTS");
    assert!(!exists, "the undecodable value was deleted");
    assert_eq!(tier(&metrics, CacheTier::Redis).errors.get(), 0);
}

#[tokio::test]
async fn disk_hit_is_promoted_to_memory_and_redis() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (disk_only, _) = open(&config(None, Some(dir.path())));
        disk_only.put(key(1), entry("chat", 100, now(), 60_000));
        disk_only.flush().await;
    }
    let (store, _) = open(&config(Some(&server), Some(dir.path())));
    assert_eq!(
        tier_of(&store, key(1), "chat", now()).await,
        Some(CacheTier::Disk)
    );
    assert_eq!(
        tier_of(&store, key(1), "chat", now()).await,
        Some(CacheTier::Memory)
    );
    store.flush().await;
    let (other, _) = open(&config(Some(&server), None));
    assert_eq!(
        tier_of(&other, key(1), "chat", now()).await,
        Some(CacheTier::Redis)
    );
}

#[tokio::test]
async fn purge_counts_per_tier_and_by_route() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, metrics) = open(&config(Some(&server), Some(dir.path())));
    let routes = ["chat", "chat", "chat", "chat*", "embed", "embed"];
    for (n, route) in routes.iter().enumerate() {
        store.put(key(n as u64), entry(route, 100, now(), 60_000));
    }
    store.flush().await;
    let counts = |n| PurgeCounts {
        memory: n,
        redis: n,
        disk: n,
    };
    assert_eq!(
        store.purge(Some("chat*")).await,
        counts(1),
        "glob characters are literal"
    );
    assert_eq!(store.purge(Some("chat")).await, counts(3));
    assert_eq!(store.purge(Some("nothing")).await, counts(0));
    assert_eq!(store.purge(None).await, counts(2));
    for n in 0..routes.len() as u64 {
        assert_eq!(
            tier_of(&store, key(n), routes[n as usize], now()).await,
            None
        );
    }
    for t in CacheTier::ALL
        .into_iter()
        .filter(|t| *t != CacheTier::Redis)
    {
        assert_eq!(tier(&metrics, t).entries.get(), 0, "{t:?}");
        assert_eq!(tier(&metrics, t).bytes.get(), 0, "{t:?}");
    }
}

#[tokio::test]
async fn extend_moves_expiry_in_every_tier() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let at = now();
    let e = entry("chat", 100, at, 2_000);
    {
        let (store, _) = open(&config(Some(&server), Some(dir.path())));
        store.put(key(1), Arc::clone(&e));
        store.extend(key(1), &e, at + 1_000);
        store.flush().await;
        let (got, from) = store
            .get(key(1), "chat", at + 2_500)
            .await
            .expect("extended");
        assert_eq!((got.expires_at_ms, from), (at + 3_000, CacheTier::Memory));
    }
    let (redis_only, _) = open(&config(Some(&server), None));
    let (got, from) = redis_only
        .get(key(1), "chat", at + 2_500)
        .await
        .expect("extended");
    assert_eq!((got.expires_at_ms, from), (at + 3_000, CacheTier::Redis));
    let (disk_only, _) = open(&config(None, Some(dir.path())));
    let (got, from) = disk_only
        .get(key(1), "chat", at + 2_500)
        .await
        .expect("extended");
    assert_eq!((got.expires_at_ms, from), (at + 3_000, CacheTier::Disk));
}
