//! L2: a Redis shared by every sluice instance, so one instance's answer is another's hit.
//! redis-rs's `ConnectionManager` reconnects by itself; this tier adds what a cache on the
//! request path needs around it: a timeout on every command, and an outage mode in which
//! lookups and writes skip Redis at once while a background probe (backoff 250 ms doubling to
//! 5 s) waits for it to answer again, so a dead Redis costs requests nothing.
//!
//! Keys are `{prefix}:cache:{route}:{<32 hex>}`: the hash tag on the entry key keeps any
//! future multi-key operation on one entry in one Redis Cluster slot, while a route's entries
//! spread over all slots; purge by route is a SCAN on the route's part of the name.

use super::outage::Outage;
use super::queue::{Change, Queue};
use super::{Lookup, RedisConfig};
use crate::cache::{CacheKey, Entry};
use crate::metrics::TierMetrics;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::FromRedisValue;
use prometheus::IntCounter;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::Notify;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Keys asked for per SCAN step when purging.
const SCAN_COUNT: usize = 500;
/// A pipeline of n writes may take up to min(n, this) command timeouts.
const PIPELINE_TIMEOUTS: u32 = 10;

pub(super) struct RedisTier {
    client: ::redis::Client,
    manager_config: ConnectionManagerConfig,
    /// Replaced by the probe after each failed attempt, so every attempt starts clean.
    connection: RwLock<ConnectionManager>,
    outage: Outage,
    /// Wakes the probe when an operation fails.
    wake: Notify,
    prefix: String,
    timeout: Duration,
    /// `host:port` for logs (the URL may hold a password).
    address: String,
}

impl RedisTier {
    /// Creates the tier and its probe on the store's runtime, then waits up to one timeout for
    /// the first answer. Only a malformed URL is an error; an unreachable Redis is an outage.
    pub(super) fn start(
        config: &RedisConfig,
        metrics: TierMetrics,
        handle: &Handle,
    ) -> Result<Arc<RedisTier>, String> {
        let client = ::redis::Client::open(config.url.as_str())
            .map_err(|e| format!("cache: invalid redis url: {e}"))?;
        let address = client.get_connection_info().addr().to_string();
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        // The manager spawns its connection tasks on the runtime it is created in: ours.
        let connection = {
            let _entered = handle.enter();
            lazy_manager(&client, &manager_config)?
        };
        let tier = Arc::new(RedisTier {
            client,
            manager_config,
            connection: RwLock::new(connection),
            outage: Outage::new("redis", metrics.errors, true),
            wake: Notify::new(),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            address,
        });
        let (answered, first_answer) = std::sync::mpsc::channel();
        handle.spawn(Arc::clone(&tier).keep_alive(answered));
        let _ = first_answer.recv_timeout(config.timeout + Duration::from_millis(50));
        Ok(tier)
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
        !self.outage.is_failing()
    }

    /// One GET. A value that does not decode is `Discard`; one expired at `now_ms` a miss.
    pub(super) async fn get(&self, key: CacheKey, route: &str, now_ms: u64) -> Lookup {
        let mut get = ::redis::cmd("GET");
        get.arg(self.key(route, key));
        match self.query::<Option<Vec<u8>>>(&get).await {
            Ok(None) => Lookup::Miss,
            Ok(Some(bytes)) => match Entry::decode(&bytes) {
                Some(entry) if entry.is_fresh(now_ms) => Lookup::Hit(entry),
                Some(_) => Lookup::Miss,
                None => Lookup::Discard,
            },
            Err(e) => {
                self.fail(1, "GET", &e);
                Lookup::Miss
            }
        }
    }

    /// Writes a batch in one pipeline (`SET .. PX ttl`, `UNLINK`); skipped while Redis is down.
    pub(super) async fn apply(&self, changes: Vec<Change>) {
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
        if count == 0 {
            return;
        }
        let mut connection = self.connection();
        let limit = self.timeout * count.min(PIPELINE_TIMEOUTS);
        let written = self
            .timed(limit, pipe.query_async::<()>(&mut connection))
            .await;
        if let Err(e) = written {
            self.fail(u64::from(count), "write", &e);
        }
    }

    /// SCANs for all entries or one route's and UNLINKs them; returns how many were removed
    /// (0 while Redis is down).
    pub(super) async fn purge(&self, route: Option<&str>) -> u64 {
        if !self.is_up() {
            return 0;
        }
        let prefix = escape_glob(&self.prefix);
        let pattern = match route {
            Some(route) => format!(
                "{prefix}:cache:{}:{{{}}}",
                escape_glob(route),
                "?".repeat(32)
            ),
            None => format!("{prefix}:cache:*"),
        };
        let mut removed = 0;
        let mut cursor: u64 = 0;
        loop {
            let mut scan = ::redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys) = match self.query::<(u64, Vec<Vec<u8>>)>(&scan).await {
                Ok(step) => step,
                Err(e) => {
                    self.fail(1, "SCAN", &e);
                    return removed;
                }
            };
            if !keys.is_empty() {
                let mut unlink = ::redis::cmd("UNLINK");
                unlink.arg(&keys);
                match self.query::<u64>(&unlink).await {
                    Ok(n) => removed += n,
                    Err(e) => {
                        self.fail(1, "UNLINK", &e);
                        return removed;
                    }
                }
            }
            if next == 0 {
                return removed;
            }
            cursor = next;
        }
    }

    /// Probes Redis while it is down: at once at start, then after each failure with backoff.
    async fn keep_alive(self: Arc<Self>, answered: std::sync::mpsc::Sender<()>) {
        let mut first_answer = Some(answered);
        let mut ever_up = false;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut ping = ::redis::cmd("PING");
            ping.arg("sluice");
            match self.query::<String>(&ping).await {
                Ok(_) => {
                    if ever_up {
                        self.outage.recovered();
                    } else {
                        self.outage.clear();
                        tracing::info!(address = %self.address, "cache: redis connected");
                    }
                    ever_up = true;
                    first_answer.take().map(|a| a.send(()));
                    while !self.outage.is_failing() {
                        self.wake.notified().await;
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    if first_answer.is_some() {
                        tracing::warn!(
                            address = %self.address,
                            "cache: redis does not answer ({e}); tier skipped until it does"
                        );
                    }
                    self.outage.failed(1, "probe", &e);
                    first_answer.take().map(|a| a.send(()));
                    self.renew_connection();
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn fail(&self, count: u64, what: &str, error: &str) {
        if self.outage.failed(count, what, &error) {
            self.wake.notify_one();
        }
    }

    fn key(&self, route: &str, key: CacheKey) -> String {
        format!("{}:cache:{route}:{{{}}}", self.prefix, key.hex())
    }

    fn connection(&self) -> ConnectionManager {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps in a fresh lazy manager; called on the store's runtime (the probe's).
    fn renew_connection(&self) {
        if let Ok(fresh) = lazy_manager(&self.client, &self.manager_config) {
            *self
                .connection
                .write()
                .unwrap_or_else(PoisonError::into_inner) = fresh;
        }
    }

    async fn query<T: FromRedisValue>(&self, command: &::redis::Cmd) -> Result<T, String> {
        let mut connection = self.connection();
        self.timed(self.timeout, command.query_async::<T>(&mut connection))
            .await
    }

    async fn timed<T>(
        &self,
        limit: Duration,
        operation: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(limit, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }
}

fn lazy_manager(
    client: &::redis::Client,
    config: &ConnectionManagerConfig,
) -> Result<ConnectionManager, String> {
    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
        .map_err(|e| format!("cache: redis connection setup: {e}"))
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
