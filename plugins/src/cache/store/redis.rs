//! L2: a Redis shared by every sluice instance, so one instance's answer is another's hit.
//! The connection, its timeouts and its outage mode (lookups and writes skip Redis at once
//! while a probe waits for it to answer again) are the [`RedisLink`]'s; this tier holds the
//! cache's operations on top of it.
//!
//! Keys are `{prefix}:cache:{route}:{<32 hex>}`: the hash tag on the entry key keeps any
//! future multi-key operation on one entry in one Redis Cluster slot, while a route's entries
//! spread over all slots; purge by route is a SCAN on the route's part of the name, on every
//! master of a cluster.

use super::queue::{Change, Queue};
use super::types::Lookup;
use crate::cache::{CacheKey, Entry};
use crate::redis_link::{RedisConfig, RedisLink, RedisNode};
use prometheus::IntCounter;
use std::sync::Arc;
use tokio::runtime::Handle;

/// Keys asked for per SCAN step when purging.
const SCAN_COUNT: usize = 500;

/// The cache's operations on a [`RedisLink`] (timeouts, outage mode and the probe are its).
pub(super) struct RedisTier {
    link: Arc<RedisLink>,
}

impl RedisTier {
    /// Starts the link (component "cache") on the store's runtime; see [`RedisLink::start`].
    pub(super) fn start(
        config: &RedisConfig,
        errors: IntCounter,
        handle: &Handle,
    ) -> Result<Arc<RedisTier>, String> {
        let link = RedisLink::start(config, "cache", errors, handle)?;
        Ok(Arc::new(RedisTier { link }))
    }

    /// Starts this tier's background writer on `handle`.
    pub(super) fn writer(
        self: &Arc<Self>,
        handle: &Handle,
        capacity: usize,
        errors: IntCounter,
    ) -> Queue {
        let (apply_tier, purge_tier) = (Arc::clone(self), Arc::clone(self));
        Queue::spawn(
            handle,
            capacity,
            errors,
            move |changes| {
                let tier = Arc::clone(&apply_tier);
                async move { tier.apply(changes).await }
            },
            move |route| {
                let tier = Arc::clone(&purge_tier);
                async move { tier.purge(route.as_deref()).await }
            },
        )
    }

    /// Whether lookups and writes use Redis now.
    #[must_use]
    pub(super) fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// One GET. A value that does not decode is `Discard`; one expired at `now_ms` a miss.
    pub(super) async fn get(&self, key: CacheKey, route: &str, now_ms: u64) -> Lookup {
        let mut get = ::redis::cmd("GET");
        get.arg(self.key(route, key));
        match self.link.query::<Option<Vec<u8>>>(&get).await {
            Ok(Some(bytes)) => match Entry::decode(&bytes) {
                Some(entry) if entry.is_fresh(now_ms) => Lookup::Hit(entry),
                Some(_) => Lookup::Miss,
                None => Lookup::Discard,
            },
            Ok(None) | Err(_) => Lookup::Miss,
        }
    }

    /// Writes a batch in one pipeline (`SET .. PX ttl`, `UNLINK`); skipped while Redis is down.
    pub(super) async fn apply(&self, changes: Vec<Change>) {
        // The link would refuse the pipeline too; this spares encoding the batch.
        if !self.is_up() {
            return;
        }
        let mut pipe = ::redis::pipe();
        let mut count: u32 = 0;
        for change in &changes {
            match change {
                Change::Put { key, entry, now_ms } => {
                    let ttl_ms = entry.ttl_ms(*now_ms);
                    if ttl_ms == 0 {
                        continue;
                    }
                    pipe.cmd("SET")
                        .arg(self.key(&entry.route, *key))
                        .arg(entry.encode())
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore();
                }
                Change::Remove { key, route } => {
                    pipe.cmd("UNLINK").arg(self.key(route, *key)).ignore();
                }
            }
            count += 1;
        }
        if count > 0 {
            // A failure is counted and logged by the link; the batch is dropped.
            let _ = self.link.pipeline::<()>("write", &pipe, count).await;
        }
    }

    /// SCANs every node that holds data (each master of a cluster) for all entries or one
    /// route's and UNLINKs them; returns how many were removed (0 while Redis is down).
    pub(super) async fn purge(&self, route: Option<&str>) -> u64 {
        let prefix = escape_glob(self.link.prefix());
        let pattern = match route {
            Some(route) => format!(
                "{prefix}:cache:{}:{{{}}}",
                escape_glob(route),
                "?".repeat(32)
            ),
            None => format!("{prefix}:cache:*"),
        };
        let Ok(nodes) = self.link.data_nodes().await else {
            return 0;
        };
        let mut removed = 0;
        for node in &nodes {
            match self.purge_node(node, &pattern).await {
                Ok(n) => removed += n,
                Err(n) => return removed + n,
            }
        }
        removed
    }

    /// Purges `pattern` on one node; `Err` carries what was removed before Redis failed.
    async fn purge_node(&self, node: &RedisNode, pattern: &str) -> Result<u64, u64> {
        let mut removed = 0;
        let mut cursor: u64 = 0;
        loop {
            let mut scan = ::redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let Ok((next, keys)) = self.link.query_on::<(u64, Vec<Vec<u8>>)>(node, &scan).await
            else {
                return Err(removed);
            };
            if !keys.is_empty() {
                // One UNLINK per key: a cluster node's keys span many slots.
                let mut unlink = ::redis::pipe();
                for key in &keys {
                    unlink.cmd("UNLINK").arg(key);
                }
                let count = u32::try_from(keys.len()).unwrap_or(u32::MAX);
                match self
                    .link
                    .pipeline::<Vec<u64>>("purge", &unlink, count)
                    .await
                {
                    Ok(n) => removed += n.iter().sum::<u64>(),
                    Err(_) => return Err(removed),
                }
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    fn key(&self, route: &str, key: CacheKey) -> String {
        format!("{}:cache:{route}:{{{}}}", self.link.prefix(), key.hex())
    }
}

/// Escapes Redis glob metacharacters so a name matches only itself in SCAN MATCH.
fn escape_glob(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
