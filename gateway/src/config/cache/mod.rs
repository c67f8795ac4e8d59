//! Cache settings as the engines take them: the tiers (memory, Redis, disk) shared by every
//! caching route, and each route's policy (TTLs, key, when to cache). Plain data compiled and
//! checked from the spec, so the gateway does not depend on the engines' types.

use super::errors::Errors;
use super::locate::{field_path, Seg};
use super::needs::Needs;
use super::secret::redact_url;
use super::units::{header_name, ByteSize, HumanDuration};
use http::header::HeaderName;
use serde::{Deserialize, Serialize};
use sluice_plugins::cache::key::{CacheCondition, KeyPolicy};
pub use sluice_plugins::redis_link::RedisNodes;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The tiers, present in a policy when any route caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTiers {
    /// L1, in process.
    pub memory_max_bytes: u64,
    /// L2, when `cache.redis: true`.
    pub redis: Option<RedisSettings>,
    /// L3, when `cache.disk` is set.
    pub disk: Option<DiskSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub nodes: RedisNodes,
    /// Per command.
    pub timeout: Duration,
    /// Prefix of every key.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSettings {
    /// Resolved against the config file's directory.
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// One route's cache policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    pub ttl: Duration,
    /// Caps `x-sluice-cache-ttl` and adaptive extension; at least `ttl`.
    pub max_ttl: Duration,
    /// Hits extend the entry's TTL up to `max_ttl`.
    pub adaptive: bool,
    /// Clients' `cache-control` and `x-sluice-cache-ttl` are honoured.
    pub client_controls: bool,
    /// The body fields in the key and how they are normalized.
    pub key: KeyPolicy,
    pub scope: CacheScope,
    /// When a request is cached at all (temperature ceiling, seed).
    pub when: CacheCondition,
}

impl RouteCache {
    /// The key is made from the body's fields.
    #[must_use]
    pub fn needs(&self) -> Needs {
        Needs::BODY
    }
}

/// Whose entries a request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheScope {
    /// Entries are per API key.
    ApiKey,
    /// Entries are shared by every caller.
    None,
    /// Entries are per value of this request header.
    Header(HeaderName),
}

/// Checks the top-level `redis:`.
pub(super) fn compile_redis(errors: &mut Errors, spec: &RedisSpec) -> Option<RedisSettings> {
    let before = errors.count();
    let nodes = match (&spec.url, &spec.cluster) {
        (Some(url), None) => {
            if let Err(m) = check_redis_url(url) {
                errors.at(&field_path!["redis", "url"], m);
            }
            RedisNodes::Single(url.clone())
        }
        (None, Some(seeds)) => {
            if seeds.is_empty() {
                errors.at(
                    &field_path!["redis", "cluster"],
                    "needs at least one seed node URL",
                );
            }
            for (i, seed) in seeds.iter().enumerate() {
                if let Err(m) = check_redis_url(seed) {
                    errors.at(&field_path!["redis", "cluster", i], m);
                }
            }
            RedisNodes::Cluster(seeds.clone())
        }
        (Some(_), Some(_)) => {
            errors.at(
                &field_path!["redis", "cluster"],
                "give `url` (one server) or `cluster` (seed nodes), not both",
            );
            return None;
        }
        (None, None) => {
            errors.at(
                &field_path!["redis"],
                "needs `url` (one server) or `cluster` (a Redis Cluster's seed nodes)",
            );
            return None;
        }
    };
    if spec.timeout.0.is_zero() {
        errors.at(&field_path!["redis", "timeout"], "must be more than 0");
    }
    (errors.count() == before).then(|| RedisSettings {
        nodes,
        timeout: spec.timeout.0,
        prefix: spec.prefix.clone(),
    })
}

fn check_redis_url(url: &str) -> Result<(), String> {
    let shown = redact_url(url);
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err(format!("`{shown}` must start with redis:// or rediss://"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("`{shown}` has no host"));
    }
    Ok(())
}

/// Checks the top-level `cache:` (defaults when absent). `redis` is the checked top-level
/// `redis:`, if any; `cache.redis: true` needs it.
pub(super) fn compile_tiers(
    errors: &mut Errors,
    spec: Option<&CacheSpec>,
    redis: Option<&RedisSettings>,
    redis_configured: bool,
    config_dir: &Path,
) -> CacheTiers {
    let spec = spec.cloned().unwrap_or_default();
    if spec.memory.max_bytes.0 == 0 {
        errors.at(
            &field_path!["cache", "memory", "max_bytes"],
            "must be more than 0",
        );
    }
    if spec.redis && !redis_configured {
        errors.at(
            &field_path!["cache", "redis"],
            "needs the top-level `redis:` section (with its url)",
        );
    }
    CacheTiers {
        memory_max_bytes: spec.memory.max_bytes.0,
        redis: if spec.redis { redis.cloned() } else { None },
        disk: compile_disk(errors, config_dir, &spec),
    }
}

fn compile_disk(errors: &mut Errors, dir: &Path, spec: &CacheSpec) -> Option<DiskSettings> {
    let disk = spec.disk.as_ref()?;
    let before = errors.count();
    if disk.path.trim().is_empty() {
        errors.at(&field_path!["cache", "disk", "path"], "must not be empty");
    }
    if disk.max_bytes.0 == 0 {
        errors.at(
            &field_path!["cache", "disk", "max_bytes"],
            "must be more than 0",
        );
    }
    (errors.count() == before).then(|| DiskSettings {
        path: relative_to(dir, Path::new(&disk.path)),
        max_bytes: disk.max_bytes.0,
    })
}

/// `path` resolved against `dir` (unless absolute), without `.` components.
fn relative_to(dir: &Path, path: &Path) -> PathBuf {
    dir.join(path)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// Checks a route's `cache:`; `base` is the route's path.
pub(super) fn compile_route_cache(
    errors: &mut Errors,
    base: &[Seg],
    spec: &RouteCacheSpec,
) -> Option<RouteCache> {
    let before = errors.count();
    let at = |fields: &[&str]| {
        let mut p = field_path![base; "cache"];
        p.extend(fields.iter().map(|f| Seg::from(*f)));
        p
    };
    let ttl = spec.ttl.0;
    if ttl.is_zero() {
        errors.at(&at(&["ttl"]), "must be more than 0");
    }
    let max_ttl = spec.max_ttl.map_or(ttl, |d| d.0);
    if max_ttl < ttl {
        errors.at(
            &at(&["max_ttl"]),
            format!("must be at least ttl ({ttl:?}), is {max_ttl:?}"),
        );
    }
    if let Some(include) = &spec.key.include {
        if include.is_empty() {
            errors.at(
                &at(&["key", "include"]),
                "must list at least one field (leave it out for the default list)",
            );
        }
        for (i, field) in include.iter().enumerate() {
            if field.trim().is_empty() {
                errors.at(
                    &field_path![at(&["key", "include"]); i],
                    "must not be empty",
                );
            } else if include[..i].contains(field) {
                errors.at(
                    &field_path![at(&["key", "include"]); i],
                    format!("`{field}` is listed twice"),
                );
            }
        }
    }
    let scope = parse_scope(&spec.key.scope).map_err(|m| errors.at(&at(&["key", "scope"]), m));
    let (when_max_temperature, when_seed) = match &spec.when {
        None => (None, false),
        Some(when) => {
            if when.max_temperature.is_none() && !when.seed {
                errors.at(
                    &at(&["when"]),
                    "set max_temperature and/or seed: true (or leave `when` out to always cache)",
                );
            }
            if let Some(t) = when.max_temperature {
                if !(t.is_finite() && t >= 0.0) {
                    errors.at(
                        &at(&["when", "max_temperature"]),
                        "must be a number of at least 0",
                    );
                }
            }
            (when.max_temperature, when.seed)
        }
    };
    let scope = scope.ok()?;
    (errors.count() == before).then(|| RouteCache {
        ttl,
        max_ttl,
        adaptive: spec.adaptive,
        client_controls: spec.client_controls,
        key: KeyPolicy::new(
            spec.key.include.clone(),
            spec.key.normalize.whitespace == WhitespaceSpec::Collapse,
        ),
        scope,
        when: CacheCondition {
            max_temperature: when_max_temperature,
            seed: when_seed,
        },
    })
}

fn parse_scope(scope: &str) -> Result<CacheScope, String> {
    match scope {
        "api_key" => Ok(CacheScope::ApiKey),
        "none" => Ok(CacheScope::None),
        _ => {
            let Some(name) = scope.strip_prefix("header:") else {
                return Err(format!(
                    "expected api_key, none or header:NAME, got `{scope}`"
                ));
            };
            header_name(name.trim()).map(CacheScope::Header)
        }
    }
}

// === spec: the YAML of `redis:`, `cache:` and a route's `cache:` ===

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// One server: `redis://[user:password@]host:port[/db]` or `rediss://...` for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes' URLs (the rest are found from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Vec<String>>,
    /// Per command.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
    /// Prefix of every key sluice writes.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
}

fn default_redis_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
fn default_redis_prefix() -> String {
    "sluice".into()
}

/// The cache tiers, shared by every caching route.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// L1, in process; on whenever any route caches.
    #[serde(default)]
    pub memory: MemoryTierSpec,
    /// L2 on the top-level `redis:`.
    #[serde(default)]
    pub redis: bool,
    /// L3 on local disk; survives restarts.
    pub disk: Option<DiskTierSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTierSpec {
    #[serde(default = "default_memory_max")]
    pub max_bytes: ByteSize,
}

impl Default for MemoryTierSpec {
    fn default() -> Self {
        MemoryTierSpec {
            max_bytes: default_memory_max(),
        }
    }
}

fn default_memory_max() -> ByteSize {
    ByteSize(256 * 1024 * 1024)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskTierSpec {
    /// Directory of the entries, relative to the config file's directory.
    pub path: String,
    #[serde(default = "default_disk_max")]
    pub max_bytes: ByteSize,
}

fn default_disk_max() -> ByteSize {
    ByteSize(1024 * 1024 * 1024)
}

/// A route's cache policy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSpec {
    pub ttl: HumanDuration,
    /// Caps `x-sluice-cache-ttl` and adaptive extension; defaults to `ttl`.
    pub max_ttl: Option<HumanDuration>,
    /// Hits extend the entry's TTL, up to `max_ttl`.
    #[serde(default)]
    pub adaptive: bool,
    /// Honour clients' `cache-control: no-cache / no-store` and `x-sluice-cache-ttl`; false
    /// keeps the route's cache and TTL in force whatever a client sends.
    #[serde(default = "honoured")]
    pub client_controls: bool,
    #[serde(default)]
    pub key: CacheKeySpec,
    /// Cache only requests meeting one of these conditions.
    pub when: Option<CacheWhenSpec>,
}

fn honoured() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKeySpec {
    /// Body fields that make up the key; absent means the engine's default list.
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub normalize: NormalizeSpec,
    /// `api_key`, `none` or `header:NAME`.
    #[serde(default = "default_scope")]
    pub scope: String,
}

impl Default for CacheKeySpec {
    fn default() -> Self {
        CacheKeySpec {
            include: None,
            normalize: NormalizeSpec::default(),
            scope: default_scope(),
        }
    }
}

fn default_scope() -> String {
    "api_key".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeSpec {
    #[serde(default)]
    pub whitespace: WhitespaceSpec,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhitespaceSpec {
    #[default]
    Keep,
    Collapse,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheWhenSpec {
    /// Cache when the request's `temperature` is at most this.
    pub max_temperature: Option<f64>,
    /// Cache when the request carries a `seed`.
    #[serde(default)]
    pub seed: bool,
}

#[cfg(test)]
mod tests;
