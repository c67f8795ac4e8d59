//! Limits as the proxy runs them: each route's request rates and token budgets, compiled and
//! checked from the spec, with their buckets. Buckets outlive a reload: they sit in
//! [`LimitBuckets`] keyed by route, limit name and shape, so a reload that keeps a limit keeps
//! every client's standing in it.

pub use super::limit_buckets::{LimitBuckets, TokenGauges};

use super::errors::Errors;
use super::locate::{field_path, Seg};
use super::needs::Needs;
use super::spec::LimitSpec;
use super::units::header_name;
use http::header::HeaderName;
use sluice_plugins::limits::rate::RequestRate;
use sluice_plugins::limits::tokens::TokenBucket;
use sluice_plugins::limits::Rate;
use sluice_plugins::metrics::{LimitMetrics, Metrics, RouteLimitMetrics};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Completion tokens reserved for a request that sets no `max_tokens`, unless configured.
pub const DEFAULT_MAX_TOKENS: u64 = 512;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The caller's API key (hashed).
    ApiKey,
    /// A request header's value.
    Header(HeaderName),
    /// The client's IP address.
    Ip,
    /// The JSON body's `user` field.
    BodyUser,
    /// One bucket for the whole route.
    Route,
}

/// What every limit has.
pub struct LimitCommon {
    pub name: String,
    pub key: LimitKey,
    /// The whole limit (what the shared bucket enforces).
    pub rate: Rate,
    /// Kept in Redis when it answers; `local` is then the fallback bucket.
    pub shared: bool,
    pub metrics: LimitMetrics,
}

pub struct RequestLimit {
    pub common: LimitCommon,
    /// The bucket in this process: the limit, or limit / instances for a shared one.
    pub local: Arc<RequestRate>,
}

pub struct TokenLimit {
    pub common: LimitCommon,
    pub default_max_tokens: u64,
    pub charge_cache_hits: bool,
    pub local: Arc<TokenBucket>,
}

/// Limits as one scope enforces them: a route's, or a client key's (`key:NAME`) over every route
/// it calls. `name` names its buckets (in Redis too) and its metrics.
#[derive(Clone, Copy)]
pub struct LimitScope<'a> {
    pub name: &'a str,
    pub limits: &'a RouteLimits,
    pub metrics: &'a RouteLimitMetrics,
}

/// A route's limits.
pub struct RouteLimits {
    pub requests: Vec<RequestLimit>,
    pub tokens: Vec<TokenLimit>,
}

impl RouteLimits {
    /// Token budgets estimate from the body and settle on the answer's usage; a `body:user`
    /// key reads the body.
    #[must_use]
    pub fn needs(&self) -> Needs {
        if !self.tokens.is_empty() {
            return Needs::USAGE;
        }
        Needs::body_if(
            self.requests
                .iter()
                .any(|l| l.common.key == LimitKey::BodyUser),
        )
    }

    /// Whether any limit lives in Redis.
    #[must_use]
    pub fn any_shared(&self) -> bool {
        self.requests.iter().any(|l| l.common.shared) || self.tokens.iter().any(|l| l.common.shared)
    }
}

enum Kind {
    Requests,
    Tokens {
        default_max_tokens: u64,
        charge_cache_hits: bool,
    },
}

/// A limit that passed every check, waiting for its buckets and metric handles.
pub(super) struct CheckedLimit {
    name: String,
    key: LimitKey,
    rate: Rate,
    local_rate: Rate,
    shared: bool,
    kind: Kind,
}

/// Checks the `limits:` at `base` (a route's or a key's); `has_redis` says whether
/// `shared: true` can work.
pub(super) fn check_limits(
    errors: &mut Errors,
    base: &[Seg],
    specs: &[LimitSpec],
    has_redis: bool,
) -> Vec<CheckedLimit> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let at = |field: &str| field_path![base; "limits", i, field];
        let before = errors.count();
        if spec.name.is_empty() {
            errors.at(&at("name"), "must not be empty");
        } else if !names.insert(spec.name.as_str()) {
            errors.at(&at("name"), format!("duplicate limit name `{}`", spec.name));
        }
        let key = parse_key(&spec.key).map_err(|m| errors.at(&at("key"), m));
        let kind = check_kind(errors, &at, spec);
        if spec.shared && !has_redis {
            errors.at(
                &at("shared"),
                "a shared limit needs a top-level `redis:` section",
            );
        }
        if spec.instances == 0 {
            errors.at(&at("instances"), "must be at least 1");
        }
        let (Ok(key), Some((kind, count, period, burst))) = (key, kind) else {
            continue;
        };
        let rates = Rate::per(count, period, burst).zip(Rate::per(
            (count / spec.instances.max(1)).max(1),
            period,
            (burst / spec.instances.max(1)).max(1),
        ));
        let Some((rate, local_rate)) = rates else {
            errors.at(
                &field_path![base; "limits", i],
                "the rate is too fine to enforce (more than one per nanosecond)",
            );
            continue;
        };
        if errors.count() == before {
            out.push(CheckedLimit {
                name: spec.name.clone(),
                key,
                rate,
                local_rate: if spec.shared { local_rate } else { rate },
                shared: spec.shared,
                kind,
            });
        }
    }
    out
}

/// The limit's kind and shape: (kind, count, period, burst).
fn check_kind(
    errors: &mut Errors,
    at: &dyn Fn(&str) -> Vec<Seg>,
    spec: &LimitSpec,
) -> Option<(Kind, u64, Duration, u64)> {
    const MINUTE: u64 = 60;
    let rates = [
        ("requests_per_second", spec.requests_per_second, 1, false),
        (
            "requests_per_minute",
            spec.requests_per_minute,
            MINUTE,
            false,
        ),
        (
            "requests_per_hour",
            spec.requests_per_hour,
            60 * MINUTE,
            false,
        ),
        ("tokens_per_minute", spec.tokens_per_minute, MINUTE, true),
        ("tokens_per_hour", spec.tokens_per_hour, 60 * MINUTE, true),
        (
            "tokens_per_day",
            spec.tokens_per_day,
            24 * 60 * MINUTE,
            true,
        ),
    ];
    let set: Vec<_> = rates.iter().filter(|r| r.1.is_some()).collect();
    let [(field, Some(count), secs, tokens)] = set.as_slice() else {
        let names: Vec<&str> = rates.iter().map(|r| r.0).collect();
        let what = if set.is_empty() {
            "needs"
        } else {
            "takes only"
        };
        errors.at(
            &at("name"),
            format!("a limit {what} one of {}", names.join(", ")),
        );
        return None;
    };
    if *count == 0 {
        errors.at(&at(field), "must be at least 1");
        return None;
    }
    let period = Duration::from_secs(*secs);
    if *tokens {
        if spec.burst.is_some() {
            errors.at(&at("burst"), "applies to request limits only");
        }
        let default_max_tokens = spec.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let kind = Kind::Tokens {
            default_max_tokens,
            charge_cache_hits: spec.charge_cache_hits,
        };
        return Some((kind, *count, period, *count));
    }
    if spec.default_max_tokens.is_some() || spec.charge_cache_hits {
        let field = if spec.charge_cache_hits {
            "charge_cache_hits"
        } else {
            "default_max_tokens"
        };
        errors.at(&at(field), "applies to token limits only");
    }
    let burst = spec.burst.unwrap_or(*count);
    if burst == 0 {
        errors.at(&at("burst"), "must be at least 1");
        return None;
    }
    Some((Kind::Requests, *count, period, burst))
}

fn parse_key(key: &str) -> Result<LimitKey, String> {
    match key {
        "api_key" => Ok(LimitKey::ApiKey),
        "ip" => Ok(LimitKey::Ip),
        "route" => Ok(LimitKey::Route),
        "body:user" => Ok(LimitKey::BodyUser),
        _ => {
            let Some(name) = key.strip_prefix("header:") else {
                return Err(format!(
                    "expected api_key, header:NAME, ip, body:user or route, got `{key}`"
                ));
            };
            header_name(name).map(LimitKey::Header)
        }
    }
}

/// Builds a route's limits on the buckets that survive reloads.
pub(super) fn attach(
    route: &str,
    checked: Vec<CheckedLimit>,
    buckets: &LimitBuckets,
    metrics: &Metrics,
) -> Option<RouteLimits> {
    if checked.is_empty() {
        return None;
    }
    let mut limits = RouteLimits {
        requests: Vec::new(),
        tokens: Vec::new(),
    };
    for c in checked {
        let m = metrics.limit(route, &c.name);
        let id = (route.to_string(), c.name.clone());
        let gauge = m.keys.clone();
        let common = LimitCommon {
            name: c.name,
            key: c.key,
            rate: c.rate,
            shared: c.shared,
            metrics: m,
        };
        match c.kind {
            Kind::Requests => limits.requests.push(RequestLimit {
                local: buckets.requests(id, c.local_rate, gauge),
                common,
            }),
            Kind::Tokens {
                default_max_tokens,
                charge_cache_hits,
            } => limits.tokens.push(TokenLimit {
                local: buckets.tokens(
                    id,
                    c.local_rate,
                    TokenGauges {
                        keys: gauge,
                        remaining: Some(metrics.token_budget_remaining(route, &common.name)),
                    },
                ),
                default_max_tokens,
                charge_cache_hits,
                common,
            }),
        }
    }
    Some(limits)
}

#[cfg(test)]
mod tests {
    use super::super::policy::{compile_text, compile_text_with};
    use super::*;

    const BASE: &str = "\
redis: { url: \"redis://127.0.0.1:6379\" }
upstreams:
  local:
    endpoints: [ { url: \"http://127.0.0.1:8001\" } ]
    max_concurrency: 2
    queue: { max: 4, timeout: 300ms }
routes:
  - name: chat
    upstream: local
    limits:
";

    fn with_limits(limits: &str) -> String {
        format!("{BASE}{limits}")
    }

    #[test]
    fn limits_compile_to_buckets_of_the_right_shape() {
        let text = with_limits(
            "      - { name: rps, key: api_key, requests_per_second: 10, burst: 20 }
      - { name: tpm, key: \"header:x-team\", tokens_per_minute: 1000, shared: true, instances: 4 }
      - { name: users, key: body:user, requests_per_hour: 3600 }
",
        );
        let p = compile_text(&text).unwrap();
        let route = &p.routes[0];
        let limits = route.limits.as_ref().unwrap();
        let rps = &limits.requests[0].common;
        assert_eq!(
            rps.rate,
            Rate {
                interval: Duration::from_millis(100),
                burst: 20
            }
        );
        assert_eq!(rps.key, LimitKey::ApiKey);
        assert_eq!(limits.requests[1].common.key, LimitKey::BodyUser);
        assert_eq!(limits.requests[1].common.rate.burst, 3600);
        let tpm = &limits.tokens[0];
        assert_eq!(
            tpm.common.key,
            LimitKey::Header(HeaderName::from_static("x-team"))
        );
        assert_eq!(
            (tpm.default_max_tokens, tpm.charge_cache_hits),
            (512, false)
        );
        assert!(tpm.common.shared && route.needs.body);
        assert!(
            p.limits_redis.is_some(),
            "a shared limit needs the redis connection"
        );
        let admission = route.lanes[0].upstream.admission.as_ref().unwrap();
        assert_eq!(admission.timeout, Duration::from_millis(300));
        assert_eq!(admission.gate.in_flight(), 0);
    }

    #[test]
    fn a_request_limit_on_the_header_alone_does_not_read_the_body() {
        let text = with_limits("      - { name: rps, key: ip, requests_per_minute: 60 }\n");
        let p = compile_text(&text.replace("    queue: { max: 4, timeout: 300ms }\n", "")).unwrap();
        assert!(!p.routes[0].needs.body);
        assert!(p.limits_redis.is_none(), "no shared limit, no connection");
        let p = compile_text(&text).unwrap();
        assert!(
            p.routes[0].needs.body,
            "a queued request watches its client: body read"
        );
    }

    #[test]
    fn mistakes_are_located() {
        let text = with_limits(
            "      - { name: none, key: api_key }
      - { name: two, requests_per_second: 1, tokens_per_day: 5 }
      - { name: badkey, key: cookie, requests_per_second: 1 }
      - { name: tb, tokens_per_minute: 10, burst: 3 }
      - { name: rq, requests_per_minute: 10, default_max_tokens: 3 }
      - { name: zero, requests_per_second: 0 }
      - { name: inst, requests_per_second: 5, instances: 0 }
      - { name: rq, requests_per_second: 5 }
",
        )
        .replace("    max_concurrency: 2\n", "");
        let errs = compile_text(&text).map(|_| ()).unwrap_err();
        for expected in [
            "g.yaml:10:11: routes[0].limits[0].name: a limit needs one of requests_per_second",
            "g.yaml:11:11: routes[0].limits[1].name: a limit takes only one of",
            "g.yaml:12:25: routes[0].limits[2].key: expected api_key, header:NAME, ip, body:user or route, got `cookie`",
            "g.yaml:13:44: routes[0].limits[3].burst: applies to request limits only",
            "g.yaml:14:46: routes[0].limits[4].default_max_tokens: applies to token limits only",
            "g.yaml:15:23: routes[0].limits[5].requests_per_second: must be at least 1",
            "g.yaml:16:47: routes[0].limits[6].instances: must be at least 1",
            "g.yaml:17:11: routes[0].limits[7].name: duplicate limit name `rq`",
            "g.yaml:5:5: upstreams.local.queue: a queue needs `max_concurrency` on the upstream",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(expected)),
                "missing `{expected}` in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), 9, "{errs:#?}");
    }

    #[test]
    fn a_shared_limit_needs_redis() {
        let text = with_limits("      - { name: s, requests_per_second: 5, shared: true }\n")
            .replace("redis: { url: \"redis://127.0.0.1:6379\" }\n", "");
        let errs = compile_text(&text).map(|_| ()).unwrap_err();
        assert!(
            errs[0].starts_with("g.yaml:10:44: routes[0].limits[0].shared: a shared limit needs"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_limits_and_the_gate() {
        let shared = super::super::shared::SharedState::new(Metrics::new("t").unwrap());
        let text = with_limits(
            "      - { name: a, requests_per_second: 5 }
      - { name: t, tokens_per_minute: 100 }
",
        );
        let first = compile_text_with(&text, &shared).unwrap();
        let again = compile_text_with(&text, &shared).unwrap();
        let changed = compile_text_with(
            &text.replace("tokens_per_minute: 100", "tokens_per_minute: 200"),
            &shared,
        )
        .unwrap();
        let l = |p: &crate::config::Policy| {
            let limits = p.routes[0].limits.as_ref().unwrap();
            (
                Arc::clone(&limits.requests[0].local),
                Arc::clone(&limits.tokens[0].local),
            )
        };
        let ((r1, t1), (r2, t2), (r3, t3)) = (l(&first), l(&again), l(&changed));
        assert!(Arc::ptr_eq(&r1, &r2) && Arc::ptr_eq(&t1, &t2));
        assert!(Arc::ptr_eq(&r1, &r3), "the request limit did not change");
        assert!(!Arc::ptr_eq(&t1, &t3), "a new shape starts a new bucket");
        let gate = |p: &crate::config::Policy| {
            Arc::clone(
                &p.routes[0].lanes[0]
                    .upstream
                    .admission
                    .as_ref()
                    .unwrap()
                    .gate,
            )
        };
        assert!(Arc::ptr_eq(&gate(&first), &gate(&changed)));
    }
}
