//! Helpers for the Redis Cluster end-to-end tests (`redis_cluster.rs`): the `redis:` block for
//! a cluster and the limit counters per gateway. The steady load is `sluice_e2e::load`.

use sluice_e2e::{metric_sum, Gateway};
use sluice_testkit::RedisCluster;

pub const FALLBACKS: &str = "sluice_ratelimit_fallbacks_total";
pub const REDIS_ERRORS: &str = "sluice_ratelimit_redis_errors_total";

/// The top-level `redis:` block: every node of `cluster` as a seed.
pub fn redis_top(cluster: &RedisCluster) -> String {
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "redis:\n  cluster: [{}]\n  timeout: 200ms\n",
        seeds.join(", ")
    )
}

/// `metric` summed over the gateways' `/metrics`, one value per gateway.
pub async fn counts(gws: &[&Gateway], metric: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for gw in gws {
        out.push(metric_sum(&gw.metrics().await, metric, &[]));
    }
    out
}
