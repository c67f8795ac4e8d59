//! `Policy`: what the proxy runs on, compiled from a parsed [`Spec`] in one pass that checks
//! every value while building (nothing is parsed twice, nothing dropped). Matchers, balancers,
//! peers and metric handles are built here so the request path only reads. State that must
//! outlive a reload (endpoint stats, metric families) lives in [`SharedState`] and is
//! re-attached by name, only once the whole file is free of errors.

pub use super::cache::{CacheScope, CacheTiers, DiskSettings, RedisSettings, RouteCache};
pub use super::endpoint::Timeouts;
pub use super::endpoint::{parse_endpoint_url, Endpoint, EndpointUrl};
pub use super::lane::{Fallback, Lane};
pub use super::route::Route;
use super::route::{build_route, CheckedRoute};
pub use super::shared::SharedState;
pub use super::upstream::{RetryPolicy, Upstream};

use super::cache::{compile_redis, compile_route_cache, compile_tiers};
use super::errors::{ConfigErrors, Errors};
use super::keys::{attach_keys, check_auth, check_keys, Keys};
use super::limits::check_limits;
pub use super::limits::{LimitBuckets, LimitKey, RequestLimit, RouteLimits, TokenLimit};
use super::load::LoadedSpec;
use super::locate::{field_path, Seg};
use super::redacted::redacted_view;
use super::spec::{MatchSpec, Spec};
use super::split::{check_split, compile_pricing, Pricing};
use super::telemetry::{compile_telemetry, Telemetry};
use super::units::header_name;
use super::upstream::compile_upstream;
use http::Method;
use sluice_plugins::glob::Glob;
use sluice_plugins::metrics::{Metrics, StatusCounters};
use sluice_plugins::router::{RouteMatcher, Router};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// A compiled, immutable configuration snapshot.
pub struct Policy {
    pub router: Router,
    pub routes: Vec<Route>,
    pub max_body_bytes: usize,
    pub unrouted: StatusCounters,
    /// Every family, for the ones labelled by what a request carries (the GenAI model).
    pub metrics: Metrics,
    /// The cache tiers; `Some` when any route caches.
    pub cache_tiers: Option<CacheTiers>,
    /// The Redis the shared limits use; `Some` when any limit is shared.
    pub limits_redis: Option<RedisSettings>,
    /// Prices by model, for `sluice_cost_usd_total`.
    pub pricing: Pricing,
    /// The gateway's client keys.
    pub keys: Keys,
    /// Where usage records go (read at start).
    pub telemetry: Telemetry,
    /// The running spec with secrets replaced, for `GET /admin/config`.
    pub redacted: serde_json::Value,
}

/// Checks `loaded` and compiles it; every problem is reported, each at its field.
pub fn compile(loaded: &LoadedSpec, shared: &SharedState) -> Result<Policy, ConfigErrors> {
    let spec = &loaded.spec;
    let mut errors = Errors::new(&loaded.file, &loaded.text);
    check_server(&mut errors, spec);
    let checked_upstreams: BTreeMap<&str, _> = spec
        .upstreams
        .iter()
        .filter_map(|(name, up)| Some((name.as_str(), compile_upstream(&mut errors, name, up)?)))
        .collect();
    let redis = spec
        .redis
        .as_ref()
        .and_then(|r| compile_redis(&mut errors, r));
    let config_dir = Path::new(&loaded.file).parent().unwrap_or(Path::new(""));
    let tiers = compile_tiers(
        &mut errors,
        spec.cache.as_ref(),
        redis.as_ref(),
        spec.redis.is_some(),
        config_dir,
    );
    let checked_routes = check_routes(&mut errors, spec, redis.is_some());
    let pricing = compile_pricing(&mut errors, &spec.pricing);
    let route_names: HashSet<&str> = spec.routes.iter().map(|r| r.name.as_str()).collect();
    let checked_keys = check_keys(&mut errors, &spec.keys, &route_names, redis.is_some());
    let telemetry = compile_telemetry(&mut errors, spec.telemetry.as_ref(), config_dir);
    errors.finish(())?;

    let keys = attach_keys(checked_keys, shared, redis.is_some());
    let upstreams: HashMap<&str, Arc<Upstream>> = checked_upstreams
        .into_iter()
        .map(|(name, up)| (name, Arc::new(up.attach(shared))))
        .collect();
    let mut matchers = Vec::new();
    let mut routes = Vec::new();
    for r in checked_routes {
        // Every route's upstream was checked to exist and to have compiled.
        let policy_needs = keys.needs(r.spec.auth) | telemetry.needs();
        let priced = !pricing.is_empty();
        if let Some((route, matcher)) = build_route(r, &upstreams, priced, policy_needs, shared) {
            routes.push(route);
            matchers.push(matcher);
        }
    }
    let weights: Vec<(&str, &str, u32)> = spec
        .routes
        .iter()
        .filter_map(|r| Some((r.name.as_str(), r.split.as_ref()?)))
        .flat_map(|(r, s)| {
            s.variants
                .iter()
                .map(move |v| (r, v.name.as_str(), v.weight))
        })
        .collect();
    shared.metrics.set_split_weights(&weights);
    let any_cache = routes.iter().any(|r| r.cache.is_some());
    let any_shared = keys.any_shared()
        || routes
            .iter()
            .any(|r| r.limits.as_ref().is_some_and(RouteLimits::any_shared));
    Ok(Policy {
        router: Router::new(matchers),
        routes,
        max_body_bytes: usize::try_from(spec.server.max_body_bytes.0).unwrap_or(usize::MAX),
        unrouted: shared.metrics.unrouted(),
        metrics: shared.metrics.clone(),
        cache_tiers: any_cache.then_some(tiers),
        limits_redis: redis.filter(|_| any_shared),
        pricing,
        keys,
        telemetry,
        redacted: redacted_view(spec),
    })
}

fn check_server(errors: &mut Errors, spec: &Spec) {
    super::server_limits::check(errors, &spec.server.limits);
    if spec.server.listen.is_empty() {
        errors.at(
            &field_path!["server", "listen"],
            "must list at least one address",
        );
    }
    for (i, addr) in spec.server.listen.iter().enumerate() {
        if addr.parse::<SocketAddr>().is_err() {
            errors.at(
                &field_path!["server", "listen", i],
                format!("`{addr}` is not an address like 127.0.0.1:8080"),
            );
        }
    }
    if spec.server.threads == 0 {
        errors.at(&field_path!["server", "threads"], "must be at least 1");
    }
    if let Some(admin) = &spec.admin {
        match admin.listen.parse::<SocketAddr>() {
            Err(_) => errors.at(
                &field_path!["admin", "listen"],
                format!("`{}` is not an address like 127.0.0.1:9090", admin.listen),
            ),
            Ok(addr) if !addr.ip().is_loopback() && admin.token_env.is_none() => errors.at(
                &field_path!["admin", "listen"],
                "admin listens beyond loopback: set admin.token_env to require a bearer token",
            ),
            Ok(_) => {}
        }
    }
    super::listen::check(errors, spec);
}

fn check_routes<'a>(errors: &mut Errors, spec: &'a Spec, has_redis: bool) -> Vec<CheckedRoute<'a>> {
    if spec.routes.is_empty() {
        errors.at(&field_path!["routes"], "must define at least one route");
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let upstream_names: HashSet<&str> = spec.upstreams.keys().map(String::as_str).collect();
    for (i, route) in spec.routes.iter().enumerate() {
        let base = field_path!["routes", i];
        let before = errors.count();
        if route.name.is_empty() {
            errors.at(&field_path![base; "name"], "must not be empty");
        } else if !seen.insert(route.name.as_str()) {
            errors.at(
                &field_path![base; "name"],
                format!("duplicate route name `{}`", route.name),
            );
        }
        if !spec.upstreams.contains_key(&route.upstream) {
            let known: Vec<&str> = spec.upstreams.keys().map(String::as_str).collect();
            errors.at(
                &field_path![base; "upstream"],
                format!(
                    "unknown upstream `{}` (defined: {})",
                    route.upstream,
                    known.join(", ")
                ),
            );
        }
        for (k, name) in route.fallback.iter().enumerate() {
            let at = field_path![base; "fallback", k];
            if !spec.upstreams.contains_key(name) {
                errors.at(&at, format!("unknown upstream `{name}`"));
            } else if *name == route.upstream || route.fallback[..k].contains(name) {
                errors.at(
                    &at,
                    format!("`{name}` is the route's own upstream or listed twice"),
                );
            }
        }
        let matcher = compile_matcher(errors, &field_path![base; "match"], &route.matcher);
        let cache = route
            .cache
            .as_ref()
            .and_then(|c| compile_route_cache(errors, &base, c));
        let limits = check_limits(errors, &base, &route.limits, has_redis);
        check_auth(errors, &base, route.auth, &spec.keys);
        let split = route
            .split
            .as_ref()
            .and_then(|s| check_split(errors, &base, &route.name, s, &upstream_names));
        if errors.count() == before {
            out.push(CheckedRoute {
                spec: route,
                matcher,
                cache,
                limits,
                split,
            });
        }
    }
    out
}

fn compile_matcher(errors: &mut Errors, base: &[Seg], m: &MatchSpec) -> RouteMatcher {
    if !m.path_prefix.starts_with('/') {
        errors.at(&field_path![base; "path_prefix"], "must start with `/`");
    }
    let mut methods = Vec::new();
    for name in &m.methods {
        match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => errors.at(
                &field_path![base; "methods"],
                format!("`{name}` is not an HTTP method"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        match header_name(name) {
            Ok(h) => headers.push((h, value.clone())),
            Err(m) => errors.at(&field_path![base; "headers"], m),
        }
    }
    RouteMatcher {
        path_prefix: m.path_prefix.clone(),
        methods,
        headers,
        model: m.model.as_deref().map(Glob::new),
    }
}

/// Loads and compiles `text` as `g.yaml`, errors as strings.
#[cfg(test)]
pub(crate) fn compile_text(text: &str) -> Result<Policy, Vec<String>> {
    let metrics = sluice_plugins::metrics::Metrics::new("t").expect("metrics");
    compile_text_with(text, &SharedState::new(metrics))
}

/// [`compile_text`] on the given shared state (a reload).
#[cfg(test)]
pub(super) fn compile_text_with(text: &str, shared: &SharedState) -> Result<Policy, Vec<String>> {
    let loaded = super::load::load_str("g.yaml", text, &|_| None)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    compile(&loaded, shared).map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
upstreams:
  local:
    endpoints:
      - url: http://127.0.0.1:8001
    set_headers: { authorization: \"Bearer sekrit\" }
routes:
  - name: chat
    match: { path_prefix: /v1/chat, methods: [POST], model: \"gpt-4*\" }
    upstream: local
";

    fn errors_of(text: &str) -> Vec<String> {
        match compile_text(text) {
            Ok(_) => panic!("compiled:\n{text}"),
            Err(e) => e,
        }
    }

    fn has(errors: &[String], prefix: &str) -> bool {
        errors.iter().any(|e| e.starts_with(prefix))
    }

    #[test]
    fn good_file_compiles() {
        let p = compile_text(GOOD).unwrap();
        assert_eq!(p.routes.len(), 1);
        assert_eq!(p.max_body_bytes, 10 * 1024 * 1024);
        assert!(p.routes[0].needs.body, "a model glob reads the body");
        assert!(p.routes[0].cache.is_none());
        assert!(p.cache_tiers.is_none(), "no route caches");
        let up = &p.routes[0].lanes[0].upstream;
        assert_eq!(up.set_headers[0].1, "Bearer sekrit");
    }

    #[test]
    fn semantic_errors_are_all_reported_with_positions() {
        let bad = format!(
            "{GOOD}  - name: chat\n    upstream: nowhere\n  - name: x\n    match: {{ methods: [\"BAD METHOD\"] }}\n    upstream: local\n"
        );
        let bad = bad.replace("http://127.0.0.1:8001", "ftp://127.0.0.1:8001");
        let errs = errors_of(&bad);
        assert!(
            has(&errs, "g.yaml:4:9: upstreams.local.endpoints[0].url:"),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "g.yaml:10:5: routes[1].name: duplicate route name `chat`"
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "g.yaml:11:5: routes[1].upstream: unknown upstream `nowhere`"
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, "g.yaml:13:14: routes[2].match.methods:"),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn every_check_of_the_old_validation_remains() {
        let bad = "\
server:
  listen: [\"nowhere\"]
  threads: 0
admin:
  listen: localhost
upstreams:
  a:
    endpoints: []
  b:
    endpoints:
      - { url: \"http://127.0.0.1:1\", weight: 0 }
    set_headers: { \"bad name\": x, good: \"line\\nbreak\" }
    retry: { on: [connect, timeout, 503, 200, later] }
routes:
  - name: \"\"
    match: { path_prefix: v1, headers: { \"a b\": c } }
    upstream: a
";
        let errs = errors_of(bad);
        for expected in [
            "g.yaml:2:3: server.listen[0]: `nowhere` is not an address",
            "g.yaml:3:3: server.threads: must be at least 1",
            "g.yaml:5:3: admin.listen: `localhost` is not an address",
            "g.yaml:8:5: upstreams.a.endpoints: must list at least one endpoint",
            "g.yaml:11:38: upstreams.b.endpoints[0].weight: must be at least 1",
            "g.yaml:12:20: upstreams.b.set_headers.bad name: `bad name` is not a valid header name",
            "g.yaml:12:35: upstreams.b.set_headers.good: value is not a valid header value",
            "g.yaml:13:14: upstreams.b.retry.on[3]: expected `connect`, `timeout`",
            "g.yaml:13:14: upstreams.b.retry.on[4]: expected `connect`, `timeout`",
            "g.yaml:15:5: routes[0].name: must not be empty",
            "g.yaml:16:14: routes[0].match.path_prefix: must start with `/`",
            "g.yaml:16:31: routes[0].match.headers: `a b` is not a valid header name",
        ] {
            assert!(has(&errs, expected), "missing `{expected}` in {errs:#?}");
        }
        assert_eq!(errs.len(), 12, "{errs:#?}");
        let errs = errors_of("upstreams: {}\nroutes: []\n");
        assert_eq!(errs, ["g.yaml:2:1: routes: must define at least one route"]);
    }

    #[test]
    fn public_admin_without_token_is_refused() {
        let bad = format!("admin:\n  listen: 0.0.0.0:9090\n{GOOD}");
        let errs = errors_of(&bad);
        assert!(
            has(
                &errs,
                "g.yaml:2:3: admin.listen: admin listens beyond loopback"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn unreadable_ca_file_is_located() {
        let bad = GOOD.replace(
            "    set_headers",
            "    tls: { ca_file: /nonexistent/ca.pem }\n    set_headers",
        );
        let errs = errors_of(&bad);
        assert!(
            has(
                &errs,
                "g.yaml:5:12: upstreams.local.tls.ca_file: cannot read /nonexistent/ca.pem"
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let text = format!("redis:\n  url: redis://:hunter2@127.0.0.1:6379/0\n{GOOD}")
            .replace("http://127.0.0.1:8001", "http://me:pa55@127.0.0.1:8001")
            + "    split: { variants: [ { name: v, weight: 1, headers: { x-key: vkey } } ] }\n";
        let p = compile_text(&text).unwrap();
        let view = p.redacted.to_string();
        for secret in ["sekrit", "hunter2", "pa55", "vkey"] {
            assert!(!view.contains(secret), "{secret} in {view}");
        }
        assert_eq!(
            p.redacted["redis"]["url"],
            "redis://:<redacted>@127.0.0.1:6379/0"
        );
        assert_eq!(
            p.redacted["upstreams"]["local"]["endpoints"][0]["url"],
            "http://me:<redacted>@127.0.0.1:8001"
        );
        assert_eq!(
            p.redacted["upstreams"]["local"]["set_headers"]["authorization"],
            "<redacted>"
        );
        assert_eq!(
            p.redacted["routes"][0]["split"]["variants"][0]["headers"]["x-key"],
            "<redacted>"
        );
        // Everywhere else the endpoint is its URL without the userinfo.
        let ep = &p.routes[0].lanes[0].upstream.endpoints[0];
        assert_eq!(ep.url, "http://127.0.0.1:8001");
        assert_eq!(ep.authority, "127.0.0.1:8001");
    }
}
