//! Test helpers for suites that need a real Redis: a `redis-server` process per test on its
//! own port (`sluice_testkit`'s; never mocked; missing `redis-server` fails the test with how to
//! install it), a connection of the test's own, and polling.

pub(crate) use sluice_testkit::RedisServer;
use std::time::{Duration, Instant};

/// A plain connection of the test's own, to look at what the code under test wrote.
pub(crate) async fn raw_redis(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("test connection")
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
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
