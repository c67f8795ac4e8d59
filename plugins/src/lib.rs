//! Policy engines for sluice. Nothing here knows about Pingora: engines take plain inputs
//! (bytes, `http` types, `Instant`s) and return decisions, so each is unit-tested without
//! sockets and a Pingora upgrade touches only the gateway's adapter.
#![forbid(unsafe_code)]

pub mod ab;
pub mod balance;
pub mod body;
pub mod cache;
pub mod endpoint_stats;
pub mod glob;
pub mod health;
pub mod limits;
pub mod live_stats;
pub mod metrics;
pub mod openai_error;
mod outage;
pub mod outlier;
pub mod own_thread;
pub mod redis_link;
pub mod request_target;
pub mod retry_budget;
pub mod router;
pub mod sse;
#[cfg(test)]
mod test_redis;
pub mod trace_context;
