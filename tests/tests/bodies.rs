//! Bodies of any size reach the upstream byte-identical through a route that reads them;
//! the cap answers 413.

use serde_json::Value;
use sluice_e2e::{chat_body, config, get_json, sha256, Gateway, Mock};

fn model_route() -> &'static str {
    "  - name: by-model\n    match: { path_prefix: /v1/chat/completions, model: \"big-*\" }\n    upstream: up\n"
}

async fn send_and_check(gw: &Gateway, size: usize) {
    let body = chat_body("big-model", size, false);
    let resp = gw.chat(&reqwest::Client::new(), body.clone()).await;
    assert_eq!(resp.status(), 200, "{size} bytes");
    assert_eq!(resp.headers()["x-sluice-route"], "by-model");
    assert_eq!(
        resp.headers()["x-mock-body-bytes"],
        body.len().to_string().as_str()
    );
    assert_eq!(
        resp.headers()["x-mock-body-sha256"],
        sha256(&body).as_str(),
        "upstream saw different bytes"
    );
    let v: Value = resp.json().await.unwrap();
    let reply = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(reply.starts_with(&format!("reply-{}", &sha256(&body)[..8])));
}

#[tokio::test]
async fn large_prompts_arrive_byte_identical() {
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(&[&a.url], "", model_route()));
    send_and_check(&gw, 300 * 1024).await;
    send_and_check(&gw, 5 * 1024 * 1024).await;
    // And a chunked upload (no Content-Length) of a large body.
    let body = chat_body("big-model", 700 * 1024, false);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = gw
        .chat(
            &reqwest::Client::new(),
            reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mock-body-sha256"], sha256(&body).as_str());
}

#[tokio::test]
async fn body_over_the_cap_is_413_and_never_reaches_upstream() {
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(&[&a.url], "", model_route()));
    let client = reqwest::Client::new();
    let body = chat_body("big-model", 9 * 1024 * 1024, false);
    let resp = gw.chat(&client, body).await;
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");
    // Chunked, so the cap is found while reading rather than from Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..9).map(|_| Ok(vec![b' '; 1024 * 1024])).collect();
    let resp = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The gateway may answer 413 before the client finished sending; either way no 2xx.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    let stats: Value = get_json(&client, format!("{}/mock/stats", a.url)).await;
    assert_eq!(
        stats["requests"], 1,
        "only this stats request reached the mock"
    );
}

#[tokio::test]
async fn a_streamed_body_over_the_cap_is_413_too() {
    let a = Mock::start("a", &[]);
    let passthrough = "  - name: pass\n    match: { path_prefix: /v1 }\n    upstream: up\n";
    let gw = Gateway::start(&config(&[&a.url], "", passthrough));
    let client = reqwest::Client::new();
    // The config caps bodies at 8 MiB; this route streams them and reads nothing.
    let body = chat_body("any", 9 * 1024 * 1024, false);
    let resp = gw.chat(&client, body).await;
    assert_eq!(resp.status(), 413, "declared too large");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");
    let stats: Value = get_json(&client, format!("{}/mock/stats", a.url)).await;
    assert_eq!(stats["requests"], 1, "nothing was sent upstream");

    // Chunked: the cap is crossed mid-stream, after the upstream request began.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..9).map(|_| Ok(vec![b' '; 1024 * 1024])).collect();
    let resp = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The gateway may answer 413 before the client finished sending; either way no 2xx.
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 413);
    }
    // Under the cap, a streamed body still goes through.
    let small = chat_body("any", 1024 * 1024, false);
    assert_eq!(gw.chat(&client, small).await.status(), 200);
}
