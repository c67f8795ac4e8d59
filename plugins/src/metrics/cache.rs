//! The cache's families: lookups by result and tier, tier contents, and what hits saved.

use super::Metrics;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// The cache's families: lookups by result and tier, tier contents, and what hits saved.
#[derive(Clone)]
pub(super) struct CacheFamilies {
    requests: IntCounterVec,
    entries: IntGaugeVec,
    bytes: IntGaugeVec,
    max_bytes: IntGaugeVec,
    evictions: IntCounterVec,
    errors: IntCounterVec,
    disk_resets: IntCounter,
    saved_seconds: prometheus::CounterVec,
    saved_tokens: IntCounterVec,
}

impl CacheFamilies {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        let tier = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["tier"]);
        let tier_counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["tier"]);
        Ok(CacheFamilies {
            requests: IntCounterVec::new(
                Opts::new(
                    "sluice_cache_requests_total",
                    "Cache lookups by route, variant, result (hit, miss, bypass, coalesced) and the tier that answered",
                ),
                &["route", "variant", "result", "tier"],
            )?,
            entries: tier("sluice_cache_entries", "Entries held, by tier")?,
            bytes: tier("sluice_cache_bytes", "Bytes held, by tier")?,
            max_bytes: tier(
                "sluice_cache_max_bytes",
                "A tier's configured size limit (max_bytes), for the tiers that have one",
            )?,
            evictions: tier_counter(
                "sluice_cache_evictions_total",
                "Entries evicted for space or expiry, by tier",
            )?,
            errors: tier_counter(
                "sluice_cache_tier_errors_total",
                "Failed tier operations (the request went on without that tier)",
            )?,
            disk_resets: IntCounter::new(
                "sluice_cache_disk_resets_total",
                "Damaged disk cache files set aside and replaced by empty ones",
            )?,
            saved_seconds: prometheus::CounterVec::new(
                Opts::new(
                    "sluice_cache_saved_seconds_total",
                    "Upstream time not spent thanks to cache hits and coalesced requests",
                ),
                &["route"],
            )?,
            saved_tokens: IntCounterVec::new(
                Opts::new(
                    "sluice_cache_saved_tokens_total",
                    "Upstream tokens not spent thanks to cache hits and coalesced requests",
                ),
                &["route"],
            )?,
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.entries.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.max_bytes.clone()),
            Box::new(self.evictions.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.disk_resets.clone()),
            Box::new(self.saved_seconds.clone()),
            Box::new(self.saved_tokens.clone()),
        ]
    }
}

/// A cache tier's handles: `memory`, `redis` or `disk`.
#[derive(Clone)]
pub struct TierMetrics {
    pub entries: IntGauge,
    pub bytes: IntGauge,
    pub evictions: IntCounter,
    pub errors: IntCounter,
}

/// Where a cache answer came from, for `sluice_cache_requests_total{result,tier}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit(CacheTier),
    Miss,
    Bypass,
    Coalesced,
}

/// The cache tiers, fastest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheTier {
    Memory,
    Redis,
    Disk,
}

impl CacheTier {
    pub const ALL: [CacheTier; 3] = [CacheTier::Memory, CacheTier::Redis, CacheTier::Disk];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CacheTier::Memory => "memory",
            CacheTier::Redis => "redis",
            CacheTier::Disk => "disk",
        }
    }
}

impl CacheResult {
    /// The `x-sluice-cache` header value and the `result` label.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CacheResult::Hit(_) => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
            CacheResult::Coalesced => "coalesced",
        }
    }
}

/// A route's cache handles, resolved when the policy is compiled.
#[derive(Clone)]
pub struct RouteCacheMetrics {
    hits: [IntCounter; 3],
    miss: IntCounter,
    bypass: IntCounter,
    coalesced: IntCounter,
    pub saved_seconds: prometheus::Counter,
    pub saved_tokens: IntCounter,
}

impl RouteCacheMetrics {
    /// Counts one lookup's result.
    pub fn record(&self, result: CacheResult) {
        match result {
            CacheResult::Hit(tier) => match tier {
                CacheTier::Memory => &self.hits[0],
                CacheTier::Redis => &self.hits[1],
                CacheTier::Disk => &self.hits[2],
            }
            .inc(),
            CacheResult::Miss => self.miss.inc(),
            CacheResult::Bypass => self.bypass.inc(),
            CacheResult::Coalesced => self.coalesced.inc(),
        }
    }
}

impl Metrics {
    /// Handles for one cache tier.
    #[must_use]
    pub fn cache_tier(&self, tier: CacheTier) -> TierMetrics {
        let name = [tier.name()];
        let c = &self.cache;
        TierMetrics {
            entries: c.entries.with_label_values(&name),
            bytes: c.bytes.with_label_values(&name),
            evictions: c.evictions.with_label_values(&name),
            errors: c.errors.with_label_values(&name),
        }
    }

    /// The configured size limit of `tier`.
    #[must_use]
    pub fn cache_max_bytes(&self, tier: CacheTier) -> IntGauge {
        self.cache.max_bytes.with_label_values(&[tier.name()])
    }

    /// Counts damaged disk cache files replaced by empty ones.
    #[must_use]
    pub fn cache_disk_resets(&self) -> IntCounter {
        self.cache.disk_resets.clone()
    }

    /// The cache handles of a route's variant (`""` on a route without a split).
    #[must_use]
    pub fn route_cache(&self, route: &str, variant: &str) -> RouteCacheMetrics {
        let c = &self.cache;
        let req = |result: &str, tier: &str| {
            c.requests
                .with_label_values(&[route, variant, result, tier])
        };
        RouteCacheMetrics {
            hits: CacheTier::ALL.map(|t| req("hit", t.name())),
            miss: req("miss", ""),
            bypass: req("bypass", ""),
            coalesced: req("coalesced", ""),
            saved_seconds: c.saved_seconds.with_label_values(&[route]),
            saved_tokens: c.saved_tokens.with_label_values(&[route]),
        }
    }
}
