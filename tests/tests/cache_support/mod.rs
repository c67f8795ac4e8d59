//! Helpers shared by the cache end-to-end tests (`cache.rs`, `cache_tiers.rs`): a gateway with
//! one caching route, one chat POST read whole, and a small chat body.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::json;
use sluice_e2e::{config, Answer, Gateway, Mock};

/// A caching route `chat` over upstream `up`, with `extra` lines (6-space indent) under its
/// `cache:`.
pub fn cache_route(extra: &str) -> String {
    format!(
        "  - name: chat\n    match: {{ model: \"*\" }}\n    upstream: up\n    cache:\n      ttl: 60s\n{extra}"
    )
}

/// A gateway over `mock` with the caching route and `top` appended at the top level.
pub fn gateway(mock: &Mock, cache_extra: &str, top: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{top}",
        config(&[&mock.url], "", &cache_route(cache_extra))
    ))
}

/// POSTs `body` to the chat endpoint with `headers`, reads the whole answer.
pub async fn post(
    gw: &Gateway,
    client: &reqwest::Client,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("chat request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    // A body the upstream cut short is kept for the test to look at, not a failure here.
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| format!("<body error: {e}>"));
    Answer {
        status,
        headers,
        body,
    }
}

/// A small chat body.
pub fn chat(model: &str, content: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
        .to_string()
}
