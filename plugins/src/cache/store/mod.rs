//! The prompt cache's tiers: L1 in process memory, L2 a shared Redis, L3 a local disk file.
//! A lookup walks them fastest first and promotes a hit into the faster tiers; a write lands
//! in memory at once and reaches Redis and disk through background writers. The store owns a
//! small runtime so the Redis connection and the writers belong to no Pingora worker runtime,
//! and a slow or dead tier costs the request path nothing but a skipped lookup.

mod damage;
mod disk;
mod invalidate;
mod memory;
mod queue;
mod redis;
#[cfg(test)]
mod tests;
mod types;

use self::disk::DiskTier;
use self::memory::MemoryTier;
use self::queue::{Change, Queue};
use self::redis::RedisTier;
pub use self::types::DiskConfig;
use self::types::{unix_now_ms, Lookup};
use super::{CacheKey, Entry};
use crate::metrics::{CacheTier, Metrics};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};

/// Name of the store's runtime threads (also how `Drop` knows it runs on one of them).
const RUNTIME_THREAD: &str = "sluice-cache";
/// Writes waiting for Redis or disk beyond this are dropped rather than buffered without bound.
const QUEUE_CAPACITY: usize = 4096;
/// How long `Drop` waits for in-flight disk work before leaving it behind.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// An extension gaining less than this share of `extend_ms` is skipped, so a hot entry is
/// rewritten about ten times per extension window instead of on every hit.
const EXTEND_STEP_DIVISOR: u64 = 10;

/// Which tiers to open and how large they may grow.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// L1 bound: the sum of [`Entry::weight`] held in memory.
    pub memory_max_bytes: u64,
    pub redis: Option<RedisConfig>,
    pub disk: Option<DiskConfig>,
}

/// The shared L2's connection settings (the same for every component using Redis).
pub use crate::redis_link::RedisConfig;

/// Entries removed by a purge, per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCounts {
    pub memory: u64,
    pub redis: u64,
    pub disk: u64,
}

/// A slow tier with the queue that writes to it in the background.
struct Backed<T> {
    tier: Arc<T>,
    writes: Queue,
}

/// The three tiers behind one lookup/store API; share it as `Arc<CacheStore>`.
pub struct CacheStore {
    memory: Arc<MemoryTier>,
    redis: Option<Backed<RedisTier>>,
    disk: Option<Backed<DiskTier>>,
    handle: Handle,
    /// Owns the threads `handle` runs on; `None` only while opening and once dropped.
    runtime: Option<Runtime>,
    /// This instance, in the purge messages it publishes.
    origin: u64,
}

// === impl CacheStore ===

impl CacheStore {
    /// Opens the tiers. Redis connects in the background (a dead Redis at start is not an
    /// error: the tier is skipped until it answers), though `open` waits up to one Redis
    /// timeout for the first answer so a healthy Redis serves the first request. A damaged
    /// disk file is set aside and the tier starts empty; a disk path that cannot be opened
    /// otherwise is an error naming the path.
    pub fn open(config: &StoreConfig, metrics: &Metrics) -> Result<CacheStore, String> {
        let (runtime, mut store) = crate::own_thread::start(RUNTIME_THREAD, |runtime| {
            Self::open_tiers(config, metrics, runtime.handle())
        })?;
        store.runtime = Some(runtime);
        Ok(store)
    }

    /// The tiers, their writers and housekeeping on `handle`; the caller adds the runtime.
    fn open_tiers(
        config: &StoreConfig,
        metrics: &Metrics,
        handle: &Handle,
    ) -> Result<CacheStore, String> {
        let limit = |tier, bytes: u64| {
            let gauge = metrics.cache_max_bytes(tier);
            gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        };
        limit(CacheTier::Memory, config.memory_max_bytes);
        if let Some(disk) = &config.disk {
            limit(CacheTier::Disk, disk.max_bytes);
        }
        let memory = MemoryTier::start(
            config.memory_max_bytes,
            metrics.cache_tier(CacheTier::Memory),
            handle,
        );
        let disk = match &config.disk {
            Some(disk) => {
                let tier = Arc::new(DiskTier::open(
                    disk,
                    metrics.cache_tier(CacheTier::Disk),
                    metrics.cache_disk_resets(),
                )?);
                tier.wait_for_file(handle);
                let errors = metrics.cache_tier(CacheTier::Disk).errors;
                let writes = tier.writer(handle, QUEUE_CAPACITY, errors);
                Some(Backed { tier, writes })
            }
            None => None,
        };
        let origin = RandomState::new().build_hasher().finish();
        let redis = match &config.redis {
            Some(redis) => {
                let errors = metrics.cache_tier(CacheTier::Redis).errors;
                let tier = RedisTier::start(redis, errors.clone(), handle)?;
                let writes = tier.writer(handle, QUEUE_CAPACITY, errors);
                let local = invalidate::LocalTiers {
                    memory: Arc::clone(&memory),
                    disk: disk.as_ref().map(|d| d.writes.clone()),
                };
                let channel = invalidate::channel(tier.prefix());
                invalidate::listen(redis.nodes.urls(), channel, origin, local, handle);
                Some(Backed { tier, writes })
            }
            None => None,
        };
        Ok(CacheStore {
            memory,
            redis,
            disk,
            handle: handle.clone(),
            runtime: None,
            origin,
        })
    }

    /// L1 → L2 → L3; the first fresh hit wins and is promoted into the faster tiers; `None`
    /// on a miss. Never fails: a tier error is logged once per outage, counted in that tier's
    /// `errors`, and the lookup goes on. `route` names the entry's route (part of its Redis key).
    pub async fn get(
        &self,
        key: CacheKey,
        route: &str,
        now_ms: u64,
    ) -> Option<(Arc<Entry>, CacheTier)> {
        if let Some(entry) = self.memory.get(key).await.filter(|e| e.is_fresh(now_ms)) {
            return Some((entry, CacheTier::Memory));
        }
        if let Some(entry) = self.redis_lookup(key, route, now_ms).await {
            self.memory.insert(key, Arc::clone(&entry)).await;
            return Some((entry, CacheTier::Redis));
        }
        if let Some(entry) = self.disk_lookup(key, route, now_ms).await {
            self.memory.insert(key, Arc::clone(&entry)).await;
            if let Some(redis) = &self.redis {
                let entry = Arc::clone(&entry);
                redis.writes.push(Change::Put { key, entry, now_ms });
            }
            return Some((entry, CacheTier::Disk));
        }
        None
    }

    /// Stores in L1 at once and in L2/L3 in the background; replaces an older entry. Has no
    /// time argument, so entries already expired by the wall clock are dropped here.
    pub fn put(&self, key: CacheKey, entry: Arc<Entry>) {
        let now_ms = unix_now_ms();
        if !entry.is_fresh(now_ms) {
            return;
        }
        self.store_everywhere(key, entry, now_ms);
    }

    /// Like [`CacheStore::put`] for a `no-cache` refresh: other instances drop their older copy
    /// from their memory and disk tiers. They are told once the new entry is in Redis, so the
    /// next lookup there finds it, not the old one.
    pub fn put_refreshed(self: &Arc<Self>, key: CacheKey, route: &str, entry: Arc<Entry>) {
        self.put(key, entry);
        if self.redis.is_some() {
            let store = Arc::clone(self);
            let route = route.to_string();
            self.handle.spawn(async move {
                if let Some(r) = &store.redis {
                    r.writes.flush().await;
                }
                store.tell(&invalidate::Told::Refresh { route, key }).await;
            });
        }
    }

    /// Tells the other instances on the same Redis what to follow in their own tiers.
    async fn tell(&self, told: &invalidate::Told) {
        if let Some(r) = &self.redis {
            let channel = invalidate::channel(r.tier.prefix());
            let message = invalidate::message(self.origin, told);
            r.tier.publish(&channel, &message).await;
        }
    }

    /// Adaptive TTL: after a hit at `now_ms`, stores the entry with its extended expiry in
    /// every tier (L2/L3 in the background). An extension gaining less than a tenth of
    /// `extend_ms` is skipped, so hits on a hot entry do not each rewrite it.
    pub fn extend(&self, key: CacheKey, entry: &Entry, now_ms: u64) {
        let expires_at_ms = entry.extended_expiry(now_ms);
        let gain = expires_at_ms.saturating_sub(entry.expires_at_ms);
        if gain == 0 || gain < entry.extend_ms / EXTEND_STEP_DIVISOR {
            return;
        }
        let extended = Arc::new(Entry {
            expires_at_ms,
            ..entry.clone()
        });
        self.store_everywhere(key, extended, now_ms);
    }

    /// Removes every entry, or those of one route; counts per tier. Writes queued before the
    /// purge are purged too, and other instances on the same Redis purge their memory and disk
    /// tiers when they hear of it.
    pub async fn purge(&self, route: Option<&str>) -> PurgeCounts {
        let redis = async {
            match &self.redis {
                Some(redis) => redis.writes.purge(route).await,
                None => 0,
            }
        };
        let disk = async {
            match &self.disk {
                Some(disk) => disk.writes.purge(route).await,
                None => 0,
            }
        };
        let (memory, redis, disk) = tokio::join!(self.memory.purge(route), redis, disk);
        let told = invalidate::Told::Purge(route.map(str::to_string));
        self.tell(&told).await;
        PurgeCounts {
            memory,
            redis,
            disk,
        }
    }

    /// Waits until background writes queued so far are done and the gauges are current
    /// (tests, shutdown).
    pub async fn flush(&self) {
        if let Some(redis) = &self.redis {
            redis.writes.flush().await;
        }
        if let Some(disk) = &self.disk {
            disk.writes.flush().await;
        }
        self.memory.sync_gauges().await;
    }

    /// Whether Redis is configured and answering (for health reporting).
    #[must_use]
    pub fn redis_up(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.tier.is_up())
    }

    /// One GET on the store's runtime, skipped while Redis is down.
    async fn redis_lookup(&self, key: CacheKey, route: &str, now_ms: u64) -> Option<Arc<Entry>> {
        let redis = self.redis.as_ref().filter(|r| r.tier.is_up())?;
        let tier = Arc::clone(&redis.tier);
        let owned_route = route.to_string();
        let found = self
            .handle
            .spawn(async move { tier.get(key, &owned_route, now_ms).await })
            .await;
        Self::settle(found.unwrap_or(Lookup::Miss), &redis.writes, key, route)
    }

    /// One read transaction on the store's blocking threads.
    async fn disk_lookup(&self, key: CacheKey, route: &str, now_ms: u64) -> Option<Arc<Entry>> {
        let disk = self.disk.as_ref()?;
        let tier = Arc::clone(&disk.tier);
        let found = self
            .handle
            .spawn_blocking(move || tier.read(key, now_ms))
            .await;
        Self::settle(found.unwrap_or(Lookup::Miss), &disk.writes, key, route)
    }

    /// The hit, if any; an unusable value is queued for deletion.
    fn settle(found: Lookup, writes: &Queue, key: CacheKey, route: &str) -> Option<Arc<Entry>> {
        match found {
            Lookup::Hit(entry) => Some(Arc::new(entry)),
            Lookup::Miss => None,
            Lookup::Discard => {
                let route = route.to_string();
                writes.push(Change::Remove { key, route });
                None
            }
        }
    }

    fn store_everywhere(&self, key: CacheKey, entry: Arc<Entry>, now_ms: u64) {
        self.memory
            .insert_now(key, Arc::clone(&entry), &self.handle);
        for writes in [
            self.redis.as_ref().map(|r| &r.writes),
            self.disk.as_ref().map(|d| &d.writes),
        ]
        .into_iter()
        .flatten()
        {
            writes.push(Change::Put {
                key,
                entry: Arc::clone(&entry),
                now_ms,
            });
        }
    }
}

impl Drop for CacheStore {
    /// Stops the store's runtime. From outside it, waits (on a helper thread, since dropping a
    /// runtime in async context panics) until its tasks are gone, so the disk file is closed
    /// when `drop` returns and can be reopened at once.
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if std::thread::current().name() == Some(RUNTIME_THREAD) {
            runtime.shutdown_background();
            return;
        }
        let (give, take) = std::sync::mpsc::channel::<Runtime>();
        let closer = std::thread::Builder::new()
            .name("sluice-cache-close".into())
            .spawn(move || {
                if let Ok(runtime) = take.recv() {
                    runtime.shutdown_timeout(SHUTDOWN_GRACE);
                }
            });
        match closer {
            Ok(closer) => {
                if let Err(std::sync::mpsc::SendError(runtime)) = give.send(runtime) {
                    runtime.shutdown_background();
                }
                let _ = closer.join();
            }
            Err(_) => runtime.shutdown_background(),
        }
    }
}
