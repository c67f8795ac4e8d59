//! The store against real tiers: `redis-server` processes each test starts on its own port,
//! and redb files in temporary directories.

mod damage;
mod local;
mod with_redis;

use super::*;
use crate::cache::BodyForm;
use crate::test_redis::{eventually, raw_redis, RedisServer};
use bytes::Bytes;
use std::time::Instant;

// === helpers ===

fn now() -> u64 {
    unix_now_ms()
}

/// An entry of `route` with a `body_len` body that does not compress, stored at `at_ms`.
fn entry(route: &str, body_len: usize, at_ms: u64, ttl_ms: u64) -> Arc<Entry> {
    let mut state = at_ms ^ body_len as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let body: Vec<u8> = (0..body_len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    Arc::new(Entry {
        route: route.into(),
        status: 200,
        content_type: "application/json".into(),
        form: BodyForm::Json,
        body: Bytes::from(body),
        stored_at_ms: at_ms,
        expires_at_ms: at_ms + ttl_ms,
        max_expires_at_ms: at_ms + 10 * ttl_ms,
        extend_ms: ttl_ms,
        upstream_ms: 100,
        tokens: 10,
    })
}

fn key(n: u64) -> CacheKey {
    CacheKey(u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

fn config(redis: Option<&RedisServer>, disk: Option<&std::path::Path>) -> StoreConfig {
    StoreConfig {
        memory_max_bytes: 16 << 20,
        redis: redis.map(|r| RedisConfig {
            timeout: Duration::from_millis(200),
            ..RedisConfig::new(r.url())
        }),
        disk: disk.map(|path| DiskConfig {
            path: path.to_path_buf(),
            max_bytes: 16 << 20,
        }),
    }
}

fn open(config: &StoreConfig) -> (CacheStore, Metrics) {
    let metrics = Metrics::new("test").expect("metrics");
    let store = CacheStore::open(config, &metrics).expect("store opens");
    (store, metrics)
}

fn tier(metrics: &Metrics, tier: CacheTier) -> crate::metrics::TierMetrics {
    metrics.cache_tier(tier)
}

async fn tier_of(store: &CacheStore, key: CacheKey, route: &str, now_ms: u64) -> Option<CacheTier> {
    store.get(key, route, now_ms).await.map(|(_, tier)| tier)
}
