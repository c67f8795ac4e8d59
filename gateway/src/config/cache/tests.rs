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
    assert!(route.needs.body, "caching reads the body");
    assert_eq!(
        route.cache,
        Some(RouteCache {
            ttl: Duration::from_secs(600),
            max_ttl: Duration::from_secs(600),
            adaptive: false,
            client_controls: true,
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
                "      ttl: 10m\n      max_ttl: 1h\n      adaptive: true\n      client_controls: false\n      key:\n        include: [model, messages]\n        normalize: { whitespace: collapse }\n        scope: header:X-Team\n      when: { max_temperature: 0, seed: true }\n"
            )
        );
    let p = compile_text(&text).unwrap();
    assert_eq!(
        p.cache_tiers,
        Some(CacheTiers {
            memory_max_bytes: 64 * 1024 * 1024,
            redis: Some(RedisSettings {
                nodes: RedisNodes::Single("rediss://:pw@cache:6380/1".into()),
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
            client_controls: false,
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
    assert!(!p.routes[0].needs.body);
    let p =
        compile_text(&text.replace("upstream: local }", "upstream: local, cache: { ttl: 1s } }"))
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

#[test]
fn redis_takes_one_server_or_a_clusters_seed_nodes_never_both_or_neither() {
    let with = |redis: &str| {
        format!(
            "redis: {redis}\nupstreams:\n  u: {{ endpoints: [ {{ url: \"http://127.0.0.1:1\" }} ] }}\nroutes:\n  - {{ name: r, upstream: u, cache: {{ ttl: 1m }} }}\ncache: {{ redis: true }}\n"
        )
    };
    let p = compile_text(&with(
        "{ cluster: [\"redis://:pw@10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] }",
    ))
    .unwrap();
    let redis = p.cache_tiers.and_then(|t| t.redis).unwrap();
    assert_eq!(
        redis.nodes,
        RedisNodes::Cluster(vec![
            "redis://:pw@10.0.0.1:7000".into(),
            "redis://10.0.0.2:7000".into()
        ])
    );
    let shown = p.redacted.to_string();
    assert!(!shown.contains(":pw@"), "{shown}");
    for (bad, says) in [
        (
            "{ url: \"redis://a:1\", cluster: [\"redis://b:1\"] }",
            "not both",
        ),
        ("{ timeout: 1s }", "needs `url`"),
        ("{ cluster: [] }", "at least one seed"),
        ("{ cluster: [\"http://b:1\"] }", "redis.cluster[0]"),
    ] {
        let err = compile_text(&with(bad)).err().unwrap().join("\n");
        assert!(err.contains(says), "{bad}: {err}");
    }
}
