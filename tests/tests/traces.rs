//! OTLP trace export: a test OTLP/HTTP receiver gets one span per request and one per upstream
//! try (a retried request shows two), in the trace whose id reaches the upstream in
//! `traceparent`, with the try's span as the upstream's parent.

use serde_json::Value;
use sluice_e2e::{config, Gateway, Mock, PATIENCE};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// An OTLP/HTTP receiver on loopback: every POSTed body, parsed.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&bodies);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    let mut conn = conn;
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        if let Ok(v) = serde_json::from_slice(&body) {
                            seen.lock().unwrap().push(v);
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if conn.write_all(ok).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { url, bodies }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The spans of trace `id`, once `want` of them arrived (or after PATIENCE).
    fn trace(&self, id: &str, want: usize) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["traceId"] == id)
                .collect();
            if spans.len() >= want || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test]
async fn a_request_and_each_try_are_spans_of_the_trace_the_upstream_sees() {
    let receiver = Receiver::start();
    let mock = Mock::start("m", &[]);
    let yaml = config(
        &[&mock.url],
        "    retry: { attempts: 1, on: [503] }\n",
        "  - name: chat\n    upstream: up\n    match: { path_prefix: /v1, model: \"mock-*\" }\n\
         \x20 - name: echo\n    upstream: up\n    match: { path_prefix: /mock }\n",
    ) + &format!(
        "pricing:\n  mock-gpt-4o: {{ input: 1, output: 1 }}\ntelemetry:\n  otlp: {{ endpoint: \"{}\" }}\n",
        receiver.url
    );
    let gw = Gateway::start(&yaml);
    let client = reqwest::Client::new();

    // One try: its span is the parent the upstream sees.
    let resp = client
        .post(format!("{}/mock/echo", gw.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    let trace_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let seen: Value = resp.json().await.unwrap();
    let sent = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    assert_eq!(&sent[3..35], trace_id, "{sent}");
    let spans = receiver.trace(&trace_id, 2);
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("the request's span");
    let try_span = spans
        .iter()
        .find(|s| s["kind"] == 3)
        .expect("the try's span");
    assert_eq!(try_span["parentSpanId"], server["spanId"]);
    assert_eq!(
        &sent[36..52],
        try_span["spanId"].as_str().unwrap(),
        "the try is the upstream's parent"
    );

    // A chat answer carries the GenAI attributes.
    let resp = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .body(r#"{"model":"mock-gpt-4o","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    let trace_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(resp.status(), 200);
    let spans = receiver.trace(&trace_id, 2);
    let server = spans
        .iter()
        .find(|s| s["kind"] == 2)
        .expect("the request's span");
    assert_eq!(server["name"], "chat mock-gpt-4o");
    assert_eq!(
        attribute(server, "gen_ai.operation.name").unwrap()["stringValue"],
        "chat"
    );
    assert_eq!(
        attribute(server, "gen_ai.request.model").unwrap()["stringValue"],
        "mock-gpt-4o"
    );
    assert_eq!(
        attribute(server, "gen_ai.usage.output_tokens").unwrap()["intValue"],
        "16"
    );
    assert_eq!(
        attribute(server, "gen_ai.provider.name").unwrap()["stringValue"],
        "up"
    );

    // A retried request: two tries, two client spans.
    let resp = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-mock-status", "503")
        .body(r#"{"model":"mock-gpt-4o","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let trace_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let spans = receiver.trace(&trace_id, 3);
    let tries: Vec<&Value> = spans.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!(
        tries.len(),
        2,
        "a retried request shows two tries: {spans:?}"
    );
    assert_ne!(tries[0]["spanId"], tries[1]["spanId"]);
}
