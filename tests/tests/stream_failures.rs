//! Streams that fail mid-way never look complete: the client gets an SSE `event: error` with
//! an OpenAI-shaped error, then the chunked body ends abnormally (no `[DONE]`, no terminating
//! chunk), whether the upstream closed the stream or went idle past `timeouts.idle`; the
//! OpenAI SDK raises; the access log says why.

use futures_util::StreamExt;
use sluice_e2e::{chat_body, config, run_python_check, Gateway, Mock};

const ROUTE: &str = "  - name: chat\n    match: { path_prefix: /v1 }\n    upstream: up\n";

/// Streams one chat with `headers`: the body as far as it came, and whether it ended cleanly.
async fn stream(gw: &Gateway, headers: &[(&str, &str)]) -> (String, bool) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(chat_body("mock-gpt-4o", 64, true));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("response head");
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(_) => return (String::from_utf8_lossy(&body).into_owned(), false),
        }
    }
    (String::from_utf8_lossy(&body).into_owned(), true)
}

/// The error event the body ends with, parsed.
fn error_event(body: &str) -> serde_json::Value {
    let event = body
        .split("\n\n")
        .find(|e| e.starts_with("event: error\n"))
        .unwrap_or_else(|| panic!("no error event in {body:?}"));
    let data = event.trim_start_matches("event: error\ndata: ");
    serde_json::from_str(data).expect("error JSON")
}

#[tokio::test]
async fn an_upstream_that_closes_mid_stream_gives_an_error_event_and_an_abnormal_end() {
    let mock = Mock::start("abort", &["--token-delay-ms", "20"]);
    let gw = Gateway::start(&config(&[&mock.url], "", ROUTE));
    let (body, clean) = stream(&gw, &[("x-mock-abort-after", "3")]).await;
    assert!(!clean, "the chunked body must not end normally: {body:?}");
    assert!(!body.contains("[DONE]"), "{body:?}");
    assert!(
        body.starts_with("data: "),
        "the chunks before the cut arrive: {body:?}"
    );
    let error = error_event(&body);
    assert_eq!(error["error"]["code"], "stream_aborted", "{error}");
    assert_eq!(error["error"]["type"], "upstream_error", "{error}");
    assert!(
        body.trim_end().ends_with('}'),
        "the error event is the last thing sent: {body:?}"
    );
    let log = gw.log_until(|l| l.contains("failed mid-response"));
    assert!(log.contains("failed mid-response"), "{log}");

    // The same stream, complete, still ends cleanly.
    let (body, clean) = stream(&gw, &[]).await;
    assert!(
        clean && body.contains("[DONE]") && !body.contains("event: error"),
        "{body:?}"
    );
}

#[tokio::test]
async fn an_upstream_idle_past_its_timeout_is_cut_the_same_way() {
    let mock = Mock::start("idle", &[]);
    let timeouts = "    timeouts: { idle: 300ms }\n";
    let gw = Gateway::start(&config(&[&mock.url], timeouts, ROUTE));
    let (body, clean) = stream(&gw, &[("x-mock-token-delay-ms", "1500")]).await;
    assert!(!clean && !body.contains("[DONE]"), "{body:?}");
    let error = error_event(&body);
    let message = error["error"]["message"].as_str().expect("message");
    assert!(message.contains("idle"), "{message}");
}

#[test]
fn the_openai_sdk_raises_on_a_cut_stream() {
    let mock = Mock::start("abort-sdk", &[]);
    let gw = Gateway::start(&config(&[&mock.url], "", ROUTE));
    let out = run_python_check("openai_stream_abort_check.py", &gw);
    assert!(out.contains("raised"), "{out}");
}
