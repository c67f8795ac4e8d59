//! Dollar budgets of client keys: a key stops at the right request when its budget is spent
//! (plain and streamed answers charged at `pricing:`), with OpenAI's 429 `insufficient_quota`;
//! two instances on one Redis spend one budget between them; with Redis gone each falls back to
//! its local bucket and no request fails with a 5xx.

use serde_json::Value;
use sluice_e2e::{config, get_json, metric_sum, sha256, Gateway, Mock, RedisServer};

const KEY: &str = "sk-sluice-budget-e2e";
/// $100 per million completion tokens, prompts free: mock-llm's 16 completion tokens cost
/// $0.0016, and a request asking for at most 16 reserves exactly that.
const PRICING: &str = "pricing:\n  mock-gpt-4o: { input: 0, output: 100 }\n";
/// $0.01: six answers fit ($0.0096), a seventh does not.
const FITS: usize = 6;

fn budget_config(mock: &Mock, redis: Option<&RedisServer>) -> String {
    let redis = redis.map_or(String::new(), |r| {
        format!("redis:\n  url: \"{}\"\n  timeout: 100ms\n", r.url())
    });
    config(&[&mock.url], "", "  - name: chat\n    upstream: up\n    auth: required\n")
        + &format!(
            "keys:\n  - {{ name: app-a, team: red, hash: \"sha256:{}\", budget: {{ usd: 0.01, per: 30d }} }}\n{PRICING}{redis}",
            sha256(KEY.as_bytes())
        )
}

fn body(stream: bool) -> String {
    serde_json::json!({
        "model": "mock-gpt-4o", "max_tokens": 16, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]
    })
    .to_string()
}

/// Sends one request (streamed every other time) and returns its status and body.
async fn spend(client: &reqwest::Client, gw: &Gateway, i: usize) -> (u16, String) {
    let resp = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(KEY)
        .body(body(i % 2 == 1))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_key_stops_when_its_budget_is_spent() {
    let mock = Mock::start("m", &[]);
    let gw = Gateway::start(&budget_config(&mock, None));
    let client = reqwest::Client::new();
    for i in 0..FITS {
        let (status, text) = spend(&client, &gw, i).await;
        assert_eq!(status, 200, "request {i}: {text}");
    }
    let (status, text) = spend(&client, &gw, FITS).await;
    assert_eq!(status, 429, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "insufficient_quota", "{text}");
    assert_eq!(error["error"]["type"], "insufficient_quota", "{text}");

    let metrics = gw.metrics().await;
    let spent = metric_sum(
        &metrics,
        "sluice_key_spend_usd_total",
        &[("key", "app-a"), ("team", "red")],
    );
    assert!((spent - 0.0096).abs() < 1e-9, "spent {spent}");
    let listed = get_json(&client, format!("{}/admin/keys", gw.admin)).await;
    let budget = &listed["keys"][0]["budget"];
    assert_eq!(budget["usd"], 0.01);
    assert!(
        (budget["spent_usd"].as_f64().unwrap() - 0.0096).abs() < 1e-9,
        "{budget}"
    );
    let left = budget["left_usd"].as_f64().unwrap();
    assert!((0.0004..0.0005).contains(&left), "{budget}");
}

#[tokio::test]
async fn two_instances_spend_one_budget_and_survive_redis_going_away() {
    let mock = Mock::start("m", &[]);
    let mut redis = RedisServer::start();
    let yaml = budget_config(&mock, Some(&redis));
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    let client = reqwest::Client::new();
    let mut admitted = 0;
    for i in 0..2 * FITS {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, text) = spend(&client, gw, i).await;
        assert!(
            status == 200 || status == 429,
            "request {i}: {status} {text}"
        );
        admitted += usize::from(status == 200);
    }
    assert_eq!(admitted, FITS, "one budget across both instances");
    for gw in [&a, &b] {
        let fallbacks = metric_sum(&gw.metrics().await, "sluice_ratelimit_fallbacks_total", &[]);
        assert_eq!(fallbacks, 0.0, "Redis answered every budget check");
    }

    redis.stop();
    for i in 0..4 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, text) = spend(&client, gw, i).await;
        assert!(
            status == 200 || status == 429,
            "Redis down, request {i}: {status} {text}"
        );
    }
    let fallbacks = metric_sum(&a.metrics().await, "sluice_ratelimit_fallbacks_total", &[]);
    assert!(
        fallbacks > 0.0,
        "the local bucket decided while Redis was down"
    );
}
