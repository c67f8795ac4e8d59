//! Request ids and trace context: every answer carries `x-request-id`, the same id the access
//! line logs and the upstream receives; a client's plain id and valid `traceparent` are kept,
//! and the upstream's `traceparent` continues the client's trace.

use serde_json::Value;
use sluice_e2e::{access_lines, config, Gateway, Mock};

#[tokio::test]
async fn one_id_on_the_answer_the_access_line_and_the_upstream() {
    let mock = Mock::start("m", &[]);
    let yaml = config(
        &[&mock.url],
        "",
        "  - name: echo\n    upstream: up\n    match: { path_prefix: /mock }\n",
    );
    let gw = Gateway::start_with(&yaml, &[], &["--log-format", "json"]);
    let client = reqwest::Client::new();

    let resp = client
        .post(format!("{}/mock/echo", gw.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], id.as_str(), "{seen}");
    let parent = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(
        &parent[3..35],
        id,
        "a new trace's id is the request id: {parent}"
    );

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = client
        .post(format!("{}/mock/echo", gw.url))
        .header("x-request-id", "client-req-7")
        .header("traceparent", incoming)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-req-7");
    let seen: Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "client-req-7");
    let sent = seen["headers"]["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert_ne!(sent, incoming, "sluice's own span is the upstream's parent");

    let resp = client
        .get(format!("{}/nowhere", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let missing = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(missing, id);

    let log = gw.log_until(|l| access_lines(l).len() >= 3);
    let lines = access_lines(&log);
    let logged: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    assert_eq!(
        logged,
        [id.as_str(), "client-req-7", missing.as_str()],
        "{log}"
    );
    assert!(
        lines[0].get("trace_id").is_none(),
        "the request id is the trace id"
    );
    assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}
