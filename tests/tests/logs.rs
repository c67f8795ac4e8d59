//! JSON logs are made for machines: every line parses, every field holds a plain value (no Rust
//! debug text, no JSON document hidden in a string, no float noise), and a fallback is told
//! once, by its access line.

use serde_json::Value;
use sluice_e2e::{chat_body, free_port, Gateway, Mock};
use std::time::Duration;

/// Mock `up`, a dead upstream probed every 100 ms, a cached route, a route to the dead
/// upstream, and one that falls back from it.
fn yaml(live: &str, dead: &str) -> String {
    [
        "server:\n  listen: [\"{listen}\"]\n  threads: 1\nadmin:\n  listen: \"{admin}\"\n",
        "cache:\n  memory: { max_bytes: 8MiB }\n",
        &format!("upstreams:\n  up:\n    endpoints: [ {{ url: \"{live}\" }} ]\n"),
        &format!("  dead:\n    endpoints: [ {{ url: \"{dead}\" }} ]\n"),
        "    health: { path: /health, interval: 100ms, unhealthy_after: 1 }\n",
        "routes:\n",
        "  - name: chat\n    match: { path_prefix: /v1/chat/completions, model: \"*\" }\n",
        "    upstream: up\n    cache: { ttl: 60s }\n",
        "  - name: broken\n    match: { path_prefix: /broken }\n    upstream: dead\n",
        "  - name: spare\n    match: { path_prefix: /v1/models }\n    upstream: dead\n",
        "    fallback: [up]\n",
    ]
    .concat()
}

/// What is wrong with one field value, if anything.
fn flaw(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.contains("Some(") || s == "None" => {
            Some(format!("Rust debug text: {s}"))
        }
        Value::String(s)
            if serde_json::from_str::<Value>(s).is_ok_and(|v| v.is_object() || v.is_array()) =>
        {
            Some(format!("a JSON document in a string: {s}"))
        }
        Value::String(s) if s.starts_with('"') || s.starts_with("Err(") || s.starts_with("Ok(") => {
            Some(format!("Rust debug text: {s}"))
        }
        Value::Number(n) if n.is_f64() => {
            let text = n.to_string();
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            (decimals > 6).then(|| format!("float noise: {text}"))
        }
        Value::Object(fields) => fields.values().find_map(flaw),
        Value::Array(items) => items.iter().find_map(flaw),
        _ => None,
    }
}

#[tokio::test]
async fn json_log_fields_hold_plain_values() {
    let live = Mock::start("up", &[]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start_with(&yaml(&live.url, &dead), &[], &["--log-format", "json"]);
    let client = reqwest::Client::new();
    let miss = gw.chat(&client, chat_body("m", 200, false)).await;
    assert_eq!(miss.headers()["x-sluice-cache"], "miss");
    let hit = gw.chat(&client, chat_body("m", 200, false)).await;
    assert_eq!(hit.headers()["x-sluice-cache"], "hit");
    let stream = gw.chat(&client, chat_body("m", 300, true)).await;
    assert_eq!(stream.status(), 200);
    assert!(!stream.bytes().await.unwrap().is_empty());
    let broken = client
        .get(format!("{}/broken", gw.url))
        .send()
        .await
        .unwrap();
    assert!(broken.status().is_server_error(), "{}", broken.status());
    let spare = client
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(spare.headers()["x-sluice-fallback"], "up");

    // The probe's verdict is logged too; lines reach the file a little after the event.
    let access = |log: &str| log.matches("\"target\":\"access\"").count();
    let log = gw.log_until(|log| access(log) >= 5 && log.contains("endpoint unhealthy"));
    assert!(
        access(&log) >= 5 && log.contains("endpoint unhealthy"),
        "{log}"
    );
    // A few more probe lines, so every kind of line is in what is checked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = gw.log_text();
    let flaws: Vec<String> = log
        .lines()
        .filter_map(|line| match serde_json::from_str::<Value>(line) {
            Ok(parsed) => flaw(&parsed).map(|why| format!("{why}\n  in: {line}")),
            Err(e) => Some(format!("not JSON ({e}): {line}")),
        })
        .collect();
    assert!(flaws.is_empty(), "{}", flaws.join("\n"));
    // The access line names the fallback; no line of its own at the default level.
    assert!(!log.contains("falling back"), "{log}");
    let fallback_access = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "access" && v["route"] == "spare")
        .expect("the fallback request's access line");
    assert_eq!(fallback_access["upstream"], "up", "{fallback_access}");
}
