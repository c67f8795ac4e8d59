//! What a request asks of the cache: `cache-control` directives, a TTL override, and the
//! scope its key is confined to (a hash of the caller's API key, by default).

use crate::config::policy::{CacheScope, RouteCache};
use crate::config::units::parse_duration;
use crate::proxy::identity::{api_key, Caller, NAMED_KEY_SEED};
use http::HeaderMap;
use std::time::Duration;
use xxhash_rust::xxh3::{xxh3_128, xxh3_128_with_seed};

/// The request's cache directives.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    /// `cache-control: no-cache`: skip the lookup, refresh the entry.
    pub no_cache: bool,
    /// `cache-control: no-store`: neither read nor write.
    pub no_store: bool,
    /// `x-sluice-cache-ttl`, already capped at the route's `max_ttl`.
    pub ttl: Option<Duration>,
}

pub const X_SLUICE_CACHE_TTL: &str = "x-sluice-cache-ttl";

impl Directives {
    /// None when the route ignores clients' controls (`client_controls: false`).
    #[must_use]
    pub fn from_headers(headers: &HeaderMap, policy: &RouteCache) -> Self {
        let mut d = Directives::default();
        if !policy.client_controls {
            return d;
        }
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            for token in value.to_str().unwrap_or("").split(',') {
                match token.trim().to_ascii_lowercase().as_str() {
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    _ => {}
                }
            }
        }
        d.ttl = headers
            .get(X_SLUICE_CACHE_TTL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_duration(v).ok())
            .map(|ttl| ttl.min(policy.max_ttl));
        d
    }
}

/// The bytes the key is scoped by: a hash of the API key, a header's value, or nothing.
#[must_use]
pub fn scope(headers: &HeaderMap, scope: &CacheScope, caller: Caller<'_>) -> Vec<u8> {
    match scope {
        CacheScope::None => Vec::new(),
        CacheScope::Header(name) => headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
        // Hashed so the key material never holds the secret itself.
        CacheScope::ApiKey => match caller {
            Some(named) => xxh3_128_with_seed(named.name.as_bytes(), NAMED_KEY_SEED)
                .to_le_bytes()
                .to_vec(),
            None => api_key(headers)
                .map(|k| xxh3_128(k).to_le_bytes().to_vec())
                .unwrap_or_default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RouteCache {
        RouteCache {
            ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(600),
            adaptive: false,
            client_controls: true,
            key: sluice_plugins::cache::key::KeyPolicy::new(None, false),
            scope: CacheScope::ApiKey,
            when: sluice_plugins::cache::key::CacheCondition::default(),
        }
    }

    #[test]
    fn directives_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("cache-control", "max-age=0, No-Cache".parse().unwrap());
        h.insert(X_SLUICE_CACHE_TTL, "2h".parse().unwrap());
        let d = Directives::from_headers(&h, &policy());
        assert!(d.no_cache && !d.no_store);
        assert_eq!(d.ttl, Some(Duration::from_secs(600)), "capped at max_ttl");
        h.insert("cache-control", "no-store".parse().unwrap());
        h.insert(X_SLUICE_CACHE_TTL, "30s".parse().unwrap());
        let d = Directives::from_headers(&h, &policy());
        assert!(d.no_store && !d.no_cache);
        assert_eq!(d.ttl, Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_route_without_client_controls_ignores_them() {
        let mut h = HeaderMap::new();
        h.insert("cache-control", "no-cache, no-store".parse().unwrap());
        h.insert(X_SLUICE_CACHE_TTL, "5s".parse().unwrap());
        let fixed = RouteCache {
            client_controls: false,
            ..policy()
        };
        assert_eq!(Directives::from_headers(&h, &fixed), Directives::default());
        assert_ne!(
            Directives::from_headers(&h, &policy()),
            Directives::default()
        );
    }

    #[test]
    fn api_key_scope_is_hashed_and_distinguishes_keys() {
        let mut a = HeaderMap::new();
        a.insert("authorization", "Bearer sk-a".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert("authorization", "Bearer sk-b".parse().unwrap());
        let sa = scope(&a, &CacheScope::ApiKey, None);
        assert_eq!(sa.len(), 16);
        assert!(!sa.windows(4).any(|w| w == b"sk-a"));
        assert_ne!(sa, scope(&b, &CacheScope::ApiKey, None));
        assert!(scope(&a, &CacheScope::None, None).is_empty());
    }
}
