//! Limits and the cache together (issue 7): request limits are checked before the cache, so a
//! hit is refused too when the key is over its rate; hits carry the `x-ratelimit-*` headers
//! and cost no tokens, unless the budget says `charge_cache_hits: true`.

use serde_json::Value;
use sluice_e2e::{config, metric_sum, Gateway, Mock, UpstreamCalls};

const BODY: &str = r#"{"model":"mock-gpt-4o","messages":[{"role":"user","content":"What is a sluice?"}],"max_tokens":20}"#;

fn gateway(mock: &Mock, charge_hits: bool) -> Gateway {
    let route = format!(
        "  - name: chat\n    match: {{ path_prefix: /v1 }}\n    upstream: up\n    cache: {{ ttl: 10m }}\n    limits:\n      - {{ name: rps, key: api_key, requests_per_second: 1, burst: 3 }}\n      - {{ name: tpd, key: api_key, tokens_per_day: 1000000, charge_cache_hits: {charge_hits} }}\n"
    );
    Gateway::start(&config(&[&mock.url], "", &route))
}

/// One POST of `BODY` with key `key`: status, headers and the JSON body.
async fn ask(gw: &Gateway, key: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.expect("JSON body");
    (status, headers, body)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

fn charged(metrics: &str) -> f64 {
    metric_sum(metrics, "sluice_tokens_charged_total", &[("route", "chat")])
}

/// The tokens charged once they reach `want` (settlement follows the answer), or as they are.
async fn charged_reaches(gw: &Gateway, want: f64) -> f64 {
    charged(&gw.metrics_until(|m| charged(m) >= want).await)
}

#[tokio::test]
async fn hits_carry_rate_headers_cost_no_tokens_and_are_rate_limited() {
    let mock = Mock::start("lim-cache", &[]);
    let mut upstream = UpstreamCalls::of(&mock);
    let gw = gateway(&mock, false);

    let (status, headers, miss) = ask(&gw, "sk-a").await;
    assert_eq!(status, 200, "{miss}");
    assert_eq!(header(&headers, "x-sluice-cache"), "miss");
    let cost = miss["usage"]["total_tokens"].as_f64().expect("usage");
    assert_eq!(
        charged_reaches(&gw, cost).await,
        cost,
        "the miss is charged its usage"
    );

    let (status, headers, hit) = ask(&gw, "sk-a").await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(header(&headers, "x-sluice-cache"), "hit");
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "1");
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), "1000000");
    assert!(header(&headers, "x-ratelimit-reset-tokens").ends_with('s'));
    let remaining: f64 = header(&headers, "x-ratelimit-remaining-tokens")
        .parse()
        .expect("a number");
    assert!(
        (1e6 - cost..1e6).contains(&remaining),
        "where the key stands after the miss (refilling since): {remaining}"
    );
    assert_eq!(
        headers.get_all("x-ratelimit-limit-tokens").iter().count(),
        1
    );

    let _ = ask(&gw, "sk-a").await;
    let (status, headers, refused) = ask(&gw, "sk-a").await;
    assert_eq!(status, 429, "a hit is rate limited too: {refused}");
    assert_eq!(refused["error"]["param"], "rps");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        upstream.calls().await,
        1,
        "only the first request went upstream"
    );
}

#[tokio::test]
async fn a_budget_that_charges_hits_counts_them() {
    let mock = Mock::start("lim-cache-charged", &[]);
    let gw = gateway(&mock, true);
    let (_, _, miss) = ask(&gw, "sk-b").await;
    let cost = miss["usage"]["total_tokens"].as_f64().expect("usage");
    let (status, headers, _) = ask(&gw, "sk-b").await;
    assert_eq!((status, header(&headers, "x-sluice-cache")), (200, "hit"));
    assert_eq!(
        charged_reaches(&gw, 2.0 * cost).await,
        2.0 * cost,
        "the hit is charged what it stands for"
    );
}
