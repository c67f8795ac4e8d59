//! L1: entries in process memory, bounded by bytes (each entry weighs [`Entry::weight`]) and
//! expiring at their own `expires_at_ms`. moka gives a concurrent, byte-weighted cache with
//! per-entry expiry and eviction callbacks, which is all this tier needs.

use super::types::unix_now_ms;
use crate::cache::{CacheKey, Entry};
use crate::metrics::TierMetrics;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// How often expired entries are swept and the gauges refreshed without any traffic.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

pub(super) struct MemoryTier {
    cache: Cache<CacheKey, Arc<Entry>>,
    metrics: TierMetrics,
}

impl MemoryTier {
    /// Builds the cache and starts its housekeeping on the store's runtime.
    pub(super) fn start(max_bytes: u64, metrics: TierMetrics, handle: &Handle) -> Arc<Self> {
        let evictions = metrics.evictions.clone();
        let cache = Cache::builder()
            .name("sluice-cache-memory")
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| {
                u32::try_from(entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(UntilExpiresAt)
            .eviction_listener(move |_key, _entry, cause| {
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    evictions.inc();
                }
            })
            .build();
        let tier = Arc::new(MemoryTier { cache, metrics });
        let weak = Arc::downgrade(&tier);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                tick.tick().await;
                let Some(tier) = weak.upgrade() else { return };
                tier.sync_gauges().await;
            }
        });
        tier
    }

    pub(super) async fn get(&self, key: CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(&key).await
    }

    pub(super) async fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.cache.insert(key, entry).await;
        self.read_gauges();
    }

    /// Inserts from synchronous code: the insert almost always completes on its first poll;
    /// when it would wait (lock contention, housekeeping), it finishes on the store's runtime.
    pub(super) fn insert_now(self: &Arc<Self>, key: CacheKey, entry: Arc<Entry>, handle: &Handle) {
        let tier = Arc::clone(self);
        let mut insert = Box::pin(async move { tier.insert(key, entry).await });
        if insert
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
        {
            handle.spawn(insert);
        }
    }

    /// Removes one entry.
    pub(super) async fn remove(&self, key: CacheKey) {
        self.cache.invalidate(&key).await;
        self.read_gauges();
    }

    /// Removes all entries or one route's; returns how many.
    pub(super) async fn purge(&self, route: Option<&str>) -> u64 {
        let keys: Vec<CacheKey> = self
            .cache
            .iter()
            .filter(|(_, entry)| route.is_none_or(|r| entry.route == r))
            .map(|(key, _)| *key)
            .collect();
        let mut removed = 0;
        for key in keys {
            if self.cache.remove(&key).await.is_some() {
                removed += 1;
            }
        }
        self.sync_gauges().await;
        removed
    }

    /// Applies pending evictions and expiries, then sets `entries` and `bytes`.
    pub(super) async fn sync_gauges(&self) {
        self.cache.run_pending_tasks().await;
        self.read_gauges();
    }

    fn read_gauges(&self) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.entries.set(clamp(self.cache.entry_count()));
        self.metrics.bytes.set(clamp(self.cache.weighted_size()));
    }
}

/// Expires each entry at its `expires_at_ms` (wall clock, as moka has no injected time).
struct UntilExpiresAt;

impl UntilExpiresAt {
    fn remaining(entry: &Entry) -> Option<Duration> {
        Some(Duration::from_millis(entry.ttl_ms(unix_now_ms())))
    }
}

impl Expiry<CacheKey, Arc<Entry>> for UntilExpiresAt {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Self::remaining(entry)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        entry: &Arc<Entry>,
        _updated_at: Instant,
        _until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(entry)
    }
}
