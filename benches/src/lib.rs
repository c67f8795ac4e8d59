//! Shared inputs for sluice's benchmarks: large route tables and configs, request bodies,
//! and a realistic prompt mix.

pub mod load;
pub mod workload;

use http::header::HeaderName;
use http::Method;
use sluice_plugins::glob::Glob;
use sluice_plugins::router::{RouteMatcher, Router};
use std::fmt::Write;

/// A router of `n` routes mixing prefixes, methods, a header route and a model-glob route.
#[must_use]
pub fn large_router(n: usize) -> Router {
    let routes = (0..n)
        .map(|i| match i {
            40 => RouteMatcher {
                path_prefix: "/v1/team".into(),
                methods: vec![Method::POST],
                headers: vec![(HeaderName::from_static("x-team"), "team-40".into())],
                model: None,
            },
            45 => RouteMatcher {
                path_prefix: "/v1/models-route".into(),
                methods: vec![Method::POST],
                headers: vec![],
                model: Some(Glob::new("gpt-4o*")),
            },
            _ => RouteMatcher {
                path_prefix: format!("/v1/r{i}/"),
                methods: if i % 2 == 0 {
                    vec![Method::POST]
                } else {
                    vec![Method::GET, Method::POST]
                },
                headers: vec![],
                model: None,
            },
        })
        .collect();
    Router::new(routes)
}

/// A YAML config with `routes` routes over `upstreams` upstreams of three endpoints each.
#[must_use]
pub fn large_config(routes: usize, upstreams: usize) -> String {
    let mut s = String::from("server:\n  listen: [\"127.0.0.1:8080\"]\nupstreams:\n");
    for u in 0..upstreams {
        let _ = writeln!(s, "  up{u}:\n    balance: peak_ewma\n    set_headers: {{ authorization: \"Bearer ${{KEY}}\" }}\n    endpoints:");
        for e in 0..3 {
            let _ = writeln!(
                s,
                "      - {{ url: \"http://127.0.0.{}:{}\", weight: {} }}",
                u + 1,
                8000 + e,
                e + 1
            );
        }
    }
    s.push_str("routes:\n");
    for r in 0..routes {
        let _ = writeln!(
            s,
            "  - name: r{r}\n    match: {{ path_prefix: /v1/r{r}/, methods: [POST], model: \"m{r}-*\" }}\n    upstream: up{}",
            r % upstreams
        );
    }
    s
}

/// A chat completion body of about `size` bytes.
#[must_use]
pub fn chat_body(model: &str, size: usize) -> Vec<u8> {
    let filler: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(size.saturating_sub(120))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "model": model, "temperature": 0.2,
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": filler}]
    }))
    .unwrap_or_default()
}
