//! The usage log: one JSON line per finished request, naming the caller's key (never the key
//! itself), whose tokens and cost add up to `sluice_tokens_total` and `sluice_cost_usd_total`.

use serde_json::Value;
use sluice_e2e::{chat_body, config, metric_sum, sha256, Gateway, Mock, PATIENCE};
use std::time::Instant;

const KEY: &str = "sk-sluice-usage-log-key";

fn records(gw: &Gateway, want: usize) -> Vec<Value> {
    let path = gw.config.parent().unwrap().join("usage.jsonl");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn usage_records_add_up_to_the_metrics_and_never_hold_a_key() {
    let mock = Mock::start("m", &[]);
    let yaml = config(
        &[&mock.url],
        "",
        "  - name: chat\n    upstream: up\n    auth: optional\n",
    ) + &format!(
        "keys:\n  - {{ name: app-a, team: red, hash: \"sha256:{}\" }}\n\
             pricing:\n  mock-gpt-4o: {{ input: 1, output: 2 }}\n\
             telemetry:\n  usage_log: ./usage.jsonl\n",
        sha256(KEY.as_bytes())
    );
    let gw = Gateway::start(&yaml);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for (i, stream) in [false, true, false, true].into_iter().enumerate() {
        let mut req = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .body(chat_body("mock-gpt-4o", 200 + i * 50, stream));
        if i < 3 {
            req = req.bearer_auth(KEY);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        ids.push(resp.headers()["x-request-id"].to_str().unwrap().to_string());
        resp.bytes().await.unwrap();
    }
    let lines = records(&gw, 4);
    let logged: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    assert_eq!(logged, ids, "the answer's x-request-id is the record's");
    assert_eq!(lines.len(), 4, "{lines:?}");
    let text = serde_json::to_string(&lines).unwrap();
    assert!(!text.contains(KEY), "the key reached the usage log");
    let keys: Vec<Option<&str>> = lines.iter().map(|l| l["key"].as_str()).collect();
    assert_eq!(keys, [Some("app-a"), Some("app-a"), Some("app-a"), None]);
    for l in &lines {
        assert_eq!(l["route"], "chat");
        assert_eq!(l["status"], 200);
        assert_eq!(l["model"], "mock-gpt-4o");
        assert!(
            l["request_id"].as_str().is_some_and(|id| id.len() == 32),
            "{l}"
        );
        assert!(
            l["duration_ms"].as_f64().is_some() && l["time"].as_str().is_some(),
            "{l}"
        );
    }
    assert_eq!(lines[0]["team"], "red");
    let sum = |field: &str| {
        lines
            .iter()
            .map(|l| l[field].as_f64().unwrap())
            .sum::<f64>()
    };
    let metrics = gw.metrics().await;
    let route = [("route", "chat")];
    assert_eq!(
        sum("input_tokens"),
        metric_sum(
            &metrics,
            "sluice_tokens_total",
            &[("kind", "prompt"), route[0]]
        )
    );
    assert_eq!(
        sum("output_tokens"),
        metric_sum(
            &metrics,
            "sluice_tokens_total",
            &[("kind", "completion"), route[0]]
        )
    );
    let cost = metric_sum(&metrics, "sluice_cost_usd_total", &route);
    assert!(
        cost > 0.0 && (sum("cost_usd") - cost).abs() < 1e-9,
        "{} vs {cost}",
        sum("cost_usd")
    );
}

#[tokio::test]
async fn a_route_that_logs_bodies_records_them_and_others_do_not() {
    let mock = Mock::start("m", &[]);
    let yaml = config(
        &[&mock.url],
        "",
        "  - name: logged\n    upstream: up\n    log_bodies: true\n    match: { headers: { x-log: \"yes\" } }\n\
         \x20 - name: chat\n    upstream: up\n",
    ) + "telemetry:\n  usage_log: ./usage.jsonl\n";
    let gw = Gateway::start(&yaml);
    let client = reqwest::Client::new();
    for log in ["yes", "no"] {
        let resp = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .header("x-log", log)
            .body(chat_body("mock-gpt-4o", 100, false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let lines = records(&gw, 2);
    let logged = lines
        .iter()
        .find(|l| l["route"] == "logged")
        .expect("logged");
    let request = logged["request_body"].as_str().unwrap();
    assert!(request.contains("lorem ipsum"), "{logged}");
    let response = logged["response_body"].as_str().unwrap();
    assert!(response.contains("reply-"), "{logged}");
    assert_eq!(logged["bodies_truncated"], false);
    let plain = lines.iter().find(|l| l["route"] == "chat").expect("chat");
    assert!(plain.get("request_body").is_none(), "{plain}");
}
