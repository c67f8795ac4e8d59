//! The store against real tiers: `redis-server` processes each test starts on its own port,
//! and redb files in temporary directories.

mod local;
mod with_redis;

use super::*;
use crate::cache::BodyForm;
use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

// === helpers ===

/// A `redis-server` on a free port, killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        RedisServer::start_on(port)
    }

    fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need `redis-server` on PATH (apt-get install redis-server): {e}"
                )
            });
        let server = RedisServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} never answered"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

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

/// Polls `check` every 20 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_redis(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("test connection")
}
