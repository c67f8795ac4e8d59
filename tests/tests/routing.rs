//! Routing by path, method, header and model glob; passthrough; header rewriting.

use serde_json::Value;
use sluice_e2e::{chat_body, config, Gateway, Mock};

async fn instance(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (inst, route) = (h("x-mock-instance"), h("x-sluice-route"));
    (status, inst, route)
}

#[tokio::test]
async fn routes_by_path_method_header_and_model() {
    let (a, b, c) = (
        Mock::start("a", &[]),
        Mock::start("b", &[]),
        Mock::start("c", &[]),
    );
    let yaml = format!(
        "server:\n  listen: [\"{{listen}}\"]\nadmin:\n  listen: \"{{admin}}\"\nupstreams:\n  a: {{ endpoints: [{{url: \"{}\"}}] }}\n  b: {{ endpoints: [{{url: \"{}\"}}] }}\n  c: {{ endpoints: [{{url: \"{}\"}}] }}\nroutes:\n  - name: team-b\n    match: {{ path_prefix: /v1/chat, methods: [POST], headers: {{x-team: b}} }}\n    upstream: b\n  - name: big-models\n    match: {{ path_prefix: /v1/chat, methods: [POST], model: \"gpt-4*\" }}\n    upstream: c\n  - name: chat\n    match: {{ path_prefix: /v1/chat, methods: [POST] }}\n    upstream: a\n  - name: models\n    match: {{ path_prefix: /v1/models, methods: [GET] }}\n    upstream: b\n",
        a.url, b.url, c.url
    );
    let gw = Gateway::start(&yaml);
    let client = reqwest::Client::new();
    let chat = |model: &str| {
        client
            .post(format!("{}/v1/chat/completions", gw.url))
            .body(chat_body(model, 10, false))
    };

    assert_eq!(
        instance(chat("llama3").send().await.unwrap()).await,
        (200, "a".into(), "chat".into())
    );
    assert_eq!(
        instance(chat("gpt-4o").send().await.unwrap()).await,
        (200, "c".into(), "big-models".into())
    );
    assert_eq!(
        instance(chat("gpt-4o").header("x-team", "b").send().await.unwrap()).await,
        (200, "b".into(), "team-b".into())
    );
    let models = client
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(instance(models).await, (200, "b".into(), "models".into()));

    // A method no route takes: OpenAI-shaped 404.
    let resp = client
        .delete(format!("{}/v1/chat/completions", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_route");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("DELETE /v1/chat/completions"));
}

#[tokio::test]
async fn model_route_rejects_non_json_with_400() {
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(
        &[&a.url],
        "",
        "  - name: m\n    match: { model: \"gpt-*\" }\n    upstream: up\n",
    ));
    let resp = gw.chat(&reqwest::Client::new(), "model=gpt-4").await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn passthrough_forwards_method_path_query_and_rewrites_headers() {
    let a = Mock::start("a", &[]);
    let up = "    set_headers: { authorization: \"Bearer upstream-key\" }\n";
    let gw = Gateway::start(&config(&[&a.url], up, "  - name: all\n    upstream: up\n"));
    let resp = reqwest::Client::new()
        .get(format!("{}/mock/echo/some/path?x=1&y=two", gw.url))
        .header("x-forwarded-for", "10.1.2.3")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "drop me")
        .header("x-custom", "kept")
        .header("authorization", "Bearer client-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-sluice-route"], "all");
    assert_eq!(resp.headers()["x-sluice-upstream"], a.url.as_str());
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/mock/echo/some/path");
    assert_eq!(echo["query"], "x=1&y=two");
    let h = &echo["headers"];
    assert_eq!(h["host"], a.url.trim_start_matches("http://"));
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["authorization"], "Bearer upstream-key");
    assert!(
        h.get("x-hop").is_none(),
        "hop-by-hop header named in Connection must not be forwarded: {h}"
    );
}

#[tokio::test]
async fn passthrough_streams_request_bodies_without_a_body_route() {
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(&[&a.url], "", "  - name: all\n    upstream: up\n"));
    let body = vec![b'x'; 3 * 1024 * 1024];
    let resp = reqwest::Client::new()
        .post(format!("{}/mock/echo", gw.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["body_sha256"], sluice_e2e::sha256(&body));
}

#[tokio::test]
async fn bodyless_request_skips_model_routes() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let yaml = format!(
        "server:\n  listen: [\"{{listen}}\"]\nadmin:\n  listen: \"{{admin}}\"\nupstreams:\n  a: {{ endpoints: [{{url: \"{}\"}}] }}\n  b: {{ endpoints: [{{url: \"{}\"}}] }}\nroutes:\n  - name: by-model\n    match: {{ model: \"gpt-*\" }}\n    upstream: a\n  - name: rest\n    upstream: b\n",
        a.url, b.url
    );
    let gw = Gateway::start(&yaml);
    let resp = reqwest::get(format!("{}/v1/models", gw.url)).await.unwrap();
    assert_eq!(instance(resp).await, (200, "b".into(), "rest".into()));
}
