//! What sluice's tests and benchmarks share: loopback ports that do not race, child processes
//! killed on drop, and a real `redis-server` per test. One copy for the plugins' unit tests,
//! the end-to-end harness and the load benchmark; it depends on no workspace crate, so each of
//! them can use it without a cycle.

mod ports;
mod process;
mod redis;
mod redis_cluster;

pub use ports::{free_port, listener_is_child};
pub use process::{Proc, StartFailure, READY_WITHIN, START_ATTEMPTS};
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;
