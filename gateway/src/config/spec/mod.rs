//! `Spec`: serde structs mirroring the user's YAML one to one. Unknown fields are errors, so a
//! typo is reported with its line instead of being silently ignored.

mod keys;
mod limits;
mod resilience;
mod server_limits;
mod split;
mod telemetry;

pub use keys::{AuthSpec, BudgetSpec, KeySpec};
pub use limits::LimitSpec;
pub use resilience::{HealthSpec, OutlierSpec};
pub use server_limits::ServerLimitsSpec;
pub use split::{PriceSpec, SplitSpec, VariantSpec};
pub use telemetry::{OtlpSpec, TelemetrySpec};

use super::cache::{CacheSpec, RedisSpec, RouteCacheSpec};
use super::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub server: ServerSpec,
    pub admin: Option<AdminSpec>,
    /// Shared Redis (L2 cache; later distributed limits).
    pub redis: Option<RedisSpec>,
    /// Cache tiers; routes opt in with their own `cache:`.
    pub cache: Option<CacheSpec>,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    /// Gateway-issued client keys (stored as hashes); a route's `auth:` says whether it needs one.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Per-request usage records.
    pub telemetry: Option<TelemetrySpec>,
    /// US dollars per million prompt (`input`) and completion (`output`) tokens, by model.
    #[serde(default)]
    pub pricing: BTreeMap<String, PriceSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    #[serde(default = "default_grace")]
    pub grace_period: HumanDuration,
    /// What one client connection may cost: head size and time, keep-alive, buffers.
    #[serde(default)]
    pub limits: ServerLimitsSpec,
    /// Where a `run --upgrade` process receives the running one's listening sockets.
    #[serde(default)]
    pub upgrade_socket: Option<String>,
}

impl Default for ServerSpec {
    fn default() -> Self {
        ServerSpec {
            listen: default_listen(),
            threads: default_threads(),
            max_body_bytes: default_max_body(),
            grace_period: default_grace(),
            limits: ServerLimitsSpec::default(),
            upgrade_socket: None,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:8080".into()]
}
fn default_threads() -> usize {
    1
}
fn default_max_body() -> ByteSize {
    ByteSize(10 * 1024 * 1024)
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    pub listen: String,
    /// Name of the environment variable holding the admin bearer token.
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub balance: BalanceSpec,
    #[serde(default)]
    pub pool: PoolSpec,
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    #[serde(default)]
    pub retry: RetrySpec,
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub tls: TlsSpec,
    /// Requests in flight at once; beyond it requests wait in `queue`.
    pub max_concurrency: Option<usize>,
    /// Where requests wait for a slot when `max_concurrency` is reached.
    pub queue: Option<QueueSpec>,
    /// Active health checks of every endpoint; absent means none.
    pub health: Option<HealthSpec>,
    /// Passive outlier ejection; absent means none.
    pub outlier: Option<OutlierSpec>,
    /// How long a resolved host name is used before it is looked up again.
    #[serde(default = "default_dns_ttl")]
    pub dns_ttl: HumanDuration,
}

fn default_dns_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// Requests that may wait; beyond it they get 503 at once.
    #[serde(default)]
    pub max: usize,
    /// How long one may wait before a 503.
    #[serde(default = "default_queue_timeout")]
    pub timeout: HumanDuration,
}

fn default_queue_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub url: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalanceSpec {
    #[default]
    RoundRobin,
    Weighted,
    LeastOutstanding,
    PeakEwma,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    #[serde(default = "default_max_idle")]
    pub max_idle: usize,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    #[serde(default)]
    pub http2: bool,
    /// Requests multiplexed at once on one h2 connection.
    #[serde(default = "default_max_h2_streams")]
    pub max_h2_streams: usize,
}

fn default_max_h2_streams() -> usize {
    128
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            max_idle: default_max_idle(),
            idle_timeout: default_idle_timeout(),
            http2: false,
            max_h2_streams: default_max_h2_streams(),
        }
    }
}

fn default_max_idle() -> usize {
    128
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    #[serde(default = "default_connect")]
    pub connect: HumanDuration,
    #[serde(default = "default_first_byte")]
    pub first_byte: HumanDuration,
    #[serde(default = "default_idle")]
    pub idle: HumanDuration,
}

impl Default for TimeoutsSpec {
    fn default() -> Self {
        TimeoutsSpec {
            connect: default_connect(),
            first_byte: default_first_byte(),
            idle: default_idle(),
        }
    }
}

fn default_connect() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_first_byte() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Retries after the first try; `on` lists `connect`, `timeout` and status codes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub on: Vec<RetryOnSpec>,
    /// Wait between tries: `base` doubling up to `max`, with jitter. Absent: retry at once.
    pub backoff: Option<BackoffSpec>,
    /// Retries at most `ratio` of the requests over `window`, plus `min_per_second`.
    #[serde(default)]
    pub budget: RetryBudgetSpec,
    /// How much of a streamed request body is kept so that it can be sent again.
    #[serde(default = "default_retry_buffer")]
    pub buffer: ByteSize,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 0,
            on: Vec::new(),
            backoff: None,
            budget: RetryBudgetSpec::default(),
            buffer: default_retry_buffer(),
        }
    }
}

fn default_retry_buffer() -> ByteSize {
    ByteSize(64 * 1024)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    pub base: HumanDuration,
    pub max: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    #[serde(default = "default_budget_floor")]
    pub min_per_second: u32,
    #[serde(default = "default_budget_window")]
    pub window: HumanDuration,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        RetryBudgetSpec {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_floor(),
            window: default_budget_window(),
        }
    }
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_floor() -> u32 {
    1
}
fn default_budget_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RetryOnSpec {
    Status(u16),
    Event(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<String>,
    /// Server name to send and verify; defaults to the endpoint's host.
    pub sni: Option<String>,
    #[serde(default = "default_true")]
    pub verify: bool,
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            ca_file: None,
            sni: None,
            verify: true,
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: MatchSpec,
    pub upstream: String,
    /// Response caching for this route; absent means no caching.
    pub cache: Option<RouteCacheSpec>,
    /// Request rates and token budgets; every one must admit a request.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// Upstreams tried in order when `upstream` has no available endpoint or its tries failed.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// A/B variants of this route.
    pub split: Option<SplitSpec>,
    /// Whether a caller needs one of the gateway's `keys:`.
    #[serde(default)]
    pub auth: AuthSpec,
    /// The usage log also records the request and response bodies (each up to 64 KiB).
    #[serde(default)]
    pub log_bodies: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Glob on the JSON body's `model` field; makes the route read the body.
    pub model: Option<String>,
}

impl Default for MatchSpec {
    fn default() -> Self {
        MatchSpec {
            path_prefix: default_prefix(),
            methods: vec![],
            headers: BTreeMap::new(),
            model: None,
        }
    }
}

fn default_prefix() -> String {
    "/".into()
}
