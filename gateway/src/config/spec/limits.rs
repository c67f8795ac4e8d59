//! The YAML of a limit, on a route's `limits:` or a key's.

use serde::{Deserialize, Serialize};

/// One limit: a request rate (`requests_per_*`) or a token budget (`tokens_per_*`) per key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub name: String,
    /// `api_key`, `header:NAME`, `ip`, `body:user` or `route`.
    #[serde(default = "default_limit_key")]
    pub key: String,
    pub requests_per_second: Option<u64>,
    pub requests_per_minute: Option<u64>,
    pub requests_per_hour: Option<u64>,
    /// Requests admitted at once; defaults to the count per period.
    pub burst: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_hour: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// Completion tokens reserved when a request sets no `max_tokens`.
    pub default_max_tokens: Option<u64>,
    /// Whether answers from the cache count against the token budget.
    #[serde(default)]
    pub charge_cache_hits: bool,
    /// Keep the bucket in Redis so every gateway shares it.
    #[serde(default)]
    pub shared: bool,
    /// Gateways sharing the limit: each enforces limit / instances while Redis is unreachable.
    #[serde(default = "default_instances")]
    pub instances: u64,
}

fn default_limit_key() -> String {
    "api_key".into()
}
fn default_instances() -> u64 {
    1
}
