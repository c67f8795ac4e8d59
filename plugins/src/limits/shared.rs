//! Buckets shared by every gateway through Redis, so N instances admit one budget. Each bucket
//! is one key holding its GCRA theoretical arrival time (µs of Redis's clock); a reservation
//! and a settlement are each one Lua script (EVALSHA, one round trip) reading the server's
//! `TIME`, so all gateways share one clock. A failure returns `Err` within the command timeout
//! and puts the link in outage mode, where calls fail at once until Redis answers again: the
//! caller then decides with a local bucket.
//!
//! Keys are `{prefix}:limit:{<route>:<limit>:<16 hex key>}`: the whole bucket id is the hash
//! tag, so a bucket is one key in one Redis Cluster slot and buckets spread over all slots.
//! Route and limit names are percent-escaped (`%`, `:`, `{`, `}`), so a name can neither end
//! the hash tag nor pass for another route/limit pair, and keys stay readable in `redis-cli`.

use super::{Decision, LimitState, Rate};
use crate::redis_link::{RedisConfig, RedisLink};
use prometheus::IntCounter;
use redis::Script;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};

/// Name of the runtime thread the Redis connection lives on.
const RUNTIME_THREAD: &str = "sluice-limits";

/// Redis-held GCRA buckets; share it as `Arc<SharedBuckets>` and call it from any runtime.
pub struct SharedBuckets {
    link: Arc<RedisLink>,
    reserve: Arc<Script>,
    settle: Arc<Script>,
    handle: Handle,
    /// Owns the thread `handle` runs on; `None` only once dropped.
    runtime: Option<Runtime>,
}

impl SharedBuckets {
    /// Starts a one-thread runtime and the link (component "limits") on it, waiting up to one
    /// timeout for Redis's first answer. Only a malformed URL is an error: an unreachable
    /// Redis starts as an outage. `errors` counts failed Redis operations.
    pub fn connect(config: &RedisConfig, errors: IntCounter) -> Result<Arc<SharedBuckets>, String> {
        let (runtime, link) = crate::own_thread::start(RUNTIME_THREAD, |runtime| {
            RedisLink::start(config, "limits", errors, runtime.handle())
        })?;
        Ok(Arc::new(SharedBuckets {
            link,
            reserve: Arc::new(script(include_str!("shared/reserve.lua"))),
            settle: Arc::new(script(include_str!("shared/settle.lua"))),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        }))
    }

    /// Whether calls go to Redis now; while false they fail at once.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// The Redis key of one client key's bucket for one limit of one route.
    #[must_use]
    pub fn bucket(&self, route: &str, limit: &str, key: u64) -> String {
        format!(
            "{}:limit:{{{}:{}:{key:016x}}}",
            self.link.prefix(),
            escape(route),
            escape(limit)
        )
    }

    /// Takes `n` units (clamped to the burst) from `bucket` if they fit, in one round trip;
    /// returns the decision and the clamped `n`. A limited reservation takes nothing.
    pub async fn reserve(
        &self,
        bucket: &str,
        n: u64,
        rate: Rate,
    ) -> Result<(Decision, u64), String> {
        let link = Arc::clone(&self.link);
        let script = Arc::clone(&self.reserve);
        let (bucket, interval) = (bucket.to_owned(), micros(rate.interval));
        let reply = self.on_runtime(async move {
            let mut call = script.key(bucket);
            call.arg(interval).arg(rate.burst).arg(n);
            link.invoke::<(u8, u64, u64, u64, u64)>("reserve", &call)
                .await
        });
        let (allowed, n, remaining, reset, retry_after) = reply.await?;
        let state = LimitState {
            limit: rate.burst,
            remaining,
            reset: Duration::from_micros(reset),
        };
        let decision = if allowed == 1 {
            Decision::Allowed(state)
        } else {
            Decision::Limited {
                state,
                retry_after: Duration::from_micros(retry_after),
            }
        };
        Ok((decision, n))
    }

    /// Moves `bucket` by `delta` units once the real cost is known: a negative `delta` gives
    /// back what was reserved but not used, a positive one charges what was used beyond it
    /// (the bucket may go into debt). Zero costs no round trip.
    pub async fn settle(&self, bucket: &str, delta: i64, rate: Rate) -> Result<(), String> {
        if delta == 0 {
            return Ok(());
        }
        let link = Arc::clone(&self.link);
        let script = Arc::clone(&self.settle);
        let (bucket, interval) = (bucket.to_owned(), micros(rate.interval));
        self.on_runtime(async move {
            let mut call = script.key(bucket);
            call.arg(interval).arg(delta);
            link.invoke::<()>("settle", &call).await
        })
        .await
    }

    /// Runs `work` on our runtime and waits for it from the caller's: the connection manager
    /// spawns its tasks on the runtime that uses it, and they must outlive any caller's.
    async fn on_runtime<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, String> {
        self.handle
            .spawn(work)
            .await
            .map_err(|e| format!("limits: redis call did not finish: {e}"))?
    }
}

impl Drop for SharedBuckets {
    /// Stops the runtime without waiting: nothing on it needs finishing, and dropping a
    /// runtime in async context (or on its own thread) would panic.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One of the two scripts, behind the helpers both use.
fn script(body: &str) -> Script {
    Script::new(&format!("{}{body}", include_str!("shared/prelude.lua")))
}

/// An interval as decimal µs, exact to the ns (Lua reads it as a double, fraction kept).
fn micros(interval: Duration) -> String {
    let nanos = interval.as_nanos();
    format!("{}.{:03}", nanos / 1000, nanos % 1000)
}

/// Percent-escapes the characters that would end the hash tag or blur the id's fields.
fn escape(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            ':' => escaped.push_str("%3A"),
            '{' => escaped.push_str("%7B"),
            '}' => escaped.push_str("%7D"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests;
