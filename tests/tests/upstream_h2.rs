//! `pool.http2: true` speaks HTTP/2 (h2c) to the upstream; clients still get HTTP/1.1.

use serde_json::Value;
use sluice_e2e::{chat_body, config, get_json, sha256, Gateway, Mock};

#[tokio::test]
async fn h2c_upstream_carries_bodies_and_streams() {
    let a = Mock::start("a", &[]);
    let pool = "    pool: { http2: true }\n";
    let routes = "  - name: chat\n    match: { model: \"*\" }\n    upstream: up\n  - name: rest\n    upstream: up\n";
    let gw = Gateway::start(&config(&[&a.url], pool, routes));
    let client = reqwest::Client::new();

    let echo: Value = get_json(&client, format!("{}/mock/echo", gw.url)).await;
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");

    let body = chat_body("m", 400 * 1024, false);
    let resp = gw.chat(&client, body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mock-body-sha256"], sha256(&body).as_str());

    let resp = gw.chat(&client, chat_body("m", 10, true)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
