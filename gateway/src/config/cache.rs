//! Cache settings as the engines take them: the tiers (memory, Redis, disk) shared by every
//! caching route, and each route's policy (TTLs, key, when to cache). Plain data compiled and
//! checked from the spec, so the gateway does not depend on the engines' types.

use super::errors::Errors;
use super::load::LoadedSpec;
use super::locate::{field_path, Seg};
use super::secret::redact_url;
use super::spec::{CacheSpec, RedisSpec, RouteCacheSpec, WhitespaceSpec};
use super::units::header_name;
use http::header::HeaderName;
use sluice_plugins::cache::key::{CacheCondition, KeyPolicy};
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
    pub url: String,
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
    /// The body fields in the key and how they are normalized.
    pub key: KeyPolicy,
    pub scope: CacheScope,
    /// When a request is cached at all (temperature ceiling, seed).
    pub when: CacheCondition,
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
    if let Err(m) = check_redis_url(&spec.url) {
        errors.at(&field_path!["redis", "url"], m);
    }
    if spec.timeout.0.is_zero() {
        errors.at(&field_path!["redis", "timeout"], "must be more than 0");
    }
    (errors.count() == before).then(|| RedisSettings {
        url: spec.url.clone(),
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
    loaded: &LoadedSpec,
    redis: Option<&RedisSettings>,
) -> CacheTiers {
    let spec = loaded.spec.cache.clone().unwrap_or_default();
    if spec.memory.max_bytes.0 == 0 {
        errors.at(
            &field_path!["cache", "memory", "max_bytes"],
            "must be more than 0",
        );
    }
    if spec.redis && loaded.spec.redis.is_none() {
        errors.at(
            &field_path!["cache", "redis"],
            "needs the top-level `redis:` section (with its url)",
        );
    }
    CacheTiers {
        memory_max_bytes: spec.memory.max_bytes.0,
        redis: if spec.redis { redis.cloned() } else { None },
        disk: compile_disk(errors, loaded, &spec),
    }
}

fn compile_disk(
    errors: &mut Errors,
    loaded: &LoadedSpec,
    spec: &CacheSpec,
) -> Option<DiskSettings> {
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
    let dir = Path::new(&loaded.file).parent().unwrap_or(Path::new(""));
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

#[cfg(test)]
mod tests {
    use super::super::policy::compile_text;
    use super::*;

    const UPSTREAM: &str = "\
upstreams:
  local:
    endpoints: [{ url: \"http://127.0.0.1:8001\" }]
";

    fn errors_of(text: &str) -> Vec<String> {
        match compile_text(text) {
            Ok(_) => panic!("compiled:\n{text}"),
            Err(e) => e,
        }
    }

    fn route_cache(cache: &str) -> String {
        format!("{UPSTREAM}routes:\n  - name: chat\n    upstream: local\n    cache:\n{cache}")
    }

    #[test]
    fn a_caching_route_gets_defaults_and_the_memory_tier() {
        let p = compile_text(&route_cache("      ttl: 10m\n")).unwrap();
        assert_eq!(
            p.cache_tiers,
            Some(CacheTiers {
                memory_max_bytes: 256 * 1024 * 1024,
                redis: None,
                disk: None,
            })
        );
        let route = &p.routes[0];
        assert!(route.reads_body, "caching reads the body");
        assert_eq!(
            route.cache,
            Some(RouteCache {
                ttl: Duration::from_secs(600),
                max_ttl: Duration::from_secs(600),
                adaptive: false,
                key: KeyPolicy::new(None, false),
                scope: CacheScope::ApiKey,
                when: CacheCondition::default(),
            })
        );
    }

    #[test]
    fn every_field_compiles() {
        let text = format!(
            "redis:\n  url: rediss://:pw@cache:6380/1\n  timeout: 250ms\n  prefix: gw\n\
             cache:\n  memory: {{ max_bytes: 64MiB }}\n  redis: true\n  disk: {{ path: ./data/cache, max_bytes: 2GiB }}\n{}",
            route_cache(
                "      ttl: 10m\n      max_ttl: 1h\n      adaptive: true\n      key:\n        include: [model, messages]\n        normalize: { whitespace: collapse }\n        scope: header:X-Team\n      when: { max_temperature: 0, seed: true }\n"
            )
        );
        let p = compile_text(&text).unwrap();
        assert_eq!(
            p.cache_tiers,
            Some(CacheTiers {
                memory_max_bytes: 64 * 1024 * 1024,
                redis: Some(RedisSettings {
                    url: "rediss://:pw@cache:6380/1".into(),
                    timeout: Duration::from_millis(250),
                    prefix: "gw".into(),
                }),
                disk: Some(DiskSettings {
                    path: PathBuf::from("data/cache"),
                    max_bytes: 2 * 1024 * 1024 * 1024,
                }),
            })
        );
        assert_eq!(
            p.routes[0].cache,
            Some(RouteCache {
                ttl: Duration::from_secs(600),
                max_ttl: Duration::from_secs(3600),
                adaptive: true,
                key: KeyPolicy::new(Some(vec!["model".into(), "messages".into()]), true),
                scope: CacheScope::Header(HeaderName::from_static("x-team")),
                when: CacheCondition {
                    max_temperature: Some(0.0),
                    seed: true,
                },
            })
        );
        assert_eq!(
            p.redacted["redis"]["url"],
            "rediss://:<redacted>@cache:6380/1"
        );
    }

    #[test]
    fn redis_defaults_and_tiers_without_a_caching_route() {
        let text = format!(
            "redis: {{ url: \"redis://127.0.0.1:6379\" }}\ncache: {{ redis: true }}\n{UPSTREAM}routes:\n  - {{ name: chat, upstream: local }}\n"
        );
        let p = compile_text(&text).unwrap();
        assert!(p.cache_tiers.is_none(), "no route caches");
        assert!(!p.routes[0].reads_body);
        let p = compile_text(
            &text.replace("upstream: local }", "upstream: local, cache: { ttl: 1s } }"),
        )
        .unwrap();
        let redis = p.cache_tiers.unwrap().redis.unwrap();
        assert_eq!(
            (redis.timeout, redis.prefix.as_str()),
            (Duration::from_millis(100), "sluice")
        );
    }

    #[test]
    fn redis_tier_needs_the_redis_section() {
        let text = format!("cache:\n  redis: true\n{}", route_cache("      ttl: 10m\n"));
        assert_eq!(
            errors_of(&text),
            ["g.yaml:2:3: cache.redis: needs the top-level `redis:` section (with its url)"]
        );
    }

    #[test]
    fn tier_and_redis_values_are_checked() {
        let text = format!(
            "redis:\n  url: http://127.0.0.1:6379\n  timeout: 0s\ncache:\n  memory: {{ max_bytes: 0 }}\n  disk: {{ path: \"\", max_bytes: 0 }}\n{}",
            route_cache("      ttl: 10m\n")
        );
        let errs = errors_of(&text);
        assert_eq!(
            errs,
            [
                "g.yaml:2:3: redis.url: `http://127.0.0.1:6379` must start with redis:// or rediss://",
                "g.yaml:3:3: redis.timeout: must be more than 0",
                "g.yaml:5:13: cache.memory.max_bytes: must be more than 0",
                "g.yaml:6:11: cache.disk.path: must not be empty",
                "g.yaml:6:21: cache.disk.max_bytes: must be more than 0",
            ]
        );
    }

    #[test]
    fn route_cache_values_are_checked() {
        let errs = errors_of(&route_cache(
            "      ttl: 0s\n      max_ttl: 1s\n      key:\n        include: []\n        scope: apikey\n      when: {}\n",
        ));
        assert_eq!(
            errs,
            [
                "g.yaml:8:7: routes[0].cache.ttl: must be more than 0",
                "g.yaml:11:9: routes[0].cache.key.include: must list at least one field (leave it out for the default list)",
                "g.yaml:12:9: routes[0].cache.key.scope: expected api_key, none or header:NAME, got `apikey`",
                "g.yaml:13:7: routes[0].cache.when: set max_temperature and/or seed: true (or leave `when` out to always cache)",
            ]
        );
        let errs = errors_of(&route_cache(
            "      ttl: 10m\n      max_ttl: 1m\n      key: { include: [model, \"\", model], scope: \"header:a b\" }\n      when: { max_temperature: -1 }\n",
        ));
        assert_eq!(
            errs,
            [
                "g.yaml:9:7: routes[0].cache.max_ttl: must be at least ttl (600s), is 60s",
                "g.yaml:10:14: routes[0].cache.key.include[1]: must not be empty",
                "g.yaml:10:14: routes[0].cache.key.include[2]: `model` is listed twice",
                "g.yaml:10:43: routes[0].cache.key.scope: `a b` is not a valid header name",
                "g.yaml:11:15: routes[0].cache.when.max_temperature: must be a number of at least 0",
            ]
        );
    }

    #[test]
    fn ttl_is_required_and_scope_typos_are_caught_by_the_parser() {
        let errs = errors_of(&route_cache("      adaptive: true\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("g.yaml:8:7: routes[0].cache: missing field `ttl`"),
            "{errs:?}"
        );
        let errs = errors_of(&route_cache(
            "      ttl: 10m\n      key: { normalize: { whitespace: squash } }\n",
        ));
        assert!(
            errs[0].starts_with(
                "g.yaml:9:39: routes[0].cache.key.normalize.whitespace: unknown variant `squash`"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn scopes() {
        assert_eq!(parse_scope("api_key"), Ok(CacheScope::ApiKey));
        assert_eq!(parse_scope("none"), Ok(CacheScope::None));
        assert_eq!(
            parse_scope("header:X-Team"),
            Ok(CacheScope::Header(HeaderName::from_static("x-team")))
        );
        assert!(parse_scope("header:").is_err());
        assert!(parse_scope("header:a b").is_err());
        assert!(parse_scope("apikey")
            .unwrap_err()
            .starts_with("expected api_key, none or header:NAME"));
    }

    #[test]
    fn redis_urls() {
        assert!(check_redis_url("redis://127.0.0.1:6379").is_ok());
        assert!(check_redis_url("rediss://:pw@cache.internal:6380/2").is_ok());
        assert!(check_redis_url("http://127.0.0.1:6379").is_err());
        assert!(check_redis_url("redis://").is_err());
        assert!(check_redis_url("redis://:pw@/0").is_err());
        for bad in ["http://:pw@127.0.0.1:6379", "redis://:pw@/0"] {
            let message = check_redis_url(bad).unwrap_err();
            assert!(message.contains(":<redacted>@"), "{message}");
            assert!(!message.contains("pw"), "{message}");
        }
    }

    #[test]
    fn disk_paths_resolve_against_the_config_directory() {
        assert_eq!(
            relative_to(Path::new("/etc/sluice"), Path::new("./data/cache")),
            PathBuf::from("/etc/sluice/data/cache")
        );
        assert_eq!(
            relative_to(Path::new("/etc/sluice"), Path::new("/var/cache/sluice")),
            PathBuf::from("/var/cache/sluice")
        );
        assert_eq!(
            relative_to(Path::new(""), Path::new("./data")),
            PathBuf::from("data")
        );
    }
}
